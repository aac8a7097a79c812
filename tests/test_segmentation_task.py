"""The segmentation task on MONAI: per-image Dice + CE, the U-Net bottleneck, K-pass
uncertainty through skip connections, and the Dice / lesion metrics."""

import math
import time

import numpy as np
import pytest
import torch

pytest.importorskip("monai")
pytest.importorskip("scipy")

from monai.losses import DiceCELoss  # noqa: E402

import mombs  # noqa: E402
from mombs.noise import _UNTILEABLE, find_module  # noqa: E402
from mombs.recipes.segmentation.metrics import dice_per_image, lesion_sensitivity, mean_dice, small_lesion_dice  # noqa: E402
from mombs.recipes.segmentation.models import (
    SEG_FEATURE_MODULE,
    create_segmentation_model,
    seg_feature_module,  # noqa: E402
)
from mombs.tasks import create_task  # noqa: E402
from mombs.tasks.segmentation import per_image_dice_ce  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these maps are tiny, and on a busy 2-core machine
    two threads spend a U-Net forward waiting on each other (measured: 0.34 s
    for 2 images of 32x32 against 1.4 ms on one thread). Restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(name="unet", in_channels=1, num_classes=2, seed=0, **kw):
    """A seeded model without touching the tests' global random state."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return create_segmentation_model(name, in_channels, num_classes, **kw)


def _logits_and_target(b=4, c=3, side=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, side, side, generator=g)
    target = torch.randint(0, max(c, 2), (b, 1, side, side), generator=g)
    return logits, target


# --- the per-image loss -----------------------------------------------------


@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("lambdas", [(1.0, 1.0), (0.3, 2.0)])
def test_per_image_loss_batch_mean_is_dice_ce_softmax(include_background, lambdas):
    logits, target = _logits_and_target()
    ld, lc = lambdas
    ours = per_image_dice_ce(logits, target, include_background=include_background, lambda_dice=ld, lambda_ce=lc)
    ref = DiceCELoss(
        include_background=include_background, to_onehot_y=True, softmax=True, lambda_dice=ld, lambda_ce=lc
    )(logits, target)
    assert ours.shape == (4,)
    assert torch.allclose(ours.mean(), ref, atol=1e-5)
    # (B, H, W) indices are the same target with the channel left out.
    assert torch.allclose(
        per_image_dice_ce(logits, target[:, 0], include_background=include_background, lambda_dice=ld, lambda_ce=lc),
        ours,
    )


def test_per_image_loss_batch_mean_is_dice_ce_sigmoid():
    logits, target = _logits_and_target(c=1)
    ours = per_image_dice_ce(logits, target)
    ref = DiceCELoss(sigmoid=True)(logits, target.float())
    assert ours.shape == (4,)
    assert torch.allclose(ours.mean(), ref, atol=1e-5)


def test_per_image_loss_is_per_image():
    logits, target = _logits_and_target()
    before = per_image_dice_ce(logits, target)
    changed = logits.clone()
    changed[2] = -changed[2] * 3
    after = per_image_dice_ce(changed, target)
    assert torch.equal(before[[0, 1, 3]], after[[0, 1, 3]])
    assert not torch.isclose(before[2], after[2])
    # A perfect, confident prediction scores near 0; higher = worse fit.
    perfect = torch.nn.functional.one_hot(target[:, 0], 3).permute(0, 3, 1, 2).float() * 50
    assert per_image_dice_ce(perfect, target).max() < 1e-3
    assert (before > per_image_dice_ce(perfect, target)).all()


def test_per_image_loss_refuses_bad_input():
    logits, target = _logits_and_target()
    with pytest.raises(ValueError, match="target has shape"):
        per_image_dice_ce(logits, target[:, :, :16])
    with pytest.raises(ValueError, match="must lie in"):
        per_image_dice_ce(logits, target + 3)
    with pytest.raises(ValueError, match="lambda_dice"):
        per_image_dice_ce(logits, target, lambda_dice=-1)
    with pytest.raises(ValueError, match="spatial"):
        per_image_dice_ce(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))


def test_segmentation_task_is_registered():
    task = create_task("segmentation")
    assert task.name == "segmentation" and task.loss_fn is per_image_dice_ce
    assert task.activation == "auto" and task.uncertainty_fn is None


# --- models and where they are disturbed --------------------------------------


@pytest.mark.parametrize("name,scale", [("unet", 8), ("basic_unet", 16)])
def test_feature_module_is_the_coarsest_encoder_map(name, scale):
    model = _model(name)
    at = SEG_FEATURE_MODULE[name]
    assert seg_feature_module(model) == at
    shapes = {}
    handle = find_module(model, at).register_forward_hook(lambda _m, _i, out: shapes.update(f=out.shape))
    out = model(torch.zeros(2, 1, 32, 32))
    handle.remove()
    assert out.shape == (2, 2, 32, 32)
    assert shapes["f"][2:] == (32 // scale, 32 // scale)


def test_unet_bottleneck_is_found_at_any_depth():
    for channels in [(4, 8), (4, 8, 16, 32, 64)]:
        model = _model(channels=channels, strides=(2,) * (len(channels) - 1), num_res_units=1)
        name = seg_feature_module(model)
        assert name.count(".1.submodule") == len(channels) - 1
    with pytest.raises(ValueError, match="not a MONAI UNet"):
        seg_feature_module(torch.nn.Conv2d(1, 2, 3))
    with pytest.raises(ValueError, match="name='vnet'"):
        create_segmentation_model("vnet", 1, 2)
    with pytest.raises(ValueError, match="num_classes"):
        create_segmentation_model("unet", 1, 0)


# --- uncertainty through the skip connections ---------------------------------


def test_uncertainty_ranks_the_unconfident_image_higher_via_the_k_times_fallback():
    # Without normalization the logits scale with the input: image A (a strong
    # input) is predicted confidently, image B (zeros: biases only) near-uniformly.
    at = SEG_FEATURE_MODULE["unet"]
    model = _model(norm=None)
    x = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    images = torch.cat([50 * x, 0 * x])
    u = mombs.feature_noise_uncertainty(model, images, at=at, k=4, seed=3)
    assert u.shape == (2,) and torch.isfinite(u).all()
    assert u[1] > u[0] + 0.3
    assert u[1] <= math.log(2) + 1e-6
    # The skip connection concatenates untiled encoder maps with the tiled
    # bottleneck, so the tiled pass is impossible and the K-times path ran.
    assert at in _UNTILEABLE.get(model, ())
    with pytest.raises(RuntimeError):
        mombs.feature_noise_uncertainty(model, images, at=at, k=4, tiled=True)
    again = mombs.feature_noise_uncertainty(model, images, at=at, k=4, seed=3)
    assert torch.equal(u, again)
    # A fresh model (cold cache) draws exactly what the K-times path draws.
    fresh = _model(norm=None)
    assert torch.equal(mombs.feature_noise_uncertainty(fresh, images, at=at, k=4, tiled=False, seed=3), u)


def test_basic_unet_uncertainty_takes_the_fallback_too():
    model = _model("basic_unet", num_classes=3)
    u = mombs.feature_noise_uncertainty(model, torch.randn(3, 1, 32, 32), at=SEG_FEATURE_MODULE["basic_unet"], k=2)
    assert u.shape == (3,) and (u >= 0).all() and (u <= math.log(3) + 1e-6).all()


def test_assessment_pass_on_tiny_images():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 1, 32, 32, generator=g)
    y = (x > 0.5).long()  # (6, 1, 32, 32) class indices, as DiceCELoss(to_onehot_y=True) takes
    data = mombs.IndexedDataset(torch.utils.data.TensorDataset(x, y))
    model = _model()
    (li, loss), (ui, unc) = mombs.assessment_pass(
        model, data, task="segmentation", at=SEG_FEATURE_MODULE["unet"], k=2, batch_size=4
    )
    assert loss.shape == (6,) and unc.shape == (6,)
    assert np.array_equal(li, np.arange(6)) and np.array_equal(ui, np.arange(6))
    assert np.isfinite(loss).all() and np.isfinite(unc).all() and (unc > 0).all()
    model.eval()
    with torch.no_grad():
        direct = per_image_dice_ce(model(x), y).double().numpy()
    assert np.allclose(loss, direct, atol=1e-6)


def test_assessor_drives_a_segmentation_training_loop():
    # The README's loop with the segmentation task: per-image Dice + CE in the
    # training step, the K-pass uncertainty at the bottleneck after each epoch.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 32, 32, generator=g)
    data = mombs.IndexedDataset(torch.utils.data.TensorDataset(x, (x > 0.5).long()))
    model = _model()
    sampler = mombs.MixedOrderBatchSampler(data, 2, pivot_epoch=1)
    assessor = mombs.DifficultyAssessor(
        model, data, at=SEG_FEATURE_MODULE["unet"], sampler=sampler, task="segmentation", k=2, batch_size=4
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler)
    for epoch in range(3):
        assessor.start_epoch(epoch)
        seen = []
        for idx, xb, yb in loader:
            loss = per_image_dice_ce(model(xb), yb)
            assessor.observe(idx, loss)
            loss.mean().backward()
            opt.step()
            opt.zero_grad()
            seen.extend(idx.tolist())
        scores = assessor.end_epoch()
        assert sorted(seen) == list(range(8))  # every image once per epoch
    assert scores.shape == (8,) and np.isfinite(scores).all()


def test_k8_uncertainty_cost_against_one_forward(record_property):
    # Only that it finishes is asserted; the numbers go to the report
    # (a benchmark with warm-up and repeats comes later).
    model = _model()
    model.eval()
    x = torch.randn(16, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    at = SEG_FEATURE_MODULE["unet"]
    with torch.no_grad():
        model(x)  # warm-up
        t0 = time.perf_counter()
        model(x)
        forward = time.perf_counter() - t0
    # The first call on a model probes the tiled pass and learns that the skip
    # connections refuse it; a small call pays that once, outside the timing.
    mombs.feature_noise_uncertainty(model, x[:2], at=at, k=2)
    t0 = time.perf_counter()
    u = mombs.feature_noise_uncertainty(model, x, at=at, k=8)
    k8 = time.perf_counter() - t0
    assert u.shape == (16,)
    record_property("forward_s", forward)
    record_property("k8_s", k8)
    print(
        f"\nUNet 16x1x64x64 on CPU: one forward {forward * 1e3:.1f} ms, K=8 uncertainty "
        f"{k8 * 1e3:.1f} ms ({k8 / forward:.1f}x)"
    )


# --- metrics on hand-made masks -----------------------------------------------


def _hand_made():
    """Three 8x8 images: a partly found lesion, two lesions of which one is
    found, and an empty ground truth with a false positive."""
    t = torch.zeros(3, 8, 8, dtype=torch.long)
    p = torch.zeros_like(t)
    t[0, 1:3, 1:3] = 1
    p[0, 1:3, 1:2] = 1  # Dice 2*2 / (4 + 2)
    t[1, 5:7, 5:7] = 1
    t[1, 0, 0] = 1
    p[1, 5, 5] = 1  # Dice 2*1 / (5 + 1); lesion at (0, 0) missed
    p[2, 0, 0] = 1  # no ground truth at all
    return p, t


def test_dice_per_image_known_answers_and_empty_masks():
    p, t = _hand_made()
    d = dice_per_image(p, t)
    assert d.shape == (3,)
    assert torch.allclose(d[:2], torch.tensor([2 / 3, 1 / 3]))
    assert torch.isnan(d[2])  # ignore_empty=True: no ground truth, no score
    assert mean_dice(d) == pytest.approx(0.5)
    strict = dice_per_image(p, t, ignore_empty=False)
    assert strict[2] == 0  # a false positive on an empty image scores 0
    empty_both = dice_per_image(
        torch.zeros(1, 8, 8, dtype=torch.long), torch.zeros(1, 1, 8, 8, dtype=torch.long), ignore_empty=False
    )
    assert empty_both.item() == 1
    assert mean_dice(torch.tensor([float("nan")])) != mean_dice(torch.tensor([float("nan")]))  # NaN
    # Logits give the same answer as their argmax; one sigmoid channel thresholds at 0.
    logits = torch.stack([1 - p, p], dim=1).float()
    assert torch.allclose(dice_per_image(logits, t), d, equal_nan=True)
    assert torch.allclose(dice_per_image(p.float().unsqueeze(1) * 2 - 1, t), d, equal_nan=True)
    with pytest.raises(ValueError, match="num_classes=2"):
        dice_per_image(p * 2, t)
    with pytest.raises(ValueError, match="same shape"):
        dice_per_image(p[:, :4], t)


def test_multiclass_dice_averages_present_classes():
    t = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    t[0, 0, 0, :2] = 1  # class 1: 2 pixels; class 2 absent
    p = torch.zeros_like(t)
    p[0, 0, 0, :2] = 1
    p[0, 0, 3, 3] = 2  # class 2 predicted, not in the ground truth: NaN, skipped
    assert dice_per_image(p, t, num_classes=3).item() == pytest.approx(1.0)
    assert dice_per_image(p, t, num_classes=3, ignore_empty=False).item() == pytest.approx(0.5)


def test_lesion_sensitivity_known_answers():
    p, t = _hand_made()
    assert lesion_sensitivity(p, t) == (2, 3)
    found, total = lesion_sensitivity(p, t, per_image=True)
    assert found.tolist() == [1, 1, 0] and total.tolist() == [1, 2, 0]
    assert lesion_sensitivity(p.unsqueeze(1), t.unsqueeze(1)) == (2, 3)
    # Diagonal neighbours: one lesion when 8-connected, two when 4-connected.
    diag = torch.zeros(1, 4, 4, dtype=torch.long)
    diag[0, 0, 0] = diag[0, 1, 1] = 1
    hit = torch.zeros_like(diag)
    hit[0, 0, 0] = 1
    assert lesion_sensitivity(hit, diag) == (1, 1)
    assert lesion_sensitivity(hit, diag, connectivity=1) == (1, 2)
    with pytest.raises(ValueError, match="connectivity=3"):
        lesion_sensitivity(hit, diag, connectivity=3)
    with pytest.raises(ValueError, match="same shape"):
        lesion_sensitivity(hit[:, :2], diag)


def test_small_lesion_dice():
    p, t = _hand_made()
    assert small_lesion_dice(p, t, max_area=5) == (pytest.approx(2 / 3), 1)  # area 4 only
    assert small_lesion_dice(p, t, max_area=6) == (pytest.approx(0.5), 2)  # areas 4 and 5
    mean, kept = small_lesion_dice(p, t, max_area=1)
    assert kept == 0 and mean != mean
    with pytest.raises(ValueError, match="max_area"):
        small_lesion_dice(p, t, max_area=0)
