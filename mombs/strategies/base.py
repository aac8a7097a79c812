"""The strategy interface and its registry.

A strategy is a recipe for the training loop's two hooks: the batch sampler
that forms each epoch's minibatches, and an optional per-sample loss weighting.
It never runs a training loop of its own; the runner (or a user's loop) calls
:meth:`Strategy.create_sampler` once, :meth:`Strategy.start_epoch` before each
epoch and :meth:`Strategy.weights` on each batch's per-sample losses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .._checks import check_int
from ..schedule import DEFAULT_PIVOT_EPOCH

if TYPE_CHECKING:  # the registry imports without torch: a config names strategies before any run
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

    A strategy sees per-sample measurements only through the scores its sampler
    is given and the losses handed to :meth:`start_epoch`; it knows nothing of
    models or data sets.

    Attributes:
        name: registry name.
        measure: which difficulty measures it needs: ``"both"``, ``"loss"``,
            ``"uncertainty"`` or ``None`` (none). A
            :class:`~mombs.DifficultyAssessor` with this ``measure`` feeds the
            sampler.
        schedule: the assessment schedule it needs, or ``None`` for the run's.
        pivot_epoch: first epoch that uses the measures.
    """

    name = "base"
    measure: str | None = None
    schedule: str | None = None
    #: The planner order of the sampler (see :data:`mombs.planner.ORDERS`).
    order = "random"

    def __init__(self, *, pivot_epoch: int = DEFAULT_PIVOT_EPOCH):
        check_int("pivot_epoch", pivot_epoch, 0)
        self.pivot_epoch = pivot_epoch

    def create_sampler(
        self,
        data_source,
        batch_size: int,
        *,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
    ):
        """The batch sampler for ``DataLoader(dataset, batch_sampler=...)``.

        It has ``set_epoch``, ``set_scores``, ``state_dict`` and
        ``load_state_dict``; plans depend only on the seed, the epoch and the
        scores it was given.
        """
        from ..sampler import MixedOrderBatchSampler

        return MixedOrderBatchSampler(
            data_source,
            batch_size,
            order=self.order,
            pivot_epoch=self.pivot_epoch,
            drop_last=drop_last,
            seed=seed,
            num_replicas=num_replicas,
            rank=rank,
        )

    def start_epoch(self, epoch: int, *, num_epochs: int, losses: np.ndarray | None) -> None:
        """Called before each epoch with the per-sample losses as they stand then.

        Args:
            epoch: the epoch about to start.
            num_epochs: epochs of the whole run.
            losses: ``(N,)`` latest per-sample losses, or ``None`` while some
                sample has none. A copy: later updates do not reach it.
        """

    def weights(self, batch_losses: torch.Tensor) -> torch.Tensor | None:
        """Per-sample weights ``(B,)`` for the batch's losses, or ``None`` for all ones."""
        return None


def create_strategy(name: str, **kwargs) -> Strategy:
    """Builds a registered strategy by name with keyword options."""
    if name not in STRATEGY_REGISTRY:
        raise ValueError(f"strategy={name!r} is not known; choose one of {sorted(STRATEGY_REGISTRY)}")
    return STRATEGY_REGISTRY[name](**kwargs)
