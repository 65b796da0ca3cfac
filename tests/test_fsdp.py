"""FSDP2 (``fully_shard``) on CPU with gloo: 2 processes against one process with the same global
batch.

Tolerances: in fp32 the ranks' gradients are summed by a reduce-scatter instead of one batch
mean (a few ulps per step: losses rtol 1e-5, weights 1e-6). With bf16 plans a layer's emulated
bf16 rounding acts on each rank's half-batch gradient before the ranks' halves are averaged,
and with ``param_dtype="plan"`` the weight gradient is computed in bf16 itself; losses then
agree to rtol 1e-3 over these steps (observed <= 3e-5 on the CI machine)."""
import dataclasses
import math

import pytest
import torch
import torch.distributed as dist

from adaprec.runtime.fsdp import _unit_dtype, shard_model
from adaprec.runtime.layers import discover_layers
from adaprec.runtime.plan import Plan
from tests.distributed_loops import make_model, run_two_ranks, train_loop

WORLD = 2
_BYTES = {"torch.float32": 4, "torch.bfloat16": 2, "torch.float16": 2}


def _gathered_bytes_per_step(dtypes: dict[str, str]) -> int:
    """What one step all-gathers: every unit's padded unsharded parameters (FSDP2 pads dim 0 to
    a multiple of the ranks), once in forward and once in backward (resharded after forward)."""
    model = make_model()
    modules = dict(model.named_modules())
    total = 0
    for unit, dtype in dtypes.items():
        for p in (modules[unit].parameters(recurse=False) if unit else ()):
            rows = math.ceil(p.shape[0] / WORLD) * WORLD
            total += rows * (p.numel() // p.shape[0]) * _BYTES[dtype]
    return 2 * total


def _assert_stats_close(a, b, rtol, where=""):
    """Every number of two statistics records close, recursing into the per-format records."""
    if dataclasses.is_dataclass(a):
        for field in dataclasses.fields(a):
            _assert_stats_close(getattr(a, field.name), getattr(b, field.name), rtol, f"{where}.{field.name}")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_stats_close(a[k], b[k], rtol, f"{where}[{k}]")
    elif a is None or b is None:
        assert a is None and b is None, where
    else:
        assert math.isclose(a, b, rel_tol=rtol, abs_tol=1e-12), (where, a, b)


@pytest.mark.slow
def test_fp32_two_ranks_match_one_process_and_shard_statistics_are_whole_tensor(tmp_path):
    r0, r1 = run_two_ranks(tmp_path, kind="fp32")
    single = train_loop(0, 1, kind="fp32", fsdp=False)
    assert r0["hashes"] == r1["hashes"] == single["hashes"]
    assert r0["losses"] == r1["losses"]  # the logged loss is the all-reduced mean
    torch.testing.assert_close(torch.tensor(r0["losses"]), torch.tensor(single["losses"]),
                               rtol=1e-5, atol=0)
    for a, b in zip(r0["params"], single["params"]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # weights measured on shards equal those of the whole tensors (layer "2" has 33 rows: an
    # uneven, padded shard); the weight gradients themselves differ by ulps (summed per rank,
    # then across ranks), which moves an fp16 rounding error by up to ~1e-5 relative
    assert set(r0["stats0"]) == set(single["stats0"]) == {"0", "2", "4"}
    for layer, (weight, wgrad) in r0["stats0"].items():
        ref_weight, ref_wgrad = single["stats0"][layer]
        assert weight.numel == ref_weight.numel == sum(p.numel() for p in
                                                       dict(make_model().named_modules())[layer].parameters())
        _assert_stats_close(weight, ref_weight, rtol=1e-6)
        _assert_stats_close(wgrad, ref_wgrad, rtol=1e-4)
        assert r1["stats0"][layer] == (weight, wgrad)  # both ranks hold the whole-tensor view
    assert r0["bytes"] == [_gathered_bytes_per_step(d) for d in r0["dtypes"]]


@pytest.mark.slow
def test_rank_dependent_bf16_plans_all_gather_in_the_plan_format(tmp_path):
    r0, r1 = run_two_ranks(tmp_path, kind="random", param_dtype="plan")
    single = train_loop(0, 1, kind="random", fsdp=False)
    assert r0["hashes"] == r1["hashes"] == single["hashes"]  # rank 0 decides, every step
    assert len(set(r0["hashes"])) > 1
    assert r0["dtypes"] == r1["dtypes"]
    torch.testing.assert_close(torch.tensor(r0["losses"]), torch.tensor(single["losses"]),
                               rtol=1e-3, atol=0)
    # each unit all-gathers in its layer's plan format: bf16 layers move half the bytes
    assert r0["bytes"] == [_gathered_bytes_per_step(d) for d in r0["dtypes"]]
    assert len(set(r0["bytes"])) > 1


@pytest.mark.slow
def test_threshold_switch_under_fsdp_moves_the_all_gather_to_fp32(tmp_path):
    r0, r1 = run_two_ranks(tmp_path, kind="threshold", param_dtype="plan")
    single = train_loop(0, 1, kind="threshold", fsdp=False)
    assert r0["hashes"] == r1["hashes"] == single["hashes"]
    first, last = r0["dtypes"][0], r0["dtypes"][-1]
    assert set(first[u] for u in ("0", "2", "4")) == {"torch.bfloat16"}
    assert set(last[u] for u in ("0", "2", "4")) == {"torch.float32"}  # the rule moved them
    assert r0["bytes"][0] * 2 == r0["bytes"][-1] == _gathered_bytes_per_step(last)
    torch.testing.assert_close(torch.tensor(r0["losses"]), torch.tensor(single["losses"]),
                               rtol=1e-3, atol=0)


@pytest.fixture
def one_rank_group(tmp_path):
    """A one-process gloo group: ``fully_shard`` works on it, nothing is spawned."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdzv'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_sharding_keeps_layer_names_and_groups_layers_into_units(one_rank_group):
    model = make_model()
    names = discover_layers(model)
    sharding = shard_model(model, units=["2"])
    assert discover_layers(model) == names  # fully_shard changes no module name
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in make_model().named_parameters()]
    assert sharding.units == {"2": ["2"], "": ["0", "4"]}  # layers outside a unit: the root's
    with pytest.raises(ValueError, match="already sharded"):
        shard_model(model)


def test_unknown_units_and_dtypes_fail_with_the_fix(one_rank_group):
    with pytest.raises(ValueError, match="matches no module"):
        shard_model(make_model(), units=["blocks.*"])
    with pytest.raises(ValueError, match="use one of layers, root"):
        shard_model(make_model(), units="blocks")
    with pytest.raises(ValueError, match="use one of fp32, plan"):
        shard_model(make_model(), param_dtype="bf16")


def test_unit_dtype_is_the_shared_16_bit_format_else_fp32():
    plan = Plan({"a": "bf16", "b": "bf16", "c": "fp16", "d": "fp32"})
    assert _unit_dtype("plan", ["a", "b"], plan) == torch.bfloat16
    assert _unit_dtype("plan", ["c"], plan) == torch.float16
    assert _unit_dtype("plan", ["a", "c"], plan) == torch.float32  # mixed: no one 16-bit dtype
    assert _unit_dtype("plan", ["d"], plan) == torch.float32
    assert _unit_dtype("plan", [], plan) == torch.float32          # a unit holding no layer
    assert _unit_dtype("fp32", ["a"], plan) == torch.float32
    assert _unit_dtype("plan", ["e"], Plan({"a": "fp8_e4m3"}, default="fp8_e4m3")) == torch.float32


def test_per_block_units_of_a_transformer_train_in_bf16_with_names_unchanged(one_rank_group):
    from adaprec import AdaptivePrecision
    from adaprec.controllers import Static
    from adaprec.models.gpt import GPT
    torch.manual_seed(0)
    model = GPT(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=32)
    names = discover_layers(model)
    sharding = shard_model(model, ["blocks.*"], param_dtype="plan")  # "*": one name component
    assert list(sharding.units) == ["blocks.0", "blocks.1", ""]
    assert sharding.units["blocks.1"] == [n for n in names if n.startswith("blocks.1.")]
    ap = AdaptivePrecision(model, controller=Static("bf16"), executor="emulated", monitor_every=1)
    sharding.follow(ap.plan)
    assert set(sharding.dtypes.values()) == {torch.bfloat16}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 50, (4, 16))
    losses = []
    for _ in range(2):
        with ap.autocast():
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), x.reshape(-1))
        ap.backward(loss)
        losses.append(ap.step(opt).loss)
    assert logits.dtype == torch.float32  # the root casts the output back for the loss
    assert losses[1] < losses[0] and discover_layers(model) == names
    assert set(ap.last_record.stats) == set(names)
