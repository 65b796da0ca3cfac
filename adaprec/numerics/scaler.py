"""Dynamic loss scaling with torch.amp.GradScaler's semantics, switchable at run time.

GradScaler fixes ``enabled`` at construction; adaprec turns scaling on whenever the plan has an
fp16 (or fp8) layer and off otherwise, so this class keeps GradScaler's state machine (init
2^16, x2 after 2000 clean steps, x0.5 and skip on inf/NaN) using the same fused kernels, and
also checks gradients for inf/NaN while inactive (the non-finite guard needs that anyway).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["LossScaler"]


class LossScaler:
    """Dynamic loss scaler. ``active`` decides whether the loss is scaled this step;
    ``enabled=False`` keeps it inactive whatever the plan (to study fp16 without loss scaling:
    gradients below fp16's smallest subnormal then flush to zero)."""

    def __init__(self, init_scale: float = 2.0**16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000,
                 device: str | torch.device = "cpu", enabled: bool = True):
        if not (init_scale > 0 and growth_factor > 1 and 0 < backoff_factor < 1 and growth_interval >= 1):
            raise ValueError("loss scaler needs init_scale > 0, growth_factor > 1, "
                             "0 < backoff_factor < 1 and growth_interval >= 1")
        self.growth_factor = growth_factor
        self.backoff_factor = backoff_factor
        self.growth_interval = growth_interval
        self._scale = torch.full((), float(init_scale), dtype=torch.float32, device=device)
        self._growth_tracker = torch.zeros((), dtype=torch.int32, device=device)
        self.enabled = bool(enabled)
        self._active = False

    @property
    def active(self) -> bool:
        return self._active

    @active.setter
    def active(self, value: bool) -> None:
        self._active = bool(value) and self.enabled

    @property
    def scale(self) -> float:
        """The current scale value (used for the loss only while :attr:`active`)."""
        return float(self._scale)

    @property
    def applied_scale(self) -> float:
        """What the loss is actually multiplied by this step."""
        return self.scale if self.active else 1.0

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self._scale.to(loss.dtype) if self.active else loss

    def unscale_(self, grads: Iterable[torch.Tensor]) -> torch.Tensor:
        """Unscale grads in place (fp32 master grads) and return found_inf as a 0-dim tensor."""
        grads = [g for g in grads if g is not None]
        found_inf = torch.zeros((), dtype=torch.float32, device=self._scale.device)
        if not grads:
            return found_inf
        inv = self._scale.double().reciprocal().float() if self.active else torch.ones_like(self._scale)
        by_device: dict[tuple, list[torch.Tensor]] = {}
        for g in grads:
            by_device.setdefault((g.device, g.dtype), []).append(g)
        for (device, _), group in by_device.items():
            fi = torch.zeros((), dtype=torch.float32, device=device)
            torch._amp_foreach_non_finite_check_and_unscale_(group, fi, inv.to(device))
            found_inf += fi.to(found_inf.device)
        return found_inf

    def update(self, found_inf: torch.Tensor) -> None:
        """Back off on inf/NaN, grow after ``growth_interval`` clean steps (only while active)."""
        if not self.active:
            return
        torch._amp_update_scale_(self._scale, self._growth_tracker, found_inf.clamp(max=1.0),
                                 self.growth_factor, self.backoff_factor, self.growth_interval)

    def state_dict(self) -> dict:
        return {"scale": self._scale.clone(), "growth_tracker": self._growth_tracker.clone(),
                "active": self.active}

    def load_state_dict(self, state: dict) -> None:
        self._scale.copy_(state["scale"])
        self._growth_tracker.copy_(state["growth_tracker"])
        self.active = bool(state["active"])
