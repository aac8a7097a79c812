"""Label-issue scores of detection boxes: what a trained detector sees that the given boxes do not.

Pure functions of arrays (no model, no data set): each image's detections
(boxes and confidences) and its given boxes, all ``(x1, y1, x2, y2)``
pixels. Per image, each higher = more likely a wrong annotation, in ``[0, 1]``:

- ``overlooked``: the highest confidence of a detection that no given box
  covers (IoU below ``cover_iou`` with every given box): a lesion the
  annotator may have missed.
- ``badly_located``: over the given boxes, the largest ``confidence x (1 -
  IoU)`` of the detection that overlaps each best (``IoU >= cover_iou``):
  a detection near the box but not on it, as a shifted or resized box gives.
- ``spurious``: over the given boxes, the largest ``1 - confidence`` of the
  best-supporting detection (overlap ``>= cover_iou``; ``1`` with none): a
  box nothing in the image supports.
- ``box_issue``: the largest of the three, and :func:`box_issue_kind` names
  which one it was.

``cleanlab_box_scores`` feeds the same detections to cleanlab's
``object_detection.rank.get_label_quality_scores``. What each score finds on
the synthetic detection set's planted errors is measured in
``benchmarks/dense_label_issues.py`` (``docs/quality.md``).
"""

from __future__ import annotations

import numpy as np

from .._checks import is_real

__all__ = ["BOX_KINDS", "BOX_SCORES", "box_issue_kind", "box_issue_scores", "cleanlab_box_scores"]

#: The per-image scores :func:`box_issue_scores` returns, each higher = worse.
BOX_SCORES = ("overlooked", "badly_located", "spurious", "box_issue")

#: What :func:`box_issue_kind` can call an image's boxes.
BOX_KINDS = ("agrees", "overlooked", "badly located", "spurious")


def _boxes(name: str, value, i: int) -> np.ndarray:
    b = np.asarray(value, dtype=np.float64)
    if b.size == 0:
        return np.zeros((0, 4))
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{name}[{i}] must be an (n, 4) array of (x1, y1, x2, y2) boxes, got shape {b.shape}")
    if not np.isfinite(b).all():
        raise ValueError(f"{name}[{i}] holds NaN or infinite coordinates")
    return b


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(len(a), len(b))`` IoU of two sets of ``(x1, y1, x2, y2)`` boxes."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: np.clip(x[:, 2:] - x[:, :2], 0, None).prod(-1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _check_inputs(detections, given_boxes) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    if not hasattr(detections, "__len__") or not hasattr(given_boxes, "__len__"):
        raise ValueError("detections and given_boxes must be sequences with one entry per image")
    if len(detections) != len(given_boxes):
        raise ValueError(f"detections has {len(detections)} images but given_boxes has {len(given_boxes)}")
    out = []
    for i, (det, gt) in enumerate(zip(detections, given_boxes)):
        if not hasattr(det, "keys") or "boxes" not in det or "scores" not in det:
            raise ValueError(
                f"detections[{i}] must be a mapping with 'boxes' (d, 4) and 'scores' (d,), got {type(det).__name__}"
            )
        boxes = _boxes("detections", det["boxes"], i)
        conf = np.asarray(det["scores"], dtype=np.float64).reshape(-1)
        if conf.shape != (len(boxes),) or (conf.size and (conf.min() < 0 or conf.max() > 1)):
            raise ValueError(
                f"detections[{i}]['scores'] must be ({len(boxes)},) confidences in [0, 1], got shape {conf.shape}"
            )
        out.append((boxes, conf, _boxes("given_boxes", gt, i)))
    return out


