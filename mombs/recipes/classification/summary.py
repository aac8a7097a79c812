"""The results of a finished classification run, and what a comparison row shows of them."""

from __future__ import annotations

import numpy as np

from ..._atomic import atomic_npz
from ...difficulty import difficulty_scores
from ...quality.scores import noise_detection
from ...train.summary import FinishedRun, best_state, final_assessment
from .training import evaluate

__all__ = ["row_extras", "summarize"]

#: Shot groups of a long-tailed run, in table order.
SHOT_GROUPS = ("many", "medium", "few")


def summarize(run: FinishedRun) -> dict:
    """Test top-1 (final and best-validation model), per class and per shot group, and how
    well the final model's quadrants and difficulty find the planted wrong labels.

    Writes ``assessment.npz``: the final eval-mode ``loss``, ``uncertainty``
    and quadrant ``codes`` of every training sample, its given label ``y``,
    clean label ``y_clean`` and the planted-noise mask ``noisy`` (empty
    without planted noise).
    """
    data, parts = run.data, run.parts
    top1, pred = evaluate(run.model, parts.test)
    y_test = data.y_test
    per_class = [
        float((pred[y_test == k] == k).mean()) if (y_test == k).any() else None for k in range(data.num_classes)
    ]
    with best_state(run) as swapped:
        top1_best_val = evaluate(run.model, parts.test)[0] if swapped else top1
    loss, unc, q = final_assessment(run)
    noisy = data.noisy_train
    atomic_npz(
        run.out / "assessment.npz",
        loss=loss,
        uncertainty=unc,
        codes=q.codes,
        noisy=noisy if noisy is not None else np.zeros(0, bool),
        y=data.y_train,
        y_clean=data.y_train_clean,
    )
    res = {
        "top1": top1,
        "top1_best_val": top1_best_val,
        "per_class_top1": per_class,
        "train_size": int(len(data.y_train)),
        "quadrant_counts": q.counts,
    }
    if noisy is not None and noisy.any():
        res["noisy_fit"] = run.log[-1].get("noisy_fit")
        res["noise_detection"] = noise_detection(
            noisy, {"difficulty": difficulty_scores(loss, unc), "loss": loss}, q.mask("poorly-labeled")
        )
    if data.shot_groups is not None:
        res["shot_top1"] = {}
        for g, classes in data.shot_groups.items():
            m = np.isin(y_test, classes)
            res["shot_top1"][g] = float((pred[m] == y_test[m]).mean()) if m.any() else None
    return res


def row_extras(runs: list[dict]) -> dict:
    """The mean top-1 of each shot group over a cell's runs (long-tailed runs only)."""
    extra = {}
    for name in SHOT_GROUPS:
        v = [r["shot_top1"][name] for r in runs if r.get("shot_top1", {}).get(name) is not None]
        if v:
            extra[name] = float(np.mean(v))
    return extra
