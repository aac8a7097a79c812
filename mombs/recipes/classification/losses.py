"""Per-sample classification losses that MoMBS stacks on (``shared/METHOD.md`` §3).

Every loss maps ``(logits (B, C), target (B,))`` to per-sample values ``(B,)``
(``reduction="none"``), so that MoMBS can rank samples by it. Build one by name
with :func:`create_loss`.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["LOSSES", "create_loss"]


class CrossEntropy(nn.Module):
    def forward(self, logits, target):
        return F.cross_entropy(logits, target, reduction="none")


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): ``-(1 - p_t)^gamma log p_t``."""

    def __init__(self, gamma: float = 1.0):
        super().__init__()
        self.gamma = gamma

    def forward(self, logits, target):
        logp = F.log_softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
        return -((1 - logp.exp()) ** self.gamma) * logp


class GCELoss(nn.Module):
    """Generalized cross-entropy (Zhang & Sabuncu 2018): ``(1 - p_t^q) / q``."""

    def __init__(self, q: float = 0.7):
        super().__init__()
        self.q = q

    def forward(self, logits, target):
        p = F.softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1).clamp_min(1e-7)
        return (1 - p**self.q) / self.q


class SCELoss(nn.Module):
    """Symmetric cross-entropy (Wang et al. 2019): ``alpha CE + beta RCE``, log 0 := -4."""

    def __init__(self, alpha: float = 0.1, beta: float = 1.0):
        super().__init__()
        self.alpha, self.beta = alpha, beta

    def forward(self, logits, target):
        ce = F.cross_entropy(logits, target, reduction="none")
        p = F.softmax(logits, dim=1).clamp(1e-7, 1.0)
        one_hot = F.one_hot(target, logits.shape[1]).float().clamp(1e-4, 1.0)
        rce = -(p * one_hot.log()).sum(1)
        return self.alpha * ce + self.beta * rce


class NCERCELoss(nn.Module):
    """Normalized CE + reverse CE, an active-passive loss (Ma et al. 2020)."""

    def __init__(self, alpha: float = 1.0, beta: float = 1.0):
        super().__init__()
        self.alpha, self.beta = alpha, beta

    def forward(self, logits, target):
        logp = F.log_softmax(logits, dim=1)
        nce = logp.gather(1, target[:, None]).squeeze(1) / logp.sum(1)
        p = logp.exp().clamp(1e-7, 1.0)
        one_hot = F.one_hot(target, logits.shape[1]).float().clamp(1e-4, 1.0)
        rce = -(p * one_hot.log()).sum(1)
        return self.alpha * nce + self.beta * rce


class LDAMLoss(nn.Module):
    """Label-distribution-aware margin (Cao et al. 2019), with optional deferred re-weighting.

    Args:
        class_counts: ``(C,)`` training images per class.
        max_margin: margin of the rarest class (0.5 in the paper).
        scale: logit scale ``s`` (30).
        drw_epoch: from this epoch on, weight classes by the effective number
            (beta = 0.9999); ``None`` for no re-weighting. Call :meth:`set_epoch`.
    """

    def __init__(self, class_counts, max_margin: float = 0.5, scale: float = 30.0, drw_epoch: int | None = None):
        super().__init__()
        counts = torch.as_tensor(class_counts, dtype=torch.float32)
        margins = counts.clamp_min(1) ** -0.25
        self.register_buffer("margins", margins * (max_margin / margins.max()))
        beta = 0.9999
        eff = (1 - beta) / (1 - beta ** counts.clamp_min(1))
        self.register_buffer("drw_weights", eff / eff.sum() * len(counts))
        self.scale, self.drw_epoch, self.epoch = scale, drw_epoch, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def forward(self, logits, target):
        shifted = logits - F.one_hot(target, logits.shape[1]) * self.margins[target][:, None]
        weight = self.drw_weights if self.drw_epoch is not None and self.epoch >= self.drw_epoch else None
        return F.cross_entropy(self.scale * shifted, target, weight=weight, reduction="none")


class LogitAdjustedLoss(nn.Module):
    """Balanced softmax / logit adjustment (Ren et al. 2020; Menon et al. 2021):
    cross-entropy on ``logits + tau * log prior``."""

    def __init__(self, class_counts, tau: float = 1.0):
        super().__init__()
        counts = torch.as_tensor(class_counts, dtype=torch.float32).clamp_min(1)
        self.register_buffer("log_prior", tau * (counts / counts.sum()).log())

    def forward(self, logits, target):
        return F.cross_entropy(logits + self.log_prior, target, reduction="none")


#: Loss builders by name. Those that need class counts take ``class_counts=``. Its
#: keys are :data:`.names.LOSS_NAMES`, which a config is checked against without torch.
LOSSES = {
    "ce": CrossEntropy,
    "focal": FocalLoss,
    "gce": GCELoss,
    "sce": SCELoss,
    "nce-rce": NCERCELoss,
    "ldam": LDAMLoss,
    "ldam-drw": lambda class_counts, drw_epoch=None, **kw: LDAMLoss(class_counts, drw_epoch=drw_epoch, **kw),
    "balanced-softmax": LogitAdjustedLoss,
    "logit-adjustment": LogitAdjustedLoss,
}
_NEEDS_COUNTS = {"ldam", "ldam-drw", "balanced-softmax", "logit-adjustment"}


def create_loss(name: str, *, class_counts=None, epochs: int | None = None, **kwargs) -> nn.Module:
    """A per-sample loss by name.

    Args:
        name: one of :data:`LOSSES`.
        class_counts: ``(C,)`` training images per class, for the long-tail losses.
        epochs: total epochs; ``ldam-drw`` starts re-weighting at 80% of them.
        **kwargs: the loss's own hyper-parameters.
    """
    if name not in LOSSES:
        raise ValueError(f"loss={name!r} is not known; choose one of {sorted(LOSSES)}")
    if name in _NEEDS_COUNTS:
        if class_counts is None:
            raise ValueError(f"loss={name!r} needs class_counts")
        kwargs["class_counts"] = class_counts
    if name == "ldam-drw":
        kwargs.setdefault("drw_epoch", int(math.floor(0.8 * epochs)) if epochs else 0)
    return LOSSES[name](**kwargs)
