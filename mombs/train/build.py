"""Everything a run trains with, built from its config and its data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from ..assessor import DifficultyAssessor
from ..data.corpus import Corpus
from ..data.indexed import IndexedDataset
from ..losses import create_loss
from ..models import FEATURE_MODULE, create_model
from ..strategies import Strategy, create_strategy
from .config import RunConfig
from .engine import class_fit

__all__ = ["ASSESS_BATCH_SIZE", "Components", "assess_batch_size", "build"]

#: Batch size of assessment passes (no gradients: larger than training batches).
ASSESS_BATCH_SIZE = 512
#: The same for segmentation: every slice's K disturbed predictions are whole maps.
SEG_ASSESS_BATCH_SIZE = 32


def assess_batch_size(cfg: RunConfig) -> int:
    """Assessment batch size of the run's task."""
    if cfg.task == "detection":
        from .detection import DET_ASSESS_BATCH_SIZE

        return DET_ASSESS_BATCH_SIZE
    return SEG_ASSESS_BATCH_SIZE if cfg.task == "segmentation" else ASSESS_BATCH_SIZE


@dataclass
class Components:
    """What :func:`build` makes: the training set, the loaders' pieces and the model's."""

    model: torch.nn.Module
    at: str
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    strategy: Strategy
    train_set: IndexedDataset
    sampler: object
    loader: DataLoader
    assessor: DifficultyAssessor | None
    augment_gen: torch.Generator | None
    #: ``(model, x, y) -> (score, prediction)`` on a whole split, higher = better;
    #: ``None``: the runner's classification accuracy.
    evaluate: Callable | None = None
    #: Name of that score in logs and results (``top1``, ``dice``, ``froc``).
    metric: str = "top1"
    #: ``(outputs, y) -> (B,)`` how well each training sample's forward fits its
    #: given target, in ``[0, 1]``.
    fit_fn: Callable = class_fit
    #: ``(outputs, y) -> (B,)`` per-sample loss of the assessment passes (the task's).
    task: str = "classification"
    #: ``(model, x, y) -> (outputs, per_sample, objective)`` for models that
    #: compute their own losses (detection); ``None``: ``loss_fn(model(x), y)``.
    step_fn: Callable | None = None


def build(cfg: RunConfig, data: Corpus, device: torch.device) -> Components:
    """Model, loss, optimizer, the strategy's sampler and loader, and the assessor.

    The runner uses the library as a user would: an :class:`~mombs.IndexedDataset`,
    the strategy's batch sampler in a ``DataLoader``, and a
    :class:`~mombs.DifficultyAssessor` that feeds the sampler.
    """
    cfg = cfg.resolved()
    seg, det = cfg.task == "segmentation", cfg.task == "detection"
    num_classes = data.num_classes
    if det:  # images and target dicts, read item by item; batches move to the device in the loop
        in_channels = data.in_channels
    else:
        y_tr = data.y_train if torch.is_tensor(data.y_train) else torch.from_numpy(data.y_train)
        x_tr, y_tr = data.x_train.to(device), y_tr.to(device)
        in_channels = x_tr.shape[1]
    # Weight init draws from torch's global generator; fork_rng gives it back untouched.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(cfg.seed)  # CPU only: CUDA's global state stays untouched
        if det:
            from ..models.detection import create_detection_model

            model = create_detection_model(cfg.model, num_classes=num_classes, in_channels=in_channels,
                                           min_size=data.image_size, max_size=data.image_size).to(device)
        elif seg:
            from ..models.segmentation import create_segmentation_model, seg_feature_module

            model = create_segmentation_model(cfg.model, in_channels, num_classes).to(device)
        else:
            model = create_model(cfg.model, num_classes=num_classes, in_channels=in_channels).to(device)
    assess_extras = {}
    if det:
        from ..models.detection import DET_FEATURE_MODULE
        from ..tasks.detection import collate_detection, rpn_forward
        from .detection import DetectionStep, det_fit, evaluate_detection

        at, loss_fn, task = DET_FEATURE_MODULE[cfg.model], None, "detection"
        extras = {"evaluate": evaluate_detection, "metric": "froc", "fit_fn": det_fit, "task": task,
                  "step_fn": DetectionStep(cfg.seed)}
        assess_extras = {"forward_fn": rpn_forward, "collate_fn": collate_detection}
    elif seg:
        from .segmentation import SEG_TASK, DiceCELoss, dice_fit, evaluate_segmentation

        at, loss_fn, task = seg_feature_module(model), DiceCELoss().to(device), SEG_TASK
        extras = {"evaluate": evaluate_segmentation, "metric": "dice", "fit_fn": dice_fit, "task": SEG_TASK}
    else:
        at, task, extras = FEATURE_MODULE[cfg.model], "classification", {}
        counts = np.bincount(data.y_train, minlength=num_classes)
        loss_fn = create_loss(cfg.loss, class_counts=counts, epochs=cfg.epochs).to(device)
    if cfg.optimizer == "adam":
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    strategy = create_strategy(cfg.strategy, pivot_epoch=cfg.pivot_epoch)
    train_set = IndexedDataset(data.train if det else TensorDataset(x_tr, y_tr))
    sampler = strategy.create_sampler(train_set, cfg.batch_size, seed=cfg.seed)
    # Its own generator: a DataLoader draws a base seed from the global RNG otherwise.
    loader = DataLoader(train_set, batch_sampler=sampler, generator=torch.Generator().manual_seed(cfg.seed),
                        **({"collate_fn": assess_extras["collate_fn"]} if det else {}))
    assessor = None
    if strategy.measure is not None:
        assessor = DifficultyAssessor(model, train_set, at=at, sampler=sampler,
                                      schedule=strategy.schedule or cfg.schedule, k=cfg.k, alpha=cfg.alpha,
                                      measure=strategy.measure, pivot_epoch=cfg.pivot_epoch, task=task,
                                      head=getattr(model, "fc", None), batch_size=assess_batch_size(cfg),
                                      device=device, seed=cfg.seed, **assess_extras)
    augment = cfg.augment if cfg.augment is not None else data.name.startswith("cifar")
    return Components(model=model, at=at, loss_fn=loss_fn, optimizer=opt, scheduler=sched, strategy=strategy,
                      train_set=train_set, sampler=sampler, loader=loader, assessor=assessor,
                      augment_gen=torch.Generator().manual_seed(cfg.seed + 1) if augment else None, **extras)
