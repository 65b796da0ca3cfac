"""Summary tables: numbers per controller, best-in-column per the metric's direction, rendering."""
import pytest

from analysis import aggregate, best_mask, load_runs, summary_table, to_latex, to_markdown, welch_tests


def _summary(tmp_path, make_run, metric="val_accuracy", values=None):
    values = values or {"fp32": [0.90, 0.92], "bf16": [0.91, 0.93], "fp8_e4m3": [0.70, 0.72]}
    costs = {"fp32": {"a100": 1.0, "h100": 1.0}, "bf16": {"a100": 0.5, "h100": 0.6},
             "fp8_e4m3": {"a100": 0.6, "h100": 0.4}}
    for ctrl, qs in values.items():
        for seed, q in enumerate(qs):
            make_run(tmp_path / f"{ctrl}{seed}", controller=ctrl, seed=seed, quality=q, metric=metric,
                      costs=costs[ctrl], skipped_steps=2 if ctrl == "fp8_e4m3" else 0)
    runs = load_runs(tmp_path)
    return summary_table(aggregate(runs), ["rel_cost_a100", "rel_cost_h100"], welch_tests(runs))


def test_summary_numbers_and_best_in_column(tmp_path, make_run):
    s = _summary(tmp_path, make_run)
    assert s.loc["bf16", "quality"] == pytest.approx(0.92)
    assert s.loc["fp8_e4m3", "rel_cost_h100"] == pytest.approx(0.4)
    assert s.loc["bf16", "share_bf16"] == 1.0 and s.loc["fp32", "share_bf16"] == 0.0
    assert s.loc["fp8_e4m3", "skipped_steps"] == 2 and s.loc["fp32", "n_runs"] == 2
    best = best_mask(s)
    assert best["quality"].to_dict() == {"bf16": True, "fp32": False, "fp8_e4m3": False}
    assert best["rel_cost_a100"].to_dict() == {"bf16": True, "fp32": False, "fp8_e4m3": False}
    assert best["rel_cost_h100"].to_dict() == {"bf16": False, "fp32": False, "fp8_e4m3": True}
    # a tie is no best: nothing bold (issue 17: "bold only a unique best")
    assert best["skipped_steps"].to_dict() == {"bf16": False, "fp32": False, "fp8_e4m3": False}
    assert not best["share_bf16"].any() and not best["n"].any()  # unranked columns


def test_lower_is_better_for_perplexity(tmp_path, make_run):
    s = _summary(tmp_path, make_run, metric="val_perplexity",
                 values={"fp32": [30.0, 31.0], "bf16": [30.5, 31.5], "fp8_e4m3": [40.0, 41.0]})
    assert best_mask(s)["quality"].to_dict() == {"bf16": False, "fp32": True, "fp8_e4m3": False}


def test_markdown_marks_best_and_states_the_interval(tmp_path, make_run):
    md = to_markdown(_summary(tmp_path, make_run))
    assert "Student-t confidence interval" in md and "Welch" in md
    rows = {line.split(" | ")[0].strip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert list(rows) == ["controller", "fp32", "bf16", "fp8_e4m3"]  # baseline first
    assert "**0.920 ± " in rows["bf16"] and "**" not in rows["fp32"].split(" | ")[1]
    assert "**0.400**" in rows["fp8_e4m3"]
    assert rows["fp8_e4m3"].count("|") == rows["controller"].count("|")


def test_latex_is_booktabs_and_escaped(tmp_path, make_run):
    tex = to_latex(_summary(tmp_path, make_run), label="tab:x")
    for token in (r"\toprule", r"\midrule", r"\bottomrule", r"\label{tab:x}", r"fp8\_e4m3", r"$\pm$"):
        assert token in tex
    assert tex.count(r"\textbf{") == 4  # quality, its IQM, two costs; the tied skip column none
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0]
    assert "_" not in body.replace(r"\_", "")
