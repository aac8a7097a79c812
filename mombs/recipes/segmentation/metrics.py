"""Segmentation metrics: per-image Dice (MONAI ``DiceMetric``) and lesion-wise sensitivity.

Empty ground truth follows MONAI's ``DiceMetric(ignore_empty=...)``, read in
its source (``monai/metrics/meandice.py``, ``DiceHelper.compute_channel``):

- ``ignore_empty=True`` (MONAI's default and ours): a class absent from an
  image's ground truth scores NaN for that image, whatever was predicted, and
  means skip NaNs. An image with no foreground class at all is NaN and leaves
  the mean over the test set; false positives on empty images are not counted.
- ``ignore_empty=False``: such a class scores 1 when the prediction is empty
  too, 0 otherwise, so false positives on empty images pull the mean down.

Lesion-wise sensitivity counts the connected components of the ground truth
(``scipy.ndimage.label``) and calls one found when the predicted mask
overlaps it by at least one pixel.

MONAI and scipy are optional dependencies (``pip install 'mombs[seg]'``),
imported at the first call.
"""

from __future__ import annotations

import numpy as np
import torch

from ..._checks import check_int, is_int

__all__ = ["dice_per_image", "lesion_sensitivity", "mean_dice", "small_lesion_dice"]


def _label_map(x, name: str) -> torch.Tensor:
    """``x`` as a ``(B, 1, *S)`` integer label map.

    Floating point ``(B, C, *S)`` are logits; integer or bool input is a label
    map, ``(B, 1, *S)`` when its second dimension is 1, else ``(B, *S)``.
    """
    x = torch.as_tensor(x)
    if x.ndim < 2:
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}; it must be (B, *S) or (B, 1, *S) labels, or (B, C, *S) logits"
        )
    if x.is_floating_point():
        if x.ndim < 3:
            raise ValueError(f"{name} is floating point of shape {tuple(x.shape)}: logits must be (B, C, *S)")
        # Logits: the class with the largest one, or for one sigmoid channel
        # the foreground where the logit is positive (probability > 0.5).
        return x.argmax(dim=1, keepdim=True) if x.shape[1] > 1 else (x > 0).long()
    return x.long() if x.ndim >= 3 and x.shape[1] == 1 else x.long().unsqueeze(1)


def _pair(pred, target) -> tuple[torch.Tensor, torch.Tensor]:
    pred_map, target_map = _label_map(pred, "pred"), _label_map(target, "target")
    if target_map.shape != pred_map.shape:
        raise ValueError(
            f"pred {tuple(torch.as_tensor(pred).shape)} and target "
            f"{tuple(torch.as_tensor(target).shape)} are not label maps of the same shape: "
            f"{tuple(pred_map.shape)} vs {tuple(target_map.shape)} as (B, 1, *S)"
        )
    return pred_map, target_map.to(pred_map.device)


def dice_per_image(
    pred, target, *, num_classes: int | None = None, include_background: bool = False, ignore_empty: bool = True
) -> torch.Tensor:
    """Dice of each image, averaged over its classes, by MONAI's ``DiceMetric``.

    Args:
        pred: integer label maps ``(B, *S)`` or ``(B, 1, *S)``, or float logits
            ``(B, C, *S)`` (argmax over ``C``; one channel: foreground where the
            logit is > 0).
        target: ground-truth class indices ``(B, *S)`` or ``(B, 1, *S)``.
        num_classes: classes including the background, ``>= 2``; default the
            logits' ``C`` (2 for one channel), else 2 (binary masks).
        include_background: count class 0 too (MONAI's default is ``True``; off
            here because the background of a lesion image is nearly all of it).
        ignore_empty: MONAI's semantics (module docstring): ``True`` gives NaN
            for a class missing from an image's ground truth, ``False`` gives 1
            if it is missing from the prediction too, else 0.

    Returns:
        ``(B,)`` float32 Dice in ``[0, 1]``, higher = better; the mean over the
        classes that are not NaN, NaN when every class is (an image without
        foreground under ``ignore_empty=True``).

    Raises:
        ValueError: for shapes that disagree or a bad ``num_classes``.
        ImportError: when MONAI is not installed.
    """
    try:
        from monai.metrics import DiceMetric
    except ImportError as err:
        raise ImportError("segmentation metrics need MONAI: pip install 'mombs[seg]'") from err
    if num_classes is None:
        logits = torch.as_tensor(pred)
        num_classes = max(logits.shape[1], 2) if logits.is_floating_point() and logits.ndim >= 3 else 2
    if not is_int(num_classes) or num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r} must be an integer >= 2 (background included)")
    pred_map, target_map = _pair(pred, target)
    for name, m in (("pred", pred_map), ("target", target_map)):
        if m.numel() and (m.min() < 0 or m.max() >= num_classes):
            raise ValueError(
                f"{name} holds labels in [{m.min().item()}, {m.max().item()}]; with "
                f"num_classes={num_classes} they must lie in [0, {num_classes - 1}]"
            )
    metric = DiceMetric(
        include_background=bool(include_background),
        reduction="none",
        ignore_empty=bool(ignore_empty),
        num_classes=int(num_classes),
    )
    scores = metric(pred_map, target_map)  # (B, classes counted)
    return torch.nanmean(scores.float(), dim=1)


