"""ImageNet-sized models users bring: torchvision's ResNet-18/50 and EfficientNet-B0, built untrained.

Weights come from a local state-dict file (``RunConfig.weights``), never from
the internet. torchvision is an optional dependency, imported when one of
these models is built.
"""

from __future__ import annotations

import torch.nn as nn

from .names import TORCHVISION_MODELS

__all__ = ["TORCHVISION_MODELS", "efficientnet_b0", "resnet18", "resnet50", "torchvision_head"]


def _build(name: str, num_classes: int, in_channels: int) -> nn.Module:
    if in_channels != 3:
        raise ValueError(
            f"model={name!r} takes 3-channel images, got in_channels={in_channels}; the "
            f"classification reader repeats grey images to 3 channels for it"
        )
    try:
        import torchvision.models as tvm
    except ImportError as err:
        raise ImportError(f"model={name!r} needs torchvision: pip install 'mombs[vision]'") from err
    return getattr(tvm, name)(weights=None, num_classes=num_classes)


def resnet18(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """torchvision's ResNet-18 (He et al. 2016), untrained; ``avgpool`` gives ``(B, 512, 1, 1)`` features."""
    return _build("resnet18", num_classes, in_channels)


def resnet50(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """torchvision's ResNet-50, untrained; ``avgpool`` gives ``(B, 2048, 1, 1)`` features."""
    return _build("resnet50", num_classes, in_channels)


def efficientnet_b0(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """torchvision's EfficientNet-B0 (Tan & Le 2019), untrained; ``avgpool`` gives ``(B, 1280, 1, 1)``."""
    return _build("efficientnet_b0", num_classes, in_channels)


def torchvision_head(model: nn.Module) -> nn.Module:
    """The network after ``avgpool``: flatten, then ``fc`` (ResNets) or ``classifier`` (EfficientNet).

    It shares the model's parameters, so the assessor can run the classifier
    alone on disturbed pooled features.
    """
    last = model.fc if hasattr(model, "fc") else model.classifier
    return nn.Sequential(nn.Flatten(1), last)
