import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from adaprec.app.schema import register_schemas

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture
def make_cfg():
    """Compose the real conf/config.yaml with overrides (no Hydra runtime needed)."""
    register_schemas()

    def _make(*overrides: str):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="config", overrides=["trainer.progress=false", *overrides])
    return _make


def pytest_configure(config):
    # keep the small test tensors from oversubscribing the 2 CI cores
    os.environ.setdefault("OMP_NUM_THREADS", "2")
