"""The results of a finished segmentation run, and what a comparison row shows of them."""

from __future__ import annotations

import numpy as np
import torch

from ..._atomic import atomic_npz
from ...difficulty import difficulty_scores
from ...quality.scores import noise_detection
from ...train.summary import FinishedRun, best_state, final_assessment, flagged_picks
from .training import evaluate_segmentation

__all__ = ["row_extras", "summarize"]


def _flagged_examples(x, y_given, y_clean, pred, codes, loss, corruption) -> dict:
    """The highest-loss slices of each quadrant, for the report's picture grid."""
    picks = flagged_picks(codes, loss)
    xs = x[picks].cpu().numpy()
    return {"index": picks, "image": xs[:, 0].astype(np.float16), "given": y_given[picks].astype(np.uint8),
            "clean": (y_clean[picks] if y_clean is not None else np.zeros_like(y_given[picks])).astype(np.uint8),
            "pred": pred[picks].astype(np.uint8), "codes": codes[picks], "loss": loss[picks],
            "corruption": corruption[picks] if corruption is not None else np.full(len(picks), -1)}


def summarize(run: FinishedRun) -> dict:
    """The results of a finished segmentation run; writes ``assessment.npz`` and ``flagged.npz``.

    Reports test Dice (final and best-validation models), Dice per lesion-size
    group and the small-lesion Dice (tiny and small groups), lesion-wise
    sensitivity, and, on the synthetic set, how well the poorly-labeled
    quadrant and the difficulty scores find the corrupted masks.
    """
    from .metrics import dice_per_image, lesion_sensitivity, mean_dice
    from .synthetic_ct import CORRUPTIONS, SIZE_GROUPS

    data, parts, model = run.data, run.parts, run.model
    x_te, y_te = parts.test
    dice, pred = evaluate_segmentation(model, parts.test)
    per_image = dice_per_image(torch.from_numpy(pred).long(), y_te.cpu(), num_classes=2).numpy()
    with best_state(run) as swapped:
        dice_best_val = evaluate_segmentation(model, parts.test)[0] if swapped else dice
    groups = data.size_group_test
    by_group = {g: mean_dice(per_image[groups == i]) if (groups == i).any() else None
                for i, g in enumerate(SIZE_GROUPS) if g != "empty"}
    small = np.isin(groups, [SIZE_GROUPS.index("tiny"), SIZE_GROUPS.index("small")])
    found, total = lesion_sensitivity(pred, y_te.cpu().numpy())
    empty = groups == 0
    fp_empty = float((pred[empty].reshape(int(empty.sum()), -1).any(1)).mean()) if empty.any() else None

    loss, unc, q = final_assessment(run)
    device = run.device
    _, train_pred = evaluate_segmentation(model, (data.x_train.to(device), data.y_train.to(device)))
    noisy = data.noisy_train
    atomic_npz(run.out / "assessment.npz", loss=loss, uncertainty=unc, codes=q.codes,
               noisy=noisy if noisy is not None else np.zeros(0, bool),
               corruption=data.corruption if data.corruption is not None else np.zeros(0, np.int64),
               size_group=data.size_group_train)
    atomic_npz(run.out / "flagged.npz", **_flagged_examples(
        data.x_train, data.y_train.numpy(), data.y_train_clean, train_pred, q.codes, loss, data.corruption))
    res = {"dice": dice, "dice_best_val": dice_best_val,
           "small_dice": mean_dice(per_image[small]) if small.any() else None,
           "dice_by_size": by_group, "lesion_sensitivity": found / total if total else None,
           "lesions": int(total), "false_positive_empty": fp_empty,
           "train_size": int(len(data.y_train)), "quadrant_counts": q.counts}
    if noisy is not None and noisy.any():
        res["noisy_fit"] = run.log[-1].get("noisy_fit")
        poor = q.mask("poorly-labeled")
        found_by = noise_detection(noisy, {"difficulty": difficulty_scores(loss, unc), "loss": loss,
                                           "uncertainty": unc}, poor)
        found_by["recall_by_corruption"] = {
            name: float(poor[data.corruption == i].mean())
            for i, name in enumerate(CORRUPTIONS) if i and (data.corruption == i).any()}
        res["noise_detection"] = found_by
    return res


def row_extras(runs: list[dict]) -> dict:
    """The mean small-lesion Dice and lesion sensitivity over a cell's runs."""
    extra = {}
    for name in ("small_dice", "lesion_sensitivity"):
        v = [r[name] for r in runs if r.get(name) is not None]
        if v:
            extra[name] = float(np.mean(v))
    return extra
