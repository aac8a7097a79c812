"""Segmentation: Dice + CE per image, built on MONAI (``shared/METHOD.md`` §1 and §6).

MONAI's ``DiceCELoss`` refuses ``reduction="none"``, and ``batch=True`` Dice
pools the images into one score, so neither gives the one value per image that
MoMBS ranks. :func:`per_image_dice_ce` builds the same quantity from
``monai.losses.DiceLoss(reduction="none")`` (averaged over its classes) plus
the cross-entropy averaged over each image's pixels; because every image has
the same number of pixels and classes, its batch mean is exactly
``DiceCELoss``'s value with the same settings.

Targets follow ``DiceCELoss(to_onehot_y=True)``: class indices ``(B, 1, H, W)``
(``(B, H, W)`` is accepted too and given the channel). The uncertainty is the
library default: the mean per-pixel entropy of the mean softmax (sigmoid for a
one-channel output) over the K disturbed passes.

MONAI is an optional dependency (``pip install 'mombs[seg]'``), imported at the
first call, so ``import mombs.tasks`` works without it.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .._checks import is_real
from ..noise import default_output_fn
from .base import TaskAdapter, register_task

__all__ = ["SEGMENTATION", "per_image_dice_ce"]


@functools.lru_cache(maxsize=16)
def _dice_loss(include_background: bool, sigmoid: bool, smooth_nr: float, smooth_dr: float):
    """A ``DiceLoss`` per setting: it holds no tensors (no class weights), so
    one instance serves every device."""
    try:
        from monai.losses import DiceLoss
    except ImportError as err:
        raise ImportError("the segmentation task needs MONAI: pip install 'mombs[seg]'") from err
    return DiceLoss(
        include_background=include_background,
        to_onehot_y=not sigmoid,
        sigmoid=sigmoid,
        softmax=not sigmoid,
        smooth_nr=smooth_nr,
        smooth_dr=smooth_dr,
        reduction="none",
    )


def _check_weight(name: str, value) -> float:
    if not is_real(value) or not value >= 0:
        raise ValueError(f"{name}={value!r} must be a number >= 0")
    return float(value)


def _as_label_map(logits: torch.Tensor, target) -> torch.Tensor:
    """``target`` as ``(B, 1, *S)`` after checking it against ``(B, C, *S)`` logits."""
    if not torch.is_tensor(target):
        raise ValueError(f"target must be a tensor of class indices, got {type(target).__name__}")
    if target.ndim == logits.ndim - 1:
        target = target.unsqueeze(1)
    if target.shape[0] != logits.shape[0] or target.shape[1] != 1 or target.shape[2:] != logits.shape[2:]:
        want = (logits.shape[0], 1, *logits.shape[2:])
        raise ValueError(
            f"target has shape {tuple(target.shape)}; for logits {tuple(logits.shape)} it must be "
            f"class indices {want} or {(want[0], *want[2:])}"
        )
    if target.numel():
        lo, hi = torch.aminmax(target.detach())
        top = max(logits.shape[1] - 1, 1)  # one sigmoid channel: targets in {0, 1}
        if lo < 0 or hi > top:
            raise ValueError(
                f"target values lie in [{lo.item()}, {hi.item()}]; with {logits.shape[1]} "
                f"output channel(s) they must lie in [0, {top}]"
            )
    return target


def per_image_dice_ce(
    outputs,
    target: torch.Tensor,
    *,
    include_background: bool = True,
    lambda_dice: float = 1.0,
    lambda_ce: float = 1.0,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
) -> torch.Tensor:
    """Dice + cross-entropy with one value per image, higher = worse fit.

    ``loss_b = lambda_dice * mean_c(1 - Dice_bc) + lambda_ce * mean_pixels(CE_b)``,
    the weighting of ``monai.losses.DiceCELoss``. With ``C > 1`` output channels
    it is MONAI's ``DiceCELoss(softmax=True, to_onehot_y=True, ...)``; with one
    channel, ``DiceCELoss(sigmoid=True, ...)`` with binary cross-entropy on the
    logits. The batch mean equals that loss's value (tested); Dice is never
    pooled over the batch (``batch=False``).

    Args:
        outputs: ``(B, C, *S)`` logits, or a model output that
            :func:`mombs.noise.default_output_fn` reads them from.
        target: ``(B, 1, *S)`` or ``(B, *S)`` class indices in ``[0, C)``
            (``{0, 1}`` for one channel; soft values in ``[0, 1]`` work there).
        include_background: count channel 0 in the Dice term (MONAI's default,
            ``True``); the cross-entropy always covers every class, as in
            ``DiceCELoss``. Ignored for one channel, which is the foreground.
        lambda_dice: weight of the Dice term, ``>= 0``.
        lambda_ce: weight of the cross-entropy term, ``>= 0``.
        smooth_nr: Dice numerator smoothing (MONAI's default ``1e-5``).
        smooth_dr: Dice denominator smoothing (MONAI's default ``1e-5``).

    Returns:
        ``(B,)`` losses, higher = worse fit. Dice term in ``[0, 1]``, so an image
        whose classes are all missed scores near ``lambda_dice`` plus its CE.

    Raises:
        ValueError: for logits without a channel and a spatial dimension, a
            target of the wrong shape or out-of-range values, or negative weights.
    """
    logits = default_output_fn(outputs)
    if not torch.is_tensor(logits) or logits.ndim < 3:
        got = tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
        raise ValueError(f"outputs must be (B, C, *S) logits with at least one spatial dimension, got {got}")
    lambda_dice, lambda_ce = _check_weight("lambda_dice", lambda_dice), _check_weight("lambda_ce", lambda_ce)
    smooth_nr, smooth_dr = _check_weight("smooth_nr", smooth_nr), _check_weight("smooth_dr", smooth_dr)
    target = _as_label_map(logits, target)
    sigmoid = logits.shape[1] == 1
    # One channel is the foreground: MONAI would warn and ignore include_background=False.
    dice = _dice_loss(bool(include_background) or sigmoid, sigmoid, smooth_nr, smooth_dr)(logits, target)
    b = logits.shape[0]
    dice = dice.reshape(b, -1).mean(dim=1)  # (B, C', 1, ...) -> mean over the classes
    if sigmoid:
        ce = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none")
    else:
        ce = F.cross_entropy(logits, target[:, 0].long(), reduction="none")
    ce = ce.reshape(b, -1).mean(dim=1)
    return lambda_dice * dice + lambda_ce * ce


#: The registered adapter: :func:`per_image_dice_ce` with its defaults, softmax
#: (sigmoid for one channel) predictions, and the mean per-pixel entropy of
#: the mean prediction as uncertainty. For other loss settings pass
#: ``loss_fn=functools.partial(per_image_dice_ce, include_background=False)``
#: to the assessor.
SEGMENTATION = register_task(
    TaskAdapter("segmentation", loss_fn=per_image_dice_ce, activation="auto", uncertainty_fn=None)
)
