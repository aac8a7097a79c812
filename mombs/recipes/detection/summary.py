"""The results of a finished detection run, and what a comparison row shows of them."""

from __future__ import annotations

import numpy as np

from ..._atomic import atomic_npz
from ...difficulty import difficulty_scores
from ...quality.scores import noise_detection
from ...quality.table import DENSE_FLAGS, dense_score
from ...train.summary import FinishedRun, best_state, final_assessment, flagged_picks
from .metrics import FROC_AVERAGE_FPS, _sens_at, froc, unmatched_detection_score
from .training import detect

__all__ = ["FROC_CURVE_FPS", "ISSUE_PICTURES", "row_extras", "summarize"]

#: Training images kept in ``label_issues.npz`` for ``diagnose``'s picture grid: the most suspect ones.
ISSUE_PICTURES = 24

#: FP-per-image rates at which a run stores its test FROC curve (for the report's plot).
FROC_CURVE_FPS = tuple(float(f) for f in np.round(np.geomspace(0.125, 16, 15), 4))
#: Detections per flagged image kept for the picture grid: those scoring at least this.
FLAGGED_SCORE = 0.5
#: The operating points (false positives per image) of the comparison table's sensitivity columns.
TABLE_FPS = ("0.5", "1", "2")


def _froc_fields(dets, gts) -> dict:
    r = froc(dets, gts)
    return {
        "average": r.average,
        "sens": {f"{f:g}": float(s) for f, s in zip(r.fps, r.sensitivity)},
        "curve": [
            _sens_at(r.fp_per_image, r.curve_sensitivity, f) if r.n_lesions else float("nan") for f in FROC_CURVE_FPS
        ],
        "lesions": r.n_lesions,
    }


def _padded(rows: list, width: int) -> np.ndarray:
    """``(P, M, width)`` float32 of ragged ``(m_i, width)`` rows, NaN-padded."""
    m = max([len(r) for r in rows] + [1])
    out = np.full((len(rows), m, width), np.nan, dtype=np.float32)
    for i, r in enumerate(rows):
        r = np.asarray(r, dtype=np.float32).reshape(-1, width)
        out[i, : len(r)] = r
    return out


def _flagged_examples(data, codes, loss, train_dets: list, train_given: list) -> dict:
    """The highest-loss training images of each quadrant with their boxes and detections
    (``train_dets``, ``train_given``: :func:`detect`'s output on the whole training split)."""
    picks = flagged_picks(codes, loss)
    dets, given = [train_dets[i] for i in picks], [train_given[i] for i in picks]
    image = _key_slices(data, picks)  # the key slice of 3 channels
    keep = [d["scores"] >= FLAGGED_SCORE for d in dets]
    clean = (
        [data.clean_boxes_train[i] for i in picks]
        if data.clean_boxes_train is not None
        else [np.zeros((0, 4))] * len(picks)
    )
    return {
        "index": picks,
        "image": image,
        "given": _padded(given, 4),
        "clean": _padded(clean, 4),
        "det": _padded([d["boxes"][k] for d, k in zip(dets, keep)], 4),
        "det_scores": _padded([d["scores"][k][:, None] for d, k in zip(dets, keep)], 1)[..., 0],
        "codes": codes[picks],
        "loss": loss[picks],
        "corruption": data.corruption[picks] if data.corruption is not None else np.full(len(picks), -1),
        "missing": data.missing_train[picks] if data.missing_train is not None else np.zeros(len(picks), bool),
    }


