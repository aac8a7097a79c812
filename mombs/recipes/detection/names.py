"""The model names a detection config may choose, without importing torch.

A config is checked before any run starts, and the builders in :mod:`.models`
need torch; :data:`DET_MODELS` is what :func:`.models.create_detection_model`
builds.
"""

from __future__ import annotations

__all__ = ["DET_MODELS"]

#: Model names that :func:`~mombs.recipes.detection.models.create_detection_model` builds.
DET_MODELS = ("fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_fpn", "tiny")
