"""Run-directory writers: tidy tables appended row by row, JSON written atomically.

Layout of a run directory (the contract ``analysis/`` reads):
  config_resolved.yaml  the resolved config
  metrics.json          status, error, choices, final metrics, final plan
  steps.csv             one row per optimizer step
  evals.csv             one row per evaluation
  layers.csv.gz         one row per sampled step x layer (format + every statistic)
  decisions.csv         one row per plan change (step, layer, old, new, reason)
  model.pt              final model weights (state_dict; load with weights_only=True)
  events.jsonl          one JSON object per event (non-finite step with its culprit, resume,
                        divergence)
  checkpoint.pt         the latest checkpoint (``adaprec.app.checkpoint``), when checkpointing

Tables are appended as the run goes; a resumed run first cuts them back to what the
checkpoint covers (:func:`truncate_tables`), so no row is lost or written twice.
"""
from __future__ import annotations

import csv
import gzip
import json
import io
import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Callable

__all__ = ["RunLog", "write_json_atomic", "save_atomic", "atomic_write", "append_bytes",
           "truncate_tables", "TABLES", "RUN_FILES", "RunDirWriteError", "TableDamaged"]

# table file -> rows kept on resume at step R: rows logged before checkpoint R was written.
# Steps, layer statistics and events carry the step they ran; decisions and evaluations
# carry the step count *after* the step that made them (the step a new plan starts at).
TABLES = {"steps.csv": "<", "layers.csv.gz": "<", "events.jsonl": "<",
          "decisions.csv": "<=", "evals.csv": "<="}
# what a run leaves in its directory (removed by trainer.overwrite=true)
RUN_FILES = (*TABLES, "metrics.json", "config_resolved.yaml", "checkpoint.pt", "checkpoint.pt.tmp",
             "model.pt", "controller.json")


class RunDirWriteError(RuntimeError):
    """A write into the run directory failed (disk full, quota, I/O error). The file it was
    writing is as it was before the write began: the previous checkpoint, every table row."""


def _write_failed(path: Path, exc: OSError, kept: str) -> RunDirWriteError:
    reason = exc.strerror or str(exc) or type(exc).__name__
    return RunDirWriteError(f"could not write {path}: {reason} (errno {exc.errno}); {kept}; free "
                            "space and rerun the same command to resume from the last checkpoint")


