"""Per-layer regions on mixed plans and under activation checkpointing.

A layer's outputs reach their consumer in the consumer's dtype, so no op ever sees fp16 and bf16
together (autocast's promote ops such as ``torch.cat`` refuse that); a recomputation by
``torch.utils.checkpoint`` (reentrant or not) runs each layer in exactly its forward's region,
so losses, gradients and statistics equal those without checkpointing, bit for bit.
"""
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.checkpoint import checkpoint

from adaprec import AdaptivePrecision, Plan
from adaprec.controllers import FixedPlan
from adaprec.runtime.layers import discover_layers

from .loops import train_steps

FORMATS = ("fp32", "bf16", "fp16")
EXECUTORS = ("native", "emulated", "auto")


def alternating_plans():
    """Every 2- and 3-format alternating assignment (layer i gets fmts[i % k])."""
    return [fmts for k in (2, 3) for fmts in itertools.permutations(FORMATS, k)]


class Repro(nn.Module):
    """Three layers whose outputs meet in ``torch.cat`` (a promote op) in the root region."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(16, 4)

    def forward(self, x):
        return self.c(torch.cat([self.a(x), self.b(x)], dim=-1))


class Block(nn.Module):
    """A layer (own parameter) around two child layers; its own ops run in its region."""

    def __init__(self, width=16):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(width))
        self.inner = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, x):
        h = torch.cat([self.inner(x), x * self.scale], dim=-1)
        return self.norm(h[..., : x.shape[-1]] + h[..., x.shape[-1]:])


class Stack(nn.Module):
    """Two checkpointable blocks between an input and an output layer."""

    def __init__(self, ckpt=None, width=16):
        super().__init__()
        self.ckpt = ckpt  # None: no checkpointing; True/False: use_reentrant
        self.inp = nn.Linear(8, width)
        self.blocks = nn.ModuleList([Block(width), Block(width)])
        self.out = nn.Linear(width, 4)

    def forward(self, x):
        h = self.inp(x)
        for block in self.blocks:
            h = block(h) if self.ckpt is None else checkpoint(block, h, use_reentrant=self.ckpt)
        return self.out(h)


class NoMixedHalves(TorchFunctionMode):
    """Fails any torch op that receives fp16 and bf16 tensors together."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        dtypes = {t.dtype for t in torch.utils._pytree.tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        assert not {torch.float16, torch.bfloat16} <= dtypes, f"{func} got fp16 and bf16 together"
        return func(*args, **kwargs)


def region_dtype(device_type):
    """The compute dtype of the autocast region current here (fp32: autocast off)."""
    on = torch.is_autocast_enabled(device_type)
    return torch.get_autocast_dtype(device_type) if on else torch.float32


def fixed(plan):
    return FixedPlan(plan, default=plan.default)


def alternate(layers, fmts):
    return {name: fmts[i % len(fmts)] for i, name in enumerate(layers)}


def one_step(model, ap, x, y, loss_fn):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.zero_grad()
    with NoMixedHalves(), ap.autocast():
        loss = loss_fn(model(x), y)
    ap.backward(loss)
    ap.step(opt)
    return loss


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("fmts", alternating_plans(), ids="-".join)
def test_mixed_plans_run_without_mixing_16_bit_types(executor, fmts):
    torch.manual_seed(0)
    model = Repro()
    x, y = torch.randn(4, 8), torch.randint(0, 4, (4,))
    for default in fmts:
        plan = Plan(alternate(["a", "b", "c"], fmts), default=default)
        ap = AdaptivePrecision(model, controller=fixed(plan), executor=executor,
                               monitor_every=1, scaler={"init_scale": 1.0})
        loss = one_step(model, ap, x, y, F.cross_entropy)
        assert torch.isfinite(loss)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        ap.remove()


def test_a_16_bit_output_reaches_its_consumer_in_the_consumers_dtype():
    torch.manual_seed(0)
    model = Repro()
    ap = AdaptivePrecision(model, controller=FixedPlan({"a": "fp16", "b": "bf16", "c": "fp16"},
                                                                 default="bf16"), monitor_every=0)
    seen = {}
    for name in ("a", "b", "c"):  # registered after adaprec's hooks: what the caller receives
        getattr(model, name).register_forward_hook(lambda m, a, o, name=name: seen.update({name: o.dtype}))
    with ap.autocast():
        out = model(torch.randn(2, 8))
    assert seen == {"a": torch.bfloat16, "b": torch.bfloat16, "c": torch.bfloat16}
    assert out.dtype == torch.bfloat16  # the root region is bf16, as under autocast alone
    out = model(torch.randn(2, 8))  # outside every region the caller is fp32
    assert out.dtype == torch.float32


@pytest.mark.slow  # Hugging Face models: transformers' import alone takes seconds
@pytest.mark.parametrize("fmts", alternating_plans(), ids="-".join)
def test_mixed_plans_run_natively_on_a_gpt2_block(fmts):
    pytest.importorskip("transformers")
    from benchmarks.real_models import batches, tiny_model
    model = tiny_model("gpt2")
    ids = batches(1)[0]
    plan = Plan(alternate(discover_layers(model), fmts), default=fmts[-1])
    for executor in ("native", "emulated"):
        ap = AdaptivePrecision(model, controller=fixed(plan), executor=executor, monitor_every=1,
                               scaler={"init_scale": 1.0})
        loss = one_step(model, ap, ids, ids, lambda out, y: out.logits.float().log_softmax(-1)
                        .gather(-1, y[..., None]).mean().neg())
        assert torch.isfinite(loss)
        ap.remove()


def _layers(model):
    return set(discover_layers(model))


# -- activation checkpointing ------------------------------------------------------------------

