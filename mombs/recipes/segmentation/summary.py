"""The results of a finished segmentation run, and what a comparison row shows of them."""

from __future__ import annotations

import numpy as np
import torch

from ..._atomic import atomic_npz
from ...difficulty import difficulty_scores
from ...quality.scores import noise_detection
from ...quality.table import DENSE_FLAGS, dense_score
from ...train.summary import FinishedRun, best_state, final_assessment, flagged_picks
from .training import evaluate_segmentation, predict_probs

__all__ = ["ISSUE_PICTURES", "row_extras", "summarize"]

#: Training slices kept in ``label_issues.npz`` for ``diagnose``'s picture grid: the most suspect ones.
ISSUE_PICTURES = 24


def _label_issues(run: FinishedRun, loss: np.ndarray, unc: np.ndarray) -> tuple[dict, np.ndarray]:
    """Each training slice's mask scores from the final model, its suspected error and the
    most suspect slices' pictures (``label_issues.npz``); also the predicted masks."""
    from ...quality import MASK_SCORES, mask_issue_kind, mask_issue_map, mask_issue_scores

    data, device = run.data, run.device
    x, given = data.x_train, data.y_train.numpy()
    parts, preds, fg = [], [], []
    for s, probs in predict_probs(run.model, x.to(device)):  # chunked: a whole set of maps may not fit
        parts.append(mask_issue_scores(probs, given[s : s + len(probs)]))
        preds.append(probs.argmax(1).astype(np.uint8))
        fg.append((1.0 - probs[:, 0]).astype(np.float16))
    scores = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    pred, fg_prob = np.concatenate(preds), np.concatenate(fg)
    ranking = dense_score(run.recipe.issue_score, scores, loss, unc)
    pick = np.sort(np.argsort(-ranking, kind="stable")[:ISSUE_PICTURES])
    issue_map = mask_issue_map(
        np.stack([1.0 - fg_prob[pick], fg_prob[pick]], 1).astype(np.float32), np.minimum(given[pick], 1)
    )
    clean = data.y_train_clean[pick] if data.y_train_clean is not None else np.zeros_like(given[pick])
    from .synthetic_ct import CORRUPTIONS

    z = {
        **{f"score_{k}": v for k, v in scores.items() if k in MASK_SCORES},
        "predicted_area": scores["predicted_area"],
        "given_area": scores["given_area"],
        "kind": mask_issue_kind(scores),
        "corruption_names": np.asarray(CORRUPTIONS),
        "pic_index": pick,
        "pic_image": x[pick, 0].numpy().astype(np.float16),
        "pic_given": given[pick].astype(np.uint8),
        "pic_pred": pred[pick],
        "pic_clean": clean.astype(np.uint8),
        "pic_map": issue_map.astype(np.float16),
    }
    atomic_npz(run.out / "label_issues.npz", **z)
    return scores, pred


def _flagged_examples(x, y_given, y_clean, pred, codes, loss, corruption) -> dict:
    """The highest-loss slices of each quadrant, for the report's picture grid."""
    picks = flagged_picks(codes, loss)
    xs = x[picks].cpu().numpy()
    return {
        "index": picks,
        "image": xs[:, 0].astype(np.float16),
        "given": y_given[picks].astype(np.uint8),
        "clean": (y_clean[picks] if y_clean is not None else np.zeros_like(y_given[picks])).astype(np.uint8),
        "pred": pred[picks].astype(np.uint8),
        "codes": codes[picks],
        "loss": loss[picks],
        "corruption": corruption[picks] if corruption is not None else np.full(len(picks), -1),
    }


def summarize(run: FinishedRun) -> dict:
    """The results of a finished segmentation run; writes ``assessment.npz``, ``flagged.npz`` and
    ``label_issues.npz`` (each training slice's mask scores, :func:`mombs.quality.mask_issue_scores`).

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
    by_group = {
        g: mean_dice(per_image[groups == i]) if (groups == i).any() else None
        for i, g in enumerate(SIZE_GROUPS)
        if g != "empty"
    }
    small = np.isin(groups, [SIZE_GROUPS.index("tiny"), SIZE_GROUPS.index("small")])
    found, total = lesion_sensitivity(pred, y_te.cpu().numpy())
    empty = groups == 0
    fp_empty = float((pred[empty].reshape(int(empty.sum()), -1).any(1)).mean()) if empty.any() else None

    loss, unc, q = final_assessment(run)
    issue_scores, train_pred = _label_issues(run, loss, unc)
    noisy = data.noisy_train
    atomic_npz(
        run.out / "assessment.npz",
        loss=loss,
        uncertainty=unc,
        codes=q.codes,
        noisy=noisy if noisy is not None else np.zeros(0, bool),
        corruption=data.corruption if data.corruption is not None else np.zeros(0, np.int64),
        size_group=data.size_group_train,
    )
    atomic_npz(
        run.out / "flagged.npz",
        **_flagged_examples(
            data.x_train, data.y_train.numpy(), data.y_train_clean, train_pred, q.codes, loss, data.corruption
        ),
    )
    res = {
        "dice": dice,
        "dice_best_val": dice_best_val,
        "small_dice": mean_dice(per_image[small]) if small.any() else None,
        "dice_by_size": by_group,
        "lesion_sensitivity": found / total if total else None,
        "lesions": int(total),
        "false_positive_empty": fp_empty,
        "train_size": int(len(data.y_train)),
        "quadrant_counts": q.counts,
    }
    if noisy is not None and noisy.any():
        res["noisy_fit"] = run.log[-1].get("noisy_fit")
        poor = q.mask("poorly-labeled")
        found_by = noise_detection(
            noisy, {"difficulty": difficulty_scores(loss, unc), "loss": loss, "uncertainty": unc}, poor
        )
        found_by["recall_by_corruption"] = {
            name: float(poor[data.corruption == i].mean())
            for i, name in enumerate(CORRUPTIONS)
            if i and (data.corruption == i).any()
        }
        res["noise_detection"] = found_by
        named = [k for k in ("disagreement", "region_error", "area", "cleanlab") if k in issue_scores]
        flag = run.recipe.issue_flag
        res["label_issue_detection"] = noise_detection(
            noisy, {"loss": loss, **{k: issue_scores[k] for k in named}}, issue_scores[flag] >= DENSE_FLAGS[flag]
        )
        res["label_issue_detection"].update(score=run.recipe.issue_score, flag=f"{flag} >= {DENSE_FLAGS[flag]:g}")
    return res


def row_extras(runs: list[dict]) -> dict:
    """The mean small-lesion Dice and lesion sensitivity over a cell's runs."""
    extra = {}
    for name in ("small_dice", "lesion_sensitivity"):
        v = [r[name] for r in runs if r.get(name) is not None]
        if v:
            extra[name] = float(np.mean(v))
    return extra
