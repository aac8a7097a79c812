"""Classification models: a CIFAR-style ResNet-32, a small CNN for CPUs, and torchvision's
ResNet-18/50 and EfficientNet-B0 for your own images; weights from a local state-dict file."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch

from .names import TORCHVISION_MODELS, wants_rgb
from .resnet import resnet32
from .small_cnn import SmallCNN
from .torchvision_models import efficientnet_b0, resnet18, resnet50, torchvision_head

__all__ = [
    "FEATURE_MODULE",
    "HEAD_PREFIX",
    "MODELS",
    "SmallCNN",
    "classifier_head",
    "create_model",
    "load_weights",
    "resnet32",
    "wants_rgb",
]

#: Model builders by name; each takes ``num_classes`` and ``in_channels``. Its keys
#: are :data:`.names.MODEL_NAMES`, which a config is checked against without torch.
MODELS = {
    "small_cnn": SmallCNN,
    "resnet32": resnet32,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "efficientnet_b0": efficientnet_b0,
}

#: For each model, the submodule whose output MoMBS disturbs by default: the
#: pooled backbone features, before the classifier (``shared/METHOD.md`` §1).
#: Chosen from ``benchmarks/results/disturbance_cpu.json``: at ``pool``, the
#: last stage and a middle stage of both models, the K = 8 uncertainty ranks
#: like the plain softmax entropy (Spearman >= 0.985, difficulty scores >=
#: 0.995), and once the Monte-Carlo noise of the K draws is divided out the
#: agreement is 1.000 at ``pool`` and the last stage, 0.996 at resnet32's
#: ``layer2``, which costs about 4x as much and found flipped labels no better.
#: No point adds information, so the cheapest one stays: only the classifier
#: runs K times. torchvision's models pool at ``avgpool`` (``(B, C, 1, 1)``),
#: the same place: only their flatten and classifier run K times.
FEATURE_MODULE = {
    "small_cnn": "pool",
    "resnet32": "pool",
    "resnet18": "avgpool",
    "resnet50": "avgpool",
    "efficientnet_b0": "avgpool",
}

#: The state-dict prefix of each model's classifier head: replaced, not
#: loaded, when a weights file's head does not fit ``num_classes``.
HEAD_PREFIX = {
    "small_cnn": "fc.",
    "resnet32": "fc.",
    "resnet18": "fc.",
    "resnet50": "fc.",
    "efficientnet_b0": "classifier.",
}


def create_model(name: str, *, num_classes: int, in_channels: int = 3):
    """Builds a model by name (one of :data:`MODELS`)."""
    if name not in MODELS:
        raise ValueError(f"model={name!r} is not known; choose one of {sorted(MODELS)}")
    return MODELS[name](num_classes=num_classes, in_channels=in_channels)


def classifier_head(name: str, model: torch.nn.Module):
    """The network after :data:`FEATURE_MODULE`'s module, which the assessor may run alone."""
    return torchvision_head(model) if name in TORCHVISION_MODELS else getattr(model, "fc", None)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _listing(keys: list[str]) -> str:
    return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")


def load_weights(model: torch.nn.Module, path, *, head: str) -> list[str]:
    """Loads a local state-dict file into ``model``; a head that does not fit is left fresh.

    The file is read with ``torch.load(weights_only=True)``: a plain state dict,
    or one under a ``state_dict`` key, ``module.`` prefixes (DDP) dropped.
    Keys under ``head`` whose shapes differ from the model's (another number of
    classes), or that the file lacks, keep the model's fresh init, with a
    warning naming them. Any other difference is an error.

    Args:
        model: the network, built for the run's classes and channels.
        path: the state-dict file.
        head: the state-dict prefix of the classifier head (:data:`HEAD_PREFIX`).

    Returns:
        The head keys left at their fresh init.

    Raises:
        ValueError: a file ``torch.load`` cannot read safely, one that holds no
            state dict, or keys beyond the head that are missing, unexpected or
            of another shape (naming the first few).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to read is the file's; say which and why
        raise ValueError(
            f"weights={str(path)!r} cannot be read as a state dict with torch.load(weights_only="
            f"True) ({type(err).__name__}: {_first_line(err)})"
        ) from err
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if (
        not isinstance(state, Mapping)
        or not state
        or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items())
    ):
        raise ValueError(
            f"weights={str(path)!r} holds a {type(state).__name__}, not a state dict (a mapping "
            f"of parameter names to tensors, as model.state_dict() gives)"
        )
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    own = model.state_dict()
    unexpected = [k for k in state if k not in own]
    # BatchNorm's step counters are bookkeeping: a file from older torch may lack them.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    wrong = [k for k in state if k in own and state[k].shape != own[k].shape]
    dropped = [k for k in wrong + missing if k.startswith(head)]
    beyond = (
        [f"{k} (missing)" for k in missing if not k.startswith(head)]
        + [f"{k} (not in the model)" for k in unexpected]
        + [
            f"{k} ({tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model)"
            for k in wrong
            if not k.startswith(head)
        ]
    )
    if beyond:
        raise ValueError(
            f"weights={str(path)!r} does not fit model {type(model).__name__} beyond its head "
            f"({head[:-1]}): {len(beyond)} key(s) differ: {_listing(beyond)}"
        )
    if dropped:
        warnings.warn(
            f"weights={str(path)!r}: the classifier head does not fit this model's classes; "
            f"{', '.join(dropped)} start(s) from a fresh init instead",
            UserWarning,
            stacklevel=2,
        )
    model.load_state_dict({k: v for k, v in state.items() if k not in dropped}, strict=False)
    return dropped
