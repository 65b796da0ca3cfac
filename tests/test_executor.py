"""Native executor: exactness against plain fp32 and torch.autocast, regions, plan switching."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaprec import AdaptivePrecision, Plan
from adaprec.controllers import Autocast, FixedPlan, Static

from .loops import train_steps


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.LayerNorm(64),
                         nn.GELU(), nn.Linear(64, 5))


def convnet(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4))


def data(shape, classes, n=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def train_reference(model, x, y, steps, dtype=None):
    """Plain training, optionally under one global torch.autocast (+ GradScaler for fp16)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=dtype == torch.float16)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    return losses


def train_adaprec(model, x, y, steps, controller, monitor_every=1):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ap = AdaptivePrecision(model, controller=controller, monitor_every=monitor_every)
    return [r.loss for r in train_steps(model, ap, x, y, steps, opt)], ap


def assert_params_equal(a, b):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("factory,shape,classes", [(mlp, (16,), 5), (convnet, (3, 8, 8), 4)])
def test_all_fp32_plan_is_bit_identical_to_plain_training(factory, shape, classes):
    x, y = data(shape, classes)
    ref, ours = factory(), factory()
    ref_losses = train_reference(ref, x, y, 10)
    our_losses, _ = train_adaprec(ours, x, y, 10, Static("fp32"))
    assert our_losses == ref_losses
    assert_params_equal(ours, ref)


@pytest.mark.parametrize("factory,shape,classes", [(mlp, (16,), 5), (convnet, (3, 8, 8), 4)])
def test_all_bf16_plan_matches_torch_autocast_bit_for_bit(factory, shape, classes):
    x, y = data(shape, classes)
    ref, ours = factory(), factory()
    ref_losses = train_reference(ref, x, y, 10, torch.bfloat16)
    our_losses, _ = train_adaprec(ours, x, y, 10, Static("bf16"))
    assert our_losses == ref_losses
    assert_params_equal(ours, ref)


def test_all_fp16_plan_matches_autocast_with_gradscaler():
    x, y = data((16,), 5)
    ref, ours = mlp(), mlp()
    ref_losses = train_reference(ref, x, y, 10, torch.float16)
    our_losses, ap = train_adaprec(ours, x, y, 10, Static("fp16"))
    assert ap.scaler.active and ap.scaler.scale == 2.0**16
    assert our_losses == ref_losses
    assert_params_equal(ours, ref)


def test_global_autocast_controller_matches_reference():
    x, y = data((16,), 5)
    ref, ours = mlp(), mlp()
    assert train_adaprec(ours, x, y, 5, Autocast("bf16"))[0] == train_reference(ref, x, y, 5, torch.bfloat16)


class Attention(nn.Module):
    """A non-leaf module that calls functional ops itself."""

    def __init__(self, d=16):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.seen: dict[str, torch.dtype] = {}

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        att = torch.matmul(q, k.transpose(-2, -1)) / 4.0
        self.seen["scores"] = att.dtype
        att = torch.softmax(att, dim=-1)
        out = torch.matmul(att, v)
        self.seen["context"] = out.dtype
        return self.proj(out)


class AddmmLayer(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.w = nn.Parameter(torch.randn(d, d) / 4)
        self.b = nn.Parameter(torch.zeros(d))
        self.seen = None

    def forward(self, x):
        out = torch.addmm(self.b, x, self.w)
        self.seen = out.dtype
        return out


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = Attention()
        self.attn.adaprec_layer = True
        self.custom = AddmmLayer()
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.custom(self.attn(x)))


def run_once(net, ap, x):
    with ap.autocast():
        out = net(x)
    return out


def test_functional_ops_follow_their_modules_format_and_children_override():
    net = Net()
    x = torch.randn(8, 16)
    plan = Plan({"attn": "bf16", "attn.qkv": "fp32", "attn.proj": "bf16", "custom": "bf16",
                 "head": "fp32"}, default="fp32")
    ap = AdaptivePrecision(net, controller=FixedPlan(dict(plan), default="fp32"))
    assert set(ap.layers) == {"attn", "attn.qkv", "attn.proj", "custom", "head"}
    out = run_once(net, ap, x)
    assert net.attn.seen == {"scores": torch.bfloat16, "context": torch.bfloat16}
    assert net.custom.seen == torch.bfloat16
    assert out.dtype == torch.float32  # fp32 head: autocast off, input cast up


def test_fp32_child_inside_bf16_parent_runs_in_fp32():
    net = Net()
    seen = {}
    # registered before adaprec's hooks, so it sees the layer's own output dtype
    net.attn.qkv.register_forward_hook(lambda m, a, o: seen.update(qkv=(a[0].dtype, o.dtype)))
    ap = AdaptivePrecision(net, controller=FixedPlan({"attn": "fp32", "custom": "fp32"}, default="bf16"))
    run_once(net, ap, torch.randn(8, 16))
    # attn.qkv and attn.proj are not in the patterns: they get the default (bf16) as their
    # own entries, overriding the fp32 parent
    assert seen["qkv"][1] == torch.bfloat16
    assert net.attn.seen["scores"] == torch.float32  # the parent's own ops: fp32, inputs cast up
    assert net.custom.seen == torch.float32


def test_plan_switch_mid_training_needs_no_new_hooks():
    class Flip:
        """fp32 for two steps, then the middle layer in bf16."""
        reasons = {}

        def setup(self, ctx):
            self.layers = list(ctx.layers)

        def observe(self, record):
            pass

        def decide(self, step):
            fmt = "bf16" if step >= 2 else "fp32"
            self.reasons = {"2": "flip"}
            return Plan({**{n: "fp32" for n in self.layers}, "2": fmt})

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    model = mlp()
    x, y = data((16,), 5)
    hooks_before = None
    dtypes = []
    model[2].register_forward_hook(lambda m, a, o: dtypes.append(o.dtype))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ap = AdaptivePrecision(model, controller=Flip())
    hooks_before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    for _ in range(4):
        opt.zero_grad()
        with ap.autocast():
            loss = F.cross_entropy(model(x), y)
        ap.backward(loss)
        ap.step(opt)
    hooks_after = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    assert dtypes == [torch.float32, torch.float32, torch.bfloat16, torch.bfloat16]
    assert hooks_after == hooks_before
    assert [d for d in ap.pop_decisions() if d["step"] > 0] == [
        {"step": 2, "layer": "2", "old": "fp32", "new": "bf16", "reason": "flip"}]
    for p in model.parameters():  # master weights and their grads stay fp32
        assert p.dtype == torch.float32 and p.grad.dtype == torch.float32


def test_remove_restores_plain_model():
    model = mlp()
    ap = AdaptivePrecision(model, controller=Static("bf16"))
    ap.remove()
    assert model(torch.randn(2, 16)).dtype == torch.float32
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_unknown_executor_and_empty_model_errors():
    with pytest.raises(ValueError, match="unknown executor"):
        AdaptivePrecision(mlp(), executor="magic")
    with pytest.raises(ValueError, match="no layers"):
        AdaptivePrecision(nn.ReLU())


def test_model_without_parameters_but_a_declared_layer():
    class Core(nn.Module):
        adaprec_layer = True

        def forward(self, x):
            return torch.softmax(torch.matmul(x, x.transpose(-1, -2)), -1)

    model = nn.Sequential(Core())
    ap = AdaptivePrecision(model, controller=Static("bf16"))
    with ap.autocast():
        out = model(torch.randn(3, 4))
    assert ap.layers == ["0"] and out.dtype == torch.bfloat16
