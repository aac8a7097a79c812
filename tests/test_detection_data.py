"""Detection data: the synthetic set with planted box noise, and the DeepLesion reader (issue 11)."""

import numpy as np
import pytest

from mombs.data.synthetic_det import BOX_KINDS, DET_CORRUPTIONS, LESION_STATUS, make_synthetic_det
from mombs.metrics.detection import box_iou


@pytest.fixture(scope="module")
def det():
    return make_synthetic_det(n_train=40, n_val=4, n_test=4, seed=3)


def test_clean_boxes_bound_the_lesion_pixels(det):
    tr = det.train
    for i in range(len(tr)):
        labels = tr.lesions["label"][tr.lesions["image"] == i]
        assert len(tr.clean_boxes[i]) == len(labels)
        for box, lab in zip(tr.clean_boxes[i], labels):
            ys, xs = np.nonzero(tr.instances[i] == lab)
            np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def test_planted_noise_exact_counts_and_records(det):
    tr, cfg = det.train, det.config
    n_les = len(tr.lesions["image"])
    status = np.bincount(tr.lesions["status"], minlength=len(LESION_STATUS))
    assert status[1] == round(cfg["missing_fraction"] * n_les)
    assert status[2] == round(cfg["shift_fraction"] * n_les)
    assert status[3] == round(cfg["resize_fraction"] * n_les)
    assert tr.n_spurious.sum() == round(cfg["spurious_fraction"] * len(tr))
    spurious = BOX_KINDS.index("spurious")
    for i in range(len(tr)):
        kinds, boxes, clean = tr.box_kind[i], tr.boxes[i], tr.clean_boxes[i]
        assert len(kinds) == len(boxes) == len(clean) - tr.n_missed[i] + tr.n_spurious[i]
        assert (kinds == BOX_KINDS.index("shifted")).sum() == tr.n_shifted[i]
        assert (kinds == BOX_KINDS.index("resized")).sum() == tr.n_resized[i]
        assert ((boxes[:, 2:] - boxes[:, :2]) >= 1).all()
        for box, kind in zip(boxes, kinds):
            best = box_iou(box[None], clean).max() if len(clean) else 0.0
            if kind == 0:
                assert best == 1.0                      # kept boxes are clean boxes
            elif kind == spurious:
                assert best < 0.1                       # on no lesion
            else:
                assert 0 < best < 0.5                   # moved or rescaled past a hit
        n_kinds = sum(int(c[i] > 0) for c in (tr.n_missed, tr.n_shifted, tr.n_resized, tr.n_spurious))
        name = DET_CORRUPTIONS[tr.corruption[i]]
        assert name == ("none" if n_kinds == 0 else "mixed" if n_kinds > 1 else name)
    np.testing.assert_array_equal(tr.missing, tr.n_missed > 0)
    assert tr.missing.any() and (~tr.noisy).any()
    for split in (det.val, det.test):       # evaluation boxes are clean
        assert not split.noisy.any()
        assert all(np.array_equal(b, c) for b, c in zip(split.boxes, split.clean_boxes))


def test_reproducible_prefix_and_dataset(det):
    again = make_synthetic_det(n_train=40, n_val=4, n_test=4, seed=3)
    assert np.array_equal(again.train.images, det.train.images)
    assert all(np.array_equal(a, b) for a, b in zip(again.train.boxes, det.train.boxes))
    small = make_synthetic_det(n_train=10, n_val=4, n_test=4, seed=3)
    assert np.array_equal(small.train.images, det.train.images[:10])   # images: a prefix
    assert np.array_equal(small.test.images, det.test.images)          # evaluation unchanged
    sub = det.train.subset(range(10))                                  # noise too: subset
    assert all(np.array_equal(a, b) for a, b in zip(sub.boxes, det.train.boxes[:10]))
    assert sub.lesions["image"].max() < 10 and len(sub.lesions["image"]) == (det.train.lesions["image"] < 10).sum()
    image, target = det.train.dataset()[1]
    assert tuple(image.shape) == (3, 64, 64) and 0 <= float(image.min()) and float(image.max()) <= 1
    assert target["boxes"].shape == (len(det.train.boxes[1]), 4) and (target["labels"] == 1).all()
    _, clean_target = det.train.dataset(clean=True)[1]
    assert clean_target["boxes"].shape[0] == len(det.train.clean_boxes[1])


def test_bad_options_name_the_argument():
    with pytest.raises(ValueError, match="missing_fraction"):
        make_synthetic_det(n_train=2, n_val=0, n_test=0, missing_fraction=1.5)
    with pytest.raises(ValueError, match="at most 1"):
        make_synthetic_det(n_train=2, n_val=0, n_test=0, missing_fraction=0.6, shift_fraction=0.6)
    with pytest.raises(ValueError, match="windows"):
        make_synthetic_det(n_train=2, n_val=0, n_test=0, windows="bone")
    with pytest.raises(ValueError, match="scale_range"):
        make_synthetic_det(n_train=2, n_val=0, n_test=0, scale_range=(0.5, 2))
