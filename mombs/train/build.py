"""Everything a run trains with, built from its config and its data."""

from __future__ import annotations

from dataclasses import dataclass

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

__all__ = ["ASSESS_BATCH_SIZE", "Components", "build"]

#: Batch size of assessment passes (no gradients: larger than training batches).
ASSESS_BATCH_SIZE = 512


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


def build(cfg: RunConfig, data: Corpus, device: torch.device) -> Components:
    """Model, loss, optimizer, the strategy's sampler and loader, and the assessor.

    The runner uses the library as a user would: an :class:`~mombs.IndexedDataset`,
    the strategy's batch sampler in a ``DataLoader``, and a
    :class:`~mombs.DifficultyAssessor` that feeds the sampler.
    """
    x_tr, y_tr = data.x_train.to(device), torch.from_numpy(data.y_train).to(device)
    n, num_classes = len(y_tr), data.num_classes
    counts = np.bincount(data.y_train, minlength=num_classes)
    # Weight init draws from torch's global generator; fork_rng gives it back untouched.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(cfg.seed)  # CPU only: CUDA's global state stays untouched
        model = create_model(cfg.model, num_classes=num_classes, in_channels=x_tr.shape[1]).to(device)
    at = FEATURE_MODULE[cfg.model]
    loss_fn = create_loss(cfg.loss, class_counts=counts, epochs=cfg.epochs).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    strategy = create_strategy(cfg.strategy, pivot_epoch=cfg.pivot_epoch)
    train_set = IndexedDataset(TensorDataset(x_tr, y_tr))
    sampler = strategy.create_sampler(train_set, cfg.batch_size, seed=cfg.seed)
    # Its own generator: a DataLoader draws a base seed from the global RNG otherwise.
    loader = DataLoader(train_set, batch_sampler=sampler, generator=torch.Generator().manual_seed(cfg.seed))
    assessor = None
    if strategy.measure is not None:
        assessor = DifficultyAssessor(model, train_set, at=at, sampler=sampler,
                                      schedule=strategy.schedule or cfg.schedule, k=cfg.k, alpha=cfg.alpha,
                                      measure=strategy.measure, pivot_epoch=cfg.pivot_epoch,
                                      head=getattr(model, "fc", None), batch_size=ASSESS_BATCH_SIZE,
                                      device=device, seed=cfg.seed)
    augment = cfg.augment if cfg.augment is not None else data.name.startswith("cifar")
    return Components(model=model, at=at, loss_fn=loss_fn, optimizer=opt, scheduler=sched, strategy=strategy,
                      train_set=train_set, sampler=sampler, loader=loader, assessor=assessor,
                      augment_gen=torch.Generator().manual_seed(cfg.seed + 1) if augment else None)
