"""Inference precision plan: the cheapest per-layer plan on a device profile whose validation
quality stays within a tolerance of fp32.

    python -m adaprec.tools.deploy run_dir=outputs/<run> profile=h100 tolerance=0.01

Search (one layer at a time, then greedy combination):
1. *Sensitivity*: each layer alone in each candidate format (every other layer fp32) is
   evaluated on the validation split; its quality drop and modeled inference saving recorded.
2. *Greedy*: candidates within the tolerance on their own are tried in order of saving per unit
   of drop (drop floored at ``1e-4`` so free changes come first, biggest saving first); each is
   kept only if the *combined* plan still meets the tolerance and is cheaper, re-evaluated. A
   layer takes at most one format, its cheapest admissible one first.
3. *Uniform plans*: each candidate format on every layer is evaluated too. Greedy steps from
   fp32 can stall where one layer alone saves less than the casts it adds around it; a uniform
   plan has no casts inside. The cheapest plan within the tolerance wins.
Quality drop: classification, accuracy points lost (absolute); perplexity and RMSE, relative
increase. Modeled latency: a forward pass of ``latency_batch`` examples on the profile.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from adaprec.controllers.static import Static
from adaprec.cost import CostModel, conf_dir, load_profile
from adaprec.app.instantiate import instantiate
from adaprec.runtime.plan import Plan
from adaprec.precision import AdaptivePrecision
from adaprec.tasks import evaluate, get_task, quality_metrics

__all__ = ["deploy_search", "load_trained_run", "DeployResult", "quality_drop", "primary_metric"]

log = logging.getLogger("adaprec.tools.deploy")
_EPS = 1e-4


def primary_metric(quality: dict[str, float]) -> tuple[str, bool]:
    """(metric name, higher is better) of an evaluation result: its task's quality metric."""
    for name, higher in quality_metrics():
        if name in quality:
            return name, higher
    raise ValueError(f"no quality metric in {sorted(quality)}; expected one of "
                     f"{[name for name, _ in quality_metrics()]}")


def quality_drop(reference: dict[str, float], quality: dict[str, float]) -> float:
    """How much worse ``quality`` is than ``reference`` (accuracy: absolute; others: relative)."""
    name, higher = primary_metric(reference)
    ref, q = reference[name], quality[name]
    if q != q:  # NaN quality (a non-finite forward) is as bad as it gets
        return float("inf")
    return ref - q if higher else (q - ref) / abs(ref)


@dataclass
class DeployResult:
    plan: Plan
    profile: str
    tolerance: float
    metric: str
    quality: dict[str, float]
    fp32_quality: dict[str, float]
    bf16_quality: dict[str, float]
    latency_s: float
    fp32_latency_s: float
    bf16_latency_s: float
    table: pd.DataFrame

    def to_json(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict(), "profile": self.profile, "tolerance": self.tolerance,
                "metric": self.metric, "quality": self.quality, "fp32_quality": self.fp32_quality,
                "bf16_quality": self.bf16_quality, "modeled_latency_s": self.latency_s,
                "fp32_modeled_latency_s": self.fp32_latency_s,
                "bf16_modeled_latency_s": self.bf16_latency_s,
                "rel_latency": self.latency_s / self.fp32_latency_s,
                "search": "per-layer sensitivity, greedy combination from fp32, uniform plans; "
                          "cheapest within tolerance (adaprec.tools.deploy)"}


