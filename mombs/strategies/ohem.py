"""Online hard example mining by retraining: the highest-loss fraction of the
previous epoch is seen twice (``shared/METHOD.md`` §3)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._checks import is_real
from ..schedule import DEFAULT_PIVOT_EPOCH
from .base import Strategy, register_strategy

if TYPE_CHECKING:  # imported on first use by __getattr__ below, for checkers and readers
    from .ohem_sampler import HardExampleBatchSampler

__all__ = ["HardExampleBatchSampler", "HardExampleRetrain"]


def __getattr__(name: str):
    """``HardExampleBatchSampler``, from :mod:`.ohem_sampler` (torch) when first asked for."""
    if name == "HardExampleBatchSampler":
        from .ohem_sampler import HardExampleBatchSampler

        return HardExampleBatchSampler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@register_strategy("ohem")
class HardExampleRetrain(Strategy):
    """Random batches over all samples plus a second copy of the top-loss ``fraction``.

    Args:
        pivot_epoch: first epoch with duplicates.
        fraction: share of samples, by latest loss, seen twice (default 0.1).
    """

    measure = "loss"

    def __init__(self, *, pivot_epoch: int = DEFAULT_PIVOT_EPOCH, fraction: float = 0.1):
        super().__init__(pivot_epoch=pivot_epoch)
        if not is_real(fraction) or not 0 < fraction <= 1:
            raise ValueError(f"fraction={fraction!r} must be in (0, 1]")
        self.fraction = float(fraction)

    def create_sampler(self, data_source, batch_size, *, seed=0, drop_last=False, num_replicas=None, rank=None):
        import torch

        from .ohem_sampler import HardExampleBatchSampler

        dist = torch.distributed
        world = num_replicas or (dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1)
        if world > 1:
            raise ValueError(
                f"num_replicas={world}: the ohem sampler is single-process; under "
                f"torch.distributed every rank would train on the whole data set"
            )
        return HardExampleBatchSampler(
            data_source,
            batch_size,
            fraction=self.fraction,
            pivot_epoch=self.pivot_epoch,
            drop_last=drop_last,
            seed=seed,
        )
