"""Two-stage lesion detectors: torchvision Faster R-CNN, and where to disturb them.

MoMBS measures a detector's difficulty at its region proposal network and
disturbs "the feature map after the first CNN block of the backbone"
(``shared/METHOD.md`` §1 and §6). :data:`DET_FEATURE_MODULE` names that
module, in ``model.named_modules()`` terms, for every model built here:

- ``fasterrcnn_resnet50_fpn``: ``backbone.body.layer1``, the first residual
  stage after the stem (stride 4, 256 channels). It is the first block in the
  ResNet sense, and both the FPN's finest level (``"0"``) and every later
  stage are computed from it, so the whole RPN sees the disturbance.
- ``fasterrcnn_mobilenet_v3_large_fpn``: ``backbone.body.1``, the first
  inverted-residual block after the stem convolution (stride 2, 16 channels).
  This FPN only reads the last two stages, which are computed from it.
- ``tiny``: ``backbone.block1``, the first block after the stem (stride 4),
  the same place as in the ResNet.

Every model is built from scratch (``weights=None, weights_backbone=None``):
nothing is downloaded. Without pretrained weights torchvision keeps plain
``BatchNorm2d`` layers (not frozen ones) and makes every backbone layer
trainable; the assessment pass runs in eval mode, so their running statistics
are left as they were.

The ``tiny`` model (:class:`TinyDetectionBackbone`, about 85 thousand
parameters with its heads) is for tests and CPU studies on small images: a three-stage CNN
with a three-level FPN, anchors of 8, 16 and 32 pixels, and a small box head.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from ..._checks import check_int, is_int
from .names import DET_MODELS

__all__ = [
    "DET_FEATURE_MODULE",
    "DET_MODELS",
    "TinyDetectionBackbone",
    "create_detection_model",
    "load_detection_weights",
]

#: For each model, the ``named_modules()`` name of the first backbone block's
#: output, where MoMBS disturbs the features (module docstring).
DET_FEATURE_MODULE = {
    "fasterrcnn_resnet50_fpn": "backbone.body.layer1",
    "fasterrcnn_mobilenet_v3_large_fpn": "backbone.body.1",
    "tiny": "backbone.block1",
}

# The side images are resized to when min_size / max_size are not given:
# DeepLesion's native 512 for torchvision's backbones (their anchors start at
# 32 pixels; torchvision's own default is 800 / 1333), and the synthetic set's
# 64 for the tiny model.
_DEFAULT_SIZE = {"fasterrcnn_resnet50_fpn": 512, "fasterrcnn_mobilenet_v3_large_fpn": 512, "tiny": 64}


def _require_torchvision():
    try:
        import torchvision  # noqa: F401
    except ImportError as err:
        raise ImportError("detection models need torchvision: pip install 'mombs[det]'") from err


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class TinyDetectionBackbone(nn.Module):
    """A three-stage CNN with an FPN, for Faster R-CNN on small images.

    ``stem`` (stride 2) -> ``block1`` (stride 4) -> ``block2`` (stride 8) ->
    ``block3`` (stride 16); the FPN turns the outputs of the three blocks into
    maps ``"0"``, ``"1"``, ``"2"`` of ``out_channels`` channels each.

    Args:
        in_channels: image channels, ``>= 1``.
        width: channels of ``block1``; ``block2`` and ``block3`` have 2x and 4x.
        out_channels: channels of every FPN level (``self.out_channels``, which
            Faster R-CNN reads).
    """

    def __init__(self, in_channels: int = 3, width: int = 8, out_channels: int = 16):
        super().__init__()
        _require_torchvision()
        from torchvision.ops import FeaturePyramidNetwork

        for name, value in (("in_channels", in_channels), ("width", width), ("out_channels", out_channels)):
            _check_positive(name, value)
        self.stem = _conv(in_channels, width, 2)
        self.block1 = nn.Sequential(_conv(width, width, 2), _conv(width, width, 1))
        self.block2 = nn.Sequential(_conv(width, 2 * width, 2), _conv(2 * width, 2 * width, 1))
        self.block3 = nn.Sequential(_conv(2 * width, 4 * width, 2), _conv(4 * width, 4 * width, 1))
        self.fpn = FeaturePyramidNetwork([width, 2 * width, 4 * width], out_channels)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """``(B, C, H, W)`` images -> FPN maps at strides 4, 8 and 16."""
        c1 = self.block1(self.stem(x))
        c2 = self.block2(c1)
        c3 = self.block3(c2)
        return self.fpn(OrderedDict([("0", c1), ("1", c2), ("2", c3)]))


def _check_positive(name: str, value) -> None:
    check_int(name, value, 1)


def _tiny(num_classes: int, in_channels: int, min_size: int, max_size: int, **kw) -> nn.Module:
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    width, out_channels = kw.pop("width", 8), kw.pop("out_channels", 16)
    representation = kw.pop("representation_size", 64)
    _check_positive("representation_size", representation)
    backbone = TinyDetectionBackbone(in_channels, width=width, out_channels=out_channels)
    anchors = AnchorGenerator(sizes=((8,), (16,), (32,)), aspect_ratios=((0.5, 1.0, 2.0),) * 3)
    roi_pool = MultiScaleRoIAlign(featmap_names=["0", "1", "2"], output_size=7, sampling_ratio=2)
    # Windowed CT in [0, 1]: centre and scale every channel alike (the ImageNet
    # statistics torchvision defaults to mean nothing here).
    defaults = {
        "image_mean": [0.5] * in_channels,
        "image_std": [0.25] * in_channels,
        "rpn_pre_nms_top_n_train": 600,
        "rpn_pre_nms_top_n_test": 300,
        "rpn_post_nms_top_n_train": 300,
        "rpn_post_nms_top_n_test": 100,
        "box_batch_size_per_image": 128,
        "box_detections_per_img": 50,
    }
    return FasterRCNN(
        backbone,
        num_classes=None,
        min_size=min_size,
        max_size=max_size,
        rpn_anchor_generator=anchors,
        box_roi_pool=roi_pool,
        box_head=TwoMLPHead(out_channels * 7 * 7, representation),
        box_predictor=FastRCNNPredictor(representation, num_classes),
        **{**defaults, **kw},
    )


def create_detection_model(
    name: str,
    *,
    num_classes: int = 2,
    in_channels: int = 3,
    min_size: int | None = None,
    max_size: int | None = None,
    **kw,
) -> nn.Module:
    """A torchvision Faster R-CNN by name, untrained.

    Args:
        name: one of :data:`DET_MODELS`: ``"fasterrcnn_resnet50_fpn"``,
            ``"fasterrcnn_mobilenet_v3_large_fpn"`` (torchvision's builders with
            ``weights=None, weights_backbone=None``) or ``"tiny"``
            (:class:`TinyDetectionBackbone` with ``width`` (8) and
            ``out_channels`` (16) from ``kw``, anchors 8/16/32 px, box head of
            ``representation_size`` (64) features).
        num_classes: classes including the background, ``>= 2`` (lesion
            detection: 2).
        in_channels: image channels; only ``"tiny"`` takes other than 3.
        min_size: the shorter side the model's transform resizes images to,
            ``>= 1``; default 512 (DeepLesion's slices) for the torchvision
            backbones, 64 (the synthetic set) for ``"tiny"``. torchvision's
            own default is 800.
        max_size: the longest side it allows, ``>= min_size``; default
            ``max(min_size, 512 or 64)``.
        **kw: passed to ``FasterRCNN`` (``rpn_batch_size_per_image``,
            ``rpn_fg_iou_thresh``, ``image_mean``...).

    Returns:
        A ``torchvision.models.detection.FasterRCNN``: ``model(images, targets)``
        in train mode gives torchvision's loss dict, ``model(images)`` in eval
        mode its detections. Disturb it at :data:`DET_FEATURE_MODULE` ``[name]``.

    Raises:
        ValueError: for an unknown name, bad sizes or class counts, or
            ``in_channels != 3`` for a torchvision backbone.
        ImportError: when torchvision is not installed.
    """
    if name not in DET_MODELS:
        raise ValueError(f"name={name!r} is not known; choose one of {list(DET_MODELS)}")
    _require_torchvision()
    _check_positive("in_channels", in_channels)
    min_size = _DEFAULT_SIZE[name] if min_size is None else min_size
    _check_positive("min_size", min_size)
    max_size = max(min_size, _DEFAULT_SIZE[name]) if max_size is None else max_size
    _check_positive("max_size", max_size)
    if not is_int(num_classes) or num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r} must be an integer >= 2 (background included)")
    if max_size < min_size:
        raise ValueError(f"max_size={max_size!r} must be >= min_size={min_size!r}")
    if name == "tiny":
        return _tiny(int(num_classes), int(in_channels), int(min_size), int(max_size), **kw)
    if in_channels != 3:
        raise ValueError(
            f"in_channels={in_channels!r}: {name} takes 3-channel images (DeepLesion's key "
            f"slice with its neighbours); only 'tiny' takes other counts"
        )
    from torchvision.models import detection

    build = getattr(detection, name)
    return build(
        weights=None,
        weights_backbone=None,
        num_classes=int(num_classes),
        min_size=int(min_size),
        max_size=int(max_size),
        **kw,
    )


def _state_dict_of(path) -> dict:
    """The ``{name: tensor}`` mapping a file holds (unwrapping ``{"state_dict": ...}`` or ``{"model": ...}``)."""
    import os

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(
            f"weights={path!r} is not a file; give a local state-dict file (torch.save(model.state_dict(), path))"
        )
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors alike: the file is not what it should be
        why = str(err).split("WeightsUnpickler error:")[-1]  # torch's advice before it is about trust
        why = " ".join(why.split())[:100]
        raise ValueError(
            f"weights={path!r} is not a file torch.load reads as a state dict with "
            f"weights_only=True ({type(err).__name__}: {why})"
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
            break
    if (
        not isinstance(sd, dict)
        or not sd
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items())
    ):
        raise ValueError(
            f"weights={path!r} holds {type(sd).__name__}, not a state dict (a mapping of "
            f"parameter names to tensors, as model.state_dict() gives)"
        )
    if all(k.startswith("module.") for k in sd):  # saved from a DistributedDataParallel wrapper
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _misfit(target: dict, given: dict) -> list:
    """What keeps ``given`` from filling every entry of ``target``: missing keys and shape mismatches."""
    out = [f"missing {k!r}" for k in target if k not in given]
    out += [
        f"{k!r} is {tuple(given[k].shape)}, the model's {tuple(v.shape)}"
        for k, v in target.items()
        if k in given and given[k].shape != v.shape
    ]
    return out


def load_detection_weights(model: nn.Module, path) -> str:
    """Loads a local state-dict file into a detector: the whole detector when the keys fit, else its backbone.

    The targets are tried in order: the whole detector (the file's keys are
    exactly the model's, with the same shapes), ``model.backbone`` (keys
    with or without their ``"backbone."`` prefix), ``model.backbone.body``
    (with or without ``"backbone.body."``: an ImageNet ResNet-50's
    ``state_dict()`` fits a ResNet-50-FPN's body). A backbone target takes
    every one of its keys from the file with the same shape and ignores the
    file's others (a classifier's ``fc``, a detector's heads trained for
    another number of classes). A ``"module."`` prefix on every key (a DDP
    wrapper) is dropped; ``{"state_dict": sd}`` and ``{"model": sd}``
    checkpoints are unwrapped. Nothing is downloaded.

    Args:
        model: a torchvision Faster R-CNN (:func:`create_detection_model`).
        path: the file, as ``torch.save(model.state_dict(), path)`` writes it;
            read with ``weights_only=True``.

    Returns:
        What was loaded: ``"detector"``, ``"backbone"`` or ``"backbone.body"``.

    Raises:
        ValueError: a missing file, one ``torch.load`` cannot read or that
            holds no mapping of names to tensors, or keys that fit neither the
            detector nor its backbone (naming the first misfits).
    """
    sd = _state_dict_of(path)
    whole = model.state_dict()
    if set(sd) == set(whole) and not _misfit(whole, sd):
        model.load_state_dict(sd)
        return "detector"
    backbone = getattr(model, "backbone", None)
    targets = [
        ("backbone", backbone, ("backbone.", "")),
        ("backbone.body", getattr(backbone, "body", None), ("backbone.body.", "body.", "")),
    ]
    for name, module, prefixes in targets:
        if module is None:
            continue
        want = module.state_dict()
        for prefix in prefixes:
            given = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
            if not _misfit(want, given):
                module.load_state_dict({k: given[k] for k in want})
                return name
    why = _misfit(whole, sd) + [f"unexpected {k!r}" for k in sd if k not in whole]
    raise ValueError(
        f"weights={path!r}: its {len(sd)} keys fit neither the {type(model).__name__} "
        f"({len(whole)} keys) nor its backbone: {'; '.join(why[:3])}"
        f"{f', and {len(why) - 3} more' if len(why) > 3 else ''}"
    )
