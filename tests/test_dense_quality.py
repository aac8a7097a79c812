"""Label-issue scores of masks and boxes (issue 21): hand-computed cases and planted corruptions.

The planted-corruption tests stand in a model that has learned the set (the
clean masks, blurred; the clean boxes, jittered, at a high confidence), so
that they test what the scores do with a good prediction. For boxes that is
``box_issue`` and ``overlooked``, the scores built for missing boxes: the
default ranking of a detection run (``spurious``, chosen on the benchmark's
choice seed with the tiny detector) looks at the given boxes only, so by
construction it cannot see a lesion that has no box. Whether the tiny
U-Net and Faster R-CNN of a short run predict well enough is what
``benchmarks/dense_label_issues.py`` measures (``docs/quality.md``).
"""

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from mombs.quality import (
    box_issue_kind,
    box_issue_scores,
    cleanlab_box_scores,
    dense_quality,
    dense_score,
    mask_issue_kind,
    mask_issue_map,
    mask_issue_scores,
)
from mombs.recipes.detection.synthetic_det import DET_CORRUPTIONS, make_synthetic_det
from mombs.recipes.segmentation import ISSUE_SCORE as SEG_SCORE
from mombs.recipes.segmentation.synthetic_ct import CORRUPTIONS, make_synthetic_ct
from mombs.tasks.segmentation import per_image_dice_ce


def _probs(fg):
    fg = np.asarray(fg, dtype=np.float32)
    return np.stack([1 - fg, fg], axis=1)


# --------------------------------------------------------------------------- masks


def test_mask_scores_on_hand_computed_cases():
    given = np.zeros((4, 4, 4), dtype=np.int64)
    fg = np.zeros((4, 4, 4))
    given[0, 1:3, 1:3] = 1  # image 0 agrees: Dice 1
    fg[0, 1:3, 1:3] = 1.0
    fg[1, 1:3, 1:3] = 0.9  # image 1 is missing its mask: the model sees 4 pixels, the mask none
    given[2, 0:4, 0:4] = 1  # image 2's mask is too large: 16 given, 4 predicted, 4 shared
    fg[2, 1:3, 1:3] = 1.0
    # image 3: both empty, the model sure of it
    s = mask_issue_scores(_probs(fg), given, border=0, cleanlab=False)
    np.testing.assert_allclose(s["disagreement"], [0.0, 1.0, 1 - 2 * 4 / 20, 0.0])
    np.testing.assert_allclose(s["area"], [0.0, np.log(5), np.log(17 / 5), 0.0])
    # region_error: mean of 1 - p(given class) over given | predicted foreground (border 0)
    np.testing.assert_allclose(s["region_error"], [0.0, 0.9, 12 / 16, 0.0], atol=1e-6)
    np.testing.assert_array_equal(s["predicted_area"], [4, 4, 4, 0])
    assert list(mask_issue_kind(s)) == ["agrees", "missing", "too large", "agrees"]
    m = mask_issue_map(_probs(fg), given)
    assert m[1, 1, 1] == pytest.approx(0.9) and m[2, 0, 0] == pytest.approx(-1.0) and m[0, 1, 1] == 0
    # a ring of one pixel around the union averages in the model's sure background: the error drops
    assert mask_issue_scores(_probs(fg), given, border=1, cleanlab=False)["region_error"][1] < 0.9


def test_a_foreground_pixel_of_the_wrong_class_is_no_overlap():
    prob = np.zeros((1, 3, 2, 2), dtype=np.float32)
    prob[0, 0] = 1.0
    prob[0, :, 0, 0] = [0.0, 0.1, 0.9]  # the model says class 2 where the mask says class 1
    given = np.zeros((1, 2, 2), dtype=np.int64)
    given[0, 0, 0] = 1
    s = mask_issue_scores(prob, given, border=0, cleanlab=False)
    assert s["disagreement"][0] == 1.0 and s["area"][0] == 0.0
    assert s["region_error"][0] == pytest.approx(0.9)


