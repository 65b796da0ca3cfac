"""The README's "Distributed: DDP and FSDP2" commands run as written (torchrun, 2 gloo
processes, in a fresh directory), and the two engines agree."""
import os
import re
import shlex
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.distributed_loops import free_port

ROOT = Path(__file__).resolve().parents[1]


def section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Distributed: DDP and FSDP2")
    return text[start:text.index("\n## ", start + 1)]


def commands() -> list[str]:
    block = re.findall(r"```bash\n(.*?)```", section(), flags=re.S)[0]
    return [ln for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]


def test_the_section_shows_ddp_and_fsdp_side_by_side():
    ddp, fsdp = commands()
    assert ddp.startswith("torchrun --nproc_per_node=2 -m adaprec.run") and "parallel" not in ddp
    assert fsdp.startswith("torchrun --nproc_per_node=2 -m adaprec.run trainer.parallel=fsdp")


@pytest.mark.slow
def test_the_distributed_commands_run_as_written(tmp_path):
    # torchrun reads its options from PET_* variables: a free port, the command unchanged
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "PET_MASTER_PORT": str(free_port())}
    for line in commands():
        done = subprocess.run(shlex.split(line), cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
    ddp, fsdp = (pd.read_csv(tmp_path / "runs" / name / "steps.csv") for name in ("ddp", "fsdp"))
    assert ddp.step.tolist() == fsdp.step.tolist() == [0, 1, 2, 3]
    assert ddp.plan_hash.tolist() == fsdp.plan_hash.tolist()
    # the same bf16 plan; FSDP2 computes a bf16 layer's weight gradient in bf16 (its all-gather dtype)
    torch.testing.assert_close(torch.tensor(fsdp.loss.values), torch.tensor(ddp.loss.values),
                               rtol=1e-3, atol=0)
    assert "allgather_bytes" in fsdp and "allgather_bytes" not in ddp
    assert list((tmp_path / "runs" / "fsdp" / "checkpoint_dcp").glob("step_*/.metadata"))
