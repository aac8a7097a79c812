"""The runner's segmentation pieces: the loss, the fit, evaluation and the run's summary.

The runner's loop is the same for every task (:mod:`mombs.train.runner`);
what a segmentation run trains on, how it is scored and what its
``results.json`` reports are here. MONAI and scipy are imported when used.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import torch
import torch.nn as nn
from sklearn.metrics import average_precision_score, roc_auc_score

from ..assessor import assessment_pass
from ..difficulty import difficulty_scores, quadrants
from ..envinfo import environment_info
from ..tasks.base import TaskAdapter
from ..tasks.segmentation import per_image_dice_ce

__all__ = ["DiceCELoss", "FLAGGED_PER_QUADRANT", "SEG_TASK", "detection_scores", "dice_fit",
           "evaluate_segmentation", "summarize_segmentation"]

#: Batch size of evaluation forwards.
EVAL_BATCH_SIZE = 32
#: Slices per quadrant kept for the report's picture grid.
FLAGGED_PER_QUADRANT = 6

#: The lesion task as the runner trains it: Dice on the lesion channel only
#: (the background of a CT slice is nearly all of it and would swamp the Dice
#: term), cross-entropy over both classes; the assessment passes use the same loss.
_lesion_dice_ce = functools.partial(per_image_dice_ce, include_background=False)
SEG_TASK = TaskAdapter("segmentation", loss_fn=_lesion_dice_ce, activation="softmax")


class DiceCELoss(nn.Module):
    """:func:`~mombs.tasks.segmentation.per_image_dice_ce` (lesion Dice + CE) as a module.

    ``forward(logits (B, 2, H, W), masks (B, H, W)) -> (B,)`` losses, higher = worse fit.
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _lesion_dice_ce(logits, target)


