"""Online hard example mining by retraining: the highest-loss fraction of the
previous epoch is seen twice (``shared/METHOD.md`` §3)."""

from __future__ import annotations

import numpy as np

from .base import Strategy, register_strategy


@register_strategy("ohem")
class HardExampleRetrain(Strategy):
    """Random batches over all samples plus a second copy of the top-loss ``fraction``.

    Args:
        pivot_epoch: first epoch with duplicates.
        fraction: share of samples, by latest loss, seen twice (default 0.1).
    """

    measure = "loss"

    def __init__(self, *, pivot_epoch: int = 1, fraction: float = 0.1):
        super().__init__(pivot_epoch=pivot_epoch)
        if not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise ValueError(f"fraction={fraction!r} must be in (0, 1]")
        self.fraction = float(fraction)

    def batches(self, epoch, num_samples, batch_size, *, scores, losses, seed, drop_last=False):
        if epoch < self.pivot_epoch or losses is None:
            return super().batches(epoch, num_samples, batch_size, scores=None, losses=None,
                                   seed=seed, drop_last=drop_last)
        hard = np.argsort(losses)[::-1][:int(round(self.fraction * num_samples))]
        items = np.concatenate([np.arange(num_samples), hard])
        rng = np.random.default_rng([seed, epoch, 0x0E])
        items = items[rng.permutation(items.size)]
        stop = (items.size // batch_size) * batch_size if drop_last else items.size
        return [items[i:i + batch_size].tolist() for i in range(0, stop, batch_size)]
