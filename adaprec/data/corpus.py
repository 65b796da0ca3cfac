"""Text corpora that ship with Python: its help topics, and its standard library's source.

Both are found on disk at run time (nothing downloads). A corpus is a list of named documents;
:func:`split_by_document` turns one into a train and a validation byte string deterministically.
"""
from __future__ import annotations

import os
import sysconfig
import zlib
from pathlib import Path

from adaprec.data.bundle import DataError

__all__ = ["help_topics", "help_topic_documents", "stdlib_documents", "split_by_document"]

Document = tuple[str, bytes]  # (a name unique in its corpus, the UTF-8 bytes)

# Folders never read: third-party packages, the test suites (many installs leave them out, e.g.
# Debian's libpython3.x-testsuite), bytecode, and the build's config-* folder.
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
# Files never read: pydoc_data/topics.py holds the help topics, which the corpus adds once as text;
# _sysconfigdata_*.py records the paths and flags of one build (it differs between machines).
_SKIP_FILES = ("pydoc_data/topics.py",)
_SKIP_PREFIXES = ("_sysconfigdata_",)


def help_topic_documents() -> list[Document]:
    """Python's help topics (``pydoc_data.topics``, ~466 kB of English and code, always installed
    with CPython), one document per topic, sorted by topic name."""
    from pydoc_data.topics import topics

    return [(f"help:{k}", topics[k].encode("utf-8")) for k in sorted(topics)]


def help_topics() -> bytes:
    """The help topics concatenated in topic order (the ``help_topics`` corpus)."""
    return b"".join(body for _, body in help_topic_documents())


def stdlib_documents(root: str | os.PathLike | None = None) -> list[Document]:
    """Every ``.py`` file under ``root`` (default: this interpreter's standard library,
    ``sysconfig.get_paths()["stdlib"]``), named by its POSIX path relative to ``root`` and sorted
    by that name, so the order never depends on the file system. Test suites, third-party
    packages and build-specific files are left out (see ``_SKIP_DIRS``)."""
    base = Path(root if root is not None else sysconfig.get_paths()["stdlib"]).expanduser()
    if not base.is_dir():
        raise DataError(f"the stdlib corpus reads the .py files under {base}, which is not a "
                        f"directory; set dataset.stdlib_dir to a Python library folder")
    names = []
    for folder, dirs, files in os.walk(base):  # does not follow links: no cycles, no escapes
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.startswith("config-")]
        rel = Path(folder).relative_to(base)
        names += [(rel / f).as_posix() for f in files
                  if f.endswith(".py") and not f.startswith(_SKIP_PREFIXES)]
    names = sorted(n for n in names if n not in _SKIP_FILES)
    if not names:
        raise DataError(f"no .py files under {base} for the stdlib corpus; set dataset.stdlib_dir "
                        f"to a Python library folder, or use dataset.corpus=help_topics")
    return [(n, (base / n).read_bytes()) for n in names]


def split_by_document(docs: list[Document], val_fraction: float) -> tuple[bytes, bytes]:
    """``(train, val)``: whole documents, each side concatenated in name order.

    Validation takes the documents whose names hash lowest (CRC-32, the same on every machine
    and Python) until it holds ``val_fraction`` of the bytes. So no document is cut in two (no
    window mixes train and validation text), the validation files are spread over the whole
    library rather than its alphabetical tail, and the order in which files join validation
    depends on their names alone: a build that lacks a package changes the split by that
    package's files and, at the margin, the file or two that fill the quota."""
    docs = sorted(docs)
    total = sum(len(body) for _, body in docs)
    is_val, held = set(), 0
    for name, body in sorted(docs, key=lambda d: (zlib.crc32(d[0].encode("utf-8")), d[0])):
        if held >= val_fraction * total:
            break
        is_val.add(name)
        held += len(body)
    train = b"".join(body for name, body in docs if name not in is_val)
    val = b"".join(body for name, body in docs if name in is_val)
    return train, val
