"""The data-quality table: a row per sample with its label-issue score, flag and quadrant, and its files.

:func:`data_quality` turns one run's signals into the table (ranked by a
label-issue score, higher = more likely a wrong label); :func:`write_table`
writes it as CSV, and as Parquet when pyarrow is there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._checks import check_int, is_real
from ..difficulty import (
    QUADRANTS,
    _as_values,
    _compute_ranks,
    difficulty_scores,
    quadrants,
)
from .scores import (
    _history_array,
    _seen_mean,
    area_under_margin,
    cartography,
    detection_metrics,
)

__all__ = [
    "DENSE_FLAGS",
    "DataQuality",
    "HISTORY_KEYS",
    "SCORES",
    "data_quality",
    "dense_quality",
    "dense_score",
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
                raise ValueError(
                    f"history['pred'] must be an (E, {n}) integer array (-1 where unseen), "
                    f"got shape {arr.shape} and dtype {arr.dtype}"
                )
        else:
            arr = _history_array(f"history[{key!r}]", arr, n)
        if shape is not None and arr.shape[0] != shape:
            raise ValueError(f"history[{key!r}] has {arr.shape[0]} epochs but the other arrays have {shape}")
        shape = arr.shape[0]
        out[key] = arr
    return out


def _check_sources(sources, n: int) -> dict[str, np.ndarray]:
    if sources is None:
        return {}
    if not hasattr(sources, "items"):
        raise ValueError(f"sources must be a mapping of name -> (N,) array, got {type(sources).__name__}")
    out = {}
    for name, values in sources.items():
        arr = np.asarray(values)
        if not isinstance(name, str) or name in ("index", "given_label"):
            raise ValueError(f"sources has the key {name!r}; use names such as 'path', 'case', 'slice'")
        if arr.shape != (n,):
            raise ValueError(f"sources[{name!r}] has shape {arr.shape}; expected ({n},), one entry per sample")
        out[name] = arr
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
        check_int("k", k, 0)
        if quadrant is not None and quadrant not in QUADRANTS:
            raise ValueError(f"quadrant={quadrant!r} is not known; choose one of {list(QUADRANTS)}")
        order = self.ranked()
        if quadrant is not None:
            order = order[self.table["quadrant"][order] == quadrant]
        if flagged_only:
            order = order[self.table["flagged"][order]]
        return order[:k]

    def per_class(self) -> list[dict]:
        """Per given class: samples, flagged, and samples in each quadrant (a list of rows; empty
        for a table of masks or boxes)."""
        if "given_label" not in self.table:
            return []
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
        out = {
            "samples": len(self),
            "flagged": int(self.table["flagged"].sum()),
            "score": self.score,
            "flag_rule": self.flag_rule,
            "quadrant_counts": {q: int((quad == q).sum()) for q in QUADRANTS},
            "columns": self.columns,
            "missing": list(self.missing),
        }
        if "wrong_label" in self.table:
            wrong = self.table["wrong_label"]
            out["known_noise"] = detection_metrics(self.table["label_issue_score"], self.table["flagged"], wrong)
        return out

    def to_pandas(self):
        """The table as a ``pandas.DataFrame`` (pandas is imported here, lazily)."""
        try:
            import pandas as pd
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("DataQuality.to_pandas needs pandas: pip install 'mombs[quality]'") from err
        return pd.DataFrame(self.table)


def data_quality(
    loss,
    uncertainty,
    labels,
    *,
    history=None,
    predicted=None,
    wrong_label=None,
    score: str = "auto",
    aum_threshold: float = 0.0,
    loss_quantile: float = 0.5,
    uncertainty_quantile: float = 0.5,
    sources=None,
) -> DataQuality:
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
        sources: optional mapping of ``(N,)`` arrays naming each sample's
            origin (``path``, ``case``, ``slice``, ``image_id``): columns
            right after ``index``, so that a row names the file it describes.

    Returns:
        A :class:`DataQuality`.

    Raises:
        ValueError: naming the argument, for a wrong shape, a non-finite
            value, an unknown score, or a score whose history is missing.
    """
    lab = np.asarray(labels)
    if lab.ndim != 1 or not np.issubdtype(lab.dtype, np.integer) or lab.size == 0:
        raise ValueError(f"labels must be a non-empty (N,) integer array, got shape {lab.shape} and dtype {lab.dtype}")
    if lab.min() < 0:
        raise ValueError(f"labels must be >= 0, got {lab.min()}")
    n = lab.shape[0]
    if score not in SCORES:
        raise ValueError(f"score={score!r} is not known; choose one of {list(SCORES)}")
    if not is_real(aum_threshold):
        raise ValueError(f"aum_threshold={aum_threshold!r} must be a finite number")
    loss = _as_values("loss", loss, n)
    unc = _as_values("uncertainty", uncertainty, n)
    q = quadrants(loss, unc, loss_quantile=loss_quantile, uncertainty_quantile=uncertainty_quantile)
    hist = _check_history(history, n)
    table: dict[str, np.ndarray] = {"index": np.arange(n)}
    for name, values in _check_sources(sources, n).items():
        table[name] = values
    table["given_label"] = lab.astype(np.int64)
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
    table.update(
        loss=loss,
        uncertainty=unc,
        difficulty=difficulty_scores(loss, unc),
        quadrant=np.asarray(QUADRANTS, dtype=object)[q.codes],
        quadrant_score=quadrant_score,
    )
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
        missing = [
            "the per-epoch history (train_loss, prob_given, margin, pred): without it there is no "
            "AUM, no cartography map and no per-epoch prediction; train with the history kept "
            "(mombs train --set history=true, or DifficultyAssessor(..., keep_history=True) "
            "and mombs.quality.given_label_margin/given_label_prob in your own loop)"
        ]

    if score == "auto":
        score = "aum" if "aum" in table and not np.isnan(table["aum"]).all() else "loss"
    needs = {"aum": "aum", "combined": "aum", "confidence": "confidence"}.get(score)
    if needs is not None and needs not in table:
        raise ValueError(
            f"score={score!r} needs the per-epoch history ({needs}); give history= with "
            f"{'margin' if needs == 'aum' else 'prob_given'}, or use score='loss' or 'quadrant'"
        )

    if score == "quadrant":
        issue, flagged = quadrant_score, q.mask("poorly-labeled")
        rule = (
            f"poorly-labeled quadrant: loss above its {loss_quantile:g} quantile and uncertainty "
            f"at or below its {uncertainty_quantile:g} quantile"
        )
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
        rule = (
            f"the top {k} by the combined score (mean rank of quadrant_score and -AUM), "
            f"k = the samples with AUM < {aum_threshold:g}"
        )
    issue = np.asarray(issue, dtype=np.float64)
    order = np.argsort(-issue, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(1, n + 1)
    table.update(label_issue_score=issue, label_issue_rank=rank, flagged=np.asarray(flagged, dtype=bool))
    num_classes = int(max(lab.max(), table.get("predicted_label", lab).max()) + 1)
    return DataQuality(table=table, score=score, flag_rule=rule, missing=missing, num_classes=num_classes)


#: The flag of each per-image score :func:`dense_quality` can rank by: a score at or
#: above the threshold is flagged. Scores not named here (``loss``,
#: ``difficulty``, ``quadrant_score``) flag the poorly-labeled quadrant.
DENSE_FLAGS = {
    "disagreement": 0.5,
    "region_error": 0.5,
    "cleanlab": 0.5,
    "box_issue": 0.5,
    "overlooked": 0.5,
    "badly_located": 0.5,
    "spurious": 0.5,
    "area": math.log(2.0),
}


def dense_score(name: str, scores: dict, loss, uncertainty) -> np.ndarray:
    """One ranking column of :func:`dense_quality`, ``(N,)``, higher = more suspect.

    Args:
        name: a key of ``scores``, or ``"loss"``, ``"difficulty"`` (rank sum of
            loss and uncertainty) or ``"quadrant_score"``.
        scores: per-image scores, ``{name: (N,)}``.
        loss: ``(N,)`` per-image loss.
        uncertainty: ``(N,)`` per-image uncertainty.
    """
    if name in scores:
        return np.asarray(scores[name], dtype=np.float64)
    loss, unc = np.asarray(loss, dtype=np.float64), np.asarray(uncertainty, dtype=np.float64)
    if name == "loss":
        return loss
    if name == "difficulty":
        return difficulty_scores(loss, unc)
    if name == "quadrant_score":
        return (_compute_ranks(loss) - _compute_ranks(unc)) / loss.shape[0]
    raise ValueError(f"score={name!r} is not known; choose one of {[*scores, 'loss', 'difficulty', 'quadrant_score']}")


def dense_quality(
    loss,
    uncertainty,
    scores,
    *,
    score: str,
    kind=None,
    wrong_label=None,
    corruption=None,
    sources=None,
    info=None,
    flag_by: str | None = None,
    loss_quantile: float = 0.5,
    uncertainty_quantile: float = 0.5,
) -> DataQuality:
    """A table of every image's label-issue score, flag and quadrant, for masks or boxes.

    The counterpart of :func:`data_quality` for images whose label is a mask or
    a set of boxes (no class label per sample, so no per-class counts).

    Args:
        loss: ``(N,)`` per-image loss of the trained model, higher = worse fit.
        uncertainty: ``(N,)`` per-image uncertainty, higher = less sure.
        scores: ``{name: (N,) array}`` per-image label-issue scores, each
            higher = more likely a wrong label (:func:`~mombs.quality.mask_issue_scores`,
            :func:`~mombs.quality.box_issue_scores`); each becomes a column.
        score: the column to rank by: a key of ``scores``, or ``"loss"``,
            ``"difficulty"`` or ``"quadrant_score"``.
        flag_by: the column whose :data:`DENSE_FLAGS` threshold sets the flag
            (say, rank by the loss, flag by the disagreement); ``None``: the
            ranking score's own threshold, or the poorly-labeled quadrant for
            a score without one.
        kind: optional ``(N,)`` str, the suspected error of each image
            (column ``suspected_error``).
        wrong_label: optional ``(N,)`` bool, the labels known to be wrong.
        corruption: optional ``(N,)`` str, the known corruption of each image.
        sources: as :func:`data_quality`.
        info: optional ``{name: (N,) array}`` columns shown but not ranked by
            (say, the predicted and given lesion areas).
        loss_quantile: quadrant split of the loss, in ``(0, 1)``.
        uncertainty_quantile: quadrant split of the uncertainty, in ``(0, 1)``.

    Returns:
        A :class:`DataQuality` with ``num_classes = 0``.

    Raises:
        ValueError: naming the argument, for a wrong shape or an unknown score.
    """
    loss = np.asarray(loss, dtype=np.float64)
    if loss.ndim != 1 or loss.size == 0:
        raise ValueError(f"loss must be a non-empty (N,) array, got shape {loss.shape}")
    n = loss.shape[0]
    loss = _as_values("loss", loss, n)
    unc = _as_values("uncertainty", uncertainty, n)
    if not hasattr(scores, "items"):
        raise ValueError(f"scores must be a mapping of name -> (N,) array, got {type(scores).__name__}")
    cols = {}
    for name, v in scores.items():
        arr = np.asarray(v, dtype=np.float64)
        if arr.shape != (n,):
            raise ValueError(f"scores[{name!r}] has shape {arr.shape}; expected ({n},), one entry per image")
        cols[name] = arr
    q = quadrants(loss, unc, loss_quantile=loss_quantile, uncertainty_quantile=uncertainty_quantile)
    quadrant_score = (_compute_ranks(loss) - _compute_ranks(unc)) / n
    table: dict[str, np.ndarray] = {"index": np.arange(n)}
    table.update(_check_sources(sources, n))
    table.update(
        loss=loss,
        uncertainty=unc,
        difficulty=difficulty_scores(loss, unc),
        quadrant=np.asarray(QUADRANTS, dtype=object)[q.codes],
        quadrant_score=quadrant_score,
    )
    table.update(cols)
    for name, v in (info or {}).items():
        arr = np.asarray(v)
        if arr.shape != (n,) or name in table:
            raise ValueError(f"info[{name!r}] must be a new ({n},) column, got shape {arr.shape}")
        table[name] = arr
    for name, v in (("suspected_error", kind), ("corruption", corruption)):
        if v is not None:
            arr = np.asarray(v).astype(str)
            if arr.shape != (n,):
                raise ValueError(f"{'kind' if name == 'suspected_error' else name} must be ({n},), got {arr.shape}")
            table[name] = arr.astype(object)
    if wrong_label is not None:
        w = np.asarray(wrong_label)
        if w.shape != (n,) or w.dtype != bool:
            raise ValueError(f"wrong_label must be a ({n},) bool array, got shape {w.shape} and dtype {w.dtype}")
        table["wrong_label"] = w
    rankable = [*cols, "loss", "difficulty", "quadrant_score"]
    if score not in rankable:
        raise ValueError(f"score={score!r} is not one of this table's scores; choose one of {rankable}")
    issue = table[score].astype(np.float64)
    flag_by = score if flag_by is None and score in DENSE_FLAGS else flag_by
    if flag_by is not None:
        if flag_by not in DENSE_FLAGS or flag_by not in table:
            raise ValueError(
                f"flag_by={flag_by!r} must be a column of this table with a threshold in "
                f"DENSE_FLAGS; choose one of {[c for c in cols if c in DENSE_FLAGS]}"
            )
        flagged, rule = table[flag_by] >= DENSE_FLAGS[flag_by], f"{flag_by} >= {DENSE_FLAGS[flag_by]:.3g}"
    else:
        flagged = q.mask("poorly-labeled")
        rule = (
            f"poorly-labeled quadrant: loss above its {loss_quantile:g} quantile and uncertainty "
            f"at or below its {uncertainty_quantile:g} quantile"
        )
    order = np.argsort(-issue, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(1, n + 1)
    table.update(label_issue_score=issue, label_issue_rank=rank, flagged=np.asarray(flagged, dtype=bool))
    return DataQuality(table=table, score=score, flag_rule=rule, missing=[], num_classes=0)


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
    arrays = {
        c: (pa.array(quality.table[c].astype(str)) if quality.table[c].dtype == object else pa.array(quality.table[c]))
        for c in cols
    }
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
