"""The run environment in metrics.json and the analysis warning when a sweep mixes them."""
import json
import warnings

import pandas as pd
import pytest

from adaprec.app.environment import CPU_FLAGS, cpu_flags, format_executors, git_state, run_environment
from adaprec.runtime.executors.auto import native_is_fast
from adaprec.numerics.formats import get_format


def test_cpu_flags_read_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nmodel name : Some CPU\nflags : fpu avx2 avx512f avx512_bf16 amx_tile\n")
    flags = cpu_flags(info)
    assert set(flags) == set(CPU_FLAGS)
    assert flags["avx2"] and flags["avx512_bf16"] and flags["amx_tile"] and not flags["avx512_fp16"]
    assert not any(cpu_flags(tmp_path / "missing").values())


def test_format_executors_follow_the_executor():
    assert set(format_executors("native", "cpu").values()) == {"native"}
    emulated = format_executors("emulated", "cpu")
    assert emulated["fp32"] == "native" and emulated["bf16"] == "emulated"
    auto = format_executors("auto", "cpu")
    assert auto["fp8_e4m3"] == "emulated"
    assert auto["bf16"] == ("native" if native_is_fast(get_format("bf16"), "matmul", "cpu") else "emulated")


def test_run_environment_is_json_and_names_the_commit():
    env = json.loads(json.dumps(run_environment("cpu", "auto")))
    assert env["torch"] and env["executor"] == "auto" and set(env["executors"]) >= {"fp32", "bf16"}
    commit, dirty = git_state()
    assert env["adaprec_commit"] == commit and env["adaprec_dirty"] == dirty
    assert commit is None or len(commit) == 12


def _run(tmp_path, name, env):
    d = tmp_path / name
    d.mkdir()
    (d / "metrics.json").write_text(json.dumps({"status": "ok", "seed": 0, "wall_s": 1.0, "cpu_s": 0.9,
                                                "environment": env, "choices": {"controller": "static"}}))


def test_load_runs_warns_when_a_sweep_mixes_environments(tmp_path):
    from analysis.load import MixedEnvironmentWarning, load_runs
    base = run_environment("cpu", "auto")
    _run(tmp_path, "a", base)
    _run(tmp_path, "b", {**base, "adaprec_dirty": not base["adaprec_dirty"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error", MixedEnvironmentWarning)
        runs = load_runs(tmp_path)                    # only the dirty flag differs: no warning
    assert runs["environment.executors.bf16"].nunique() == 1
    # a run from the other kind of machine (this one may have avx512_bf16 or not)
    other = "emulated" if base["executors"]["bf16"] == "native" else "native"
    _run(tmp_path, "c", {**base, "executors": {**base["executors"], "bf16": other},
                         "cpu_flags": {**base["cpu_flags"], "avx512_bf16": other == "native"}})
    with pytest.warns(MixedEnvironmentWarning, match="executors.bf16: (emulated, native|native, emulated)"):
        load_runs(tmp_path)


def test_cost_columns_take_either_measured_time():
    from analysis.stats import cost_columns
    runs = pd.DataFrame({"status": ["ok"], "wall_s": [2.0], "cpu_s": [1.5]})
    assert cost_columns(runs) == (["wall_s"], True)
    assert cost_columns(runs, measured="cpu_s") == (["cpu_s"], True)
    with pytest.raises(ValueError, match="measured"):
        cost_columns(runs, measured="gpu_s")
    runs["rel_cost_h100"], runs["mem_h100_bytes"] = [0.5], [1000]
    assert cost_columns(runs, memory=True) == (["rel_cost_h100", "mem_h100_bytes"], False)
