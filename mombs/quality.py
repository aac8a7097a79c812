"""Data quality from training signals: a label-issue score, a flag and a data map per sample.

A training run already computes, for every sample, its loss, and mombs adds
its uncertainty (``shared/METHOD.md`` §1). Kept per epoch (the tracker's
``keep_history=True``, the runner's ``history: true``), the same run also gives
the training-dynamics figures of two published methods:

- **AUM**, the area under the margin (Pleiss et al. 2020, §3): the mean over
  epochs of the given label's logit minus the largest other logit. A wrong
  label is fought by the rest of the data, so its margin stays low or
  negative. *Lower = worse.*
- **Dataset cartography** (Swayamdipta et al. 2020, §2): the *confidence*
  (mean over epochs of the softmax probability of the given label), the
  *variability* (its standard deviation over epochs) and the *correctness*
  (share of epochs in which the prediction was the given label).
  Low confidence with low variability is the "hard-to-learn" region, where
  wrong labels gather. *Lower confidence = worse.*

:func:`data_quality` turns these into one table, a row per sample, with a
ranked label-issue score (higher = more likely a wrong label), a flag and the
quadrant of :func:`mombs.quadrants`; :func:`write_table` writes it as CSV (and
Parquet when pyarrow is there), :func:`write_report` draws the data maps, and
:func:`diagnose` does all of it for a finished ``mombs train`` run folder.
``docs/quality.md`` holds the measured comparison with cleanlab, AUM with its
threshold samples and cartography.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .difficulty import QUADRANTS, _as_values, _compute_ranks, difficulty_scores, quadrants

__all__ = [
    "HISTORY_KEYS",
    "SCORES",
    "DataQuality",
    "area_under_margin",
    "aum_threshold",
    "cartography",
    "data_quality",
    "detection_metrics",
    "diagnose",
    "given_label_margin",
    "given_label_prob",
    "write_report",
    "write_table",
]

#: The per-epoch arrays :func:`data_quality` reads from a history, each ``(E, N)``.
HISTORY_KEYS = ("train_loss", "prob_given", "margin", "pred", "uncertainty")

#: Label-issue scores :func:`data_quality` can rank by (``score=``), each higher = worse:
#:
#: - ``"quadrant"``: ``(rank(loss) - rank(uncertainty)) / N``, in ``(-1, 1)``: how far
#:   into the poorly-labeled corner (high loss, low uncertainty) a sample lies.
#:   Flag: the poorly-labeled quadrant. Needs no history.
#: - ``"loss"``: the loss itself. Flag: loss above ``ln 2``, which for cross-entropy
#:   means the given label's probability is below one half. Needs no history.
#: - ``"aum"``: ``-AUM``. Flag: ``AUM < aum_threshold`` (default 0: on average the
#:   model preferred another class to the given one). Needs the history.
#: - ``"confidence"``: ``1 - confidence`` (cartography). Flag: confidence below 0.5
#:   with correctness below 0.5 (the given label was mostly not predicted).
#: - ``"combined"``: the mean of the normalized ranks of ``"quadrant"`` and ``"aum"``.
#:   Flag: the top ``k`` by this score, ``k`` = the number of samples with
#:   ``AUM < aum_threshold`` (a label-free estimate of how many labels are wrong).
#: - ``"auto"``: ``"aum"`` with a margin history, else ``"loss"``: the two that ranked
#:   wrong labels best in ``benchmarks/label_issues.py`` (``docs/quality.md``), where
#:   the quadrant score and ``"combined"`` ranked them worse than the loss alone.
SCORES = ("auto", "quadrant", "loss", "aum", "confidence", "combined")


# --------------------------------------------------------------------------- #
# per-step figures


def _logits_labels(logits, labels) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.as_tensor(logits)
    labels = torch.as_tensor(labels, device=logits.device)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must have shape (B, C) with C >= 2, got {tuple(logits.shape)}")
    if labels.shape != (logits.shape[0],) or labels.dtype.is_floating_point:
        raise ValueError(f"labels must be (B,) = ({logits.shape[0]},) integers, got shape "
                         f"{tuple(labels.shape)} and dtype {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
        raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got [{int(labels.min())}, "
                         f"{int(labels.max())}]")
    return logits.detach(), labels.long()


def given_label_margin(logits, labels) -> torch.Tensor:
    """The margin of AUM (Pleiss et al. 2020, eq. 1): the given label's logit minus the largest other.

    Args:
        logits: ``(B, C)`` raw model outputs of the training forward.
        labels: ``(B,)`` given (possibly wrong) labels.

    Returns:
        ``(B,)`` float margins, detached; negative where another class wins.
        Lower = worse.
    """
    logits, labels = _logits_labels(logits, labels)
    given = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return given - others.max(dim=1).values


def given_label_prob(logits, labels) -> torch.Tensor:
    """The softmax probability of the given label, ``(B,)``: one epoch's cartography confidence.

    Args:
        logits: ``(B, C)`` raw model outputs.
        labels: ``(B,)`` given labels.

    Returns:
        ``(B,)`` float probabilities in ``[0, 1]``, detached; lower = worse.
    """
    logits, labels = _logits_labels(logits, labels)
    return logits.float().softmax(dim=1).gather(1, labels[:, None]).squeeze(1)


# --------------------------------------------------------------------------- #
# training-dynamics figures from a history


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
    if isinstance(percentile, bool) or not isinstance(percentile, numbers.Real) or not 0 < percentile <= 100:
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


# --------------------------------------------------------------------------- #
# scoring known noise


def _average_precision(score: np.ndarray, truth: np.ndarray) -> float:
    order = np.argsort(-score, kind="stable")
    hits = truth[order]
    if not hits.any():
        return float("nan")
    cum = np.cumsum(hits)
    # Ties: sklearn's step-wise AP treats tied scores as one threshold; so do we.
    s = score[order]
    last = np.append(s[1:] != s[:-1], True)
    tp, k = cum[last], np.flatnonzero(last) + 1
    prec = tp / k
    recall_step = np.diff(np.concatenate([[0], tp])) / hits.sum()
    return float((prec * recall_step).sum())


def _auroc(score: np.ndarray, truth: np.ndarray) -> float:
    pos, neg = int(truth.sum()), int((~truth).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = _compute_ranks(score)
    return float((ranks[truth].sum() - pos * (pos + 1) / 2) / (pos * neg))


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
            raise ValueError(f"{name} must be a ({s.shape[0]},) bool array, got shape {arr.shape} "
                             f"and dtype {arr.dtype}")
    if not np.isfinite(s).all():
        raise ValueError(f"score contains {int((~np.isfinite(s)).sum())} non-finite value(s)")
    tp = int((f & t).sum())
    precision = tp / f.sum() if f.any() else float("nan")
    recall = tp / t.sum() if t.any() else float("nan")
    f1 = (2 * precision * recall / (precision + recall)
          if f.any() and t.any() and precision + recall > 0 else (0.0 if f.any() and t.any() else float("nan")))
    k = int(t.sum())
    top = np.argsort(-s, kind="stable")[:k]
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1),
            "auroc": _auroc(s, t), "ap": _average_precision(s, t),
            "precision_at_k": float(t[top].mean()) if k else float("nan"),
            "flagged": int(f.sum()), "wrong": k}


# --------------------------------------------------------------------------- #
# the table


def _check_history(history, n: int) -> dict[str, np.ndarray]:
    if history is None:
        return {}
    if not hasattr(history, "keys"):
        raise ValueError(f"history must be a mapping of name -> (E, N) array, got {type(history).__name__}")
    unknown = sorted(set(history) - set(HISTORY_KEYS) - {"epochs"})
    if unknown:
        raise ValueError(f"history has unknown key(s) {unknown}; known: {list(HISTORY_KEYS) + ['epochs']}")
    out, shape = {}, None
    for key in HISTORY_KEYS:
        if key not in history or history[key] is None:
            continue
        arr = np.asarray(history[key])
        if key == "pred":
            if arr.ndim != 2 or arr.shape[1] != n or not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"history['pred'] must be an (E, {n}) integer array (-1 where unseen), "
                                 f"got shape {arr.shape} and dtype {arr.dtype}")
        else:
            arr = _history_array(f"history[{key!r}]", arr, n)
        if shape is not None and arr.shape[0] != shape:
            raise ValueError(f"history[{key!r}] has {arr.shape[0]} epochs but the other arrays have {shape}")
        shape = arr.shape[0]
        out[key] = arr
    return out


def _final_pred(pred: np.ndarray) -> np.ndarray:
    """The last prediction each sample got (``-1`` if never seen), ``(N,)``."""
    seen = pred >= 0
    last = pred.shape[0] - 1 - np.argmax(seen[::-1], axis=0)
    return np.where(seen.any(axis=0), pred[last, np.arange(pred.shape[1])], -1)


def _normalized_rank(score: np.ndarray) -> np.ndarray:
    return (_compute_ranks(score) - 0.5) / score.shape[0]


@dataclass
class DataQuality:
    """What :func:`data_quality` found: a table with a row per sample, and how it was scored.

    Attributes:
        table: column name -> ``(N,)`` array, in display order. Always:
            ``index``, ``given_label``, ``loss``, ``uncertainty``,
            ``difficulty`` (rank sum, higher = harder), ``quadrant`` (name),
            ``quadrant_score`` (higher = deeper into the poorly-labeled
            corner), ``label_issue_score`` (higher = more likely a wrong
            label), ``label_issue_rank`` (1 = the most suspect) and
            ``flagged``. With a history also ``predicted_label``,
            ``mean_loss``, ``confidence``, ``variability``, ``correctness``
            and ``aum`` (lower = worse), and ``mean_uncertainty`` when the
            history has it. With known noise, ``wrong_label``.
        score: the score the ranking uses (one of :data:`SCORES`, resolved).
        flag_rule: the rule that set ``flagged``, in words.
        missing: what could not be computed and how to get it (empty when
            nothing is missing).
        num_classes: classes seen among the given labels.
    """

    table: dict
    score: str
    flag_rule: str
    missing: list = field(default_factory=list)
    num_classes: int = 0

    def __len__(self) -> int:
        return int(self.table["index"].shape[0])

    @property
    def columns(self) -> list[str]:
        return list(self.table)

    def ranked(self) -> np.ndarray:
        """``(N,)`` row positions from the most to the least suspect label."""
        return np.argsort(self.table["label_issue_rank"], kind="stable")

    def top(self, k: int, *, quadrant: str | None = None, flagged_only: bool = False) -> np.ndarray:
        """Positions of the ``k`` most suspect rows, optionally of one quadrant or flagged only."""
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
            raise ValueError(f"k={k!r} must be an integer >= 0")
        if quadrant is not None and quadrant not in QUADRANTS:
            raise ValueError(f"quadrant={quadrant!r} is not known; choose one of {list(QUADRANTS)}")
        order = self.ranked()
        if quadrant is not None:
            order = order[self.table["quadrant"][order] == quadrant]
        if flagged_only:
            order = order[self.table["flagged"][order]]
        return order[:k]

    def per_class(self) -> list[dict]:
        """Per given class: samples, flagged, and samples in each quadrant (a list of rows)."""
        labels, flagged, quad = self.table["given_label"], self.table["flagged"], self.table["quadrant"]
        rows = []
        for c in range(self.num_classes):
            m = labels == c
            row = {"class": c, "samples": int(m.sum()), "flagged": int((m & flagged).sum())}
            row.update({q: int((m & (quad == q)).sum()) for q in QUADRANTS})
            if "wrong_label" in self.table:
                row["wrong_label"] = int((m & self.table["wrong_label"]).sum())
            rows.append(row)
        return rows

    def summary(self) -> dict:
        """Counts and settings, JSON-ready."""
        quad = self.table["quadrant"]
        out = {"samples": len(self), "flagged": int(self.table["flagged"].sum()), "score": self.score,
               "flag_rule": self.flag_rule, "quadrant_counts": {q: int((quad == q).sum()) for q in QUADRANTS},
               "columns": self.columns, "missing": list(self.missing)}
        if "wrong_label" in self.table:
            wrong = self.table["wrong_label"]
            out["known_noise"] = detection_metrics(self.table["label_issue_score"], self.table["flagged"], wrong)
        return out

    def to_pandas(self):
        """The table as a ``pandas.DataFrame`` (pandas is imported here, lazily)."""
        try:
            import pandas as pd
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("DataQuality.to_pandas needs pandas: pip install pandas") from err
        return pd.DataFrame(self.table)


def data_quality(loss, uncertainty, labels, *, history=None, predicted=None, wrong_label=None,
                 score: str = "auto", aum_threshold: float = 0.0, loss_quantile: float = 0.5,
                 uncertainty_quantile: float = 0.5) -> DataQuality:
    """A table of every sample's label-issue score, flag and quadrant, from one run's signals.

    Args:
        loss: ``(N,)`` per-sample loss of the trained model (e.g. the run's
            final assessment pass), higher = worse fit.
        uncertainty: ``(N,)`` per-sample uncertainty from the same pass,
            higher = less sure.
        labels: ``(N,)`` given (possibly wrong) integer labels.
        history: optional mapping of per-epoch ``(E, N)`` arrays with any of
            :data:`HISTORY_KEYS`: ``train_loss``, ``prob_given`` (softmax
            probability of the given label in the training forward),
            ``margin`` (given-label logit minus the largest other), ``pred``
            (integer argmax, ``-1`` where unseen) and ``uncertainty``; ``NaN``
            where a sample was not seen in an epoch. ``epochs`` is accepted
            and ignored. ``margin`` gives AUM, ``prob_given`` cartography.
        predicted: ``(N,)`` predicted labels, when no history gives them.
        wrong_label: ``(N,)`` bool, the labels known to be wrong (planted
            noise), to score the result; optional.
        score: one of :data:`SCORES` (``"auto"``: ``"aum"`` with a margin
            history, else ``"loss"``).
        aum_threshold: AUM below which a label is flagged by ``"aum"`` and
            counted by ``"combined"``; 0 by default, or one from threshold
            samples (:func:`aum_threshold`).
        loss_quantile: quadrant split of the loss, in ``(0, 1)``.
        uncertainty_quantile: quadrant split of the uncertainty, in ``(0, 1)``.

    Returns:
        A :class:`DataQuality`.

    Raises:
        ValueError: naming the argument, for a wrong shape, a non-finite
            value, an unknown score, or a score whose history is missing.
    """
    lab = np.asarray(labels)
    if lab.ndim != 1 or not np.issubdtype(lab.dtype, np.integer) or lab.size == 0:
        raise ValueError(f"labels must be a non-empty (N,) integer array, got shape {lab.shape} "
                         f"and dtype {lab.dtype}")
    if lab.min() < 0:
        raise ValueError(f"labels must be >= 0, got {lab.min()}")
    n = lab.shape[0]
    if score not in SCORES:
        raise ValueError(f"score={score!r} is not known; choose one of {list(SCORES)}")
    if isinstance(aum_threshold, bool) or not isinstance(aum_threshold, numbers.Real) \
            or not math.isfinite(aum_threshold):
        raise ValueError(f"aum_threshold={aum_threshold!r} must be a finite number")
    loss = _as_values("loss", loss, n)
    unc = _as_values("uncertainty", uncertainty, n)
    q = quadrants(loss, unc, loss_quantile=loss_quantile, uncertainty_quantile=uncertainty_quantile)
    hist = _check_history(history, n)
    table: dict[str, np.ndarray] = {"index": np.arange(n), "given_label": lab.astype(np.int64)}
    missing = []
    if "pred" in hist:
        table["predicted_label"] = _final_pred(hist["pred"]).astype(np.int64)
    elif predicted is not None:
        pr = np.asarray(predicted)
        if pr.shape != (n,) or not np.issubdtype(pr.dtype, np.integer):
            raise ValueError(f"predicted must be a ({n},) integer array, got shape {pr.shape} and dtype {pr.dtype}")
        table["predicted_label"] = pr.astype(np.int64)
    if wrong_label is not None:
        w = np.asarray(wrong_label)
        if w.shape != (n,) or w.dtype != bool:
            raise ValueError(f"wrong_label must be a ({n},) bool array, got shape {w.shape} and dtype {w.dtype}")
        table["wrong_label"] = w
    quadrant_score = (_compute_ranks(loss) - _compute_ranks(unc)) / n
    table.update(loss=loss, uncertainty=unc, difficulty=difficulty_scores(loss, unc),
                 quadrant=np.asarray(QUADRANTS, dtype=object)[q.codes], quadrant_score=quadrant_score)
    if "train_loss" in hist:
        table["mean_loss"] = _seen_mean(hist["train_loss"])
    if "uncertainty" in hist:
        table["mean_uncertainty"] = _seen_mean(hist["uncertainty"])
    if "prob_given" in hist:
        carto = cartography(hist["prob_given"], hist.get("pred"), lab if "pred" in hist else None)
        table.update(carto)
    else:
        missing.append("confidence/variability (cartography): the history has no prob_given")
    if "margin" in hist:
        table["aum"] = area_under_margin(hist["margin"])
    else:
        missing.append("aum: the history has no margin")
    if history is None:
        missing = ["the per-epoch history (train_loss, prob_given, margin, pred): without it there is no "
                   "AUM, no cartography map and no per-epoch prediction; train with the history kept "
                   "(mombs train --set history=true, or DifficultyAssessor(..., keep_history=True) "
                   "and mombs.quality.given_label_margin/given_label_prob in your own loop)"]

    if score == "auto":
        score = "aum" if "aum" in table and not np.isnan(table["aum"]).all() else "loss"
    needs = {"aum": "aum", "combined": "aum", "confidence": "confidence"}.get(score)
    if needs is not None and needs not in table:
        raise ValueError(f"score={score!r} needs the per-epoch history ({needs}); give history= with "
                         f"{'margin' if needs == 'aum' else 'prob_given'}, or use score='loss' or 'quadrant'")

    if score == "quadrant":
        issue, flagged = quadrant_score, q.mask("poorly-labeled")
        rule = (f"poorly-labeled quadrant: loss above its {loss_quantile:g} quantile and uncertainty "
                f"at or below its {uncertainty_quantile:g} quantile")
    elif score == "loss":
        issue, flagged = loss, loss > math.log(2.0)
        rule = "loss > ln 2 (for cross-entropy: the given label's probability is below 1/2)"
    elif score == "aum":
        aum = np.nan_to_num(table["aum"], nan=aum_threshold)  # never seen: neither flagged nor ranked high
        issue, flagged = -aum, aum < aum_threshold
        rule = f"AUM < {aum_threshold:g}"
    elif score == "confidence":
        conf = np.nan_to_num(table["confidence"], nan=1.0)  # never seen: not flagged
        issue, flagged = 1.0 - conf, conf < 0.5
        rule = "cartography confidence < 0.5"
        if not np.isnan(table["correctness"]).all():  # with predictions: the given label was mostly not predicted
            flagged &= np.nan_to_num(table["correctness"], nan=1.0) < 0.5
            rule += " and correctness < 0.5"
    else:  # combined
        aum = np.nan_to_num(table["aum"], nan=aum_threshold)
        issue = 0.5 * (_normalized_rank(quadrant_score) + _normalized_rank(-aum))
        k = int((aum < aum_threshold).sum())
        flagged = np.zeros(n, dtype=bool)
        flagged[np.argsort(-issue, kind="stable")[:k]] = True
        rule = (f"the top {k} by the combined score (mean rank of quadrant_score and -AUM), "
                f"k = the samples with AUM < {aum_threshold:g}")
    issue = np.asarray(issue, dtype=np.float64)
    order = np.argsort(-issue, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(1, n + 1)
    table.update(label_issue_score=issue, label_issue_rank=rank, flagged=np.asarray(flagged, dtype=bool))
    num_classes = int(max(lab.max(), table.get("predicted_label", lab).max()) + 1)
    return DataQuality(table=table, score=score, flag_rule=rule, missing=missing, num_classes=num_classes)


# --------------------------------------------------------------------------- #
# files


def write_table(quality: DataQuality, out_dir, *, name: str = "data_quality", parquet: bool | None = None) -> dict:
    """Writes the table as ``<name>.csv``, and ``<name>.parquet`` when pyarrow is there.

    Rows are in index order; ``label_issue_rank`` gives the ranking.

    Args:
        quality: what :func:`data_quality` returned.
        out_dir: folder to write into (created).
        name: file stem.
        parquet: ``None`` writes Parquet when pyarrow imports; ``True``
            requires it (ImportError naming the extra); ``False`` skips it.

    Returns:
        ``{"csv": path, "parquet": path or None}``.
    """
    import csv

    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"name={name!r} must be a plain file stem")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cols = quality.columns
    paths = {"csv": out / f"{name}.csv", "parquet": None}
    with open(paths["csv"], "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        data = [quality.table[c] for c in cols]
        for row in zip(*data):
            w.writerow([_csv_cell(v) for v in row])
    if parquet is False:
        return paths
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:
        if parquet:
            raise ImportError("Parquet output needs pyarrow: pip install 'mombs[quality]'") from err
        return paths
    arrays = {c: (pa.array(quality.table[c].astype(str)) if quality.table[c].dtype == object
                  else pa.array(quality.table[c])) for c in cols}
    pq.write_table(pa.table(arrays), out / f"{name}.parquet")
    paths["parquet"] = out / f"{name}.parquet"
    return paths


def _csv_cell(v):
    if isinstance(v, (float, np.floating)):
        return "" if math.isnan(v) else repr(float(v))
    if isinstance(v, (bool, np.bool_)):
        return "1" if v else "0"
    if isinstance(v, np.integer):
        return int(v)
    return v


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("the data-quality report's figures need matplotlib: pip install 'mombs[viz]'") from err
    return plt


_QUADRANT_COLORS = {"poorly-labeled": "#d62728", "under-represented": "#ff7f0e",
                    "well-represented": "#2ca02c", "overfitted": "#1f77b4"}


def _data_map(quality: DataQuality, path: Path) -> None:
    plt = _plt()
    t = quality.table
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for q in QUADRANTS:
        m = t["quadrant"] == q
        ax.scatter(t["loss"][m], t["uncertainty"][m], s=4, alpha=0.5, color=_QUADRANT_COLORS[q],
                   label=f"{q} ({int(m.sum())})")
    f = t["flagged"]
    ax.scatter(t["loss"][f], t["uncertainty"][f], s=14, facecolors="none", edgecolors="k", linewidths=0.4,
               label=f"flagged ({int(f.sum())})")
    ax.set_xscale("symlog", linthresh=1e-2)
    ax.set_xlabel("loss (higher = worse fit)")
    ax.set_ylabel("uncertainty (higher = less sure)")
    ax.set_title("data map: loss vs uncertainty")
    ax.legend(fontsize=7, markerscale=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cartography_map(quality: DataQuality, path: Path) -> None:
    plt = _plt()
    t = quality.table
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    color = t["correctness"] if not np.isnan(t["correctness"]).all() else None
    sc = ax.scatter(t["variability"], t["confidence"], s=4, c=color, cmap="viridis", alpha=0.6)
    if color is not None:
        fig.colorbar(sc, ax=ax, label="correctness")
    f = t["flagged"]
    ax.scatter(t["variability"][f], t["confidence"][f], s=14, facecolors="none", edgecolors="r",
               linewidths=0.4, label=f"flagged ({int(f.sum())})")
    ax.set_xlabel("variability")
    ax.set_ylabel("confidence (lower = worse)")
    ax.set_title("dataset cartography")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _grid(images, quality: DataQuality, rows: np.ndarray, title: str, path: Path) -> None:
    plt = _plt()
    t = quality.table
    cols = min(8, max(1, len(rows)))
    nrows = max(1, math.ceil(len(rows) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(1.4 * cols, 1.6 * nrows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, r in zip(axes.ravel(), rows):
        img = np.asarray(images[r], dtype=np.float64)
        if img.ndim == 3 and img.shape[0] in (1, 3):  # CHW -> HWC
            img = np.moveaxis(img, 0, -1)
        if img.ndim == 3 and img.shape[-1] == 1:
            img = img[..., 0]
        lo, hi = float(img.min()), float(img.max())
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        pred = t["predicted_label"][r] if "predicted_label" in t else None
        ax.set_title(f"#{t['index'][r]} y={t['given_label'][r]}" + (f" p={pred}" if pred is not None else ""),
                     fontsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(quality: DataQuality, out_dir, *, images=None, per_quadrant: int = 16,
                 title: str = "data quality") -> Path:
    """Writes ``report.md`` with the data maps, per-class counts and picture grids.

    Figures: ``data_map.png`` (loss vs uncertainty, by quadrant, flagged
    samples ringed); ``cartography.png`` (confidence vs variability, coloured
    by correctness) when the table has them; ``top_<quadrant>.png``, the
    ``per_quadrant`` most suspect samples of each quadrant, when ``images``
    are given. matplotlib is imported here, lazily.

    Args:
        quality: what :func:`data_quality` returned.
        out_dir: folder to write into (created).
        images: ``(N, H, W)``, ``(N, C, H, W)`` or ``(N, H, W, C)`` array or
            tensor, the samples in table order; optional.
        per_quadrant: pictures per quadrant grid, ``>= 1``.
        title: the report's heading.

    Returns:
        The path of ``report.md``.
    """
    if isinstance(per_quadrant, bool) or not isinstance(per_quadrant, numbers.Integral) or per_quadrant < 1:
        raise ValueError(f"per_quadrant={per_quadrant!r} must be an integer >= 1")
    if images is not None:
        if torch.is_tensor(images):
            images = images.detach().cpu().numpy()
        if len(images) != len(quality):
            raise ValueError(f"images holds {len(images)} samples but the table has {len(quality)} rows")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t = quality.table
    s = quality.summary()
    lines = [f"# {title}", "",
             f"{s['samples']} samples; {s['flagged']} flagged as likely wrong labels.", "",
             f"- label-issue score: `{quality.score}` (higher = more likely a wrong label)",
             f"- flag: {quality.flag_rule}", ""]
    if quality.missing:
        lines += ["**Missing:**", ""] + [f"- {m}" for m in quality.missing] + [""]
    if "known_noise" in s:
        k = s["known_noise"]
        lines += [f"Known noise: {k['wrong']} wrong labels; the flag has precision {k['precision']:.3f}, "
                  f"recall {k['recall']:.3f}; the score has AUROC {k['auroc']:.3f}, AP {k['ap']:.3f}.", ""]
    _data_map(quality, out / "data_map.png")
    lines += ["## Data map", "", "![loss vs uncertainty](data_map.png)", ""]
    if "confidence" in t:
        _cartography_map(quality, out / "cartography.png")
        lines += ["![confidence vs variability](cartography.png)", ""]
    else:
        lines += ["No cartography map: the run kept no per-epoch history.", ""]
    rows = quality.per_class()
    head = list(rows[0]) if rows else []
    lines += ["## Per class", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows]
    lines += ["", "## Most suspect labels", ""]
    top = quality.top(10)
    show = [c for c in ("index", "given_label", "predicted_label", "quadrant", "loss", "uncertainty", "aum",
                        "confidence", "label_issue_score", "flagged") if c in t]
    lines += ["| " + " | ".join(show) + " |", "|" + "---|" * len(show)]
    for r in top:
        cells = [f"{t[c][r]:.4g}" if isinstance(t[c][r], (float, np.floating)) else str(t[c][r]) for c in show]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if images is not None:
        lines += ["## Pictures: the most suspect samples of each quadrant", ""]
        for q in QUADRANTS:
            pick = quality.top(per_quadrant, quadrant=q)
            if len(pick) == 0:
                continue
            fname = f"top_{q}.png"
            _grid(images, quality, pick, f"{q}: most suspect first", out / fname)
            lines += [f"![{q}]({fname})", ""]
    else:
        lines += ["No picture grids: the images were not available.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(s, indent=1, default=float) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- #
# a finished run folder


def _run_images(run_dir: Path, n: int):
    """The run's training images, rebuilt from its config; ``(None, why)`` when that fails."""
    try:
        cfg = json.loads((run_dir / "config.json").read_text())
        cfg = cfg.get("config", cfg)  # the runner writes {"config": {...}, "key": ...}
        from .data.corpus import load_corpus
        from .train import RunConfig

        fields = {k: v for k, v in cfg.items() if k in RunConfig.__dataclass_fields__}
        data = load_corpus(RunConfig(**fields).validate())
        if len(data.y_train) != n:
            return None, f"the rebuilt training set has {len(data.y_train)} images, the run {n}"
        return data.x_train, None
    except Exception as err:  # noqa: BLE001 - pictures are optional; say why they are missing
        return None, f"the training images could not be rebuilt from config.json ({type(err).__name__}: {err})"


