"""What every finished run reports, whatever its task, and the two steps every summary takes.

:func:`summarize_run` writes the fields every ``results.json`` has (the
run's labels, its metric's curves, the seconds, config, key, data and
environment) and asks the task's recipe for the rest. A recipe's summary
evaluates the best-validation weights through :func:`best_state` and
measures the final model with :func:`final_assessment`: one implementation
of each, for every task.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._atomic import atomic_npz
from ..assessment import assessment_pass
from ..difficulty import QuadrantResult, quadrants
from ..envinfo import environment_info

__all__ = [
    "FLAGGED_PER_QUADRANT",
    "FinishedRun",
    "best_state",
    "final_assessment",
    "flagged_picks",
    "source_arrays",
    "summarize_run",
]

#: Offset of the final assessment pass's seed from the run's: its draws are its own.
FINAL_PASS_SEED_OFFSET = 77

#: Training samples per quadrant that a run keeps for the report's picture grid.
FLAGGED_PER_QUADRANT = 6

#: The per-epoch log fields kept as curves in ``results.json`` (``{metric}`` filled in).
_CURVES = ("val_{metric}", "test_{metric}", "train_loss", "train_fit", "noisy_fit", "clean_fit", "seconds")


@dataclass
class FinishedRun:
    """A run whose last epoch is done: what its recipe's summary reads.

    Attributes:
        cfg: the run's :class:`~mombs.train.RunConfig`, defaults resolved.
        recipe: its task's :class:`~mombs.recipes.Recipe`.
        data: what the recipe's ``load`` returned.
        parts: the recipe's :class:`~mombs.recipes.TaskParts`.
        train_set: the :class:`~mombs.IndexedDataset` the run trained on.
        log: the per-epoch records.
        best: ``{"val", "epoch", "state"}`` of the best validation epoch
            (``state``: CPU copies of the weights, or ``None``).
        out: the run's folder.
    """

    cfg: object
    recipe: object
    data: object
    parts: object
    train_set: object
    log: list
    best: dict
    out: Path

    @property
    def model(self) -> torch.nn.Module:
        return self.parts.model

    @property
    def device(self) -> torch.device:
        return next(self.parts.model.parameters()).device


@contextlib.contextmanager
def best_state(run: FinishedRun):
    """Context: the model holds the best-validation weights inside, its final weights after.

    Yields ``True`` when there were best weights to load (``False``: the model
    stays final, so a caller may reuse the final model's figures).
    """
    state = run.best["state"]
    if state is None:
        yield False
        return
    model = run.parts.model
    final = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    try:
        yield True
    finally:
        model.load_state_dict(final)


def final_assessment(run: FinishedRun) -> tuple[np.ndarray, np.ndarray, QuadrantResult]:
    """The final model's eval-mode loss and K-pass uncertainty of every training sample.

    Returns:
        ``(loss, uncertainty, quadrants)``: ``(N,)`` float arrays (higher =
        harder) in training-set order, and their :func:`~mombs.quadrants`.
    """
    cfg, parts = run.cfg, run.parts
    device = run.device
    (_, loss), (_, unc) = assessment_pass(
        parts.model,
        run.train_set,
        at=parts.at,
        k=cfg.k,
        alpha=cfg.alpha,
        task=parts.task,
        batch_size=run.recipe.assess_batch_size,
        device=device,
        generator=torch.Generator(device=device).manual_seed(cfg.seed + FINAL_PASS_SEED_OFFSET),
    )
    return loss, unc, quadrants(loss, unc)


def flagged_picks(codes: np.ndarray, loss: np.ndarray, per_quadrant: int = FLAGGED_PER_QUADRANT) -> np.ndarray:
    """The highest-loss training samples of each quadrant, for a run's ``flagged.npz``.

    Args:
        codes: ``(N,)`` quadrant codes.
        loss: ``(N,)`` final losses, higher = harder.
        per_quadrant: samples kept per quadrant.

    Returns:
        Their indices, ascending.
    """
    picks = []
    for c in np.unique(codes):
        members = np.flatnonzero(codes == c)
        picks.extend(members[np.argsort(-loss[members], kind="stable")[:per_quadrant]].tolist())
    return np.asarray(sorted(picks), dtype=np.int64)


def source_arrays(sources: dict | None, rows=None) -> dict:
    """``{"source_<name>": (N,) array}`` of the training samples' origins (file, case, slice, image id).

    Args:
        sources: the data's ``sources``: name -> ``(N,)`` array in training order, or ``None``.
        rows: which training samples (default all), in that order.
    """
    if not sources:
        return {}
    return {
        f"source_{k}": (np.asarray(v) if rows is None else np.asarray(v)[np.asarray(rows, dtype=np.int64)])
        for k, v in sources.items()
    }


def _stamp_sources(out: Path, sources: dict | None) -> None:
    """Adds each training sample's origin to the run's ``assessment.npz`` and ``flagged.npz``,
    so that every row a user reads names the file (case and slice, image id) it describes."""
    if not sources:
        return
    for name, rows_key in (("assessment.npz", None), ("flagged.npz", "index")):
        path = out / name
        if not path.exists():
            continue
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        arrays.update(source_arrays(sources, arrays[rows_key] if rows_key else None))
        atomic_npz(path, **arrays)


def summarize_run(run: FinishedRun) -> dict:
    """``results.json`` of a finished run: the common fields, then the recipe's.

    The recipe's ``summarize`` returns its metric on the final and the
    best-validation model and whatever else the task reports; it also writes
    the run's ``assessment.npz`` and ``flagged.npz``.
    """
    cfg, recipe, log = run.cfg, run.recipe, run.log
    m = recipe.metric
    res = {
        "task": cfg.task,
        "metric": m,
        "dataset": run.data.name,
        "strategy": cfg.strategy,
        "loss": cfg.loss,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "model": cfg.model,
        "epochs": cfg.epochs,
        "pivot_epoch": cfg.pivot_epoch,
        "best_val_epoch": run.best["epoch"],
        f"val_{m}": log[-1][f"val_{m}"],
    }
    res.update(recipe.summarize(run))
    _stamp_sources(run.out, getattr(run.data, "sources", None))
    res.update(
        {
            "curves": {k.format(metric=m): [r.get(k.format(metric=m)) for r in log] for k in _CURVES},
            "seconds": float(sum(r["seconds"] for r in log)),
            "config": dataclasses.asdict(cfg),
            "key": cfg.key(),
            "data": run.data.describe(),
            "environment": environment_info(cfg.device),
        }
    )
    return res
