"""Classification models: a CIFAR-style ResNet-32 and a small CNN for CPUs."""

from __future__ import annotations

from .resnet import resnet32
from .small_cnn import SmallCNN

__all__ = ["MODELS", "SmallCNN", "create_model", "resnet32"]

#: Model builders by name; each takes ``num_classes`` and ``in_channels``.
MODELS = {"small_cnn": SmallCNN, "resnet32": resnet32}

#: For each model, the submodule whose output MoMBS disturbs by default: the
#: pooled backbone features, before the classifier (``shared/METHOD.md`` §1).
#: Chosen from ``benchmarks/results/disturbance_cpu.json``: at ``pool``, the
#: last stage and a middle stage of both models, the K = 8 uncertainty ranks
#: like the plain softmax entropy (Spearman >= 0.985, difficulty scores >=
#: 0.995), and once the Monte-Carlo noise of the K draws is divided out the
#: agreement is 1.000 at ``pool`` and the last stage, 0.996 at resnet32's
#: ``layer2``, which costs about 4x as much and found flipped labels no better.
#: No point adds information, so the cheapest one stays: only the classifier
#: runs K times.
FEATURE_MODULE = {"small_cnn": "pool", "resnet32": "pool"}


def create_model(name: str, *, num_classes: int, in_channels: int = 3):
    """Builds a model by name (one of :data:`MODELS`)."""
    if name not in MODELS:
        raise ValueError(f"model={name!r} is not known; choose one of {sorted(MODELS)}")
    return MODELS[name](num_classes=num_classes, in_channels=in_channels)