def _run_task(run: Path) -> str:
    """The task a run folder's ``config.json`` names (runs from before tasks existed: classification)."""
    cpath = run / "config.json"
    if not cpath.is_file():
        return "classification"
    try:
        cfg = json.loads(cpath.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{cpath} cannot be read as JSON ({err}); is {str(run)!r} a mombs run folder?") from err
    cfg = cfg.get("config", cfg) if isinstance(cfg, dict) else {}
    return cfg.get("task", "classification")


def diagnose(run_dir, out_dir=None, *, score: str = "auto", images: bool = True, parquet: bool | None = None,
             per_quadrant: int = 16) -> dict:
    """The data-quality table and report of a finished ``mombs train`` classification run.

    Reads ``RUN_DIR/assessment.npz`` (the final loss and uncertainty, the given
    labels and, for planted noise, the wrong-label mask) and, when the run
    kept it (``--set history=true``), ``RUN_DIR/history.npz``: the per-epoch
    ``train_loss``, ``prob_given``, ``margin``, ``pred`` and optionally
    ``uncertainty``. Without the history the table has no AUM or cartography
    columns and the report says how to get them.

    Args:
        run_dir: the run folder.
        out_dir: where to write; default ``RUN_DIR/diagnose``.
        score: one of :data:`SCORES`.
        images: rebuild the training images from ``config.json`` for the
            picture grids (skipped, with a note, when that fails).
        parquet: as :func:`write_table`.
        per_quadrant: pictures per quadrant.

    Returns:
        ``{"table": csv path, "parquet": path or None, "report": path,
        "summary": dict, "history": bool, "missing": [...]}``.

    Raises:
        FileNotFoundError: no ``assessment.npz`` in ``run_dir`` (not a finished run).
        ValueError: a run of another task (segmentation, detection), a
            malformed file, or a bad argument (named).
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run_dir={str(run_dir)!r} is not a folder")
    apath = run / "assessment.npz"
    if not apath.is_file():
        raise FileNotFoundError(f"{apath} not found: diagnose needs a finished `mombs train` classification run "
                                f"(its assessment.npz)")
    task = _run_task(run)
    if task != "classification":
        raise ValueError(f"run_dir={str(run_dir)!r} is a {task} run; diagnose reads classification runs (one "
                         f"label per sample). A {task} run's assessment.npz holds its per-image loss, "
                         f"uncertainty and quadrants, and results.json how they find the noisy annotations")
    with np.load(apath, allow_pickle=False) as z:
        missing_keys = [k for k in ("loss", "uncertainty", "y") if k not in z.files]
        if missing_keys:
            raise ValueError(f"{apath} lacks {missing_keys}; it holds {sorted(z.files)}")
        a = {k: z[k] for k in z.files}
    wrong = a.get("noisy")
    wrong = wrong.astype(bool) if wrong is not None and wrong.shape == a["y"].shape else None
    history = None
    hpath = run / "history.npz"
    if hpath.is_file():
        with np.load(hpath, allow_pickle=False) as z:
            history = {k: z[k] for k in z.files if k in HISTORY_KEYS}
            if "uncertainty" in history and np.isnan(history["uncertainty"]).all():
                del history["uncertainty"]
    q = data_quality(a["loss"], a["uncertainty"], a["y"].astype(np.int64), history=history,
                     wrong_label=wrong, score=score)
    out = Path(out_dir) if out_dir is not None else run / "diagnose"
    paths = write_table(q, out, parquet=parquet)
    pics, why = (None, "pictures were not asked for") if not images else _run_images(run, len(q))
    if pics is None and images:
        q.missing.append(f"picture grids: {why}")
    report = write_report(q, out, images=pics, per_quadrant=per_quadrant,
                          title=f"data quality of {run.name}")
    return {"table": paths["csv"], "parquet": paths["parquet"], "report": report, "summary": q.summary(),
            "history": history is not None, "missing": list(q.missing)}
