"""The time-varying workload: the gradient schedule (a pure function of the step, undone before
the optimizer), its data, a few CLI steps, and a bit-identical resume across the schedule."""
import json
import math
import subprocess
import sys

import pytest
import torch

from adaprec.app.gradient_schedule import gradient_factor, scale_gradient, unscale_gradients
from adaprec.app.instantiate import instantiate
from adaprec.app.train import train
from adaprec.data.digits_regression import teacher_targets

from .conftest import CONF, compose_config
from .test_checkpoint import assert_same_run

ROOT = CONF.parent


def test_factor_is_one_before_start_geometric_while_ramping_and_final_after():
    kw = dict(start=10, steps=4, final=1e-4)
    assert [gradient_factor(s, **kw) for s in (0, 9)] == [1.0, 1.0]
    assert gradient_factor(10, **kw) == 1.0
    assert math.isclose(gradient_factor(12, **kw), 1e-2, rel_tol=1e-12)  # halfway: sqrt(final)
    assert [gradient_factor(s, **kw) for s in (14, 500)] == [1e-4, 1e-4]
    assert gradient_factor(10, start=10, steps=0, final=1e-4) == 1e-4  # no ramp: at once
    assert gradient_factor(10**6, start=0, steps=0, final=1.0) == 1.0  # the default: off


def test_scale_gradient_leaves_forward_alone_and_scales_backward_once():
    x = torch.randn(5, requires_grad=True)
    y = scale_gradient(x, 1e-3)
    assert torch.equal(y, x)
    y.pow(2).sum().backward()
    torch.testing.assert_close(x.grad, 2 * x.detach() * 1e-3, rtol=1e-6, atol=0)
    assert scale_gradient(x, 1.0) is x


def test_scaled_then_unscaled_adam_training_matches_plain_training_in_fp32():
    """The update sees the true gradients: only the backward pass carries the small ones."""
    def run(factor, unscale=True):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        x, y = torch.randn(32, 8), torch.randn(32, 2)
        for _ in range(5):
            opt.zero_grad()
            torch.nn.functional.mse_loss(scale_gradient(model(x), factor), y).backward()
            if unscale:
                unscale_gradients(model.parameters(), factor)
            opt.step()
        return torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.testing.assert_close(run(1e-5), run(1.0), rtol=1e-5, atol=1e-6)
    # without the unscale Adam's eps (1e-8) meets gradients of ~1e-7: a different run
    assert not torch.allclose(run(1e-5, unscale=False), run(1.0), rtol=1e-3, atol=1e-4)


def test_the_shrunk_gradients_flush_in_fp16_and_not_in_bf16(make_cfg):
    """At the schedule's final factor the head's output gradient lies below fp16's subnormals."""
    cfg = make_cfg("experiment=time_varying")
    data = instantiate(cfg.dataset)
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    out = model(data.train_x[:64])
    assert out.shape == (64, cfg.dataset.out_features) == data.train_y[:64].shape
    final = cfg.trainer.grad_schedule.final
    out.retain_grad()
    torch.nn.functional.mse_loss(scale_gradient(out, final), data.train_y[:64]).backward()
    g = out.grad[out.grad != 0]
    flushed = lambda dt: (g.to(dt) == 0).float().mean().item()  # noqa: E731
    assert flushed(torch.float16) > 0.5 and flushed(torch.bfloat16) == 0.0
    assert g.abs().max() < torch.finfo(torch.float16).tiny  # all of it below fp16's smallest normal
    # and the targets need fp16's mantissa: bf16 rounding alone costs more than fp16's
    y = data.val_y
    rmse = lambda dt: (y - y.to(dt).float()).pow(2).mean().sqrt().item()  # noqa: E731
    assert rmse(torch.bfloat16) > 1.0 > 0.2 > rmse(torch.float16)


def test_more_teacher_outputs_keep_the_first_one():
    pixels = torch.rand(50, 64)
    one, many = teacher_targets(pixels, 3), teacher_targets(pixels, 3, out_features=4)
    assert one.shape == (50,) and many.shape == (50, 4)
    torch.testing.assert_close(many[:, 0], one, rtol=0, atol=1e-5)
    torch.testing.assert_close(many.std(0), torch.ones(4))


SHORT = ("experiment=time_varying", "trainer.max_steps=6", "trainer.eval_every=3",
         "trainer.grad_schedule.start=2", "trainer.grad_schedule.steps=2", "monitor.every=1",
         "trainer.progress=false", "controller.interval=1")


def test_resume_across_the_schedule_is_bit_identical(tmp_path):
    """A run checkpointed at step 3 (mid-ramp) and resumed reproduces the uninterrupted one."""
    args = ("controller=fp16", *[a for a in SHORT if not a.startswith("controller.")],
            "trainer.checkpoint_every=3")
    ref, crashed = tmp_path / "ref", tmp_path / "crashed"
    train(compose_config(*args), ref)
    train(compose_config(*args), crashed)
    meta = json.loads((crashed / "metrics.json").read_text())
    (crashed / "metrics.json").write_text(json.dumps({**meta, "status": "running"}))
    assert train(compose_config(*args), crashed)["resumed_from"] == 3
    assert_same_run(ref, crashed)


@pytest.mark.slow
def test_the_workload_runs_a_few_steps_from_the_cli(tmp_path):
    out = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "adaprec.run", "controller=threshold", *SHORT,
                    "controller.warmup=1", f"hydra.run.dir={out}"], cwd=ROOT, check=True,
                   capture_output=True, timeout=300)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["steps"] == 6 and math.isfinite(metrics["val_rmse"])
    assert metrics["choices"]["experiment"] == "time_varying"
