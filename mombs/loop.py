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
the data set it was given, keeps a :class:`~mombs.assessor.DifficultyTracker`,
merges ranks under ``torch.distributed`` and hands the scores to the sampler.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from .assessor import MEASURES, DifficultyTracker, QuadrantResult
from .noise import _check_noise_args, _disturb, _eval_mode, _resolve_activation, _to_probs, feature_noise_uncertainty, \
    find_module, prediction_entropy
from .schedule import DEFAULT_SCHEDULE, AssessmentSchedule, create_schedule

__all__ = ["DifficultyAssessor", "per_sample_loss"]


def per_sample_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with ``reduction="none"``, averaged to one value per sample.

    Args:
        logits: ``(B, C)`` or dense ``(B, C, *S)``.
        target: ``(B,)`` or ``(B, *S)`` class indices.

    Returns:
        ``(B,)`` losses.
    """
    loss = F.cross_entropy(logits, target, reduction="none")
    return loss.reshape(loss.shape[0], -1).mean(dim=1) if loss.ndim > 1 else loss


def _default_batch_fn(batch):
    return batch[0], batch[1], (batch[2] if len(batch) > 2 else None)


class DifficultyAssessor:
    """Measures per-sample difficulty during training and feeds a sampler.

    Args:
        model: the network being trained.
        dataset: the training set, with items ``(index, input, target, ...)``
            as :class:`~mombs.data.IndexedDataset` makes them. Assessment passes
            read it in order, without augmentation of their own.
        at: submodule whose output is disturbed for the uncertainty
            (``model.named_modules()`` name).
        sampler: a :class:`~mombs.MixedOrderBatchSampler` to feed, or ``None``.
        schedule: a name from :data:`mombs.schedule.SCHEDULES` or an
            :class:`~mombs.schedule.AssessmentSchedule`.
        k: disturbed predictions per sample (paper: 8).
        alpha: noise half-width (default 0.3).
        measure: ``"both"``, ``"loss"`` or ``"uncertainty"`` (ablations).
        pivot_epoch: first planned epoch; defaults to the sampler's, else 1.
        loss_fn: ``loss_fn(logits, target) -> (B,)`` for assessment passes that
            measure the loss; default :func:`per_sample_loss`.
        head: the network after ``at`` as a callable, needed by schedules that
            disturb the training forward's own features.
        batch_size: batch size of assessment passes.
        num_workers: ``DataLoader`` workers of assessment passes.
        device: where inputs go; defaults to the model's first parameter's device.
        batch_fn: ``batch -> (indices, inputs, targets)``; default reads
            ``batch[0], batch[1], batch[2]``.
        activation: ``"auto"``, ``"softmax"`` or ``"sigmoid"`` (see
            :func:`~mombs.feature_noise_uncertainty`).
        seed: seed of the noise and of the rotating split.
    """

    def __init__(self, model: nn.Module, dataset, *, at: str, sampler=None,
                 schedule: str | AssessmentSchedule = DEFAULT_SCHEDULE, k: int = 8,
                 alpha: float = 0.3, measure: str = "both", pivot_epoch: int | None = None,
                 loss_fn: Callable | None = None, head: Callable | None = None,
                 batch_size: int = 256, num_workers: int = 0, device=None,
                 batch_fn: Callable | None = None, activation: str = "auto", seed: int = 0):
        self.schedule = create_schedule(schedule)
        if measure not in MEASURES:
            raise ValueError(f"measure={measure!r} is not known; choose one of {list(MEASURES)}")
        _check_noise_args(k, alpha, activation)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1")
        if self.schedule.uncertainty_source == "train" and head is None:
            raise ValueError(f"schedule={self.schedule.name!r} disturbs the training features and "
                             f"needs head=, the network after {at!r}")
        self._at_module = find_module(model, at)
        if pivot_epoch is None:
            pivot_epoch = getattr(sampler, "pivot_epoch", 1)
        if isinstance(pivot_epoch, bool) or not isinstance(pivot_epoch, int) or pivot_epoch < 0:
            raise ValueError(f"pivot_epoch={pivot_epoch!r} must be an integer >= 0")
        self.model, self.dataset, self.at, self.sampler = model, dataset, at, sampler
        self.k, self.alpha, self.measure, self.pivot_epoch = k, float(alpha), measure, pivot_epoch
        self.loss_fn = loss_fn or per_sample_loss
        self.head, self.batch_size, self.num_workers = head, batch_size, num_workers
        self.device = device
        self.batch_fn = batch_fn or _default_batch_fn
        self.activation, self.seed = activation, seed
        self.tracker = DifficultyTracker(len(dataset))
        self.epoch = 0
        self._gen: torch.Generator | None = None
        self._captured: torch.Tensor | None = None
        self._hook = None
        if self.schedule.uncertainty_source == "train":
            self._hook = self._at_module.register_forward_hook(self._capture)

    # ------------------------------------------------------------------ #
    # the user's three calls

    @property
    def active(self) -> bool:
        """Whether this epoch's measurements feed a plan."""
        return self.epoch >= self.schedule.first_epoch(self.pivot_epoch)

    def start_epoch(self, epoch: int) -> None:
        """Call before each epoch's training pass; sets the sampler's epoch too."""
        self.tracker.set_epoch(epoch)
        self.epoch = int(epoch)
        self._captured = None
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def observe(self, indices, loss: torch.Tensor) -> None:
        """Record one training step's per-sample losses.

        Args:
            indices: ``(B,)`` data set indices of the batch.
            loss: ``(B,)`` per-sample losses (``reduction="none"``); detached here.
        """
        captured, self._captured = self._captured, None
        if not self.active:
            return
        if self.schedule.loss_source == "train":
            self.tracker.update_loss(indices, loss.detach())
        if self.schedule.uncertainty_source == "train" and self.measure != "loss":
            if captured is None:
                raise RuntimeError(f"no features were captured at {self.at!r} in this step; "
                                   f"call observe() right after the training forward")
            self.tracker.update_uncertainty(indices, self._head_uncertainty(captured))

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
        if self.sampler is not None and self.epoch + 1 >= self.pivot_epoch:
            self.sampler.set_scores(scores)
        return scores

    # ------------------------------------------------------------------ #
    # measuring

    def _device(self):
        if self.device is not None:
            return torch.device(self.device)
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def _generator(self, device) -> torch.Generator:
        if self._gen is None or self._gen.device != device:
            self._gen = torch.Generator(device=device).manual_seed(self.seed)
        return self._gen

    def _assess(self, loss_idx: np.ndarray, unc_idx: np.ndarray) -> None:
        """One eval-mode pass over the union of both index sets, split across ranks."""
        idx = np.union1d(loss_idx, unc_idx)
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            idx = idx[dist.get_rank()::dist.get_world_size()]
        want_loss = np.isin(idx, loss_idx) if loss_idx.size else None
        want_unc = np.isin(idx, unc_idx) if unc_idx.size else None
        loader = DataLoader(Subset(self.dataset, idx.tolist()), batch_size=self.batch_size,
                            shuffle=False, num_workers=self.num_workers)
        device = self._device()
        gen = self._generator(device)
        pos = 0
        for batch in loader:
            indices, inputs, targets = self.batch_fn(batch)
            b = len(indices)
            inputs = inputs.to(device, non_blocking=True)
            sel = slice(pos, pos + b)
            pos += b
            if want_loss is not None and want_loss[sel].any():
                with torch.no_grad(), _eval_mode(self.model):
                    loss = self.loss_fn(self.model(inputs), targets.to(device))
                m = want_loss[sel]
                self.tracker.update_loss(np.asarray(indices)[m], loss[torch.from_numpy(m).to(loss.device)])
            if want_unc is not None and want_unc[sel].any():
                m = want_unc[sel]
                sub = inputs[torch.from_numpy(m).to(device)]
                unc = feature_noise_uncertainty(self.model, sub, at=self.at, k=self.k, alpha=self.alpha,
                                                activation=self.activation, generator=gen)
                self.tracker.update_uncertainty(np.asarray(indices)[m], unc)

    def _capture(self, module, inputs, output):
        if module.training and torch.is_grad_enabled() and torch.is_tensor(output):
            self._captured = output.detach()

    def _head_uncertainty(self, features: torch.Tensor) -> torch.Tensor:
        head = self.head
        ctx = _eval_mode(head) if isinstance(head, nn.Module) else torch.no_grad()
        with torch.no_grad(), ctx:
            logits = head(_disturb(features, self.k, self.alpha, self._generator(features.device)))
            act = _resolve_activation(self.activation, logits)
            probs = _to_probs(logits, act)
            mean = probs.reshape(self.k, -1, *probs.shape[1:]).mean(dim=0)
        return prediction_entropy(mean, activation=act)

    # ------------------------------------------------------------------ #
    # results and checkpoints

    def scores(self) -> np.ndarray:
        """``(N,)`` difficulty scores from the latest measurements, higher = harder."""
        return self.tracker.scores(self.measure)

    def quadrants(self, **kwargs) -> QuadrantResult:
        """The four quadrants of the latest measurements (see :func:`mombs.quadrants`)."""
        return self.tracker.quadrants(**kwargs)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "tracker": self.tracker.state_dict(),
                "generator": None if self._gen is None else self._gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.tracker.load_state_dict(state["tracker"])
        self.epoch = int(state["epoch"])
        if state.get("generator") is not None:
            self._gen = torch.Generator(device=self._device())
            self._gen.set_state(state["generator"].cpu())
        if self.sampler is not None and self.active and self.tracker.measured().any():
            self.sampler.set_scores(self.scores())

    def close(self) -> None:
        """Removes the feature hook of the ``train-features`` schedule, if any."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
