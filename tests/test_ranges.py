"""Range rules (adaprec.runtime.ranges): the one implementation behind a Python call's errors
and the CLI's compose-time errors (tests/test_config_validation.py runs the CLI side)."""
import inspect

import pytest

from adaprec.numerics.formats import FORMATS
from adaprec.runtime.ranges import FORMAT, ConfigError, check_args, ranges, ranges_of, rule


@pytest.mark.parametrize("r,allowed", [
    (rule(ge=0, le=1), "[0, 1]"), (rule(gt=0, le=1), "(0, 1]"), (rule(ge=1), ">= 1"),
    (rule(gt=0, why="relative to all-fp32"), "> 0 (relative to all-fp32)"), (rule(lt=2), "< 2"),
    (rule(choices=("bf16", "fp16")), "one of bf16, fp16"),
    (rule(each=True, nonempty=True, **FORMAT), f"each value a format name: {', '.join(FORMATS)} (at least one)"),
])
def test_a_rule_says_what_is_allowed(r, allowed):
    assert r.allowed == allowed


def test_a_rule_passes_inside_and_none_and_fails_outside_with_one_line():
    r = rule(gt=0, le=1)
    r.check("x", 1.0)
    r.check("x", None)  # an optional argument left unset
    for bad in (0, 1.5, "often"):
        with pytest.raises(ConfigError) as e:
            r.check("controller.x", bad)
        assert str(e.value) == f"controller.x={bad!r} is out of range; allowed: (0, 1]"


def test_each_checks_every_list_or_dict_value_and_rejects_a_bare_string():
    r = rule(each=True, nonempty=True, **FORMAT)
    r.check("f", ["bf16", "fp32"])
    r.check("f", {"fc": "fp16"})
    for bad in (["bf16", "fp12"], [], "bf16"):
        with pytest.raises(ConfigError):
            r.check("f", bad)


def test_a_closed_set_of_names_is_unknown_outside():
    with pytest.raises(ConfigError, match=r"^a='ucb9' is unknown; allowed: ucb1, exp3$"):
        rule(names=("ucb1", "exp3")).check("a", "ucb9")


@ranges("controller", interval=rule(ge=1), rate=rule(ge=0, le=1))
class _Knobs:
    def __init__(self, interval: int = 10, rate: float = 0.5, name: str = "x"):
        self.interval, self.rate = interval, rate


def test_ranges_checks_every_construction_and_keeps_the_signature():
    assert _Knobs(3).interval == 3
    with pytest.raises(ConfigError, match=r"^controller.interval=0 is out of range; allowed: >= 1$"):
        _Knobs(0)
    with pytest.raises(ConfigError, match=r"controller.rate=2 is out of range"):
        _Knobs(rate=2)
    assert list(inspect.signature(_Knobs).parameters) == ["interval", "rate", "name"]
    assert set(ranges_of(_Knobs)) == {"interval", "rate"} and not ranges_of(object)
    check_args(_Knobs, {"interval": 5})  # what the config check does with composed values
    with pytest.raises(ConfigError, match=r"^trainer.interval=0 "):
        check_args(_Knobs, {"interval": 0}, "trainer.")


def test_a_rule_for_an_unknown_argument_is_refused_at_class_definition():
    with pytest.raises(TypeError, match=r"unknown arguments \['intervall'\]"):
        ranges("controller", intervall=rule(ge=1))(_Knobs)
