"""Bad config values fail at compose time with one line naming the key and what is allowed:
in-process through ``hydra.compose`` + ``validate`` (fast), and through the CLI (slow: one
subprocess per value, which must exit non-zero before writing any run file)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adaprec.run import one_line
from hydra.core.config_store import ConfigStore

from adaprec.app.controller_schemas import register_option
from adaprec.app.schema import ConfigError, validate
from adaprec.runtime.ranges import ranges, rule

from tests.conftest import CONF, compose_config

ROOT = Path(__file__).resolve().parents[1]
FORMATS = "fp32, bf16, fp16, fp8_e4m3, fp8_e5m2"

BAD = [  # (overrides, the one-line message)
    (["controller=threshold", "controller.overflow_max=-1"],
     "controller.overflow_max=-1.0 is out of range; allowed: [0, 1]"),
    (["controller=bandit", "controller.exp3_gamma=1.5"],
     "controller.exp3_gamma=1.5 is out of range; allowed: [0, 1]"),
    (["controller=bandit", "controller.algorithm=ucb7"], "controller.algorithm: Invalid value 'ucb7'"),
    (["controller=threshold", "controller.formats=[bf16,fp12]"],
     "controller.formats=['bf16', 'fp12'] is out of range; allowed: each value a format name"),
    (["controller=bandit", "controller.cost_budget=0"],
     "controller.cost_budget=0.0 is out of range; allowed: > 0"),
    (["controller=muppet", "controller.batches=1"], "controller.batches=1 is out of range; allowed: >= 2"),
    (["trainer.max_steps=0"], "trainer.max_steps=0 is out of range; allowed: >= 1"),
    (["trainer.max_steps=abc"], "trainer.max_steps: Value 'abc' of type 'str' could not be "
                                "converted to Integer (expected int >= 1)"),
    (["trainer.batch_size=-8"], "trainer.batch_size=-8 is out of range; allowed: >= 1"),
    (["trainer.grad_accum=3"], "trainer.batch_size=64 must be divisible by trainer.grad_accum=3"),
    (["trainer.min_lr_ratio=1.5"], "trainer.min_lr_ratio=1.5 is out of range; allowed: [0, 1]"),
    (["trainer.eval_batch_size=0"], "trainer.eval_batch_size=0 is out of range; allowed: >= 1"),
    (["trainer.checkpoint_every=-1"], "trainer.checkpoint_every=-1 is out of range; allowed: >= 0"),
    (["trainer.max_consecutive_skips=-2"],
     "trainer.max_consecutive_skips=-2 is out of range; allowed: >= 0"),
    (["trainer.max_stepz=3"], "trainer.max_stepz: Key 'max_stepz' not in 'TrainerConfig' (known "
                              "keys: max_steps, batch_size, grad_accum, grad_clip, warmup_steps, "
                              "min_lr_ratio, eval_every, eval_batch_size, eval_batches, progress, overwrite, "
                              "checkpoint_every, resume, max_consecutive_skips, num_threads, save_model, "
                              "grad_schedule, parallel)"),
    (["monitor.every=-1"], "monitor.every=-1 is out of range; allowed: >= 0"),
    (["monitor.sample=8"], "monitor.sample=8 is out of range; allowed: >= 64"),
    (["seed=1.5"], "seed: Value '1.5' of type 'float' could not be converted to Integer "
                   "(expected int >= 0)"),
    (["device=tpu"], "device: Invalid value 'tpu', expected one of [cpu, cuda]"),
    (["executor=magic"], "executor: Invalid value 'magic'"),
    (["controller=bf16", "controller.format=fp17"],
     f"controller.format='fp17' is out of range; allowed: a format name: {FORMATS}"),
    (["controller=bf16", "controller.formatt=bf16"],
     "controller.formatt: Key 'formatt' not in 'StaticSchema' (known keys: format)"),
    (["controller=autocast", "controller.dtype=fp32"],
     "controller.dtype='fp32' is out of range; allowed: one of bf16, fp16"),
    (["controller=plan", "controller.default=fp99"],
     f"controller.default='fp99' is out of range; allowed: a format name: {FORMATS}"),
    (["controller=plan", "+controller.patterns={net.1: fp99}"],
     "controller.patterns={'net.1': 'fp99'} is out of range; allowed: each value a format "
     f"name: {FORMATS}"),
    (["controller=nope"], "In 'config': Could not find 'controller/nope'"),
    # a schema is not an option: Hydra does not list it and selecting it is an unknown option
    (["controller=controller_schema_bandit"], "In 'config': Could not find 'controller/controller_schema_bandit'"),
    (["controller=bandit_schema"], "In 'config': Could not find 'controller/bandit_schema'"),
]


def compose_message(overrides: list[str]) -> str | None:
    """The one-line error for ``overrides`` (None when they compose and validate)."""
    try:
        cfg = compose_config("model=mlp", *overrides)
    except Exception as exc:  # Hydra/OmegaConf composition errors
        return one_line(exc)
    try:
        validate(cfg)
    except ConfigError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_value_fails_at_compose_time_with_one_line(overrides, message):
    got = compose_message(overrides)
    assert got is not None and "\n" not in got
    assert got.startswith(message), got


@pytest.mark.parametrize("controller", sorted(p.stem for p in (CONF / "controller").glob("*.yaml")))
def test_every_controller_config_composes_and_validates(controller):
    assert compose_message([f"controller={controller}"]) is None


@pytest.mark.parametrize("controller", sorted(p.stem for p in (CONF / "controller").glob("*.yaml")
                                               if p.stem != "plugin"))  # plugin: the user's own keys
def test_every_controller_config_is_typed(controller):
    """Each controller YAML lists a schema in its defaults, so a mistyped key fails."""
    got = compose_message([f"controller={controller}", "controller.zzz=1"])
    assert got is not None and got.startswith("controller.zzz: Key 'zzz' not in"), got


@ranges("controller", overflow_threshold=rule(ge=0), explore_prob=rule(ge=0, le=1),
        algorithm=rule(choices=("ucb", "thompson")))
class _ThresholdLike:
    """A user's controller: its ranges declared beside it, its defaults in its signature."""

    def __init__(self, overflow_threshold: float = 1e-3, explore_prob: float = 0.1, algorithm: str = "ucb"):
        self.overflow_threshold, self.explore_prob, self.algorithm = overflow_threshold, explore_prob, algorithm


