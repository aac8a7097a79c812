"""A torch ``BatchSampler`` that plans mixed-order minibatches each epoch.

It follows torch's BatchSampler contract (``__iter__`` yields lists of ints,
``__len__`` is exact, ``set_epoch`` as in ``DistributedSampler``) and the
planning itself is :func:`mombs.planner.plan_batches`. Nothing in torch is
patched; use it as ``DataLoader(dataset, batch_sampler=sampler)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sized
from typing import SupportsInt, cast

import numpy as np
import torch
from torch.utils.data import Sampler

from ._checks import check_int, check_real, is_int
from .planner import DEFAULT_JITTER, _check_order, _check_scores, plan_batches, replica_layout
from .schedule import DEFAULT_PIVOT_EPOCH, planned

__all__ = ["MixedOrderBatchSampler"]


def _resolve_replicas(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    dist = torch.distributed
    initialised = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    check_int("num_replicas", num_replicas, 1)
    check_int("rank", rank, 0)
    if rank >= num_replicas:
        raise ValueError(f"rank={rank} must be < num_replicas={num_replicas}")
    return int(num_replicas), int(rank)


class MixedOrderBatchSampler(Sampler[list[int]]):
    """Yields minibatches of dataset indices, planned from difficulty scores.

    Before ``pivot_epoch`` (or while no scores were given) batches are plain
    random ones. From ``pivot_epoch`` on, each epoch is planned with
    ``order`` from the scores last passed to :meth:`set_scores`: for
    ``"mixed"`` every batch carries nearly the same total difficulty
    (``shared/METHOD.md`` §2).

    Under ``torch.distributed`` (or with ``num_replicas``/``rank`` given) every
    replica derives the same global plan from the same scores, seed and epoch and
    keeps its share: each gets ``len(self)`` balanced batches of ``batch_size``,
    and together they cover the data set once per epoch, padded as
    ``DistributedSampler`` pads when ``drop_last=False``. The plan does not
    depend on the numpy build or CPU: ties are ordered by position, never by the
    sort kernel. The scores themselves must be equal on every rank (the
    assessor's ``sync`` makes them so).

    Args:
        data_source: the data set (anything with ``len``) or its size ``N``.
        batch_size: per-replica batch size, ``>= 1``.
        order: the planner's order: ``"mixed"`` (MoMBS), ``"random"`` or
            ``"anti"``. Registry strategies such as ``"mixed-loss"`` are this
            sampler with ``order="mixed"`` fed other scores
            (:func:`mombs.strategies.create_strategy` builds them).
        pivot_epoch: first epoch planned from scores (the paper's PE), ``>= 0``.
            The default, :data:`~mombs.schedule.DEFAULT_PIVOT_EPOCH` (1), plans
            from the second epoch on, once one epoch has produced scores; the
            paper used 5 to 50 (``shared/METHOD.md`` §1).
        drop_last: drop samples that do not fill a whole batch.
        seed: seed shared by all replicas, ``>= 0``.
        num_replicas: world size; defaults to that of the initialised process
            group, else 1.
        rank: this replica; defaults to the process group's rank, else 0.
        jitter: ordering noise of the planner (see :func:`plan_batches`).

    Example:
        >>> sampler = MixedOrderBatchSampler(len(ds), 16, pivot_epoch=5)
        >>> loader = DataLoader(ds, batch_sampler=sampler, num_workers=4)
        >>> for epoch in range(epochs):
        ...     sampler.set_epoch(epoch)
        ...     for batch in loader: ...
        ...     sampler.set_scores(difficulty)  # (N,), higher = harder
    """

    def __init__(
        self,
        data_source: Sized | int,
        batch_size: int,
        *,
        order: str = "mixed",
        pivot_epoch: int = DEFAULT_PIVOT_EPOCH,
        drop_last: bool = False,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        jitter: float = DEFAULT_JITTER,
    ):
        if is_int(data_source):
            n = int(cast(SupportsInt, data_source))
        elif isinstance(data_source, Sized) and not isinstance(data_source, (str, bytes)):
            n = len(data_source)
        else:
            raise ValueError(f"data_source={data_source!r} must be a sized data set or its number of samples")
        check_int("len(data_source)", n, 0)
        check_int("batch_size", batch_size, 1)
        _check_order(order)
        check_int("pivot_epoch", pivot_epoch, 0)
        check_int("seed", seed, 0)
        if not isinstance(drop_last, bool):
            raise ValueError(f"drop_last={drop_last!r} must be a bool")
        check_real("jitter", jitter, 0)
        self.num_replicas, self.rank = _resolve_replicas(num_replicas, rank)
        self.num_samples_total = n
        self.batch_size = int(batch_size)
        self.order = order
        self.pivot_epoch = int(pivot_epoch)
        self.drop_last = drop_last
        self.seed = int(seed)
        self.jitter = float(jitter)
        self.epoch = 0
        self._scores: np.ndarray | None = None
        # The scores the current epoch was planned from: set_scores() during an
        # epoch must not change the batches a resume of that epoch replays.
        self._epoch_scores: np.ndarray | None = None
        self._skip = 0  # batches of the current epoch already consumed before a resume
        self._yielded = 0  # batches of the current epoch yielded by __iter__
        # Batches of the current epoch the training loop reported as trained
        # (note_consumed, which the assessor's observe() calls); None: not counted.
        # A DataLoader with workers draws batches ahead of the loop, so what was
        # yielded overstates what was trained.
        self._consumed: int | None = None
        self._started_at = 0  # where the current iteration started (a resume skips)
        self._resumed = False  # load_state_dict ran: the epoch's own scores plan it
        self._warned_no_scores = False
        # The epoch whose whole plan an iteration has yielded from its first batch
        # on, until set_epoch or load_state_dict: a second such pass over the same
        # epoch means that nothing drives the epochs (_PlanIterator warns).
        self._passed_epoch: int | None = None
        self._warned_same_epoch = False
        self._layout = replica_layout(n, self.batch_size, num_replicas=self.num_replicas, drop_last=drop_last)

    # ------------------------------------------------------------------ #
    # torch's sampler contract

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch that the next ``__iter__`` plans, as ``DistributedSampler`` does."""
        check_int("epoch", epoch, 0)
        self._passed_epoch = None
        if epoch != self.epoch:
            self._skip = 0
            self._yielded = 0
            self._consumed = None
            self._epoch_scores = None
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Batches of a whole epoch on this replica.

        A resumed epoch yields only its remaining batches, but the length stays
        that of the epoch, as torch's and torchdata's samplers report it:
        frameworks (Lightning) size the epoch from ``len`` and count the
        batches already done themselves.
        """
        return self._layout["batches_per_replica"]

    def __iter__(self) -> Iterator[list[int]]:
        # Lazy: the epoch is planned, and a resume's skip used up, at the first
        # batch drawn. A multi-worker DataLoader calls iter() twice before it
        # draws anything; an eager start would spend the skip on the first call.
        return _PlanIterator(self)

    def _begin(self):
        """Plans the current epoch for an iteration that starts now; returns ``(plan, start)``."""
        # A resumed epoch replays the scores it was planned from; a fresh pass takes the latest.
        resumed, self._resumed = self._resumed, False
        scores = self._epoch_scores if self._skip or (resumed and self._epoch_scores is not None) else self._scores
        plan = self._plan(scores)
        # Remember what this epoch was planned from, for a state_dict cut mid-epoch.
        self._epoch_scores = scores if self._epoch_uses(scores) else None
        skip, self._skip = self._skip, 0
        self._yielded = self._started_at = skip
        self._consumed = None
        return plan, skip

    def _end_whole_pass(self) -> None:
        """An iteration yielded the current epoch's whole plan; the second one without
        :meth:`set_epoch` in between warns (once): nothing drives the epochs."""
        if self._passed_epoch == self.epoch and not self._warned_same_epoch:
            self._warned_same_epoch = True
            warnings.warn(
                f"MixedOrderBatchSampler: a second whole pass over epoch {self.epoch} without "
                f"set_epoch(): every epoch gets the same batches and none is planned from scores. "
                f"Call sampler.set_epoch(epoch) (or assessor.start_epoch(epoch)) before each epoch; "
                f"under PyTorch Lightning add mombs.integrations.lightning.MoMBSCallback(assessor), "
                f"since Lightning never calls set_epoch on a batch sampler",
                RuntimeWarning,
                stacklevel=3,
            )
        self._passed_epoch = self.epoch

    def note_consumed(self, batches: int = 1) -> None:
        """Counts batches of the current epoch that the training loop has trained on.

        :meth:`state_dict` then records that count rather than the number of
        batches yielded, which a ``DataLoader`` with workers runs ahead of.
        :meth:`mombs.DifficultyAssessor.observe` calls this for every batch, so
        a loop with an assessor needs nothing more.
        """
        check_int("batches", batches, 0)
        done = self._started_at if self._consumed is None else self._consumed
        self._consumed = min(done + batches, self._layout["batches_per_replica"])

    # ------------------------------------------------------------------ #
    # scores and planning

    def set_scores(self, scores) -> None:
        """Sets the difficulty scores that epochs from ``pivot_epoch`` on are planned with.

        Args:
            scores: ``(N,)`` finite difficulty scores, higher = harder, indexed
                like the data set (e.g. :func:`mombs.difficulty_scores`). Every
                replica must pass the same values. A copy is kept.
        """
        arr = _check_scores(scores)
        if arr.shape[0] != self.num_samples_total:
            raise ValueError(
                f"scores has {arr.shape[0]} entries but this sampler was built for "
                f"{self.num_samples_total} samples: give one score per sample of the data set "
                f"the sampler was built for"
            )
        self._scores = np.array(arr, copy=True)

    @property
    def scores(self) -> np.ndarray | None:
        """The scores in use, ``(N,)``, or ``None`` before :meth:`set_scores`."""
        return self._scores

    def uses_scores(self, epoch: int | None = None) -> bool:
        """Whether ``epoch`` (default: the current one) is planned from scores."""
        epoch = self.epoch if epoch is None else epoch
        return self.order != "random" and planned(epoch, self.pivot_epoch) and self._scores is not None

    def plan(self):
        """This replica's :class:`~mombs.planner.BatchPlan` for the current epoch,
        from the latest scores. Pure: it changes nothing that a resume replays."""
        return self._plan(self._scores)

    def _epoch_uses(self, scores) -> bool:
        return self.order != "random" and planned(self.epoch, self.pivot_epoch) and scores is not None

    def _plan(self, scores_in):
        if self._epoch_uses(scores_in):
            scores, order = scores_in, self.order
        else:
            if self.order != "random" and planned(self.epoch, self.pivot_epoch) and not self._warned_no_scores:
                warnings.warn(
                    f"epoch {self.epoch} is past pivot_epoch={self.pivot_epoch} but "
                    f"set_scores() was never called; sampling at random",
                    stacklevel=3,
                )
                self._warned_no_scores = True
            scores, order = np.zeros(self.num_samples_total, dtype=np.float32), "random"
        return plan_batches(
            scores,
            self.batch_size,
            order=order,
            seed=self.seed,
            epoch=self.epoch,
            drop_last=self.drop_last,
            num_replicas=self.num_replicas,
            rank=self.rank,
            jitter=self.jitter,
        )

    # ------------------------------------------------------------------ #
    # checkpointing

    def state_dict(self, *, batches_done: int | None = None) -> dict:
        """Everything needed to replay the rest of the current epoch.

        Args:
            batches_done: batches of the current epoch the training loop has
                consumed. Defaults to the count of :meth:`note_consumed` (which
                a :class:`~mombs.DifficultyAssessor`'s ``observe`` keeps) when
                there is one, else to the number of batches yielded. The latter
                is right when the sampler is iterated directly, or by torchdata's
                ``StatefulDataLoader`` (which saves this state as each batch is
                drawn); a plain ``DataLoader`` with workers draws ahead, so
                without an assessor pass your step count there.

        Returns:
            A dict of plain Python values and one numpy array (the scores).
        """
        if batches_done is not None:
            done = batches_done
        else:
            done = self._yielded if self._consumed is None else self._consumed
        check_int("batches_done", done, 0)
        if done > self._layout["batches_per_replica"]:
            raise ValueError(
                f"batches_done={done} exceeds the {self._layout['batches_per_replica']} batches of an epoch"
            )

        def tensor(a):  # tensors, so that torch.load's default weights_only=True reads the state
            return None if a is None else torch.from_numpy(np.array(a, copy=True))

        return {
            "epoch": self.epoch,
            "batches_done": int(done),
            "seed": self.seed,
            "order": self.order,
            "pivot_epoch": self.pivot_epoch,
            "batch_size": self.batch_size,
            "drop_last": self.drop_last,
            "num_replicas": self.num_replicas,
            "num_samples": self.num_samples_total,
            "jitter": self.jitter,
            "scores": tensor(self._scores),
            "epoch_scores": tensor(self._epoch_scores),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restores :meth:`state_dict`; the next ``__iter__`` yields the rest of
        that epoch's batches, exactly as the interrupted run would have.

        The constructor's settings are the run's: a state saved with another
        order, batch size, ``drop_last``, data set size, number of replicas,
        seed, pivot epoch or jitter is refused rather than taken over (an
        assessor built on this sampler keeps the pivot epoch it was given).
        The rank is not stored: under DDP every rank may load rank 0's state.

        Raises:
            ValueError: naming the first field that differs and both values.
        """
        order = state.get("order", state.get("strategy"))  # "strategy": states saved before the rename
        _check_order(order)
        for key in ("order", "batch_size", "drop_last", "num_samples", "num_replicas", "seed", "pivot_epoch", "jitter"):
            mine = self.num_samples_total if key == "num_samples" else getattr(self, key)
            theirs = order if key == "order" else state.get(key)
            if theirs != mine:
                raise ValueError(
                    f"state {key}={theirs!r} differs from this sampler's {key}={mine!r}; build "
                    f"the sampler with the run's settings"
                )

        def array(a):
            return None if a is None else _check_scores(a.numpy() if torch.is_tensor(a) else np.asarray(a))

        scores, epoch_scores = array(state.get("scores")), array(state.get("epoch_scores"))
        self._scores, self._epoch_scores = scores, epoch_scores
        self.epoch = int(state["epoch"])
        self._skip = int(state["batches_done"])
        self._yielded = self._started_at = self._skip
        self._consumed = None
        self._resumed = True
        self._passed_epoch = None


class _PlanIterator:
    """One pass over an epoch's plan, with its position as state.

    torchdata's ``StatefulDataLoader`` saves the state of a sampler's iterator
    when it has one, beside the sampler's own: the position recorded as each
    batch is drawn, which is exact under prefetching workers even when the
    sampler's :meth:`~MixedOrderBatchSampler.state_dict` counts consumed batches.
    """

    def __init__(self, sampler: MixedOrderBatchSampler):
        self._sampler = sampler
        self._plan: np.ndarray | None = None  # planned at the first batch drawn
        self._next = 0
        self._whole = False  # whether this pass started at the epoch's first batch
        self._position: int | None = None  # a position loaded before the first batch

    def __iter__(self):
        return self

    def _start(self) -> np.ndarray:
        plan, self._next = self._sampler._begin()
        self._plan = plan
        self._whole = self._next == 0  # a resumed pass yields only the rest of its epoch
        if self._position is not None:
            self._seek(plan, self._position)
        return plan

    def _seek(self, plan: np.ndarray, position: int) -> None:
        if position > len(plan):
            raise ValueError(f"position={position} exceeds the {len(plan)} batches of the epoch")
        self._next = self._sampler._yielded = self._sampler._started_at = int(position)
        self._sampler._consumed = None
        self._whole = self._whole and position == 0

    def __next__(self) -> list[int]:
        plan = self._start() if self._plan is None else self._plan
        if self._next >= len(plan):
            raise StopIteration
        batch = plan[self._next].tolist()
        self._next += 1
        self._sampler._yielded = self._next
        if self._whole and self._next == len(plan):
            # The epoch's last batch: frameworks that know the length (Lightning) never ask for more.
            self._whole = False
            self._sampler._end_whole_pass()
        return batch

    def state_dict(self) -> dict:
        if self._plan is not None:
            return {"position": self._next}
        return {"position": self._sampler._skip if self._position is None else self._position}

    def load_state_dict(self, state: dict) -> None:
        position = state["position"]
        check_int("position", position, 0)
        if self._plan is None:
            self._position = int(position)
        else:
            self._seek(self._plan, int(position))
