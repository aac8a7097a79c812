"""2-D segmentation networks from MONAI, small by default, and where to disturb them.

MoMBS disturbs the *encoder output* of a segmentation network
(``shared/METHOD.md`` §1 and §6). :data:`SEG_FEATURE_MODULE` names that module
for each model built here with its default depth, and
:func:`seg_feature_module` finds it in any MONAI ``UNet`` or ``BasicUNet``
(whose module names depend on the depth).

A U-Net's decoder concatenates encoder activations through skip connections,
so the disturbed bottleneck cannot be run as tiled copies: the K-pass
uncertainty runs the whole network K times instead
(:func:`mombs.feature_noise_uncertainty` falls back on its own).

MONAI is an optional dependency (``pip install 'mombs[seg]'``), imported only
when a model is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a model is looked at: a config is checked without it
    import torch.nn as nn

__all__ = ["SEG_FEATURE_MODULE", "SEG_MODELS", "create_segmentation_model", "seg_feature_module"]

#: Model names that :func:`create_segmentation_model` builds.
SEG_MODELS = ("unet", "basic_unet")

#: For each model at its default depth, the ``named_modules()`` name of its
#: encoder output (the bottleneck), where MoMBS disturbs the features.
#:
#: - ``unet``: MONAI's ``UNet`` nests one ``Sequential(down, SkipConnection,
#:   up)`` per level; the innermost ``SkipConnection``'s ``submodule`` is the
#:   bottom layer, which runs after every strided down-convolution at the
#:   coarsest resolution (1/8 with three strides of 2) with the most channels
#:   (``channels[-1]``). Its output is the last encoder map and the first thing
#:   the decoder reads. With 4 channel levels it sits 3 nestings deep.
#: - ``basic_unet``: ``down_4`` is the fourth max-pool + two-conv block, the
#:   deepest encoder stage (1/16 resolution); every ``upcat_*`` comes after it.
SEG_FEATURE_MODULE = {
    "unet": "model.1.submodule.1.submodule.1.submodule",
    "basic_unet": "down_4",
}

# Small defaults: the tests and CPU studies run on 2 cores. Override with **kw.
_UNET_DEFAULTS = {"channels": (8, 16, 32, 64), "strides": (2, 2, 2)}
_BASIC_UNET_DEFAULTS = {"features": (8, 8, 16, 32, 64, 8)}


def _import_monai_nets():
    try:
        from monai.networks import nets
    except ImportError as err:
        raise ImportError("segmentation models need MONAI: pip install 'mombs[seg]'") from err
    return nets


def _check_channels(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be an integer >= 1")


def create_segmentation_model(name: str, in_channels: int, num_classes: int, **kw) -> nn.Module:
    """A 2-D MONAI segmentation network by name.

    Args:
        name: ``"unet"`` (``monai.networks.nets.UNet``, default channels
            ``(8, 16, 32, 64)``, strides ``(2, 2, 2)``) or ``"basic_unet"``
            (``monai.networks.nets.BasicUNet``, default features
            ``(8, 8, 16, 32, 64, 8)``).
        in_channels: image channels, ``>= 1``.
        num_classes: output channels, ``>= 1``: logits ``(B, num_classes, H, W)``;
            1 means one sigmoid foreground channel, more means softmax classes
            with background at index 0.
        **kw: passed to the MONAI constructor; they replace the defaults above
            (``spatial_dims`` is always 2).

    Returns:
        The network. Its encoder output is :func:`seg_feature_module` of it
        (:data:`SEG_FEATURE_MODULE` ``[name]`` at the default depth). Inputs'
        sides should be divisible by 8 (``unet``) or 16 (``basic_unet``).

    Raises:
        ValueError: for an unknown ``name``, bad channel counts, or a
            ``spatial_dims`` other than 2 in ``kw``.
        ImportError: when MONAI is not installed.
    """
    if name not in SEG_MODELS:
        raise ValueError(f"name={name!r} is not known; choose one of {list(SEG_MODELS)}")
    _check_channels("in_channels", in_channels)
    _check_channels("num_classes", num_classes)
    if kw.pop("spatial_dims", 2) != 2:
        raise ValueError("spatial_dims must be 2: these are 2-D models")
    nets = _import_monai_nets()
    if name == "unet":
        args = {**_UNET_DEFAULTS, **kw}
        return nets.UNet(spatial_dims=2, in_channels=in_channels, out_channels=num_classes, **args)
    args = {**_BASIC_UNET_DEFAULTS, **kw}
    return nets.BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=num_classes, **args)


def seg_feature_module(model: nn.Module) -> str:
    """The ``named_modules()`` name of a MONAI U-Net's encoder output (bottleneck).

    Works at any depth: for ``UNet`` it follows the nested skip connections
    down to the bottom layer; for ``BasicUNet`` it is ``down_4``.

    Args:
        model: a ``monai.networks.nets.UNet`` or ``BasicUNet``.

    Returns:
        A name to pass as ``at=`` to :func:`mombs.feature_noise_uncertainty` or
        the assessor.

    Raises:
        ValueError: for any other model.
    """
    import torch.nn as nn

    kind = type(model).__name__
    if kind == "BasicUNet" and hasattr(model, "down_4"):
        return "down_4"
    if kind == "UNet" and isinstance(getattr(model, "model", None), nn.Sequential):
        # Each level is Sequential(down, SkipConnection(next level), up); the
        # innermost SkipConnection wraps the bottom layer itself.
        name, level = "model", model.model
        while isinstance(level, nn.Sequential) and len(level) == 3 and hasattr(level[1], "submodule"):
            name, level = f"{name}.1.submodule", level[1].submodule
        if name != "model":
            return name
    raise ValueError(
        f"model={kind} is not a MONAI UNet or BasicUNet; name the encoder output "
        f"yourself (at=) from its named_modules()"
    )
