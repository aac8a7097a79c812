"""FROC as ULD papers compute it, on hand-computed cases (issue 11)."""

import numpy as np
import pytest
import torch

from mombs.recipes.detection.metrics import FROC_FPS, box_iou, froc, froc_curve

A, B, C = [0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]


def _case():
    """Two images, three lesions; by score: TP, TP, a second box on a found
    lesion, FP, FP, TP (worked out in test_hand_computed_froc)."""
    gts = [np.array([A]), np.array([B, C])]
    dets = [
        {"boxes": np.array([A, [0, 0, 10, 9], [60, 60, 70, 70]]), "scores": np.array([0.9, 0.8, 0.7])},
        {"boxes": np.array([B, [100, 100, 110, 110], C]), "scores": np.array([0.85, 0.6, 0.5])},
    ]
    return dets, gts


def test_hand_computed_froc():
    dets, gts = _case()
    fp, sens = froc_curve(dets, gts)
    # 0.9 A found, 0.85 B found, 0.8 hits A again (neither TP nor FP), 0.7 FP, 0.6 FP, 0.5 C found
    np.testing.assert_allclose(fp, [0, 0, 0, 0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(sens, [0, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 1.0])
    res = froc(dets, gts)
    assert res.fps == FROC_FPS
    # at 0.5 FP/image: before the second FP, C is not found yet; at 1: top of the step, all three
    np.testing.assert_allclose(res.sensitivity, [2 / 3, 1, 1, 1, 1, 1])
    assert res.average == pytest.approx((2 / 3 + 1 + 1) / 3)
    assert res.n_images == 2 and res.n_lesions == 3
    np.testing.assert_allclose(res.thresholds, [0.9, 0.85, 0.8, 0.7, 0.6, 0.5])
    d = res.as_dict()
    assert d["sens@0.5"] == pytest.approx(2 / 3) and d["sens@16"] == 1.0 and d["average"] == pytest.approx(8 / 9)
    # counting the second box on A as a false positive would put C's find at 1.5 FP/image,
    # so 2/3 at 1 FP/image; between FP levels the staircase is flat
    res2 = froc(dets, gts, fps=(0.25, 0.75, 1.0), average_fps=(0.25,))
    np.testing.assert_allclose(res2.sensitivity, [2 / 3, 2 / 3, 1.0])
    assert res2.average == pytest.approx(2 / 3)


def test_lesion_free_images_count_in_the_fp_rate():
    gts = [np.zeros((0, 4)), np.zeros((0, 4)), np.array([A]), np.array([B])]
    dets = [
        (np.array([[1, 1, 5, 5]]), np.array([0.9])),
        (np.zeros((0, 4)), np.zeros(0)),
        np.array([A + [0.8]]),
        np.array([[70, 70, 80, 80, 0.95]]),
    ]
    fp, sens = froc_curve(dets, gts)
    # 0.95 FP (1/4), 0.9 FP (2/4), 0.8 TP (A): two lesions
    np.testing.assert_allclose(fp, [0, 0.25, 0.5, 0.5])
    np.testing.assert_allclose(sens, [0, 0, 0, 0.5])
    res = froc(dets, gts, fps=(0.25, 0.5, 1))
    np.testing.assert_allclose(res.sensitivity, [0, 0.5, 0.5])


def test_iou_threshold_edge_and_tensors():
    gts = [torch.tensor([A], dtype=torch.float32)]
    half = {"boxes": torch.tensor([[0, 0, 10, 5.0]]), "scores": torch.tensor([0.5])}  # IoU 0.5
    below = {"boxes": torch.tensor([[0, 0, 10, 4.9]]), "scores": torch.tensor([0.5])}  # IoU 0.49
    assert box_iou([[0, 0, 10, 5]], [A])[0, 0] == pytest.approx(0.5)
    assert froc([half], gts).sensitivity[0] == 1.0
    assert froc([below], gts).sensitivity[0] == 0.0
    assert froc([below], gts, iou_threshold=0.4).sensitivity[0] == 1.0


def test_empty_and_degenerate_sets():
    gts = [np.array([A]), np.array([B])]
    none = [np.zeros((0, 5)), np.zeros((0, 5))]
    res = froc(none, gts)
    np.testing.assert_allclose(res.sensitivity, 0.0)
    no_lesions = froc([np.array([A + [0.5]])], [np.zeros((0, 4))])
    assert np.isnan(no_lesions.sensitivity).all() and np.isnan(no_lesions.average)
    # one detection that covers two overlapping lesions finds both, as in DeepLesion's code
    two = froc([np.array([[0, 0, 10, 10, 0.9]])], [np.array([A, [0, 0, 10, 9]])])
    assert two.sensitivity[0] == 1.0


def test_bad_inputs_name_the_argument():
    dets, gts = _case()
    with pytest.raises(ValueError, match="same images"):
        froc(dets, gts[:1])
    with pytest.raises(ValueError, match="iou_threshold"):
        froc(dets, gts, iou_threshold=0)
    with pytest.raises(ValueError, match="fps="):
        froc(dets, gts, fps=(-1,))
    with pytest.raises(ValueError, match=r"detections\[0\]"):
        froc([np.zeros((2, 3))], [np.array([A])])
    with pytest.raises(ValueError, match="scores"):
        froc([{"boxes": np.array([A]), "scores": np.array([0.1, 0.2])}], [np.array([A])])


def test_unmatched_detection_score_by_hand():
    from mombs.recipes.detection.metrics import unmatched_detection_score

    given = [
        np.array([[0, 0, 10, 10]]),  # one box
        np.zeros((0, 4)),  # no box at all
        np.array([[0, 0, 10, 10]]),
        np.array([[0, 0, 10, 10]]),
    ]
    dets = [
        {"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), "scores": np.array([0.9, 0.6])},
        {"boxes": np.array([[5, 5, 15, 15]]), "scores": np.array([0.3])},
        {"boxes": np.array([[0, 0, 10, 10]]), "scores": np.array([0.8])},  # covered: nothing unmatched
        {"boxes": np.zeros((0, 4)), "scores": np.zeros(0)},
    ]  # no detection
    # image 0: the 0.9 box matches the given one (IoU 1); the 0.6 box lies elsewhere
    np.testing.assert_array_equal(unmatched_detection_score(dets, given), [0.6, 0.3, 0.0, 0.0])
    # [0, 0, 10, 10] against [0, 0, 10, 5]: IoU exactly 0.5, covered at 0.5 and unmatched above it
    half = [np.array([[0, 0, 10, 5]])]
    one = [{"boxes": np.array([[0, 0, 10, 10]]), "scores": np.array([0.7])}]
    assert unmatched_detection_score(one, half)[0] == 0.0
    assert unmatched_detection_score(one, half, iou_threshold=0.6)[0] == 0.7
    with pytest.raises(ValueError, match="iou_threshold"):
        unmatched_detection_score(one, half, iou_threshold=0)
    with pytest.raises(ValueError, match="given_boxes .2 images. must list the same images"):
        unmatched_detection_score(one, half * 2)
    with pytest.raises(ValueError, match=r"given_boxes\[0\] boxes must be \(n, 4\)"):
        unmatched_detection_score(one, [np.zeros((1, 3))])
