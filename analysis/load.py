"""Load a sweep (or one run) directory into tidy pandas tables.

A *run directory* is any folder holding ``metrics.json`` or ``config_resolved.yaml``; runs are
found by globbing for those files below the given path (``.hydra/`` folders excluded) and are
never identified by parsing folder names. Every fact comes from the files themselves.

``load_runs(path)`` — one row per run. Columns:

- ``run_id``: the run directory relative to ``path`` (POSIX); the key of every other table.
- ``workload``: ``experiment`` choice when present, else ``"<model>/<dataset>"`` (None when
  no readable file names them).
- ``controller``, ``model``, ``dataset``, ``experiment`` (always present, may be missing values);
  a run with ``controller.cost_budget`` set is labelled ``<controller>@<budget>`` (e.g.
  ``threshold@0.6``) so budget runs are their own points in aggregates and Pareto plots
  and every other Hydra group choice from ``metrics.json["choices"]`` under its group name
  (a choice whose name clashes with a metrics key is stored as ``choice.<group>``). Runs without
  ``metrics.json`` take their choices from ``.hydra/hydra.yaml`` (``hydra.runtime.choices``).
  An ``autocast`` run whose format ran emulated here (``environment.executors``) is labelled
  ``autocast (emulated)``. Where the runs differ in an emulation setting that changes values
  (:data:`NUMERICS_SETTINGS`: ``emulation.gemm_rounding``, the fp8 scaling, stochastic
  gradients), each run's controller names its own, e.g. ``mxfp8_e4m3 (gemm_rounding=operands)``,
  so the two semantics are never averaged into one point; a sweep that keeps them fixed keeps
  plain labels.
- ``seed``: from ``metrics.json``, else ``cfg.seed``.
- ``status``: ``"ok"`` | ``"failed"`` | ``"diverged"`` as the trainer wrote it, or
  ``"incomplete"`` for a run with a config but no (readable) ``metrics.json``, or whose
  ``metrics.json`` still says ``"running"`` (the job was killed).
- ``error``: the run's error message (``None`` for ok runs).
- ``quality_metric`` / ``quality`` / ``higher_is_better``: the workload's quality measure — its
  task's quality metric (``cfg.dataset.task``; see :mod:`adaprec.tasks`: ``val_accuracy``,
  higher is better; ``val_perplexity``, ``val_rmse``, lower is better), else the first task
  quality, else ``val_loss``, that any run of the workload reports — and this run's value of it.
- every scalar of ``metrics.json`` under its own name: ``steps``, ``skipped_steps``, ``wall_s``,
  ``val_loss``, ``val_accuracy`` | ``val_perplexity``, ``plan_changes``, ``cost_<profile>_s``,
  ``rel_cost_<profile>``, ``flop_share_<fmt>``, ...; ``format_shares`` flattened to
  ``format_share_<fmt>`` (a format another run used but this one did not has share 0); ``final_plan`` kept as a ``{layer: fmt}`` dict; any other nested dict
  flattened as ``<key>.<subkey>``.
- ``cfg.<dotted.key>``: every leaf of ``config_resolved.yaml`` (lists as their string form).
- ``environment.<key>``: where the run ran (``metrics.json["environment"]``: torch, device,
  ``cpu_flags.<flag>``, ``executors.<fmt>``, ``adaprec_commit``, ``adaprec_dirty``, ...);
  ``load_runs`` warns (:class:`MixedEnvironmentWarning`) when the runs disagree on any of them
  but the dirty flag, so a sweep merged from two machines is never compared silently.
- ``overrides``: the Hydra overrides from ``.hydra/overrides.yaml`` joined by spaces (or None).
- ``run_dir``: absolute path of the run directory.

``load_steps`` / ``load_evals`` / ``load_layers`` / ``load_decisions`` — the run's
``steps.csv`` / ``evals.csv`` / ``layers.csv.gz`` / ``decisions.csv`` stacked into one long
table, each row prefixed with the key columns ``run_id, workload, controller, seed`` and keeping
the file's own columns unchanged (see the run-directory layout in the project README). Runs
missing the file, or whose file is empty or unreadable, contribute no rows; they remain visible
(with their status and error) in ``load_runs``.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from adaprec.tasks import get_task, quality_metrics, task_names

__all__ = ["RUN_FILES", "KEY_COLUMNS", "NUMERICS_SETTINGS", "find_run_dirs", "load_runs",
           "load_steps", "load_evals", "load_layers", "load_decisions", "ok_runs",
           "MixedEnvironmentWarning", "environment_differences"]

RUN_FILES = ("metrics.json", "config_resolved.yaml")
# emulation settings under which one format computes different values (compiled_rounding does
# not: the same values, faster); a sweep mixing one of them labels runs by it
NUMERICS_SETTINGS = ("gemm_rounding", "fp8_scaling", "amax_history_len", "fp8_margin", "stochastic_grads")
KEY_COLUMNS = ["run_id", "workload", "controller", "seed"]
_FINAL_STATUSES = ("ok", "failed", "diverged")
_ALWAYS_CHOICES = ("controller", "model", "dataset", "experiment")
_FIRST_COLUMNS = ["run_id", "workload", "controller", "model", "dataset", "experiment", "seed",
                  "status", "error", "quality_metric", "quality", "higher_is_better"]


def find_run_dirs(path: str | Path) -> list[Path]:
    """Every run directory at or below ``path``, sorted."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"not a directory: {root}; pass a sweep or run directory")
    found = {p.parent for name in RUN_FILES for p in root.glob(f"**/{name}")}
    return sorted(d for d in found if ".hydra" not in d.relative_to(root).parts)


