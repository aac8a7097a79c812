"""The strategy interface and its registry."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

__all__ = ["STRATEGY_REGISTRY", "Strategy", "create_strategy", "register_strategy"]

#: Strategy classes by name.
STRATEGY_REGISTRY: dict[str, type] = {}


def register_strategy(name: str) -> Callable[[type], type]:
    """Class decorator: make a strategy available to :func:`create_strategy` as ``name``."""
    def deco(cls):
        if name in STRATEGY_REGISTRY:
            raise ValueError(f"strategy {name!r} is registered twice")
        cls.name = name
        STRATEGY_REGISTRY[name] = cls
        return cls
    return deco


class Strategy:
    """How one epoch's minibatches are formed and how per-sample losses are weighted.

    A strategy sees per-sample measurements only through the ``scores`` and
    ``losses`` handed to it; it knows nothing of models or data sets.

    Attributes:
        name: registry name.
        measure: which difficulty measures it needs: ``"both"``, ``"loss"``,
            ``"uncertainty"`` or ``None`` (none).
        pivot_epoch: first epoch that uses the measures.
    """

    name = "base"
    measure: str | None = None

    def __init__(self, *, pivot_epoch: int = 1):
        if isinstance(pivot_epoch, bool) or not isinstance(pivot_epoch, int) or pivot_epoch < 0:
            raise ValueError(f"pivot_epoch={pivot_epoch!r} must be an integer >= 0")
        self.pivot_epoch = pivot_epoch

    def batches(self, epoch: int, num_samples: int, batch_size: int, *, scores: np.ndarray | None,
                losses: np.ndarray | None, seed: int, drop_last: bool = False) -> list[list[int]]:
        """The epoch's minibatches as lists of data set indices.

        Args:
            epoch: the epoch being planned.
            num_samples: ``N``.
            batch_size: ``B``.
            scores: ``(N,)`` difficulty, higher = harder, or ``None`` before any measurement.
            losses: ``(N,)`` latest per-sample losses, or ``None``.
            seed: run seed; the plan must depend only on it, the epoch and the inputs.
            drop_last: drop a last incomplete batch.
        """
        from ..planner import plan_batches

        return plan_batches(np.zeros(num_samples), batch_size, strategy="random", seed=seed,
                            epoch=epoch, drop_last=drop_last).tolist()

    def weights(self, batch_losses: torch.Tensor, epoch: int, *, num_epochs: int,
                losses: np.ndarray | None) -> torch.Tensor | None:
        """Per-sample weights ``(B,)`` for the batch's losses, or ``None`` for all ones."""
        return None


def create_strategy(name: str, **kwargs) -> Strategy:
    """Builds a registered strategy by name with keyword options."""
    if name not in STRATEGY_REGISTRY:
        raise ValueError(f"strategy={name!r} is not known; choose one of {sorted(STRATEGY_REGISTRY)}")
    return STRATEGY_REGISTRY[name](**kwargs)
