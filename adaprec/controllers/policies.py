"""Bandit algorithms over K arms with rewards in [0, 1], independent of any model.

Each policy has ``select(allowed, rng) -> arm`` (``allowed``: arm indices that may be played;
``rng``: a ``torch.Generator`` for the randomized ones), ``update(arm, reward)`` (bandit
feedback) and ``update_full(rewards)`` (every arm's reward, for full-information policies; the
bandit-feedback policies use only the played arm's entry). State is plain lists and numbers.

- ``UCB1`` (Auer, Cesa-Bianchi & Fischer 2002): mean + c·sqrt(2 ln t / n).
- ``DiscountedUCB`` (Garivier & Moulines 2011): counts and sums decay by ``gamma`` each round.
- ``SlidingWindowUCB`` (Garivier & Moulines 2011): statistics of the last ``window`` rounds only.
- ``GaussianThompson``: posterior N(mean, sigma^2 / (n + 1)) per arm, sample, play the best.
- ``EXP3`` (Auer et al. 2002): exponential weights with importance-weighted bandit feedback.
- ``Hedge`` (Freund & Schapire 1997): exponential weights on every arm's reward (full
  information).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["Policy", "UCB1", "DiscountedUCB", "SlidingWindowUCB", "GaussianThompson", "EXP3",
           "Hedge", "POLICIES", "make_policy"]


def _uniform(rng: torch.Generator | None) -> float:
    return float(torch.rand((), generator=rng, dtype=torch.float64))


def _sample(probs: Sequence[float], arms: Sequence[int], rng: torch.Generator | None) -> int:
    u, acc = _uniform(rng), 0.0
    for p, a in zip(probs, arms):
        acc += p
        if u < acc:
            return a
    return arms[-1]


def _argmax(values: dict[int, float]) -> int:
    return max(values, key=lambda a: (values[a], -a))  # ties: the lowest arm index


class Policy:
    """Base of the policies: the select/update interface and state plumbing."""

    full_information = False
    _state_keys: tuple[str, ...] = ()

    def __init__(self, n_arms: int):
        if n_arms < 1:
            raise ValueError(f"a bandit needs at least one arm, got {n_arms}")
        self.n_arms = n_arms

    def _arms(self, allowed: Sequence[int] | None) -> list[int]:
        arms = list(range(self.n_arms)) if allowed is None else sorted(set(allowed))
        if not arms:
            raise ValueError("select() needs at least one allowed arm")
        return arms

    def select(self, allowed: Sequence[int] | None = None, rng: torch.Generator | None = None) -> int:
        raise NotImplementedError

    def update(self, arm: int, reward: float) -> None:
        raise NotImplementedError

    def update_full(self, rewards: Sequence[float], played: int) -> None:
        self.update(played, rewards[played])

    def state_dict(self) -> dict:
        return {k: _copy(getattr(self, k)) for k in self._state_keys}

    def load_state_dict(self, state: dict) -> None:
        for k in self._state_keys:
            setattr(self, k, _copy(state[k]))


def _copy(v):
    if isinstance(v, list):
        return [_copy(x) for x in v]
    return v


class UCB1(Policy):
    """Upper confidence bound; every allowed arm is played once before the index applies."""

    _state_keys = ("counts", "sums", "t")

    def __init__(self, n_arms: int, c: float = 1.0):
        super().__init__(n_arms)
        self.c = c
        self.counts = [0.0] * n_arms
        self.sums = [0.0] * n_arms
        self.t = 0.0

    def _stats(self) -> tuple[list[float], list[float], float]:
        return self.counts, self.sums, self.t

    def select(self, allowed=None, rng=None) -> int:
        arms = self._arms(allowed)
        counts, sums, t = self._stats()
        for a in arms:
            if counts[a] <= 1e-12:
                return a
        return _argmax({a: sums[a] / counts[a] + self.c * math.sqrt(2 * math.log(max(t, 1.0)) / counts[a])
                        for a in arms})

    def update(self, arm: int, reward: float) -> None:
        self.counts[arm] += 1
        self.sums[arm] += reward
        self.t += 1

    def means(self) -> list[float]:
        counts, sums, _ = self._stats()
        return [s / n if n > 0 else 0.0 for s, n in zip(sums, counts)]


class DiscountedUCB(UCB1):
    """UCB with statistics discounted by ``gamma`` per round (forgets a changed world)."""

    def __init__(self, n_arms: int, c: float = 1.0, gamma: float = 0.95):
        super().__init__(n_arms, c)
        if not 0 < gamma <= 1:
            raise ValueError(f"controller.gamma={gamma} is out of range; allowed: (0, 1]")
        self.gamma = gamma

    def update(self, arm: int, reward: float) -> None:
        self.counts = [n * self.gamma for n in self.counts]
        self.sums = [s * self.gamma for s in self.sums]
        self.t = self.t * self.gamma
        super().update(arm, reward)


class SlidingWindowUCB(UCB1):
    """UCB over the last ``window`` rounds (kept as the list of (arm, reward) played)."""

    _state_keys = ("history",)

    def __init__(self, n_arms: int, c: float = 1.0, window: int = 50):
        super().__init__(n_arms, c)
        if window < 1:
            raise ValueError(f"controller.window={window} is out of range; allowed: >= 1")
        self.window = window
        self.history: list[list[float]] = []

    def _stats(self):
        counts, sums = [0.0] * self.n_arms, [0.0] * self.n_arms
        for arm, reward in self.history:
            counts[int(arm)] += 1
            sums[int(arm)] += reward
        return counts, sums, float(len(self.history))

    def update(self, arm: int, reward: float) -> None:
        self.history.append([arm, float(reward)])
        del self.history[:-self.window]


class GaussianThompson(Policy):
    """Thompson sampling with a Gaussian posterior per arm (prior mean ``prior``, one pseudo-
    observation; known noise ``sigma``): sample every allowed arm's mean, play the largest."""

    _state_keys = ("counts", "sums")

    def __init__(self, n_arms: int, sigma: float = 0.25, prior: float = 0.5):
        super().__init__(n_arms)
        self.sigma, self.prior = sigma, prior
        self.counts = [0.0] * n_arms
        self.sums = [0.0] * n_arms

    def select(self, allowed=None, rng=None) -> int:
        arms = self._arms(allowed)
        z = torch.randn(len(arms), generator=rng, dtype=torch.float64).tolist()
        draws = {a: (self.prior + self.sums[a]) / (self.counts[a] + 1)
                 + self.sigma / math.sqrt(self.counts[a] + 1) * zi for a, zi in zip(arms, z)}
        return _argmax(draws)

    def update(self, arm: int, reward: float) -> None:
        self.counts[arm] += 1
        self.sums[arm] += reward

    def means(self) -> list[float]:
        return [(self.prior + s) / (n + 1) for s, n in zip(self.sums, self.counts)]


