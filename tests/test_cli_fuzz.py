"""Fuzz the CLI with bad overrides generated from the typed schemas: wrong types, values out of
range, unknown keys, unknown group options, bad paths. Each must exit non-zero with one line
on stderr that names the key and the fix, and write nothing (no run dir, no outputs/).

The entry runs in-process (``tests/cli_inprocess.py``) so ~300 cases take seconds, not a
new interpreter each; the full set is slow, a fixed sample of it runs in the default suite."""
import dataclasses
import typing
from enum import Enum
from pathlib import Path

import pytest
import yaml

from hydra.utils import get_object

from adaprec.app.controller_schemas import CONTROLLER_SCHEMAS
from adaprec.app.schema import AdaprecConfig
from adaprec.runtime.ranges import ranges_of

from .cli_inprocess import CONF, TINY, cli_run  # noqa: F401 (fixture)

GROUPS = ("controller", "model", "dataset", "optimizer", "experiment")
# words that say what to do instead: the allowed range/type/keys/options, or the action
FIX_WORDS = ("allowed", "expected", "known keys", "available", "set it", "give a checkpoint",
             "choose another", "point it")
INTS = (-1, 0, -100, 10**9)
FLOATS = (-0.5, 0.0, 1.5, -1e9, 1e9)


def _bad_values(f: dataclasses.Field, kind, rule=None) -> list[tuple[str, str]]:
    """(value text, what is wrong) for one schema field."""
    origin = typing.get_origin(kind)
    if origin is typing.Union:  # Optional[X]
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
        origin = typing.get_origin(kind)
    rule = f.metadata.get("rule") or rule
    out: list[tuple[str, str]] = []
    if kind is bool:
        out.append(("maybe", "wrong type"))
    elif kind is int:
        out += [("abc", "wrong type"), ("1.5", "wrong type")]
        out += [(str(v), "out of range") for v in INTS if rule and not rule.ok(v)][:2]
    elif kind is float:
        out.append(("often", "wrong type"))
        out += [(repr(v), "out of range") for v in FLOATS if rule and not rule.ok(v)][:2]
    elif isinstance(kind, type) and issubclass(kind, Enum):
        out.append(("nope", "unknown option"))
    elif kind is str and rule:
        out += [(v, "out of range") for v in ("fp99", "nope") if not rule.ok(v)][:1]
    elif origin is list:
        out.append(("5", "wrong type"))
        if rule and not rule.ok(["fp99"]):
            out.append(("[bf16,fp99]", "out of range"))
    elif origin is dict:
        out.append(("5", "wrong type"))
    return out


def _schema_cases(schema: type, prefix: str, select: tuple[str, ...]) -> list:
    hints = typing.get_type_hints(schema)
    target = next((f.default for f in dataclasses.fields(schema) if f.name == "_target_"), None)
    rules = ranges_of(get_object(target)) if isinstance(target, str) else {}  # the class's own
    cases = [((*select, f"{prefix}zzz_unknown=1"), f"{prefix}zzz_unknown", "unknown key"),
             ((*select, f"+{prefix}zzz_added=1"), f"{prefix}zzz_added", "unknown key")]
    for f in dataclasses.fields(schema):
        if f.name.startswith("_"):
            continue
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            cases += _schema_cases(kind, f"{prefix}{f.name}.", select)
            continue
        for value, what in _bad_values(f, kind, rules.get(f.name)):
            cases.append(((*select, f"{prefix}{f.name}={value}"), f"{prefix}{f.name}", what))
    return cases


def _controller_schemas() -> dict[str, type]:
    """controller option -> its schema, the one its defaults list names (directly or through
    the option it extends; read from the YAML, not composed: collection stays fast); one option
    per schema: bandit_ucb and bandit_thompson are bandit with other defaults."""
    def schema_of(stem: str) -> type | None:
        for entry in yaml.safe_load((CONF / "controller" / f"{stem}.yaml").read_text()).get("defaults", []):
            if isinstance(entry, str) and entry.startswith("/controller_schema_"):
                return CONTROLLER_SCHEMAS[entry[1:].split("@")[0]]
            if isinstance(entry, str) and entry != "_self_":
                return schema_of(entry)
        return None

    out: dict[str, type] = {}
    for p in sorted((CONF / "controller").glob("*.yaml")):
        schema = schema_of(p.stem)
        if schema is not None and schema not in out.values():
            out[p.stem] = schema
    return out


