"""FLOP and byte counts per layer against the analytic formulas."""
import pandas as pd
import pytest
import torch
from torch import nn

from adaprec.cost import CostModel
from adaprec.runtime.layers import discover_layers
from .cost_models import AttentionBlock, AttentionCore, Residual, mlp


def linear_flops(n, d_in, d_out):
    return 2 * n * d_in * d_out


def conv_flops(batch, c_in, c_out, k, h_out, w_out, groups=1):
    return 2 * batch * c_out * h_out * w_out * (c_in // groups) * k * k


def test_linear_flops_equal_formula_and_backward_is_twice_forward():
    model = nn.Sequential(nn.Linear(12, 24), nn.Tanh(), nn.Linear(24, 6))
    cm = CostModel.count(model, torch.randn(5, 12))
    t = pd.DataFrame(cm.layer_table()).set_index("layer")
    assert t.loc["0", "fwd_flops"] == linear_flops(5, 12, 24)
    assert t.loc["2", "fwd_flops"] == linear_flops(5, 24, 6)
    # the first layer's input needs no gradient (training): weight gradient only
    assert t.loc["0", "bwd_flops"] == linear_flops(5, 12, 24)
    assert t.loc["2", "bwd_flops"] == 2 * linear_flops(5, 24, 6)
    assert t.loc["2", "macs"] == 5 * 24 * 6
    assert t.loc["0", "param_elems"] == 12 * 24 + 24
    assert (t.loc["0", "act_in_elems"], t.loc["0", "act_out_elems"]) == (5 * 12, 5 * 24)


@pytest.mark.parametrize("stride,padding,groups", [(1, 1, 1), (2, 0, 1), (1, 1, 2)])
def test_conv2d_flops_equal_formula(stride, padding, groups):
    conv = nn.Conv2d(4, 6, 3, stride=stride, padding=padding, groups=groups)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), conv)
    x = torch.randn(2, 3, 9, 9)
    h_out = (9 + 2 * padding - 3) // stride + 1
    cm = CostModel.count(model, x)
    t = pd.DataFrame(cm.layer_table()).set_index("layer")
    fwd = conv_flops(2, 4, 6, 3, h_out, h_out, groups)
    assert t.loc["1", "fwd_flops"] == fwd
    assert t.loc["1", "bwd_flops"] == 2 * fwd
    assert t.loc["0", "fwd_flops"] == conv_flops(2, 3, 4, 1, 9, 9)
    assert cm.counts[1].fwd_flops == {"conv": fwd}


def test_attention_core_owns_its_matmuls_and_projections_own_theirs():
    b, t_len, d = 2, 7, 8
    model = nn.Sequential(nn.Linear(d, d), AttentionBlock(d))
    cm = CostModel.count(model, torch.randn(b, t_len, d))
    table = pd.DataFrame(cm.layer_table()).set_index("layer")
    assert "1.core" in cm.layers and "1" not in cm.layers  # the block itself owns nothing
    qk_and_av = 2 * (2 * b * t_len * t_len * d)
    assert table.loc["1.core", "fwd_flops"] == qk_and_av
    assert table.loc["1.core", "bwd_flops"] == 2 * qk_and_av  # q, k and v all need gradients
    for proj in ("1.q", "1.k", "1.v", "1.out"):
        assert table.loc[proj, "fwd_flops"] == linear_flops(b * t_len, d, d)
        assert table.loc[proj, "bwd_flops"] == 2 * linear_flops(b * t_len, d, d)
    assert cm.other_fwd == {} and cm.other_bwd == {}


def test_nested_layer_owns_only_its_own_ops():
    class Mixer(nn.Module):  # a layer (own parameter) that also calls a child layer
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.randn(6, 6))
            self.inner = nn.Linear(6, 6)

        def forward(self, x):
            return self.inner(x @ self.scale)

    model = nn.Sequential(nn.Linear(6, 6), Mixer())
    cm = CostModel.count(model, torch.randn(3, 6))
    t = pd.DataFrame(cm.layer_table()).set_index("layer")
    assert t.loc["1", "fwd_flops"] == linear_flops(3, 6, 6)   # x @ scale only
    assert t.loc["1.inner", "fwd_flops"] == linear_flops(3, 6, 6)
    assert t.loc["1", "bwd_flops"] == 2 * linear_flops(3, 6, 6)
    assert t.loc["1", "param_elems"] == 36