class _ExpWeights(Policy):
    """Exponential weights kept as log-weights (no overflow), sampled over the allowed arms."""

    _state_keys = ("log_w", "last_probs")

    def __init__(self, n_arms: int, gamma: float = 0.0):
        super().__init__(n_arms)
        if not 0 <= gamma <= 1:
            raise ValueError(f"controller.gamma={gamma} is out of range; allowed: [0, 1]")
        self.gamma = gamma
        self.log_w = [0.0] * n_arms
        self.last_probs = [1.0 / n_arms] * n_arms

    def probs(self, allowed=None) -> list[float]:
        arms = self._arms(allowed)
        top = max(self.log_w[a] for a in arms)
        w = {a: math.exp(self.log_w[a] - top) for a in arms}
        total = sum(w.values())
        out = [0.0] * self.n_arms
        for a in arms:
            out[a] = (1 - self.gamma) * w[a] / total + self.gamma / len(arms)
        return out

    def select(self, allowed=None, rng=None) -> int:
        arms = self._arms(allowed)
        self.last_probs = self.probs(arms)
        return _sample([self.last_probs[a] for a in arms], arms, rng)

    def means(self) -> list[float]:
        return list(self.log_w)


class EXP3(_ExpWeights):
    """EXP3: reward r of the played arm enters as the unbiased estimate r / p(arm)."""

    def __init__(self, n_arms: int, gamma: float = 0.1, eta: float | None = None):
        super().__init__(n_arms, gamma)
        self.eta = eta if eta is not None else gamma / n_arms

    def update(self, arm: int, reward: float) -> None:
        p = max(self.last_probs[arm], 1e-12)
        self.log_w[arm] += self.eta * reward / p


class Hedge(_ExpWeights):
    """Hedge: every arm's reward is observed each round, so no importance weighting is needed."""

    full_information = True

    def __init__(self, n_arms: int, eta: float = 1.0):
        super().__init__(n_arms, gamma=0.0)
        self.eta = eta

    def update(self, arm: int, reward: float) -> None:
        self.log_w[arm] += self.eta * reward

    def update_full(self, rewards: Sequence[float], played: int) -> None:
        for a, r in enumerate(rewards):
            self.log_w[a] += self.eta * r


POLICIES = {"ucb1": UCB1, "discounted_ucb": DiscountedUCB, "sliding_window_ucb": SlidingWindowUCB,
            "thompson": GaussianThompson, "exp3": EXP3, "hedge": Hedge}


def make_policy(name: str, n_arms: int, **params) -> Policy:
    """Build a policy by its config name; ``params`` holds only the knobs that policy takes."""
    if name not in POLICIES:
        raise ValueError(f"controller.algorithm={name!r} is unknown; allowed: {', '.join(POLICIES)}")
    return POLICIES[name](n_arms, **params)