def box_issue_scores(detections, given_boxes, *, cover_iou: float = 0.1) -> dict[str, np.ndarray]:
    """Per-image label-issue scores of the given boxes from a detector's detections.

    Args:
        detections: per image a mapping with ``"boxes"`` ``(d, 4)`` and
            ``"scores"`` ``(d,)`` confidences in ``[0, 1]`` (torchvision's
            eval-mode output, on CPU as arrays; keep low-confidence detections:
            torchvision's default ``box_score_thresh=0.05`` is fine).
        given_boxes: per image its ``(n, 4)`` given (possibly wrong) boxes.
        cover_iou: IoU at or above which a detection counts as overlapping a
            given box, ``(0, 1)``.

    Returns:
        ``{name: (N,) float64}`` for each of :data:`BOX_SCORES`, in ``[0, 1]``,
        higher = more likely a wrong annotation.

    Raises:
        ValueError: naming the argument, for mismatched lengths, shapes or confidences.
    """
    if not is_real(cover_iou) or not 0 < cover_iou < 1:
        raise ValueError(f"cover_iou={cover_iou!r} must be a number in (0, 1)")
    items = _check_inputs(detections, given_boxes)
    n = len(items)
    overlooked, badloc, spurious = np.zeros(n), np.zeros(n), np.zeros(n)
    for i, (boxes, conf, gt) in enumerate(items):
        iou = _iou(gt, boxes)  # (n_given, d)
        covered = (iou >= cover_iou).any(0) if len(gt) else np.zeros(len(boxes), bool)
        overlooked[i] = conf[~covered].max(initial=0.0)
        if len(gt) == 0:
            continue
        support = np.where(iou >= cover_iou, conf[None, :], 0.0)  # (n_given, d)
        spurious[i] = float((1.0 - support.max(1, initial=0.0)).max())
        if len(boxes):
            best = np.argmax(np.where(iou >= cover_iou, iou, -1.0), axis=1)
            rows = np.arange(len(gt))
            hit = iou[rows, best] >= cover_iou
            badloc[i] = float((conf[best] * (1.0 - iou[rows, best]) * hit).max(initial=0.0))
    return {
        "overlooked": overlooked,
        "badly_located": badloc,
        "spurious": spurious,
        "box_issue": np.maximum(np.maximum(overlooked, badloc), spurious),
    }


def box_issue_kind(scores: dict, *, threshold: float = 0.5) -> np.ndarray:
    """The likely error of each image's boxes: the largest of the three scores, if above ``threshold``.

    Args:
        scores: what :func:`box_issue_scores` returned.
        threshold: below it the image ``"agrees"``, ``[0, 1]``.

    Returns:
        ``(N,)`` str array of :data:`BOX_KINDS`.
    """
    stack = np.stack([scores["overlooked"], scores["badly_located"], scores["spurious"]], axis=1)
    kind = np.asarray(BOX_KINDS[1:], dtype=object)[stack.argmax(1)]
    kind[stack.max(1) < threshold] = "agrees"
    return kind.astype(str)


def cleanlab_box_scores(detections, given_boxes) -> np.ndarray:
    """One minus cleanlab's ``object_detection.rank.get_label_quality_scores``, ``(N,)``, higher = worse.

    One class (every given box and detection is class 0), as mombs's detection
    runs have; cleanlab wants ``[x1, y1, x2, y2, confidence]`` rows per class.

    Args:
        detections: as :func:`box_issue_scores`.
        given_boxes: as :func:`box_issue_scores`.

    Raises:
        ImportError: cleanlab is not installed (naming the extra).
    """
    try:
        from cleanlab.object_detection.rank import get_label_quality_scores
    except ImportError as err:
        raise ImportError("cleanlab's detection score needs cleanlab: pip install 'mombs[quality]'") from err
    items = _check_inputs(detections, given_boxes)
    labels = [{"bboxes": gt.astype(np.float32), "labels": np.zeros(len(gt), dtype=np.int64)} for _, _, gt in items]
    preds = []
    for boxes, conf, _ in items:
        per_class = np.empty(1, dtype=object)
        per_class[0] = np.concatenate([boxes, conf[:, None]], axis=1).astype(np.float32).reshape(-1, 5)
        preds.append(per_class)
    return 1.0 - np.asarray(get_label_quality_scores(labels, preds, verbose=False), dtype=np.float64)