def test_cleanlab_mask_score_is_one_minus_cleanlabs():
    pytest.importorskip("cleanlab")
    from cleanlab.segmentation.rank import get_label_quality_scores

    rng = np.random.default_rng(0)
    fg = rng.random((3, 8, 8)).astype(np.float32)
    given = (rng.random((3, 8, 8)) < 0.3).astype(np.int64)
    s = mask_issue_scores(_probs(fg), given)
    np.testing.assert_allclose(s["cleanlab"], 1 - get_label_quality_scores(given, _probs(fg), verbose=False)[0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prob=np.zeros((2, 8, 8)), given=np.zeros((2, 8, 8), int)), r"prob must be \(N, K, H, W\)"),
        (
            dict(prob=np.zeros((2, 2, 8, 8)), given=np.zeros((3, 8, 8), int)),
            r"given must be the \(N, H, W\) = \(2, 8, 8\)",
        ),
        (dict(prob=np.zeros((1, 2, 2, 2)), given=np.full((1, 2, 2), 2)), r"given must lie in \[0, 2\)"),
        (dict(prob=np.full((1, 2, 2, 2), np.nan), given=np.zeros((1, 2, 2), int)), "NaN"),
        (dict(prob=np.zeros((1, 2, 2, 2)), given=np.zeros((1, 2, 2)), border=-1), "border=-1"),
    ],
)
def test_bad_mask_inputs_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mask_issue_scores(**kwargs)


def test_planted_corrupted_masks_rank_above_chance_under_a_model_that_learned_the_set():
    ct = make_synthetic_ct(n_train=80, n_val=1, n_test=1, size=32, noise_fraction=0.3, seed=3)
    tr = ct.train
    # a good model: the clean mask, blurred, a little noise
    rng = np.random.default_rng(0)
    fg = np.stack([ndimage.gaussian_filter(m.astype(np.float32), 1.0) for m in ct.clean_masks_train])
    fg = np.clip(fg + rng.normal(0, 0.05, fg.shape), 0, 1)
    s = mask_issue_scores(_probs(fg), tr.masks, cleanlab=False)
    # the run's loss of such a model: lesion Dice + cross-entropy of its log-probabilities
    logits = torch.log(torch.from_numpy(_probs(fg)).clamp_min(1e-6))
    loss = per_image_dice_ce(logits, torch.from_numpy(tr.masks).long(), include_background=False).numpy()
    score, noisy = dense_score(SEG_SCORE, s, loss, np.zeros(len(loss))), tr.noisy
    assert roc_auc_score(noisy, score) > 0.9
    for code, name in enumerate(CORRUPTIONS):
        member = tr.corruption == code
        if code == 0 or not member.any():
            continue
        # each corruption type ranks above the clean masks
        assert score[member].mean() > np.median(score[~noisy]), name


# --------------------------------------------------------------------------- boxes


