"""The few lines that put MoMBS into a plain PyTorch training loop.

.. code-block:: python

    train = IndexedDataset(train_set)                      # items become (index, x, y)
    sampler = MixedOrderBatchSampler(train, 16, pivot_epoch=5)
    assessor = DifficultyAssessor(model, train, at="layer3", sampler=sampler)
    loader = DataLoader(train, batch_sampler=sampler)
    for epoch in range(epochs):
        assessor.start_epoch(epoch)                        # also sets the sampler's epoch
        for idx, x, y in loader:
            loss = F.cross_entropy(model(x), y, reduction="none")
            assessor.observe(idx, loss)                    # per-sample losses, no copy of the graph
            loss.mean().backward(); opt.step(); opt.zero_grad()
        assessor.end_epoch()                               # measures per schedule, feeds the sampler

The assessor owns the measuring: it runs the schedule's assessment passes over
the data set it was given, keeps a :class:`~mombs.difficulty.DifficultyTracker`,
merges ranks under ``torch.distributed`` and hands the scores to the sampler.
It knows nothing of tasks: a :class:`~mombs.tasks.TaskAdapter` (or ``output_fn``,
``loss_fn`` and ``uncertainty_fn``) says what the prediction is and how loss and
uncertainty reduce to one value per sample, so models that return dicts and
targets that are lists of dicts (detection) work as plain classifiers do.

The one full measuring pass, :func:`~mombs.assessment.assessment_pass`, lives
in :mod:`mombs.assessment`, stateless; the runner and the benchmarks call it too.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
import torch.nn as nn

from ._checks import check_int
from .assessment import _check_materialised, _default_batch_fn, _normal_device, _task_io, _task_parts, assessment_pass
from .difficulty import MEASURES, DifficultyTracker, QuadrantResult
from .noise import (
    _check_noise_args,
    _disturb,
    _eval_mode,
    _resolve_activation,
    _to_probs,
    find_module,
    prediction_entropy,
)
from .planner import replica_layout
from .sampler import MixedOrderBatchSampler
from .schedule import DEFAULT_PIVOT_EPOCH, DEFAULT_SCHEDULE, AssessmentSchedule, create_schedule, planned
from .tasks import TaskAdapter, create_task

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle

__all__ = ["DifficultyAssessor"]


def _on_host(indices: torch.Tensor) -> bool:
    """Whether reading ``indices`` costs no wait for a device (a CPU tensor)."""
    return indices.device.type == "cpu"


def _check_range(idx: np.ndarray, n: int) -> None:
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        out = idx[(idx < 0) | (idx >= n)]
        raise ValueError(
            f"observe() got indices {out[:5].tolist()} outside the data set's [0, {n}): the batch "
            f"comes from another data set than the assessor's ({n} samples), or its indices are "
            f"not data set indices"
        )


def _repeats(seen: np.ndarray, idx: np.ndarray) -> int:
    """How many of ``idx`` were observed before: already in ``seen``, or earlier in ``idx`` itself."""
    return int(idx.size - np.unique(idx[~seen[idx]]).size)


def _refuse_repeats(seen: np.ndarray, idx: np.ndarray, epoch: int):
    values, counts = np.unique(idx, return_counts=True)
    again = np.union1d(idx[seen[idx]], values[counts > 1])
    raise ValueError(
        f"observe() got samples {again[:10].tolist()}{' ...' if again.size > 10 else ''} "
        f"({again.size} in all) that were already observed in epoch {epoch}: call observe() once "
        f"per batch. A second call for a batch files its losses twice and moves the sampler's "
        f"resume position on, so a resumed run would skip a batch"
    )


def _refuse_non_finite(kind: str, epoch: int, samples: np.ndarray, count: int):
    raise ValueError(
        f"observe() got {count} non-finite per-sample {kind} value(s) (NaN or inf) in epoch {epoch}, "
        f"first for samples {samples[:5].tolist()}: the training diverged (lower the learning "
        f"rate), or the loss is undefined for these samples (a mean over no valid element, say)"
    )


def _check_dataset_and_sampler(dataset, sampler) -> None:
    """The data set is not empty, and the sampler (when it says its size) was built for it."""
    if not hasattr(dataset, "__len__"):
        raise ValueError(
            f"dataset={type(dataset).__name__} must have a length: the assessor needs the "
            f"training set as a map-style data set (mombs.IndexedDataset(train_set))"
        )
    n = len(dataset)
    if n == 0:
        raise ValueError("the data set is empty (len(dataset) == 0); the assessor measures the training set")
    size = getattr(sampler, "num_samples_total", None)
    if size is not None and size != n:
        raise ValueError(
            f"the sampler was built for {size} samples but the data set has {n}: build both "
            f"from the same training set (MixedOrderBatchSampler(train, ...) and "
            f"DifficultyAssessor(model, train, ...)); a validation set or a subset has another size"
        )


def _check_detector(model: nn.Module, task, forward_fn, schedule: AssessmentSchedule) -> None:
    """Refuses what fails deep inside for a torchvision detector: another task, or a schedule that
    reads the training forward (which for a detector returns a loss dict)."""
    # Read off the class's bases, so that torchvision is never imported for the check:
    # a detector's class was imported with torchvision's detection models.
    if not any(
        c.__name__ == "GeneralizedRCNN" and c.__module__.startswith("torchvision.") for c in type(model).__mro__
    ):
        return
    name = create_task(task).name
    if name != "detection" and forward_fn is None:
        raise ValueError(
            f"model is a torchvision detector ({type(model).__name__}) but task={name!r}: pass "
            f"task='detection', whose assessment passes run the region proposal network and "
            f"batch images of different sizes as lists"
        )
    if schedule.uncertainty_source != "pass":
        raise ValueError(
            f"schedule={schedule.name!r} reads the training forward's output, which a torchvision "
            f"detector returns as a loss dict; use a schedule whose uncertainty comes from an "
            f"assessment pass, e.g. 'reuse-loss' or 'paper'"
        )


class DifficultyAssessor:
    """Measures per-sample difficulty during training and feeds a sampler.

    Args:
        model: the network being trained.
        dataset: the training set, with items ``(index, input, target, ...)``
            as :class:`~mombs.data.IndexedDataset` makes them. Assessment passes
            read it in order, without augmentation of their own.
        at: submodule whose output is disturbed for the uncertainty
            (``model.named_modules()`` name).
        sampler: a :class:`~mombs.MixedOrderBatchSampler` (or any sampler with
            ``set_epoch`` and ``set_scores``) to feed, or ``None``.
        schedule: a name from :data:`mombs.schedule.SCHEDULES` or an
            :class:`~mombs.schedule.AssessmentSchedule`.
        k: disturbed predictions per sample (paper: 8).
        alpha: noise half-width (default 0.3).
        measure: ``"both"``, ``"loss"`` or ``"uncertainty"`` (ablations).
        pivot_epoch: first planned epoch; defaults to the sampler's, else
            :data:`~mombs.schedule.DEFAULT_PIVOT_EPOCH`.
        task: a :class:`~mombs.tasks.TaskAdapter` or its name; the arguments
            below override its parts.
        loss_fn: ``loss_fn(outputs, targets) -> (B,)`` for assessment passes that
            measure the loss; ``outputs`` is the model's raw output.
        output_fn: model output -> prediction tensor (dict outputs, tuples,
            deep-supervision lists).
        uncertainty_fn: ``(B, C, ...)`` mean probabilities -> ``(B,)`` uncertainty.
        activation: ``"auto"``, ``"softmax"`` or ``"sigmoid"``.
        head: the network after ``at`` as a callable, needed by schedules that
            disturb the training forward's own features. That schedule runs
            the head once on ``k * B`` rows: keep it small (a classifier).
        batch_size: batch size of assessment passes.
        num_workers: ``DataLoader`` workers of assessment passes.
        collate_fn: collate function of assessment passes; default the task
            adapter's, else torch's.
        device: where inputs go; defaults to the model's first parameter's device.
        batch_fn: ``batch -> (indices, inputs, targets)``; default reads
            ``batch[0], batch[1], batch[2]``.
        chunk_rows: most disturbed rows per forward; default the batch size.
        seed: seed of the noise and of the rotating split.
        assessment_loader: an iterable of batches that assessment passes read
            instead of ``dataset`` (e.g. a ``DataLoader`` with workers and the
            evaluation transforms); see :func:`assessment_pass`'s ``loader``.
            By default ``dataset`` is read in whole batches where it can
            (:meth:`mombs.IndexedDataset.read_batch`).
        forward_fn: ``forward_fn(model, inputs) -> output`` for assessment
            passes; default the task adapter's, else ``model(inputs)`` (Hugging
            Face models take ``lambda m, batch: m(**batch)``).
        keep_history: the tracker keeps every epoch's loss and uncertainty,
            not only the latest (``O(N x epochs)`` memory; see
            :class:`~mombs.difficulty.DifficultyTracker`); off by default.

    Per-step values given to :meth:`observe` stay on their device and reach the
    tracker in one copy at :meth:`end_epoch` (or whenever :attr:`tracker`,
    :meth:`scores` or :meth:`state_dict` is read): a copy to the host in every
    step would make the CPU wait for the GPU each step.
    """

    def __init__(
        self,
        model: nn.Module,
        dataset,
        *,
        at: str,
        sampler=None,
        schedule: str | AssessmentSchedule = DEFAULT_SCHEDULE,
        k: int = 8,
        alpha: float = 0.3,
        measure: str = "both",
        pivot_epoch: int | None = None,
        task: str | TaskAdapter = "classification",
        loss_fn: Callable | None = None,
        output_fn: Callable | None = None,
        uncertainty_fn: Callable | None = None,
        activation: str | None = None,
        head: Callable | None = None,
        batch_size: int = 256,
        num_workers: int = 0,
        collate_fn: Callable | None = None,
        device=None,
        batch_fn: Callable | None = None,
        chunk_rows: int | None = None,
        seed: int = 0,
        assessment_loader=None,
        forward_fn: Callable | None = None,
        keep_history: bool = False,
    ):
        self.schedule = create_schedule(schedule)
        if measure not in MEASURES:
            raise ValueError(f"measure={measure!r} is not known; choose one of {list(MEASURES)}")
        _check_dataset_and_sampler(dataset, sampler)
        loss_fn, output_fn, uncertainty_fn, activation = _task_parts(
            task, loss_fn, output_fn, uncertainty_fn, activation
        )
        forward_fn, collate_fn = _task_io(task, forward_fn, collate_fn)
        _check_detector(model, task, forward_fn, self.schedule)
        _check_noise_args(k, alpha, activation)
        for name, value, low in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0), ("seed", seed, 0)):
            check_int(name, value, low)
        check_int("chunk_rows", chunk_rows, 1, optional=True)
        if assessment_loader is not None and not hasattr(assessment_loader, "__iter__"):
            raise ValueError(f"assessment_loader={assessment_loader!r} must be an iterable of batches")
        for name, fn in (("loss_fn", loss_fn), ("output_fn", output_fn), ("head", head), ("forward_fn", forward_fn)):
            if fn is not None and not callable(fn):
                raise ValueError(f"{name}={fn!r} must be callable")
        if self.schedule.uncertainty_source == "train" and head is None:
            raise ValueError(
                f"schedule={self.schedule.name!r} disturbs the training features and "
                f"needs head=, the network after {at!r}"
            )
        self._at_module = find_module(model, at)
        if pivot_epoch is None:
            pivot_epoch = getattr(sampler, "pivot_epoch", DEFAULT_PIVOT_EPOCH)
        check_int("pivot_epoch", pivot_epoch, 0)
        self.model, self.dataset, self.at, self.sampler = model, dataset, at, sampler
        self.k, self.alpha, self.measure, self.pivot_epoch = int(k), float(alpha), measure, int(pivot_epoch)
        self.loss_fn, self.output_fn, self.uncertainty_fn = loss_fn, output_fn, uncertainty_fn
        self.head, self.batch_size, self.num_workers = head, int(batch_size), int(num_workers)
        self.collate_fn, self.device = collate_fn, device
        self.chunk_rows = None if chunk_rows is None else int(chunk_rows)
        self.batch_fn = batch_fn or _default_batch_fn
        self.activation, self.seed = activation, int(seed)
        self.assessment_loader, self.forward_fn = assessment_loader, forward_fn
        self._tracker = DifficultyTracker(len(dataset), keep_history=keep_history)
        # Training-step values not yet in the tracker: (kind, indices, values), on their devices.
        self._pending: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        self.epoch = 0
        # What this process observed in the current epoch (see _note_observed):
        # the samples, how many of them came twice (a DDP sampler's padding may
        # repeat a few), device-resident indices not yet read, and the calls.
        self._seen = np.zeros(len(dataset), dtype=bool)
        self._seen_key: tuple | None = None
        self._repeats = 0
        self._unread: list[torch.Tensor] = []
        self._steps = 0
        self._gen: torch.Generator | None = None
        self._captured: torch.Tensor | None = None
        self._hook: RemovableHandle | None = None
        self.open()

    # ------------------------------------------------------------------ #
    # the user's three calls

    @property
    def active(self) -> bool:
        """Whether this epoch's measurements feed a plan."""
        return self.epoch >= self.schedule.first_epoch(self.pivot_epoch)

    @property
    def tracker(self) -> DifficultyTracker:
        """The :class:`~mombs.difficulty.DifficultyTracker`, with every observed value in it."""
        self._flush()
        return self._tracker

    def start_epoch(self, epoch: int) -> None:
        """Call before each epoch's training pass; sets the sampler's epoch too."""
        self._flush()  # values observed so far belong to the epoch they were observed in
        self.open()  # after a close(): this epoch's training forwards are to be captured again
        self._tracker.set_epoch(epoch)
        self.epoch = int(epoch)
        self._captured = None
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        self._forget_observed()

    def observe(self, indices, loss: torch.Tensor) -> None:
        """Record one training step's per-sample losses; call it once per batch.

        Args:
            indices: ``(B,)`` data set indices of the batch.
            loss: ``(B,)`` per-sample losses (``reduction="none"``), any float
                dtype (bfloat16 and float16 from autocast included); detached here.

        Raises:
            ValueError: ``loss`` is not ``(B,)`` for the ``(B,)`` integer
                indices; an index lies outside the data set; a loss is NaN or
                infinite (naming the first samples); or, with a
                :class:`~mombs.MixedOrderBatchSampler`, samples already
                observed in this epoch come again (the same batch observed
                twice, which would also move the sampler's resume position
                on). Indices and losses on the host are checked here; on a
                GPU, where reading them would make the CPU wait, their values
                are checked when they reach the tracker (at :meth:`end_epoch`).
                A refused call changes nothing.
        """
        captured, self._captured = self._captured, None
        # Checked in full before anything is kept, so a refused call changes nothing.
        _, idx, values = self._checked("loss", indices, loss)
        keep_loss = self.active and self.schedule.loss_source == "train"
        host = idx.numpy() if _on_host(idx) else None
        if host is not None:
            self._check_host_step(host, values if keep_loss else None)
        step = [("loss", idx, values)] if keep_loss else []
        if self.active and self.schedule.uncertainty_source in ("train", "output") and self.measure != "loss":
            if captured is None:
                where = self.at if self.schedule.uncertainty_source == "train" else "the model's output"
                raise RuntimeError(
                    f"nothing was captured at {where!r} in this step; call observe() right after the training forward"
                )
            unc = self._head_uncertainty(captured) if self.schedule.uncertainty_source == "train" else captured
            step.append(self._checked("uncertainty", idx, unc))
        self._note_observed(idx, host)
        self._pending.extend(step)
        self._steps += 1
        if self.sampler is not None and callable(getattr(self.sampler, "note_consumed", None)):
            self.sampler.note_consumed()  # where the loop really is, whatever a loader prefetched

    def _checked(self, kind: str, indices, values) -> tuple[str, torch.Tensor, torch.Tensor]:
        """A step's values, kept where they are: shapes are checked now, values at the flush."""
        if not torch.is_tensor(values):
            raise ValueError(f"observe() needs the per-sample {kind} as a tensor, got {type(values).__name__}")
        n = len(indices) if hasattr(indices, "__len__") else -1
        if values.ndim != 1 or values.shape[0] != n:
            raise ValueError(
                f"observe() got {kind} of shape {tuple(values.shape)} for {n} indices; pass "
                f"per-sample values (reduction='none') of shape (B,) with the batch's (B,) "
                f"indices"
            )
        if not torch.is_tensor(indices):
            indices = torch.as_tensor(np.asarray(indices))
        if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
            raise ValueError(
                f"observe() needs the batch's (B,) integer data set indices, got a {indices.dtype} "
                f"tensor of shape {tuple(indices.shape)}: the batch carries no indices, so its "
                f"first field came instead; wrap the data set in mombs.IndexedDataset so that "
                f"batches carry (index, x, y)"
            )
        if indices.ndim != 1:
            raise ValueError(
                f"observe() needs the batch's indices as one (B,) integer tensor, got shape "
                f"{tuple(indices.shape)}; pass indices.reshape(-1) (a data set whose items "
                f"carry a (1,) index gives (B, 1))"
            )
        return kind, indices.detach(), values.detach()

    def _check_host_step(self, idx: np.ndarray, loss: torch.Tensor | None) -> None:
        """What can be checked of a step whose indices are on the host: their range, the
        losses to keep when they are on the host too, and samples observed twice."""
        _check_range(idx, self._tracker.num_samples)
        if loss is not None and loss.device.type == "cpu":
            bad = ~torch.isfinite(loss)
            if bool(bad.any()):
                _refuse_non_finite("loss", self.epoch, idx[bad.numpy()], int(bad.sum()))
        if self._counts_repeats():
            seen = self._seen_now()
            if self._repeats + _repeats(seen, idx) > self._allowed_repeats():
                _refuse_repeats(seen, idx, self.epoch)

    def _counts_repeats(self) -> bool:
        # Only a MixedOrderBatchSampler's epoch holds each sample once (per
        # process, up to its padding): other samplers may draw with replacement.
        return isinstance(self.sampler, MixedOrderBatchSampler)

    def _allowed_repeats(self) -> int:
        """Samples a process may see twice in an epoch: the sampler's padding under DDP, else none."""
        s = self.sampler
        return replica_layout(s.num_samples_total, s.batch_size, num_replicas=s.num_replicas, drop_last=s.drop_last)[
            "padding"
        ]

    def _seen_now(self) -> np.ndarray:
        """The samples observed in the current epoch. They are forgotten when the sampler's
        epoch moves on without :meth:`start_epoch` (a loop that drives the sampler itself)."""
        key = (self.epoch, self.sampler.epoch)
        if key != self._seen_key:
            self._read_unread()  # the previous epoch's device-resident indices, against its own record
            self._forget_observed()
        return self._seen

    def _forget_observed(self) -> None:
        self._seen[:] = False
        self._repeats = 0
        self._unread = []
        self._steps = 0
        self._seen_key = (self.epoch, getattr(self.sampler, "epoch", None))

    def _note_observed(self, idx: torch.Tensor, host: np.ndarray | None) -> None:
        """Records a step's samples as observed in this epoch (indices on a device: read at the flush)."""
        if not self._counts_repeats():
            return
        if host is None:
            self._unread.append(idx)
            return
        seen = self._seen_now()
        self._repeats += _repeats(seen, host)
        seen[host] = True

    def _read_unread(self) -> None:
        """Reads the device-resident indices observed since the last read, in one copy, and checks
        their range and that no sample came twice."""
        unread, self._unread = self._unread, []
        if not unread:
            return
        host = torch.cat([i.reshape(-1).to(unread[0].device) for i in unread]).cpu().numpy()
        _check_range(host, self._seen.size)
        if self._repeats + _repeats(self._seen, host) > self._allowed_repeats():
            _refuse_repeats(self._seen, host, self.epoch)
        self._repeats += _repeats(self._seen, host)
        self._seen[host] = True

    def _flush(self) -> None:
        """Moves the pending training-step values into the tracker, one host copy per kind."""
        if self._unread:
            self._seen_now()  # an epoch the sampler left behind is read against its own record first
            self._read_unread()
        pending, self._pending = self._pending, []
        for kind in ("loss", "uncertainty"):
            parts = [(i, v) for k, i, v in pending if k == kind]
            if not parts:
                continue
            # Indices are checked by the tracker; values are widened on their
            # own device first, since numpy has no bfloat16.
            idx = torch.cat([i.reshape(-1).to(parts[0][0].device) for i, _ in parts]).cpu()
            vals = torch.cat([v.to(parts[0][1].device, torch.float32) for _, v in parts])
            vals = vals.to("cpu", torch.float64)
            bad = ~torch.isfinite(vals)
            if bool(bad.any()):
                _refuse_non_finite(kind, self._tracker.epoch, idx.numpy()[bad.numpy()], int(bad.sum()))
            try:
                getattr(self._tracker, f"update_{kind}")(idx, vals)
            except ValueError as err:
                raise ValueError(f"observe() in epoch {self._tracker.epoch} got bad per-sample {kind}: {err}") from err

    def end_epoch(self) -> np.ndarray | None:
        """Call after each epoch's training pass.

        Runs the schedule's assessment pass, merges ranks across processes and
        gives the scores to the sampler when the next epoch is planned.

        Returns:
            The ``(N,)`` difficulty scores (higher = harder) when they were
            updated, else ``None``.
        """
        if not self.active:
            return None
        # A loss-only measure (ablation Mo+l) needs no uncertainty at all.
        part = (
            self.schedule.uncertainty_part(self.epoch, self.pivot_epoch)
            if self.schedule.uncertainty_source == "pass" and self.measure != "loss"
            else None
        )
        want_loss = self.schedule.loss_source == "pass"
        if want_loss or part is not None:
            n = len(self.dataset)
            loss_idx = np.arange(n) if want_loss else np.zeros(0, dtype=np.int64)
            unc_idx = (
                self.schedule.part_indices(part, n, self.seed) if part is not None else np.zeros(0, dtype=np.int64)
            )
            self._assess(loss_idx, unc_idx)
        self.tracker.sync()
        self._warn_unobserved()
        scores = self.tracker.scores(self.measure)
        if self.sampler is not None and planned(self.epoch + 1, self.pivot_epoch):
            self.sampler.set_scores(scores)
        return scores

    def _warn_unobserved(self) -> None:
        """Warns when the epoch's training steps left samples without the values the schedule takes
        from them (``observe()`` forgotten, or called for some batches only).

        With a :class:`~mombs.MixedOrderBatchSampler` every sample of the epoch
        is expected but those its ``drop_last`` leaves out; with another
        sampler, which may draw a part of the data, only an epoch with no
        observed sample at all is reported. Read after the merge across
        ranks, so every rank counts the whole epoch.
        """
        kinds = []
        if self.schedule.loss_source == "train" and self.measure != "uncertainty":
            kinds.append("loss")
        if self.schedule.uncertainty_source != "pass" and self.measure != "loss":
            kinds.append("uncertainty")
        if not kinds:
            return
        t, n = self._tracker, self._tracker.num_samples
        kind, missing = max(
            ((k, int((getattr(t, f"{k}_epoch") != self.epoch).sum())) for k in kinds), key=lambda km: km[1]
        )
        s = self.sampler
        if isinstance(s, MixedOrderBatchSampler):
            allowed = replica_layout(
                s.num_samples_total, s.batch_size, num_replicas=s.num_replicas, drop_last=s.drop_last
            )["dropped"]
            batches = f"; the sampler's epoch has {len(s)} batches per process"
        else:
            allowed, batches = n - 1, ""
        if missing <= allowed:
            return
        warnings.warn(
            f"end_epoch(): {missing} of {n} samples got no per-sample {kind} from the training "
            f"steps of epoch {self.epoch} (observe() was called {self._steps} times in this "
            f"process{batches}). Call assessor.observe(indices, per_sample_loss) once after every "
            f"training step: schedule={self.schedule.name!r} takes the {kind} from them, and these "
            f"samples are planned from an earlier epoch's {kind}, or as average if they never had one",
            RuntimeWarning,
            stacklevel=2,
        )

    # ------------------------------------------------------------------ #
    # measuring

    def _device(self):
        if self.device is not None:
            return _normal_device(self.device)
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def _generator(self, device) -> torch.Generator:
        device = _normal_device(device)
        if self._gen is None or self._gen.device != device:
            self._gen = torch.Generator(device=device).manual_seed(self.seed)
        return self._gen

    def _assess(self, loss_idx: np.ndarray, unc_idx: np.ndarray) -> None:
        """One :func:`assessment_pass` over this rank's share of both index sets."""
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
            idx = np.union1d(loss_idx, unc_idx)[rank::world]
            loss_idx, unc_idx = np.intersect1d(loss_idx, idx), np.intersect1d(unc_idx, idx)
        _check_materialised(self.model)  # before a generator is made on its device
        device = self._device()
        (li, lv), (ui, uv) = assessment_pass(
            self.model,
            self.dataset,
            loss_indices=loss_idx,
            uncertainty_indices=unc_idx,
            at=self.at,
            k=self.k,
            alpha=self.alpha,
            loss_fn=self.loss_fn,
            output_fn=self.output_fn,
            uncertainty_fn=self.uncertainty_fn,
            activation=self.activation,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            batch_fn=self.batch_fn,
            device=device,
            generator=self._generator(device),
            chunk_rows=self.chunk_rows,
            loader=self.assessment_loader,
            forward_fn=self.forward_fn,
        )
        if li.size:
            self.tracker.update_loss(li, lv)
        if ui.size:
            self.tracker.update_uncertainty(ui, uv)

    def _capture(self, module, inputs, output):
        if module.training and torch.is_grad_enabled() and torch.is_tensor(output):
            self._captured = output.detach()

    def _capture_output(self, module, inputs, output):
        # The plain entropy of the training forward's own prediction (K = 1, no
        # noise): computed here, so that only (B,) values are kept.
        if module.training and torch.is_grad_enabled():
            with torch.no_grad():
                pred = self.output_fn(output).detach()
                act = _resolve_activation(self.activation, pred)
                probs = _to_probs(pred, act)
                self._captured = (
                    self.uncertainty_fn(probs)
                    if self.uncertainty_fn is not None
                    else prediction_entropy(probs, activation=act)
                )

    def _head_uncertainty(self, features: torch.Tensor) -> torch.Tensor:
        head = cast(Callable, self.head)  # the "train" schedules, the only ones that come here, require it
        ctx = _eval_mode(head) if isinstance(head, nn.Module) else torch.no_grad()
        with torch.no_grad(), ctx:
            pred = self.output_fn(head(_disturb(features, self.k, self.alpha, self._generator(features.device))))
            act = _resolve_activation(self.activation, pred)
            probs = _to_probs(pred, act)
            mean = probs.reshape(self.k, -1, *probs.shape[1:]).mean(dim=0)
        return (
            self.uncertainty_fn(mean) if self.uncertainty_fn is not None else prediction_entropy(mean, activation=act)
        )

    # ------------------------------------------------------------------ #
    # results and checkpoints

    def scores(self) -> np.ndarray:
        """``(N,)`` difficulty scores from the latest measurements, higher = harder."""
        return self.tracker.scores(self.measure)

    def quadrants(self, **kwargs) -> QuadrantResult:
        """The four quadrants of the latest measurements (see :func:`mombs.quadrants`).

        These are whatever the schedule measured last. Under the default
        ``reuse-loss`` (and every schedule that reads the training forward)
        the losses are the training pass's: train mode, a model that moved
        during the epoch, so the poorly-labeled quadrant is far less precise
        than after one eval-mode pass of the final model. For the label-issue
        table after training, call :func:`mombs.quality.measure_label_issues`
        (``mombs diagnose`` reads such a pass in a ``mombs train`` run).
        """
        return self.tracker.quadrants(**kwargs)

    def state_dict(self) -> dict:
        """The epoch, the tracker's values and the noise generator's state."""
        return {
            "epoch": self.epoch,
            "tracker": self.tracker.state_dict(),
            "generator": None if self._gen is None else self._gen.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restores :meth:`state_dict` and, once scores exist, hands them to the sampler."""
        self._pending, self._unread = [], []  # what was observed since is replaced by the state
        self.tracker.load_state_dict(state["tracker"])
        self.epoch = int(state["epoch"])
        self._forget_observed()
        if state.get("generator") is not None:
            self._gen = torch.Generator(device=self._device())
            self._gen.set_state(state["generator"].cpu())
        kinds = ("loss", "uncertainty") if self.measure == "both" else (self.measure,)
        if self.sampler is not None and self.active and all(self.tracker.measured(k).any() for k in kinds):
            self.sampler.set_scores(self.scores())

    def open(self) -> None:
        """Registers the forward hook of the ``train-*`` schedules, unless it is registered.

        The ``train-features`` schedule captures the output of ``at`` in the
        training forward, ``train-entropy`` the model's output; the other
        schedules need no hook and this does nothing. The constructor and
        :meth:`start_epoch` call it, so a plain loop never needs to; the
        integrations call it when a fit starts. Calling it again adds nothing:
        the model carries at most this one hook.
        """
        if self._hook is not None:
            return
        if self.schedule.uncertainty_source == "train":
            self._hook = self._at_module.register_forward_hook(self._capture)
        elif self.schedule.uncertainty_source == "output":
            self._hook = self.model.register_forward_hook(self._capture_output)

    def close(self) -> None:
        """Removes the hook that :meth:`open` registered, if any; calling it again does nothing.

        The integrations call it when a fit ends, so the user's network is left
        with no hook of mombs'; a later :meth:`start_epoch` (or :meth:`open`)
        registers it again.
        """
        hook, self._hook = self._hook, None
        self._captured = None
        if hook is not None:
            hook.remove()
