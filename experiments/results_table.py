"""The headline results table: mean ± std over seeds per workload × policy, from metrics.json files.

    python experiments/results_table.py runs/headline                 # markdown to stdout
    python experiments/results_table.py runs/headline --csv results.csv

Columns: quality (the run's task's quality metric, see ``adaprec.tasks``: val_accuracy ↑ for
image, val_perplexity ↓ for language, val_rmse ↓ for mixed_needs and underflow), modeled H100 cost relative to all-fp32 (``rel_cost_h100``, once the
cost model writes it), measured wall time of the run on this CPU, the mean share of layers per
format at the end, skipped steps, and how many seeds finished ``ok`` out of how many ran.
Needs only pandas; ``analysis.report`` draws the figures.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from adaprec.tasks import get_task, task_names

__all__ = ["load_metrics", "summarize", "to_markdown"]

NUMERIC = ["rel_cost_h100", "wall_s", "share_fp32", "share_bf16", "share_fp16", "skipped_steps"]


def load_metrics(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per job: ``experiment``, ``controller``, ``variant`` (see :func:`_variant`),
    ``seed``, ``status``, ``error``, ``metric`` (the run's task's quality metric, ``val_loss``
    when the task is unknown), ``quality`` (its value) and the NUMERIC columns (NaN if absent)."""
    rows = []
    for path in sorted(Path(sweep_dir).glob("**/metrics.json")):
        m = json.loads(path.read_text())
        choices = m.get("choices", {})
        exp = choices.get("experiment") or "?"
        shares = m.get("format_shares") or {}
        variant, metric = _variant_and_metric(path.parent / "config_resolved.yaml")
        rows.append({"experiment": exp, "controller": choices.get("controller", "?"),
                     "variant": variant,
                     "seed": m.get("seed"), "status": m.get("status"), "error": m.get("error"),
                     "metric": metric, "quality": m.get(metric, float("nan")),
                     "rel_cost_h100": m.get("rel_cost_h100", float("nan")),
                     "wall_s": m.get("wall_s", float("nan")),
                     "skipped_steps": m.get("skipped_steps", float("nan")),
                     **{f"share_{f}": shares.get(f, 0.0) for f in ("fp32", "bf16", "fp16")},
                     "run": str(path.parent)})
    if not rows:
        raise FileNotFoundError(f"no metrics.json under {sweep_dir}; run the sweep first "
                                f"(python -m adaprec.run -m sweep=<name>)")
    return pd.DataFrame(rows)


def _variant_and_metric(config_path: Path) -> tuple[str, str]:
    """What sets a job apart beyond its group choices (a fixed plan's patterns, loss scaling
    off), and its task's quality metric."""
    if not config_path.exists():
        return "", "val_loss"
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(config_path)
    parts = [f"{k}:{v}" for k, v in (OmegaConf.select(cfg, "controller.patterns") or {}).items()]
    if OmegaConf.select(cfg, "scaler.enabled") is False:
        parts.append("no loss scaling")
    task = OmegaConf.select(cfg, "dataset.task")
    return " ".join(parts), get_task(task).quality if task in task_names() else "val_loss"


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over the seeds that finished ``ok``, per (experiment, controller, variant),
    plus ``ok`` (finished seeds) and ``n`` (seeds run); failed seeds only count in ``n``. A
    NaN quality (a run that finished but diverged) makes its group's quality NaN, not hidden."""
    keys = ["experiment", "controller", "variant"]
    ok = runs[runs.status == "ok"]
    stats = ok.groupby(keys)[NUMERIC].agg(["mean", "std"])
    stats.columns = [f"{c}_{s}" for c, s in stats.columns]
    quality = ok.groupby(keys)["quality"]
    stats["quality_mean"] = quality.apply(lambda q: q.mean(skipna=False))
    stats["quality_std"] = quality.apply(lambda q: q.std(skipna=False))
    counts = runs.groupby(keys).agg(n=("status", "size"), ok=("status", lambda s: (s == "ok").sum()),
                                    metric=("metric", "first"))
    return counts.join(stats).reset_index()


def _pm(mean: float, std: float, digits: int, missing: str = "–") -> str:
    if pd.isna(mean):
        return missing
    return f"{mean:.{digits}g}" if pd.isna(std) else f"{mean:.{digits}g} ± {std:.2g}"


def to_markdown(summary: pd.DataFrame) -> str:
    """A GitHub markdown table, one row per workload × policy."""
    head = ["workload", "policy", "quality", "rel. cost H100", "wall s (CPU)",
            "fp32/bf16/fp16 share", "skipped", "ok/n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary.itertuples(index=False):
        shares = "/".join("–" if pd.isna(getattr(r, f"share_{f}_mean")) else
                          f"{getattr(r, f'share_{f}_mean'):.2f}" for f in ("fp32", "bf16", "fp16"))
        policy = f"{r.controller} ({r.variant})" if r.variant else r.controller
        cells = [r.experiment, policy, f"{r.metric} {_pm(r.quality_mean, r.quality_std, 4, 'NaN')}",
                 _pm(r.rel_cost_h100_mean, r.rel_cost_h100_std, 3),
                 _pm(r.wall_s_mean, r.wall_s_std, 3), shares,
                 _pm(r.skipped_steps_mean, r.skipped_steps_std, 3), f"{r.ok}/{r.n}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="a sweep directory, e.g. runs/headline")
    parser.add_argument("--csv", help="also write the summary as CSV here")
    args = parser.parse_args(argv)
    runs = load_metrics(args.sweep_dir)
    summary = summarize(runs)
    print(to_markdown(summary))
    failed = runs[runs.status != "ok"]
    for r in failed.itertuples(index=False):
        print(f"\n{r.status}: {r.experiment} {r.controller} seed {r.seed} ({r.run}): {r.error}")
    if args.csv:
        summary.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