@pytest.fixture
def test_threshold_option():
    """Register the plugin option for one test, then take it out of Hydra's ConfigStore again
    (a leftover option would show up in every later test that lists the group's options)."""
    register_option("controller", "test_threshold", _ThresholdLike, target=f"{__name__}._ThresholdLike")
    yield
    ConfigStore.instance().repo.get("controller", {}).pop("test_threshold.yaml", None)


@pytest.mark.parametrize("override,message", [
    ("controller.overflow_threshold=-0.5", "controller.overflow_threshold=-0.5 is out of range; allowed: >= 0"),
    ("controller.explore_prob=1.5", "controller.explore_prob=1.5 is out of range; allowed: [0, 1]"),
    ("controller.algorithm=exp3", "controller.algorithm='exp3' is out of range; allowed: one of ucb, thompson"),
    ("controller.explore_prob=often", "controller.explore_prob: Value 'often' of type 'str' could not be converted to Float"),
])
def test_a_registered_controller_is_checked_the_same_way(override, message, test_threshold_option):
    """The same rules at compose time (validate) and when Python code constructs the class."""
    assert compose_message(["controller=test_threshold"]) is None
    got = compose_message(["controller=test_threshold", override])
    assert got is not None and got.startswith(message), got
    key, _, value = override.removeprefix("controller.").partition("=")
    if key != "explore_prob" or value != "often":  # a wrong type is the config's error only
        with pytest.raises(ConfigError) as python_error:
            _ThresholdLike(**{key: value if key == "algorithm" else float(value)})
        assert str(python_error.value).startswith(message)


@pytest.mark.slow
@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_cli_exits_nonzero_with_the_one_line_message(tmp_path, overrides, message):
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "adaprec.run", "model=mlp", *overrides,
                           f"hydra.run.dir={run_dir}"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"adaprec: error: {message}"), proc.stderr
    assert not (run_dir / "metrics.json").exists()  # nothing ran, nothing was written
