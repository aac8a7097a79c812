"""Classification models: a CIFAR-style ResNet-32 and a small CNN for CPUs."""

from __future__ import annotations

from .resnet import resnet32
from .small_cnn import SmallCNN

__all__ = ["MODELS", "SmallCNN", "create_model", "resnet32"]

#: Model builders by name; each takes ``num_classes`` and ``in_channels``.
MODELS = {"small_cnn": SmallCNN, "resnet32": resnet32}

#: For each model, the submodule whose output MoMBS disturbs (the pooled
#: backbone features, before the classifier; ``shared/METHOD.md`` §1).
FEATURE_MODULE = {"small_cnn": "pool", "resnet32": "pool"}


def create_model(name: str, *, num_classes: int, in_channels: int = 3):
    """Builds a model by name (one of :data:`MODELS`)."""
    if name not in MODELS:
        raise ValueError(f"model={name!r} is not known; choose one of {sorted(MODELS)}")
    return MODELS[name](num_classes=num_classes, in_channels=in_channels)
