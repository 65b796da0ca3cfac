"""Best static plans: the search on synthetic quality and cost, and the tool end to end (its runs
load into the analysis as static policies, priced as the trainer prices them)."""
import itertools
import json
import math

import pytest

from adaprec.tools.best_static import find_best_static, plan_controller
from adaprec.tools.best_static_search import (Search, exhaustive, greedy, pareto_front,
                                              plan_space_size, select_plans)
from analysis import load_runs
from analysis.stats import is_static_policy

from .runtrees import TINY_MLP

LAYERS = ["a", "b", "c", "d"]
FORMATS = ["fp32", "bf16", "fp16"]
BITS = {"fp32": 4.0, "bf16": 1.0, "fp16": 1.0}
WEIGHT = {"a": 1.0, "b": 4.0, "c": 4.0, "d": 0.5}  # b and c dominate the cost
DROP = {("a", "fp16"): math.inf,             # a overflows in fp16 (its quality is NaN)
        ("b", "bf16"): 0.01, ("b", "fp16"): 0.0,
        ("c", "bf16"): 0.0, ("c", "fp16"): 0.0,
        ("d", "bf16"): 0.5, ("d", "fp16"): 0.02}  # d needs mantissa


def cost(plan):
    return sum(WEIGHT[layer] * BITS[fmt] for layer, fmt in plan.items()) / (4.0 * sum(WEIGHT.values()))


def evaluate_counting(calls):
    def evaluate(plan):  # lower is better (an RMSE of 1.0 in fp32), additive drops
        calls.append(dict(plan))
        drop = sum(DROP.get((layer, fmt), 0.0) for layer, fmt in plan.items())
        return (math.nan, "diverged") if math.isinf(drop) else (1.0 + drop, "ok")
    return evaluate


def make_search(calls):
    return Search(LAYERS, FORMATS, evaluate_counting(calls), cost, higher_is_better=False,
                  absolute_drop=False)


def brute_front():
    plans = [dict(zip(LAYERS, combo)) for combo in itertools.product(FORMATS, repeat=len(LAYERS))]
    scored = [(cost(p), 1.0 + sum(DROP.get((k, v), 0.0) for k, v in p.items()), p) for p in plans]
    ok = [s for s in scored if math.isfinite(s[1])]
    return sorted({(c, q) for c, q, _ in ok
                   if not any(c2 <= c and q2 <= q and (c2, q2) != (c, q) for c2, q2, _ in ok)})


def test_exhaustive_measures_every_plan_once_and_finds_the_true_front():
    calls = []
    measured = exhaustive(make_search(calls))
    assert len(calls) == len(measured) == plan_space_size(4, 3) == 81
    front = pareto_front(measured, higher_is_better=False)
    assert sorted((c.cost, c.quality) for c in front) == brute_front()
    assert all(c.ok and c.plan["a"] != "fp16" for c in front)  # a diverged plan is never on it
    assert [c.cost for c in front] == sorted(c.cost for c in front)


def test_greedy_measures_few_plans_and_keeps_within_the_tolerance():
    calls = []
    search = make_search(calls)
    measured = greedy(search, tolerance=0.02)
    assert len(calls) < 81 / 3   # reference + 2 uniform + 8 single-layer + a walk of <= 4
    front = pareto_front(measured, higher_is_better=False)
    reference = next(c for c in measured if c.stage == "reference")
    walked = [c for c in measured if c.stage == "greedy"]
    best_walk = min(walked, key=lambda c: c.cost)
    # the walk lowers b and c (the expensive, insensitive layers) and keeps a out of fp16
    assert best_walk.plan["a"] != "fp16" and best_walk.plan["b"] != "fp32" and best_walk.plan["c"] != "fp32"
    assert search.drop(reference, best_walk) <= 0.02 and best_walk.cost < 0.4
    assert best_walk in front


def test_select_plans_takes_the_cheapest_within_tolerance_and_the_best_and_skips_uniform():
    measured = exhaustive(make_search([]))
    front = pareto_front(measured, higher_is_better=False)
    reference = next(c for c in measured if c.stage == "reference")
    chosen = select_plans(front, reference, max_plans=3, tolerance=0.0, higher_is_better=False,
                          absolute_drop=False)
    assert 1 <= len(chosen) <= 3 and all(len(c.formats()) > 1 for c in chosen)
    assert [c.cost for c in chosen] == sorted(c.cost for c in chosen)
    mixed = [c for c in front if len(c.formats()) > 1]
    exact = [c for c in mixed if c.quality == 1.0]
    assert exact and exact[0] in chosen      # the cheapest mixed plan with no drop at all
    assert mixed[-1] in chosen               # and the best mixed plan measured
    assert select_plans(front, reference, 0, 0.0, False, False) == []


