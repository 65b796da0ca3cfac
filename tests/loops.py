"""The one training loop the tests share: AdaptivePrecision around a classifier."""
import torch
import torch.nn.functional as F


def train_steps(model, ap, x, y, steps, opt=None, plans=None):
    """``steps`` optimizer steps on one fixed batch; returns the StepRecords. ``plans``, if a
    list, gets the plan in force after each step."""
    opt = opt or torch.optim.SGD(model.parameters(), lr=0.01)
    records = []
    for _ in range(steps):
        opt.zero_grad()
        with ap.autocast():
            loss = F.cross_entropy(model(x), y)
        ap.backward(loss)
        records.append(ap.step(opt))
        if plans is not None:
            plans.append(ap.plan)
    return records
