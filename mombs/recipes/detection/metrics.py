"""Lesion detection: FROC sensitivity at fixed false positives per image.

Universal lesion detection (ULD) papers on DeepLesion report the free-response
ROC (FROC): the sensitivity at 0.5, 1, 2, 4, 8 and 16 false positives (FPs)
per image, and the average of the first three (the MoMBS paper's number,
``shared/METHOD.md`` §4 and §6). It is computed as in DeepLesion's evaluation
code:

- the detections of all images are pooled and sorted by score, highest first
  (ties keep image order, then each image's own order);
- walking down the list, a detection **hits** a ground-truth lesion of its own
  image when their IoU is ``>= iou_threshold`` (0.5). Every lesion it hits that
  was not found yet is found now (a true positive each). A detection whose
  hits were all found already is **neither** a true nor a false positive: a
  second box on a found lesion costs nothing. A detection that hits no
  lesion is a false positive;
- after the ``k``-th detection the curve is at ``(FP_k / N_images,
  found_k / N_lesions)``, starting at ``(0, 0)``.

Each detection moves only one coordinate, so the curve is a staircase and
linear interpolation along it is flat between FP levels. At an FP rate the
curve reaches exactly, the value taken is the top of the vertical step: every
lesion found before the next false positive, which is the sensitivity
reachable with at most that many FPs per image. (DeepLesion's code calls
``scipy.interpolate.interp1d`` on the raw points, which gives NaN at such
rates when several points share them.) Beyond the last detection's FP rate the
sensitivity stays at its final value, as there.

Boxes are ``(x1, y1, x2, y2)`` in continuous pixel coordinates, area
``(x2 - x1) * (y2 - y1)`` as in torchvision (DeepLesion's code adds 1 pixel
to each side, an older convention).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["FROC_FPS", "FROC_AVERAGE_FPS", "FROCResult", "box_iou", "froc", "froc_curve", "unmatched_detection_score"]

#: False positives per image at which ULD papers report sensitivity.
FROC_FPS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
#: The operating points the MoMBS paper averages.
FROC_AVERAGE_FPS = (0.5, 1.0, 2.0)


def box_iou(a, b) -> np.ndarray:
    """IoU of every box in ``a`` with every box in ``b``.

    Args:
        a: ``(n, 4)`` boxes ``(x1, y1, x2, y2)``.
        b: ``(m, 4)`` boxes.

    Returns:
        ``(n, m)`` float64 in ``[0, 1]``; 0 where a union is empty.
    """
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _boxes(entry, what: str, i: int) -> np.ndarray:
    boxes = entry.get("boxes") if isinstance(entry, Mapping) else entry
    if boxes is None:
        raise ValueError(f"{what}[{i}] has no 'boxes'")
    arr = _to_numpy(boxes)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4 or not np.isfinite(arr).all():
        raise ValueError(f"{what}[{i}] boxes must be (n, 4) finite (x1, y1, x2, y2), got shape {arr.shape}")
    return arr


def _detections(entry, i: int) -> tuple[np.ndarray, np.ndarray]:
    """``(boxes (n, 4), scores (n,))`` from a dict, a ``(boxes, scores)`` pair, or ``(n, 5)`` rows."""
    if isinstance(entry, Mapping):
        boxes, scores = _boxes(entry, "detections", i), entry.get("scores")
        if scores is None:
            raise ValueError(f"detections[{i}] has no 'scores'")
        scores = _to_numpy(scores).reshape(-1)
    elif isinstance(entry, (tuple, list)) and len(entry) == 2:
        boxes, scores = _boxes(entry[0], "detections", i), _to_numpy(entry[1]).reshape(-1)
    else:
        rows = _to_numpy(entry)
        if rows.size == 0:
            return rows.reshape(0, 4), rows.reshape(0)
        if rows.ndim != 2 or rows.shape[1] != 5:
            raise ValueError(
                f"detections[{i}] must be a dict with 'boxes' and 'scores', a (boxes, scores) "
                f"pair or (n, 5) rows (x1, y1, x2, y2, score); got shape {rows.shape}"
            )
        boxes, scores = _boxes(rows[:, :4], "detections", i), rows[:, 4]
    if scores.shape[0] != boxes.shape[0] or not np.isfinite(scores).all():
        raise ValueError(
            f"detections[{i}] has {boxes.shape[0]} boxes and {scores.shape[0]} scores; they must match and be finite"
        )
    return boxes, scores


def froc_curve(detections, ground_truths, *, iou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """The FROC curve over pooled detections (module docstring).

    Args:
        detections: one entry per image: a dict with ``"boxes"`` ``(n, 4)`` and
            ``"scores"`` ``(n,)`` (torchvision's eval output), a ``(boxes,
            scores)`` pair, or ``(n, 5)`` rows ``(x1, y1, x2, y2, score)``;
            tensors or arrays; ``n = 0`` allowed.
        ground_truths: one entry per image, the same length: ``(m, 4)`` boxes
            or a dict with ``"boxes"``; ``m = 0`` for a lesion-free image.
        iou_threshold: IoU a hit needs, in ``(0, 1]`` (0.5).

    Returns:
        ``(fp_per_image, sensitivity)``: ``(D + 1,)`` float64 arrays, the
        curve's points after 0, 1, ..., ``D`` detections (``D`` pooled
        detections). Sensitivity in ``[0, 1]``, higher = better; NaN when no
        image has a lesion.

    Raises:
        ValueError: for lists of different lengths, no images, malformed
            boxes or scores, or a bad ``iou_threshold``.
    """
    curve = _walk(detections, ground_truths, iou_threshold)
    return curve[0], curve[1]


def _checked(detections, ground_truths, iou_threshold, truth_name: str = "ground_truths") -> tuple[list, list]:
    """Per image ``(boxes, scores)`` and ground-truth boxes, after checking every argument
    (``truth_name``: what the caller calls its second argument, for the messages)."""
    if not isinstance(iou_threshold, numbers.Real) or isinstance(iou_threshold, bool) or not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold={iou_threshold!r} must be a number in (0, 1]")
    detections, ground_truths = list(detections), list(ground_truths)
    if len(detections) != len(ground_truths) or not detections:
        raise ValueError(
            f"detections ({len(detections)} images) and {truth_name} ({len(ground_truths)} "
            f"images) must list the same images, at least one"
        )
    gts = [_boxes(g, truth_name, i) for i, g in enumerate(ground_truths)]
    return [_detections(d, i) for i, d in enumerate(detections)], gts


def unmatched_detection_score(detections, given_boxes, *, iou_threshold: float = 0.5) -> np.ndarray:
    """Per image, how confidently the detector sees something that no given box covers.

    The score of an image is the highest score among its detections whose IoU
    with every given box of the image is below ``iou_threshold``, and 0 when
    it has none. A lesion the annotators missed, which the detector finds,
    raises it. So does an ordinary false positive. Higher = more likely an
    image with a missing box.

    Args:
        detections: per image, a dict with ``"boxes"`` ``(n, 4)`` and
            ``"scores"`` ``(n,)`` (torchvision's output), a ``(boxes, scores)``
            pair or ``(n, 5)`` rows ``(x1, y1, x2, y2, score)``.
        given_boxes: per image, the annotated ``(m, 4)`` boxes (or a dict
            with ``"boxes"``).
        iou_threshold: IoU at which a detection counts as covered by a given
            box, in ``(0, 1]`` (0.5).

    Returns:
        ``(N,)`` float64 scores, higher = more likely a missed annotation.

    Raises:
        ValueError: lists of different lengths or empty, malformed boxes or
            scores, or a bad ``iou_threshold``.
    """
    dets, gts = _checked(detections, given_boxes, iou_threshold, "given_boxes")
    out = np.zeros(len(gts), dtype=np.float64)
    for i, ((boxes, scores), given) in enumerate(zip(dets, gts)):
        if not boxes.shape[0]:
            continue
        covered = (
            (box_iou(boxes, given) >= iou_threshold).any(axis=1)
            if given.shape[0]
            else np.zeros(boxes.shape[0], dtype=bool)
        )
        if (~covered).any():
            out[i] = float(scores[~covered].max())
    return out


def _walk(detections, ground_truths, iou_threshold):
    dets, gts = _checked(detections, ground_truths, iou_threshold)
    n_images, n_lesions = len(gts), sum(g.shape[0] for g in gts)
    image = np.concatenate([np.full(b.shape[0], i, dtype=np.int64) for i, (b, _) in enumerate(dets)])
    scores = np.concatenate([s for _, s in dets])
    order = np.argsort(-scores, kind="stable")  # ties: image order, then the image's own order
    found = [np.zeros(g.shape[0], dtype=bool) for g in gts]
    # The IoUs of each image's detections with its lesions, computed once per image.
    hits = [box_iou(b, g) >= iou_threshold for (b, _), g in zip(dets, gts)]
    offset = np.concatenate([[0], np.cumsum([b.shape[0] for b, _ in dets])])
    tp = np.zeros(len(order) + 1, dtype=np.int64)
    fp = np.zeros(len(order) + 1, dtype=np.int64)
    for k, d in enumerate(order, start=1):
        i = image[d]
        hit = hits[i][d - offset[i]]
        new = hit & ~found[i]
        found[i] |= hit
        tp[k] = tp[k - 1] + int(new.sum())
        fp[k] = fp[k - 1] + int(not hit.any())
    sens = tp / n_lesions if n_lesions else np.full(tp.shape, np.nan)
    return fp / n_images, sens, n_images, n_lesions, scores[order]


@dataclass(frozen=True)
class FROCResult:
    """Sensitivities at fixed FP rates and the curve they come from.

    Attributes:
        fps: the FP-per-image rates asked for.
        sensitivity: ``(len(fps),)`` sensitivity at each, in ``[0, 1]``,
            higher = better.
        average: mean sensitivity over ``average_fps`` (paper: 0.5, 1, 2).
        average_fps: the rates averaged.
        fp_per_image: ``(D + 1,)`` the curve's FP rates.
        curve_sensitivity: ``(D + 1,)`` the curve's sensitivities.
        thresholds: ``(D,)`` the pooled detections' scores, highest first: the
            curve's ``k``-th point keeps the detections scoring at least
            ``thresholds[k - 1]``.
        n_images: images evaluated.
        n_lesions: ground-truth lesions.
    """

    fps: tuple
    sensitivity: np.ndarray
    average: float
    average_fps: tuple
    fp_per_image: np.ndarray
    curve_sensitivity: np.ndarray
    thresholds: np.ndarray
    n_images: int
    n_lesions: int

    def as_dict(self) -> dict:
        """JSON-ready: ``{"sens@0.5": ..., ..., "average": ..., "n_images": ..., "n_lesions": ...}``."""
        out = {f"sens@{f:g}": float(s) for f, s in zip(self.fps, self.sensitivity)}
        return {**out, "average": float(self.average), "n_images": self.n_images, "n_lesions": self.n_lesions}


def _sens_at(fp_rate: np.ndarray, sens: np.ndarray, f: float) -> float:
    """The top of the staircase at FP rate ``f``: the most found with at most ``f`` FPs per image."""
    reached = fp_rate <= f + 1e-12
    return float(sens[reached].max())  # the first point (0, 0) is always reached


def froc(
    detections, ground_truths, *, fps=FROC_FPS, average_fps=FROC_AVERAGE_FPS, iou_threshold: float = 0.5
) -> FROCResult:
    """FROC sensitivities at fixed false positives per image, as ULD papers report them.

    Args:
        detections: per image, as for :func:`froc_curve` (all of a detector's
            boxes, however low their score: the curve sets the thresholds).
        ground_truths: per image, the lesions' boxes.
        fps: FP-per-image rates to report, each ``>= 0``; default
            :data:`FROC_FPS` (0.5, 1, 2, 4, 8, 16).
        average_fps: rates whose sensitivities are averaged, each ``>= 0``;
            default :data:`FROC_AVERAGE_FPS` (0.5, 1, 2), the paper's number.
        iou_threshold: IoU a hit needs, in ``(0, 1]`` (0.5).

    Returns:
        :class:`FROCResult`; sensitivities are NaN when no image has a lesion.

    Raises:
        ValueError: as :func:`froc_curve`, or for negative or empty rate lists.
    """
    fps, average_fps = _rates("fps", fps), _rates("average_fps", average_fps)
    fp_rate, sens, n_images, n_lesions, thresholds = _walk(detections, ground_truths, iou_threshold)
    if n_lesions == 0:
        at = np.full(len(fps), np.nan)
        average = float("nan")
    else:
        at = np.array([_sens_at(fp_rate, sens, f) for f in fps])
        average = float(np.mean([_sens_at(fp_rate, sens, f) for f in average_fps]))
    return FROCResult(
        fps=fps,
        sensitivity=at,
        average=average,
        average_fps=average_fps,
        fp_per_image=fp_rate,
        curve_sensitivity=sens,
        thresholds=thresholds,
        n_images=n_images,
        n_lesions=n_lesions,
    )


def _rates(name: str, values) -> tuple:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    if not out or not all(np.isfinite(v) and v >= 0 for v in out):
        raise ValueError(f"{name}={values!r} must be a non-empty list of FP-per-image rates >= 0")
    return out
