"""Label-issue scores from training signals, and how well a score finds known noise. Pure numpy.

- **AUM**, the area under the margin (Pleiss et al. 2020, §3): the mean over
  epochs of the given label's logit minus the largest other logit. A wrong
  label is fought by the rest of the data, so its margin stays low or
  negative. *Lower = worse.*
- **Dataset cartography** (Swayamdipta et al. 2020, §2): the *confidence*
  (mean over epochs of the softmax probability of the given label), the
  *variability* (its standard deviation over epochs) and the *correctness*
  (share of epochs in which the prediction was the given label). *Lower
  confidence = worse.*
- :func:`detection_metrics` and :func:`noise_detection` score a label-issue
  score and a flag against the truth where the noise was planted: AUROC and
  average precision come from scikit-learn (imported when called).
"""

from __future__ import annotations

import numpy as np

from .._checks import is_real

__all__ = ["area_under_margin", "aum_threshold", "cartography", "detection_metrics", "noise_detection"]


def _history_array(name: str, values, n: int | None = None) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 1:
        raise ValueError(f"{name} must have shape (E, N) with E >= 1 epochs, got shape {arr.shape}")
    if n is not None and arr.shape[1] != n:
        raise ValueError(f"{name} has {arr.shape[1]} samples but {n} were expected")
    if np.isinf(arr).any():
        raise ValueError(f"{name} contains inf; use NaN for epochs in which a sample was not seen")
    return arr


