"""Every command in README.md and experiments/README.md runs (steps shrunk), so no documented
command can fail unnoticed.

Commands are collected from fenced ``bash`` blocks (``&&`` chains split, ``\\`` continuations
joined) and from inline code spans that start with ``python -m``/``python experiments``/``bash``;
fenced ``python`` blocks run as scripts after a small prelude that defines the names a snippet
assumes (``model`` with layers ``fc`` and ``head``, ``loader``, ``loss_fn``, ``optimizer``/``opt``,
``x``, ``y``, ``plan``). All run in
one temporary working directory, in document order, so later commands find the run and sweep
directories earlier ones wrote (placeholders such as ``outputs/<date>/<time>`` and
``runs/<sweep>`` are replaced by them). Training commands get ``trainer.max_steps=2``; sweeps
are cut to one seed and, for the headline, one workload. A command that cannot run on this
machine is listed in :data:`NOT_RUN` with the reason — a new command is run or listed, never
silently skipped.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "experiments" / "README.md"]

# command prefix -> why it does not run here (checked against every collected command)
NOT_RUN = {
    "pip install": "installs are what .ci/run itself does on a clean clone",
    "python -m pytest": "the test suite itself (CI runs it)",
    "hydra/launcher=submitit_slurm": "needs a SLURM cluster",
    "bash benchmarks/run_all.sh": "benchmarks time the machine for minutes; run by hand",
    "bash benchmarks/gpu_check.sh": "needs a GPU; tests/test_gpu_check.py runs its CPU dry run",
    "torchrun": "multi-process launch: tests/test_readme_distributed.py runs the README's torchrun commands as written",
    "python -m benchmarks.": "benchmarks time the machine for minutes, printing ratios; run by hand",
    "python -m adaprec.tools.calibrate": "times this machine for minutes; tests/test_calibrate.py runs it small",
}
# command fragment -> module it needs (skipped with that reason when absent)
NEEDS = {"hydra/launcher=ray": "ray", "hydra/launcher=submitit_local": "hydra_plugins.hydra_submitit_launcher",
         "sweep=tune_": "hydra_plugins.hydra_optuna_sweeper", "hydra/launcher=joblib": "hydra_plugins.hydra_joblib_launcher"}
SHRINK = ["trainer.max_steps=2", "trainer.eval_every=0", "trainer.progress=false"]
SWEEP_CUTS = {"sweep=headline": ["hydra.sweeper.params.seed=0", "hydra.sweeper.params.experiment=mixed_needs"],
              "sweep=smoke": ["hydra.sweeper.params.experiment=mixed_needs"],  # the full grid: test_experiments
              "sweep=mixed_needs": ["hydra.sweeper.params.seed=0"],
              "sweep=underflow": ["hydra.sweeper.params.seed=0"],
              "sweep=time_varying": ["hydra.sweeper.params.seed=0"],
              "sweep=best_static": ["hydra.sweeper.params.seed=0", "hydra.sweeper.params.experiment=mixed_needs"],
              "sweep=tune_": ["hydra.sweeper.n_trials=2"],
              "sweep=ablation_": ["hydra.sweeper.params.seed=0"]}
# the best-static search trains every plan it measures: one step each, one seed, one evaluation
# batch (the GPT study's search measures ~60 plans: their evaluations are most of its time)
BEST_STATIC_SHRINK = ["trainer.max_steps=2", "trainer.eval_batches=1", "--search-steps", "1", "--seeds", "0"]
PRELUDE = """
import torch, torch.nn.functional as F
from torch import nn
from adaprec import Plan
torch.manual_seed(0)
from collections import OrderedDict
model = nn.Sequential(OrderedDict(fc=nn.Linear(8, 16), act=nn.ReLU(), head=nn.Linear(16, 4)))
x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
loader = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)]
loss_fn = F.cross_entropy
optimizer = opt = torch.optim.SGD(model.parameters(), lr=0.1)
plan = Plan({"fc": "bf16", "head": "fp32"})
"""


def _blocks(text: str):
    """(first body line number, language, body) of every fenced block, fences paired in order."""
    lines, i = text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        j = next((k for k in range(i + 1, len(lines)) if lines[k].startswith("```")), len(lines))
        yield i + 2, m.group(1), "\n".join(lines[i + 1:j]) + "\n"
        i = j + 1


def _fenced(text: str, *langs: str):
    for line, lang, body in _blocks(text):
        if lang in langs:
            yield line, body


_PREFIXES = ("python ", "bash ", "torchrun ", "pip ")


def collect_commands(path: Path) -> list[tuple[int, str]]:
    text = path.read_text()
    out = []
    for line0, lang, body in _blocks(text):
        if lang not in ("bash", "sh", ""):
            continue
        body = re.sub(r"\\\n\s*", " ", body)
        for i, line in enumerate(body.splitlines()):
            line = re.sub(r"\s+#.*$", "", line).strip()
            if lang == "" and not line.startswith(_PREFIXES):  # unlabelled: diagrams, trees
                continue
            if line and not line.startswith("#"):
                out += [(line0 + i, part.strip()) for part in line.split("&&")]
    inside = set()
    for line0, _, body in _blocks(text):
        inside.update(range(line0 - 1, line0 + body.count("\n") + 1))
    for m in re.finditer(r"`((?:python -m|python experiments|bash |torchrun)[^`]*)`", text):
        line = text[:m.start()].count("\n") + 1
        if line not in inside:
            out.append((line, m.group(1).strip()))
    return sorted(out, key=lambda lc: lc[0])  # document order: later commands use earlier outputs


def collect_python(path: Path) -> list[tuple[int, str]]:
    return list(_fenced(path.read_text(), "python"))


def _why_not(cmd: str) -> str | None:
    for prefix, why in NOT_RUN.items():
        if cmd.startswith(prefix) or prefix in cmd:
            return why
    for frag, module in NEEDS.items():
        if frag in cmd and importlib.util.find_spec(module.split(".")[0]) is None:
            return f"needs the optional package {module}"
        if frag in cmd and "." in module and importlib.util.find_spec(module) is None:
            return f"needs the optional package {module}"
    return None


class _Session:
    """Runs documented commands in one working directory, remembering what they wrote."""

    def __init__(self, cwd: Path):
        self.cwd, self.last_run, self.last_sweep, self.n = cwd, None, None, 0
        self.sweeps: dict[str, str] = {}  # sweep name in the docs -> the dir this session used
        self.done: set[str] = set()
        self.env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{cwd}", "OMP_NUM_THREADS": "1",
                    "MPLBACKEND": "Agg", "HYDRA_FULL_ERROR": "0"}

    def _resolve(self, cmd: str) -> str:
        for name, used in self.sweeps.items():  # runs/<name>[/...] -> where that sweep really went
            cmd = re.sub(rf"(?<![\w/])runs/{re.escape(name)}(?=/|\s|$)", used, cmd)
        if self.last_run is not None:
            cmd = re.sub(r"outputs/<date>/<time>|outputs/\.\.\.", str(self.last_run), cmd)
        if self.last_sweep is not None:
            cmd = cmd.replace("runs/<sweep>", str(self.last_sweep)).replace("<sweep>", self.last_sweep.name)

        def job(m):  # runs/<sweep>/<n>: a job the shrunk sweep did not make -> its first job
            d = self.cwd / m.group(1)
            return m.group(0) if (self.cwd / m.group(0)).exists() or not d.is_dir() else \
                str(sorted((p for p in d.iterdir() if (p / "metrics.json").exists()),
                           key=lambda p: p.name)[0].relative_to(self.cwd))
        cmd = re.sub(r"(runs/[\w.-]+)/(\d+)", job, cmd)
        return cmd.replace("experiments/", str(ROOT / "experiments") + "/") if "python experiments/" in cmd else cmd

    def command(self, cmd: str) -> subprocess.CompletedProcess:
        args = shlex.split(self._resolve(cmd))
        if args[:3] == ["python", "-m", "adaprec.run"] and not {"--help", "--cfg", "--info", "-c"} & set(args):
            keys = {a.split("=", 1)[0].lstrip("+~") for a in args if "=" in a}
            args += [s for s in SHRINK if s.split("=", 1)[0] not in keys]
            multirun = "-m" in args[3:] or "--multirun" in args
            for frag, cuts in SWEEP_CUTS.items():
                if any(a.startswith(frag) for a in args):
                    args += cuts
            self.n += 1
            if multirun:
                sweep_dir = next((a.split("=", 1)[1] for a in args if a.startswith("hydra.sweep.dir=")), None)
                if sweep_dir is None:  # a fresh dir per command: a rerun into a finished sweep is refused
                    name = next((a.split("=", 1)[1] for a in args if a.startswith("sweep=")), None)
                    sweep_dir = f"runs/{name}_doc{self.n}" if name else f"multirun/doc{self.n}"
                    args.append(f"hydra.sweep.dir={sweep_dir}")
                    if name:
                        self.sweeps[name] = sweep_dir
                self.last_sweep = self.cwd / sweep_dir
            else:
                given = next((a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")), None)
                self.last_run = self.cwd / (given or f"outputs/doc{self.n}")
                if given is None:
                    args.append(f"hydra.run.dir={self.last_run}")
        if args[:3] == ["python", "-m", "adaprec.tools.best_static"]:
            args += BEST_STATIC_SHRINK
        if args[0] == "python":
            args[0] = sys.executable
        return subprocess.run(args, cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=900)

    def script(self, code: str) -> subprocess.CompletedProcess:
        code = self._resolve(code)
        return subprocess.run([sys.executable, "-c", PRELUDE + code], cwd=self.cwd, env=self.env,
                              capture_output=True, text=True, timeout=300)


def test_every_documented_command_is_collected_and_run_or_listed():
    cmds = [c for doc in DOCS for _, c in collect_commands(doc)]
    assert any(c.startswith("python -m adaprec.run") for c in cmds)
    runnable = [c for c in cmds if _why_not(c) is None]
    assert len(runnable) >= 10
    for c in cmds:  # every command is one of ours: a module/script of this repo, or listed
        assert _why_not(c) or c.startswith(("python -m adaprec", "python -m analysis", "python experiments/",
                                            "bash benchmarks/", "tensorboard ")), c


# both documents run: sweeps are cut (SWEEP_CUTS) so that submitit_local, which starts every job
# at once, starts a handful
RUN_DOCS = DOCS


@pytest.mark.slow
@pytest.mark.parametrize("doc", RUN_DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_documented_commands_run(doc, tmp_path):
    session = _Session(tmp_path)
    # the README's plugin example names `mypkg.MyController`: the README's own class is that module
    for _, code in collect_python(doc):
        if "class MyController" in code:
            (tmp_path / "mypkg.py").write_text(code)
    ran, failures = 0, []
    for line, cmd in collect_commands(doc):
        if _why_not(cmd) or cmd in session.done:  # the same command again: it already ran
            continue
        session.done.add(cmd)
        proc = session.command(cmd)
        ran += 1
        if proc.returncode != 0:
            failures.append(f"{doc.name}:{line}: {cmd}\n{(proc.stderr or proc.stdout)[-800:]}")
    for line, code in collect_python(doc):
        proc = session.script(code)
        ran += 1
        if proc.returncode != 0:
            failures.append(f"{doc.name}:{line}: python block\n{proc.stderr[-800:]}")
    assert ran and not failures, "\n\n".join(failures)
