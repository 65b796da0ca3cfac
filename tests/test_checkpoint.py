"""Checkpoint and resume: weights_only round trip of every RNG, one-line errors for torn and
foreign files, tables cut back without loss or duplication, bit-identical resumed runs, and
the run-dir policy (finished runs are never overwritten silently)."""
import gzip
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from adaprec.app.checkpoint import (CHECKPOINT_NAME, CheckpointError, load_checkpoint, rng_state,
                                save_checkpoint, set_rng_state)
from adaprec.app.runlog import truncate_tables
from adaprec.app.train import train

from tests.conftest import compose_config

TABLES = ("steps.csv", "evals.csv", "decisions.csv")


def tiny_cfg(*overrides):
    return compose_config(
        "model=mlp", "model.hidden=[32]", "dataset.image_size=8", "trainer.batch_size=16",
        "trainer.max_steps=6", "trainer.eval_every=2", "trainer.eval_batches=1",
        "trainer.progress=false", "monitor.every=2", *overrides)


def comparable(run_dir: Path) -> dict:
    """Everything a resumed run must reproduce bit for bit (timing columns excluded)."""
    out = {name: pd.read_csv(run_dir / name, keep_default_na=False).drop(columns=["step_ms", "cpu_ms"], errors="ignore")
           for name in TABLES}
    out["layers"] = pd.read_csv(run_dir / "layers.csv.gz")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    out["metrics"] = {k: v for k, v in metrics.items() if k not in ("wall_s", "cpu_s", "resumed_from")}
    summary = run_dir / "controller.json"  # a bandit's pulls, regret and per-window trace
    out["controller"] = json.loads(summary.read_text()) if summary.exists() else None
    return out


def assert_same_run(a: Path, b: Path) -> None:
    ca, cb = comparable(a), comparable(b)
    for key in ("steps.csv", "evals.csv", "decisions.csv", "layers"):
        pd.testing.assert_frame_equal(ca[key], cb[key], check_exact=True, obj=key)
    assert ca["metrics"] == cb["metrics"]
    assert ca["controller"] == cb["controller"]


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    save_checkpoint(tmp_path / "c.pt", {"rng": rng_state()})
    expected = (random.random(), np.random.randn(3), torch.rand(3))
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    again = (random.random(), np.random.randn(3), torch.rand(3))
    assert expected[0] == again[0]
    assert np.array_equal(expected[1], again[1]) and torch.equal(expected[2], again[2])
    assert not list(tmp_path.glob("*.tmp"))  # the temp file was renamed over the target


