"""Preemption with real signals sent to a real run: SIGTERM or SIGUSR1 -> a checkpoint at the
next step boundary -> exit 75 ("requeue"); the same command resumes bit-identically. Under
hydra-submitit-launcher (``submitit_local``) submitit's own checkpoint/requeue protocol
restarts the job, which resumes and finishes."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adaprec.app.preemption import EXIT_REQUEUE
from adaprec.app.rundir_lock import LOCK_NAME

from .test_checkpoint import assert_same_run

ROOT = Path(__file__).resolve().parents[1]
STEPS = 30
ARGS = ["model=mlp", "model.hidden=[64,32]", "model.dropout=0.1", "dataset.image_size=8",
        "trainer.batch_size=32", f"trainer.max_steps={STEPS}", "trainer.eval_every=7",
        "trainer.eval_batches=2", "trainer.progress=false", "monitor.every=3", "cost.enabled=false",
        "controller=fp16"]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def rows(path: Path) -> int:
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


def _wait_for_rows(path: Path, n: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.monotonic()
    while rows(path) < n and proc.poll() is None and time.monotonic() - t0 < timeout:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be preempted"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_a_signal_checkpoints_at_the_step_boundary_and_the_rerun_is_bit_identical(tmp_path, sig):
    ref, run = tmp_path / "ref", tmp_path / "run"
    subprocess.run([sys.executable, "-m", "adaprec.run", *ARGS, f"hydra.run.dir={ref}"],
                   cwd=ROOT, env=env(), check=True, capture_output=True)
    cmd = [sys.executable, "-m", "adaprec.run", *ARGS, f"hydra.run.dir={run}"]  # no periodic checkpoints
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_rows(run / "steps.csv", 4, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_REQUEUE, err
    metrics = json.loads((run / "metrics.json").read_text())
    steps = metrics["steps"]
    assert metrics["status"] == "preempted" and 4 <= steps < STEPS
    assert err.strip().splitlines()[-1] == (f"adaprec: preempted by {sig.name} after step {steps}: "
                                            "checkpoint saved; rerun the same command to resume")
    assert rows(run / "steps.csv") == steps and not (run / LOCK_NAME).exists()
    resumed = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "metrics.json").read_text())["resumed_from"] == steps
    assert_same_run(ref, run)


@pytest.mark.slow
def test_under_submitit_local_a_preempted_job_is_requeued_by_submitit_and_finishes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    ref, sweep = tmp_path / "ref", tmp_path / "sweep"
    subprocess.run([sys.executable, "-m", "adaprec.run", *ARGS, f"hydra.run.dir={ref}"],
                   cwd=ROOT, env=env(), check=True, capture_output=True)
    proc = subprocess.Popen([sys.executable, "-m", "adaprec.run", "-m", *ARGS,
                             "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}"],
                            cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    job = sweep / "0"
    _wait_for_rows(job / "steps.csv", 4, proc)
    pid = json.loads((job / LOCK_NAME).read_text())["pid"]  # the submitit task running the job
    os.kill(pid, signal.SIGUSR1)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["status"] == "ok" and 4 <= metrics["resumed_from"] < STEPS, metrics
    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*.out"))
    assert "Requeued job" in logs, logs[-3000:]  # submitit's requeue, not a restart by hand
    assert_same_run(ref, job)