def deploy_search(model: torch.nn.Module, data, profile: str, tolerance: float,
                  formats: tuple[str, ...] = ("bf16", "fp16"), executor: str = "native",
                  device: str | torch.device = "cpu", batch_size: int = 256, max_batches: int = 0,
                  latency_batch: int = 1) -> DeployResult:
    """Find the cheapest inference plan within ``tolerance`` of fp32 (see module docstring)."""
    if tolerance < 0:
        raise ValueError(f"tolerance={tolerance} is out of range; allowed: >= 0")
    device = torch.device(device)
    model = model.to(device).eval()
    prof = load_profile(profile)
    ap = AdaptivePrecision(model, controller=Static("fp32"), device_type=device.type,
                           executor=executor, monitor_every=0)
    try:
        x, _ = get_task(data.task).batch(data, "val", torch.arange(latency_batch), device)
        cm = CostModel.count(model, (x,), layers=ap.layers)
        model.eval()

        def measure(plan: Plan) -> tuple[dict[str, float], float]:
            ap.set_plan(plan)
            return (evaluate(model, ap, data, batch_size, device, max_batches),
                    cm.total(plan, prof, inference=True))

        fp32 = Plan.uniform("fp32", ap.layers)
        fp32_q, fp32_cost = measure(fp32)
        bf16_q, bf16_cost = measure(Plan.uniform("bf16", ap.layers))
        metric, _ = primary_metric(fp32_q)
        rows, candidates, uniform = [], [], []
        for fmt in formats:
            plan_u = Plan.uniform(fmt, ap.layers)
            q, cost = (bf16_q, bf16_cost) if fmt == "bf16" else measure(plan_u)
            drop = quality_drop(fp32_q, q)
            rows.append({"stage": "uniform", "layer": "*", "format": fmt, metric: q[metric],
                         "drop": drop, "rel_latency": cost / fp32_cost, "accepted": drop <= tolerance})
            if drop <= tolerance:
                uniform.append((cost, fmt, plan_u, q))
        for layer in ap.layers:
            for fmt in formats:
                q, cost = measure(fp32.with_changes({layer: fmt}))
                drop, saving = quality_drop(fp32_q, q), fp32_cost - cost
                rows.append({"stage": "sensitivity", "layer": layer, "format": fmt, metric: q[metric],
                             "drop": drop, "rel_latency": cost / fp32_cost, "accepted": drop <= tolerance})
                if drop <= tolerance and saving > 0:
                    candidates.append((saving / max(drop, _EPS), saving, layer, fmt))
        plan, plan_q, plan_cost = fp32, fp32_q, fp32_cost
        for _, _, layer, fmt in sorted(candidates, key=lambda c: (-c[0], -c[1], c[2], c[3])):
            if plan.format_of(layer) != "fp32":
                continue  # this layer already took a cheaper admissible format
            trial = plan.with_changes({layer: fmt})
            q, cost = measure(trial)
            ok = quality_drop(fp32_q, q) <= tolerance and cost < plan_cost
            rows.append({"stage": "greedy", "layer": layer, "format": fmt, metric: q[metric],
                         "drop": quality_drop(fp32_q, q), "rel_latency": cost / fp32_cost, "accepted": ok})
            if ok:
                plan, plan_q, plan_cost = trial, q, cost
        for cost, _, plan_u, q in sorted(uniform, key=lambda u: (u[0], u[1]))[:1]:
            if cost < plan_cost:
                plan, plan_q, plan_cost = plan_u, q, cost
        ap.set_plan(plan)
        return DeployResult(plan=plan, profile=prof.name, tolerance=tolerance, metric=metric,
                            quality=plan_q, fp32_quality=fp32_q, bf16_quality=bf16_q,
                            latency_s=plan_cost, fp32_latency_s=fp32_cost, bf16_latency_s=bf16_cost,
                            table=pd.DataFrame(rows))
    finally:
        ap.remove()


def load_trained_run(run_dir: str | Path, device: str = "cpu"):
    """(config, model with the run's final weights, data) of a finished training run."""
    run_dir = Path(run_dir)
    cfg_path, weights = run_dir / "config_resolved.yaml", run_dir / "model.pt"
    for p in (cfg_path, weights):
        if not p.exists():
            raise FileNotFoundError(f"{p} not found: run_dir must be a finished adaprec run "
                                    "(python -m adaprec.run writes config_resolved.yaml and model.pt)")
    cfg = OmegaConf.load(cfg_path)
    data = instantiate(cfg.dataset)
    model = instantiate(cfg.model)
    try:
        state = torch.load(weights, map_location=device, weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # truncated, foreign or mismatched file
        raise ValueError(f"cannot load {weights}: {type(exc).__name__}: {str(exc).splitlines()[0]}; "
                         "re-run training to rewrite it") from exc
    return cfg, model.to(device), data


def write_result(result: DeployResult, out_dir: Path, run_dir: str | None = None) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {**result.to_json(), "run_dir": str(run_dir) if run_dir else None}
    path = out_dir / "inference_plan.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True))
    result.table.to_csv(out_dir / "deploy_search.csv", index=False)
    return path


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="deploy")
def main(cfg: DictConfig) -> None:
    _, model, data = load_trained_run(cfg.run_dir, cfg.device)
    result = deploy_search(model, data, cfg.profile, float(cfg.tolerance), tuple(cfg.formats),
                           cfg.executor, cfg.device, int(cfg.batch_size), int(cfg.max_batches),
                           int(cfg.latency_batch))
    path = write_result(result, Path(cfg.out or Path(cfg.run_dir) / f"deploy_{cfg.profile}"), cfg.run_dir)
    m = result.metric
    print(f"{m}: plan {result.quality[m]:.4f} | fp32 {result.fp32_quality[m]:.4f} | "
          f"all-bf16 {result.bf16_quality[m]:.4f}")
    print(f"modeled latency on {result.profile}: plan {result.latency_s:.3e}s "
          f"({result.latency_s / result.fp32_latency_s:.2f}x fp32) | fp32 {result.fp32_latency_s:.3e}s | "
          f"all-bf16 {result.bf16_latency_s:.3e}s | shares {result.plan.shares()}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
