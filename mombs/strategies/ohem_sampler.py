"""The batch sampler of :class:`~mombs.strategies.ohem.HardExampleRetrain`: a torch ``Sampler``,
in a module of its own so that the strategy registry imports without torch."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Sampler

from .._checks import check_int, is_int, is_real
from ..planner import _check_scores, plan_batches
from ..schedule import DEFAULT_PIVOT_EPOCH, planned

__all__ = ["HardExampleBatchSampler"]


class HardExampleBatchSampler(Sampler[list[int]]):
    """Random batches over all ``N`` samples plus a second copy of the hardest ones.

    Before ``pivot_epoch`` (or before any :meth:`set_scores`) it yields plain
    random batches. From it on, the ``fraction`` of samples with the highest
    scores are added once more and the whole list is shuffled into batches, so
    an epoch has ``ceil(N * (1 + fraction) / B)`` batches.

    Args:
        data_source: the data set (anything with ``len``) or its size ``N``.
        batch_size: samples per batch, ``>= 1``.
        fraction: share of samples seen twice, in ``(0, 1]``.
        pivot_epoch: first epoch with duplicates, ``>= 0``.
        drop_last: drop a last incomplete batch.
        seed: seed of the shuffles, ``>= 0``.
    """

    def __init__(
        self,
        data_source,
        batch_size: int,
        *,
        fraction: float = 0.1,
        pivot_epoch: int = DEFAULT_PIVOT_EPOCH,
        drop_last: bool = False,
        seed: int = 0,
    ):
        n = data_source if is_int(data_source) else len(data_source)
        check_int("len(data_source)", n, 0)
        if not is_real(fraction) or not 0 < fraction <= 1:
            raise ValueError(f"fraction={fraction!r} must be in (0, 1]")
        if not isinstance(drop_last, bool):
            raise ValueError(f"drop_last={drop_last!r} must be a bool")
        check_int("batch_size", batch_size, 1)
        check_int("pivot_epoch", pivot_epoch, 0)
        check_int("seed", seed, 0)
        self.num_samples_total, self.batch_size = int(n), int(batch_size)
        self.fraction, self.pivot_epoch = float(fraction), int(pivot_epoch)
        self.drop_last, self.seed = bool(drop_last), int(seed)
        self.epoch = 0
        self._scores: np.ndarray | None = None

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch that the next ``__iter__`` plans."""
        check_int("epoch", epoch, 0)
        self.epoch = int(epoch)

    def set_scores(self, scores) -> None:
        """``(N,)`` scores, higher = harder (the loss rank); a copy is kept."""
        arr = _check_scores(scores)
        if arr.shape[0] != self.num_samples_total:
            raise ValueError(
                f"scores has {arr.shape[0]} entries but this sampler was built for {self.num_samples_total} samples"
            )
        self._scores = np.array(arr, copy=True)

    def _batches(self) -> list[np.ndarray]:
        n, b = self.num_samples_total, self.batch_size
        if not planned(self.epoch, self.pivot_epoch) or self._scores is None:
            return list(
                plan_batches(np.zeros(n), b, order="random", seed=self.seed, epoch=self.epoch, drop_last=self.drop_last)
            )
        # Stable, by descending score: tied losses (common in half precision)
        # are ordered by position, not by the sort kernel.
        hard = np.argsort(-self._scores, kind="stable")[: int(round(self.fraction * n))]
        items = np.concatenate([np.arange(n), hard])
        rng = np.random.default_rng([self.seed, self.epoch, 0x0E])
        items = items[rng.permutation(items.size)]
        stop = (items.size // b) * b if self.drop_last else items.size
        return [items[i : i + b] for i in range(0, stop, b)]

    def __iter__(self):
        for batch in self._batches():
            yield batch.tolist()

    def __len__(self) -> int:
        return len(self._batches())

    def state_dict(self) -> dict:
        """The epoch, the seed and the scores (a tensor, for ``weights_only`` loads).
        Batches are replayed per epoch: resume at an epoch boundary."""
        return {
            "epoch": self.epoch,
            "seed": self.seed,
            "scores": None if self._scores is None else torch.from_numpy(self._scores.copy()),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restores :meth:`state_dict`; a state saved with another seed is refused (the constructor's is the run's)."""
        if state.get("seed") != self.seed:
            raise ValueError(
                f"state seed={state.get('seed')!r} differs from this sampler's seed={self.seed!r}; "
                f"build the sampler with the run's settings"
            )
        self.epoch = int(state["epoch"])
        s = state.get("scores")
        self._scores = None if s is None else _check_scores(s.numpy() if torch.is_tensor(s) else np.asarray(s))