@pytest.mark.parametrize("damage", ["truncated", "empty", "text", "pickled object", "plain tensor"])
def test_damaged_or_foreign_checkpoint_gives_one_line_error(tmp_path, damage):
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, {"step": 3, "model": {"w": torch.ones(1000)}})
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "text":
        path.write_text("step: 3\n")
    elif damage == "pickled object":
        torch.save({"x": Path("/")}, path)  # needs full unpickling: refused by weights_only
    else:
        torch.save(torch.ones(3), path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg


def test_truncated_checkpoint_in_run_dir_fails_resume_with_one_line(tmp_path):
    train(tiny_cfg("trainer.checkpoint_every=2"), tmp_path)
    meta = json.loads((tmp_path / "metrics.json").read_text())
    (tmp_path / "metrics.json").write_text(json.dumps({**meta, "status": "running"}))
    ckpt = tmp_path / CHECKPOINT_NAME
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a loadable checkpoint") as info:
        train(tiny_cfg("trainer.checkpoint_every=2"), tmp_path)
    assert "\n" not in str(info.value)


def test_truncate_tables_drops_torn_lines_and_later_rows(tmp_path):
    (tmp_path / "steps.csv").write_text("step,loss\n0,1.5\n1,1.25\n2,1.0\n3,0.9")  # torn last row
    (tmp_path / "decisions.csv").write_text("step,layer,old,new,reason\n0,a,fp32,bf16,x\n2,a,bf16,fp16,\"y, z\"\n3,a,fp16,fp32,w\n")
    rows = [f"{s},layer{s}\n".encode() for s in range(4)]
    members = b"".join(gzip.compress(b"step,layer\n" if i == 0 else b"") + gzip.compress(r)
                       for i, r in enumerate(rows))
    (tmp_path / "layers.csv.gz").write_bytes(members[:-7])  # the last member is torn
    (tmp_path / "events.jsonl").write_text('{"step": 1, "event": "a"}\n{"step": 2, "event": "b"}\n{"st')
    kept = truncate_tables(tmp_path, 2)
    assert (tmp_path / "steps.csv").read_text() == "step,loss\n0,1.5\n1,1.25\n"
    # decisions carry the step their plan starts at: those made before checkpoint 2 are kept
    assert pd.read_csv(tmp_path / "decisions.csv").step.tolist() == [0, 2]
    assert pd.read_csv(tmp_path / "layers.csv.gz").step.tolist() == [0, 1]
    assert (tmp_path / "events.jsonl").read_text() == '{"step": 1, "event": "a"}\n'
    assert kept == {"steps.csv": 2, "decisions.csv": 2, "layers.csv.gz": 2, "events.jsonl": 1}


@pytest.mark.parametrize("precision", [  # the 16-bit ones resume alike: in the slow suite
    pytest.param(["controller=bf16"], marks=pytest.mark.slow),
    pytest.param(["controller=fp16"], marks=pytest.mark.slow),
    # fp8 with delayed scaling: the executor's amax histories are run state too
    ["controller=fp32", "controller.format=fp8_e4m3", "executor=emulated"],
    # a stateful controller: the bandit's policies, RNG and per-window trace resume exactly
    ["controller=bandit_thompson", "controller.interval=2", "controller.min_dwell=1"],
], ids=["bf16", "fp16", "fp8-emulated", "bandit"])
def test_resume_after_a_crash_is_bit_identical(tmp_path, precision):
    """A run that crashed after logging every step but before finishing (status running,
    checkpoint at step 3, tables through step 5) resumes at 3 and reproduces the
    uninterrupted run bit for bit, with no row lost or duplicated."""
    ref, crashed = tmp_path / "ref", tmp_path / "crashed"
    # dropout and gradient accumulation: the resumed run must draw the same masks
    args = (*precision, "trainer.checkpoint_every=3", "model.dropout=0.2",
            "trainer.grad_accum=2")
    train(tiny_cfg(*args), ref)
    train(tiny_cfg(*args), crashed)
    meta = json.loads((crashed / "metrics.json").read_text())
    (crashed / "metrics.json").write_text(json.dumps({**meta, "status": "running"}))
    assert load_checkpoint(crashed)["step"] == 3  # no checkpoint after the last step
    # a kill during the next checkpoint write leaves a torn temp file beside the good one
    (crashed / (CHECKPOINT_NAME + ".tmp")).write_bytes(b"PK\x03\x04 torn")
    metrics = train(tiny_cfg(*args), crashed)
    assert metrics["resumed_from"] == 3 and metrics["status"] == "ok"
    assert_same_run(ref, crashed)
    if "bandit" in precision[0]:  # windows on both sides of the checkpoint at step 3
        trace = json.loads((crashed / "controller.json").read_text())["layers"]["net.1"]["trace"]
        assert trace["step"] == [2, 4, 6]
    events = [json.loads(line) for line in (crashed / "events.jsonl").read_text().splitlines()]
    assert events == [{"event": "resumed", "from_step": 3, "step": 3}]


def test_explicit_resume_into_a_new_dir_continues_from_the_checkpoint(tmp_path):
    ref, new = tmp_path / "ref", tmp_path / "new"
    train(tiny_cfg("trainer.checkpoint_every=4"), ref)
    metrics = train(tiny_cfg("trainer.checkpoint_every=4", f"trainer.resume={ref}"), new)
    assert metrics["resumed_from"] == 4
    steps_ref = pd.read_csv(ref / "steps.csv")
    steps_new = pd.read_csv(new / "steps.csv")
    assert steps_new.step.tolist() == [4, 5]
    assert steps_new.loss.tolist() == steps_ref.loss.tolist()[4:]


def test_resume_with_a_different_config_is_refused(tmp_path):
    train(tiny_cfg("trainer.checkpoint_every=2"), tmp_path / "a")
    with pytest.raises(CheckpointError, match=r"optimizer.lr=0.05 .* optimizer.lr=0.1"):
        train(tiny_cfg("trainer.checkpoint_every=2", "optimizer.lr=0.1",
                       f"trainer.resume={tmp_path / 'a'}"), tmp_path / "b")
    assert not (tmp_path / "b" / "steps.csv").exists()


def test_finished_run_dir_is_never_overwritten_silently(tmp_path):
    train(tiny_cfg("trainer.max_steps=2"), tmp_path)
    before = (tmp_path / "steps.csv").read_text()
    with pytest.raises(FileExistsError, match="finished run.*trainer.overwrite=true"):
        train(tiny_cfg("trainer.max_steps=2"), tmp_path)
    assert (tmp_path / "steps.csv").read_text() == before
    train(tiny_cfg("trainer.max_steps=3", "trainer.overwrite=true"), tmp_path)  # starts over
    assert pd.read_csv(tmp_path / "steps.csv").step.tolist() == [0, 1, 2]


def test_unfinished_run_without_checkpoint_starts_over(tmp_path, caplog):
    train(tiny_cfg("trainer.max_steps=3"), tmp_path)
    meta = json.loads((tmp_path / "metrics.json").read_text())
    (tmp_path / "metrics.json").write_text(json.dumps({**meta, "status": "failed"}))
    metrics = train(tiny_cfg("trainer.max_steps=2"), tmp_path)
    assert "resumed_from" not in metrics and "starting over" in caplog.text
    assert pd.read_csv(tmp_path / "steps.csv").step.tolist() == [0, 1]  # no stale rows