def atomic_write(path: Path, write: Callable[[IO[bytes]], None], what: str = "the previous "
                 "version is kept") -> None:
    """Write ``path`` via ``write(f)`` on a temp file + fsync + rename (+ directory fsync): a
    kill leaves the old file or the new one; a failed write (e.g. disk full) removes the temp
    file and raises a one-line :class:`RunDirWriteError`, the old file untouched."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _write_failed(path, exc, what) from None
    _fsync_dir(path.parent)  # make the rename itself durable


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def append_bytes(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` in one write; if the write fails part-way (disk full) the
    file is cut back to its old length, so a table never holds half a row, and a one-line
    :class:`RunDirWriteError` is raised."""
    size = path.stat().st_size if path.exists() else None
    try:
        with open(path, "ab") as f:
            f.write(data)
            f.flush()
    except OSError as exc:
        try:
            if size is None:
                path.unlink(missing_ok=True)
            else:
                os.truncate(path, size)
        except OSError:
            pass
        raise _write_failed(path, exc, f"{path.name} keeps every row written before") from None


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` via temp file + fsync + rename: a kill leaves the old file or the new one."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON via temp file + fsync + rename, so a kill never leaves a torn file."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str)
    atomic_write(path, lambda f: f.write(text.encode()))


class _Table:
    """A CSV table whose header is fixed by the first row; later rows may not add columns."""

    def __init__(self, path: Path, compress: bool = False):
        self.path = path
        self.compress = compress
        self.columns: list[str] | None = None

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        if self.columns is None:
            columns = list(rows[0])
            header = not self.path.exists() or self.path.stat().st_size == 0
        else:
            columns, header = self.columns, False
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
        if header:
            w.writeheader()
        w.writerows(rows)
        data = buf.getvalue().encode()
        # gzip members concatenate into one valid stream, so appending is safe for .gz too
        append_bytes(self.path, gzip.compress(data) if self.compress else data)
        self.columns = columns  # only once the header is on disk


class _Jsonl:
    """An append-only JSON-lines log."""

    def __init__(self, path: Path):
        self.path = path

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        append_bytes(self.path, "".join(json.dumps(row, sort_keys=True, default=str) + "\n"
                                        for row in rows).encode())


class TableDamaged(RuntimeError):
    """A table of the run directory is damaged beyond a torn last line (edited, corrupted,
    cut short): resuming would silently lose or mix rows, so the resume is refused."""


def _damaged(path: Path, what: str) -> TableDamaged:
    return TableDamaged(f"{path} is damaged ({what}), so the run cannot resume on it; restore "
                        "the file or start over with trainer.overwrite=true")


def _complete_lines(data: bytes, path: Path) -> list[str]:
    """Lines that were fully written (a kill mid-append leaves a torn last line)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _damaged(path, f"bytes that are not UTF-8 at offset {exc.start}") from None
    return text.split("\n")[:-1]  # the piece after the last newline is torn (or empty)


def _read_gzip_tolerant(path: Path) -> bytes:
    """Decompress concatenated gzip members, keeping what a torn last member still yields; a
    corrupted member (bad data or checksum) is damage, not a torn write."""
    data, out = path.read_bytes(), []
    while data:
        d = zlib.decompressobj(wbits=31)
        try:
            out.append(d.decompress(data))
        except zlib.error as exc:
            raise _damaged(path, f"corrupted gzip data: {exc}") from None
        if not d.eof:  # truncated last member (a kill mid-append): keep its decoded prefix
            break
        data = d.unused_data
    return b"".join(out)


def _step_of(fields: list[str]) -> int | None:
    try:
        return int(fields[0])
    except (IndexError, ValueError):
        return None


def _keep(step: int, op: str, resume_step: int) -> bool:
    return step < resume_step if op == "<" else step <= resume_step


def _rewrite(path: Path, data: bytes, compress: bool) -> None:
    atomic_write(path, lambda f: f.write(gzip.compress(data) if compress else data),
                 f"{path.name} is as it was")


def truncate_tables(out_dir: str | Path, resume_step: int) -> dict[str, int]:
    """Cut every table back to the rows logged before the checkpoint of ``resume_step`` was
    written (see ``TABLES``), dropping a torn last line; returns rows kept per table.

    Anything else wrong -- a malformed row before the last, a row without a step, corrupted
    gzip data, steps.csv not ending at step ``resume_step - 1`` -- raises a one-line
    :class:`TableDamaged` before any table is rewritten."""
    bodies = {}
    for name, op in TABLES.items():
        path = Path(out_dir) / name
        if path.exists():
            bodies[name] = _kept_lines(path, op, resume_step)
    for name, (body, rows) in bodies.items():
        _rewrite(Path(out_dir) / name, "".join(ln + "\n" for ln in body).encode(),
                 name.endswith(".gz"))
    return {name: rows for name, (_, rows) in bodies.items()}


def _kept_lines(path: Path, op: str, resume_step: int) -> tuple[list[str], int]:
    """(the lines to keep, header included; the number of rows among them)."""
    compress = path.name.endswith(".gz")
    lines = _complete_lines(_read_gzip_tolerant(path) if compress else path.read_bytes(), path)
    if path.name.endswith(".jsonl"):
        rows = []
        for i, ln in enumerate(lines, 1):
            step = _json_step(ln)
            if step is None:
                raise _damaged(path, f"line {i} is not a JSON object with a step")
            if _keep(step, op, resume_step):
                rows.append(ln)
        return rows, len(rows)
    if not lines:
        return [], 0
    header, body = lines[0], lines[1:]
    columns = next(csv.reader([header]), [])
    if not columns or columns[0] != "step":
        raise _damaged(path, "its header does not start with 'step'")
    rows, steps = [], []
    for i, ln in enumerate(body, 2):
        fields = next(csv.reader(io.StringIO(ln)), [])
        step = _step_of(fields)
        if len(fields) != len(columns) or step is None:
            raise _damaged(path, f"line {i} has {len(fields)} fields, the header {len(columns)}")
        if _keep(step, op, resume_step):
            rows.append(ln)
            steps.append(step)
    if path.name == "steps.csv" and steps and steps != list(range(steps[0], resume_step)):
        raise _damaged(path, f"its rows cover steps {steps[0]}..{steps[-1]} with gaps or repeats "
                             f"but the checkpoint is at step {resume_step}")
    return [header, *rows], len(rows)


def _json_step(line: str) -> int | None:
    try:
        step = json.loads(line).get("step")
    except (ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None


class _Tee:
    """A table that also hands every appended row to the run's trackers."""

    def __init__(self, table: _Table | _Jsonl, name: str, trackers: Any):
        self.table, self.name, self.trackers = table, name, trackers

    def __getattr__(self, attr: str) -> Any:  # path, columns, ... of the table itself
        return getattr(self.table, attr)

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self.table.append(rows)
        self.trackers.log_rows(self.name, rows)


class RunLog:
    """The tables of one run directory. ``trackers`` (``adaprec.integrations.trackers.Trackers``,
    from the ``logger`` config group) get every row appended, and the final metrics."""

    def __init__(self, out_dir: Path, trackers: Any = None):
        self.dir = Path(out_dir)
        self.trackers = trackers
        self.steps = _Table(self.dir / "steps.csv")
        self.evals = _Table(self.dir / "evals.csv")
        self.layers = _Table(self.dir / "layers.csv.gz", compress=True)
        self.decisions = _Table(self.dir / "decisions.csv")
        self.events = _Jsonl(self.dir / "events.jsonl")
        self.decisions.columns = ["step", "layer", "old", "new", "reason"]
        if not self.decisions.path.exists():  # present even when no plan ever changes
            append_bytes(self.decisions.path, (",".join(self.decisions.columns) + "\n").encode())
        if trackers is not None:
            for name in ("steps", "evals", "layers", "decisions", "events"):
                setattr(self, name, _Tee(getattr(self, name), name, trackers))

    def write_metrics(self, metrics: Mapping[str, Any]) -> None:
        write_json_atomic(self.dir / "metrics.json", metrics)
        if self.trackers is not None and metrics.get("status") != "running":
            self.trackers.log_metrics(metrics)  # the run is over: final metrics, then close
            self.trackers.close()
            self.trackers = None