def load_runs(path: str | Path) -> pd.DataFrame:
    """One row per run below ``path``; see the module docstring for the column contract."""
    root = Path(path).resolve()
    dirs = find_run_dirs(root)
    if not dirs:
        raise ValueError(f"no run directories under {root}: expected folders holding "
                         f"{' or '.join(RUN_FILES)}; pass the sweep directory the trainer wrote")
    runs = pd.DataFrame([_run_row(root, d) for d in dirs])
    runs = _label_numerics_settings(_add_quality(_fill_shares(runs)))
    differing = environment_differences(runs)
    if differing:
        warnings.warn(f"runs under {root} ran in different environments ({'; '.join(differing)}): "
                      "compare measured times only within one environment (group by those "
                      "environment.* columns)", MixedEnvironmentWarning, stacklevel=2)
    cfg_cols = sorted(c for c in runs.columns if c.startswith("cfg."))
    rest = [c for c in runs.columns if c not in _FIRST_COLUMNS and c not in cfg_cols
            and c not in ("overrides", "run_dir")]
    return runs[_FIRST_COLUMNS + rest + cfg_cols + ["overrides", "run_dir"]]


def _label_numerics_settings(runs: pd.DataFrame) -> pd.DataFrame:
    """Append each :data:`NUMERICS_SETTINGS` value the runs disagree on to their controller."""
    for name in NUMERICS_SETTINGS:
        col = f"cfg.emulation.{name}"
        if col not in runs or runs[col].dropna().astype(str).nunique() < 2:
            continue
        known = runs[col].notna()
        runs.loc[known, "controller"] = [f"{c} ({name}={v})" for c, v in
                                         zip(runs.loc[known, "controller"], runs.loc[known, col])]
    return runs


class MixedEnvironmentWarning(UserWarning):
    """The loaded runs ran on different machines, torch versions or executors."""


def environment_differences(runs: pd.DataFrame) -> list[str]:
    """``"<key>: <values>"`` for each ``environment.*`` column whose runs disagree (the dirty
    flag aside: it says whether a commit describes the code, not where it ran)."""
    out = []
    for col in sorted(c for c in runs.columns if c.startswith("environment.")):
        if col == "environment.adaprec_dirty":
            continue
        values = sorted({str(v) for v in runs[col] if v is not None and v == v})
        if len(values) > 1:
            out.append(f"{col.removeprefix('environment.')}: {', '.join(values)}")
    return out


def ok_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that enter aggregates: status ``"ok"``."""
    return runs[runs["status"] == "ok"]


def load_steps(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """Every run's ``steps.csv``, keyed by run (``source``: a sweep path or ``load_runs`` output)."""
    return _load_table(source, ("steps.csv",))