CKPT_PLANS = {
    "bf16": lambda layers: Plan({n: "bf16" for n in layers}, default="bf16"),
    "mixed": lambda layers: Plan(alternate(layers, ("fp16", "bf16", "fp32")), default="bf16"),
    "fp32-root": lambda layers: Plan(alternate(layers, ("bf16", "fp16")), default="fp32"),
}


def train_stack(ckpt, executor, plan_name, steps=3):
    torch.manual_seed(0)
    model = Stack(ckpt)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 8, generator=g), torch.randint(0, 4, (8,), generator=g)
    losses, stats = train_planned(model, executor, plan_name, [(x, y)] * steps,
                                  lambda m, b: F.cross_entropy(m(b[0]), b[1]))
    return losses, stats, [p.detach().clone() for p in model.parameters()]


def train_planned(model, executor, plan_name, data, loss_of):
    """Losses and per-step statistics of training ``model`` on ``data`` under a CKPT_PLANS plan."""
    ap = AdaptivePrecision(model, controller=fixed(CKPT_PLANS[plan_name](sorted(_layers(model)))),
                           executor=executor, monitor_every=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses, stats = [], []
    for b in data:
        opt.zero_grad()
        with ap.autocast():
            loss = loss_of(model, b)
        ap.backward(loss)
        record = ap.step(opt)
        losses.append(record.loss)
        stats.append(dict(record.stats))
    return losses, stats


@pytest.mark.parametrize("plan_name", sorted(CKPT_PLANS))
@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_checkpointing_is_bit_identical_and_measured_once(reentrant, executor, plan_name):
    losses, stats, params = train_stack(None, executor, plan_name)
    c_losses, c_stats, c_params = train_stack(reentrant, executor, plan_name)
    assert c_losses == losses
    assert all(torch.equal(a, b) for a, b in zip(params, c_params))
    # every activation and gradient once: the same statistics (element counts included)
    assert c_stats == stats
    assert stats[0]["blocks.0.inner"].act.numel == 8 * 16


@pytest.mark.parametrize("scaling", ["delayed", "current"])
@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_checkpointing_keeps_fp8_scales_bit_identical(reentrant, scaling):
    """A recomputation reuses the scales its forward used and records no amax twice."""
    def run(ckpt):
        torch.manual_seed(0)
        model = Stack(ckpt)
        plan = Plan({n: "fp8_e4m3" for n in _layers(model)}, default="fp32")
        ap = AdaptivePrecision(model, controller=fixed(plan), executor="emulated", monitor_every=1,
                               executor_options={"fp8": {"scaling": scaling}})
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(8, 8, generator=g), torch.randint(0, 4, (8,), generator=g)
        losses = [r.loss for r in train_steps(model, ap, x, y, 4, torch.optim.SGD(model.parameters(), lr=0.1))]
        return losses, ap.executor.state_dict()
    (losses, state), (c_losses, c_state) = run(None), run(reentrant)
    assert c_losses == losses
    assert [e["pos"] for e in c_state["fp8"]] == [e["pos"] for e in state["fp8"]]
    assert all(torch.equal(a["history"], b["history"]) for a, b in zip(state["fp8"], c_state["fp8"]))


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_recomputed_layers_run_in_their_planned_enclosing_region(reentrant):
    torch.manual_seed(0)
    model = Stack(reentrant)
    layers = sorted(_layers(model))
    plan = CKPT_PLANS["mixed"](layers)
    ap = AdaptivePrecision(model, controller=fixed(plan), monitor_every=0)
    seen = {"forward": {}, "backward": {}}

    def record(name):
        def hook(module, args):  # runs before adaprec's pre-hook: the region the layer is called in
            phase = "backward" if torch._C._current_graph_task_id() != -1 else "forward"
            seen[phase].setdefault(name, set()).add(region_dtype("cpu"))
        return hook
    for name, mod in model.named_modules():
        if name in layers:
            mod.register_forward_pre_hook(record(name), prepend=True)
    with ap.autocast():
        loss = F.cross_entropy(model(torch.randn(4, 8)), torch.randint(0, 4, (4,)))
    ap.backward(loss)
    expected = {n: {ap.executor.enclosing_format(n).dtype} for n in layers}
    assert seen["forward"] == expected
    recomputed = {n for n in layers if n.startswith("blocks.")}
    assert seen["backward"] == {n: expected[n] for n in recomputed}
    assert expected["blocks.0.inner"] == {torch.float16}  # its parent block is fp16 ...
    assert expected["blocks.0"] == {torch.bfloat16}  # ... which sits in the bf16 root region


def hf_checkpointing_losses(executor, plan_name, ckpt, steps=3):
    pytest.importorskip("transformers")
    from benchmarks.real_models import batches, tiny_model
    model = tiny_model("gpt2")
    if ckpt is not None:  # gradient_checkpointing_enable, renamed in transformers 5
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable(None if ckpt == "default" else {"use_reentrant": ckpt})
    return train_planned(model, executor, plan_name, batches(steps),
                         lambda m, ids: m(input_ids=ids, labels=ids, use_cache=False).loss)


@pytest.mark.slow
def test_hf_gradient_checkpointing_native_bf16_matches_plain_training():
    """The case that crashed (non-reentrant recomputation outside ``ap.autocast()``)."""
    assert hf_checkpointing_losses("native", "bf16", False) == hf_checkpointing_losses("native", "bf16", None)


@pytest.mark.slow
@pytest.mark.parametrize("plan_name", ["bf16", "mixed"])
@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("ckpt", ["default", True, False], ids=["hf-default", "reentrant", "non-reentrant"])
def test_hf_gradient_checkpointing_is_bit_identical(ckpt, executor, plan_name):
    assert hf_checkpointing_losses(executor, plan_name, ckpt) == hf_checkpointing_losses(executor, plan_name, None)
