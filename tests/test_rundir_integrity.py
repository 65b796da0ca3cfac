"""Run directories are never corrupted: a refused run changes no file, one process per run
dir (lock), a failed write (disk full) keeps the previous checkpoint and every table, damaged
tables are refused on resume."""
import errno
import gzip
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from adaprec.app import runlog
from adaprec.app.checkpoint import CHECKPOINT_NAME, load_checkpoint
from adaprec.app.rundir_lock import LOCK_NAME, RunDirBusy, RunDirLock
from adaprec.app.runlog import RunDirWriteError, TableDamaged
from adaprec.app.train import train

from .cli_inprocess import TINY, checksums, cli_run  # noqa: F401 (fixture)
from .test_checkpoint import assert_same_run, tiny_cfg

ROOT = Path(__file__).resolve().parents[1]


# -- refused runs write nothing --------------------------------------------------------------
@pytest.mark.slow
def test_a_refused_rerun_into_a_finished_run_dir_changes_no_file(tmp_path, cli_run):
    run = tmp_path / "run"
    code, _, err = cli_run(*TINY, "controller=bf16", f"hydra.run.dir={run}")
    assert code == 0, err
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "run.log").is_file()
    before = checksums(run)
    code, out, err = cli_run(*TINY, "controller=fp32", f"hydra.run.dir={run}")
    assert code == 1 and out == ""
    assert err.splitlines() == [f"adaprec: error: {run} already holds a finished run (status ok); "
                                "choose another output dir or pass trainer.overwrite=true"]
    assert checksums(run) == before  # .hydra/config.yaml still says bf16


@pytest.mark.parametrize("overrides,message", [
    (["trainer.max_steps=-1"], "trainer.max_steps=-1 is out of range; allowed: >= 1"),
    (["controller=plugin"], "controller._target_ is required but not set (???); set it on the "
                            "command line: controller._target_=mypkg.MyController"),
    (["dataset=cifar10"], "dataset.path is required but not set (???)"),
    (["trainer.resume=/no/such/run"], "trainer.resume=/no/such/run: no such checkpoint"),
], ids=["out-of-range", "plugin-without-target", "mandatory-path", "bad-resume-path"])
def test_a_bad_value_is_one_line_and_creates_no_run_dir(tmp_path, cli_run, overrides, message):
    run = tmp_path / "run"
    code, out, err = cli_run(*TINY, *overrides, f"hydra.run.dir={run}")
    assert code == 1 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith(f"adaprec: error: {message}"), err
    assert not run.exists()


# -- one process per run dir -----------------------------------------------------------------
# loads rundir_lock.py alone (no torch import): a fast second process
HOLD = ("import importlib.util as u, sys, time\n"
        "spec = u.spec_from_file_location('lock', sys.argv[2]); m = u.module_from_spec(spec)\n"
        "spec.loader.exec_module(m)\n"
        "with m.RunDirLock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)\n")


def _holder(run: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run),
                             str(ROOT / "adaprec" / "app" / "rundir_lock.py")], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_on_the_same_run_dir_is_refused_and_a_dead_ones_lock_is_stale(
        tmp_path, cli_run, caplog):
    run = tmp_path / "run"
    proc = _holder(run)
    try:
        with pytest.raises(RunDirBusy, match=rf"in use by pid {proc.pid} on "):
            with RunDirLock(run):
                pass
        code, out, err = cli_run(*TINY, f"hydra.run.dir={run}")
        assert code == 1 and len(err.splitlines()) == 1
        assert f"is in use by pid {proc.pid}" in err and "choose another run dir" in err
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # the CLI wrote nothing
    finally:
        proc.send_signal(signal.SIGKILL)  # no cleanup: the lock file stays behind
        proc.wait()
    assert (run / LOCK_NAME).exists()
    with RunDirLock(run):  # the kernel released the dead holder's lock
        assert json.loads((run / LOCK_NAME).read_text())["pid"] != proc.pid
    assert f"took over a stale lock of pid {proc.pid}" in caplog.text
    assert not (run / LOCK_NAME).exists()  # released on exit


def test_the_lock_is_reentrant_in_one_process_and_released_by_the_outermost(tmp_path):
    with RunDirLock(tmp_path):
        with RunDirLock(tmp_path):
            pass
        assert (tmp_path / LOCK_NAME).exists()
    assert not (tmp_path / LOCK_NAME).exists()


