"""Published baselines: Autoswitch's stateless rule and MuPPET's diversity-driven switching."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaprec import AdaptivePrecision
from adaprec.controllers import Autoswitch, MuPPET
from adaprec.controllers.muppet import muppet_threshold
from tests.synth_stats import clean_stats, context, layer_stats, operands_stats, run, tensor

LAYERS = ["a", "b"]


def test_autoswitch_goes_high_on_underflow_or_mse_and_back_without_hysteresis():
    c = Autoswitch(low="fp16", cpu_fp16=True)
    c.setup(context(LAYERS))
    # numel 1000, norm 10: MSE = (err * 10)^2 / 1000; fp16 err 1.4e-4 -> 2e-9 (fine), 0.04 -> 1.6e-4
    # the GEMM inputs (input activation and output gradient) underflow, then round badly
    script = {0: dict(flush=0.06), 1: dict(fp16_err=0.04), 2: {}}
    plans = run(c, 3, lambda s, p: operands_stats(p, s, a=script[s]), LAYERS)
    assert [p["a"] for p in plans] == ["fp16", "fp32", "fp32", "fp16"]
    assert all(p["b"] == "fp16" for p in plans)
    assert "within limits -> fp16" in c.reasons["a"]
    run(c, 1, lambda s, p: operands_stats(p, s, a=dict(fp16_err=0.04)), LAYERS)
    assert "fp16 MSE 0.00016 > 0.0001 -> fp32" in c.reasons["a"]


def test_autoswitch_thresholds_are_strict_and_bf16_has_no_underflow():
    c = Autoswitch(low="bf16")
    c.setup(context(LAYERS))
    plans = run(c, 1, lambda s, p: clean_stats(p, s, a=dict(flush=0.5)), LAYERS)
    assert plans[-1]["a"] == "bf16"  # fp16's flush rate says nothing about bf16
    err_at_limit = math.sqrt(1e-4 * 1000) / 10  # MSE exactly 1e-4
    plans = run(c, 1, lambda s, p: clean_stats(p, s, a=dict(bf16_err=err_at_limit * 0.999)), LAYERS)
    assert plans[-1]["a"] == "bf16"


def test_autoswitch_decides_each_gemm_on_its_own_two_inputs():
    """fprop reads input and weight, dgrad the output gradient and weight, wgrad the output
    gradient and input: a bad input moves fprop and wgrad, a bad gradient dgrad and wgrad."""
    c = Autoswitch(low="fp16", cpu_fp16=True)
    c.setup(context(LAYERS))
    bad = tensor(flush=0.2)
    stats = lambda s, p: {**clean_stats(p, s), "a": layer_stats("a", p.format_of("a"), s, input=bad,
                                                                grad=tensor()),
                          "b": layer_stats("b", p.format_of("b"), s, input=tensor(), grad=bad)}
    plan = run(c, 1, stats, LAYERS)[-1]
    assert c.gemm_formats["a"] == {"fprop": "fp32", "dgrad": "fp16", "wgrad": "fp32"}
    assert c.gemm_formats["b"] == {"fprop": "fp16", "dgrad": "fp32", "wgrad": "fp32"}
    assert plan.roles_of("a") == {"input": "fp32", "weight": "fp32", "dgrad": "fp16", "wgrad": "fp32"}
    assert plan.roles_of("b") == {"input": "fp16", "weight": "fp16", "dgrad": "fp32", "wgrad": "fp32"}
    assert "fprop fp16 underflow 0.2 > 0.05 -> fp32" in c.reasons["a"]
    state = c.state_dict()
    c2 = Autoswitch(low="fp16", cpu_fp16=True)
    c2.setup(context(LAYERS))
    c2.load_state_dict(state)
    assert c2.decide(1) == plan


def test_autoswitch_judges_fp8_at_its_own_scale():
    """An fp8 ``low`` is judged by its own measured statistics, never taken for exact."""
    from adaprec.numerics.stats import FormatError
    c = Autoswitch(low="fp8_e4m3", high="bf16")
    c.setup(context(LAYERS, executor="emulated"))
    plan = run(c, 1, lambda s, p: clean_stats(p, s), LAYERS)[-1]  # fp8 never judged: unknown
    assert plan["a"] == "bf16"
    judged = tensor()
    judged = type(judged)(**{**judged.__dict__, "formats": {"fp8_e4m3": FormatError(0.0, 0.0, 0.03, 1e-6)}})
    from adaprec.numerics.stats import LayerStats
    plan = run(c, 1, lambda s, p: {n: LayerStats(n, s, p.format_of(n), act=judged, grad=judged,
                                                 weight=judged, wgrad=judged, input=judged)
                                   for n in LAYERS}, LAYERS)[-1]
    assert plan["a"] == "fp8_e4m3"  # 3% rounding error, MSE 1e-6: within TE's limits


def test_muppet_threshold_matches_the_paper():
    assert muppet_threshold(0) == pytest.approx(2.5)
    assert muppet_threshold(10) == pytest.approx(1 + 1.5 * math.exp(-1))


def fake_step(ctl, layer, step, grads):
    """Let the controller observe step ``step`` with ``grads`` as ``layer``'s gradients (the
    runtime's layout: the layer's own parameter gradients flattened and concatenated)."""
    from tests.synth_stats import record
    flat = {"lin": torch.cat([g.reshape(-1) for g in grads])}
    ctl.observe(record(step, ctl.plan, gradients=flat if ctl.wants_gradients(step) else None))
    return ctl.decide(step + 1)


def test_muppet_switches_up_the_ladder_when_diversity_falls():
    lin = nn.Linear(8, 8)
    ctl = MuPPET(interval=4, batches=4, patience=2)
    ctl.setup(context(["lin"], layer_types={"lin": "Linear"}))
    assert ctl.ladder == ["bf16", "fp32"]  # fp16 left out on CPU (native executor)
    g = torch.Generator().manual_seed(0)
    plans, reasons = [], {}
    for step in range(24):
        if step < 8:   # independent random gradients: diversity ~ 1
            grads = (torch.randn(8, 8, generator=g), torch.randn(8, generator=g))
        else:          # the same gradient every batch: diversity 1/4
            grads = (torch.ones(8, 8), torch.ones(8))
        plans.append(fake_step(ctl, lin, step, grads)["lin"])
        reasons.update(ctl.reasons)
    divs = [h["diversity"] for h in ctl.history]
    assert divs[0] > 0.5 and divs[2] == pytest.approx(0.25)
    # checks at steps 4, 8 (random), 12, 16 (aligned): ratio ~4 > T on checks 3 and 4 -> switch at 16
    assert plans[:15] == ["bf16"] * 15 and plans[15] == "fp32"
    assert "diversity ratio" in reasons["lin"] and "bf16 -> fp32" in reasons["lin"]


def test_muppet_in_a_real_run_switches_when_batches_start_to_agree():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    ap = AdaptivePrecision(model, controller=MuPPET(interval=5, batches=4, patience=1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    fixed = (torch.randn(64, 16, generator=g), torch.randint(0, 4, (64,), generator=g))
    for step in range(30):
        # diverse random batches first, then one repeated batch (the gradients agree)
        x, y = ((torch.randn(8, 16, generator=g), torch.randint(0, 4, (8,), generator=g))
                if step < 10 else fixed)
        opt.zero_grad()
        with ap.autocast():
            loss = F.cross_entropy(model(x), y)
        ap.backward(loss)
        ap.step(opt)
    switches = [d for d in ap.pop_decisions() if d["step"] > 0]
    assert switches and all(d["new"] == "fp32" and "muppet" in d["reason"] for d in switches)
    assert set(ap.plan.values()) == {"fp32"}


def test_muppet_needs_several_batches():
    with pytest.raises(ValueError, match="controller.batches=1 is out of range; allowed: >= 2"):
        MuPPET(batches=1)


def test_muppet_ladder_only_ever_adds_precision_and_range():
    with pytest.raises(ValueError, match="bf16 -> fp16 loses precision or range"):
        MuPPET(ladder=("bf16", "fp16", "fp32"))
    with pytest.raises(ValueError, match="fp32 -> bf16"):
        MuPPET(ladder=("fp32", "bf16"))
    assert MuPPET(ladder=("fp16", "fp32")).ladder == ["fp16", "fp32"]
    assert MuPPET().ladder == ["bf16", "fp32"]
