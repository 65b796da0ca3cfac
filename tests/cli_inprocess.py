"""Run the CLI entry (``adaprec.run.cli``) in this process: the same argument parsing, Hydra
callbacks and error handling as ``python -m adaprec.run``, without a new interpreter per call."""
import hashlib
import logging
import sys
from pathlib import Path

import pytest

CONF = Path(__file__).resolve().parents[1] / "conf"

TINY = ["model=mlp", "model.hidden=[32]", "dataset.image_size=8", "trainer.batch_size=16",
        "trainer.max_steps=2", "trainer.eval_batches=1", "trainer.progress=false",
        "monitor.every=0", "cost.enabled=false"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``python -m adaprec.run *argv``."""
    from adaprec.run import cli

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    old_argv = sys.argv
    # ``python -m`` finds conf/ relative to the script; imported, Hydra would look for a module
    sys.argv = ["adaprec.run", f"--config-path={CONF}", *argv]
    capsys.readouterr()
    code = 0
    try:
        cli()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old_argv
        for h in root.handlers:  # Hydra's job logging: close its run.log handler, restore ours
            if h not in handlers:
                h.close()
        root.handlers[:] = handlers
        root.setLevel(level)
    out = capsys.readouterr()
    return code, out.out, out.err


def checksums(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (hidden ones too) -> its sha256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def cli_run(capsys):
    return lambda *argv: run_cli(capsys, *argv)
