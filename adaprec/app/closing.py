"""The few lines a single run prints when it ends: what was trained, the quality it reached
beside an fp32 reference where one is known, the formats it ended in, the first plan changes
with their reasons, where everything was written, and the command to look at it.

An fp32 reference is *known* when a finished run with the same config except the controller,
run with static fp32, lies beside this one (under the same outputs folder, e.g.
``outputs/<date>/<time>``); otherwise the summary names the command that makes one.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import yaml

from adaprec.tasks import get_task, task_names

__all__ = ["closing_summary", "fp32_reference"]

_FIRST_CHANGES = 3
_MAX_SIBLINGS = 500  # runs looked at for a reference (outputs/ can grow large)


def _config(run_dir: Path) -> dict[str, Any] | None:
    try:
        return yaml.safe_load((run_dir / "config_resolved.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None


def _comparable(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config without what a reference may differ in: the controller, the progress bar."""
    out = {k: v for k, v in cfg.items() if k != "controller"}
    out["trainer"] = {k: v for k, v in (cfg.get("trainer") or {}).items()
                      if k not in ("progress", "overwrite", "resume")}
    return out


def _is_fp32(controller: Any) -> bool:
    return (isinstance(controller, dict) and str(controller.get("_target_", "")).endswith("Static")
            and controller.get("format") == "fp32")


def fp32_reference(run_dir: Path, metric: str) -> tuple[float, Path] | None:
    """(quality, run dir) of a finished static-fp32 run with this run's config but the
    controller, found beside ``run_dir`` (two folder levels up), or None."""
    cfg = _config(run_dir)
    if cfg is None:
        return None
    if _is_fp32(cfg.get("controller")):
        return None  # this run is the reference
    mine = _comparable(cfg)
    root = run_dir.resolve().parent.parent
    for i, path in enumerate(sorted(root.glob("*/*/config_resolved.yaml"), reverse=True)):
        if i >= _MAX_SIBLINGS:
            break
        other = path.parent
        if other.resolve() == run_dir.resolve():
            continue
        ocfg = _config(other)
        if ocfg is None or not _is_fp32(ocfg.get("controller")) or _comparable(ocfg) != mine:
            continue
        try:
            metrics = json.loads((other / "metrics.json").read_text())
        except (OSError, ValueError):
            continue
        if metrics.get("status") == "ok" and metrics.get(metric) is not None:
            return float(metrics[metric]), other
    return None


def _changes(run_dir: Path) -> list[dict[str, str]]:
    """Plan changes after the start plan (decisions.csv rows past step 0)."""
    try:
        with open(run_dir / "decisions.csv", newline="") as f:
            return [r for r in csv.DictReader(f) if int(r["step"]) > 0]
    except (OSError, ValueError, KeyError):
        return []


def _quality_metric(metrics: dict[str, Any], task: str | None) -> str:
    """The task's quality metric, else the first validation metric the run reports."""
    if task in task_names():
        return get_task(task).quality
    return next((k for k in metrics if k.startswith("val_") and k != "val_loss"), "val_loss")


def closing_summary(metrics: dict[str, Any], run_dir: str | Path, task: str | None = None,
                    overrides: list[str] | None = None) -> str:
    """The end-of-run text (see the module docstring); ``task``: the run's task name (its
    quality metric is reported), ``overrides``: the command line's, for the commands shown."""
    run_dir = Path(run_dir)
    quality = _quality_metric(metrics, task)
    choices = metrics.get("choices") or {}
    what = ", ".join(f"{g}={choices[g]}" for g in ("experiment", "model", "dataset", "controller")
                     if choices.get(g))
    lines = [f"adaprec: trained {what or 'the default run'} for {metrics.get('steps')} steps "
             f"({metrics.get('skipped_steps', 0)} skipped) in {metrics.get('wall_s', 0):.1f} s "
             f"({metrics.get('cpu_s', 0):.1f} s CPU)"]
    value = metrics.get(quality)
    ref = fp32_reference(run_dir, quality)
    rest = [o for o in (overrides or []) if not o.startswith(("controller=", "controller.", "+controller.",
                                                             "hydra.run.dir="))]
    if ref is not None:
        ref_text = f"fp32 reference {ref[0]:.4g} ({ref[1]})"
    elif _is_fp32((_config(run_dir) or {}).get("controller")):
        ref_text = "this run is the fp32 reference"
    else:
        ref_text = ("fp32 reference not run yet: python -m adaprec.run " + " ".join([*rest, "controller=fp32"]))
    lines.append(f"  quality       {quality} {value:.4g}; {ref_text}" if isinstance(value, (int, float))
                 else f"  quality       {quality} not measured; {ref_text}")
    shares = metrics.get("format_shares") or {}
    share_text = ", ".join(f"{fmt} {share:.0%}" for fmt, share in sorted(shares.items(), key=lambda s: -s[1]))
    lines.append(f"  formats       {share_text} of the layers at the end")
    flops = {k.removeprefix("flop_share_"): v for k, v in metrics.items()
             if k.startswith("flop_share_") and isinstance(v, (int, float)) and v > 0}
    if flops:
        lines.append("                " + ", ".join(f"{f} {v:.0%}" for f, v in sorted(flops.items(), key=lambda s: -s[1]))
                     + " of the FLOPs over the run")
    cost = next((k for k in metrics if k.startswith("rel_cost_")), None)
    if cost is not None and isinstance(metrics[cost], (int, float)):
        lines.append(f"  modeled cost  {metrics[cost]:.2f}x all-fp32 on the {cost.removeprefix('rel_cost_')} profile")
    changes = _changes(run_dir)
    lines.append(f"  plan changes  {metrics.get('plan_changes', len(changes))}"
                 + (" (the controller kept its start plan)" if not changes else ", first ones:"))
    for r in changes[:_FIRST_CHANGES]:
        lines.append(f"    step {r['step']:>4}  {r['layer']}: {r['old']} -> {r['new']}  ({r['reason']})")
    lines.append(f"  run directory {run_dir}  (decisions.csv has every change with its reason)")
    lines.append(f"  next          python -m analysis.report --run {run_dir} --out {run_dir / 'report'}")
    return "\n".join(lines)
