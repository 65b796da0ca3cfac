import json

import pytest
import torch

from adaprec.numerics.formats import FORMATS, get_format
from adaprec.runtime.plan import Plan


@pytest.mark.parametrize("name,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16),
                                        ("fp16", torch.float16), ("fp8_e4m3", torch.float8_e4m3fn),
                                        ("fp8_e5m2", torch.float8_e5m2)])
def test_limits_come_from_finfo(name, dtype):
    f, fi = get_format(name), torch.finfo(dtype)
    assert f.max == fi.max and f.smallest_normal == fi.smallest_normal and f.eps == fi.eps
    assert f.bytes == fi.bits / 8
    # the smallest subnormal is representable and half of it rounds to zero (RNE)
    tiny = torch.tensor(f.smallest_subnormal, dtype=torch.float64)
    assert tiny.to(dtype).double().item() == f.smallest_subnormal
    assert (tiny / 2).to(dtype).double().item() == 0.0


def test_known_subnormals():
    assert get_format("fp16").smallest_subnormal == 2.0**-24
    assert get_format("bf16").smallest_subnormal == 2.0**-133
    assert get_format("fp16").mantissa_bits == 10 and get_format("bf16").mantissa_bits == 7


@pytest.mark.parametrize("alias,name", [("half", "fp16"), ("float16", "fp16"), ("FP16", "fp16"),
                                        ("bfloat16", "bf16"), ("float32", "fp32"), ("float", "fp32"),
                                        ("e4m3", "fp8_e4m3"), (torch.bfloat16, "bf16")])
def test_aliases(alias, name):
    assert get_format(alias).name == name


def test_unknown_format_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: fp32, bf16, fp16"):
        get_format("fp12")


def test_round_is_rne_and_overflows():
    fp16 = get_format("fp16")
    x = torch.tensor([65504.0, 65519.0, 65520.0, 1 + 2**-11, 1 + 3 * 2**-11])
    assert fp16.round(x).tolist() == [65504.0, 65504.0, float("inf"), 1.0, 1 + 2**-9]


LAYERS = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.0.bn1", "fc"]


def test_plan_patterns_later_wins_and_default():
    p = Plan.from_patterns({"layer1.*.conv*": "fp16", "layer1.0.conv2": "bf16", "fc": "fp32"},
                           LAYERS, default="bf16")
    assert dict(p) == {"conv1": "bf16", "layer1.0.conv1": "fp16", "layer1.0.conv2": "bf16",
                       "layer1.0.bn1": "bf16", "fc": "fp32"}
    assert p.format_of("not.listed") == "bf16"


def test_plan_pattern_typo_is_an_error():
    with pytest.raises(ValueError, match="matches no layer"):
        Plan.from_patterns({"layr1.*": "fp16"}, LAYERS)


def test_plan_hash_stable_json_roundtrip_and_diff():
    a = Plan({"fc": "fp32", "conv1": "half"}, default="bf16")
    b = Plan({"conv1": "fp16", "fc": "float32"}, default="bfloat16")
    assert a == b and a.hash == b.hash and len(a.hash) == 12
    assert Plan.from_json(a.to_json()) == a
    assert json.loads(a.to_json())["entries"] == {"conv1": "fp16", "fc": "fp32"}
    c = a.with_changes({"fc": "bf16"})
    assert c.hash != a.hash and a["fc"] == "fp32"  # immutable: a is unchanged
    assert a.diff(c) == {"fc": ("fp32", "bf16")}
    with pytest.raises(TypeError):
        a["fc"] = "bf16"  # type: ignore[index]


def test_plan_rejects_unknown_format():
    with pytest.raises(ValueError, match="unknown format"):
        Plan({"fc": "int4"})
    assert set(FORMATS) >= {"fp32", "bf16", "fp16"}