def _seen_mean(arr: np.ndarray) -> np.ndarray:
    seen = ~np.isnan(arr)
    count = seen.sum(axis=0)
    total = np.where(seen, arr, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def area_under_margin(margin) -> np.ndarray:
    """AUM: each sample's mean margin over the epochs it was seen in (Pleiss et al. 2020, eq. 2).

    Args:
        margin: ``(E, N)`` margins (:func:`given_label_margin`) per epoch,
            ``NaN`` where a sample was not seen in that epoch.

    Returns:
        ``(N,)`` float64 AUM, ``NaN`` for a sample never seen. Lower = worse:
        below zero, the model preferred another class on average.
    """
    return _seen_mean(_history_array("margin", margin))


def aum_threshold(threshold_aum, percentile: float = 99.0) -> float:
    """The AUM below which a label is flagged, from threshold samples (Pleiss et al. 2020, §3.2).

    Threshold samples are ones given a fake extra class on purpose: every one
    of them is mislabeled, so their AUM shows how a wrong label looks. A
    sample whose AUM falls below the ``percentile`` of theirs is flagged.

    Args:
        threshold_aum: ``(M,)`` AUM of the threshold samples, ``M >= 1``.
        percentile: in ``(0, 100]``; the paper's 99.

    Returns:
        The threshold, a float.
    """
    arr = np.asarray(threshold_aum, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"threshold_aum must be a non-empty (M,) array, got shape {arr.shape}")
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        raise ValueError("threshold_aum holds only NaN (threshold samples never seen)")
    if not is_real(percentile) or not 0 < percentile <= 100:
        raise ValueError(f"percentile={percentile!r} must be a number in (0, 100]")
    return float(np.percentile(arr, percentile))


def cartography(prob_given, pred=None, labels=None) -> dict[str, np.ndarray]:
    """Dataset-cartography coordinates (Swayamdipta et al. 2020, §2).

    Args:
        prob_given: ``(E, N)`` softmax probability of the given label per
            epoch (:func:`given_label_prob`), ``NaN`` where not seen.
        pred: ``(E, N)`` predicted class per epoch (``-1`` where not seen), for
            the correctness; optional.
        labels: ``(N,)`` given labels; needed with ``pred``.

    Returns:
        ``{"confidence": (N,), "variability": (N,), "correctness": (N,)}``,
        float64: the mean and the (population) standard deviation of
        ``prob_given`` over the epochs each sample was seen in, and the share
        of those epochs whose prediction was the given label (``NaN`` without
        ``pred``). Lower confidence = worse; variability is high for samples
        the model keeps changing its mind on ("ambiguous").
    """
    p = _history_array("prob_given", prob_given)
    finite = p[~np.isnan(p)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        raise ValueError(f"prob_given must lie in [0, 1], got values in [{finite.min()}, {finite.max()}]")
    conf = _seen_mean(p)
    var = np.sqrt(np.maximum(_seen_mean(p * p) - conf * conf, 0.0))
    correct = np.full(p.shape[1], np.nan)
    if pred is not None:
        if labels is None:
            raise ValueError("labels are needed with pred, to count the epochs that predicted the given label")
        pr = np.asarray(pred)
        lab = np.asarray(labels)
        if pr.shape != p.shape:
            raise ValueError(f"pred has shape {pr.shape} but prob_given has {p.shape}")
        if lab.shape != (p.shape[1],):
            raise ValueError(f"labels must have shape ({p.shape[1]},), got {lab.shape}")
        seen = pr >= 0
        hits = ((pr == lab[None, :]) & seen).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            correct = np.where(seen.any(axis=0), hits / np.maximum(seen.sum(axis=0), 1), np.nan)
    return {"confidence": conf, "variability": var, "correctness": correct}


def _ranking_scores(truth: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """``(AUROC, average precision)`` of ``score`` for the bool ``truth`` (scikit-learn's);
    NaN when every sample, or none, is a member (neither is defined)."""
    if truth.all() or not truth.any():
        return float("nan"), float("nan")
    from sklearn.metrics import average_precision_score, roc_auc_score

    return float(roc_auc_score(truth, score)), float(average_precision_score(truth, score))


def detection_metrics(score, flagged, truth) -> dict[str, float]:
    """How well a label-issue score and flag find the labels known to be wrong.

    Args:
        score: ``(N,)`` label-issue score, higher = more likely wrong; finite.
        flagged: ``(N,)`` bool, the samples a method flags.
        truth: ``(N,)`` bool, the labels that are really wrong.

    Returns:
        ``precision``, ``recall`` and ``f1`` of the flagged set; ``auroc`` and
        ``ap`` (average precision, as scikit-learn computes it) of the score;
        ``precision_at_k``, the precision of the top ``k`` scores where ``k``
        is the true number of wrong labels; ``flagged`` and ``wrong``, the two
        counts. ``nan`` where undefined (nothing flagged, no wrong label).
    """
    s = np.asarray(score, dtype=np.float64)
    f = np.asarray(flagged)
    t = np.asarray(truth)
    if s.ndim != 1:
        raise ValueError(f"score must have shape (N,), got {s.shape}")
    for name, arr in (("flagged", f), ("truth", t)):
        if arr.shape != s.shape or arr.dtype != bool:
            raise ValueError(
                f"{name} must be a ({s.shape[0]},) bool array, got shape {arr.shape} and dtype {arr.dtype}"
            )
    if not np.isfinite(s).all():
        raise ValueError(f"score contains {int((~np.isfinite(s)).sum())} non-finite value(s)")
    tp = int((f & t).sum())
    precision = tp / f.sum() if f.any() else float("nan")
    recall = tp / t.sum() if t.any() else float("nan")
    f1 = (
        2 * precision * recall / (precision + recall)
        if f.any() and t.any() and precision + recall > 0
        else (0.0 if f.any() and t.any() else float("nan"))
    )
    k = int(t.sum())
    top = np.argsort(-s, kind="stable")[:k]
    auroc, ap = _ranking_scores(t, s)
    return {
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "auroc": auroc,
        "ap": ap,
        "precision_at_k": float(t[top].mean()) if k else float("nan"),
        "flagged": int(f.sum()),
        "wrong": k,
    }


def noise_detection(member, scores: dict, flagged) -> dict:
    """How well a flag and some scores find the samples whose annotation is known to be wrong.

    The summary a run writes to ``results.json`` for its planted noise
    (flipped labels, corrupted masks, images with a missing box).

    Args:
        member: ``(N,)`` bool truth: the samples with a wrong annotation.
        scores: name -> ``(N,)`` score, higher = more likely a member.
        flagged: ``(N,)`` bool, the samples a method flags (say, the
            poorly-labeled quadrant).

    Returns:
        ``precision`` and ``recall`` of the flag (``None`` where undefined:
        nothing flagged, no member), ``base_rate`` (the precision of flagging
        at random), ``flagged`` (the count), and per score its
        ``auroc_<name>`` and ``ap_<name>`` (average precision), ``None`` when
        every sample, or none, is a member.
    """
    member = np.asarray(member, dtype=bool)
    flagged = np.asarray(flagged, dtype=bool)
    if member.ndim != 1 or flagged.shape != member.shape:
        raise ValueError(
            f"member and flagged must be (N,) bool arrays of one length, got shapes {member.shape} and {flagged.shape}"
        )
    out = {
        "precision": float(member[flagged].mean()) if flagged.any() else None,
        "recall": float(flagged[member].mean()) if member.any() else None,
        "base_rate": float(member.mean()),
        "flagged": int(flagged.sum()),
    }
    for name, s in scores.items():
        s = np.asarray(s, dtype=np.float64)
        if s.shape != member.shape:
            raise ValueError(f"scores[{name!r}] has shape {s.shape}; expected {member.shape}")
        auroc, ap = _ranking_scores(member, s)
        out[f"auroc_{name}"] = None if np.isnan(auroc) else auroc
        out[f"ap_{name}"] = None if np.isnan(ap) else ap
    return out
