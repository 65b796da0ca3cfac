"""The GPU check and the benchmark results table: the dry run of ``benchmarks/gpu_check.sh``
on CPU, and ``benchmarks.report`` / ``harness.record`` on recorded results."""
import json
import subprocess
from pathlib import Path

import pytest
import torch

from benchmarks import harness, report

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_writes_one_results_file(tmp_path):
    out = tmp_path / "gpu_check.md"
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--device", "cpu", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    text = out.read_text()
    assert proc.returncode == 0, proc.stderr + text[-3000:]
    assert "FAILED" not in text
    assert "passed" in text and " failed" not in text  # the gpu-marked tests ran on CPU
    for bench in ("monitor_overhead", "controllers_end_to_end", "regions_vs_autocast", "formats_speed"):
        assert f"| {bench} |" in text, bench
    assert "cost model vs measured (h100 profile)" in text and "Spearman" in text
    assert "avx2" in text  # the machine line names the CPU flags


@pytest.mark.slow
def test_gpu_check_refuses_a_missing_gpu_with_one_line():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--device cpu --quick" in proc.stderr


def test_record_ratios_are_per_repetition_and_appended(tmp_path, monkeypatch):
    path = tmp_path / "r.jsonl"
    monkeypatch.setenv(harness.RESULTS_ENV, str(path))
    harness.set_context(workload="gpt", batch=4)
    # a slow first repetition in both: per-rep ratios stay 2.0, ratio of medians would too, but
    # min..max shows the spread of the pairs, not of the medians
    harness.record("b", "a", [0.4, 0.2, 0.2], [0.2, 0.1, 0.1], torch.device("cpu"))
    harness.record("c", "a", [0.1, 0.3], [0.1, 0.1], torch.device("cpu"))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["candidate"] for r in rows] == ["b", "c"]
    assert rows[0]["ratio_median"] == pytest.approx(2.0) and rows[0]["ratio_min"] == pytest.approx(2.0)
    assert rows[1]["ratio_min"] == pytest.approx(1.0) and rows[1]["ratio_max"] == pytest.approx(3.0)
    assert rows[0]["workload"] == "gpt" and rows[0]["batch"] == 4 and rows[0]["median_ms"] == pytest.approx(200)


def test_compare_records_every_candidate(tmp_path, monkeypatch):
    path = tmp_path / "r.jsonl"
    monkeypatch.setenv(harness.RESULTS_ENV, str(path))
    harness.compare({"x": lambda: None, "y": lambda: None}, torch.device("cpu"), reps=3, warmup=0)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert {r["candidate"] for r in rows} == {"x", "y"} and all(r["baseline"] == "x" for r in rows)
    assert all(r["reps"] == 3 for r in rows)


def _results(tmp_path):
    path = tmp_path / "r.jsonl"
    env = report.environment()
    rows = [{"benchmark": "monitor_overhead", "workload": "gpt", "batch": 32, "candidate": "off",
             "baseline": "off", "median_ms": 10.0, "ratio_median": 1.0, "ratio_min": 1.0, "ratio_max": 1.0},
            {"benchmark": "monitor_overhead", "workload": "gpt", "batch": 32, "candidate": "every step",
             "baseline": "off", "median_ms": 12.34, "ratio_median": 1.234, "ratio_min": 1.1, "ratio_max": 1.5,
             "threads": 2}]
    path.write_text("\n".join(json.dumps(o) for o in [env, *rows]) + "\n")
    return path


def test_render_names_the_machine_and_skips_baseline_rows(tmp_path):
    env, rows = report.load(_results(tmp_path))
    table = report.render(env, rows)
    assert "| monitor_overhead | gpt, batch 32 | every step | off | 1.234× | 1.100..1.500 | 12.3 | 2 |" in table
    assert "| off | off |" not in table
    assert "avx2" in table and torch.__version__ in table


def test_readme_block_is_replaced_and_nothing_else(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# t\nbefore\n{report.BEGIN}\nold figure 9.99×\n{report.END}\nafter\n")
    assert report.main([str(_results(tmp_path)), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "9.99" not in text and "1.234×" in text
    assert text.startswith("# t\nbefore\n") and text.endswith(f"{report.END}\nafter\n")


def test_bad_results_files_fail_with_one_line(tmp_path, capsys):
    assert report.main([str(tmp_path / "missing.jsonl")]) == 2
    assert "run_all.sh" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"environment": true}\nnot json\n')
    assert report.main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2" in err and err.count("\n") == 1
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    assert report.main([str(_results(tmp_path)), "--readme", str(readme)]) == 2
    assert readme.read_text() == "no markers\n"  # untouched


def test_readme_performance_block_is_generated_from_the_committed_results():
    """The README states only measured figures: its block is exactly the committed results."""
    results = ROOT / "benchmarks" / "results" / "results.jsonl"
    text = (ROOT / "README.md").read_text()
    assert text.count(report.BEGIN) == text.count(report.END) == 1
    block = text.split(report.BEGIN)[1].split(report.END)[0].strip("\n")
    assert block == report.render(*report.load(results)).strip("\n")
