"""Self-paced curriculum learning by deweighting (Kumar et al. 2010; Jiang et al. 2014).

Samples whose loss is above a threshold ``lambda`` get weight 0, and below it a
weight set by the regularizer. ``lambda`` grows during training so that harder
samples enter later: it is the ``q``-quantile of the latest per-sample losses,
with ``q`` rising linearly from ``start_quantile`` at the pivot epoch to 1 at
the last epoch. Batches are random.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._checks import is_real
from ..schedule import DEFAULT_PIVOT_EPOCH, planned
from .base import Strategy, register_strategy

if TYPE_CHECKING:  # imported where weights are computed: the registry imports without torch
    import torch


class _SelfPaced(Strategy):
    measure = "loss"

    def __init__(self, *, pivot_epoch: int = DEFAULT_PIVOT_EPOCH, start_quantile: float = 0.5):
        super().__init__(pivot_epoch=pivot_epoch)
        if not is_real(start_quantile) or not 0 < start_quantile <= 1:
            raise ValueError(f"start_quantile={start_quantile!r} must be in (0, 1]")
        self.start_quantile = float(start_quantile)
        self.lam: float | None = None  # this epoch's threshold; None: every sample counts

    def start_epoch(self, epoch, *, num_epochs, losses):
        # The threshold comes from the losses as they stood when the epoch
        # began: the tracker updates its losses batch by batch during the epoch.
        lam = None
        if planned(epoch, self.pivot_epoch) and losses is not None:
            lam = self.threshold(epoch, num_epochs, np.array(losses, copy=True))
        self.lam = lam if lam is not None and np.isfinite(lam) else None

    def threshold(self, epoch: int, num_epochs: int, losses: np.ndarray) -> float:
        """``lambda`` for ``epoch``: a growing quantile of the latest losses."""
        span = max(1, num_epochs - 1 - self.pivot_epoch)
        q = self.start_quantile + (1 - self.start_quantile) * min(1.0, (epoch - self.pivot_epoch) / span)
        if q >= 1.0:
            return float("inf")
        return float(np.quantile(losses, q))

    def weights(self, batch_losses):
        if self.lam is None:
            return None
        return self.regularizer(batch_losses.detach(), max(self.lam, 1e-12))

    def regularizer(self, loss: torch.Tensor, lam: float) -> torch.Tensor:
        raise NotImplementedError


@register_strategy("scl-hard")
class SelfPacedHard(_SelfPaced):
    """``v = 1[l < lambda]``."""

    def regularizer(self, loss, lam):
        return (loss < lam).to(loss.dtype)


@register_strategy("scl-linear")
class SelfPacedLinear(_SelfPaced):
    """``v = max(0, 1 - l / lambda)``."""

    def regularizer(self, loss, lam):
        return (1 - loss / lam).clamp_min(0)


@register_strategy("scl-log")
class SelfPacedLog(_SelfPaced):
    """``v = log(l' + zeta) / log(zeta)`` for ``l' < 1 - zeta``, with the loss rescaled
    so that ``lambda`` maps to ``1 - zeta`` (``zeta = 0.5``)."""

    zeta = 0.5

    def regularizer(self, loss, lam):
        import torch

        scaled = loss * ((1 - self.zeta) / lam)
        v = torch.log(scaled + self.zeta) / np.log(self.zeta)
        return torch.where(scaled < 1 - self.zeta, v, torch.zeros_like(v)).clamp(0, 1)


@register_strategy("scl-mixture")
class SelfPacedMixture(_SelfPaced):
    """Mixture regularizer with ``lambda_1 = lambda``, ``lambda_2 = lambda / 2``:
    ``v = 1`` below ``lambda_2``, 0 above ``lambda_1``, ``zeta / l - zeta / lambda_1`` between,
    ``zeta = lambda_1 lambda_2 / (lambda_1 - lambda_2) = lambda``."""

    def regularizer(self, loss, lam):
        import torch

        mid = lam / loss.clamp_min(1e-12) - 1.0
        return torch.where(
            loss <= lam / 2, torch.ones_like(loss), torch.where(loss >= lam, torch.zeros_like(loss), mid)
        )
