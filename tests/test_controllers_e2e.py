"""End to end: a model with one layer engineered to overflow fp16, trained under the static fp16
controller and under Threshold; decisions.csv through train(); the plugin path."""
import csv

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaprec import AdaptivePrecision
from adaprec.controllers import Bandit, Static, Threshold

from .loops import train_steps

STEPS = 20


class Overflowing(nn.Module):
    """An MLP whose middle Linear has weights scaled so its outputs (~1e5) exceed fp16's 65504;
    the LayerNorm after it brings them back to unit scale, so only that layer needs the range."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(16, 64)
        self.big = nn.Linear(64, 64)
        with torch.no_grad():
            self.big.weight.mul_(1e6)
            self.big.bias.zero_()
        self.norm = nn.LayerNorm(64)
        self.out = nn.Linear(64, 4)

    def forward(self, x):
        return self.out(F.relu(self.norm(self.big(F.relu(self.inp(x))))))


def dataset():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 16, generator=g)
    y = (x @ torch.randn(16, 4, generator=g)).argmax(1)
    return x, y


def train(controller, cheapness=None):
    model = Overflowing()
    ap = AdaptivePrecision(model, controller=controller, monitor_every=1, cheapness=cheapness)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    x, y = dataset()
    plans = []
    records = train_steps(model, ap, x, y, STEPS, opt, plans)
    model.eval()
    with torch.no_grad(), ap.autocast():
        logits = model(x)
    acc = (logits.argmax(1) == y).float().mean().item()
    return records, plans, acc, ap


def test_the_engineered_layer_really_overflows_fp16():
    model, (x, _) = Overflowing(), dataset()
    h = F.relu(model.inp(x))
    assert model.big(h).abs().max() > torch.finfo(torch.float16).max


@pytest.mark.slow  # several seconds of training on 2 cores
def test_static_fp16_skips_every_step_while_threshold_moves_only_the_culprit():
    fp16_records, _, _, _ = train(Static("fp16"))
    assert all(r.skipped for r in fp16_records)  # the forward overflows: no scale can fix it

    ref_records, _, ref_acc, _ = train(Static("fp32"))
    records, plans, acc, ap = train(Threshold(start="fp16", cpu_fp16=True, interval=1, cooldown=5,
                                              patience=3))
    # the culprit leaves fp16 at the first decision (step 1), to bf16 (range is its only problem)
    assert plans[0]["big"] == "bf16" and all(p["big"] == "bf16" for p in plans)
    assert all(set(p.values()) <= {"fp16", "bf16"} for p in plans)  # everyone stays 16-bit
    assert sum(r.skipped for r in records) <= 1  # only step 0 ran with the overflowing plan
    assert torch.isfinite(torch.tensor(records[-1].loss))
    assert acc >= ref_acc - 0.05, (acc, ref_acc)
    assert abs(records[-1].loss - ref_records[-1].loss) < 0.1


@pytest.mark.slow  # several seconds of training on 2 cores
def test_bandit_leaves_the_arm_that_overflowed_and_never_returns():
    # fp16 listed as the cheapest, so every layer's first pick is fp16
    records, plans, acc, ap = train(Bandit(algorithm="ucb1", cpu_fp16=True, interval=2),
                                    cheapness=("fp16", "bf16", "fp32"))
    big = [p["big"] for p in plans]
    assert ap.controller._arms["big"][0] == "fp16"
    assert records[0].plan["big"] == "fp16" and "fp16" not in big[1:]
    assert sum(r.skipped for r in records) <= 2  # the first window only
    assert torch.isfinite(torch.tensor(records[-1].loss))
