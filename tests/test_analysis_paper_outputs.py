"""Paper outputs: significant figures, split LaTeX tables that compile, the HTML index."""
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from analysis.html_index import write_index
from analysis.report import sweep_report
from analysis.tables import MAX_COLUMNS, sig, to_latex, to_markdown

@pytest.fixture(scope="module")
def analysis_sweep_report(tmp_path_factory, tiny_sweep):
    """A full report (per-run figures included) of the sample sweep."""
    out = tmp_path_factory.mktemp("report")
    sweep_report(tiny_sweep, out)
    return out


def test_significant_figures_never_print_small_values_as_zero():
    assert sig(1.8e-4) == "1.80e-04" and sig(0.366) == "0.366" and sig(12.345) == "12.3"
    assert sig(0.0) == "0" and sig(2.0) == "2" and sig(123456.0) == "1.23e+05"
    assert sig(float("nan")) == "–" and sig(None) == "–" and sig(0.9) == "0.900"


def _wide_summary(n_costs=6):
    idx = ["fp32", "bf16", "threshold"]
    s = pd.DataFrame(index=idx)
    s["quality"], s["quality_ci95"] = [1.8e-4, 2.1e-4, 1.9e-4], [1e-5, 2e-5, np.nan]
    s["n"], s["n_runs"] = 5, 5
    costs = [f"rel_cost_p{i}" for i in range(n_costs)]
    for i, c in enumerate(costs):
        s[c] = [1.0, 0.5 + i / 100, 0.7]
    s["share_fp32"], s["share_bf16"] = [1.0, 0.0, 0.3], [0.0, 1.0, 0.7]
    s["skipped_steps"] = [0, 0, 1]
    s.attrs.update(workload="mixed_needs", quality_metric="val_rmse", higher_is_better=False,
                   share_basis="flop_share", costs=costs, baseline="fp32")
    return s


def test_wide_latex_tables_split_into_parts_of_at_most_eight_columns():
    tex = to_latex(_wide_summary(), label="tab:mn")
    tables = tex.split(r"\begin{table}")[1:]
    assert len(tables) == 2
    for part in tables:
        header = part.split(r"\toprule")[1].split(r"\\")[0]
        assert header.count("&") + 1 <= MAX_COLUMNS and header.strip().startswith("controller")
    assert r"\label{tab:mn}" in tables[0] and r"\label{tab:mn-2}" in tables[1]
    assert "1.80e-04" in tex and "0.000" not in tex
    assert tex.count(r"\textbf{1.80e-04") == 1  # lowest RMSE, unique: bold once


def test_markdown_bolds_only_a_unique_best():
    s = _wide_summary(1)
    s["rel_cost_p0"] = [1.0, 0.5, 0.5]  # tie for cheapest
    md = to_markdown(s)
    assert "**0.500**" not in md and "**1.80e-04" in md


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("pdflatex") is None,
                    reason="needs pdflatex (apt-get install texlive-latex-base texlive-latex-recommended)")
def test_every_generated_table_compiles_with_pdflatex(tmp_path, analysis_sweep_report):
    tables = sorted(analysis_sweep_report.rglob("*.tex")) + [tmp_path / "wide.tex"]
    (tmp_path / "wide.tex").write_text(to_latex(_wide_summary(), label="tab:wide"))
    assert len(tables) >= 2
    for i, path in enumerate(tables):
        doc = tmp_path / f"doc{i}.tex"
        doc.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage[T1]{fontenc}\n"
                       "\\usepackage[utf8]{inputenc}\n\\begin{document}\n" + path.read_text() +
                       "\n\\end{document}\n")
        run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, f"{path}: {run.stdout[-1500:]}"
        assert (tmp_path / f"doc{i}.pdf").stat().st_size > 0


def test_html_index_links_every_figure_and_inlines_every_table(tmp_path):
    (tmp_path / "w").mkdir()
    for name in ("a", "b"):
        (tmp_path / "w" / f"{name}.png").write_bytes(b"\x89PNG")
        (tmp_path / "w" / f"{name}.pdf").write_bytes(b"%PDF")
    (tmp_path / "summary.md").write_text("| x | <y> |")
    page = write_index(tmp_path, title="T").read_text()
    assert "src='w/a.png'" in page and "src='w/b.png'" in page and "href='w/a.pdf'" in page
    assert "| x | &lt;y&gt; |" in page and "http" not in page


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium package")
def test_report_index_loads_every_image_in_headless_chromium(tmp_path, analysis_sweep_report):
    index = analysis_sweep_report / "index.html"
    n_png = len(list(analysis_sweep_report.rglob("*.png")))
    assert index.exists() and n_png >= 3
    probe = tmp_path / "probe.html"
    # the page loads the index in an iframe and writes how many of its images decoded
    probe.write_text(f"""<!doctype html><html><body><iframe id=f src="{index.as_uri()}"></iframe>
<script>document.getElementById('f').onload=function(){{var d=this.contentDocument;
var imgs=[].slice.call(d.images);var ok=imgs.filter(function(i){{return i.complete&&i.naturalWidth>0}});
document.title='IMAGES '+ok.length+'/'+imgs.length;}};</script></body></html>""")
    run = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                          "--no-first-run", "--disable-background-networking", "--disable-component-update",
                          "--disable-sync", "--allow-file-access-from-files", f"--user-data-dir={tmp_path / 'ud'}",
                          "--virtual-time-budget=20000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=180)
    title = run.stdout.split("<title>")[1].split("</title>")[0] if "<title>" in run.stdout else run.stdout[-500:]
    assert title == f"IMAGES {n_png}/{n_png}", title
