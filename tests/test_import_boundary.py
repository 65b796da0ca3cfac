"""The floors of the package, enforced: a lower floor never imports an upper one, the library
core never imports hydra, omegaconf or pandas, and ``import adaprec`` stays cheap.

Floors (README "Architecture"): numerics < runtime < controllers, cost < facade
(``adaprec/precision.py``, ``adaprec/__init__.py``) < app, tools, integrations. ``models``,
``data`` and ``tasks`` are leaves: they import nothing else of adaprec (but a data bundle asks
the task registry which tasks exist), and only the top floor uses them.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "adaprec"

FLOORS = {
    "adaprec.numerics": 0,
    "adaprec.runtime": 1,
    "adaprec.controllers": 2, "adaprec.cost": 2,
    "adaprec": 3, "adaprec.precision": 3,                       # the facade
    "adaprec.app": 4, "adaprec.tools": 4, "adaprec.integrations": 4, "adaprec.run": 4,
}
LEAVES = ("adaprec.models", "adaprec.data", "adaprec.tasks")
LEAF_USES = {"adaprec.data": ("adaprec.tasks",)}  # the one leaf-to-leaf edge
TOP = max(FLOORS.values())
CORE_FORBIDDEN = ("hydra", "omegaconf", "pandas")
# not needed by `import adaprec` either: the analysis floor's plotting
IMPORT_FORBIDDEN = CORE_FORBIDDEN + ("matplotlib",)


def _room(module: str) -> str:
    """The floor key or leaf package ``module`` belongs to (longest prefix)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in FLOORS or key in LEAVES:
            return key
    raise KeyError(module)


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in the file of ``module``, function-level ones included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this file's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            out.append((node.lineno, name))
    return out


def _files():
    return sorted(p for p in PACKAGE.rglob("*.py") if "conf" not in p.relative_to(PACKAGE).parts)


def test_every_module_has_a_floor():
    unplaced = []
    for path in _files():
        try:
            _room(_module_name(path))
        except KeyError:
            unplaced.append(str(path.relative_to(ROOT)))
    assert not unplaced, f"modules outside every floor (add them to FLOORS/LEAVES here): {unplaced}"


def test_no_floor_imports_a_higher_floor_and_the_core_imports_no_app_libraries():
    violations = []
    for path in _files():
        here = _room(_module_name(path))
        where = f"{path.relative_to(ROOT)}"
        for line, target in _imports(path, _module_name(path)):
            top = target.split(".")[0]
            if top != "adaprec":
                if here in FLOORS and FLOORS[here] < TOP and top in CORE_FORBIDDEN:
                    violations.append(f"{where}:{line} (core) imports {target}")
                continue
            there = _room(target)
            if here in LEAVES:
                ok = there == here or there in LEAF_USES.get(here, ())
            elif there in LEAVES:
                ok = FLOORS[here] == TOP
            else:
                ok = FLOORS[there] <= FLOORS[here]
            if not ok:
                violations.append(f"{where}:{line} ({here}) imports {target} ({there})")
    assert not violations, "imports against the floors:\n" + "\n".join(violations)


def test_the_checker_sees_a_violation(tmp_path):
    """The walker above finds imports inside functions and resolves relative ones."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    import pandas\n    from ..precision import AdaptivePrecision\n")
    assert _imports(probe, "adaprec.runtime.probe") == [(2, "pandas"), (3, "adaprec.precision")]
    assert _room("adaprec.precision") == "adaprec.precision" and FLOORS[_room("adaprec.runtime.plan")] == 1


def test_import_adaprec_loads_no_app_libraries():
    code = ("import json, sys, adaprec; "
            "print(json.dumps({'file': adaprec.__file__, 'loaded': sorted({m.split('.')[0] for m in sys.modules})}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(result["file"]).resolve().is_relative_to(ROOT)  # this checkout, not an installed copy
    loaded = [m for m in IMPORT_FORBIDDEN if m in result["loaded"]]
    assert not loaded, f"`import adaprec` loads {loaded}"


@pytest.mark.parametrize("name", ["AdaptivePrecision", "Plan", "Format", "FORMATS", "get_format"])
def test_the_facade_exports(name):
    import adaprec
    assert name in adaprec.__all__ and getattr(adaprec, name) is not None
