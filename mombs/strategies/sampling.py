"""Strategies that only change how minibatches are formed: random, mixed (and
its one-measure ablations) and anti."""

from __future__ import annotations

import numpy as np

from ..planner import plan_batches
from .base import Strategy, register_strategy


class _Planned(Strategy):
    plan = "mixed"

    def batches(self, epoch, num_samples, batch_size, *, scores, losses, seed, drop_last=False):
        if epoch < self.pivot_epoch or scores is None:
            return super().batches(epoch, num_samples, batch_size, scores=None, losses=None,
                                   seed=seed, drop_last=drop_last)
        return plan_batches(scores, batch_size, strategy=self.plan, seed=seed, epoch=epoch,
                            drop_last=drop_last).tolist()


@register_strategy("random")
class RandomBatches(Strategy):
    """Plain shuffled minibatches, the baseline (RaMBS)."""


@register_strategy("mixed")
class MixedOrder(_Planned):
    """MoMBS: every batch carries the same summed loss + uncertainty rank."""
    measure = "both"


@register_strategy("mixed-loss")
class MixedOrderLoss(_Planned):
    """MoMBS with the loss rank alone (ablation Mo+l)."""
    measure = "loss"


@register_strategy("mixed-uncertainty")
class MixedOrderUncertainty(_Planned):
    """MoMBS with the uncertainty rank alone (ablation Mo+u)."""
    measure = "uncertainty"


@register_strategy("anti")
class AntiOrder(_Planned):
    """Hard with hard, easy with easy: the opposite of MoMBS (ablation)."""
    measure = "both"
    plan = "anti"
