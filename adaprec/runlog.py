"""Run-directory writers: tidy tables appended row by row, JSON written atomically.

Layout of a run directory (the contract ``analysis/`` reads):
  config_resolved.yaml  the resolved config
  metrics.json          status, error, choices, final metrics, final plan
  steps.csv             one row per optimizer step
  evals.csv             one row per evaluation
  layers.csv.gz         one row per sampled step x layer (format + every statistic)
  decisions.csv         one row per plan change (step, layer, old, new, reason)
  model.pt              final model weights (state_dict; load with weights_only=True)
"""
from __future__ import annotations

import csv
import gzip
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["RunLog", "write_json_atomic", "save_atomic"]


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


class RunLog:
    """The tables of one run directory."""

    def __init__(self, out_dir: Path):
        self.dir = Path(out_dir)
        self.steps = _Table(self.dir / "steps.csv")
        self.evals = _Table(self.dir / "evals.csv")
        self.layers = _Table(self.dir / "layers.csv.gz", compress=True)
        self.decisions = _Table(self.dir / "decisions.csv")
        self.decisions.columns = ["step", "layer", "old", "new", "reason"]
        if not self.decisions.path.exists():  # present even when no plan ever changes
            self.decisions.path.write_text(",".join(self.decisions.columns) + "\n")

    def write_metrics(self, metrics: Mapping[str, Any]) -> None:
        write_json_atomic(self.dir / "metrics.json", metrics)
