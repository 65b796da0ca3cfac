"""Best static plans: the cost-optimal fixed per-layer plans of a workload, trained as baselines
beside the adaptive controllers.

    python -m adaprec.tools.best_static experiment=mixed_needs --profile h100 --seeds 0,1,2
    python -m adaprec.tools.best_static sweep=best_static      # every workload of the sweep

1. **Cost**: every plan is priced by the cost model (``adaprec.cost``) on ``--profile``, relative
   to all-fp32, for one training step of the workload (what ``rel_cost_<profile>`` reports).
2. **Quality, measured**: each candidate plan trains for ``--search-steps`` steps (default: a
   quarter of the workload's) from the same seed, and its validation quality is read.
3. **Search** (:mod:`adaprec.tools.best_static_search`): every plan when the plan space is at
   most ``--max-exhaustive`` plans (``4 ** 6``), else greedy on measured per-layer sensitivity.
4. **Front**: the measured plans no other beats on both cost and quality (a dearer plan must
   gain more than ``--min-gain``, 0.1 %, over the cheaper one). Up to ``--max-plans``
   mixed plans of it (uniform plans are the ``fp32``/``bf16``/... baselines already;
   ``--include-uniform`` trains them too) train in full, one run directory per seed, labelled ``best_static@<modeled cost>`` (e.g.
   ``best_static@0.62``), so ``analysis`` draws them beside the controllers and counts them as
   static (``analysis.stats.is_static_policy``).

Written to ``--out`` (default: the sweep's ``hydra.sweep.dir``, else ``runs/best_static``), per
workload: ``search.csv`` (every plan measured: stage, cost, quality, status, on the front, plan),
``best_static.json`` (the front, the plans trained, the settings) and the runs under
``<label>/seed<k>/``. With ``sweep=<name>`` the workloads, seeds and formats come from the sweep
config's grid (``experiment``, ``seed``, ``controller`` axes: the static formats).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
from collections import Counter
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from adaprec.app.build import build, config_value
from adaprec.app.schema import register_schemas
from adaprec.app.train import train
from adaprec.cost import CostMeter, conf_dir
from adaprec.numerics.formats import get_format
from adaprec.runtime.plan import Plan
from adaprec.tools.best_static_search import (Candidate, Search, exhaustive, greedy, pareto_front,
                                              plan_space_size, select_plans)

__all__ = ["find_best_static", "main", "LABEL"]

log = logging.getLogger("adaprec.tools.best_static")
LABEL = "best_static"  # run label prefix: analysis.stats.is_static_policy knows it


def compose_training(overrides: Sequence[str]) -> tuple[dict[str, Any], dict[str, str], dict]:
    """(training config as a plain dict, group choices, the hydra node) for ``overrides``."""
    register_schemas()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    hydra_node = OmegaConf.to_container(cfg.hydra, resolve=False)
    choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra")}
    del cfg.hydra
    plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    return plain, choices, hydra_node


def plan_controller(plan: dict[str, str]) -> tuple[dict[str, Any], str]:
    """The ``FixedPlan`` controller node that runs ``plan`` and its default format (the most
    common one: it also runs the model's code outside layers)."""
    counts = Counter(plan.values())
    default = max(counts, key=lambda f: (counts[f], -list(plan.values()).index(f)))
    patterns = {layer: fmt for layer, fmt in plan.items() if fmt != default}
    return {"_target_": "adaprec.controllers.static.FixedPlan", "patterns": patterns,
            "default": default}, default


def _with(cfg: dict[str, Any], **changes: Any) -> DictConfig:
    """A copy of the plain config with dotted-key ``changes``."""
    out = OmegaConf.create(cfg)
    for key, value in changes.items():
        OmegaConf.update(out, key.replace("__", "."), value, merge=False)
    return out


@contextmanager
def _quiet() -> Iterator[None]:
    """Search runs log nothing below warnings (hundreds of short runs)."""
    logger = logging.getLogger("adaprec")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


class PlanTrainer:
    """Trains a plan briefly and returns its validation quality (the search's measure)."""

    def __init__(self, cfg: dict[str, Any], steps: int, scratch: Path, quality_metric: str):
        self.cfg, self.steps, self.scratch, self.runs = cfg, steps, scratch, 0
        self.quality_metric = quality_metric

    def __call__(self, plan: dict[str, str]) -> tuple[float, str]:
        controller, _ = plan_controller(plan)
        cfg = _with(self.cfg, controller=controller, trainer__max_steps=self.steps,
                    trainer__eval_every=0, trainer__save_model="none", trainer__progress=False,
                    trainer__checkpoint_every=0, cost__enabled=False, monitor__every=0)
        self.runs += 1
        try:
            with _quiet():
                metrics = train(cfg, self.scratch / str(self.runs))
        except Exception as exc:  # noqa: BLE001 - a plan that cannot train is a measured failure
            return math.nan, f"failed: {type(exc).__name__}: {exc}"
        quality = metrics.get(self.quality_metric, math.nan)
        if metrics.get("status") != "ok":
            return math.nan, str(metrics.get("status"))
        return float(quality), "ok" if math.isfinite(quality) else "non-finite quality"


def plan_cost_fn(cfg: dict[str, Any], profile: str):
    """``(cost(plan) relative to all-fp32 on profile, layers, task)``: the model is counted once."""
    t = build(_with(cfg, cost__enabled=True, cost__profiles=[profile], trainer__progress=False),
              torch.device(config_value(cfg["device"])))
    try:
        meter = CostMeter(t.meter.cost_model, [profile], passes_per_step=t.grad_accum)
        column = next(iter(meter.step_columns(Plan.uniform("fp32", t.ap.layers))))
        fp32 = meter.step_columns(Plan.uniform("fp32", t.ap.layers))[column]

        def cost(plan: dict[str, str]) -> float:
            _, default = plan_controller(plan)
            return meter.step_columns(Plan(plan, default=default))[column] / fp32
        return cost, list(t.ap.layers), t.task
    finally:
        t.ap.remove()


def label_of(c: Candidate, taken: set[str]) -> str:
    """``best_static@<cost>`` with as many digits as it takes to be unique."""
    for digits in (2, 3, 4, 6):
        label = f"{LABEL}@{c.cost:.{digits}f}"
        if label not in taken:
            return label
    return f"{LABEL}@{c.cost!r}"


def find_best_static(overrides: Sequence[str], out: Path, profile: str = "h100",
                     formats: Sequence[str] = ("fp32", "bf16", "fp16"), seeds: Sequence[int] = (0,),
                     search_steps: int | None = None, max_exhaustive: int = 4 ** 6,
                     tolerance: float = 0.05, max_plans: int = 3,
                     include_uniform: bool = False, min_gain: float = 1e-3) -> dict[str, Any]:
    """Search one workload (``overrides`` compose its training config), train the chosen plans
    for every seed into ``out``; returns what ``best_static.json`` holds."""
    formats = [get_format(f).name for f in formats]
    if len(set(formats)) != len(formats) or len(formats) < 2:
        raise ValueError(f"--formats needs at least two distinct formats, got {formats}")
    cfg, choices, _ = compose_training(overrides)
    cost, layers, task = plan_cost_fn(cfg, profile)
    steps = int(search_steps or max(1, int(cfg["trainer"]["max_steps"]) // 4))
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="best_static_") as scratch:
        measure = PlanTrainer(cfg, steps, Path(scratch), task.quality)
        search = Search(layers, formats, measure, cost, task.higher_is_better,
                        absolute_drop=task.higher_is_better)
        size = plan_space_size(len(layers), len(formats))
        method = "exhaustive" if size <= max_exhaustive else "greedy"
        log.info("%s: %d layers x %d formats = %d plans: %s search, %d steps per plan",
                 choices.get("experiment") or choices.get("model"), len(layers), len(formats),
                 size, method, steps)
        measured = exhaustive(search) if method == "exhaustive" else greedy(search, tolerance)
    reference = next(c for c in measured if c.stage == "reference")
    front = pareto_front(measured, task.higher_is_better, min_gain, absolute_gain=task.higher_is_better)
    chosen = select_plans(front, reference, max_plans, tolerance, task.higher_is_better,
                          task.higher_is_better, skip_uniform=not include_uniform)
    _write_search(out / "search.csv", measured, front, task.quality)
    trained, taken = [], set()
    for c in chosen:
        label = label_of(c, taken)
        taken.add(label)
        controller, _ = plan_controller(c.plan)
        for seed in seeds:
            run = out / label / f"seed{seed}"
            metrics = train(_with(cfg, controller=controller, seed=int(seed)), run,
                            choices={**choices, "controller": label})
            log.info("%s seed %d: %s %s (search %.4g), modeled cost %.3f of fp32 on %s -> %s", label,
                     seed, task.quality, metrics.get(task.quality), c.quality, c.cost, profile, run)
        trained.append({"label": label, "plan": c.plan, "rel_cost": c.cost,
                        "search_quality": c.quality, "runs": [str(out / label / f"seed{s}") for s in seeds]})
    summary = {"workload": choices.get("experiment"), "overrides": list(overrides), "profile": profile,
               "formats": formats, "layers": layers, "search": method, "plan_space": size,
               "plans_measured": len(measured), "search_steps": steps, "tolerance": tolerance,
               "min_gain": min_gain,
               "quality_metric": task.quality, "higher_is_better": task.higher_is_better,
               "reference": {"plan": reference.plan, "quality": reference.quality},
               "front": [{"plan": c.plan, "rel_cost": c.cost, "quality": c.quality} for c in front],
               "trained": trained, "seeds": list(seeds)}
    (out / "best_static.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    return summary


def _write_search(path: Path, measured: list[Candidate], front: list[Candidate], metric: str) -> None:
    on_front = {id(c) for c in front}
    pd.DataFrame([{"stage": c.stage, "rel_cost": c.cost, metric: c.quality, "status": c.status,
                   "on_front": id(c) in on_front, "plan": json.dumps(c.plan)}
                  for c in measured]).to_csv(path, index=False)


def _grid(overrides: list[str]) -> tuple[list[str], dict[str, list[str]], str | None]:
    """(overrides without a sweep's axes, the sweep grid's axes, its sweep dir) when ``sweep=``
    is among the overrides; else (overrides, {}, None)."""
    if not any(o.startswith("sweep=") for o in overrides):
        return overrides, {}, None
    _, _, hydra_node = compose_training(overrides)
    params = (hydra_node.get("sweeper") or {}).get("params") or {}
    axes = {k: [v.strip() for v in str(params[k]).split(",")] for k in ("experiment", "seed", "controller")
            if k in params}
    return overrides, axes, (hydra_node.get("sweep") or {}).get("dir")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m adaprec.tools.best_static", description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="training config overrides (experiment=..., sweep=...)")
    p.add_argument("--profile", default="h100", help="cost profile in conf/cost/ or a calibrated YAML")
    p.add_argument("--formats", default=None, help="formats a layer may take, most precise first "
                   "(default: the sweep's controller axis, else fp32,bf16,fp16)")
    p.add_argument("--seeds", default=None, help="seeds of the full runs (default: the sweep's, else 0)")
    p.add_argument("--search-steps", type=int, default=None, help="steps per measured plan (default: max_steps/4)")
    p.add_argument("--max-exhaustive", type=int, default=4 ** 6, help="largest plan space searched exhaustively")
    p.add_argument("--tolerance", type=float, default=0.05,
                   help="quality drop vs the reference (accuracy: absolute; else relative)")
    p.add_argument("--max-plans", type=int, default=3, help="front plans trained in full per workload")
    p.add_argument("--min-gain", type=float, default=1e-3,
                   help="quality gain a dearer front plan must add (accuracy: absolute; else relative)")
    p.add_argument("--include-uniform", action="store_true",
                   help="train uniform front plans too (they duplicate the fp32/bf16/... baselines)")
    p.add_argument("--out", default=None, help="output folder (default: the sweep dir, else runs/best_static)")
    args = p.parse_intermixed_args(argv)  # overrides may follow options
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides, axes, sweep_dir = _grid(list(args.overrides))
    formats = (args.formats.split(",") if args.formats else axes.get("controller") or ["fp32", "bf16", "fp16"])
    seeds = [int(s) for s in (args.seeds.split(",") if args.seeds else axes.get("seed") or ["0"])]
    root = Path(args.out or sweep_dir or "runs/best_static")
    for experiment in axes.get("experiment") or [None]:
        ovr = overrides + ([f"experiment={experiment}"] if experiment else [])
        out = root / experiment if experiment else root
        summary = find_best_static(ovr, out, args.profile, formats, seeds, args.search_steps,
                                   args.max_exhaustive, args.tolerance, args.max_plans,
                                   args.include_uniform, args.min_gain)
        front = ", ".join(f"{c['rel_cost']:.2f}: {c['quality']:.4g}" for c in summary["front"])
        print(f"{summary['workload'] or ' '.join(ovr)}: {summary['plans_measured']} plans measured "
              f"({summary['search']}); front (cost: {summary['quality_metric']}) {front}; "
              f"trained {[t['label'] for t in summary['trained']]} -> {out}")


if __name__ == "__main__":
    main()
