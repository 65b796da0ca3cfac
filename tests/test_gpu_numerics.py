"""Per-layer plans against torch.autocast and GradScaler on a CUDA device (marked ``gpu``).

``bash benchmarks/gpu_check.sh`` runs these on the GPU; its CPU dry run
(``--device cpu --quick``, itself a test in the default suite) runs the very same tests with
``ADAPREC_TEST_DEVICE=cpu``, so they are known to work the first time a GPU is there. Under
the default ``-m 'not slow and not gpu'`` they are deselected.
"""
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaprec import AdaptivePrecision, Plan
from adaprec.controllers import FixedPlan, Static

from .test_executor import convnet, data, mlp

pytestmark = pytest.mark.gpu

DEVICE = torch.device(os.environ.get("ADAPREC_TEST_DEVICE", "cuda"))
if DEVICE.type == "cuda" and not torch.cuda.is_available():
    pytest.skip("no CUDA device (set ADAPREC_TEST_DEVICE=cpu for the dry run)", allow_module_level=True)

STEPS = 6
# fp16 convolutions have no usable CPU kernels: the convnet runs fp16 on CUDA only
FP16_MODELS = [(mlp, (16,), 5)] + ([(convnet, (3, 8, 8), 4)] if DEVICE.type == "cuda" else [])
MODELS = [(mlp, (16,), 5), (convnet, (3, 8, 8), 4)]


def _reference(model, x, y, dtype=None, forward=None):
    """Plain training on DEVICE under one global torch.autocast (+ GradScaler for fp16)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler(DEVICE.type, enabled=dtype == torch.float16 or forward is not None)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        with torch.autocast(DEVICE.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = F.cross_entropy((forward or model)(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    return losses


def _adaprec(model, x, y, controller):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ap = AdaptivePrecision(model, controller=controller, device_type=DEVICE.type,
                           executor="native", monitor_every=1)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        with ap.autocast():
            loss = F.cross_entropy(model(x), y)
        ap.backward(loss)
        losses.append(ap.step(opt).loss)
    return losses, ap


def _pair(factory, shape, classes):
    x, y = data(shape, classes)
    return factory().to(DEVICE), factory().to(DEVICE), x.to(DEVICE), y.to(DEVICE)


def _assert_same_params(a, b):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("factory,shape,classes", MODELS, ids=["mlp", "convnet"])
def test_fp32_plan_is_plain_training(factory, shape, classes):
    ref, ours, x, y = _pair(factory, shape, classes)
    assert _adaprec(ours, x, y, Static("fp32"))[0] == _reference(ref, x, y)
    _assert_same_params(ours, ref)


@pytest.mark.parametrize("factory,shape,classes", MODELS, ids=["mlp", "convnet"])
def test_bf16_plan_is_torch_autocast_bit_for_bit(factory, shape, classes):
    ref, ours, x, y = _pair(factory, shape, classes)
    assert _adaprec(ours, x, y, Static("bf16"))[0] == _reference(ref, x, y, torch.bfloat16)
    _assert_same_params(ours, ref)


@pytest.mark.parametrize("factory,shape,classes", FP16_MODELS, ids=["mlp", "convnet"][:len(FP16_MODELS)])
def test_fp16_plan_is_autocast_with_gradscaler_bit_for_bit(factory, shape, classes):
    ref, ours, x, y = _pair(factory, shape, classes)
    losses, ap = _adaprec(ours, x, y, Static("fp16"))
    assert ap.scaler.active
    assert losses == _reference(ref, x, y, torch.float16)
    _assert_same_params(ours, ref)


def test_mixed_per_layer_plan_is_nested_autocast_regions():
    """{0: bf16, 2: fp16, rest fp32}: each layer in its own autocast region, its output cast to
    fp32 for the fp32 code around it, loss scaling on (fp16 is in the plan)."""
    ref, ours, x, y = _pair(mlp, (16,), 5)

    def regions(inp):
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            h = ref[0](inp).float()
        h = ref[1](h)
        with torch.autocast(DEVICE.type, dtype=torch.float16):
            h = ref[2](h).float()
        with torch.autocast(DEVICE.type, enabled=False):
            return ref[5](ref[4](ref[3](h)))

    plan = Plan({"0": "bf16", "2": "fp16"}, default="fp32")
    losses, ap = _adaprec(ours, x, y, FixedPlan(plan))
    assert ap.scaler.active
    assert losses == _reference(ref, x, y, forward=regions, dtype=None)
    _assert_same_params(ours, ref)


def test_emulated_bf16_tracks_native_bf16():
    """Emulation rounds fp32 kernels' operands and outputs; native bf16 kernels also round
    inside reductions, so the two agree to a tolerance, not bit for bit."""
    x, y = data((16,), 5)
    x, y = x.to(DEVICE), y.to(DEVICE)
    native, emulated = mlp().to(DEVICE), mlp().to(DEVICE)
    a = _adaprec(native, x, y, Static("bf16"))[0]
    opt = torch.optim.SGD(emulated.parameters(), lr=0.1, momentum=0.9)
    ap = AdaptivePrecision(emulated, controller=Static("bf16"), device_type=DEVICE.type,
                           executor="emulated", monitor_every=0)
    b = []
    for _ in range(STEPS):
        opt.zero_grad()
        with ap.autocast():
            loss = F.cross_entropy(emulated(x), y)
        ap.backward(loss)
        b.append(ap.step(opt).loss)
    assert max(abs(p - q) / abs(p) for p, q in zip(a, b)) < 2e-2, (a, b)
