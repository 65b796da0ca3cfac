"""Run trees for the analysis tests, written by the real trainer, so their files and columns
are always today's (nothing hand-made to drift from what ``train()`` writes).

- :func:`real_sweep`: the CLI itself, ``python -m adaprec.run -m``: 2 controllers x 2 seeds of a
  6-step MLP on digits (jobs 0-3) and one job that fails (MNIST from a folder that does not
  exist, job 4), with Hydra's ``.hydra/`` files.
- :class:`RunFactory`: for numbers a real tiny run cannot give (chosen qualities, several cost
  profiles, divergence, skipped steps), one real run per task and format is trained once per
  session and copied, and the copy's ``metrics.json`` gets the values the test names.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("net.1", "net.3", "net.5")  # the MLP's layers, in forward order
TINY_MLP = ["model=mlp", "model.hidden=[16,16]", "dataset.image_size=8", "trainer.eval_batches=1"]
SWEEP_OVERRIDES = [*TINY_MLP, "trainer.max_steps=6", "trainer.eval_every=3", "monitor.every=2",
                   "trainer.progress=false", "cost.enabled=false"]  # no profiles: cost falls back to wall_s


def real_sweep(out: Path) -> Path:
    """Run the tiny sweep into ``out``: its two multiruns through the CLI's entry point, one
    after the other in one Python process (a second process would cost its imports again)."""
    common = ["-m", *SWEEP_OVERRIDES, f"hydra.sweep.dir={out}"]
    sweeps = [common + ["controller=fp32,fp16", "seed=0,1"],
              common + ["controller=fp32", "dataset=mnist", "dataset.path=/nonexistent/mnist",
                        "hydra.sweep.subdir=4"]]
    driver = ("import json, sys\nfrom adaprec.run import cli\n"
              "for argv in json.loads(sys.argv[1]):\n    sys.argv = ['adaprec.run', *argv]\n    cli()\n")
    # cwd: the checkout, so this checkout's adaprec runs
    proc = subprocess.run([sys.executable, "-c", driver, json.dumps(sweeps)], cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"the tiny sweep failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert len(list(out.glob("*/metrics.json"))) == 5, proc.stderr[-3000:]
    return out


# task -> the overrides of its template runs (4 steps, statistics at steps 0 and 2)
TEMPLATES = {
    "classification": TINY_MLP,
    "lm": ["model=gpt", "dataset=text", "dataset.max_chars=20000", "dataset.block_size=16",
           "model.n_layer=1", "model.n_head=2", "model.n_embd=16", "trainer.batch_size=8",
           "trainer.eval_batches=1"],
}
COMMON = ["trainer.max_steps=4", "trainer.eval_every=2", "monitor.every=2", "trainer.progress=false"]


class RunFactory:
    """``make_run(run_dir, controller=, seed=, quality=, ...)`` -> a copy of a real run with the
    metrics the test chooses.

    The template is the real run of the task (``val_perplexity`` -> a tiny GPT on text, else an
    MLP on digits) under the controller's static format (fp32, bf16, fp16; any other controller
    name gets bf16), so the tables (steps, evals, layers, decisions) and the format and FLOP
    shares are what the trainer wrote; its modeled costs are replaced by ``costs`` (profile ->
    cost relative to fp32; none when not given). A run whose ``status`` is not ``ok`` keeps
    only its config and a metrics.json like that of a job that failed before its first step."""

    def __init__(self, root: Path):
        self.root = root
        self._templates: dict[tuple[str, str], Path] = {}

    def template(self, task: str, fmt: str) -> Path:
        if (task, fmt) not in self._templates:
            from adaprec.app.train import train
            from tests.conftest import compose_config

            cfg = compose_config(*TEMPLATES[task], *COMMON, f"controller={fmt}")
            out = self.root / f"{task}_{fmt}"
            train(cfg, out)
            self._templates[task, fmt] = out
        return self._templates[task, fmt]

    def __call__(self, run_dir: Path, *, controller: str, seed: int, quality: float | None = 0.5,
                 metric: str = "val_accuracy", model: str | None = None, dataset: str | None = None,
                 experiment: str | None = None, status: str = "ok", error: str | None = None,
                 costs: dict[str, float] | None = None, skipped_steps: int = 0,
                 extra: dict | None = None) -> Path:
        task = "lm" if metric == "val_perplexity" else "classification"
        fmt = controller if controller in ("fp32", "bf16", "fp16") else "bf16"
        template = self.template(task, fmt)
        shutil.copytree(template, run_dir, ignore=shutil.ignore_patterns("*.pt"))
        real = json.loads((template / "metrics.json").read_text())
        cfg_path = run_dir / "config_resolved.yaml"
        cfg = yaml.safe_load(cfg_path.read_text())
        cfg["seed"] = seed
        cfg_path.write_text(yaml.safe_dump(cfg))
        choices = {"controller": controller, "model": model or cfg["model"]["_target_"].split(".")[-2],
                   "dataset": dataset or ("text" if task == "lm" else "digits"), "optimizer": "sgd",
                   "experiment": experiment}
        metrics = {"status": status, "error": error, "choices": choices, "seed": seed,
                   "wall_s": real["wall_s"]}
        if status == "ok":
            modeled = [k for k in real if k.startswith(("rel_cost_", "cost_"))]  # the test's costs instead
            metrics = {**{k: v for k, v in real.items() if k not in modeled}, **metrics, metric: quality,
                       "skipped_steps": skipped_steps}
            for profile, rel in (costs or {}).items():
                metrics[f"rel_cost_{profile}"] = rel
                metrics[f"cost_{profile}_s"] = rel * 0.01
        else:
            for table in run_dir.iterdir():
                if table != cfg_path:
                    table.unlink()
        metrics.update(extra or {})
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        return run_dir
