"""Models: known parameter counts, output and feature shapes, bad names."""

import pytest
import torch

from mombs.recipes.classification.models import FEATURE_MODULE, MODELS, create_model


def _count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name, num_classes, in_channels, expected",
    [
        # He et al.'s CIFAR ResNet-32 (3 stages of 5 basic blocks, 16/32/64 channels, parameter-free
        # shortcuts): the "0.46M" of their table 6 with 10 classes.
        ("resnet32", 10, 3, 464_154),
        ("resnet32", 100, 3, 470_004),  # the classifier grows by 90 x (64 + 1)
        ("small_cnn", 10, 1, 94_186),
    ],
)
def test_parameter_counts(name, num_classes, in_channels, expected):
    assert _count(create_model(name, num_classes=num_classes, in_channels=in_channels)) == expected


@pytest.mark.parametrize(
    "name, in_channels, side, width", [("resnet32", 3, 32, 64), ("small_cnn", 1, 28, 128), ("small_cnn", 3, 32, 128)]
)
def test_logits_and_disturbed_features_shapes(name, in_channels, side, width):
    model = create_model(name, num_classes=7, in_channels=in_channels).eval()
    seen = {}
    module = dict(model.named_modules())[FEATURE_MODULE[name]]
    module.register_forward_hook(lambda m, i, o: seen.__setitem__("f", o))
    with torch.no_grad():
        logits = model(torch.randn(2, in_channels, side, side))
    assert logits.shape == (2, 7)
    # The disturbed features are the classifier's whole input: the K passes rerun only ``fc``.
    assert seen["f"].shape == (2, width)
    torch.testing.assert_close(model.fc(seen["f"]), logits)


def test_every_model_names_its_feature_module():
    assert set(FEATURE_MODULE) == set(MODELS)


def test_the_names_a_config_is_checked_against_are_the_registry_keys():
    from mombs.recipes.classification.names import MODEL_NAMES, TORCHVISION_MODELS
    from mombs.recipes.classification.torchvision_models import TORCHVISION_MODELS as built

    assert MODEL_NAMES == tuple(MODELS)
    assert TORCHVISION_MODELS == built and set(TORCHVISION_MODELS) <= set(MODELS)


def test_unknown_model_is_named():
    with pytest.raises(ValueError, match=r"model='resnet999'.*resnet32"):
        create_model("resnet999", num_classes=10)