def _det(boxes, conf):
    return {"boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4), "scores": np.asarray(conf, dtype=np.float32)}


def test_box_scores_on_hand_computed_cases():
    box = [10, 10, 20, 20]
    dets = [
        _det([box], [0.9]),  # agrees
        _det([box, [40, 40, 50, 50]], [0.9, 0.8]),  # a confident detection no box covers: overlooked 0.8
        _det([[15, 10, 25, 20]], [0.9]),  # shifted by half: IoU 1/3, badly located 0.9 * 2/3
        _det([], []),  # nothing supports the given box: spurious 1
        _det([[10, 10, 20, 20]], [0.3]),
    ]  # weak support: spurious 0.7
    given = [np.array([box])] * 5
    s = box_issue_scores(dets, given)
    np.testing.assert_allclose(s["overlooked"], [0, 0.8, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(s["badly_located"], [0, 0, 0.9 * 2 / 3, 0, 0], atol=1e-6)
    np.testing.assert_allclose(s["spurious"], [0.1, 0.1, 0.1, 1.0, 0.7], atol=1e-6)
    np.testing.assert_allclose(s["box_issue"], [0.1, 0.8, 0.6, 1.0, 0.7], atol=1e-6)
    assert list(box_issue_kind(s)) == ["agrees", "overlooked", "badly located", "spurious", "spurious"]
    # an image without given boxes: only a detection can make it suspect
    s = box_issue_scores([_det([box], [0.7]), _det([], [])], [np.zeros((0, 4))] * 2)
    np.testing.assert_allclose(s["box_issue"], [0.7, 0.0])


@pytest.mark.parametrize(
    "dets, given, message",
    [
        ([_det([[0, 0, 1, 1]], [0.5])], [], "detections has 1 images but given_boxes has 0"),
        ([{"boxes": np.zeros((1, 4))}], [np.zeros((0, 4))], r"detections\[0\] must be a mapping with 'boxes'"),
        ([_det([[0, 0, 1, 1]], [1.5])], [np.zeros((0, 4))], r"detections\[0\]\['scores'\] must be \(1,\) confidences"),
        ([_det([], [])], [np.zeros((2, 3))], r"given_boxes\[0\] must be an \(n, 4\) array"),
    ],
)
def test_bad_box_inputs_are_named(dets, given, message):
    with pytest.raises(ValueError, match=message):
        box_issue_scores(dets, given)


def test_planted_missing_boxes_rank_first_under_a_detector_that_learned_the_set():
    det = make_synthetic_det(
        n_train=60,
        n_val=1,
        n_test=1,
        size=32,
        missing_fraction=0.3,
        shift_fraction=0.1,
        resize_fraction=0.1,
        spurious_fraction=0.05,
        seed=1,
    )
    tr = det.train
    rng = np.random.default_rng(0)
    # a detector that learned the set: every lesion found (jittered by a pixel), confidence 0.8 to 1
    dets = [
        _det(np.asarray(c) + rng.normal(0, 0.5, np.shape(c)), rng.uniform(0.8, 1.0, len(c))) for c in tr.clean_boxes
    ]
    s = box_issue_scores(dets, tr.boxes)
    score = s["box_issue"]
    assert roc_auc_score(tr.noisy, score) > 0.9
    missed = tr.corruption == DET_CORRUPTIONS.index("missed")
    assert (
        missed.any()
        and roc_auc_score(missed[(tr.corruption == 0) | missed], score[(tr.corruption == 0) | missed]) > 0.95
    )
    assert set(box_issue_kind(s)[missed]) == {"overlooked"}
    # every image with a lesion left unboxed (alone or among other box errors) ranks high on overlooked;
    # a box shifted off its lesion also leaves that lesion's detection uncovered
    assert roc_auc_score(tr.missing, s["overlooked"]) > 0.9
    if pytest.importorskip("cleanlab"):
        cl = cleanlab_box_scores(dets, tr.boxes)
        assert cl.shape == (len(tr),) and roc_auc_score(tr.noisy, cl) > 0.5


def test_dense_table_ranks_flags_and_names_the_score():
    n = 6
    scores = {"disagreement": np.array([0.1, 0.9, 0.5, 0.0, 0.2, 0.7])}
    q = dense_quality(
        np.arange(n, dtype=float),
        np.ones(n),
        scores,
        score="disagreement",
        kind=np.array(["agrees"] * n),
        wrong_label=np.array([0, 1, 0, 0, 0, 1], bool),
        corruption=np.array(["none"] * n),
        info={"given_area": np.zeros(n)},
    )
    assert list(q.table["label_issue_rank"]) == [5, 1, 3, 6, 4, 2]
    assert list(q.table["flagged"]) == [False, True, True, False, False, True]
    assert q.flag_rule == "disagreement >= 0.5" and q.per_class() == []
    assert q.summary()["known_noise"]["precision"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match=r"score='nope' is not one of this table's scores"):
        dense_quality(np.zeros(n), np.ones(n), scores, score="nope")
    q = dense_quality(np.arange(n, dtype=float), np.zeros(n), scores, score="loss")
    assert q.flag_rule.startswith("poorly-labeled quadrant")


def _benchmark():
    """``benchmarks/dense_label_issues.py`` as a module (it is a script, not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "dense_label_issues.py"
    spec = importlib.util.spec_from_file_location("dense_label_issues", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_the_default_score_is_the_one_the_committed_choice_cells_pick(task):
    from mombs.recipes import get_recipe

    bench = _benchmark()
    pick = bench.choose(task)
    if not pick:
        pytest.skip(f"no committed choice cells for {task}")
    assert get_recipe(task).issue_score == pick["score"]


def test_docs_quality_dense_tables_are_fresh(capsys):
    bench = _benchmark()
    assert bench.main(["--table", "--check"]) == 0, capsys.readouterr().out[-3000:]
