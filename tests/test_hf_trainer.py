"""Hugging Face Trainer with adaprec: a tiny random-init GPT-2 (config built in code, nothing
downloaded) trains exactly as the plain Trainer under an fp32 plan (clipping and accumulation
included), and under fp16 clips and logs the true (unscaled) gradient norm."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from adaprec.controllers import Static  # noqa: E402
from adaprec.integrations.hf import AdaptivePrecisionTrainer  # noqa: E402

pytestmark = pytest.mark.slow  # builds Trainers (seconds each on 2 cores)

STEPS = 4


def tiny_gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    return transformers.GPT2LMHeadModel(config)


def dataset(n=32, length=16):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (n, length), generator=g)
    return [{"input_ids": row, "labels": row} for row in ids]


def args(tmp_path, steps=STEPS, **kw):
    return transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=4,
        gradient_accumulation_steps=2, max_grad_norm=0.5, learning_rate=1e-3, logging_steps=1,
        save_strategy="no", report_to=[], use_cpu=True, seed=0, data_seed=0,
        dataloader_num_workers=0, disable_tqdm=True, **kw)


def grad_norms(trainer):
    return [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]


def test_fp32_plan_under_the_trainer_equals_the_plain_trainer_bit_for_bit(tmp_path):
    plain = transformers.Trainer(model=tiny_gpt2(), args=args(tmp_path / "plain"), train_dataset=dataset())
    plain.train()
    ours = AdaptivePrecisionTrainer(model=tiny_gpt2(), args=args(tmp_path / "ours"), train_dataset=dataset(),
                                    controller=Static("fp32"), monitor_every=2)
    ours.train()
    assert ours.ap.step_count == STEPS
    assert grad_norms(ours) == grad_norms(plain)
    assert max(grad_norms(plain)) > 0.5  # clipping was active
    for (name, p), q in zip(ours.model.named_parameters(), plain.model.parameters()):
        assert torch.equal(p, q), name


def test_fp16_plan_clips_and_logs_unscaled_gradients(tmp_path):
    fp32 = AdaptivePrecisionTrainer(model=tiny_gpt2(), args=args(tmp_path / "a"), train_dataset=dataset(),
                                    controller=Static("fp32"), monitor_every=0)
    fp32.train()
    fp16 = AdaptivePrecisionTrainer(model=tiny_gpt2(), args=args(tmp_path / "b"), train_dataset=dataset(),
                                    controller=Static("fp16"), executor="emulated", monitor_every=0)
    fp16.train()
    logs = [h for h in fp16.state.log_history if "adaprec/loss_scale" in h]
    assert [h["adaprec/loss_scale"] for h in logs] == [2.0**16] * STEPS
    assert all(h["adaprec/share_fp16"] == 1.0 for h in logs)
    # the same norms up to fp16 rounding, not 2^16 times larger
    torch.testing.assert_close(grad_norms(fp16), grad_norms(fp32), rtol=0.05, atol=0)


def test_skipped_step_leaves_weights_and_learning_rate_alone(tmp_path):
    """An initial scale of 2^40 overflows fp16 in the first step: nothing moves, the scale halves."""
    trainer = AdaptivePrecisionTrainer(model=tiny_gpt2(), args=args(tmp_path, steps=1), train_dataset=dataset(), controller=Static("fp16"),
                                       executor="emulated", monitor_every=0,
                                       precision_options={"scaler": {"init_scale": 2.0**40}})
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert trainer.ap.last_record.skipped
    assert trainer.ap.get_scale() == 2.0**39
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert trainer.lr_scheduler.last_epoch == 0  # the schedule did not advance
