"""The block-format study (experiments/README.md, ``block_formats``): which layers and which of
their GEMM operands run a low-precision format, and which stay higher, under each policy.

    python -m analysis.block_formats runs/block_formats --out reports/block_formats

From every run below the folder (static runs, controllers, hand-made plans), the plan history in
``decisions.csv`` gives, per layer and per GEMM operand role (``input`` and ``weight`` of fprop,
the output gradient of ``dgrad`` and of ``wgrad``; :meth:`Format.roles`), the fraction of the
run's steps spent in a *low* format: 8 bits or fewer per element (fp8, MX, NVFP4). Writes
``low_fraction.csv`` (long: policy, layer, role, fraction), ``low_fraction.{pdf,png}`` (the map:
policies × roles down, layers across), ``quality.csv``/``quality.md`` (quality, its change
against the policy named ``--reference``, modeled costs, the share of layer-role-steps in a low
format) and ``stays_high.md`` (per policy, the layer roles that spent most of the run high).
A best-static search below the folder (``adaprec.tools.best_static``: ``search.csv`` beside
``best_static.json``) adds ``best_static_search.md``: per layer, its measured sensitivity (the
quality with that layer alone in the low format) and its format in the plan the search trained.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from adaprec.numerics.formats import get_format  # noqa: E402
from adaprec.tools.best_static_search import quality_drop  # noqa: E402

from .figures import _paper, save_figure  # noqa: E402
from .load import load_decisions, load_layers, load_runs, ok_runs  # noqa: E402
from .style import COLUMN_WIDTH_IN  # noqa: E402
from .tables import sig  # noqa: E402

__all__ = ["policy_label", "low_fraction", "low_fraction_map", "quality_table", "search_sensitivity",
           "main"]

ROLES = ("input", "weight", "dgrad", "wgrad")
LOW_BITS = 8  # a format of at most this many bits per element counts as "low"


def is_low(fmt: str) -> bool:
    """True for a plain format of at most :data:`LOW_BITS` bits per element."""
    return get_format(fmt).bits <= LOW_BITS


def policy_label(run: pd.Series) -> str:
    """A run's policy as the study names it: the controller choice, with the settings the study
    varies (autoswitch's ``low``, a plan's ``default``, threshold's format list)."""
    controller = str(run.get("controller"))
    plan = run.get("final_plan")
    if controller.startswith("best_static") and isinstance(plan, dict) and plan:
        # the search's labels name only the modeled cost: add the formats it chose among
        formats = sorted(set(plan.values()), key=lambda f: (-get_format(f).bits, f))
        return f"{controller} formats={','.join(formats)}"
    for key, text in (("cfg.controller.low", "low"), ("cfg.controller.default", "default"),
                      ("cfg.controller.formats", "formats")):
        value = run.get(key)
        if isinstance(value, str) and value and controller in ("autoswitch", "plan", "threshold"):
            return f"{controller} {text}={value.replace(chr(39), '').replace(' ', '')}"
    return controller


def _history(decisions: pd.DataFrame, steps: int) -> dict[str, list[tuple[int, int, str]]]:
    """Per layer: (start, end, format) segments over ``[0, steps)`` from its decisions."""
    out = {}
    for layer, rows in decisions.sort_values("step", kind="stable").groupby("layer", sort=False):
        segments, start, fmt = [], 0, str(rows["old"].iloc[0])
        for step, new in zip(rows["step"], rows["new"]):
            step = int(min(max(step, 0), steps))
            if step > start:
                segments.append((start, step, fmt))
            start, fmt = max(start, step), str(new)
        if steps > start:
            segments.append((start, steps, fmt))
        out[layer] = segments
    return out


def low_fraction(runs: pd.DataFrame, decisions: pd.DataFrame) -> pd.DataFrame:
    """Long table ``policy, run_id, layer, role, fraction``: the fraction of each run's steps a
    layer's role spent in a low format (layers in the order the run's decisions first name them)."""
    rows = []
    for _, run in ok_runs(runs).iterrows():
        mine = decisions[decisions["run_id"] == run["run_id"]]
        steps = int(run.get("steps") or 0)
        plan = run.get("final_plan")
        if steps <= 0 or (mine.empty and not isinstance(plan, dict)):
            continue
        label = policy_label(run)
        # no decision at all: the run kept its start plan (e.g. static fp32), the final plan
        history = _history(mine, steps) if not mine.empty else \
            {layer: [(0, steps, fmt)] for layer, fmt in plan.items()}
        for layer, segments in history.items():
            for role in ROLES:
                low = sum(end - start for start, end, fmt in segments
                          if is_low(get_format(fmt).roles()[role]))
                rows.append({"policy": label, "run_id": run["run_id"], "layer": layer,
                             "role": role, "fraction": low / steps})
    return pd.DataFrame(rows, columns=["policy", "run_id", "layer", "role", "fraction"])


@_paper
def low_fraction_map(table: pd.DataFrame, layers: list[str] | None = None, *, title: str | None = None):
    """Heat map: one row per (policy, role), one column per layer; the colour is the fraction
    of training steps that role of that layer ran in a low (≤ 8-bit) format — 0 (white) means it
    stayed in bf16 or wider the whole run. Several seeds of one policy are averaged."""
    ordered = bool(layers)
    mean = table.groupby(["policy", "role", "layer"], sort=False)["fraction"].mean()
    policies = list(dict.fromkeys(table["policy"]))
    layers = [n for n in layers if n in set(table["layer"])] if layers else list(dict.fromkeys(table["layer"]))
    rows = [(p, r) for p in policies for r in ROLES]
    grid = np.array([[mean.get((p, r, layer), np.nan) for layer in layers] for p, r in rows])
    fig, ax = plt.subplots(figsize=(max(COLUMN_WIDTH_IN, 1.2 + 0.16 * len(layers)),
                                    0.9 + 0.1 * len(rows)), layout="constrained")
    mesh = ax.pcolormesh(np.arange(len(layers) + 1) - 0.5, np.arange(len(rows) + 1) - 0.5,
                         np.ma.masked_invalid(grid), cmap="Blues", vmin=0.0, vmax=1.0,
                         gid="low_fraction")
    for k in range(1, len(policies)):
        ax.axhline(k * len(ROLES) - 0.5, color="black", lw=0.6)
    ax.set_yticks(range(len(rows)), [f"{p}: {r}" if r == ROLES[0] else r for p, r in rows], fontsize=5)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xticks(range(len(layers)), layers, rotation=90, fontsize=4.5)
    ax.set_xlabel("layer" + (" (model order)" if ordered else ""))
    ax.set_ylabel("policy: GEMM operand role")
    bar = fig.colorbar(mesh, ax=ax, fraction=0.04, pad=0.01)
    bar.set_label("fraction of training steps in a ≤8-bit format\n(0: bf16 or wider throughout)")
    if title:
        ax.set_title(title)
    return fig, ax


def quality_table(runs: pd.DataFrame, low: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Per policy: quality (mean over seeds), its relative change against ``reference``'s,
    modeled costs (every ``rel_cost_<profile>``), skipped steps and the low share."""
    ok = ok_runs(runs).copy()
    ok["policy"] = ok.apply(policy_label, axis=1)
    costs = [c for c in ok.columns if c.startswith("rel_cost_")]
    table = ok.groupby(["workload", "policy"], sort=False).agg(
        n=("run_id", "size"), quality=("quality", "mean"), skipped=("skipped_steps", "mean"),
        **{c: (c, "mean") for c in costs}).reset_index()
    table.insert(2, "metric", table["workload"].map(ok.groupby("workload")["quality_metric"].first()))
    ref = table[table["policy"] == reference].set_index("workload")["quality"]
    table["change_vs_" + reference] = table["quality"] / table["workload"].map(ref) - 1.0
    share = low.groupby("policy")["fraction"].mean()
    table["low_share"] = table["policy"].map(share)
    return table


def search_sensitivity(summary_path: Path) -> pd.DataFrame:
    """Per layer of one best-static search (its ``best_static.json``; ``search.csv`` beside it):
    ``layer, format, quality, drop`` — the format that layer was measured alone in (the rest in
    the reference format; a layer never measured alone, or whose plan failed, has no row),
    the search-length quality of that plan and its relative drop against
    the reference (negative: better) — and ``trained``: the layer's format in each plan the
    search trained in full (``<label>: <format>``). Layers in the search's order."""
    summary = json.loads(Path(summary_path).read_text())
    search = pd.read_csv(Path(summary_path).with_name("search.csv"))
    metric, higher = summary["quality_metric"], summary["higher_is_better"]
    reference, ref_q = summary["reference"]["plan"], summary["reference"]["quality"]
    rows = []
    for _, row in search[search["status"] == "ok"].iterrows():  # greedy: its sensitivity stage
        plan = json.loads(row["plan"])
        moved = [layer for layer in summary["layers"] if plan[layer] != reference[layer]]
        if len(moved) != 1:
            continue
        q = float(row[metric])  # the search's own measure: absolute for accuracy, else relative
        drop = quality_drop(ref_q, q, higher, absolute=higher)
        rows.append({"layer": moved[0], "format": plan[moved[0]], "quality": q, "drop": drop})
    table = pd.DataFrame(rows, columns=["layer", "format", "quality", "drop"])
    order = {layer: k for k, layer in enumerate(summary["layers"])}
    table = table.sort_values("layer", key=lambda c: c.map(order), kind="stable").reset_index(drop=True)
    table["trained"] = [", ".join(f"{t['label']}: {t['plan'][layer]}" for t in summary["trained"])
                        for layer in table["layer"]]
    return table


def _lowered(summary: dict, trained: dict) -> str:
    """The layers a trained plan runs in a format other than the search's reference format."""
    high, layers = summary["formats"][0], summary["layers"]
    low = [f"{layer} ({trained['plan'][layer]})" for layer in layers if trained["plan"][layer] != high]
    return f"{trained['label']}: {', '.join(low) or 'no layer'} ({len(low)} of {len(layers)} layers), {high} elsewhere"


def _search_report(root: Path) -> str | None:
    """``best_static_search.md``: every best-static search below ``root``, one table each."""
    parts = []
    for path in sorted(root.rglob("best_static.json")):
        summary = json.loads(path.read_text())
        table = search_sensitivity(path)
        high = summary["formats"][0]
        walk = pd.read_csv(path.with_name("search.csv"))["stage"].eq("greedy").sum()
        parts += [f"## {path.parent.relative_to(root).as_posix()}", "",
                  f"{summary['plans_measured']} plans measured ({summary['search']}"
                  + (f"; {walk} of them in the walk" if summary["search"] == "greedy" else "")
                  + f"), {summary['search_steps']} steps each, formats {', '.join(summary['formats'])}, "
                  f"cost profile {summary['profile']}, tolerance {summary['tolerance']:g}; reference "
                  f"({high} everywhere) {summary['quality_metric']} {sig(summary['reference']['quality'])}. "
                  f"Trained: {'; '.join(_lowered(summary, t) for t in summary['trained']) or 'no plan'}. Below: each "
                  "layer measured alone in the low format (drop: against the reference, at the search's length).",
                  "", _markdown(table)]
    return "\n".join(parts) if parts else None


def model_order(runs: pd.DataFrame) -> list[str] | None:
    """Layer names in the order the model runs them: the first sampled step of the first run's
    ``layers.csv.gz`` (the monitor writes layers in call order); None without one."""
    for run_dir in runs["run_dir"]:
        table = load_layers(runs[runs["run_dir"] == run_dir])
        if not table.empty:
            return list(dict.fromkeys(table.loc[table["step"] == table["step"].min(), "layer"]))
    return None


def _markdown(table: pd.DataFrame) -> str:
    cells = [[sig(v) if isinstance(v, float) else str(v) for v in row] for row in table.itertuples(index=False)]
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells]) + "\n"


