"""Strategies that only change how minibatches are formed: random, mixed (and
its one-measure and plain-entropy variants) and anti."""

from __future__ import annotations

from .base import Strategy, register_strategy


@register_strategy("random")
class RandomBatches(Strategy):
    """Plain shuffled minibatches, the baseline (RaMBS)."""


@register_strategy("mixed")
class MixedOrder(Strategy):
    """MoMBS: every batch carries the same summed loss + uncertainty rank."""

    measure = "both"
    order = "mixed"


@register_strategy("mixed-loss")
class MixedOrderLoss(Strategy):
    """MoMBS with the loss rank alone (ablation Mo+l)."""

    measure = "loss"
    order = "mixed"


@register_strategy("mixed-uncertainty")
class MixedOrderUncertainty(Strategy):
    """MoMBS with the uncertainty rank alone (ablation Mo+u)."""

    measure = "uncertainty"
    order = "mixed"


@register_strategy("mixed-entropy")
class MixedOrderEntropy(Strategy):
    """MoMBS with the plain entropy of the training forward's prediction in place
    of the K-pass disturbed uncertainty (``K = 1``, no noise, no extra pass)."""

    measure = "both"
    order = "mixed"
    schedule = "train-entropy"


@register_strategy("anti")
class AntiOrder(Strategy):
    """Hard with hard, easy with easy: the opposite of MoMBS (ablation)."""

    measure = "both"
    order = "anti"
