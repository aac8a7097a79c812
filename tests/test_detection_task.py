"""Detection: Faster R-CNN builders and the per-image RPN signals (issue 11)."""

import math

import numpy as np
import pytest
import torch

pytest.importorskip("torchvision")

import mombs  # noqa: E402
from mombs.recipes.detection.models import DET_FEATURE_MODULE, DET_MODELS, create_detection_model  # noqa: E402
from mombs.tasks import create_task  # noqa: E402
from mombs.tasks.detection import (  # noqa: E402
    anchor_binary_entropy,
    collate_detection,
    detection_losses,
    rpn_forward,
    rpn_objectness_loss,
    rpn_objectness_map,
    rpn_uncertainty,
)


def _images_and_targets(n=3, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for i in range(n):
        img = torch.rand(3, size, size, generator=g) * 0.2
        boxes = []
        for j in range(i % 3):  # 0, 1 or 2 lesions: an empty image too
            x, y = 6 + 24 * j, 10 + 3 * i
            img[:, y : y + 14, x : x + 14] += 0.7
            boxes.append([x, y, x + 14, y + 14])
        images.append(img)
        targets.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.ones(len(boxes), dtype=torch.int64),
            }
        )
    return images, targets


@pytest.fixture(scope="module")
def tiny():
    """The tiny detector after 25 SGD steps, so that its objectness is no longer 0.5 everywhere."""
    torch.manual_seed(0)
    model = create_detection_model("tiny").train()
    images, targets = _images_and_targets(n=4, seed=9)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    for _ in range(25):
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def test_builders_name_the_first_backbone_block():
    for name in DET_MODELS:
        model = create_detection_model(name)
        modules = dict(model.named_modules())
        assert DET_FEATURE_MODULE[name] in modules, name
        assert type(model).__name__ == "FasterRCNN"
    assert create_detection_model("tiny", min_size=96).transform.min_size == (96,)
    with pytest.raises(ValueError, match="name="):
        create_detection_model("yolo")
    with pytest.raises(ValueError, match="in_channels"):
        create_detection_model("fasterrcnn_resnet50_fpn", in_channels=1)
    with pytest.raises(ValueError, match="num_classes"):
        create_detection_model("tiny", num_classes=1)


def _seeded_on_rpn(model, seed):
    """Test-side: seed torch's global RNG just before torchvision's RPN samples its anchors."""
    return model.rpn.register_forward_pre_hook(lambda *_: torch.manual_seed(seed) and None)


def test_per_image_loss_mean_is_torchvisions_batch_loss(tiny):
    images, targets = _images_and_targets()
    tiny.train()
    with torch.random.fork_rng(devices=[]):
        handle = _seeded_on_rpn(tiny, 5)
        try:
            ref = tiny(images, targets)
        finally:
            handle.remove()
        per_image = rpn_objectness_loss(rpn_forward(tiny, images), targets, seed=5)
    counts_equal = tiny.rpn.fg_bg_sampler.batch_size_per_image  # every image samples 256 anchors here
    assert counts_equal == 256
    assert per_image.shape == (3,)
    torch.testing.assert_close(per_image.mean(), ref["loss_objectness"], rtol=1e-5, atol=1e-6)
    # another seed draws other anchors: not the same value
    other = rpn_objectness_loss(rpn_forward(tiny, images), targets, seed=6)
    assert not torch.allclose(other, per_image)