def test_parallel_branches_are_charged_to_their_own_layers_in_backward():
    model = nn.Sequential(nn.Linear(5, 5), Residual(5), Residual(5))
    cm = CostModel.count(model, torch.randn(4, 5))
    t = pd.DataFrame(cm.layer_table()).set_index("layer")
    for name in ("1.body.0", "1.body.2", "1.shortcut", "2.body.0", "2.shortcut"):
        assert t.loc[name, "fwd_flops"] == linear_flops(4, 5, 5)
        assert t.loc[name, "bwd_flops"] == 2 * linear_flops(4, 5, 5), name


def test_root_level_ops_are_unattributed():
    class Root(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(x) @ torch.ones(4, 3)  # a matmul no layer owns

    cm = CostModel.count(Root(), torch.randn(2, 4))
    assert cm.other_fwd == {"matmul": linear_flops(2, 4, 3)}
    assert cm.total_flops == sum(pd.DataFrame(cm.layer_table())[["fwd_flops", "bwd_flops"]].sum()) + 2 * linear_flops(2, 4, 3)


def test_counting_leaves_model_state_untouched():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 6, 6)
    rng = torch.get_rng_state()
    CostModel.count(model, x)
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert torch.equal(torch.get_rng_state(), rng)
    assert not model[0]._forward_hooks and not model[0]._forward_pre_hooks


def test_layers_follow_forward_execution_order():
    class Reversed(nn.Module):
        def __init__(self):
            super().__init__()
            self.late, self.early = nn.Linear(3, 3), nn.Linear(3, 3)
            self.core = AttentionCore()

        def forward(self, x):
            y = self.late(self.early(x)).unsqueeze(0)
            return self.core(y, y, y)

    model = Reversed()
    assert discover_layers(model) == ["late", "early", "core"]
    assert CostModel.count(model, torch.randn(2, 3)).layers == ["early", "late", "core"]


def test_unknown_layer_name_is_a_clear_error():
    with pytest.raises(ValueError, match="not modules of the model"):
        CostModel.count(mlp(), torch.randn(2, 8), layers=["nope"])


def test_transposed_conv_flops_equal_formula():
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.ConvTranspose2d(3, 4, 3, stride=2))
    cm = CostModel.count(model, torch.randn(2, 2, 5, 5))
    t = pd.DataFrame(cm.layer_table()).set_index("layer")
    fwd = 2 * 2 * 5 * 5 * 3 * 4 * 3 * 3  # every input pixel meets the whole kernel
    assert t.loc["1", "fwd_flops"] == fwd
    assert t.loc["1", "bwd_flops"] == 2 * fwd


def _zoo():
    from adaprec.models import GPT, MLP, SmallCNN, resnet18
    return {
        "mlp": (MLP(in_channels=1, image_size=8, num_classes=10, hidden=[16]), torch.randn(2, 1, 8, 8)),
        "cnn": (SmallCNN(in_channels=1, num_classes=10, width=4), torch.randn(2, 1, 8, 8)),
        "resnet18": (resnet18(3, 10), torch.randn(2, 3, 8, 8)),
        "gpt": (GPT(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=16),
                torch.randint(0, 32, (2, 8))),
    }


@pytest.mark.parametrize("name", ["mlp", "cnn", pytest.param("resnet18", marks=pytest.mark.slow), "gpt"])
def test_every_zoo_flop_is_owned_by_a_layer(name):
    model, x = _zoo()[name]
    cm = CostModel.count(model, x)
    assert cm.other_fwd == {} and cm.other_bwd == {}
    assert cm.layers and sorted(cm.layers) == sorted(discover_layers(model))
    t = pd.DataFrame(cm.layer_table())
    flopped = t[t["fwd_flops"] > 0]
    assert len(flopped) > 0
    # backward: the weight gradient (1x forward) plus the input gradient (1x) unless it is the input
    fwd, bwd = flopped["fwd_flops"], flopped["bwd_flops"]
    assert ((bwd >= fwd) & (bwd <= 2 * fwd)).all()


def test_gpt_attention_core_owns_the_attention_matmuls():
    from adaprec.models import GPT
    b, t_len, d = 2, 8, 16
    model = GPT(vocab_size=32, block_size=t_len, n_layer=1, n_head=2, n_embd=d)
    cm = CostModel.count(model, torch.randint(0, 32, (b, t_len)))
    cores = [n for n in cm.layers if type(dict(model.named_modules())[n]).__name__ == "CausalAttentionCore"]
    table = pd.DataFrame(cm.layer_table()).set_index("layer")
    assert len(cores) == 1
    assert table.loc[cores[0], "fwd_flops"] == 2 * (2 * b * t_len * t_len * d)  # q k^T and a v, all heads
