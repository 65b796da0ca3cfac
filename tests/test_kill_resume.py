"""Kill-and-resume through the CLI: SIGKILL at a random step (and a random moment within it),
rerun the same command, and compare per-step losses, decisions, evaluations, layer statistics
and final metrics bit for bit with an uninterrupted run."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .test_checkpoint import assert_same_run

ROOT = Path(__file__).resolve().parents[1]
STEPS = 12
# controllers to exercise: static ones and a stateful one (the bandit: policies, RNG, trace)
CONTROLLERS = ["fp16", "plan", "bandit_ucb"]
EXTRA = {"plan": ["+controller.patterns={net.1: fp32}"],
         "bandit_ucb": ["controller.interval=2", "controller.min_dwell=1"]}


def cli(run_dir: Path, controller: str) -> list[str]:
    extra = EXTRA.get(controller, [])
    return [sys.executable, "-m", "adaprec.run", f"controller={controller}", *extra,
            "model=mlp", "model.hidden=[64,32]", "model.dropout=0.1", "dataset.image_size=8",
            "trainer.batch_size=32", f"trainer.max_steps={STEPS}", "trainer.eval_every=5",
            "trainer.eval_batches=2", "trainer.checkpoint_every=1", "trainer.progress=false",
            "monitor.every=3", f"hydra.run.dir={run_dir}"]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def rows(path: Path) -> int:
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


@pytest.mark.slow
@pytest.mark.parametrize("controller", CONTROLLERS)
def test_sigkill_at_a_random_step_then_resume_is_bit_identical(tmp_path, controller):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(cli(ref, controller), cwd=ROOT, env=env(), check=True, capture_output=True)
    # >= 2 rows: step 1 is logged only after step 0's checkpoint was written
    # <= STEPS - 4: a few steps, an evaluation and the final writes are still ahead, so the
    # jittered kill below lands while the run is unfinished
    kill_after = random.randrange(2, STEPS - 3)
    proc = subprocess.Popen(cli(killed, controller), cwd=ROOT, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while rows(killed / "steps.csv") < kill_after and proc.poll() is None:
        time.sleep(0.005)
    time.sleep(random.uniform(0, 0.02))  # anywhere inside the next step, writes included
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    print(f"killed after {rows(killed / 'steps.csv')} logged steps (waited for {kill_after})")
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    status = json.loads((killed / "metrics.json").read_text())["status"]
    assert status == "running", f"killed after the run had finished (status {status})"
    resumed = subprocess.run(cli(killed, controller), cwd=ROOT, env=env(), capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    log = (killed / "run.log").read_text()
    assert "run dir holds a checkpoint" in log, f"killed after {kill_after} steps: {log}"
    assert_same_run(ref, killed)
