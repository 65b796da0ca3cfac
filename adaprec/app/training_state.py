"""What a checkpoint holds, assembled from the live training objects and restored into them;
and the check that a checkpoint belongs to this run's config.

The file format (atomic write, ``weights_only=True`` load, RNG states) is ``checkpoint``'s.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from adaprec.app.build import Training
from adaprec.app.checkpoint import CheckpointError, rng_state, set_rng_state

__all__ = ["Progress", "checkpoint_state", "restore", "check_resumable", "comparable_config"]

# trainer keys that may differ between an interrupted run and its resumption
RESUME_FREE_KEYS = ("trainer.resume", "trainer.overwrite", "trainer.progress",
                    "trainer.checkpoint_every", "trainer.max_consecutive_skips")


@dataclass
class Progress:
    """The loop's running counts and its latest evaluation (checkpointed with the weights)."""
    skipped: int = 0            # optimizer steps skipped on inf/NaN
    plan_changes: int = 0       # per-layer format changes the controller made
    consecutive_skips: int = 0  # skipped steps in a row, ending now
    last_eval: dict[str, float] = field(default_factory=dict)

    def count(self, skipped: bool, plan_changes: int) -> None:
        self.skipped += skipped
        self.consecutive_skips = self.consecutive_skips + 1 if skipped else 0
        self.plan_changes += plan_changes

    def counters(self) -> dict[str, int]:
        return {"skipped": self.skipped, "plan_changes": self.plan_changes,
                "consecutive_skips": self.consecutive_skips}


def comparable_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as flat ``dotted.key -> value``, without the keys a resumption may change."""
    flat = _flatten(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    return {k: v for k, v in flat.items() if k not in RESUME_FREE_KEYS}


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def check_resumable(cfg: DictConfig, state: dict) -> None:
    """Refuse to resume a checkpoint written under a different config (it would silently mix
    two experiments in one run dir); the message names the first differing key."""
    saved, now = state["config"], comparable_config(cfg)
    for key in sorted(set(saved) | set(now)):
        if saved.get(key, "<absent>") != now.get(key, "<absent>"):
            raise CheckpointError(f"checkpoint was written with {key}={saved.get(key, '<absent>')!r} "
                                  f"but this run has {key}={now.get(key, '<absent>')!r}; resume "
                                  "with the original config or start a new run dir")


def checkpoint_state(cfg: DictConfig, step: int, t: Training, progress: Progress,
                     wall_s: float) -> dict[str, Any]:
    """Everything a run at ``step`` (steps done) needs to continue bit for bit."""
    return {"step": step, "model": t.model.state_dict(), "optimizer": t.optimizer.state_dict(),
            "scheduler": t.scheduler.state_dict(), "precision": t.ap.state_dict(),
            "rng": rng_state(), "counters": progress.counters(), "last_eval": dict(progress.last_eval),
            "wall_s": wall_s, "config": comparable_config(cfg),
            "cost_meter": t.meter.state_dict() if t.meter else None}  # its totals; prices are rebuilt


def restore(state: dict[str, Any], t: Training, progress: Progress) -> int:
    """Load ``state`` into the freshly built objects and ``progress``; returns the steps done.
    (A sharded checkpoint's model and optimizer were loaded by ``sharded_checkpoint.load_sharded``.)"""
    if "sharded" not in state:
        t.model.load_state_dict(state["model"])
        t.optimizer.load_state_dict(state["optimizer"])
    if t.meter is not None and state.get("cost_meter") is not None:
        t.meter.load_state_dict(state["cost_meter"])
    t.scheduler.load_state_dict(state["scheduler"])
    t.ap.load_state_dict(state["precision"])
    if t.sharding is not None:  # the restored plan's all-gather dtypes, not the initial plan's
        t.sharding.follow(t.ap.plan)
    c = state["counters"]
    progress.skipped, progress.plan_changes = c["skipped"], c["plan_changes"]
    progress.consecutive_skips = c["consecutive_skips"]
    progress.last_eval = dict(state["last_eval"])
    set_rng_state(state["rng"])  # last: building the objects above may draw random numbers
    return int(state["step"])

