"""FSDP2 through the CLI (``torchrun --nproc_per_node=2 -m adaprec.run trainer.parallel=fsdp``,
gloo on CPU): one process's losses, the all-gathered bytes of each plan, and a SIGKILL during
a run resumed from its DCP checkpoint bit for bit."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch

from adaprec.app.checkpoint import load_checkpoint
from adaprec.runtime.distributed import export_submitit_env
from tests.distributed_loops import free_port
from tests.test_checkpoint import assert_same_run

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["model=mlp", "model.hidden=[32]", "dataset.image_size=8", "trainer.batch_size=32",
          "trainer.eval_every=3", "trainer.eval_batches=1", "trainer.progress=false", "monitor.every=2"]
FSDP = ["trainer.parallel=fsdp", "executor=emulated"]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def single(*args: str) -> list[str]:
    return [sys.executable, "-m", "adaprec.run", *COMMON, *args]


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
            f"--master_port={free_port()}", "-m", "adaprec.run", *COMMON, *args]


def run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_fsdp_cli_matches_one_process_and_bf16_plans_gather_half_the_bytes(tmp_path):
    one, fp32, bf16 = tmp_path / "one", tmp_path / "fp32", tmp_path / "bf16"
    run(single("controller=fp32", "trainer.max_steps=5", f"hydra.run.dir={one}"))
    run(torchrun(*FSDP, "controller=fp32", "trainer.max_steps=5", f"hydra.run.dir={fp32}"))
    run(torchrun(*FSDP, "fsdp.param_dtype=plan", "controller=bf16", "trainer.max_steps=5",
                 f"hydra.run.dir={bf16}"))
    a, b, c = (pd.read_csv(d / "steps.csv") for d in (one, fp32, bf16))
    assert a.step.tolist() == b.step.tolist() == list(range(5))  # rank 0 alone wrote, once
    assert a.plan_hash.tolist() == b.plan_hash.tolist()
    torch.testing.assert_close(torch.tensor(b.loss.values), torch.tensor(a.loss.values),
                               rtol=1e-5, atol=0)
    # every step all-gathers each layer's weights twice (forward, backward): bf16 moves half
    # (also after an evaluation: its forward-only pass leaves FSDP2 no stale prefetch order)
    assert b.allgather_bytes.nunique() == c.allgather_bytes.nunique() == 1
    assert b.allgather_bytes[0] == 2 * c.allgather_bytes[0] > 0
    full = torch.load(fp32 / "model.pt", weights_only=True)  # whole tensors, not shards
    ref = torch.load(one / "model.pt", weights_only=True)
    assert full.keys() == ref.keys()
    for key, value in ref.items():
        torch.testing.assert_close(full[key], value, rtol=1e-5, atol=1e-6)


def _rows(path: Path) -> int:
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


@pytest.mark.slow
def test_sigkill_during_an_fsdp_run_then_resume_from_dcp_is_bit_identical(tmp_path):
    steps = 8
    args = [*FSDP, "fsdp.param_dtype=plan", "controller=threshold", "controller.interval=2",
            "controller.start=bf16", "controller.rounding_err_max=0.001", "controller.cooldown=0",
            "trainer.checkpoint_every=1", f"trainer.max_steps={steps}"]
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    run(torchrun(*args, f"hydra.run.dir={ref}"))
    # killed after the plan left bf16: the resumed run must all-gather in the restored plan's
    # dtypes (fp32), not the initial plan's
    switched = pd.read_csv(ref / "decisions.csv").query("step > 0").step.min()
    assert switched <= steps - 4, "the reference run must switch early enough to kill after it"
    kill_after = random.randrange(int(switched) + 2, steps - 1)
    cmd = torchrun(*args, f"hydra.run.dir={killed}")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while _rows(killed / "steps.csv") < kill_after and proc.poll() is None:
        time.sleep(0.005)
    time.sleep(random.uniform(0, 0.05))  # anywhere inside the next step, a DCP save included
    # torchrun and both ranks (each rank runs in its own session: kill the tree, workers first)
    tree = psutil.Process(proc.pid)
    for p in [*tree.children(recursive=True), tree]:
        p.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((killed / "metrics.json").read_text())["status"] == "running"
    index = load_checkpoint(killed)
    assert (killed / index["sharded"] / ".metadata").exists()  # the index names a whole DCP save
    run(cmd)
    assert "run dir holds a checkpoint" in (killed / "run.log").read_text()
    assert_same_run(ref, killed)
    assert [p.name for p in (killed / "checkpoint_dcp").iterdir()] == [f"step_{steps - 1:08d}"]


EXPORTED = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")


def test_a_submitit_slurm_task_gets_torchrun_s_variables(monkeypatch):
    for key in EXPORTED:  # set, then removed: monkeypatch restores whatever was there before
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "42", "SLURM_NTASKS": "4",
             "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]",
             "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    assert export_submitit_env()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"],
            os.environ["MASTER_ADDR"]) == ("3", "4", "1", "gpu07")
    assert not export_submitit_env()  # WORLD_SIZE is set now: torchrun's (or this) wins
    for key in EXPORTED:
        os.environ.pop(key)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert not export_submitit_env()  # one task: nothing distributed


def test_fsdp_without_a_launcher_is_refused_naming_torchrun(monkeypatch):
    from adaprec.app.schema import ConfigError, validate
    from tests.conftest import compose_config
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    with pytest.raises(ConfigError, match=r"torchrun --nproc_per_node=N -m adaprec.run trainer.parallel=fsdp"):
        validate(compose_config("trainer.parallel=fsdp"))
    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun the same config is fine
    validate(compose_config("trainer.parallel=fsdp"))
