"""Write synthetic run directories in exactly the trainer's layout (see the README), with
numbers chosen by the test, for analysis tests that need values a real tiny run cannot give
(several profiles, perplexity, divergence, skipped steps, killed runs)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

LAYERS = ("net.1", "net.3", "net.5")
STATS = ("absmax", "mean_abs", "nonfinite_frac", "fp16_overflow", "fp16_underflow", "fp16_flush",
         "bf16_rel_err", "fp16_rel_err", "norm")


def write_run(run_dir: Path, *, controller: str, seed: int, quality: float | None = 0.5,
              metric: str = "val_accuracy", model: str = "mlp", dataset: str = "digits",
              experiment: str | None = None, status: str = "ok", error: str | None = None,
              costs: dict[str, float] | None = None, wall_s: float = 1.0, skipped_steps: int = 0,
              steps: int = 4, formats: dict[str, str] | None = None, extra: dict | None = None) -> Path:
    """One run dir. ``formats``: {layer: format} for the whole run (default: controller's name)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fmt = controller if controller in ("fp32", "bf16", "fp16") else "bf16"
    plan = formats or {layer: fmt for layer in LAYERS}
    choices = {"controller": controller, "model": model, "dataset": dataset, "optimizer": "sgd"}
    if experiment:
        choices["experiment"] = experiment
    cfg = {"seed": seed, "device": "cpu", "trainer": {"max_steps": steps, "batch_size": 8},
           "controller": {"_target_": "adaprec.controllers.Static", "format": fmt},
           "model": {"_target_": "adaprec.models.mlp.MLP", "hidden": [4, 4]}}
    (run_dir / "config_resolved.yaml").write_text(yaml.safe_dump(cfg))
    metrics = {"status": status, "error": error, "choices": choices, "seed": seed, "wall_s": wall_s}
    if status == "ok":
        shares = pd.Series(list(plan.values())).value_counts(normalize=True).to_dict()
        metrics.update(steps=steps, skipped_steps=skipped_steps, val_loss=1.0, plan_changes=len(plan),
                       final_plan=plan, format_shares=shares, **{metric: quality})
        for profile, rel in (costs or {}).items():
            metrics[f"rel_cost_{profile}"] = rel
            metrics[f"cost_{profile}_s"] = rel * 0.01
        metrics.update({f"flop_share_{f}": s for f, s in shares.items()})
    metrics.update(extra or {})
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    if status == "ok":
        _write_tables(run_dir, plan, steps, seed, skipped_steps, metric)
    return run_dir


def _write_tables(run_dir: Path, plan: dict[str, str], steps: int, seed: int, skipped: int,
                  metric: str) -> None:
    scale = 65536.0
    rows = []
    for s in range(steps):
        skip = s < skipped
        rows.append({"step": s, "loss": 2.0 - 0.1 * s + 0.01 * seed, "lr": 0.1,
                     "loss_scale": scale, "skipped": int(skip), "step_ms": 1.0, "cpu_ms": 0.9,
                     "plan_hash": "abc", "share_fp32": 0.0, "share_bf16": 0.0, "share_fp16": 1.0})
        scale = scale / 2 if skip else scale
    pd.DataFrame(rows).to_csv(run_dir / "steps.csv", index=False)
    pd.DataFrame({"step": [steps // 2, steps], "val_loss": [1.5, 1.0],
                  metric: [0.3 + 0.01 * seed, 0.5 + 0.01 * seed]}).to_csv(run_dir / "evals.csv", index=False)
    layer_rows = []
    for s in range(0, steps, 2):
        for i, layer in enumerate(plan):
            row = {"step": s, "layer": layer, "format": plan[layer]}
            for kind in ("act", "grad", "weight", "wgrad"):
                row.update({f"{kind}_{stat}": 0.0 for stat in STATS})
            row["act_fp16_overflow"] = 0.001 * i * s
            row["grad_fp16_underflow"] = 0.01 * (i + 1)
            layer_rows.append(row)
    pd.DataFrame(layer_rows).to_csv(run_dir / "layers.csv.gz", index=False)
    pd.DataFrame([{"step": 0, "layer": layer, "old": "fp32", "new": f, "reason": "static"}
                  for layer, f in plan.items() if f != "fp32"],
                 columns=["step", "layer", "old", "new", "reason"]).to_csv(run_dir / "decisions.csv", index=False)
