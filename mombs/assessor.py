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

from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from ._checks import check_int
from .assessment import _default_batch_fn, _normal_device, _task_io, _task_parts, assessment_pass
from .difficulty import MEASURES, DifficultyTracker, QuadrantResult
from .noise import _check_noise_args, _disturb, _eval_mode, _resolve_activation, _to_probs, find_module, \
    prediction_entropy
from .schedule import DEFAULT_PIVOT_EPOCH, DEFAULT_SCHEDULE, AssessmentSchedule, create_schedule, planned
from .tasks import TaskAdapter

__all__ = ["DifficultyAssessor"]


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

    def __init__(self, model: nn.Module, dataset, *, at: str, sampler=None,
                 schedule: str | AssessmentSchedule = DEFAULT_SCHEDULE, k: int = 8,
                 alpha: float = 0.3, measure: str = "both", pivot_epoch: int | None = None,
                 task: str | TaskAdapter = "classification", loss_fn: Callable | None = None,
                 output_fn: Callable | None = None, uncertainty_fn: Callable | None = None,
                 activation: str | None = None, head: Callable | None = None,
                 batch_size: int = 256, num_workers: int = 0, collate_fn: Callable | None = None,
                 device=None, batch_fn: Callable | None = None, chunk_rows: int | None = None,
                 seed: int = 0, assessment_loader=None, forward_fn: Callable | None = None,
                 keep_history: bool = False):
        self.schedule = create_schedule(schedule)
        if measure not in MEASURES:
            raise ValueError(f"measure={measure!r} is not known; choose one of {list(MEASURES)}")
        loss_fn, output_fn, uncertainty_fn, activation = _task_parts(task, loss_fn, output_fn, uncertainty_fn,
                                                                     activation)
        forward_fn, collate_fn = _task_io(task, forward_fn, collate_fn)
        _check_noise_args(k, alpha, activation)
        for name, value, low in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0), ("seed", seed, 0)):
            check_int(name, value, low)
        check_int("chunk_rows", chunk_rows, 1, optional=True)
        if assessment_loader is not None and not hasattr(assessment_loader, "__iter__"):
            raise ValueError(f"assessment_loader={assessment_loader!r} must be an iterable of batches")
        for name, fn in (("loss_fn", loss_fn), ("output_fn", output_fn), ("head", head),
                         ("forward_fn", forward_fn)):
            if fn is not None and not callable(fn):
                raise ValueError(f"{name}={fn!r} must be callable")
        if self.schedule.uncertainty_source == "train" and head is None:
            raise ValueError(f"schedule={self.schedule.name!r} disturbs the training features and "
                             f"needs head=, the network after {at!r}")
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
        self._pending: list[tuple[str, object, torch.Tensor]] = []
        self.epoch = 0
        self._gen: torch.Generator | None = None
        self._captured: torch.Tensor | None = None
        self._hook = None
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

    def observe(self, indices, loss: torch.Tensor) -> None:
        """Record one training step's per-sample losses.

        Args:
            indices: ``(B,)`` data set indices of the batch.
            loss: ``(B,)`` per-sample losses (``reduction="none"``), any float
                dtype (bfloat16 and float16 from autocast included); detached here.
        """
        captured, self._captured = self._captured, None
        step = []  # checked in full before anything is kept, so a refused call changes nothing
        if self.active and self.schedule.loss_source == "train":
            step.append(self._checked("loss", indices, loss))
        if self.active and self.schedule.uncertainty_source in ("train", "output") and self.measure != "loss":
            if captured is None:
                where = self.at if self.schedule.uncertainty_source == "train" else "the model's output"
                raise RuntimeError(f"nothing was captured at {where!r} in this step; "
                                   f"call observe() right after the training forward")
            unc = (self._head_uncertainty(captured) if self.schedule.uncertainty_source == "train"
                   else captured)
            step.append(self._checked("uncertainty", indices, unc))
        self._pending.extend(step)
        if self.sampler is not None and callable(getattr(self.sampler, "note_consumed", None)):
            self.sampler.note_consumed()  # where the loop really is, whatever a loader prefetched

    def _checked(self, kind: str, indices, values) -> tuple[str, torch.Tensor, torch.Tensor]:
        """A step's values, kept where they are: shapes are checked now, values at the flush."""
        if not torch.is_tensor(values):
            raise ValueError(f"observe() needs the per-sample {kind} as a tensor, got {type(values).__name__}")
        n = len(indices) if hasattr(indices, "__len__") else -1
        if values.ndim != 1 or values.shape[0] != n:
            raise ValueError(f"observe() got {kind} of shape {tuple(values.shape)} for {n} indices; pass "
                             f"per-sample values (reduction='none') of shape (B,) with the batch's (B,) "
                             f"indices")
        if not torch.is_tensor(indices):
            indices = torch.as_tensor(np.asarray(indices))
        if indices.ndim != 1 or indices.dtype.is_floating_point or indices.dtype.is_complex:
            raise ValueError(f"observe() needs the batch's (B,) integer data set indices, got a {indices.dtype} "
                             f"tensor of shape {tuple(indices.shape)}; wrap the data set in "
                             f"mombs.IndexedDataset so that batches carry (index, x, y)")
        return kind, indices.detach(), values.detach()

    def _flush(self) -> None:
        """Moves the pending training-step values into the tracker, one host copy per kind."""
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
            try:
                getattr(self._tracker, f"update_{kind}")(idx, vals)
            except ValueError as err:
                raise ValueError(f"observe() in epoch {self._tracker.epoch} got bad per-sample {kind}: "
                                 f"{err}") from err

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
        part = (self.schedule.uncertainty_part(self.epoch, self.pivot_epoch)
                if self.schedule.uncertainty_source == "pass" and self.measure != "loss" else None)
        want_loss = self.schedule.loss_source == "pass"
        if want_loss or part is not None:
            n = len(self.dataset)
            loss_idx = np.arange(n) if want_loss else np.zeros(0, dtype=np.int64)
            unc_idx = (self.schedule.part_indices(part, n, self.seed) if part is not None
                       else np.zeros(0, dtype=np.int64))
            self._assess(loss_idx, unc_idx)
        self.tracker.sync()
        scores = self.tracker.scores(self.measure)
        if self.sampler is not None and planned(self.epoch + 1, self.pivot_epoch):
            self.sampler.set_scores(scores)
        return scores

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
        device = self._device()
        (li, lv), (ui, uv) = assessment_pass(
            self.model, self.dataset, loss_indices=loss_idx, uncertainty_indices=unc_idx, at=self.at,
            k=self.k, alpha=self.alpha, loss_fn=self.loss_fn, output_fn=self.output_fn,
            uncertainty_fn=self.uncertainty_fn, activation=self.activation, batch_size=self.batch_size,
            num_workers=self.num_workers, collate_fn=self.collate_fn, batch_fn=self.batch_fn,
            device=device, generator=self._generator(device), chunk_rows=self.chunk_rows,
            loader=self.assessment_loader, forward_fn=self.forward_fn)
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
                self._captured = (self.uncertainty_fn(probs) if self.uncertainty_fn is not None
                                  else prediction_entropy(probs, activation=act))

    def _head_uncertainty(self, features: torch.Tensor) -> torch.Tensor:
        head = self.head
        ctx = _eval_mode(head) if isinstance(head, nn.Module) else torch.no_grad()
        with torch.no_grad(), ctx:
            pred = self.output_fn(head(_disturb(features, self.k, self.alpha,
                                                self._generator(features.device))))
            act = _resolve_activation(self.activation, pred)
            probs = _to_probs(pred, act)
            mean = probs.reshape(self.k, -1, *probs.shape[1:]).mean(dim=0)
        return (self.uncertainty_fn(mean) if self.uncertainty_fn is not None
                else prediction_entropy(mean, activation=act))

    # ------------------------------------------------------------------ #
    # results and checkpoints

    def scores(self) -> np.ndarray:
        """``(N,)`` difficulty scores from the latest measurements, higher = harder."""
        return self.tracker.scores(self.measure)

    def quadrants(self, **kwargs) -> QuadrantResult:
        """The four quadrants of the latest measurements (see :func:`mombs.quadrants`)."""
        return self.tracker.quadrants(**kwargs)

    def state_dict(self) -> dict:
        """The epoch, the tracker's values and the noise generator's state."""
        return {"epoch": self.epoch, "tracker": self.tracker.state_dict(),
                "generator": None if self._gen is None else self._gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restores :meth:`state_dict` and, once scores exist, hands them to the sampler."""
        self._pending = []  # what was observed since is replaced by the state
        self.tracker.load_state_dict(state["tracker"])
        self.epoch = int(state["epoch"])
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
