"""MoMBS under the Hugging Face ``Trainer``: :class:`MoMBSTrainer`.

.. code-block:: python

    from mombs.integrations.transformers import MoMBSTrainer

    args = TrainingArguments("out", per_device_train_batch_size=16, num_train_epochs=10)
    sampler = mombs.MixedOrderBatchSampler(train_set, 16, pivot_epoch=2)  # after TrainingArguments
    trainer = MoMBSTrainer(model=model, args=args, train_dataset=train_set,
                           sampler=sampler, at="bert.pooler")              # the feature map to disturb
    trainer.train()                                 # also trainer.train(resume_from_checkpoint=True)
    trainer.assessor.quadrants()

``train_set`` is the data set as the plain ``Trainer`` takes it: items are
mappings of model inputs and labels (a ``datasets.Dataset``, or a torch data set
returning dicts). It needs no index column.

Why a subclass; each point checked against the installed sources
(``transformers/trainer.py``, ``accelerate/data_loader.py``):

- ``Trainer`` hands ``_get_train_sampler()``'s result to its ``DataLoader`` as
  ``sampler=`` and batches it by ``per_device_train_batch_size``. A batch
  sampler has to go in as ``batch_sampler=``, so
  :meth:`MoMBSTrainer.get_train_dataloader` builds the loader itself.
- ``accelerator.prepare`` wraps a loader's batch sampler in
  ``BatchSamplerShard``, which under ``n`` processes keeps every ``n``-th batch.
  A :class:`~mombs.MixedOrderBatchSampler` already yields only this rank's
  share, so that would shard a second time and drop ``(n - 1) / n`` of each
  epoch. The loader goes through accelerate's ``prepare_data_loader`` with
  ``num_processes=1`` instead (see :meth:`MoMBSTrainer.get_train_dataloader`).
- ``Trainer.compute_loss`` returns the model's reduced loss; the assessor needs
  per-sample losses, so :meth:`MoMBSTrainer.compute_loss` computes them.
- ``remove_unused_columns`` (default ``True``) drops every field that the
  model's ``forward`` does not name, an index column included. The trainer
  therefore adds each item's index itself, after that filter, and takes it out
  of the batch before the forward: the setting keeps its meaning and the data
  set needs no index column.

Gradient accumulation: the loss of a micro-batch is the mean of its per-sample
losses, and the Trainer divides it by the number of micro-batches in the
optimizer step (``loss_is_scaled_for_ga = False``; ``model_accepts_loss_kwargs``
is set to ``False`` so that no ``num_items_in_batch`` is counted). Every sample
of a step thus weighs the same except in the last, shorter batch of an epoch
(``drop_last=False``), as with the plain Trainer and a model that does not take
``num_items_in_batch``. Evaluation keeps the Trainer's own loss.

Checkpoints: each one the Trainer saves gets a ``mombs_state.pt`` (one file per
process, ``mombs_state_<rank>.pt``, under several) with the assessor's
measurements and noise generator and the sampler's scores. A resume
(``trainer.train(resume_from_checkpoint=...)``) restores them before training
starts: the Trainer skips the batches already trained and the sampler replays
the epoch's plan from the same scores, so the resumed run trains the batches an
uninterrupted one would have. A checkpoint taken at an epoch's last step
(``save_strategy="steps"``) precedes that epoch's assessment; the resumed run
makes it first. A checkpoint without the file (a run without mombs) resumes
with a warning and fresh measurements.

Not supported: ``model_init`` (the assessor measures the model it was given),
``compute_loss_func`` (pass ``per_sample_loss_fn``), ``auto_find_batch_size``,
a ``train_sampling_strategy`` other than ``"random"``, accelerate's
``split_batches``, FSDP and DeepSpeed (untested). Nothing in transformers,
accelerate or torch is patched. Importing this module imports transformers.
"""

from __future__ import annotations

import inspect
import math
import os
import warnings
from collections.abc import Callable, Mapping
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

try:
    from accelerate.data_loader import prepare_data_loader
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
except ImportError as err:  # the extra is optional; say which one to install
    raise ImportError(
        "mombs.integrations.transformers needs transformers (>= 4.40) and accelerate: pip install 'mombs[transformers]'"
    ) from err