def _key_slices(data, picks) -> np.ndarray:
    """``(P, H, W)`` float16: the middle channel (the key slice) of training images ``picks``."""
    mid = [im[im.shape[0] // 2].float().numpy() for im in (data.train[int(i)][0] for i in picks)]
    h, w = max([m.shape[0] for m in mid] + [1]), max([m.shape[1] for m in mid] + [1])
    image = np.zeros((len(mid), h, w), dtype=np.float16)
    for i, m in enumerate(mid):
        image[i, : m.shape[0], : m.shape[1]] = m
    return image


def _label_issues(run: FinishedRun, train_dets: list, train_given: list, loss, unc) -> dict:
    """Each training image's box scores from the final model's detections, its suspected error
    and the most suspect images' pictures (``label_issues.npz``)."""
    from ...quality import box_issue_kind, box_issue_scores, cleanlab_box_scores
    from .synthetic_det import DET_CORRUPTIONS

    data = run.data
    scores = box_issue_scores(train_dets, train_given)
    try:
        scores["cleanlab"] = cleanlab_box_scores(train_dets, train_given)
    except ImportError:  # cleanlab is optional (the quality extra); the table says it is missing
        pass
    ranking = dense_score(run.recipe.issue_score, scores, loss, unc)
    pick = np.sort(np.argsort(-ranking, kind="stable")[:ISSUE_PICTURES])
    dets = [train_dets[i] for i in pick]
    keep = [d["scores"] >= FLAGGED_SCORE for d in dets]
    clean = (
        [data.clean_boxes_train[i] for i in pick]
        if data.clean_boxes_train is not None
        else [np.zeros((0, 4))] * len(pick)
    )
    atomic_npz(
        run.out / "label_issues.npz",
        **{f"score_{k}": v for k, v in scores.items()},
        kind=box_issue_kind(scores),
        corruption_names=np.asarray(DET_CORRUPTIONS),
        pic_index=pick,
        pic_image=_key_slices(data, pick),
        pic_given=_padded([train_given[i] for i in pick], 4),
        pic_clean=_padded(clean, 4),
        pic_det=_padded([d["boxes"][k] for d, k in zip(dets, keep)], 4),
        pic_det_scores=_padded([d["scores"][k][:, None] for d, k in zip(dets, keep)], 1)[..., 0],
    )
    return scores


def summarize(run: FinishedRun) -> dict:
    """The results of a finished detection run; writes ``assessment.npz``, ``flagged.npz`` and
    ``label_issues.npz`` (each training image's box scores, :func:`mombs.quality.box_issue_scores`).

    Reports the test FROC (final and best-validation models: the average
    sensitivity at 0.5, 1 and 2 FPs per image and each of 0.5 to 16), the
    final model's FROC curve, and, on the synthetic set, how well the
    poorly-labeled quadrant and the difficulty scores find the training
    images with missing boxes (``noise_detection``) and with any box noise
    (``noisy_detection``).
    """
    from .synthetic_det import DET_CORRUPTIONS

    data, parts, model = run.data, run.parts, run.model
    final = _froc_fields(*detect(model, parts.test))
    with best_state(run) as swapped:
        best_val = _froc_fields(*detect(model, parts.test)) if swapped else final
    loss, unc, q = final_assessment(run)
    n = len(loss)
    # A box-level signal beside the paper's image-level ones: a confident
    # detection that no given box covers points at a lesion left unboxed.
    train_dets, train_given = detect(model, data.train)  # one pass: the unmatched score and the pictures
    unmatched = unmatched_detection_score(train_dets, train_given)
    none = np.zeros(0, bool)
    atomic_npz(
        run.out / "assessment.npz",
        loss=loss,
        uncertainty=unc,
        codes=q.codes,
        unmatched=unmatched,
        noisy=data.noisy_train if data.noisy_train is not None else none,
        missing=data.missing_train if data.missing_train is not None else none,
        corruption=data.corruption if data.corruption is not None else np.zeros(0, np.int64),
        possibly_noisy=data.possibly_noisy if data.possibly_noisy is not None else none,
    )
    atomic_npz(run.out / "flagged.npz", **_flagged_examples(data, q.codes, loss, train_dets, train_given))
    issue_scores = _label_issues(run, train_dets, train_given, loss, unc)
    res = {
        "froc": final["average"],
        "froc_best_val": best_val["average"],
        "froc_fps_averaged": list(FROC_AVERAGE_FPS),
        "froc_sens": final["sens"],
        "froc_sens_best_val": best_val["sens"],
        "froc_curve": {"fps": list(FROC_CURVE_FPS), "sensitivity": final["curve"]},
        "lesions": int(final["lesions"]),
        "train_size": int(n),
        "quadrant_counts": q.counts,
    }
    scores = {"difficulty": difficulty_scores(loss, unc), "loss": loss, "uncertainty": unc, "unmatched": unmatched}
    poor = q.mask("poorly-labeled")
    if data.missing_train is not None and data.missing_train.any():
        res["noisy_fit"] = run.log[-1].get("noisy_fit")
        found_by = noise_detection(data.missing_train, scores, poor)
        found_by["target"] = "images with at least one lesion without a box"
        found_by["recall_by_corruption"] = {
            name: float(poor[data.corruption == i].mean())
            for i, name in enumerate(DET_CORRUPTIONS)
            if i and (data.corruption == i).any()
        }
        res["noise_detection"] = found_by
        res["noisy_detection"] = noise_detection(data.noisy_train, scores, poor)
        flag = run.recipe.issue_flag
        res["label_issue_detection"] = noise_detection(
            data.noisy_train, {"loss": loss, **issue_scores}, issue_scores[flag] >= DENSE_FLAGS[flag]
        )
        res["label_issue_detection"].update(score=run.recipe.issue_score, flag=f"{flag} >= {DENSE_FLAGS[flag]:g}")
    elif data.possibly_noisy is not None and data.possibly_noisy.any():
        res["possibly_noisy_detection"] = noise_detection(data.possibly_noisy, scores, poor)
    return res


def row_extras(runs: list[dict]) -> dict:
    """The mean sensitivity at 0.5, 1 and 2 false positives per image over a cell's runs."""
    extra = {}
    for fp in TABLE_FPS:
        v = [r["froc_sens"][fp] for r in runs if r.get("froc_sens", {}).get(fp) is not None]
        if v:
            extra[f"sens@{fp}"] = float(np.mean(v))
    return extra
