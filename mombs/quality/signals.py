"""Per-step label signals: what one training forward says about each sample's given label.

Kept per epoch (a run's ``history: true``), they give AUM and dataset
cartography (:mod:`mombs.quality.scores`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where logits are read: ``mombs diagnose`` checks its options without torch
    import torch

__all__ = ["given_label_margin", "given_label_prob"]


def _logits_labels(logits, labels) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    logits = torch.as_tensor(logits)
    labels = torch.as_tensor(labels, device=logits.device)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must have shape (B, C) with C >= 2, got {tuple(logits.shape)}")
    if labels.shape != (logits.shape[0],) or labels.dtype.is_floating_point:
        raise ValueError(
            f"labels must be (B,) = ({logits.shape[0]},) integers, got shape "
            f"{tuple(labels.shape)} and dtype {labels.dtype}"
        )
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
        raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got [{int(labels.min())}, {int(labels.max())}]")
    return logits.detach(), labels.long()


def _given_label_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """:func:`given_label_margin` without the checks (trusted callers: the training loop)."""
    given = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return given - others.max(dim=1).values


def _given_label_prob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """:func:`given_label_prob` without the checks (trusted callers: the training loop)."""
    return logits.float().softmax(dim=1).gather(1, labels[:, None]).squeeze(1)


def given_label_margin(logits, labels) -> torch.Tensor:
    """The margin of AUM (Pleiss et al. 2020, eq. 1): the given label's logit minus the largest other.

    Args:
        logits: ``(B, C)`` raw model outputs of the training forward.
        labels: ``(B,)`` given (possibly wrong) labels.

    Returns:
        ``(B,)`` float margins, detached; negative where another class wins.
        Lower = worse.
    """
    return _given_label_margin(*_logits_labels(logits, labels))


def given_label_prob(logits, labels) -> torch.Tensor:
    """The softmax probability of the given label, ``(B,)``: one epoch's cartography confidence.

    Args:
        logits: ``(B, C)`` raw model outputs.
        labels: ``(B,)`` given labels.

    Returns:
        ``(B,)`` float probabilities in ``[0, 1]``, detached; lower = worse.
    """
    return _given_label_prob(*_logits_labels(logits, labels))
