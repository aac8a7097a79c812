"""Classification, whole-image or per position (``shared/METHOD.md`` §1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..noise import default_output_fn
from .base import TaskAdapter, register_task

__all__ = ["CLASSIFICATION", "per_sample_loss"]


def per_sample_loss(outputs, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with ``reduction="none"``, averaged to one value per sample.

    Args:
        outputs: ``(B, C)`` or dense ``(B, C, *S)`` logits, or a model output
            that :func:`mombs.noise.default_output_fn` reads them from.
        target: ``(B,)`` or ``(B, *S)`` class indices.

    Returns:
        ``(B,)`` losses, higher = worse fit.

    Raises:
        ValueError: integer labels whose shape does not fit the logits
            (``(B, 1)`` labels for ``(B, C)`` logits, say), naming both shapes.
    """
    logits = default_output_fn(outputs)
    if (
        torch.is_tensor(target)
        and torch.is_tensor(logits)
        and not target.is_floating_point()
        and target.ndim != logits.ndim - 1
    ):
        raise ValueError(
            f"classification labels must be (B,) class indices (or (B, *S) for dense (B, C, *S) "
            f"logits), got labels of shape {tuple(target.shape)} for logits of shape "
            f"{tuple(logits.shape)}"
            + ("; squeeze the last dimension (y.squeeze(1))" if target.ndim == 2 and target.shape[1] == 1 else "")
        )
    loss = F.cross_entropy(logits, target, reduction="none")
    return loss.reshape(loss.shape[0], -1).mean(dim=1) if loss.ndim > 1 else loss


CLASSIFICATION = register_task(TaskAdapter("classification", loss_fn=per_sample_loss))
