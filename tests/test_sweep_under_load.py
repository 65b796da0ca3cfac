"""Under load: a joblib sweep of 50 short jobs, 10 % of which fail mid-run. Every other job
ends ok, every failure is recorded with its error, and the analysis leaves the failures out
of every aggregate and lists them."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.load import load_runs, ok_runs

ROOT = Path(__file__).resolve().parents[1]
JOBS = 50
FAIL_SEEDS = [3, 13, 23, 33, 43]  # 10 %


@pytest.mark.slow
def test_a_joblib_sweep_of_50_jobs_with_injected_failures(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "adaprec.run", "-m", "hydra/launcher=joblib",
           "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}", f"seed=range(0,{JOBS})",
           "controller=plugin", "controller._target_=tests.faulty_controller.FailForSeeds",
           "+controller.seed=${seed}", f"+controller.fail_seeds=[{','.join(map(str, FAIL_SEEDS))}]",
           "model=mlp", "model.hidden=[16]", "dataset.image_size=8", "trainer.batch_size=16",
           "trainer.max_steps=3", "trainer.eval_batches=1", "trainer.progress=false",
           "trainer.num_threads=1", "monitor.every=0", "cost.enabled=false"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = {int(json.loads((d / "metrics.json").read_text())["seed"]): json.loads((d / "metrics.json").read_text())
               for d in sweep.iterdir() if (d / "metrics.json").exists()}
    assert sorted(metrics) == list(range(JOBS))
    failed = {s for s, m in metrics.items() if m["status"] != "ok"}
    assert failed == set(FAIL_SEEDS)
    for s in FAIL_SEEDS:
        assert metrics[s]["status"] == "failed"
        assert metrics[s]["error"] == f"RuntimeError: injected fault: seed {s} fails at step 1"
    runs = load_runs(sweep)
    assert len(runs) == JOBS and set(ok_runs(runs)["seed"]) == set(range(JOBS)) - set(FAIL_SEEDS)
    listed = runs[runs["status"] != "ok"]
    assert sorted(listed["seed"]) == FAIL_SEEDS and listed["error"].str.contains("injected fault").all()
    from analysis.report import sweep_report
    summary = sweep_report(sweep, tmp_path / "report", per_run=False)
    assert "Skipped 5 run(s) that are not ok" in summary
    assert all(f"injected fault: seed {s} fails" in summary for s in FAIL_SEEDS)
