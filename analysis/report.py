"""One command from a sweep directory to every figure and table.

    python -m analysis.report runs/<sweep> --out <dir>     # sweep: scatter, shares, curves, tables
    python -m analysis.report runs/<sweep> --out <dir> --tables-only   # tables, no figures
    python -m analysis.report runs/<sweep> --out <dir> --ablation monitor.every   # + an ablation
    python -m analysis.report --run runs/<sweep>/<n> --out <dir>   # one run's own figures

Writes each figure as ``<name>.pdf`` + ``<name>.png`` beside ``<name>.csv`` (its data), the
summary tables as Markdown and LaTeX, for workloads with bandit runs their regret and arm-pull
tables (``bandits.csv``) and figures (:mod:`analysis.bandits`), an ``index.html`` that shows every figure and table of
the folder (relative links: it opens offline, straight from the disk), and prints the Markdown
summary. Runs that failed, diverged or never finished are listed with their error and left out
of every aggregate.
"""
from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import pandas as pd

from . import bandits, figures, prep, tables
from .load import load_decisions, load_evals, load_layers, load_runs, load_steps, ok_runs
from .html_index import write_index
from .stats import aggregate, cost_columns, improvement_probabilities, pareto_front, welch_tests
from .style import policy_styles
from .ablation import ablation_plot, ablation_table
from .time_to_quality import DEFAULT_FRACTION, summarize as summarize_ttq, time_to_quality

__all__ = ["main", "sweep_report", "run_report", "slug"]


