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
from typing import Any

__all__ = ["RunLog", "write_json_atomic", "save_atomic", "truncate_tables", "TABLES", "RUN_FILES"]

# table file -> rows kept on resume at step R: rows logged before checkpoint R was written.
# Steps, layer statistics and events carry the step they ran; decisions and evaluations
# carry the step count *after* the step that made them (the step a new plan starts at).
TABLES = {"steps.csv": "<", "layers.csv.gz": "<", "events.jsonl": "<",
          "decisions.csv": "<=", "evals.csv": "<="}
# what a run leaves in its directory (removed by trainer.overwrite=true)
RUN_FILES = (*TABLES, "metrics.json", "config_resolved.yaml", "checkpoint.pt", "checkpoint.pt.tmp",
             "model.pt")


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` via temp file + fsync + rename: a kill leaves the old file or the new one."""
    import torch

    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON via temp file + fsync + rename, so a kill never leaves a torn file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
            self.columns = list(rows[0])
            header = not self.path.exists() or self.path.stat().st_size == 0
        else:
            header = False
        opener = gzip.open if self.compress else open
        # gzip members concatenate into one valid stream, so appending is safe for .gz too
        with opener(self.path, "at", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            if header:
                w.writeheader()
            w.writerows(rows)


class _Jsonl:
    """An append-only JSON-lines log."""

    def __init__(self, path: Path):
        self.path = path

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        with open(self.path, "a") as f:
            for row in rows:
                f.write(json.dumps(row, sort_keys=True, default=str) + "\n")


def _complete_lines(data: bytes) -> list[str]:
    """Lines that were fully written (a kill mid-append leaves a torn last line)."""
    text = data.decode("utf-8", errors="replace")
    return text.split("\n")[:-1]  # the piece after the last newline is torn (or empty)


def _read_gzip_tolerant(path: Path) -> bytes:
    """Decompress concatenated gzip members, keeping what a torn last member still yields."""
    data, out = path.read_bytes(), []
    while data:
        d = zlib.decompressobj(wbits=31)
        try:
            out.append(d.decompress(data))
        except zlib.error:
            break
        if not d.eof:  # truncated member: keep its decoded prefix, stop
            break
        data = d.unused_data
    return b"".join(out)


def _keep(step: str | int, op: str, resume_step: int) -> bool:
    try:
        s = int(step)
    except (TypeError, ValueError):
        return False
    return s < resume_step if op == "<" else s <= resume_step


def _rewrite(path: Path, data: bytes, compress: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(gzip.compress(data) if compress else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def truncate_tables(out_dir: str | Path, resume_step: int) -> dict[str, int]:
    """Cut every table back to the rows logged before the checkpoint of ``resume_step`` was
    written (see ``TABLES``), dropping torn last lines; returns rows kept per table."""
    kept = {}
    for name, op in TABLES.items():
        path = Path(out_dir) / name
        if not path.exists():
            continue
        compress = name.endswith(".gz")
        lines = _complete_lines(_read_gzip_tolerant(path) if compress else path.read_bytes())
        if name.endswith(".jsonl"):
            rows = [ln for ln in lines if ln.strip() and _keep(_json_step(ln), op, resume_step)]
            body = rows
        else:
            header, rows = (lines[0], lines[1:]) if lines else (None, [])
            ncol = len(next(csv.reader([header]))) if header else 0
            rows = [ln for ln in rows if _csv_row_ok(ln, ncol, op, resume_step)]
            body = ([header] if header else []) + rows
        _rewrite(path, "".join(ln + "\n" for ln in body).encode(), compress)
        kept[name] = len(rows)
    return kept


def _json_step(line: str):
    try:
        return json.loads(line).get("step")
    except (ValueError, AttributeError):
        return None


def _csv_row_ok(line: str, ncol: int, op: str, resume_step: int) -> bool:
    fields = next(csv.reader(io.StringIO(line)), [])
    return len(fields) == ncol and _keep(fields[0], op, resume_step)


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
            self.decisions.path.write_text(",".join(self.decisions.columns) + "\n")
        if trackers is not None:
            for name in ("steps", "evals", "layers", "decisions", "events"):
                setattr(self, name, _Tee(getattr(self, name), name, trackers))

    def write_metrics(self, metrics: Mapping[str, Any]) -> None:
        write_json_atomic(self.dir / "metrics.json", metrics)
        if self.trackers is not None and metrics.get("status") != "running":
            self.trackers.log_metrics(metrics)  # the run is over: final metrics, then close
            self.trackers.close()
            self.trackers = None
