"""Shared test helpers: composing the real configs, and run trees written by the real trainer."""
import os
import re

import pytest
from _pytest.mark.expression import Expression
from hydra import compose, initialize_config_dir

from adaprec.app.schema import register_schemas
from adaprec.cost import conf_dir

from tests.runtrees import RunFactory, real_sweep

CONF = conf_dir()  # the configs the code under test reads: this checkout's conf/


def compose_config(*overrides: str, config_name: str = "config"):
    """The real ``conf/<config_name>.yaml`` composed with ``overrides`` against the typed
    schemas (no Hydra runtime needed)."""
    register_schemas()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


@pytest.fixture
def make_cfg():
    """``compose_config`` with the progress bar off."""
    def _make(*overrides: str):
        return compose_config("trainer.progress=false", *overrides)
    return _make


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory):
    """A real CLI sweep: 2 controllers x 2 seeds of a 6-step MLP plus one failed job (see
    ``tests.runtrees.real_sweep``); shared by the analysis tests, never written to."""
    return real_sweep(tmp_path_factory.mktemp("tiny_sweep"))


@pytest.fixture(scope="session")
def make_run(tmp_path_factory):
    """``make_run(run_dir, controller=..., seed=..., quality=...)``: a run directory written by the
    real ``train()``, with the metrics a test chooses (see ``tests.runtrees.RunFactory``)."""
    return RunFactory(tmp_path_factory.mktemp("run_templates"))


def pytest_configure(config):
    # keep the small test tensors from oversubscribing the 2 CI cores
    os.environ.setdefault("OMP_NUM_THREADS", "2")


_WHOLLY_SLOW = re.compile(r"^pytestmark = pytest\.mark\.slow\b", re.M)


def pytest_ignore_collect(collection_path, config):
    """A module marked slow as a whole is not even imported when the marker expression
    deselects slow tests (the default run): importing transformers or Lightning for tests
    that will not run costs seconds of the default suite's budget."""
    if collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    expr = config.getoption("markexpr")
    if not expr or Expression.compile(expr).evaluate(lambda mark: mark == "slow"):
        return None  # slow tests are selected
    if _WHOLLY_SLOW.search(collection_path.read_text(encoding="utf-8")):
        return True
    return None


@pytest.hookimpl(tryfirst=True)  # before the -m selection reads the marks
def pytest_collection_modifyitems(config, items):
    """A test that reads the real CLI sweep (the ``tiny_sweep`` fixture: ~12 s of subprocess
    before the first of them runs) is a slow test."""
    for item in items:
        if "tiny_sweep" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