def slug(text: str) -> str:
    """A file-name-safe version of a workload or run id."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "run"


def sweep_report(sweep: str | Path, out: str | Path, per_run: bool = True,
                 baseline: str = "fp32", measured: str = "wall_s", memory: bool = False,
                 draw: bool = True, ablations: Sequence[str] = ()) -> str:
    """Write all figures and tables for ``sweep`` under ``out``; return the Markdown summary.
    ``draw=False``: tables and their CSVs only (no figures, no per-run figures).
    ``ablations``: config keys the sweep varied (``monitor.every``): a table and a figure each.
    ``baseline``: the controller every other one is tested against (Welch's t-test);
    ``measured``: the measured cost axis where no modeled cost exists (``wall_s`` or ``cpu_s``);
    ``memory``: modeled (and CUDA-measured) peak bytes as cost axes beside time."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(sweep)
    runs.to_csv(out / "runs.csv", index=False)
    notes = _skipped_notes(runs)
    if ok_runs(runs).empty:
        raise ValueError(f"no run in {sweep} finished with status ok; nothing to aggregate "
                         f"({len(runs)} run(s) listed in {out / 'runs.csv'})")
    costs, fallback = cost_columns(runs, measured=measured, memory=memory)
    if fallback:
        notes.insert(0, "Note: no modeled cost (rel_cost_<profile>) in these runs; "
                        f"cost = measured {measured}.")
    agg, welch = aggregate(runs), welch_tests(runs, baseline=baseline)
    poi = improvement_probabilities(runs, baseline=baseline)
    front = pareto_front(agg, costs)
    for name, frame in (("aggregate", agg), ("welch", welch), ("pareto", front),
                        ("improvement", poi)):
        frame.to_csv(out / f"{name}.csv", index=False)
    styles = policy_styles(runs["controller"].dropna())
    steps, evals = load_steps(ok_runs(runs)), load_evals(ok_runs(runs))
    ttq = summarize_ttq(time_to_quality(runs, evals, steps, baseline=baseline))
    ttq.to_csv(out / "time_to_quality.csv", index=False)
    sections = []
    for workload in sorted(agg.loc[agg["n"] > 0, "workload"].unique()):  # skip all-failed ones
        wl_dir = out / slug(workload)
        sections.append(_workload_tables(workload, agg, costs, welch, poi, wl_dir, baseline))
        sections.append(_ttq_table(ttq[ttq["workload"] == workload], baseline))
        for key in ablations:
            sections.append(_ablation(runs[runs["workload"] == workload], key, wl_dir, styles, draw))
        sections.append(_bandits(runs[runs["workload"] == workload], workload, wl_dir, styles, draw))
        if draw:
            _workload_figures(workload, agg, front, steps, evals, wl_dir, styles)
    if per_run and draw:
        for run_id in ok_runs(runs)["run_id"]:
            run_figures(runs[runs["run_id"] == run_id], out / "runs" / slug(run_id), styles)
    text = f"# Sweep {Path(sweep).name}\n\n" + "\n".join(sections)
    text += ("\n" + "\n".join(notes) + "\n") if notes else ""
    (out / "summary.md").write_text(text)
    write_index(out, title=f"Sweep {Path(sweep).name}")
    return text


def _workload_tables(workload, agg, costs, welch, poi, wl_dir: Path, baseline: str) -> str:
    summary = tables.summary_table(agg, costs, welch, workload, baseline=baseline, poi=poi)
    wl_dir.mkdir(parents=True, exist_ok=True)
    markdown = tables.to_markdown(summary)
    (wl_dir / "summary.md").write_text(markdown)
    (wl_dir / "summary.tex").write_text(tables.to_latex(summary, label=f"tab:{slug(workload)}"))
    return f"## {workload}\n\n{markdown}"


def _ablation(runs: pd.DataFrame, key: str, wl_dir: Path, styles, draw: bool) -> str:
    table = ablation_table(runs, key)
    stem = wl_dir / f"ablation_{slug(key).replace('.', '_')}"
    table.to_csv(stem.parent / f"{stem.name}.csv", index=False)
    if draw and not table.empty:
        figures.save_figure(ablation_plot(table, styles=styles)[0], stem, data=table)
    lines = [f"Ablation of `{key}` (quality IQM [95% bootstrap CI] over seeds; cost: "
             f"{table['cost_column'].iloc[0] if len(table) else '–'}):", "",
             "| controller | " + key + " | n | quality | CI | cost | skipped | plan changes |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.controller} | {tables.sig(r.value) if isinstance(r.value, float) else r.value} | {r.n} | "
              f"{tables.sig(r.quality)} | [{tables.sig(r.lo)}, {tables.sig(r.hi)}] | {tables.sig(r.cost)} | "
              f"{tables.sig(r.skipped_steps)} | {tables.sig(r.plan_changes)} |" for r in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _bandits(runs: pd.DataFrame, workload: str, wl_dir: Path, styles, draw: bool) -> str:
    """The bandit runs' regret and pull-share tables (``bandits.csv``, ``bandits.md``), and
    with ``draw`` their pull-share, cumulative-regret and reward-trace figures; "" without
    bandit runs."""
    summaries = bandits.bandit_summaries(runs)
    if not summaries:
        return ""
    table = bandits.bandit_table(runs, summaries)
    wl_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(wl_dir / "bandits.csv", index=False)
    sig = tables.sig
    lines = ["Bandits: regret against each layer's best fixed arm in hindsight, summed over layers "
             "(reward units; IQM over seeds, 95% bootstrap CI; per window: total / decision windows):", "",
             "| policy | seeds | windows | regret | CI | regret per window |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.policy} | {r.seeds} | {r.windows} | {sig(r.regret)} | [{sig(r.regret_lo)}, "
              f"{sig(r.regret_hi)}] | {sig(r.regret_per_window)} |" for r in table.itertuples(index=False)]
    shares = [c for c in table.columns if c.startswith("share_") and (table[c] > 0).any()]
    lines += ["", "Arm pulls: share of layer-windows per format (mean over seeds):", "",
              "| policy | " + " | ".join(c[len("share_"):] for c in shares) + " |",
              "|---|" + "---|" * len(shares)]
    lines += [f"| {r['policy']} | " + " | ".join(sig(r[c]) for c in shares) + " |"
              for r in table.to_dict("records")]
    untraced = int((table["seeds"] - table["traced"]).sum())
    if untraced:
        lines += ["", f"Note: {untraced} bandit run(s) have no complete per-window trace in "
                      "controller.json (written before the trace existed): table and pull shares "
                      "only; no regret or reward traces for them."]
    if draw:
        title = f"workload: {workload}"
        figures.save_figure(bandits.pull_share_bars(bandits.share_frame(table), title=title)[0],
                            wl_dir / "bandit_pulls", data=bandits.share_frame(table))
        curves = bandits.regret_curves(bandits.window_table(runs, summaries))
        if not curves.empty:
            for y, plot, stem in (("regret", bandits.regret_plot, "bandit_regret"),
                                  ("reward", bandits.reward_plot, "bandit_reward")):
                curve = bandits.policy_curve(curves, y)
                figures.save_figure(plot(curve, styles=styles, title=title)[0], wl_dir / stem, data=curve)
    text = "\n".join(lines) + "\n"
    (wl_dir / "bandits.md").write_text(text)  # beside the figures in index.html
    return text


def _ttq_table(ttq: pd.DataFrame, baseline: str) -> str:
    """Markdown: runs reaching DEFAULT_FRACTION of the baseline's final quality, and how fast."""
    if ttq.empty:
        return ""
    head = (f"Time to {DEFAULT_FRACTION:.0%} of {baseline}'s final quality (IQM over the runs "
            f"that reached it; modeled cost in {baseline} steps):\n\n"
            "| controller | reached | steps | modeled cost |\n|---|---|---|---|\n")
    rows = [f"| {r.controller} | {r.reached}/{r.n} | {tables.sig(r.steps_iqm)} | {tables.sig(r.cost_iqm)} |"
            for r in ttq.itertuples(index=False)]
    return head + "\n".join(rows) + "\n"


def _workload_figures(workload, agg, front, steps, evals, wl_dir: Path, styles) -> None:
    part = front[front["workload"] == workload]
    for cost, table in part.groupby("cost", sort=True):
        fig, _ = figures.quality_cost_scatter(table, styles=styles, title=f"workload: {workload}")
        figures.save_figure(fig, wl_dir / f"quality_vs_{cost}", data=table)
    agg_wl = agg[agg["workload"] == workload]
    try:
        shares = prep.share_table(agg_wl)
    except ValueError:
        shares = None  # runs report no shares: nothing to stack
    if shares is not None:
        figures.save_figure(figures.flop_share_bars(shares, title=f"workload: {workload}")[0],
                            wl_dir / "shares", data=shares)
    _curves(steps[steps["workload"] == workload], "loss", wl_dir / "train_loss", styles, smooth=True,
            title=f"workload: {workload}")
    metric = agg_wl["quality_metric"].iloc[0]
    if metric and metric in evals:
        _curves(evals[evals["workload"] == workload], metric, wl_dir / metric, styles,
                title=f"workload: {workload}")


def _curves(table: pd.DataFrame, y: str, stem: Path, styles, smooth: bool = False,
            title: str | None = None) -> None:
    if table.empty or y not in table or table[y].notna().sum() == 0:
        return
    # per-step training loss is noisy: average over ~1/50 of the run (evals are left as logged)
    window = max(1, table.groupby("run_id")["step"].count().max() // 50) if smooth else 1
    curve = prep.curve_table(table, y=y, smooth=int(window))
    label = y.replace("_", " ") + (" (training, smoothed)" if smooth and window > 1 else "")
    fig, _ = figures.training_curves(curve, ylabel=label, styles=styles, title=title)
    figures.save_figure(fig, stem, data=curve)


def run_figures(run: pd.DataFrame, out: Path, styles: dict | None = None) -> list[str]:
    """The per-run figures (precision timeline, fp16 rates, curves, loss scale) of the single
    run in ``run`` (one row of :func:`load_runs`) into ``out``; returns notes on what was missing."""
    out.mkdir(parents=True, exist_ok=True)
    styles = styles or policy_styles(run["controller"].dropna())
    notes = []
    layers, decisions = load_layers(run), load_decisions(run)
    steps, evals = load_steps(run), load_evals(run)
    if "format" in layers and len(layers):
        timeline = prep.timeline_table(layers)
        switches = prep.switch_table(decisions) if "new" in decisions else None
        fig, _ = figures.precision_timeline(timeline, switches)
        figures.save_figure(fig, out / "timeline", data=timeline)
        if switches is not None:
            switches.to_csv(out / "timeline_switches.csv", index=False)
        for kind in ("act", "grad"):
            if f"{kind}_fp16_overflow" in layers:
                rates = prep.rates_table(layers, kind)
                figures.save_figure(figures.fp16_rates(rates, kind=kind)[0],
                                    out / f"fp16_rates_{kind}", data=rates)
    else:
        notes.append("no layers.csv(.gz): no precision timeline or fp16 rates")
    if {"loss_scale", "skipped"} <= set(steps.columns) and len(steps):
        scale = prep.scale_table(steps)
        if (scale["loss_scale"] == 1.0).all() and not scale["skipped"].any():
            notes.append("no loss scaling in this run (scale 1, no skipped step): no loss-scale trace")
        else:
            figures.save_figure(figures.loss_scale_trace(scale)[0], out / "loss_scale", data=scale)
    else:
        notes.append("no steps.csv with loss_scale/skipped: no loss-scale trace")
    _curves(steps, "loss", out / "train_loss", styles, smooth=True)
    for search in sorted(Path(run["run_dir"].iloc[0]).glob("deploy_*/deploy_search.csv")):
        _deploy_figure(search, out / f"sensitivity_{search.parent.name}")
    metric = run["quality_metric"].iloc[0]
    if metric and metric in evals:
        _curves(evals, metric, out / metric, styles)
    return notes


def _deploy_figure(search_csv: Path, stem: Path) -> None:
    """Sensitivity figure of an ``adaprec.tools.deploy`` search found in a run directory."""
    import json
    table = pd.read_csv(search_csv)
    sens = table[table["stage"] == "sensitivity"][["layer", "format", "drop"]].copy()
    plan_file = search_csv.parent / "inference_plan.json"
    tolerance = None
    if plan_file.exists():
        saved = json.loads(plan_file.read_text())
        tolerance = saved.get("tolerance")
        entries = saved.get("plan", {}).get("entries", {})
        sens["chosen"] = sens["layer"].map(lambda n: entries.get(n, "fp32") != "fp32")
    fig, _ = figures.deploy_sensitivity(sens, tolerance=tolerance)
    figures.save_figure(fig, stem, data=sens)


def run_report(run_dir: str | Path, out: str | Path) -> str:
    """Per-run figures for the run in ``run_dir``; returns a short Markdown summary."""
    runs = load_runs(run_dir)
    if len(runs) != 1:
        raise ValueError(f"--run expects one run directory, found {len(runs)} runs under "
                         f"{run_dir}; pass one of them or drop --run for a sweep report")
    run = runs.iloc[0]
    notes = run_figures(runs, Path(out))
    lines = [f"# Run {run['run_id']}", "", f"- status: {run['status']}"]
    if run["status"] != "ok":
        lines.append(f"- error: {run['error']}")
    for key in ("workload", "controller", "seed", "quality_metric", "quality", "steps",
                "skipped_steps", "plan_changes", "wall_s"):
        lines.append(f"- {key}: {run.get(key)}")
    lines += [f"- {n}" for n in notes]
    text = "\n".join(lines) + "\n"
    (Path(out) / "summary.md").write_text(text)
    write_index(Path(out), title=f"Run {run['run_id']}")
    return text


def _skipped_notes(runs: pd.DataFrame) -> list[str]:
    bad = runs[runs["status"] != "ok"]
    if bad.empty:
        return []
    lines = [f"Skipped {len(bad)} run(s) that are not ok (left out of every aggregate):"]
    lines += [f"- {r.run_id} [{r.status}]: {r.error}" for r in bad.itertuples(index=False)]
    return lines


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.split("\n")[0])
    p.add_argument("sweep", nargs="?", help="sweep directory (e.g. runs/<sweep>)")
    p.add_argument("--run", metavar="DIR", help="one run directory: its per-run figures only")
    p.add_argument("--out", required=True, metavar="DIR", help="where figures and tables go")
    p.add_argument("--baseline", default="fp32", metavar="CONTROLLER",
                   help="controller the others are tested against (default: fp32)")
    p.add_argument("--no-per-run", action="store_true",
                   help="sweep mode: skip the per-run figures of every ok run")
    p.add_argument("--measured", choices=["wall_s", "cpu_s"], default="wall_s",
                   help="measured cost axis where runs have no modeled cost (cpu_s: process CPU time)")
    p.add_argument("--ablation", action="append", default=[], metavar="KEY",
                   help="sweep mode: a config key the sweep varied (e.g. monitor.every): table + figure; repeatable")
    p.add_argument("--tables-only", action="store_true",
                   help="sweep mode: the summary tables (Markdown, LaTeX, CSV) without figures")
    p.add_argument("--memory", action="store_true",
                   help="also plot quality against modeled (and CUDA-measured) peak memory")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if (args.sweep is None) == (args.run is None):
        _parser().error("give either a sweep directory or --run DIR (exactly one)")
    matplotlib.use("Agg")  # files only; never open a window
    try:
        if args.run:
            text = run_report(args.run, args.out)
        else:
            text = sweep_report(args.sweep, args.out, per_run=not args.no_per_run,
                                baseline=args.baseline, measured=args.measured, memory=args.memory,
                                draw=not args.tables_only, ablations=args.ablation)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
