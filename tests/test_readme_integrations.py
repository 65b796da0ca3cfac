"""Every example of the README's "Use it with Lightning / Hugging Face / your tracker" section
runs as written (in a fresh directory, as a new user would run it)."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # real Lightning / HF / tracker runs


def section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Use it with Lightning / Hugging Face / your tracker")
    return text[start:text.index("\n## ", start + 1)]


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", section(), flags=re.S)


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_section_has_the_three_python_examples_and_the_commands():
    assert len(blocks("python")) == 3 and len(blocks("bash")) == 1


@pytest.mark.parametrize("index", range(3), ids=["lightning", "hf", "own_loop_tracker"])
def test_python_example_runs_as_written(tmp_path, index):
    out = run([sys.executable, "-c", blocks("python")[index]], tmp_path)
    if index == 0:
        assert "'net.0'" in out  # the plan printed
        assert list((tmp_path / "lightning_logs").rglob("metrics.csv"))
    elif index == 1:
        assert out.strip().splitlines()[-1] == "65536.0"
    else:
        assert list((tmp_path / "runs" / "own_loop").glob("events.out.tfevents.*"))


def test_tracker_commands_run_as_written(tmp_path):
    lines = [ln.split("  #")[0].strip() for ln in blocks("bash")[0].splitlines() if ln.strip()]
    for line in lines:
        cmd = shlex.split(line)
        cmd = [sys.executable, *cmd[1:]] if cmd[0] == "python" else cmd
        out = run(cmd, tmp_path)
        if cmd[0] == "tensorboard":
            assert "train/loss" in out
    assert list((tmp_path / "runs" / "tb" / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "runs" / "mlflow" / "mlflow.db").exists()
    assert list((tmp_path / "runs" / "wandb").glob("wandb/offline-run-*/run-*.wandb"))
