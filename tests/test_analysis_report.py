"""The report CLI: one command from a real tiny sweep to every figure and table."""
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis.report import main

ROOT = Path(__file__).parents[1]
FIGURE_FILES = ("csv", "pdf", "png")
RUN_FIGURES = ("timeline", "fp16_rates_act", "fp16_rates_grad", "loss_scale", "train_loss", "val_accuracy")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "analysis.report", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def _assert_figure(stem: Path):
    for ext in FIGURE_FILES:
        path = stem.parent / f"{stem.name}.{ext}"
        assert path.stat().st_size > 0, path


@pytest.mark.slow  # a few seconds: keeps the default suite under 3 minutes
def test_cli_sweep_writes_figures_tables_and_reports_the_failed_run(tmp_path, tiny_sweep):
    out = tmp_path / "report"
    proc = _cli(tiny_sweep, "--out", out, "--no-per-run")
    assert proc.returncode == 0, proc.stderr
    wl = out / "mlp_digits"
    for name in ("quality_vs_wall_s", "shares", "train_loss", "val_accuracy"):
        _assert_figure(wl / name)
    for name in ("summary.md", "summary.tex"):
        assert (wl / name).stat().st_size > 0
    for name in ("runs", "aggregate", "welch", "pareto"):
        assert len(pd.read_csv(out / f"{name}.csv")) > 0
    assert not (out / "mlp_mnist").exists()  # a workload whose only run failed has no figures
    assert not (out / "runs").exists()
    # the printed summary: the table, the wall-time fallback note, and the failed run with its error
    assert "| fp32 |" in proc.stdout and "| fp16 |" in proc.stdout
    assert "cost = measured wall_s" in proc.stdout
    assert "4 [failed]" in proc.stdout and "nonexistent" in proc.stdout
    assert proc.stdout.strip() == (out / "summary.md").read_text().strip()
    # the scatter's CSV is exactly the aggregate rows it drew (two controllers)
    scatter = pd.read_csv(wl / "quality_vs_wall_s.csv")
    assert sorted(scatter["controller"]) == ["fp16", "fp32"] and (scatter["n"] == 2).all()


@pytest.mark.slow
def test_tables_only_writes_the_same_tables_and_no_figure(tmp_path, tiny_sweep):
    full, lean = tmp_path / "full", tmp_path / "lean"
    assert main([str(tiny_sweep), "--out", str(full), "--no-per-run"]) == 0
    assert main([str(tiny_sweep), "--out", str(lean), "--tables-only"]) == 0
    wl = "mlp_digits"
    for name in ("summary.md", "summary.tex"):
        assert (lean / wl / name).read_text() == (full / wl / name).read_text()
    assert (lean / "summary.md").read_text() == (full / "summary.md").read_text()
    assert not list(lean.rglob("*.png")) and not list(lean.rglob("*.pdf"))
    assert list(full.rglob("*.png"))


@pytest.mark.slow
def test_cli_sweep_with_per_run_figures(tmp_path, tiny_sweep):
    proc = _cli(tiny_sweep, "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    ok_ids = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert ok_ids == ["0", "1", "2", "3"]  # not the failed run 4
    controllers = pd.read_csv(tmp_path / "runs.csv").set_index("run_id")["controller"]
    for run_id in ok_ids:
        fp32 = controllers[int(run_id)] == "fp32"
        for name in RUN_FIGURES:
            if name == "loss_scale" and fp32:  # no loss scaling in an fp32 run: no trace
                assert not (tmp_path / "runs" / run_id / "loss_scale.pdf").exists()
            else:
                _assert_figure(tmp_path / "runs" / run_id / name)


@pytest.mark.slow
def test_cli_single_run(tmp_path, tiny_sweep):
    proc = _cli("--run", tiny_sweep / "2", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in RUN_FIGURES:
        _assert_figure(tmp_path / name)
    assert "controller: fp16" in proc.stdout and "status: ok" in proc.stdout


def test_bad_invocations_fail_with_one_line(tmp_path, tiny_sweep, capsys):
    assert main(["--run", str(tiny_sweep), "--out", str(tmp_path)]) == 2
    assert "--run expects one run directory" in capsys.readouterr().err
    assert main([str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main([str(tiny_sweep / "4"), "--out", str(tmp_path / "o")]) == 2  # only a failed run
    assert "no run in" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path)])  # neither a sweep nor --run


@pytest.mark.slow
def test_sweep_report_with_cost_profiles_and_two_workloads(tmp_path, make_run):
    from analysis.report import sweep_report

    costs = {"fp32": {"a100": 1.0, "h100": 1.0}, "bf16": {"a100": 0.5, "h100": 0.6}}
    for ctrl in costs:
        for seed in (0, 1):
            make_run(tmp_path / "sweep" / f"cls_{ctrl}{seed}", controller=ctrl, seed=seed,
                      quality=0.9 - 0.01 * seed, costs=costs[ctrl])
            make_run(tmp_path / "sweep" / f"lm_{ctrl}{seed}", controller=ctrl, seed=seed,
                      metric="val_perplexity", quality=30.0 + seed, costs=costs[ctrl],
                      experiment="lm_small", skipped_steps=1)
    text = sweep_report(tmp_path / "sweep", tmp_path / "out", per_run=False)
    for wl in ("mlp_digits", "lm_small"):
        for name in ("quality_vs_rel_cost_a100", "quality_vs_rel_cost_h100", "shares", "train_loss"):
            _assert_figure(tmp_path / "out" / wl / name)
    _assert_figure(tmp_path / "out" / "lm_small" / "val_perplexity")
    assert "measured wall_s" not in text and "val_perplexity (lower is better)" in text
    shares = pd.read_csv(tmp_path / "out" / "lm_small" / "shares.csv")
    assert set(shares["basis"]) == {"flop_share"}
