"""What a segmentation run trains and scores with: the parts, the lesion loss, the fit, Dice.

MONAI and scipy are imported when used.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn as nn

from ...tasks.base import TaskAdapter
from ...tasks.segmentation import per_image_dice_ce
from .. import TaskParts

__all__ = ["DiceCELoss", "SEG_TASK", "create_model", "dice_fit", "evaluate_segmentation", "parts", "predict_probs"]

#: Batch size of evaluation forwards.
EVAL_BATCH_SIZE = 32

#: The lesion task as the runner trains it: Dice on the lesion channel only
#: (the background of a CT slice is nearly all of it and would swamp the Dice
#: term), cross-entropy over both classes; the assessment passes use the same loss.
_lesion_dice_ce = functools.partial(per_image_dice_ce, include_background=False)
SEG_TASK = TaskAdapter("segmentation", loss_fn=_lesion_dice_ce, activation="softmax")


class DiceCELoss(nn.Module):
    """:func:`~mombs.tasks.segmentation.per_image_dice_ce` (lesion Dice + CE) as a module.

    ``forward(logits (B, 2, H, W), masks (B, H, W)) -> (B,)`` losses, higher = worse fit.
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _lesion_dice_ce(logits, target)


def _hard_dice(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(B,)`` Dice of binary maps; 1 where both are empty (nothing to find, nothing claimed)."""
    p, t = pred.flatten(1).float(), target.flatten(1).float()
    inter, total = (p * t).sum(1), p.sum(1) + t.sum(1)
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))


def dice_fit(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """How well a training forward fits each given mask: ``(B,)`` hard lesion Dice in ``[0, 1]``.

    Args:
        logits: ``(B, 2, H, W)``.
        target: ``(B, H, W)`` given masks in ``{0, 1}``.
    """
    return _hard_dice(logits.argmax(1), target)


def evaluate_segmentation(model, split, batch_size: int = EVAL_BATCH_SIZE) -> tuple[float, np.ndarray]:
    """Mean per-image lesion Dice over a split, and the predicted masks.

    Args:
        model: the network; put in eval mode.
        split: ``(x (N, C, H, W) images, y (N, H, W) clean masks)`` on the model's device.
        batch_size: slices per forward.

    Returns:
        ``(dice, pred)``: the mean of MONAI ``DiceMetric`` per-image Dice over the
        slices with a lesion (empty slices are NaN there and left out, MONAI's
        ``ignore_empty``), higher = better; ``pred`` ``(N, H, W)`` uint8 masks.
    """
    from .metrics import dice_per_image, mean_dice

    x, y = split
    model.eval()
    preds = []
    with torch.no_grad():
        for s in range(0, len(x), batch_size):
            preds.append(model(x[s : s + batch_size]).argmax(1).to(torch.uint8).cpu())
    pred = torch.cat(preds) if preds else torch.zeros((0, *y.shape[1:]), dtype=torch.uint8)
    dice = dice_per_image(pred.long(), y.cpu(), num_classes=2)
    return mean_dice(dice), pred.numpy()


def predict_probs(model, x: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE):
    """The model's eval-mode per-pixel class probabilities, a chunk at a time.

    Args:
        model: the network; put in eval mode.
        x: ``(N, C, H, W)`` images on the model's device.
        batch_size: slices per forward.

    Yields:
        ``(start, probs)``: the chunk's first index and its ``(b, K, H, W)``
        float32 softmax probabilities on the CPU, as a numpy array.
    """
    model.eval()
    with torch.no_grad():
        for s in range(0, len(x), batch_size):
            yield s, model(x[s : s + batch_size]).float().softmax(1).cpu().numpy()


def create_model(cfg, data) -> nn.Module:
    """The run's MONAI U-Net (weights drawn from torch's global generator: the runner seeds it)."""
    from .models import create_segmentation_model

    return create_segmentation_model(cfg.model, data.x_train.shape[1], data.num_classes)


def parts(cfg, data, model, device) -> TaskParts:
    """The training slices and the evaluation splits on ``device``, the lesion loss and the rest."""
    from torch.utils.data import TensorDataset

    from .models import seg_feature_module

    def on_device(x, y):
        return x.to(device), torch.as_tensor(y).to(device)

    return TaskParts(
        model=model,
        at=seg_feature_module(model),
        train_data=TensorDataset(*on_device(data.x_train, data.y_train)),
        val=on_device(data.x_val, data.y_val),
        test=on_device(data.x_test, data.y_test),
        evaluate=evaluate_segmentation,
        loss_fn=DiceCELoss().to(device),
        fit_fn=dice_fit,
        task=SEG_TASK,
        head=getattr(model, "fc", None),
    )
