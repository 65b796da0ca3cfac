"""adaprec installs anywhere: the wheel carries the top-level conf/ as ``adaprec/conf`` and
``python -m adaprec.run`` finds every config group and cost profile from any directory."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest
import torch

from adaprec.cost import conf_dir, profile_names

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def _conf_files(conf: Path) -> list[str]:
    return sorted(p.relative_to(conf).as_posix() for p in conf.rglob("*") if p.is_file())


def test_pyproject_lists_every_package_and_config_group():
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts)
               for top in ("adaprec", "analysis") for p in (ROOT / top).rglob("__init__.py")}
    on_disk |= {"adaprec.conf"} | {".".join(("adaprec.conf", *d.relative_to(CONF).parts))
                                   for d in CONF.rglob("*") if d.is_dir()}
    missing, stale = sorted(on_disk - set(listed)), sorted(set(listed) - on_disk)
    assert not missing and not stale, (f"pyproject.toml [tool.setuptools] packages: add {missing}, "
                                       f"remove {stale}")


def test_a_checkout_reads_its_own_conf():
    assert conf_dir() == CONF
    assert profile_names() == sorted(p.stem for p in (CONF / "cost").glob("*.yaml"))


def _run(cmd: list, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_wheel_runs_from_any_directory(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing but the install
    env["OMP_NUM_THREADS"] = "1"
    src = tmp_path / "src"  # build from a copy: no build/ or egg-info left in the checkout
    for name in ("adaprec", "analysis", "conf"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
          "--no-index", "-w", tmp_path / "dist", src], tmp_path, env)
    (wheel,) = (tmp_path / "dist").glob("adaprec-*.whl")

    # system site-packages: this torch and the other dependencies are reused, nothing is fetched
    venv.create(tmp_path / "venv", system_site_packages=True, with_pip=False)
    py = tmp_path / "venv" / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    _run([py, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", wheel], tmp_path, env)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = ("import json, torch, adaprec; from adaprec.cost import conf_dir, profile_names; "
             "print(json.dumps({'package': adaprec.__file__, 'conf': str(conf_dir()), "
             "'profiles': profile_names(), 'torch': torch.__version__}))")
    found = json.loads(_run([py, "-c", probe], elsewhere, env).stdout)
    assert Path(found["package"]).is_relative_to(tmp_path / "venv"), found  # the wheel, not the checkout
    assert found["torch"] == torch.__version__
    assert _conf_files(Path(found["conf"])) == _conf_files(CONF)  # every group and option shipped
    assert found["profiles"] == profile_names()

    run_dir = elsewhere / "run"
    _run([py, "-m", "adaprec.run", "model=mlp", "trainer.max_steps=2", "trainer.eval_every=2",
          "trainer.progress=false", f"hydra.run.dir={run_dir}"], elsewhere, env)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["steps"] == 2
    assert {f"rel_cost_{p}" for p in ("h100", "a100", "v100", "bitops")} <= set(metrics)

    deploy_help = _run([py, "-m", "adaprec.tools.deploy", "--help"], elsewhere, env).stdout
    assert "run_dir: ???" in deploy_help and "profile: h100" in deploy_help