from ..assessor import DifficultyAssessor
from ..noise import default_output_fn
from ..sampler import MixedOrderBatchSampler

__all__ = ["INDEX_KEY", "MoMBSTrainer", "MoMBSTrainerCallback", "sequence_classification_loss"]

#: Batch entry that carries the data set indices of the samples, ``(B,)`` int64.
INDEX_KEY = "mombs_index"

_STATE_VERSION = 1
# Set by the trainer itself, so not accepted in ``assessor_options``.
_RESERVED_OPTIONS = ("model", "dataset", "at", "sampler", "collate_fn", "batch_fn")


def sequence_classification_loss(outputs, labels: torch.Tensor, *, label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-sample loss of a sequence classifier, one value per sample.

    The problem type is read from the shapes, as ``*ForSequenceClassification``
    reads it when ``config.problem_type`` is unset: one logit is regression
    (squared error); integer labels ``(B,)`` are single-label classification
    (cross-entropy; a label of ``-100`` gives 0); float labels ``(B, C)`` are
    multi-label (binary cross-entropy averaged over the ``C`` labels).

    Args:
        outputs: the model's output: a ``ModelOutput`` or dict with ``logits``,
            or the ``(B, C)`` logits.
        labels: ``(B,)`` class indices, ``(B,)`` regression targets, or
            ``(B, C)`` multi-label targets in ``[0, 1]``.
        label_smoothing: label smoothing of the single-label case, ``[0, 1)``
            (``TrainingArguments.label_smoothing_factor``).

    Returns:
        ``(B,)`` float32 losses, higher = worse fit.
    """
    logits = default_output_fn(outputs)
    if logits.ndim != 2 or labels.ndim == 0 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"sequence_classification_loss needs (B, C) logits and labels with B rows, got logits "
            f"{tuple(logits.shape)} and labels {tuple(labels.shape)}; pass per_sample_loss_fn= "
            f"for other outputs"
        )
    if logits.shape[1] == 1:
        return (logits[:, 0].float() - labels.reshape(logits.shape[0], -1)[:, 0].float()) ** 2
    if labels.ndim == 1 and not labels.is_floating_point():
        return F.cross_entropy(logits.float(), labels.long(), reduction="none", label_smoothing=label_smoothing)
    if labels.shape == logits.shape:
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none").mean(dim=1)
    raise ValueError(
        f"labels {tuple(labels.shape)} ({labels.dtype}) fit no classification of logits "
        f"{tuple(logits.shape)}: single-label wants (B,) integers, multi-label (B, C) floats; "
        f"pass per_sample_loss_fn= for other targets"
    )


# ---------------------------------------------------------------------- #
# the data path: index in, index past the collator, index out


class _IndexedItems(Dataset):
    """The training set with each item's own index added under ``key``.

    Items must be mappings (dicts of model inputs). Batched reads go through the
    wrapped set's ``__getitems__`` when it has one (``datasets.Dataset`` does).
    """

    def __init__(self, dataset, key: str):
        self.dataset, self.key = dataset, key

    def __len__(self) -> int:
        return len(self.dataset)

    def _tag(self, index, item) -> dict:
        if not isinstance(item, Mapping):
            raise ValueError(
                f"train_dataset item {index} is a {type(item).__name__}; MoMBSTrainer needs items "
                f"that are mappings of model inputs and labels (dicts, as Hugging Face datasets "
                f"return them)"
            )
        if self.key in item:
            raise ValueError(
                f"train_dataset item {index} already has a {self.key!r} field, the name MoMBSTrainer "
                f"adds the index under; pass index_key= another name"
            )
        return {**item, self.key: int(index)}

    def __getitem__(self, index) -> dict:
        return self._tag(index, self.dataset[index])

    def __getitems__(self, indices) -> list[dict]:
        many = getattr(self.dataset, "__getitems__", None)
        items = many(list(indices)) if many is not None else [self.dataset[i] for i in indices]
        return [self._tag(i, item) for i, item in zip(indices, items)]


class _IndexCollator:
    """The trainer's collator, with the indices handed past it.

    The index is taken out of every feature, the others are filtered as
    ``remove_unused_columns`` filters them (``keep``; ``None`` keeps all) and
    collated, and the indices join the batch as a ``(B,)`` int64 tensor. The
    collator never sees the index, so padding collators and the column filter
    leave it alone.
    """

    def __init__(self, collate_fn: Callable, key: str, keep: frozenset | None, model_name: str):
        self.collate_fn, self.key, self.keep, self.model_name = collate_fn, key, keep, model_name

    def __call__(self, features) -> dict:
        indices = torch.tensor([f[self.key] for f in features], dtype=torch.long)
        rest = [
            {k: v for k, v in f.items() if k != self.key and (self.keep is None or k in self.keep)} for f in features
        ]
        if rest and not rest[0]:
            fields = sorted(k for k in features[0] if k != self.key)
            raise ValueError(
                f"no field of the training items ({fields}) is an argument of "
                f"{self.model_name}.forward ({sorted(self.keep or ())}); rename them, or set "
                f"TrainingArguments(remove_unused_columns=False)"
            )
        batch = self.collate_fn(rest)
        if not isinstance(batch, Mapping):
            raise ValueError(
                f"data_collator returned a {type(batch).__name__}; MoMBSTrainer needs a mapping of model inputs"
            )
        return {**batch, self.key: indices}


class _BatchSplit:
    """``batch -> (indices, model inputs, targets)``: the training step's and the assessment's split."""

    def __init__(self, key: str, label_names: list[str]):
        self.key, self.label_names = key, list(label_names)

    def __call__(self, batch):
        if not isinstance(batch, Mapping) or self.key not in batch:
            got = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
            raise ValueError(
                f"the training batch has no {self.key!r} entry (it has {got}); "
                f"MoMBSTrainer.get_train_dataloader adds it, so an overridden get_train_dataloader "
                f"must keep it"
            )
        inputs = dict(batch)
        indices = inputs.pop(self.key)
        missing = [name for name in self.label_names if name not in inputs]
        if missing:
            raise ValueError(
                f"the training batch has no {missing} (label_names={self.label_names}); per-sample "
                f"losses need the targets: set TrainingArguments(label_names=...) to the batch's "
                f"label fields"
            )
        if len(self.label_names) == 1:
            targets = inputs.pop(self.label_names[0])
        else:
            targets = {name: inputs.pop(name) for name in self.label_names}
        return indices, inputs, targets


class _KeywordModel(nn.Module):
    """A Transformers model seen through the core's ``model(inputs)`` call.

    The assessor and the feature noise call the model with one object; a
    Transformers model takes keyword arguments, so ``forward`` unpacks the dict.
    Modules, parameters and forward hooks are the wrapped model's own: ``at=``
    names are those of ``model.named_modules()``, and an output hook (the
    ``train-entropy`` schedule) fires in the Trainer's training forward.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.wrapped = model

    def forward(self, inputs):
        return self.wrapped(**inputs)

    def named_modules(self, memo=None, prefix: str = "", remove_duplicate: bool = True):
        return self.wrapped.named_modules(memo, prefix, remove_duplicate)

    def register_forward_hook(self, hook, *args, **kwargs):
        return self.wrapped.register_forward_hook(hook, *args, **kwargs)


def _state_file(args) -> str:
    # One file per process, as the Trainer's own rng_state_<rank>.pth: mid-epoch,
    # each rank's tracker holds measurements the others have not synced yet.
    return "mombs_state.pt" if args.world_size <= 1 else f"mombs_state_{args.process_index}.pt"


# ---------------------------------------------------------------------- #
# the epoch calls and the checkpoints


class MoMBSTrainerCallback(TrainerCallback):
    """Makes the assessor's epoch calls at the Trainer's epoch hooks and saves mombs' state in checkpoints.

    :class:`MoMBSTrainer` adds it; it is public so that its state can be read.
    ``on_epoch_begin`` calls ``assessor.start_epoch(epoch)`` (which sets the
    sampler's epoch too), ``on_epoch_end`` calls ``assessor.end_epoch()`` (the
    assessment pass, the merge across ranks, the scores for the next plan) and
    ``on_save`` writes :meth:`state_dict` into the checkpoint folder.

    Args:
        assessor: the :class:`~mombs.DifficultyAssessor`.
        sampler: the :class:`~mombs.MixedOrderBatchSampler` it feeds.
    """

    def __init__(self, assessor: DifficultyAssessor, sampler: MixedOrderBatchSampler):
        self.assessor, self.sampler = assessor, sampler
        self.epoch: int | None = None  # the epoch whose start_epoch ran last
        self.ended = False  # whether that epoch's end_epoch ran too

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch counts the epochs done: exactly e + 1.0 after epoch e's last
        # step ((step + 1) / steps_in_epoch is 1.0 there), e + s / steps mid-epoch
        # on a resume; its floor is the epoch starting now.
        epoch = int(math.floor(state.epoch or 0))
        if self.epoch is not None and not self.ended and self.epoch < epoch:
            # Resumed from a checkpoint saved at epoch self.epoch's last step, before
            # its end_epoch: the weights are those of that moment, so measure now.
            self.assessor.end_epoch()
        self.assessor.start_epoch(epoch)
        self.epoch, self.ended = epoch, False

    def on_epoch_end(self, args, state, control, **kwargs):
        self.assessor.end_epoch()
        self.ended = True

    def on_save(self, args, state, control, **kwargs):
        if state.is_hyper_param_search:
            # The checkpoint then lives in a trial's run folder, which callbacks are not told.
            warnings.warn(
                "MoMBSTrainerCallback does not save mombs' state during a hyperparameter search", stacklevel=2
            )
            return
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        # Other ranks may get here before the main process has made the folder.
        os.makedirs(folder, exist_ok=True)
        torch.save(self.state_dict(), os.path.join(folder, _state_file(args)))

    def state_dict(self) -> dict:
        """The assessor's and the sampler's state and the epoch bookkeeping.

        The sampler's state is taken as at the start of its epoch
        (``batches_done=0``): on a resume the Trainer itself skips the batches
        already trained, and skipping them in the sampler too would skip twice.
        """
        return {
            "version": _STATE_VERSION,
            "epoch": self.epoch,
            "ended": self.ended,
            "assessor": self.assessor.state_dict(),
            "sampler": self.sampler.state_dict(batches_done=0),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restores :meth:`state_dict`."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(
                f"mombs state version {state.get('version')!r} is not {_STATE_VERSION}, the one this mombs writes"
            )
        # The assessor first: once it holds scores it hands them to the sampler,
        # and the sampler's own state must win (it holds the scores this epoch
        # was planned from, not ones that include this epoch's partial losses).
        self.assessor.load_state_dict(state["assessor"])
        self.sampler.load_state_dict(state["sampler"])
        self.epoch = None if state["epoch"] is None else int(state["epoch"])
        self.ended = bool(state["ended"])

    def load(self, checkpoint: str, args) -> bool:
        """Loads the state saved in ``checkpoint`` (a folder) for this process.

        Returns:
            Whether a state was found; a missing one is a warning, not an error.
        """
        path = os.path.join(checkpoint, _state_file(args))
        if not os.path.isfile(path):
            warnings.warn(
                f"{checkpoint} holds no {_state_file(args)} (a checkpoint of a run without mombs?); "
                f"the sampler and the assessor start afresh",
                stacklevel=2,
            )
            return False
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return True


# ---------------------------------------------------------------------- #
# the trainer


class MoMBSTrainer(Trainer):
    """A ``transformers.Trainer`` that trains with a :class:`~mombs.MixedOrderBatchSampler`.

    It builds the training loader around the sampler, computes per-sample
    losses and hands them to a :class:`~mombs.DifficultyAssessor` it creates
    (:attr:`assessor`), runs the assessor at every epoch's start and end, and
    saves and restores both in checkpoints (see the module docstring for each
    choice). Every other argument is the ``Trainer``'s.

    Args:
        *args: ``Trainer``'s positional arguments.
        sampler: the batch sampler, built over ``train_dataset`` after the
            ``TrainingArguments`` (which start ``torch.distributed``): its
            ``batch_size`` is ``args.train_batch_size`` and its replicas are
            the processes.
        at: the submodule whose output is disturbed for the uncertainty, a
            name from ``model.named_modules()`` (e.g. ``"bert.pooler"``).
        assessor_options: further :class:`~mombs.DifficultyAssessor` arguments
            (``schedule``, ``k``, ``alpha``, ``measure``, ``batch_size``,
            ``head``, ...). ``loss_fn`` defaults to ``per_sample_loss_fn``, and
            ``activation`` to ``"sigmoid"`` for a model configured as
            ``multi_label_classification``.
        per_sample_loss_fn: ``(outputs, targets) -> (B,)`` per-sample losses,
            ``outputs`` being the model's output and ``targets`` the batch's
            ``label_names`` entry (a dict of them when there are several).
            Default :func:`sequence_classification_loss` with the arguments'
            ``label_smoothing_factor``.
        index_key: the batch entry that carries the indices, a name no item uses.
        **kwargs: ``Trainer``'s keyword arguments; ``train_dataset`` is required.

    Attributes:
        sampler: the sampler.
        assessor: the :class:`~mombs.DifficultyAssessor`; its ``model`` is a thin
            view of this trainer's model and its ``dataset`` the training set
            with indices, so ``trainer.assessor.quadrants()`` and
            ``trainer.assessor.scores()`` read the latest measurements.
        mombs_callback: the :class:`MoMBSTrainerCallback` that drives it.

    Raises:
        ValueError: for a sampler that does not match the arguments (size,
            batch size, replicas, ``drop_last``), unknown or reserved
            ``assessor_options``, and the unsupported settings listed in the
            module docstring.
    """

    # The loss compute_loss returns is a micro-batch mean: training_step is to
    # divide it by the accumulation steps (read by the installed 5.x training_step).
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args,
        sampler: MixedOrderBatchSampler,
        at: str,
        assessor_options: Mapping | None = None,
        per_sample_loss_fn: Callable | None = None,
        index_key: str = INDEX_KEY,
        **kwargs,
    ):
        if not isinstance(sampler, MixedOrderBatchSampler):
            raise ValueError(f"sampler={sampler!r} must be a mombs.MixedOrderBatchSampler")
        if not isinstance(at, str) or not at:
            raise ValueError(f"at={at!r} must be the name of a submodule (model.named_modules())")
        if assessor_options is not None and not isinstance(assessor_options, Mapping):
            raise ValueError(
                f"assessor_options={assessor_options!r} must be a dict of DifficultyAssessor arguments or None"
            )
        if per_sample_loss_fn is not None and not callable(per_sample_loss_fn):
            raise ValueError(f"per_sample_loss_fn={per_sample_loss_fn!r} must be callable or None")
        if not isinstance(index_key, str) or not index_key:
            raise ValueError(f"index_key={index_key!r} must be a non-empty string")
        super().__init__(*args, **kwargs)
        self.sampler = sampler
        self.index_key = index_key
        self._check_setup()
        # compute_loss reduces the per-sample losses itself: no num_items_in_batch
        # is to be counted or handed to the model. Versions without
        # loss_is_scaled_for_ga decide the division by the accumulation steps from
        # this flag (untested here: only the installed version is).
        self.model_accepts_loss_kwargs = False
        self.per_sample_loss_fn = per_sample_loss_fn or partial(
            sequence_classification_loss, label_smoothing=float(self.args.label_smoothing_factor)
        )
        self._split = _BatchSplit(index_key, list(self.label_names))
        self.assessor = self._create_assessor(at, dict(assessor_options or {}))
        self.mombs_callback = MoMBSTrainerCallback(self.assessor, sampler)
        self.add_callback(self.mombs_callback)

    # ------------------------------------------------------------------ #
    # checks and construction

    def _check_setup(self) -> None:
        args, sampler = self.args, self.sampler
        if self.model_init is not None:
            raise ValueError(
                "model_init= is not supported by MoMBSTrainer: the assessor measures the model it "
                "was built with; pass model="
            )
        if self.compute_loss_func is not None:
            raise ValueError(
                "compute_loss_func= is not supported by MoMBSTrainer, whose loss is the mean of "
                "per-sample losses; pass per_sample_loss_fn=(outputs, targets) -> (B,) instead"
            )
        if self.train_dataset is None:
            raise ValueError("train_dataset=None: MoMBSTrainer plans the training set's batches and needs it")
        if not hasattr(self.train_dataset, "__len__") or not hasattr(self.train_dataset, "__getitem__"):
            raise ValueError(
                f"train_dataset={type(self.train_dataset).__name__} must be map-style "
                f"(__len__ and __getitem__); an IterableDataset has no indices to plan"
            )
        first = self.train_dataset[0] if len(self.train_dataset) else {}
        if not isinstance(first, Mapping):
            raise ValueError(
                f"train_dataset items are {type(first).__name__}s; MoMBSTrainer needs mappings of "
                f"model inputs and labels (dicts, as Hugging Face datasets return them)"
            )
        if self.index_key in first:
            raise ValueError(
                f"train_dataset items already have a {self.index_key!r} field, the name the index "
                f"is added under; pass index_key= another name"
            )
        if len(self.train_dataset) != sampler.num_samples_total:
            raise ValueError(
                f"sampler covers {sampler.num_samples_total} samples but train_dataset has "
                f"{len(self.train_dataset)}; build the sampler over the training set"
            )
        if sampler.batch_size != args.train_batch_size:
            raise ValueError(
                f"sampler.batch_size={sampler.batch_size} but the arguments' train_batch_size is "
                f"{args.train_batch_size} (per_device_train_batch_size="
                f"{args.per_device_train_batch_size}, n_gpu={args.n_gpu}); the sampler makes the "
                f"batches, so set the two equal"
            )
        if (sampler.num_replicas, sampler.rank) != (args.world_size, args.process_index):
            raise ValueError(
                f"sampler has num_replicas={sampler.num_replicas}, rank={sampler.rank} but this "
                f"process is {args.process_index} of {args.world_size}; build the sampler after "
                f"TrainingArguments (which starts torch.distributed), or pass "
                f"num_replicas=args.world_size, rank=args.process_index"
            )
        if bool(args.dataloader_drop_last) != sampler.drop_last:
            raise ValueError(
                f"dataloader_drop_last={args.dataloader_drop_last} but sampler.drop_last="
                f"{sampler.drop_last}; the sampler decides, so set the two equal"
            )
        if args.auto_find_batch_size:
            raise ValueError("auto_find_batch_size=True is not supported: the sampler's batch size is fixed")
        strategy = getattr(args, "train_sampling_strategy", "random")
        if strategy != "random" or getattr(args, "group_by_length", False):
            raise ValueError(
                f"train_sampling_strategy={strategy!r} would be ignored: the mombs sampler decides "
                f"the order; leave it at 'random'"
            )
        if getattr(getattr(args, "accelerator_config", None), "split_batches", False):
            raise ValueError(
                "accelerator_config.split_batches=True is not supported: the sampler's batches are already per process"
            )
        if not self.label_names:
            raise ValueError(
                f"{type(self.model).__name__}.forward names no labels argument; set "
                f"TrainingArguments(label_names=[...]) to the batch's label fields"
            )

    def _keep_columns(self) -> frozenset | None:
        """The fields ``remove_unused_columns`` keeps, as the Trainer chooses them, or ``None``."""
        if not self.args.remove_unused_columns:
            return None
        model = self.model
        base = getattr(model, "get_base_model", None)  # a PEFT model forwards (*args, **kwargs)
        if callable(base):
            model = base()
        params = inspect.signature(model.forward).parameters.values()
        named = {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        return frozenset(named | {"label", "label_ids"} | set(self.label_names))

    def _create_assessor(self, at: str, options: dict) -> DifficultyAssessor:
        valid = [
            name
            for name in inspect.signature(DifficultyAssessor.__init__).parameters
            if name not in ("self", *_RESERVED_OPTIONS)
        ]
        reserved = sorted(set(options) & set(_RESERVED_OPTIONS))
        if reserved:
            raise ValueError(
                f"assessor_options may not set {reserved}: MoMBSTrainer sets them (at= is its own argument)"
            )
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(f"assessor_options has unknown names {unknown}; valid: {valid}")
        options.setdefault("loss_fn", self.per_sample_loss_fn)
        if getattr(getattr(self.model, "config", None), "problem_type", None) == "multi_label_classification":
            options.setdefault("activation", "sigmoid")
        collate = _IndexCollator(self.data_collator, self.index_key, self._keep_columns(), type(self.model).__name__)
        return DifficultyAssessor(
            _KeywordModel(self.model),
            _IndexedItems(self.train_dataset, self.index_key),
            at=at,
            sampler=self.sampler,
            collate_fn=collate,
            batch_fn=self._split,
            **options,
        )

    # ------------------------------------------------------------------ #
    # the Trainer's hooks

    def get_train_dataloader(self) -> DataLoader:
        """The training loader: the sampler as ``batch_sampler``, batches placed on ``args.device``.

        The loader goes through accelerate's ``prepare_data_loader`` with
        ``num_processes=1`` rather than through ``accelerator.prepare``: it then
        keeps what accelerate adds (placement on the device, the end-of-loader
        bookkeeping of gradient accumulation, ``set_epoch``) without wrapping the
        sampler in a ``BatchSamplerShard``, which would shard this rank's share a
        second time. ``rng_types=None``: the plan is drawn from the sampler's own
        (seed, epoch) generator, so no random state needs synchronising.
        """
        if self.train_dataset is not self.assessor.dataset.dataset:
            raise ValueError(
                "train_dataset was replaced after MoMBSTrainer was built; the sampler and the "
                "assessor were built for the first one: build a new trainer"
            )
        args = self.args
        params = {
            "batch_sampler": self.sampler,
            "collate_fn": self.assessor.collate_fn,
            "num_workers": args.dataloader_num_workers,
            "pin_memory": args.dataloader_pin_memory,
            # The workers' base seed comes from this private generator, not from
            # the global RNG that a loader without one draws from.
            "generator": torch.Generator().manual_seed(args.data_seed if args.data_seed is not None else args.seed),
        }
        if args.dataloader_num_workers > 0:
            params["persistent_workers"] = args.dataloader_persistent_workers
            params["prefetch_factor"] = args.dataloader_prefetch_factor
            context = getattr(args, "dataloader_multiprocessing_context", None)
            if context is not None:
                params["multiprocessing_context"] = context
        loader = DataLoader(self.assessor.dataset, **params)
        return prepare_data_loader(
            loader,
            device=args.device,
            num_processes=1,
            process_index=0,
            put_on_device=True,
            rng_types=None,
            dispatch_batches=False,
        )

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        """The mean of the batch's per-sample losses, which the assessor observes.

        In training, the indices and the targets are taken out of ``inputs``,
        the model runs on the rest, ``per_sample_loss_fn`` gives ``(B,)``
        losses, ``assessor.observe`` records them and their mean is returned.
        ``num_items_in_batch`` is not used there: the Trainer counts none for
        this trainer, and divides the mean by the accumulation steps instead
        (module docstring). In evaluation (``model.training`` is ``False``) the
        Trainer's own ``compute_loss`` runs, so evaluation losses are as without
        mombs.
        """
        if not model.training:
            inputs = {k: v for k, v in inputs.items() if k != self.index_key}
            extra = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
            return super().compute_loss(model, inputs, return_outputs=return_outputs, **extra)
        indices, model_inputs, targets = self._split(inputs)
        outputs = model(**model_inputs)
        per_sample = self.per_sample_loss_fn(outputs, targets)
        if not torch.is_tensor(per_sample) or per_sample.shape != (len(indices),):
            got = tuple(per_sample.shape) if torch.is_tensor(per_sample) else type(per_sample).__name__
            raise ValueError(f"per_sample_loss_fn must return ({len(indices)},) per-sample losses, got {got}")
        self.assessor.observe(indices, per_sample)
        loss = per_sample.mean()
        return (loss, outputs) if return_outputs else loss

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """``Trainer.train``; on a resume, first restores the assessor and the sampler from the checkpoint.

        The assessor's forward hook (``train-*`` schedules) is on the model
        only while this call runs: it is taken off when training ends or
        fails, and a later ``train()`` puts it on again.
        """
        checkpoint = resume_from_checkpoint
        if isinstance(checkpoint, bool):
            # As the Trainer resolves it; when there is none, the Trainer raises.
            checkpoint = get_last_checkpoint(self.args.output_dir) if checkpoint else None
        if checkpoint is not None:
            self.mombs_callback.load(checkpoint, self.args)
        self.assessor.open()
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            self.assessor.close()
