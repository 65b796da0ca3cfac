"""Shared test helpers: composing the real configs, and run trees written by the real trainer."""
import os

import pytest
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