def test_detection_losses_equal_torchvisions_and_leave_global_rng(tiny):
    images, targets = _images_and_targets(seed=1)
    tiny.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        ref = tiny(images, targets)
    state = torch.get_rng_state()
    losses, per_image = detection_losses(tiny, images, targets, seed=11)
    assert torch.equal(torch.get_rng_state(), state)
    assert set(losses) == set(ref)
    for key in ref:
        torch.testing.assert_close(losses[key], ref[key], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(per_image.mean(), ref["loss_objectness"], rtol=1e-5, atol=1e-6)
    assert per_image.requires_grad
    with pytest.raises(ValueError, match="train mode"):
        detection_losses(tiny.eval(), images, targets)


def test_count_weighted_mean_when_images_sample_different_counts():
    torch.manual_seed(0)
    # More anchors asked for than exist: every labelled anchor is sampled, and
    # images with boxes ignore some anchors (between the IoU thresholds), so counts differ.
    model = create_detection_model("tiny", rpn_batch_size_per_image=100000).train()
    images, targets = _images_and_targets()
    with torch.random.fork_rng(devices=[]):
        handle = _seeded_on_rpn(model, 0)
        try:
            ref = model(images, targets)["loss_objectness"]
        finally:
            handle.remove()
    out = rpn_forward(model, images)
    per_image = rpn_objectness_loss(out, targets, seed=0)
    from torchvision.models.detection.transform import resize_boxes  # noqa: F401 (sizes are unchanged here)

    labels, _ = model.rpn.assign_targets_to_anchors(out["anchors"], targets)
    counts = torch.stack([(lab >= 0).sum() for lab in labels]).float()
    assert len(set(counts.tolist())) > 1
    torch.testing.assert_close((per_image * counts).sum() / counts.sum(), ref, rtol=1e-5, atol=1e-6)


def test_seeded_sampling_is_reproducible_and_private(tiny):
    images, targets = _images_and_targets()
    tiny.eval()
    out = rpn_forward(tiny, images)
    state = torch.get_rng_state()
    a = rpn_objectness_loss(out, targets, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(rpn_objectness_loss(out, targets, seed=3), a, rtol=0, atol=0)
    with pytest.raises(ValueError, match="seed="):
        rpn_objectness_loss(out, targets, seed=-1)
    with pytest.raises(ValueError, match="targets"):
        rpn_objectness_loss(out, targets[:2])


def test_objectness_map_skips_anchors_on_batch_padding(tiny):
    tiny.eval()
    small = torch.rand(3, 32, 64)  # resized to 32 x 64 (max_size 64), padded to 64 x 64 next to a square one
    with torch.no_grad():
        alone = rpn_forward(tiny, [small])
        batched = rpn_forward(tiny, [small, torch.rand(3, 64, 64)])
    assert alone["image_sizes"] == [(32, 64)] and batched["image_sizes"][0] == (32, 64)
    # the same anchors count, whatever the padding added for the batch
    assert alone["in_image"].sum() == batched["in_image"][0].sum() < batched["in_image"][1].sum()
    assert batched["in_image"][1].all()
    pred = rpn_objectness_map(batched)
    assert torch.isnan(pred[0]).sum() == (~batched["in_image"][0]).sum()


def test_anchor_binary_entropy_known_values():
    probs = torch.tensor([[0.5, 0.5, float("nan")], [0.0, 1.0, 0.5]])
    ent = anchor_binary_entropy(probs)
    torch.testing.assert_close(ent, torch.tensor([math.log(2), math.log(2) / 3]))
    with pytest.raises(ValueError, match="probs"):
        anchor_binary_entropy(torch.zeros(3))


def test_uncertainty_restores_mode_and_batchnorm_and_k1_is_plain_entropy(tiny):
    images, _ = _images_and_targets(n=2)
    tiny.train()
    tiny.backbone.eval()  # a mixed state, to be restored as it was
    flags = {n: m.training for n, m in tiny.named_modules()}
    bn = {n: b.clone() for n, b in tiny.state_dict().items() if "running" in n or "num_batches" in n}
    at = DET_FEATURE_MODULE["tiny"]
    u = rpn_uncertainty(tiny, images, at=at, k=4, alpha=0.3, seed=1)
    assert u.shape == (2,) and ((u >= 0) & (u < 0.6)).all()  # trained: far from log 2
    assert {n: m.training for n, m in tiny.named_modules()} == flags
    assert all(torch.equal(tiny.state_dict()[n], v) for n, v in bn.items())
    torch.testing.assert_close(rpn_uncertainty(tiny, images, at=at, k=4, alpha=0.3, seed=1), u)
    # K = 1 without noise: the plain entropy of the eval-mode objectness
    plain = rpn_uncertainty(tiny, images, at=at, k=1, alpha=0.0)
    tiny.eval()
    with torch.no_grad():
        expect = anchor_binary_entropy(torch.sigmoid(rpn_objectness_map(rpn_forward(tiny, images))))
    torch.testing.assert_close(plain, expect)
    # the noise moves it
    assert not torch.allclose(u, plain)


class _ListSet(torch.utils.data.Dataset):
    def __init__(self, images, targets):
        self.images, self.targets = images, targets

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.targets[i]


def test_adapter_through_assessment_pass(tiny):
    images, targets = _images_and_targets(n=4, seed=2)
    data = mombs.IndexedDataset(_ListSet(images, targets))
    assert create_task("detection").activation == "sigmoid"
    tiny.train()
    at = DET_FEATURE_MODULE["tiny"]
    (li, lv), (ui, uv) = mombs.assessment_pass(
        tiny, data, task="detection", at=at, k=2, batch_size=2, forward_fn=rpn_forward, collate_fn=collate_detection
    )
    assert tiny.training
    np.testing.assert_array_equal(li, np.arange(4))
    np.testing.assert_array_equal(ui, np.arange(4))
    # the pass's losses are the adapter's loss on the same eval-mode batches
    tiny.eval()
    with torch.no_grad():
        expect = torch.cat(
            [rpn_objectness_loss(rpn_forward(tiny, images[s : s + 2]), targets[s : s + 2]) for s in (0, 2)]
        )
    tiny.train()
    np.testing.assert_allclose(lv, expect.double().numpy(), rtol=1e-5)
    # without a generator the pass seeds each batch's noise with 0
    direct = torch.cat([rpn_uncertainty(tiny, images[s : s + 2], at=at, k=2, seed=0) for s in (0, 2)])
    np.testing.assert_allclose(uv, direct.double().numpy(), rtol=1e-5)
    # the adapter carries its forward and collate functions: task="detection" alone is enough
    assert create_task("detection").forward_fn is rpn_forward
    assert create_task("detection").collate_fn is collate_detection
    (_, lv2), (_, uv2) = mombs.assessment_pass(tiny, data, task="detection", at=at, k=2, batch_size=2)
    np.testing.assert_array_equal(lv2, lv)
    np.testing.assert_array_equal(uv2, uv)
    assessor = mombs.DifficultyAssessor(tiny, data, at=at, task="detection", k=2, batch_size=2)
    assert assessor.forward_fn is rpn_forward and assessor.collate_fn is collate_detection


def test_tiled_copies_after_the_first_block_match_the_plain_pass(tiny):
    """Tiled copies of the disturbed map (one forward with K * B rows) carry the anchor mask along:
    without noise they give the plain entropy, as K whole forwards do."""
    images, _ = _images_and_targets(n=2)
    kw = dict(
        at=DET_FEATURE_MODULE["tiny"],
        k=3,
        alpha=0.0,
        activation="sigmoid",
        output_fn=rpn_objectness_map,
        uncertainty_fn=anchor_binary_entropy,
        forward_fn=rpn_forward,
    )
    tiled = mombs.feature_noise_uncertainty(tiny, images, chunk_rows=6, tiled=True, **kw)
    plain = mombs.feature_noise_uncertainty(tiny, images, tiled=False, **kw)
    torch.testing.assert_close(tiled, plain, rtol=1e-5, atol=1e-6)