def mean_dice(per_image) -> float:
    """The mean of :func:`dice_per_image` values over a set, NaN images left out.

    Args:
        per_image: ``(N,)`` Dice values (tensor or array), e.g. the batches'
            :func:`dice_per_image` concatenated.

    Returns:
        The mean, higher = better; NaN when no image has a value.
    """
    values = np.asarray(torch.as_tensor(per_image).detach().cpu(), dtype=np.float64).reshape(-1)
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else float("nan")


def _masks(pred, target) -> tuple[np.ndarray, np.ndarray]:
    """Foreground masks ``(B, *S)`` as numpy bool arrays."""
    p = torch.as_tensor(pred).detach().cpu()
    t = torch.as_tensor(target).detach().cpu()
    if p.shape != t.shape or p.ndim < 2:
        raise ValueError(
            f"pred_mask {tuple(p.shape)} and target_mask {tuple(t.shape)} must be masks of "
            f"the same shape (B, *S) or (B, 1, *S)"
        )
    p, t = p.numpy() != 0, t.numpy() != 0
    if p.ndim > 2 and p.shape[1] == 1:
        p, t = p[:, 0], t[:, 0]
    return p, t


def lesion_sensitivity(pred_mask, target_mask, *, connectivity: int = 2, per_image: bool = False):
    """Lesions found: ground-truth connected components that the prediction overlaps.

    Args:
        pred_mask: ``(B, *S)`` or ``(B, 1, *S)`` predicted foreground (nonzero =
            lesion), tensor or array.
        target_mask: the ground truth, same shape.
        connectivity: which neighbours join pixels into one lesion:
            ``1`` (faces: 4-connected in 2-D) up to ``len(S)`` (8-connected in
            2-D; default 2).
        per_image: return per-image counts instead of the set's totals.

    Returns:
        ``(found, total)``: ints over the batch, or ``(B,)`` int64 arrays with
        ``per_image=True``. Sensitivity is ``found / total`` (higher = better),
        undefined when ``total == 0``.

    Raises:
        ValueError: for masks of different shapes or a bad ``connectivity``.
        ImportError: when scipy is not installed.
    """
    try:
        from scipy import ndimage
    except ImportError as err:
        raise ImportError("lesion counts need scipy: pip install 'mombs[seg]'") from err
    p, t = _masks(pred_mask, target_mask)
    spatial = t.ndim - 1
    if not is_int(connectivity) or not 1 <= connectivity <= spatial:
        raise ValueError(f"connectivity={connectivity!r} must be an integer in [1, {spatial}]")
    structure = ndimage.generate_binary_structure(spatial, int(connectivity))
    found = np.zeros(len(t), dtype=np.int64)
    total = np.zeros(len(t), dtype=np.int64)
    for b in range(len(t)):
        labels, n = ndimage.label(t[b], structure=structure)
        total[b] = n
        # Component ids under predicted pixels; 0 is the background.
        found[b] = np.count_nonzero(np.unique(labels[p[b]]))
    return (found, total) if per_image else (int(found.sum()), int(total.sum()))


def small_lesion_dice(pred, target, *, max_area: int, **dice_kw) -> tuple[float, int]:
    """Mean Dice over the images whose lesion area is below ``max_area`` pixels.

    Images without foreground are left out (they have no lesion to be small).

    Args:
        pred: as for :func:`dice_per_image`.
        target: ``(B, *S)`` or ``(B, 1, *S)`` class indices; the lesion area is
            the count of nonzero pixels.
        max_area: area threshold in pixels, ``>= 1``; images with
            ``0 < area < max_area`` are kept.
        **dice_kw: passed to :func:`dice_per_image`.

    Returns:
        ``(mean Dice, images kept)``: higher = better; NaN and 0 when none is kept.

    Raises:
        ValueError: for a bad ``max_area`` or what :func:`dice_per_image` refuses.
    """
    check_int("max_area", max_area, 1)
    dice = dice_per_image(pred, target, **dice_kw)
    t = torch.as_tensor(target)
    area = (t.reshape(t.shape[0], -1) != 0).sum(dim=1).to(dice.device)
    keep = (area > 0) & (area < max_area)
    return mean_dice(dice[keep]), int(keep.sum())