def _stays_high(low: pd.DataFrame) -> str:
    lines = ["Layer roles that spent at least half the run in bf16 or wider, per policy:", ""]
    mean = low.groupby(["policy", "layer", "role"], sort=False)["fraction"].mean().reset_index()
    for policy, part in mean.groupby("policy", sort=False):
        high = part[part["fraction"] < 0.5]
        if len(high) == len(part):
            text = "all"
        elif high.empty:
            text = "none"
        else:
            text = ", ".join(f"{layer} ({'/'.join(g['role'])})" for layer, g in high.groupby("layer", sort=False))
        lines.append(f"- `{policy}`: {text}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.block_formats", description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", help="folder holding the study's runs (e.g. runs/block_formats)")
    ap.add_argument("--out", required=True, help="where the table and figure go")
    ap.add_argument("--reference", default="bf16", help="policy the quality change is relative to")
    args = ap.parse_args(argv)
    runs = load_runs(args.sweep)
    if ok_runs(runs).empty:
        raise SystemExit(f"no finished run below {args.sweep}: run the study's commands first "
                         f"(experiments/README.md, block_formats)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    low = low_fraction(runs, load_decisions(ok_runs(runs)))
    order = model_order(ok_runs(runs))
    low.to_csv(out / "low_fraction.csv", index=False)
    quality = quality_table(runs, low, args.reference)
    quality.to_csv(out / "quality.csv", index=False)
    (out / "quality.md").write_text(_markdown(quality))
    (out / "stays_high.md").write_text(_stays_high(low))
    searches = _search_report(Path(args.sweep))
    if searches:
        (out / "best_static_search.md").write_text(searches)
    if not low.empty:
        workload = ok_runs(runs)["workload"].dropna()
        title = f"workload: {workload.iloc[0]}" if len(workload) else None
        save_figure(low_fraction_map(low, order, title=title)[0], out / "low_fraction")
    print(f"wrote {out}/low_fraction.csv, quality.md, stays_high.md and the figure")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
