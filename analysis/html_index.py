"""``index.html`` for a report folder: every figure and table in one page that opens offline.

Figures are linked by relative paths (PNG shown, PDF and CSV linked), tables are inlined from
their Markdown files, so the page works from the disk with no server and no network.
"""
from __future__ import annotations

import html
from pathlib import Path

__all__ = ["write_index"]

_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}
figure{display:inline-block;margin:0 1em 1.5em 0;vertical-align:top}
img{max-width:520px;border:1px solid #ddd}figcaption{font-size:.85em}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.8em}"""


def write_index(folder: str | Path, title: str = "adaprec report") -> Path:
    """Write ``<folder>/index.html`` listing every ``*.png`` figure (with its PDF/CSV) and every
    ``*.md`` table under ``folder``, grouped by sub-folder. Returns the written path."""
    folder = Path(folder)
    sections: dict[str, list[str]] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix not in (".png", ".md") or path.name == "index.html":
            continue
        rel = path.relative_to(folder)
        key = str(rel.parent) if str(rel.parent) != "." else "overview"
        sections.setdefault(key, []).append(_entry(path, rel))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    if sections:
        parts.append("<ul>" + "".join(f"<li><a href='#{_anchor(k)}'>{html.escape(k)}</a></li>"
                                      for k in sections) + "</ul>")
    for key, entries in sections.items():
        parts.append(f"<h2 id='{_anchor(key)}'>{html.escape(key)}</h2>" + "".join(entries))
    parts.append("</body></html>")
    out = folder / "index.html"
    out.write_text("\n".join(parts), encoding="utf-8")
    return out


def _entry(path: Path, rel: Path) -> str:
    if path.suffix == ".md":
        return f"<h3>{html.escape(str(rel))}</h3><pre>{html.escape(path.read_text())}</pre>"
    links = " · ".join(f"<a href='{html.escape(rel.with_suffix(ext).as_posix())}'>{ext[1:]}</a>"
                       for ext in (".pdf", ".csv") if path.with_suffix(ext).exists())
    src = html.escape(rel.as_posix())
    return (f"<figure><img src='{src}' alt='{html.escape(rel.stem)}'>"
            f"<figcaption>{html.escape(rel.stem)} {links}</figcaption></figure>")


def _anchor(key: str) -> str:
    return "s-" + "".join(c if c.isalnum() else "-" for c in key)
