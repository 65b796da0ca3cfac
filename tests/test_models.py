"""Model zoo: shapes, sizes, causality, gradient flow, and every conf/model config instantiating."""
import hydra
import pytest
import torch
from omegaconf import OmegaConf

from adaprec.models import GPT, MLP, CausalAttentionCore, SmallCNN, resnet18

from tests.conftest import CONF

MODEL_CONFIGS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


def test_mlp_flattens_images_and_rejects_wrong_width():
    model = MLP(in_channels=3, image_size=8, num_classes=7, hidden=(16,))
    assert model(torch.randn(5, 3, 8, 8)).shape == (5, 7)
    assert MLP(in_features=12, num_classes=2)(torch.randn(4, 12)).shape == (4, 2)
    with pytest.raises(ValueError, match="in_features=192"):
        model(torch.randn(5, 3, 9, 9))
    with pytest.raises(ValueError, match="in_channels and image_size"):
        MLP(num_classes=3)


@pytest.mark.parametrize("size", [8, 13, 16])
def test_small_cnn_and_resnet18_any_input_size(size):
    x = torch.randn(2, 1, size, size)
    assert SmallCNN(in_channels=1, num_classes=4, width=8)(x).shape == (2, 4)
    assert resnet18(in_channels=1, num_classes=4)(x).shape == (2, 4)


def _resnet18_param_count(in_channels, num_classes):
    """Closed form: conv weights + 2 BN params per channel + fc (no conv biases)."""
    conv_bn = lambda cin, cout, k: cin * cout * k * k + 2 * cout  # noqa: E731
    total = conv_bn(in_channels, 64, 3)
    cin = 64
    for i, w in enumerate((64, 128, 256, 512)):
        for j in range(2):
            c = cin if j == 0 else w
            total += conv_bn(c, w, 3) + conv_bn(w, w, 3)
            if c != w:  # projection shortcut on the first block of stages 2-4
                total += conv_bn(c, w, 1)
        cin = w
    return total + 512 * num_classes + num_classes


@pytest.mark.parametrize("in_channels,num_classes", [(3, 10), (1, 100)])
def test_resnet18_parameter_count(in_channels, num_classes):
    n = sum(p.numel() for p in resnet18(in_channels, num_classes).parameters())
    assert n == _resnet18_param_count(in_channels, num_classes)
    if (in_channels, num_classes) == (3, 10):
        assert n == 11_173_962  # the widely reported count for CIFAR ResNet-18


def test_resnet18_has_no_maxpool_and_stride1_stem():
    model = resnet18()
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)


def test_gpt_shapes_and_rejects_long_sequences():
    model = GPT(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=32)
    assert model(torch.randint(0, 50, (3, 10))).shape == (3, 10, 50)
    with pytest.raises(ValueError, match="block_size 16"):
        model(torch.randint(0, 50, (1, 17)))


def test_gpt_is_causal():
    torch.manual_seed(0)
    model = GPT(vocab_size=40, block_size=12, n_layer=2, n_head=2, n_embd=32).eval()
    idx = torch.randint(0, 40, (2, 12))
    changed = idx.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 40
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=0)
    assert not torch.allclose(a[:, 7:], b[:, 7:])  # the change is visible from position 7 on


def test_gpt_attention_core_is_its_own_parameterless_layer():
    model = GPT(n_layer=2)
    cores = [(n, m) for n, m in model.named_modules() if isinstance(m, CausalAttentionCore)]
    assert [n for n, _ in cores] == ["blocks.0.attn.core", "blocks.1.attn.core"]
    for _, core in cores:
        assert core.adaprec_layer is True and not list(core.parameters())
        assert "mask" not in core.state_dict()  # non-persistent buffer
    assert model.head.weight is not model.tok_emb.weight


def test_gpt_tie_weights_shares_the_matrix():
    model = GPT(tie_weights=True)
    assert model.head.weight is model.tok_emb.weight


def test_gpt_core_matches_reference_attention():
    """The hand-written core equals torch's fused causal attention (up to fp32 rounding)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 8) for _ in range(3))
    ours = CausalAttentionCore(block_size=16)(q, k, v)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def _gradient_cases():
    return [
        pytest.param(MLP(in_channels=1, image_size=8, num_classes=3, hidden=(8,)),
                     torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,)), id="mlp"),
        pytest.param(SmallCNN(in_channels=1, num_classes=3, width=4),
                     torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,)), id="cnn"),
        pytest.param(resnet18(in_channels=1, num_classes=3),
                     torch.randn(2, 1, 8, 8), torch.randint(0, 3, (2,)), id="resnet18"),
        pytest.param(GPT(vocab_size=20, block_size=8, n_layer=2, n_head=2, n_embd=16),
                     torch.randint(0, 20, (2, 8)), torch.randint(0, 20, (2, 8)), id="gpt"),
    ]


@pytest.mark.parametrize("model,x,y", _gradient_cases())
def test_gradient_reaches_every_parameter(model, x, y):
    logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"zero gradient for {name}"


# the first layer's input needs no gradient; torch warns that its hook sees output grads only
@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("model,x,y", _gradient_cases())
def test_full_backward_hooks_work_on_every_layer(model, x, y):
    """A monitor hooks every parameter-owning module; an in-place op on a hooked module's output
    (e.g. ReLU(inplace=True) after BatchNorm) would make backward raise."""
    seen = []
    for name, m in model.named_modules():
        if list(m.parameters(recurse=False)) or getattr(m, "adaprec_layer", False):
            m.register_full_backward_hook(lambda mod, gi, go, name=name: seen.append(name))
    logits = model(x)
    torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1)).backward()
    n_layers = sum(1 for m in model.modules()
                   if list(m.parameters(recurse=False)) or getattr(m, "adaprec_layer", False))
    assert len(set(seen)) == n_layers


def _model_dataset_pairs():
    """Every model config with every dataset config of the task it serves."""
    tasks = {p.stem: OmegaConf.load(p).task for p in (CONF / "dataset").glob("*.yaml")}
    return [pytest.param(m, d, id=f"{m}-{d}") for m in MODEL_CONFIGS for d in sorted(tasks)
            if tasks[d] == {"gpt": "lm", "regressor": "regression"}.get(m, "classification")]


@pytest.mark.parametrize("model_name,dataset_name", _model_dataset_pairs())
def test_every_model_config_instantiates_and_runs(model_name, dataset_name):
    cfg = OmegaConf.create({"dataset": OmegaConf.load(CONF / "dataset" / f"{dataset_name}.yaml"),
                            "model": OmegaConf.load(CONF / "model" / f"{model_name}.yaml")})
    model = hydra.utils.instantiate(cfg.model, _convert_="all")
    assert isinstance(model, torch.nn.Module)
    d = cfg.dataset
    if d.task == "lm":
        x = torch.randint(0, d.vocab_size, (2, d.block_size))
        assert model(x).shape == (2, d.block_size, d.vocab_size)
    elif d.task == "regression":
        assert model(torch.randn(2, d.in_features)).shape == (2,)
    else:
        x = torch.randn(2, d.channels, d.image_size, d.image_size)
        assert model(x).shape == (2, d.num_classes)


def test_model_configs_cover_the_zoo():
    assert set(MODEL_CONFIGS) >= {"mlp", "cnn", "resnet18", "gpt"}
