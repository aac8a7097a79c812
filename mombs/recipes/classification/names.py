"""The model and loss names a classification config may choose, without importing torch.

A config is checked before any run starts, and the builders (:data:`.models.MODELS`,
:data:`.losses.LOSSES`) need torch: these tuples are their keys, in order
(``tests/test_models.py`` and ``tests/test_losses_strategies.py`` hold them equal).
"""

from __future__ import annotations

__all__ = ["LOSS_NAMES", "MODEL_NAMES", "TORCHVISION_MODELS", "wants_rgb"]

#: The keys of :data:`.models.MODELS`.
MODEL_NAMES = ("small_cnn", "resnet32", "resnet18", "resnet50", "efficientnet_b0")
#: The torchvision models, all of them for 3-channel images.
TORCHVISION_MODELS = ("resnet18", "resnet50", "efficientnet_b0")
#: The keys of :data:`.losses.LOSSES`.
LOSS_NAMES = ("ce", "focal", "gce", "sce", "nce-rce", "ldam", "ldam-drw", "balanced-softmax", "logit-adjustment")


def wants_rgb(name: str) -> bool:
    """Whether model ``name`` takes 3-channel images only (grey ones are repeated for it)."""
    return name in TORCHVISION_MODELS