def _hard_dice(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(B,)`` Dice of binary maps; 1 where both are empty (nothing to find, nothing claimed)."""
    p, t = pred.flatten(1).float(), target.flatten(1).float()
    inter, total = (p * t).sum(1), p.sum(1) + t.sum(1)
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))


def dice_fit(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """How well a training forward fits each given mask: ``(B,)`` hard lesion Dice in ``[0, 1]``.

    Args:
        logits: ``(B, 2, H, W)``.
        target: ``(B, H, W)`` given masks in ``{0, 1}``.
    """
    return _hard_dice(logits.argmax(1), target)


def evaluate_segmentation(model, x: torch.Tensor, y: torch.Tensor,
                          batch_size: int = EVAL_BATCH_SIZE) -> tuple[float, np.ndarray]:
    """Mean per-image lesion Dice over a split, and the predicted masks.

    Args:
        model: the network; put in eval mode.
        x: ``(N, C, H, W)`` images on the model's device.
        y: ``(N, H, W)`` clean masks.
        batch_size: slices per forward.

    Returns:
        ``(dice, pred)``: the mean of MONAI ``DiceMetric`` per-image Dice over the
        slices with a lesion (empty slices are NaN there and left out, MONAI's
        ``ignore_empty``), higher = better; ``pred`` ``(N, H, W)`` uint8 masks.
    """
    from ..metrics.segmentation import dice_per_image, mean_dice

    model.eval()
    preds = []
    with torch.no_grad():
        for s in range(0, len(x), batch_size):
            preds.append(model(x[s:s + batch_size]).argmax(1).to(torch.uint8).cpu())
    pred = torch.cat(preds) if preds else torch.zeros((0, *y.shape[1:]), dtype=torch.uint8)
    dice = dice_per_image(pred.long(), y.cpu(), num_classes=2)
    return mean_dice(dice), pred.numpy()


def detection_scores(member: np.ndarray, scores: dict[str, np.ndarray], flagged: np.ndarray) -> dict:
    """How well a flag and some scores find the members (here: corrupted masks).

    Args:
        member: ``(N,)`` bool truth.
        scores: name -> ``(N,)`` score, higher = more likely a member.
        flagged: ``(N,)`` bool, e.g. the poorly-labeled quadrant.

    Returns:
        ``precision``, ``recall`` of the flag, ``base_rate``, and per score its
        ``auroc_<name>`` and ``ap_<name>`` (average precision); AUROC and AP are
        ``None`` when every sample is (or none is) a member.
    """
    member = np.asarray(member, dtype=bool)
    out = {"precision": float(member[flagged].mean()) if flagged.any() else 0.0,
           "recall": float(flagged[member].mean()) if member.any() else None,
           "base_rate": float(member.mean()), "flagged": int(flagged.sum())}
    both = 0 < member.sum() < member.size
    for name, s in scores.items():
        out[f"auroc_{name}"] = float(roc_auc_score(member, s)) if both else None
        out[f"ap_{name}"] = float(average_precision_score(member, s)) if both else None
    return out


def _flagged_examples(x, y_given, y_clean, pred, codes, loss, corruption) -> dict:
    """The highest-loss slices of each quadrant, for the report's picture grid."""
    picks = []
    for c in np.unique(codes):
        members = np.flatnonzero(codes == c)
        picks.extend(members[np.argsort(-loss[members], kind="stable")[:FLAGGED_PER_QUADRANT]].tolist())
    picks = np.asarray(sorted(picks), dtype=np.int64)
    xs = x[picks].cpu().numpy()
    return {"index": picks, "image": xs[:, 0].astype(np.float16), "given": y_given[picks].astype(np.uint8),
            "clean": (y_clean[picks] if y_clean is not None else np.zeros_like(y_given[picks])).astype(np.uint8),
            "pred": pred[picks].astype(np.uint8), "codes": codes[picks], "loss": loss[picks],
            "corruption": corruption[picks] if corruption is not None else np.full(len(picks), -1)}


def summarize_segmentation(cfg, data, c, log: list, best: dict, x_te: torch.Tensor, y_te: torch.Tensor,
                           out) -> dict:
    """The results of a finished segmentation run; writes ``assessment.npz`` and ``flagged.npz``.

    Reports test Dice (final and best-validation models), Dice per lesion-size
    group and the small-lesion Dice (tiny and small groups), lesion-wise
    sensitivity, and, on the synthetic set, how well the poorly-labeled
    quadrant and the difficulty scores find the corrupted masks.
    """
    from ..data.synthetic_ct import CORRUPTIONS, SIZE_GROUPS
    from ..metrics.segmentation import dice_per_image, lesion_sensitivity, mean_dice

    model = c.model
    dice, pred = evaluate_segmentation(model, x_te, y_te)
    per_image = dice_per_image(torch.from_numpy(pred).long(), y_te.cpu(), num_classes=2).numpy()
    dice_best_val = dice
    if best["state"] is not None:
        final_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(best["state"])
        dice_best_val = evaluate_segmentation(model, x_te, y_te)[0]
        model.load_state_dict(final_state)
    groups = data.size_group_test
    by_group = {g: mean_dice(per_image[groups == i]) if (groups == i).any() else None
                for i, g in enumerate(SIZE_GROUPS) if g != "empty"}
    small = np.isin(groups, [SIZE_GROUPS.index("tiny"), SIZE_GROUPS.index("small")])
    found, total = lesion_sensitivity(pred, y_te.cpu().numpy())
    empty = groups == 0
    fp_empty = float((pred[empty].reshape(int(empty.sum()), -1).any(1)).mean()) if empty.any() else None

    device = next(model.parameters()).device
    (_, loss), (_, unc) = assessment_pass(
        model, c.train_set, at=c.at, k=cfg.k, alpha=cfg.alpha, task=SEG_TASK, batch_size=32, device=device,
        generator=torch.Generator(device=device).manual_seed(cfg.seed + 77))
    q = quadrants(loss, unc)
    _, train_pred = evaluate_segmentation(model, data.x_train.to(device), data.y_train.to(device))
    noisy = data.noisy_train
    np.savez_compressed(out / "assessment.npz", loss=loss, uncertainty=unc, codes=q.codes,
                        noisy=noisy if noisy is not None else np.zeros(0, bool),
                        corruption=data.corruption if data.corruption is not None else np.zeros(0, np.int64),
                        size_group=data.size_group_train)
    np.savez_compressed(out / "flagged.npz", **_flagged_examples(
        data.x_train, data.y_train.numpy(), data.y_train_clean, train_pred, q.codes, loss, data.corruption))
    res = {
        "task": "segmentation", "metric": "dice", "dataset": data.name, "strategy": cfg.strategy,
        "loss": cfg.loss, "batch_size": cfg.batch_size, "seed": cfg.seed, "model": cfg.model,
        "epochs": cfg.epochs, "pivot_epoch": cfg.pivot_epoch,
        "dice": dice, "dice_best_val": dice_best_val, "best_val_epoch": best["epoch"],
        "val_dice": log[-1]["val_dice"], "small_dice": mean_dice(per_image[small]) if small.any() else None,
        "dice_by_size": by_group, "lesion_sensitivity": found / total if total else None,
        "lesions": int(total), "false_positive_empty": fp_empty,
        "train_size": int(len(data.y_train)), "quadrant_counts": q.counts,
        "curves": {k: [r.get(k) for r in log] for k in ("val_dice", "test_dice", "train_loss", "train_fit",
                                                         "noisy_fit", "clean_fit", "seconds")},
        "seconds": float(sum(r["seconds"] for r in log)),
        "config": dataclasses.asdict(cfg), "key": cfg.key(), "data": data.describe(),
        "environment": environment_info(cfg.device),
    }
    if noisy is not None and noisy.any():
        res["noisy_fit"] = log[-1].get("noisy_fit")
        det = detection_scores(noisy, {"difficulty": difficulty_scores(loss, unc), "loss": loss,
                                       "uncertainty": unc}, q.mask("poorly-labeled"))
        det["recall_by_corruption"] = {
            name: float(q.mask("poorly-labeled")[data.corruption == i].mean())
            for i, name in enumerate(CORRUPTIONS) if i and (data.corruption == i).any()}
        res["noise_detection"] = det
    return res