def bad_overrides() -> list[tuple[tuple[str, ...], str, str]]:
    """(overrides, the key the message must name, the kind of mistake)."""
    cases = _schema_cases(AdaprecConfig, "", ())
    for option, schema in _controller_schemas().items():
        cases += _schema_cases(schema, "controller.", (f"controller={option}",))
    for group in GROUPS:
        cases.append(((f"{group}=nope_{group}",), group, "unknown option"))
    cases += [
        (("trainer.resume=/no/such/checkpoint.pt",), "trainer.resume", "bad path"),
        (("trainer.resume=/tmp",), "trainer.resume", "bad path"),
        (("cost.enabled=true", "cost.profiles=[h100,/no/such/profile.yaml]"), "cost.profiles", "bad path"),
        (("cost.enabled=true", "cost.profiles=[tpu_v9]"), "cost.profiles", "unknown option"),
        (("dataset=cifar10", "dataset.path=/no/such/cifar"), "dataset.path", "bad path"),
        (("dataset=mnist",), "dataset.path", "missing value"),
        (("controller=plugin",), "controller._target_", "missing value"),
        (("hydra.run.dir=/etc/hostname/run",), "hydra.run.dir", "bad path"),
    ]
    return cases


CASES = bad_overrides()
SAMPLE = CASES[::25]  # the default suite's share; the slow test runs every case


def _check(tmp_path, monkeypatch, cli_run, overrides, key, what, base=TINY):
    monkeypatch.chdir(tmp_path)  # a stray outputs/ would land here
    run = tmp_path / "run"
    run_dir = [] if any(o.startswith("hydra.run.dir=") for o in overrides) else [f"hydra.run.dir={run}"]
    code, out, err = cli_run(*base, *overrides, *run_dir)
    lines = err.splitlines()
    assert code != 0, f"{overrides} ({what}) was accepted"
    assert len(lines) == 1 and lines[0].startswith("adaprec: error: "), err
    msg = lines[0]
    assert key in msg, f"{overrides} ({what}): the message does not name {key}: {msg}"
    assert any(w in msg.lower() for w in FIX_WORDS), f"{overrides} ({what}): no fix named: {msg}"
    assert out == "" and list(tmp_path.iterdir()) == [], f"{overrides} wrote {list(tmp_path.iterdir())}"
    return msg


def test_the_generator_covers_every_kind_of_mistake():
    kinds = {what for _, _, what in CASES}
    assert len(CASES) >= 200 and kinds == {"wrong type", "out of range", "unknown key",
                                           "unknown option", "bad path", "missing value"}


@pytest.mark.parametrize("overrides,key,what", SAMPLE, ids=[" ".join(o) for o, _, _ in SAMPLE])
def test_a_bad_override_is_one_line_naming_key_and_fix_and_writes_nothing(
        tmp_path, monkeypatch, cli_run, overrides, key, what):
    _check(tmp_path, monkeypatch, cli_run, overrides, key, what)


@pytest.mark.parametrize("overrides,key", [
    (("dataset.corpus=pep8",), "dataset.corpus"),
    (("dataset.corpus=stdlib", "dataset.stdlib_dir=/no/such/lib"), "dataset.stdlib_dir")])
def test_a_bad_text_corpus_is_refused_before_anything_is_written(
        tmp_path, monkeypatch, cli_run, overrides, key):
    # TINY shapes the digits data set; the text one is sized here
    _check(tmp_path, monkeypatch, cli_run, overrides, key, "bad corpus",
           base=["experiment=language", "trainer.max_steps=2", "trainer.progress=false"])


@pytest.mark.slow
def test_every_generated_bad_override(tmp_path_factory, monkeypatch, cli_run):
    failures = []
    for i, (overrides, key, what) in enumerate(CASES):
        try:
            _check(tmp_path_factory.mktemp(f"case{i}"), monkeypatch, cli_run, overrides, key, what)
        except AssertionError as exc:
            failures.append(str(exc).splitlines()[0])
    assert not failures, f"{len(failures)} of {len(CASES)} cases:\n" + "\n".join(failures)
