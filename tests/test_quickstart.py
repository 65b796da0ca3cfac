"""The quick start: ``python -m adaprec.run`` with the defaults adapts (a layer switches, with its
reason) and ends with a summary a newcomer can act on; the summary's parts on their own."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from adaprec.app.closing import closing_summary, fp32_reference

ROOT = Path(__file__).resolve().parents[1]
CFG = {"seed": 0, "trainer": {"max_steps": 60, "progress": False}, "dataset": {"task": "classification"},
       "controller": {"_target_": "adaprec.controllers.bandit.Bandit", "algorithm": "ucb1"}}
FP32 = {"_target_": "adaprec.controllers.static.Static", "format": "fp32"}


def _run_dir(path: Path, cfg: dict, metrics: dict, decisions: str = "step,layer,old,new,reason\n") -> Path:
    path.mkdir(parents=True)
    (path / "config_resolved.yaml").write_text(yaml.safe_dump(cfg))
    (path / "metrics.json").write_text(json.dumps(metrics))
    (path / "decisions.csv").write_text(decisions)
    return path


def _metrics(acc: float) -> dict:
    return {"status": "ok", "steps": 60, "skipped_steps": 0, "wall_s": 3.0, "cpu_s": 2.0,
            "val_accuracy": acc, "plan_changes": 4, "format_shares": {"bf16": 0.75, "fp32": 0.25},
            "flop_share_bf16": 0.9, "flop_share_fp32": 0.1, "rel_cost_h100": 0.61,
            "choices": {"model": "cnn", "dataset": "digits", "controller": "bandit"}}


DECISIONS = ("step,layer,old,new,reason\n0,fc,fp32,bf16,start\n10,fc,bf16,fp16,why one\n"
             "10,conv,fp32,bf16,why two\n20,fc,fp16,bf16,why three\n30,conv,bf16,fp32,why four\n")


def test_the_summary_names_quality_formats_changes_run_dir_and_the_next_command(tmp_path):
    run = _run_dir(tmp_path / "outputs" / "day" / "t1", CFG, _metrics(0.95), DECISIONS)
    text = closing_summary(json.loads((run / "metrics.json").read_text()), run, "classification")
    assert "val_accuracy 0.95" in text and "python -m adaprec.run controller=fp32" in text  # no reference yet
    assert "bf16 75%, fp32 25% of the layers" in text and "bf16 90%, fp32 10% of the FLOPs" in text
    assert "0.61x all-fp32 on the h100 profile" in text
    # the start plan (step 0) is not a change; the first three changes are shown with their reasons
    assert "why one" in text and "why two" in text and "why three" in text and "why four" not in text
    assert "start" not in text.split("plan changes")[1].splitlines()[1]
    assert f"run directory {run}" in text
    assert f"python -m analysis.report --run {run} --out {run / 'report'}" in text


def test_an_fp32_run_of_the_same_config_beside_it_is_the_reference(tmp_path):
    run = _run_dir(tmp_path / "outputs" / "day" / "t2", CFG, _metrics(0.95))
    assert fp32_reference(run, "val_accuracy") is None
    other_seed = {**CFG, "seed": 1, "controller": FP32}
    _run_dir(tmp_path / "outputs" / "day" / "t0", other_seed, _metrics(0.99))
    assert fp32_reference(run, "val_accuracy") is None  # another seed is not this run's reference
    ref = _run_dir(tmp_path / "outputs" / "other_day" / "t9",
                   {**CFG, "controller": FP32, "trainer": {"max_steps": 60, "progress": True}}, _metrics(0.97))
    assert fp32_reference(run, "val_accuracy") == (0.97, ref)  # the progress bar does not matter
    text = closing_summary(_metrics(0.95), run, "classification")
    assert f"fp32 reference 0.97 ({ref})" in text
    assert "this run is the fp32 reference" in closing_summary(_metrics(0.97), ref, "classification")


@pytest.mark.slow  # the quick start's own run: ~35 s of CPU on 2 AVX2 cores
def test_the_quick_start_adapts_and_points_to_its_report(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "adaprec.run", f"hydra.run.dir={run}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for part in ("quality       val_accuracy", "formats", "plan changes", f"run directory {run}",
                 "next          python -m analysis.report --run"):
        assert part in out, out
    with open(run / "decisions.csv") as f:
        changes = [line.split(",", 4) for line in f.read().splitlines()[1:]]
    switched = [c for c in changes if int(c[0]) > 0 and c[2] != c[3]]
    assert switched and all(c[4].strip() for c in switched)  # at least one layer switched, with a reason
    assert f"{switched[0][1]}: {switched[0][2]} -> {switched[0][3]}" in out
    report = out.split("next          ")[1].split()
    proc = subprocess.run([sys.executable, *report[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (run / "report" / "index.html").exists() and (run / "report" / "timeline.png").exists()
