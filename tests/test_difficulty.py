import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mombs import DifficultyTracker, difficulty_scores, feature_noise_uncertainty, quadrants, rank_average, spearman


def test_rank_sum_with_average_ties():
    loss = [0.1, 0.5, 0.5, 2.0]
    unc = [0.9, 0.1, 0.3, 0.3]
    # loss ranks 1, 2.5, 2.5, 4; uncertainty ranks 4, 1, 2.5, 2.5
    assert difficulty_scores(loss, unc).tolist() == [5.0, 3.5, 5.0, 6.5]
    assert difficulty_scores(loss, unc, measure="loss").tolist() == [1.0, 2.5, 2.5, 4.0]
    assert difficulty_scores(loss, unc, measure="uncertainty").tolist() == [4.0, 1.0, 2.5, 2.5]
    assert difficulty_scores(torch.tensor(loss), measure="loss").tolist() == [1.0, 2.5, 2.5, 4.0]


def test_ranks_match_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    x = np.random.default_rng(0).integers(0, 20, size=500).astype(float)
    assert np.array_equal(rank_average(x), scipy_stats.rankdata(x))
    y = x + np.random.default_rng(1).normal(size=500) * 5
    assert spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x, y).statistic)


def test_bad_scores_input():
    with pytest.raises(ValueError, match="loss contains 2 non-finite"):
        difficulty_scores([1.0, np.nan, np.inf], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="uncertainty has 2 entries but 3"):
        difficulty_scores([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="measure='both' needs uncertainty"):
        difficulty_scores([1.0])
    with pytest.raises(ValueError, match="measure='max'"):
        difficulty_scores([1.0], [1.0], measure="max")
    with pytest.raises(ValueError, match="loss_quantile=1.2"):
        quadrants([1.0], [1.0], loss_quantile=1.2)


def test_quadrants_by_hand():
    loss = np.array([5.0, 5.0, 0.1, 0.1])
    unc = np.array([0.1, 5.0, 0.1, 5.0])
    q = quadrants(loss, unc)
    assert q.labels.tolist() == ["poorly-labeled", "under-represented", "well-represented", "overfitted"]
    assert q.counts == {"poorly-labeled": 1, "under-represented": 1, "well-represented": 1, "overfitted": 1}


def test_planted_noisy_and_rare_samples_land_in_their_quadrants(digits_model):
    model, x, y, flipped, rare = digits_model
    model.eval()
    with torch.no_grad():
        loss = F.cross_entropy(model(x), y, reduction="none")
    unc = feature_noise_uncertainty(model, x, at="features")
    q = quadrants(loss, unc)
    poor, under = q.mask("poorly-labeled"), q.mask("under-represented")
    base = flipped.mean()
    # Mislabeled samples: high loss, yet the model is sure of its (other) class.
    assert flipped[poor].mean() > 2.5 * base
    assert poor[flipped].mean() > 0.25
    # Rare-class samples: high loss and high uncertainty.
    assert under[rare].mean() > 1.5 * under.mean()
    assert poor[rare].mean() < 0.2
    # And the summed score ranks both kinds harder than the clean majority.
    d = difficulty_scores(loss, unc)
    clean = ~flipped & ~rare
    assert d[rare].mean() > d[clean].mean() and d[flipped].mean() > d[clean].mean()


def test_tracker_bookkeeping():
    t = DifficultyTracker(6)
    t.set_epoch(2)
    t.update_loss(torch.tensor([0, 1, 2]), torch.tensor([3.0, 1.0, 2.0]))
    t.set_epoch(3)
    t.update_loss([3], [0.5])
    t.update_uncertainty(np.array([0, 1, 2, 3, 4, 5]), np.arange(6.0))
    assert t.loss_epoch.tolist() == [2, 2, 2, 3, -1, -1]
    assert t.measured().tolist() == [True] * 4 + [False] * 2
    # loss ranks among the measured four: 4, 2, 3, 1, stretched onto 1..6 (r -> 1 + (r - 1) * 5 / 3):
    # 6, 8/3, 13/3, 1; the unmeasured get the middle of 1..6, 3.5. The uncertainty ranks are 1..6.
    assert t.scores("loss") == pytest.approx([6.0, 8 / 3, 13 / 3, 1.0, 3.5, 3.5])
    assert t.scores("uncertainty").tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert t.scores() == pytest.approx([7.0, 14 / 3, 22 / 3, 5.0, 8.5, 9.5])
    state = t.state_dict()
    other = DifficultyTracker(6)
    other.load_state_dict(state)
    assert np.array_equal(other.scores(), t.scores()) and other.epoch == 3


def test_a_partly_measured_signal_weighs_as_much_as_a_fully_measured_one():
    # Rotating schedules measure the uncertainty of a part of the data only; its
    # ranks must span the same 1..N as the loss's, or the plan follows the loss alone.
    t = DifficultyTracker(8)
    t.update_loss(np.arange(8), [7.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # sample 0: the highest loss
    t.update_uncertainty([0, 1, 2, 3], [0.0, 9.0, 1.0, 2.0])  # sample 1: the highest uncertainty
    scores = t.scores()
    assert scores[0] == scores[1] == 9.0  # loss-only hard == uncertainty-only hard: 8 + 1 == 1 + 8
    assert t.scores("uncertainty")[:4] == pytest.approx([1.0, 8.0, 1 + 7 / 3, 1 + 14 / 3])
    assert t.scores("uncertainty")[4:].tolist() == [4.5] * 4  # unmeasured: the middle of 1..8
    one = DifficultyTracker(5)
    one.update_loss([2], [1.0])
    assert one.scores("loss").tolist() == [3.0] * 5  # one measured sample: the middle rank too
    assert DifficultyTracker(3).scores().tolist() == [4.0] * 3


def test_fully_measured_scores_are_the_plain_rank_sums_bit_for_bit():
    rng = np.random.default_rng(3)
    loss, unc = rng.random(500), rng.random(500).round(2)  # ties too
    t = DifficultyTracker(500)
    t.update_loss(np.arange(500), loss)
    t.update_uncertainty(np.arange(500), unc)
    assert np.array_equal(t.scores(), difficulty_scores(loss, unc))
    assert np.array_equal(t.scores("loss"), rank_average(loss))


def test_tracker_rejects_bad_updates():
    t = DifficultyTracker(4)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 4\)"):
        t.update_loss([1, 4], [0.0, 0.0])
    with pytest.raises(ValueError, match="loss has 1 entries but 2"):
        t.update_loss([0, 1], [0.0])
    with pytest.raises(ValueError, match="1 non-finite"):
        t.update_uncertainty([0], [float("nan")])
    with pytest.raises(ValueError, match="num_samples=0"):
        DifficultyTracker(0)
    with pytest.raises(ValueError, match="num_samples=5"):
        t.load_state_dict(DifficultyTracker(5).state_dict())


def test_tracker_state_keeps_what_is_not_yet_synced(tmp_path):
    t = DifficultyTracker(5)
    t.update_loss([1, 3], [0.5, 0.7])
    torch.save(t.state_dict(), tmp_path / "t.pt")
    other = DifficultyTracker(5)
    other.load_state_dict(torch.load(tmp_path / "t.pt"))  # weights_only=True by default
    assert other._dirty["loss"].tolist() == [False, True, False, True, False]
    assert other.loss[[1, 3]].tolist() == [0.5, 0.7]
    t.update_loss([], [])  # an empty batch is fine
    with pytest.raises(ValueError, match="kind='all'"):
        t.measured("all")


def test_tracker_quadrants_refuse_never_measured_samples():
    t = DifficultyTracker(4)
    t.update_loss([0, 1, 2, 3], [0.1, 0.2, 3.0, 4.0])
    t.update_uncertainty([0, 1], [0.5, 0.6])
    with pytest.raises(ValueError, match="2 of 4 samples have no loss or no uncertainty"):
        t.quadrants()
    t.update_uncertainty([2, 3], [0.1, 0.9])
    assert t.quadrants().counts == {"poorly-labeled": 1, "under-represented": 1, "well-represented": 1, "overfitted": 1}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_tracker_takes_half_precision_losses(dtype):
    t = DifficultyTracker(3)
    t.update_loss(torch.tensor([0, 2]), torch.tensor([0.5, 2.0], dtype=dtype))
    assert t.loss.tolist() == [0.5, 0.0, 2.0] and t.measured("loss").tolist() == [True, False, True]