# -- a full disk -----------------------------------------------------------------------------
class _FullDisk:
    """``open`` for ``adaprec.app.runlog`` where the ``nth`` open of ``name`` hits a full disk:
    the checkpoint's temp file goes to /dev/full (the kernel's ENOSPC); a table append writes
    half its bytes, then fails as a disk filling up mid-write does."""

    def __init__(self, name: str, nth: int):
        self.name, self.nth, self.calls, self.hit = name, nth, 0, False

    def __call__(self, path, mode="r", *args, **kwargs):
        if Path(path).name == self.name:
            self.calls += 1
            if self.calls == self.nth:
                self.hit = True
                if "a" in mode:
                    return _HalfWrite(open(path, mode, *args, **kwargs))
                return open("/dev/full", mode, *args, **kwargs)
        return open(path, mode, *args, **kwargs)


class _HalfWrite:
    def __init__(self, f):
        self.f = f

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


FULL_DISK_ARGS = ("trainer.checkpoint_every=2", "model.dropout=0.2")


@pytest.fixture(scope="module")
def full_disk_ref(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ref") / "run"
    train(tiny_cfg(*FULL_DISK_ARGS), run)
    return run


@pytest.mark.parametrize("name,nth,kept_rows", [
    (CHECKPOINT_NAME + ".tmp", 2, 4),  # the 2nd checkpoint (step 4): the one of step 2 stays
    ("steps.csv", 4, 3),               # appending step 3's row
], ids=["checkpoint", "table"])
def test_a_full_disk_keeps_the_last_checkpoint_and_every_table(tmp_path, monkeypatch, name,
                                                                nth, kept_rows, full_disk_ref):
    args = FULL_DISK_ARGS
    run = tmp_path / "run"
    disk = _FullDisk(name, nth)
    monkeypatch.setattr(runlog, "open", disk, raising=False)
    with pytest.raises(RunDirWriteError) as info:
        train(tiny_cfg(*args), run)
    monkeypatch.undo()
    msg = str(info.value)
    assert disk.hit and "\n" not in msg and "No space left on device" in msg
    assert name.removesuffix(".tmp") in msg
    assert "rerun the same command to resume" in msg
    assert load_checkpoint(run)["step"] == 2 and not (run / (CHECKPOINT_NAME + ".tmp")).exists()
    assert pd.read_csv(run / "steps.csv").step.tolist() == list(range(kept_rows))  # no torn row
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "No space left on device" in metrics["error"]
    resumed = train(tiny_cfg(*args), run)  # space freed: the same command resumes
    assert resumed["resumed_from"] == 2
    assert_same_run(full_disk_ref, run)


# -- damaged tables --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def crashed_run(tmp_path_factory) -> Path:
    """A run that stopped after its checkpoint at step 4 (status running)."""
    run = tmp_path_factory.mktemp("crashed") / "run"
    train(tiny_cfg("trainer.checkpoint_every=2"), run)
    meta = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**meta, "status": "running"}))
    return run


def _edit_line(path: Path, i: int, new: str | None) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[i:i + 1] = [] if new is None else [new]
    path.write_text("".join(lines))


DAMAGE = {  # what a user or a broken disk does to a table -> what the message says
    "row cut short": (lambda d: _edit_line(d / "steps.csv", 2, "1,0.5\n"), "steps.csv", "line 3 has 2 fields"),
    "row deleted": (lambda d: _edit_line(d / "steps.csv", 2, None), "steps.csv", "gaps or repeats"),
    "header garbled": (lambda d: _edit_line(d / "evals.csv", 0, "\x00\x00,x\n"), "evals.csv", "header"),
    "gzip corrupted": (lambda d: (d / "layers.csv.gz").write_bytes(
        gzip.compress(b"step,layer\n0,a\n")[:-8] + b"\xff" * 8 + gzip.compress(b"2,b\n")),
        "layers.csv.gz", "corrupted gzip data"),
    "event not json": (lambda d: _edit_line(d / "events.jsonl", 0, "{oops\n"), "events.jsonl", "line 1"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_table_is_refused_on_resume_and_left_as_it_is(tmp_path, crashed_run, damage):
    run = tmp_path / "run"
    shutil.copytree(crashed_run, run)
    (run / "events.jsonl").write_text('{"event": "x", "step": 1}\n')
    damage_fn, table, what = DAMAGE[damage]
    damage_fn(run)
    before = checksums(run)
    with pytest.raises(TableDamaged) as info:
        train(tiny_cfg("trainer.checkpoint_every=2"), run)
    msg = str(info.value)
    assert "\n" not in msg and table in msg and what in msg and "trainer.overwrite=true" in msg, msg
    after = checksums(run)
    assert {k: v for k, v in after.items() if k != "metrics.json"} == \
        {k: v for k, v in before.items() if k != "metrics.json"}  # every table as it was
