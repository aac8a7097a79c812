"""Everything a run trains with: the recipe's parts wired to the library's sampler and assessor."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from ..assessor import DifficultyAssessor
from ..data.indexed import IndexedDataset
from ..recipes import TaskParts
from ..strategies import Strategy, create_strategy
from ..tasks import create_task
from .config import RunConfig

__all__ = ["Components", "build"]


@dataclass
class Components:
    """What :func:`build` makes: the recipe's parts and the training machinery around them."""

    parts: TaskParts
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    strategy: Strategy
    train_set: IndexedDataset
    sampler: object
    loader: DataLoader
    assessor: DifficultyAssessor | None
    augment_gen: torch.Generator | None

    @property
    def model(self) -> torch.nn.Module:
        return self.parts.model


def build(cfg: RunConfig, recipe, data, device: torch.device) -> Components:
    """Model and task parts from the recipe; optimizer, the strategy's sampler and loader, the assessor.

    The runner uses the library as a user would: an :class:`~mombs.IndexedDataset`,
    the strategy's batch sampler in a ``DataLoader``, and a
    :class:`~mombs.DifficultyAssessor` that feeds the sampler.

    Args:
        cfg: the run's config, validated.
        recipe: its task's :class:`~mombs.recipes.Recipe`.
        data: what ``recipe.load(cfg)`` returned.
        device: where the model trains.
    """
    cfg = cfg.resolved()
    # Weight init draws from torch's global generator; fork_rng gives it back untouched.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(cfg.seed)  # CPU only: CUDA's global state stays untouched
        model = recipe.create_model(cfg, data).to(device)
    parts = recipe.parts(cfg, data, model, device)
    if cfg.optimizer == "adam":
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True
        )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    strategy = create_strategy(cfg.strategy, pivot_epoch=cfg.pivot_epoch)
    train_set = IndexedDataset(parts.train_data)
    sampler = strategy.create_sampler(train_set, cfg.batch_size, seed=cfg.seed)
    collate_fn = create_task(parts.task).collate_fn
    # Its own generator: a DataLoader draws a base seed from the global RNG otherwise.
    loader = DataLoader(
        train_set,
        batch_sampler=sampler,
        generator=torch.Generator().manual_seed(cfg.seed),
        **({"collate_fn": collate_fn} if collate_fn is not None else {}),
    )
    assessor = None
    if strategy.measure is not None:
        assessor = DifficultyAssessor(
            model,
            train_set,
            at=parts.at,
            sampler=sampler,
            schedule=strategy.schedule or cfg.schedule,
            k=cfg.k,
            alpha=cfg.alpha,
            measure=strategy.measure,
            pivot_epoch=cfg.pivot_epoch,
            task=parts.task,
            head=parts.head,
            batch_size=recipe.assess_batch_size,
            device=device,
            seed=cfg.seed,
        )
    return Components(
        parts=parts,
        optimizer=opt,
        scheduler=sched,
        strategy=strategy,
        train_set=train_set,
        sampler=sampler,
        loader=loader,
        assessor=assessor,
        augment_gen=torch.Generator().manual_seed(cfg.seed + 1) if parts.augment else None,
    )