def test_plan_controller_runs_the_plan_with_its_most_common_format_as_default():
    node, default = plan_controller({"x": "bf16", "y": "bf16", "z": "fp32"})
    assert default == "bf16" and node["patterns"] == {"z": "fp32"} and node["default"] == "bf16"


def test_the_tool_trains_front_plans_that_the_analysis_loads_as_static(tmp_path):
    out = tmp_path / "best"
    summary = find_best_static([*TINY_MLP, "trainer.max_steps=4", "trainer.progress=false",
                                "cost.profiles=[bitops]"],
                               out, profile="bitops", formats=("fp32", "bf16"), seeds=(0, 1),
                               search_steps=2, max_plans=1, include_uniform=True)
    assert summary["search"] == "exhaustive" and summary["plans_measured"] == 2 ** 3
    saved = json.loads((out / "best_static.json").read_text())
    assert saved["trained"] and saved["front"] == summary["front"]
    runs = load_runs(out)
    assert set(runs["status"]) == {"ok"} and len(runs) == 2 * len(summary["trained"])
    for t in summary["trained"]:
        mine = runs[runs["controller"] == t["label"]]
        assert sorted(mine["seed"]) == [0, 1] and is_static_policy(t["label"])
        # the modeled cost the search used is what the trainer's cost meter reports for the run
        assert mine["rel_cost_bitops"].tolist() == pytest.approx([t["rel_cost"]] * 2, rel=1e-9)
        assert all(plan == t["plan"] for plan in mine["final_plan"])


def test_the_sweep_config_gives_the_tool_its_workloads_formats_and_seeds():
    from adaprec.tools.best_static import _grid
    _, axes, sweep_dir = _grid(["sweep=best_static"])
    assert sweep_dir == "runs/best_static"
    assert axes["controller"][0] == "fp32" and len(axes["controller"]) >= 2  # most precise first
    assert "mixed_needs" in axes["experiment"] and len(axes["seed"]) >= 3
    assert _grid(["experiment=mixed_needs"]) == (["experiment=mixed_needs"], {}, None)


@pytest.mark.slow  # the README's two commands, steps shrunk: ~250 short trainings
def test_the_readme_commands_run(tmp_path):
    """``python -m adaprec.tools.best_static experiment=mixed_needs ...`` and ``sweep=best_static``
    as the README writes them, with steps and seeds shrunk."""
    import subprocess
    import sys
    shrink = ["trainer.max_steps=3", "--search-steps", "1", "--seeds", "0"]
    for argv, out in ((["experiment=mixed_needs", "--profile", "h100"], tmp_path / "one"),
                      (["sweep=best_static"], tmp_path / "sweep")):
        proc = subprocess.run([sys.executable, "-m", "adaprec.tools.best_static", *argv, *shrink,
                               "--out", str(out)], capture_output=True, text=True, timeout=1200,
                              env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "plans measured" in proc.stdout
        summaries = sorted(out.rglob("best_static.json"))
        assert summaries and all(json.loads(p.read_text())["plans_measured"] > 0 for p in summaries)
    assert {p.parent.name for p in (tmp_path / "sweep").rglob("best_static.json")} >= {"mixed_needs", "underflow"}


def test_a_noise_level_gain_does_not_buy_a_place_on_the_front():
    from adaprec.tools.best_static_search import Candidate
    cands = [Candidate({"a": "fp32"}, 1.0, 0.5000, "ok", "reference"),
             Candidate({"a": "bf16"}, 1.3, 0.4999, "ok", "exhaustive"),   # 0.02 % better, 30 % dearer
             Candidate({"a": "fp16"}, 1.6, 0.4000, "ok", "exhaustive")]
    assert [c.cost for c in pareto_front(cands, higher_is_better=False)] == [1.0, 1.3, 1.6]
    assert [c.cost for c in pareto_front(cands, False, min_gain=1e-3)] == [1.0, 1.6]
    acc = [Candidate({"a": "fp32"}, 1.0, 0.950, "ok", "reference"),
           Candidate({"a": "bf16"}, 1.2, 0.9505, "ok", "exhaustive")]
    assert len(pareto_front(acc, True, min_gain=1e-3, absolute_gain=True)) == 1
