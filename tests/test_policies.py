"""Bandit algorithms on synthetic arms (fixed seeds, averaged over runs): regret, change points,
best-arm identification, allowed-arm restriction, state round trips."""
import random

import pytest
import torch

from adaprec.controllers.policies import POLICIES, EXP3, Hedge, make_policy

RUNS = 10


def play(policy, means_at, steps, seed):
    """Play ``steps`` rounds on Gaussian arms (sd 0.1, clipped to [0, 1]); returns per-round regret
    and the arms played."""
    noise, rng = random.Random(seed), torch.Generator().manual_seed(seed)
    regret, arms = [], []
    for t in range(steps):
        means = means_at(t)
        arm = policy.select(None, rng)
        rewards = [min(1.0, max(0.0, m + noise.gauss(0, 0.1))) for m in means]
        if policy.full_information:
            policy.update_full(rewards, arm)
        else:
            policy.update(arm, rewards[arm])
        regret.append(max(means) - means[arm])
        arms.append(arm)
    return regret, arms


def mean_cumulative_regret(name, means_at, steps, **params):
    totals = [0.0] * steps
    for seed in range(RUNS):
        regret, _ = play(make_policy(name, 3, **params), means_at, steps, seed)
        acc = 0.0
        for t, r in enumerate(regret):
            acc += r
            totals[t] += acc / RUNS
    return totals


STATIONARY = lambda t: [0.3, 0.5, 0.7]


@pytest.mark.parametrize("name", ["ucb1", "thompson"])
def test_regret_on_a_stationary_problem_grows_sublinearly(name):
    cum = mean_cumulative_regret(name, STATIONARY, 2000)
    early, late = cum[499], cum[1999] - cum[1499]   # regret of the first vs the last 500 rounds
    assert late < 0.5 * early, (early, late)
    assert cum[1999] < 0.25 * 2000 * 0.2  # under a quarter of always-second-best (0.2 per round)


@pytest.mark.slow
def test_after_a_change_point_windowed_and_discounted_ucb_beat_ucb1():
    # the best arm becomes the worst after 1500 rounds; exploration c=0.15 suits noise sd 0.1
    swap = lambda t: [0.3, 0.5, 0.8] if t < 1500 else [0.8, 0.5, 0.3]
    ucb1 = mean_cumulative_regret("ucb1", swap, 3000, c=0.15)[-1]
    sw = mean_cumulative_regret("sliding_window_ucb", swap, 3000, c=0.15, window=200)[-1]
    disc = mean_cumulative_regret("discounted_ucb", swap, 3000, c=0.15, gamma=0.99)[-1]
    assert sw < 0.6 * ucb1 and disc < 0.6 * ucb1, (ucb1, sw, disc)


@pytest.mark.parametrize("name,params", [("thompson", {}), ("exp3", {"gamma": 0.1}),
                                         ("hedge", {"eta": 0.5}), ("ucb1", {})])
def test_policies_find_the_best_arm(name, params):
    share = 0.0
    for seed in range(RUNS):
        _, arms = play(make_policy(name, 3, **params), STATIONARY, 2000, seed)
        share += sum(a == 2 for a in arms[-400:]) / 400 / RUNS
    assert share > 0.85, share


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_select_respects_the_allowed_arms(name):
    policy, rng = make_policy(name, 3), torch.Generator().manual_seed(0)
    for _ in range(50):
        arm = policy.select([0, 2], rng)
        assert arm in (0, 2)
        policy.update(arm, 1.0 if arm == 2 else 0.0)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_state_round_trip_continues_identically(name):
    a, rng_a = make_policy(name, 3), torch.Generator().manual_seed(3)
    seq = [0.2, 0.9, 0.5] * 20
    for r in seq[:30]:
        a.update(a.select(None, rng_a), r)
    b, rng_b = make_policy(name, 3), torch.Generator()
    b.load_state_dict(a.state_dict())
    rng_b.set_state(rng_a.get_state())
    for r in seq[30:]:
        arm = a.select(None, rng_a)
        assert b.select(None, rng_b) == arm
        a.update(arm, r)
        b.update(arm, r)


def test_exp3_importance_weights_the_played_arm_and_hedge_updates_every_arm():
    exp3 = EXP3(2, gamma=0.2)
    exp3.last_probs = [0.25, 0.75]
    exp3.update(0, 1.0)
    assert exp3.log_w == pytest.approx([0.1 / 0.25, 0.0])
    hedge = Hedge(2, eta=0.5)
    hedge.update_full([1.0, 0.5], played=0)
    assert hedge.log_w == pytest.approx([0.5, 0.25])
    assert hedge.probs()[0] == pytest.approx(1 / (1 + torch.exp(torch.tensor(-0.25)).item()))


def test_unknown_algorithm_is_a_one_line_error():
    with pytest.raises(ValueError, match="controller.algorithm='ucb9' is unknown; allowed: ucb1"):
        make_policy("ucb9", 3)
