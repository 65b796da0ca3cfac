"""Preemption: SIGTERM or SIGUSR1 (what SLURM sends before it kills a job, with
``--signal=USR1@90``) -> a checkpoint at the next step boundary -> exit "requeue me".

A signal handler only raises a flag; the training loop asks :func:`requested` once per step
and, when set, saves a checkpoint and returns with status ``preempted``. The CLI then hands
over to the launcher: under submitit (hydra-submitit-launcher, ``submitit_local`` or SLURM)
submitit's own checkpoint/requeue handler runs -- it calls the launcher's ``checkpoint()``,
which resubmits the same job, and exits the way submitit's scheduler reads as "requeue";
elsewhere the process exits with :data:`EXIT_REQUEUE` (75, ``EX_TEMPFAIL``: "try again"),
which a job script turns into a requeue. The requeued job reruns the same command into the
same run dir and resumes from that checkpoint, bit-identically on CPU.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

__all__ = ["EXIT_REQUEUE", "SIGNALS", "watch", "requested", "outcome", "requeue"]

EXIT_REQUEUE = 75  # os.EX_TEMPFAIL (not on every platform's os module)
SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGUSR1") if hasattr(signal, n))
log = logging.getLogger("adaprec")

_state: dict[str, Any] = {"signal": None, "previous": {}}


def _on_signal(signum: int, frame: Any) -> None:
    if _state["signal"] is None:
        _state["signal"] = signal.Signals(signum).name
        # a handler should do little; logging here is safe enough in CPython (main thread)
        log.warning("%s received: checkpointing at the next step boundary, then exiting for "
                    "requeue", _state["signal"])


def _submitit_signal() -> int | None:
    """submitit's preemption/timeout signal when this process is a submitit job, else None."""
    if not any(k.startswith("SUBMITIT_") for k in os.environ):
        return None
    try:
        import submitit

        submitit.JobEnvironment()  # raises outside a submitit job
        return int(submitit.JobEnvironment._usr_sig())
    except Exception:
        return None


@contextmanager
def watch() -> Iterator[None]:
    """Within the block, the preemption signals (and submitit's) set the flag that
    :func:`requested` reads; the previous handlers are restored on exit (kept for
    :func:`requeue`, which hands over to submitit's)."""
    import threading

    if threading.current_thread() is not threading.main_thread():  # e.g. a thread launcher
        yield
        return
    signals = set(SIGNALS)
    sub = _submitit_signal()
    if sub is not None:
        signals.add(sub)
    previous = {s: signal.signal(s, _on_signal) for s in signals}
    _state.update(signal=None, previous=previous, submitit=sub)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def requested() -> str | None:
    """The name of the preemption signal received, or None: the loop checks this per step."""
    return _state["signal"]


def outcome(signal_name: str, steps: int, metrics: dict[str, Any]) -> dict[str, Any]:
    """The loop's result when it stopped for preemption after ``steps`` steps."""
    return {**metrics, "status": "preempted", "steps": steps,
            "error": f"preempted by {signal_name} after step {steps}: checkpoint saved; rerun the "
                     "same command to resume"}


def requeue() -> None:
    """Exit so that the launcher requeues this job (call after the checkpoint is written)."""
    sub = _state.get("submitit")
    handler: Callable | None = _state["previous"].get(sub) if sub is not None else None
    _state["signal"] = None
    if callable(handler):
        log.info("preempted: handing over to submitit's checkpoint-and-requeue")
        handler(sub, None)  # submitit resubmits the job and exits itself
    sys.exit(EXIT_REQUEUE)
