"""The label-issue table from a user's own loop: one eval-mode pass with the current model.

During training, the assessor's quadrants come from whatever its schedule
measured last. Under the default ``reuse-loss`` schedule that is the
*training* forward's loss (train mode: dropout, batch statistics, a model
mid-epoch), which ranks wrong labels far worse than an eval-mode pass of the
final model (on digits with 30% flipped labels, ``tests/test_quality_measure.py``).
:func:`measure_label_issues` makes that pass, with the assessor's own
settings, and returns the same table ``mombs diagnose`` writes::

    from mombs.quality import measure_label_issues
    q = measure_label_issues(assessor, out_dir="diagnose")   # after training
    q.top(20)                                                # the 20 most suspect rows
"""

from __future__ import annotations

import numpy as np

from .report import write_report
from .table import DataQuality, data_quality, dense_quality, write_table

__all__ = ["eval_pass", "measure_label_issues"]

#: Offset of the measuring pass's noise seed from the assessor's: its draws are its own.
PASS_SEED_OFFSET = 77


def eval_pass(assessor) -> tuple[np.ndarray, np.ndarray]:
    """Every training sample's eval-mode loss and K-pass uncertainty under the current model.

    One :func:`mombs.assessment_pass` over the assessor's data set with its
    model, ``at``, ``k``, ``alpha``, task parts, batch size, loader and
    device; the assessor's tracker and generator are left as they are.

    Args:
        assessor: a :class:`~mombs.DifficultyAssessor`.

    Returns:
        ``(loss, uncertainty)``: ``(N,)`` float64 arrays, higher = harder.
    """
    import torch

    from ..assessment import assessment_pass
    from ..assessor import DifficultyAssessor

    if not isinstance(assessor, DifficultyAssessor):
        raise ValueError(f"assessor must be a mombs.DifficultyAssessor, got {type(assessor).__name__}")
    device = assessor._device()  # where the assessor's own passes run
    (_, loss), (_, unc) = assessment_pass(
        assessor.model,
        assessor.dataset,
        at=assessor.at,
        k=assessor.k,
        alpha=assessor.alpha,
        loss_fn=assessor.loss_fn,
        output_fn=assessor.output_fn,
        uncertainty_fn=assessor.uncertainty_fn,
        activation=assessor.activation,
        batch_size=assessor.batch_size,
        num_workers=assessor.num_workers,
        collate_fn=assessor.collate_fn,
        batch_fn=assessor.batch_fn,
        device=device,
        generator=torch.Generator(device=device).manual_seed(assessor.seed + PASS_SEED_OFFSET),
        chunk_rows=assessor.chunk_rows,
        loader=assessor.assessment_loader,
        forward_fn=assessor.forward_fn,
    )
    return loss, unc


def _dataset_labels(assessor) -> np.ndarray:
    """The given class label of every sample, read from the data set's items ``(index, input, label, ...)``."""
    ds = assessor.dataset
    labels = []
    for i in range(len(ds)):
        item = assessor.batch_fn(ds[i])
        y = item[2]
        try:
            value = y.item() if hasattr(y, "item") else y
        except (RuntimeError, ValueError):
            value = None
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(
                f"the data set's item {i} has target {type(y).__name__}"
                f"{tuple(getattr(y, 'shape', ()))}, not one class label: give labels=, or, for "
                f"masks or boxes, scores= from mombs.quality.mask_issue_scores or box_issue_scores"
            )
        labels.append(int(value))
    return np.asarray(labels, dtype=np.int64)


def measure_label_issues(
    assessor,
    labels=None,
    *,
    scores=None,
    score: str = "auto",
    kind=None,
    wrong_label=None,
    sources=None,
    history=None,
    out_dir=None,
    images=None,
) -> DataQuality:
    """The label-issue table of the current model: one eval-mode pass, then the table ``diagnose`` writes.

    Args:
        assessor: the :class:`~mombs.DifficultyAssessor` of the training run;
            its model as it is now (say, after the last epoch) is measured.
        labels: ``(N,)`` given class labels; ``None`` reads them from the
            data set's items (one integer target per sample).
        scores: for masks and boxes instead of class labels: ``{name: (N,)}``
            per-image scores from :func:`~mombs.quality.mask_issue_scores` or
            :func:`~mombs.quality.box_issue_scores` (your eval loop's
            predictions); the table is then :func:`~mombs.quality.dense_quality`'s.
        score: the ranking: class labels, one of :data:`~mombs.quality.SCORES`
            (``"auto"``: AUM with a margin ``history``, else the loss); masks and
            boxes, a key of ``scores`` (``"auto"``: the first key).
        kind: masks and boxes: the suspected error of each image
            (:func:`~mombs.quality.mask_issue_kind`, :func:`~mombs.quality.box_issue_kind`).
        wrong_label: optional ``(N,)`` bool, labels known to be wrong.
        sources: optional ``{name: (N,)}`` file names, cases or slices.
        history: class labels: the per-epoch history of :func:`~mombs.quality.data_quality`.
        out_dir: when given, the table (CSV, Parquet with pyarrow) and the
            report (``report.md``, data maps) are written there.
        images: class labels: ``(N, ...)`` images for the report's picture grids.

    Returns:
        A :class:`~mombs.quality.DataQuality`, its loss, uncertainty and
        quadrants from the eval-mode pass.
    """
    loss, unc = eval_pass(assessor)
    if scores is None:
        lab = _dataset_labels(assessor) if labels is None else labels
        q = data_quality(
            loss, unc, np.asarray(lab), history=history, wrong_label=wrong_label, score=score, sources=sources
        )
    else:
        if labels is not None:
            raise ValueError("give labels= (class labels) or scores= (masks, boxes), not both")
        if not hasattr(scores, "keys") or not scores:
            raise ValueError(f"scores must be a non-empty mapping of name -> (N,) array, got {scores!r}")
        q = dense_quality(
            loss,
            unc,
            scores,
            score=next(iter(scores)) if score == "auto" else score,
            kind=kind,
            wrong_label=wrong_label,
            sources=sources,
        )
    if out_dir is not None:
        write_table(q, out_dir)
        write_report(q, out_dir, images=images if scores is None else None, title="data quality (eval-mode pass)")
    return q
