"""Label-issue scores of segmentation masks: where a trained model and the given mask disagree.

Pure functions of arrays (no model, no data set): the model's per-pixel
probabilities of each image and the given integer mask. What each score
catches on the synthetic CT set's planted corruptions is measured in
``benchmarks/dense_label_issues.py`` (``docs/quality.md``):

- ``disagreement``: one minus the Dice between the predicted and the given
  foreground (``0`` where both are empty), ``[0, 1]``. A missed lesion (given
  mask empty, model sure there is one) scores 1, a shifted mask near 1, a
  dilated or eroded one in between.
- ``region_error``: the mean, over the pixels of the given and the
  predicted foreground and a ``border``-pixel ring around them, of one minus
  the probability the model gives each pixel's given class, ``[0, 1]``: the
  AUM-like margin of the lesion and its border, read from probabilities.
  Continuous where ``disagreement`` saturates.
- ``area``: ``|log((predicted area + 1) / (given area + 1))|``, ``>= 0``:
  erased and eroded masks are too small, dilated ones too large.
- ``cleanlab``: one minus cleanlab's ``segmentation.rank.get_label_quality_scores``
  (softmin over pixels of the given class's probability), ``[0, 1]``.

Every score is higher = more likely a wrong mask. :func:`mask_issue_kind`
names the likely error, and :func:`mask_issue_map` draws where it is.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MASK_KINDS", "MASK_SCORES", "mask_issue_kind", "mask_issue_map", "mask_issue_scores"]

#: The per-image scores :func:`mask_issue_scores` returns, each higher = worse.
MASK_SCORES = ("disagreement", "region_error", "area", "cleanlab")

#: What :func:`mask_issue_kind` can call an image's mask, given the model's prediction.
MASK_KINDS = ("agrees", "missing", "extra", "too small", "too large", "misplaced")


def _check(prob, given) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(prob)
    g = np.asarray(given)
    if p.ndim != 4 or p.shape[1] < 2:
        raise ValueError(f"prob must be (N, K, H, W) per-pixel class probabilities with K >= 2, got shape {p.shape}")
    if g.shape != (p.shape[0], *p.shape[2:]):
        raise ValueError(
            f"given must be the (N, H, W) = {(p.shape[0], *p.shape[2:])} integer masks of prob's "
            f"images, got shape {g.shape}"
        )
    if not np.issubdtype(g.dtype, np.integer) and g.dtype != bool:
        raise ValueError(f"given must hold integer class indices, got dtype {g.dtype}")
    if g.size and (int(g.min()) < 0 or int(g.max()) >= p.shape[1]):
        raise ValueError(
            f"given must lie in [0, {p.shape[1]}) (prob has {p.shape[1]} classes), got [{int(g.min())}, {int(g.max())}]"
        )
    if not np.isfinite(p).all():
        raise ValueError("prob holds NaN or infinite values")
    return p.astype(np.float32, copy=False), g.astype(np.int64, copy=False)


def _pixels(mask: np.ndarray) -> np.ndarray:
    """``(N,)`` float64: the true pixels of each image of an ``(N, H, W)`` bool mask."""
    return mask.reshape(mask.shape[0], -1).sum(1).astype(np.float64)


def _ring(fg: np.ndarray, border: int) -> np.ndarray:
    """``fg`` grown by ``border`` pixels in each image (4-connected steps), ``(N, H, W)`` bool."""
    out = fg.copy()
    for _ in range(border):
        grown = out.copy()
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        grown[:, :, 1:] |= out[:, :, :-1]
        grown[:, :, :-1] |= out[:, :, 1:]
        out = grown
    return out


def mask_issue_scores(prob, given, *, border: int = 2, cleanlab: bool | None = None) -> dict[str, np.ndarray]:
    """Per-image label-issue scores of given masks from a model's per-pixel probabilities.

    The foreground is every class but 0 (background); the prediction is the
    per-pixel argmax.

    Args:
        prob: ``(N, K, H, W)`` per-pixel class probabilities of a trained model
            (softmax outputs; an eval-mode pass, or out-of-sample predictions),
            ``K >= 2``.
        given: ``(N, H, W)`` given (possibly wrong) masks, integers in ``[0, K)``.
        border: width in pixels of the ring around the given and predicted
            foreground that ``region_error`` also averages over, ``>= 0``.
        cleanlab: add cleanlab's score (``None``: when cleanlab imports;
            ``True``: required, ImportError naming the extra otherwise).

    Returns:
        ``{name: (N,) float64}`` for each of :data:`MASK_SCORES` computed,
        higher = more likely a wrong mask, plus ``predicted_area`` and
        ``given_area`` (foreground pixels).

    Raises:
        ValueError: naming the argument, for a wrong shape, class index or value.
    """
    if isinstance(border, bool) or not isinstance(border, (int, np.integer)) or border < 0:
        raise ValueError(f"border={border!r} must be an integer >= 0")
    p, g = _check(prob, given)
    n = p.shape[0]
    pred = p.argmax(1)
    pred_fg, given_fg = pred > 0, g > 0
    a_pred, a_given = _pixels(pred_fg), _pixels(given_fg)
    total = a_pred + a_given
    # foreground pixels predicted as their given class (with several foreground classes, a
    # pixel of the wrong class is not an overlap)
    agree = _pixels((pred == g) & given_fg)
    dice = np.where(total > 0, 2 * agree / np.maximum(total, 1), 1.0)
    region = _ring(pred_fg | given_fg, border)
    p_given = np.take_along_axis(p, g[:, None], axis=1)[:, 0]
    count = region.reshape(n, -1).sum(1)
    err = ((1.0 - p_given) * region).reshape(n, -1).sum(1, dtype=np.float64)
    scores = {
        "disagreement": 1.0 - dice,
        "region_error": np.where(count > 0, err / np.maximum(count, 1), 0.0),
        "area": np.abs(np.log((a_pred + 1) / (a_given + 1))),
        "predicted_area": a_pred,
        "given_area": a_given,
    }
    if cleanlab is not False:
        try:
            from cleanlab.segmentation.rank import get_label_quality_scores
        except ImportError as err:
            if cleanlab:
                raise ImportError("the cleanlab score needs cleanlab: pip install 'mombs[quality]'") from err
        else:
            image_scores, _ = get_label_quality_scores(g, p, verbose=False)
            scores["cleanlab"] = 1.0 - np.asarray(image_scores, dtype=np.float64)
    return scores


def mask_issue_kind(scores: dict) -> np.ndarray:
    """The likely error of each image's mask, by name (one of :data:`MASK_KINDS`).

    Read from :func:`mask_issue_scores`'s areas and ``disagreement``: a
    ``"missing"`` mask is empty where the model finds foreground, an
    ``"extra"`` one marks foreground the model finds none of, ``"too
    small"`` / ``"too large"`` masks overlap the prediction but differ in
    area by more than a third, ``"misplaced"`` ones overlap it little at a
    similar area, and ``"agrees"`` the rest (Dice of at least 0.8).

    Args:
        scores: what :func:`mask_issue_scores` returned.

    Returns:
        ``(N,)`` str array.
    """
    a_pred, a_given, dis = scores["predicted_area"], scores["given_area"], scores["disagreement"]
    ratio = (a_pred + 1) / (a_given + 1)
    kind = np.full(a_pred.shape, "misplaced", dtype=object)
    kind[ratio > 4 / 3] = "too small"
    kind[ratio < 3 / 4] = "too large"
    kind[(a_given == 0) & (a_pred > 0)] = "missing"
    kind[(a_pred == 0) & (a_given > 0)] = "extra"
    kind[dis <= 0.2] = "agrees"
    return kind.astype(str)


def mask_issue_map(prob, given) -> np.ndarray:
    """Where the given masks and the model disagree, per pixel: ``(N, H, W)`` in ``[-1, 1]``.

    Positive where the model sees foreground the given mask lacks (the mask
    may miss it), negative where the mask claims foreground the model does not
    see (the mask may be too large or misplaced); the value is the
    probability the model gives the foreground minus the given mask's
    foreground indicator.

    Args:
        prob: ``(N, K, H, W)`` per-pixel class probabilities, ``K >= 2``.
        given: ``(N, H, W)`` given masks, integers in ``[0, K)``.

    Returns:
        ``(N, H, W)`` float32.
    """
    p, g = _check(prob, given)
    return (1.0 - p[:, 0]) - (g > 0).astype(np.float32)
