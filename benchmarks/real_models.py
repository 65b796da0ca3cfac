"""Models nobody here wrote, trained a few steps under every controller and executor:
Hugging Face GPT-2, BERT and Llama (tiny configs, random init, nothing downloaded).

    python -m benchmarks.real_models [--steps 30] [--models gpt2,bert,llama]

Prints one row per model x controller x executor: first -> last loss, skipped steps and
seconds per step (model build included; a shared machine's load shows in it), or the error of
a run that raises. The tests train the same models (``tests/test_real_models.py``).
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

VOCAB, SEQ = 64, 16
LR = 3e-3  # AdamW

__all__ = ["MODELS", "LR", "tiny_model", "batches", "train", "CONTROLLERS"]


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=32, n_layer=2,
                                      n_head=2, bos_token_id=0, eos_token_id=0))


def _bert():
    from transformers import BertConfig, BertForMaskedLM
    return BertForMaskedLM(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=64,
                                      max_position_embeddings=SEQ, pad_token_id=0))


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=2,
                                        num_key_value_heads=1, max_position_embeddings=SEQ,
                                        bos_token_id=0, eos_token_id=0, pad_token_id=0))


MODELS: dict[str, Callable[[], torch.nn.Module]] = {"gpt2": _gpt2, "bert": _bert, "llama": _llama}


def tiny_model(name: str, seed: int = 0) -> torch.nn.Module:
    """A tiny randomly initialized Hugging Face model (``gpt2``, ``bert``, ``llama``), in train mode."""
    from transformers.utils import logging
    logging.set_verbosity_error()  # tiny configs draw config warnings that say nothing here
    torch.manual_seed(seed)
    return MODELS[name]().train()


def batches(steps: int, batch: int = 4, seed: int = 1, period: int = 4) -> list[torch.Tensor]:
    """``steps`` batches of token ids (each its own labels): every row repeats a random pattern
    of ``period`` tokens out of 8, so a few steps of training visibly lower the loss (from about
    ln 64 toward ln 8 and below)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 9, (batch, period), generator=g).repeat(1, SEQ // period)
            for _ in range(steps)]


def train(model: torch.nn.Module, controller, executor: str, data: list[torch.Tensor],
          monitor_every: int = 1, lr: float = LR, **ap_options) -> tuple[list[float], list[bool], object]:
    """Train ``model`` on ``data`` with adaprec; returns (losses, skipped flags, the AdaptivePrecision)."""
    from adaprec import AdaptivePrecision
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    ap = AdaptivePrecision(model, controller=controller, executor=executor,
                           monitor_every=monitor_every, **ap_options)
    losses, skipped = [], []
    for ids in data:
        opt.zero_grad()
        with ap.autocast():
            loss = model(input_ids=ids, labels=ids).loss
        ap.backward(loss)
        record = ap.step(opt)
        losses.append(record.loss)
        skipped.append(record.skipped)
    return losses, skipped, ap


def _controllers() -> dict[str, Callable[[], object]]:
    from adaprec.controllers import Bandit, Static, Threshold
    return {"fp32": lambda: Static("fp32"), "bf16": lambda: Static("bf16"),
            "fp16": lambda: Static("fp16"), "threshold": lambda: Threshold(interval=5, cpu_fp16=True),
            "bandit": lambda: Bandit(interval=5, cpu_fp16=True)}


CONTROLLERS = _controllers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--executors", default="native,emulated,auto")
    parser.add_argument("--controllers", default=",".join(_controllers()))
    args = parser.parse_args()
    from adaprec.app.environment import cpu_flags, cpu_model
    flags = ", ".join(f for f, on in cpu_flags().items() if on)
    print(f"# {cpu_model()} ({flags}); torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.steps} steps, AdamW lr {LR:g}, batch 4x{SEQ}, threshold/bandit interval 5, monitor every 5")
    print("| model | controller | executor | first -> last loss | skipped | s/step |")
    print("|---|---|---|---|---|---|")
    make = _controllers()
    data = batches(args.steps)
    tiny_model(args.models.split(",")[0])  # transformers' import is not the first row's time
    for name in args.models.split(","):
        for ctrl in args.controllers.split(","):
            for executor in args.executors.split(","):
                t0 = time.perf_counter()
                try:
                    losses, skipped, ap = train(tiny_model(name), make[ctrl](), executor, data,
                                                monitor_every=5)
                    ap.remove()
                    cell = f"{losses[0]:.4f} -> {losses[-1]:.4f} | {sum(skipped)}"
                except Exception as exc:  # a row per failure: the table shows what breaks
                    cell = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:80]} | -"
                dt = (time.perf_counter() - t0) / args.steps
                print(f"| {name} | {ctrl} | {executor} | {cell} | {dt:.3f} |", flush=True)


if __name__ == "__main__":
    main()