def load_evals(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """Every run's ``evals.csv``, keyed by run."""
    return _load_table(source, ("evals.csv",))


def load_layers(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """Every run's ``layers.csv.gz`` (or ``layers.csv``), keyed by run."""
    return _load_table(source, ("layers.csv.gz", "layers.csv"))


def load_decisions(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """Every run's ``decisions.csv``, keyed by run."""
    return _load_table(source, ("decisions.csv",))


# --- one run -----------------------------------------------------------------------------------

def _run_row(root: Path, run_dir: Path) -> dict[str, Any]:
    rel = run_dir.relative_to(root).as_posix()
    row: dict[str, Any] = {"run_id": rel if rel != "." else run_dir.name}
    cfg = _read_yaml(run_dir / "config_resolved.yaml")
    metrics, problem = _read_metrics(run_dir / "metrics.json")
    choices = metrics.get("choices") if metrics else None
    if not isinstance(choices, dict):
        choices = _hydra_choices(run_dir)
    for key in _ALWAYS_CHOICES:
        row[key] = None
    for key, value in (metrics or {}).items():
        if key != "choices":
            _put_metric(row, key, value)
    for group, choice in choices.items():
        row["choice." + group if group in row and group not in _ALWAYS_CHOICES else group] = choice
    if metrics is None:
        row["status"], row["error"] = "incomplete", problem
    elif metrics.get("status") not in _FINAL_STATUSES:  # e.g. "running": killed mid-run
        row["status"] = "incomplete"
        row["error"] = f"metrics.json status {metrics.get('status')!r}: the run did not finish"
    else:
        row["status"], row["error"] = metrics["status"], metrics.get("error")
        if row["status"] != "ok" and not row["error"]:
            row["error"] = f"status {row['status']!r} without an error message"
    if row.get("seed") is None and isinstance(cfg, dict):
        row["seed"] = cfg.get("seed")
    row.update({"cfg." + k: v for k, v in _flatten(cfg or {}).items()})
    budget = row.get("cfg.controller.cost_budget")
    if row["controller"] is not None and budget is not None:
        # a budgeted controller is its own point on the Pareto plots, not a seed of the other
        row["controller"] = f"{row['controller']}@{budget:g}"
    if row["controller"] == "autocast":
        # the autocast baseline where the device runs its format slowly ran emulated (one
        # autocast region, fp32 kernels): labelled so, never passed off as native kernels
        how = row.get(f"environment.executors.{row.get('cfg.controller.dtype')}")
        if isinstance(how, str) and "emulated" in how:
            row["controller"] = "autocast (emulated)"
    known = row["model"] is not None or row["dataset"] is not None
    row["workload"] = row["experiment"] or (f"{row['model']}/{row['dataset']}" if known else None)
    overrides = _read_yaml(run_dir / ".hydra" / "overrides.yaml")
    row["overrides"] = " ".join(map(str, overrides)) if isinstance(overrides, list) else None
    row["run_dir"] = str(run_dir)
    return row


def _put_metric(row: dict[str, Any], key: str, value: Any) -> None:
    if key == "format_shares" and isinstance(value, dict):
        row.update({f"format_share_{fmt}": v for fmt, v in value.items()})
    elif key == "final_plan" or not isinstance(value, dict):
        row[key] = value
    else:
        row.update({f"{key}.{k}": v for k, v in _flatten(value).items()})


def _read_metrics(path: Path) -> tuple[dict | None, str | None]:
    if not path.exists():
        return None, "no metrics.json: the run did not finish (killed or still running)"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return None, f"unreadable metrics.json: {e}"
    if not isinstance(metrics, dict):
        return None, "unreadable metrics.json: top level is not an object"
    return metrics, None


def _read_yaml(path: Path) -> Any:
    if not path.exists():
        return None
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def _hydra_choices(run_dir: Path) -> dict[str, str]:
    hydra_cfg = _read_yaml(run_dir / ".hydra" / "hydra.yaml") or {}
    choices = (hydra_cfg.get("hydra", {}).get("runtime", {}) or {}).get("choices", {}) or {}
    return {k: v for k, v in choices.items() if not str(k).startswith("hydra/")}


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = str(value) if isinstance(value, (list, dict)) else value
    return out


def _fill_shares(runs: pd.DataFrame) -> pd.DataFrame:
    """A run lists only the formats it used: its other formats' shares are 0, not unknown."""
    for family in ("format_share_", "flop_share_"):
        cols = [c for c in runs if c.startswith(family)]
        if cols:
            reported = runs[cols].notna().any(axis=1)
            runs.loc[reported, cols] = runs.loc[reported, cols].fillna(0.0)
    return runs


def _add_quality(runs: pd.DataFrame) -> pd.DataFrame:
    runs = runs.copy()
    runs["quality_metric"], runs["quality"], runs["higher_is_better"] = None, float("nan"), None
    for _, idx in runs.groupby("workload", dropna=False).groups.items():
        for metric, higher in _quality_order(runs.loc[idx]):
            if metric in runs and runs.loc[idx, metric].notna().any():
                runs.loc[idx, "quality_metric"] = metric
                runs.loc[idx, "quality"] = pd.to_numeric(runs.loc[idx, metric], errors="coerce")
                runs.loc[idx, "higher_is_better"] = higher
                break
    return runs


def _quality_order(workload: pd.DataFrame) -> list[tuple[str, bool]]:
    """(metric, higher_is_better) to look for: the workload's own task's quality first."""
    tasks = workload["cfg.dataset.task"].dropna().unique() if "cfg.dataset.task" in workload else []
    own = [(get_task(t).quality, get_task(t).higher_is_better) for t in tasks if t in task_names()]
    return [*own, *quality_metrics()]


# --- per-run tables ----------------------------------------------------------------------------

def _load_table(source: str | Path | pd.DataFrame, names: tuple[str, ...]) -> pd.DataFrame:
    runs = source if isinstance(source, pd.DataFrame) else load_runs(source)
    frames = []
    for run in runs.itertuples(index=False):
        table = _read_csv(Path(run.run_dir), names)
        if table is None:
            continue
        keys = pd.DataFrame({k: [getattr(run, k)] * len(table) for k in KEY_COLUMNS})
        frames.append(pd.concat([keys, table.reset_index(drop=True)], axis=1))
    if not frames:
        return pd.DataFrame(columns=KEY_COLUMNS)
    return pd.concat(frames, ignore_index=True)


def _read_csv(run_dir: Path, names: tuple[str, ...]) -> pd.DataFrame | None:
    for name in names:
        path = run_dir / name
        if path.exists():
            try:
                return pd.read_csv(path)
            except (OSError, ValueError, EOFError):  # empty, truncated or corrupt file
                return None
    return None
