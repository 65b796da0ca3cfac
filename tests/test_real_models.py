"""Models nobody here wrote: Hugging Face GPT-2, BERT and Llama (tiny configs, random init,
nothing downloaded) under static and adaptive plans, native and emulated.

Static plans are held to the references bit for bit (fp32: plain training; bf16: one
``torch.autocast`` region; fp16: autocast + GradScaler); adaptive controllers must train
through their switches. ``python -m benchmarks.real_models`` prints the same grid as a table.
"""
import pytest
import torch

pytest.importorskip("transformers")

from adaprec.controllers import Bandit, Static, Threshold  # noqa: E402
from benchmarks.real_models import LR, MODELS, batches, tiny_model, train  # noqa: E402

pytestmark = pytest.mark.slow  # transformers models: seconds each on 2 cores

STEPS = 4


def reference(name, dtype=None, steps=STEPS):
    """Plain training, optionally under one torch.autocast region (+ GradScaler for fp16)."""
    model = tiny_model(name)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    scaler = torch.amp.GradScaler("cpu", enabled=dtype == torch.float16)
    losses = []
    for ids in batches(steps):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = model(input_ids=ids, labels=ids).loss
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    return losses, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("fmt,dtype", [("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_static_plans_equal_their_references_bit_for_bit(name, fmt, dtype):
    ref_losses, ref_params = reference(name, dtype)
    model = tiny_model(name)
    losses, _, _ = train(model, Static(fmt), "native", batches(STEPS))
    assert losses == ref_losses
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), ref_params))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_emulated_fp32_is_plain_training_and_bf16_is_close_to_native(name):
    ref_losses, _ = reference(name)
    assert train(tiny_model(name), Static("fp32"), "emulated", batches(STEPS))[0] == ref_losses
    native = train(tiny_model(name), Static("bf16"), "native", batches(STEPS))[0]
    emulated = train(tiny_model(name), Static("bf16"), "emulated", batches(STEPS))[0]
    torch.testing.assert_close(torch.tensor(emulated), torch.tensor(native), rtol=1e-2, atol=0)


@pytest.mark.parametrize("executor", ["native", "emulated"])
@pytest.mark.parametrize("make", [lambda: Threshold(interval=2, cpu_fp16=True, rounding_err_max=1.0, warmup=2),
                                  lambda: Bandit(interval=2, cpu_fp16=True)], ids=["threshold", "bandit"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_adaptive_controllers_train_through_mixed_plans(name, make, executor):
    losses, skipped, ap = train(tiny_model(name), make(), executor, batches(8), monitor_every=1)
    assert all(torch.isfinite(torch.tensor(v)) for v, s in zip(losses, skipped) if not s)
    assert not all(skipped)
    assert set(ap.plan.values()) - {"fp32"}  # 16-bit layers in the mix
    assert ap.last_record.stats is not None
