"""benchmarks/dense_fidelity.py: its plain and training-forward entropies are the adapter's, read where it says."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

import mombs

ROOT = Path(__file__).resolve().parent.parent


def _bench():
    spec = importlib.util.spec_from_file_location("dense_fidelity", ROOT / "benchmarks" / "dense_fidelity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plain_pass_is_the_clean_eval_entropy():
    """``k=1, alpha=0`` disturbs by exactly 1: the pass gives the entropy of one clean eval forward."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 1)
    )  # a dense (B, 3, H, W) output
    x = torch.randn(10, 1, 8, 8)
    data = mombs.IndexedDataset(TensorDataset(x, torch.zeros(10, 8, 8, dtype=torch.long)))
    model.train()
    _, (_, plain) = mombs.assessment_pass(
        model, data, loss_indices=[], at="2", k=1, alpha=0.0, task="segmentation", batch_size=4
    )
    assert model.training  # the mode is given back
    model.eval()
    with torch.no_grad():
        want = mombs.prediction_entropy(torch.softmax(model(x), 1)).double().numpy()
    np.testing.assert_allclose(plain, want, rtol=1e-5, atol=1e-6)


def test_detection_training_entropy_is_the_adapters_entropy_of_that_forward():
    """What DetTrainEntropy records in a training step is the adapter's objectness entropy of the
    same train-mode forward (same batch, so the same BatchNorm batch statistics)."""
    pytest.importorskip("torchvision")
    from mombs.recipes.detection.models import create_detection_model
    from mombs.recipes.detection.training import DetectionStep
    from mombs.tasks.detection import anchor_binary_entropy, rpn_forward, rpn_objectness_map

    bench = _bench()
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(1, 64, 64, generator=g) for _ in range(3)]
    targets = [
        {"boxes": torch.tensor([[8.0, 8.0, 24.0, 26.0]]), "labels": torch.ones(1, dtype=torch.int64)},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
        {"boxes": torch.tensor([[30.0, 20.0, 50.0, 36.0]]), "labels": torch.ones(1, dtype=torch.int64)},
    ]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_detection_model("tiny", num_classes=2, in_channels=1, min_size=64, max_size=64).train()
    reader = bench.DetTrainEntropy(model, num_samples=5)
    try:
        _, per_image, _ = DetectionStep(0)(model, images, targets)
        reader.observe(torch.tensor([4, 0, 2]), per_image)
    finally:
        reader.close()
    assert not model.rpn.head._forward_hooks and not model.rpn.anchor_generator._forward_hooks
    with torch.no_grad():
        want = anchor_binary_entropy(torch.sigmoid(rpn_objectness_map(rpn_forward(model, images))))
    got = reader.values()
    np.testing.assert_allclose(got[[4, 0, 2]], want.double().numpy(), rtol=1e-5, atol=1e-7)
    assert np.isnan(got[[1, 3]]).all()  # samples not in the step stay unmeasured
