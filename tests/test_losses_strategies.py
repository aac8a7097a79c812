import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mombs.recipes.classification.losses import LOSSES, create_loss
from mombs.strategies import STRATEGY_REGISTRY, create_strategy


def test_every_loss_gives_one_finite_value_per_sample():
    logits = torch.randn(6, 4, requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, 0, 1])
    for name in LOSSES:
        loss = create_loss(name, class_counts=[50, 20, 5, 1], epochs=10)(logits, target)
        assert loss.shape == (6,) and torch.isfinite(loss).all(), name
        loss.sum().backward()


def test_losses_against_hand_computations():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    target = torch.tensor([0, 1])
    p0 = math.exp(2) / (math.exp(2) + 1)
    assert torch.allclose(create_loss("ce")(logits, target), torch.tensor([-math.log(p0), math.log(2)]))
    focal = create_loss("focal", gamma=2.0)(logits, target)
    assert focal[0].item() == pytest.approx(-((1 - p0) ** 2) * math.log(p0), rel=1e-5)
    gce = create_loss("gce", q=0.5)(logits, target)
    assert gce[1].item() == pytest.approx((1 - 0.5**0.5) / 0.5, rel=1e-5)
    # logit adjustment with a uniform prior is plain cross-entropy
    la = create_loss("logit-adjustment", class_counts=[10, 10])(logits, target)
    assert torch.allclose(la, F.cross_entropy(logits, target, reduction="none"))
    # LDAM: the rarest class gets the largest margin (max_margin)
    ldam = create_loss("ldam", class_counts=[100, 1])
    assert ldam.margins.tolist() == pytest.approx([0.5 * 100**-0.25, 0.5])


def test_ldam_drw_reweights_from_80_percent_of_training():
    loss = create_loss("ldam-drw", class_counts=[100, 1], epochs=10)
    assert loss.drw_epoch == 8
    logits, target = torch.zeros(2, 2), torch.tensor([0, 1])
    before = loss(logits, target)
    loss.set_epoch(8)
    after = loss(logits, target)
    assert after[1] / after[0] > before[1] / before[0]


def test_the_loss_names_a_config_is_checked_against_are_the_registry_keys():
    from mombs.recipes.classification.names import LOSS_NAMES

    assert LOSS_NAMES == tuple(LOSSES)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="loss='l2' is not known; choose one of"):
        create_loss("l2")
    with pytest.raises(ValueError, match="needs class_counts"):
        create_loss("ldam")
    with pytest.raises(ValueError, match="strategy='best' is not known; choose one of"):
        create_strategy("best")


def test_registry_holds_every_strategy_of_the_study():
    assert set(STRATEGY_REGISTRY) == {
        "random",
        "mixed",
        "mixed-loss",
        "mixed-uncertainty",
        "mixed-entropy",
        "anti",
        "scl-hard",
        "scl-linear",
        "scl-log",
        "scl-mixture",
        "ohem",
    }


def _epoch(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_planned_strategies_balance_and_random_before_pivot():
    scores = np.arange(64.0)
    sampler = create_strategy("mixed", pivot_epoch=2).create_sampler(64, 4, seed=0)
    sampler.set_scores(scores)
    early, late = _epoch(sampler, 1), _epoch(sampler, 2)
    assert np.std([scores[b].sum() for b in late]) < 0.2 * np.std([scores[b].sum() for b in early])
    anti = create_strategy("anti", pivot_epoch=0).create_sampler(64, 4, seed=0)
    anti.set_scores(scores)
    assert max(np.ptp(scores[b]) for b in _epoch(anti, 0)) <= 4


def test_every_registry_strategy_makes_a_sampler():
    # The planner's orders and the registry's strategies are different names:
    # each strategy builds its own sampler (the one-measure ablations plan with order="mixed").
    for name in STRATEGY_REGISTRY:
        sampler = create_strategy(name, pivot_epoch=1).create_sampler(40, 8, seed=0)
        batches = _epoch(sampler, 0)
        assert sorted(np.concatenate(batches).tolist()) == list(range(40)), name
    from mombs import MixedOrderBatchSampler

    with pytest.raises(ValueError, match="'mixed-loss' is a training strategy"):
        MixedOrderBatchSampler(40, 8, order="mixed-loss")
    assert create_strategy("mixed-loss").create_sampler(40, 8).order == "mixed"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("scl-hard", [1.0, 1.0, 0.0, 0.0]),
        ("scl-linear", [0.9, 0.5, 0.0, 0.0]),
        ("scl-mixture", [1.0, 1.0, 0.0, 0.0]),
    ],
)
def test_self_paced_weights_at_lambda_one(name, expected):
    s = create_strategy(name, pivot_epoch=0, start_quantile=0.5)
    s.start_epoch(0, num_epochs=11, losses=np.array([0.0, 1.0, 2.0]))  # median 1.0 -> lambda = 1
    w = s.weights(torch.tensor([0.1, 0.5, 1.0, 3.0]))
    assert w.tolist() == pytest.approx(expected)


def test_self_paced_log_weights_fall_from_one_to_zero():
    s = create_strategy("scl-log", pivot_epoch=0)
    s.start_epoch(0, num_epochs=11, losses=np.array([0.0, 1.0, 2.0]))
    w = s.weights(torch.tensor([0.0, 0.5, 0.99, 2.0]))
    assert w[0] == pytest.approx(1.0) and 0 < w[1] < 1 and w[2] < 0.05 and w[3] == 0


def test_self_paced_threshold_grows_to_everything():
    s = create_strategy("scl-hard", pivot_epoch=2, start_quantile=0.5)
    losses = np.linspace(0, 1, 101)
    lams = [s.threshold(e, 12, losses) for e in range(2, 12)]
    assert all(a <= b for a, b in zip(lams, lams[1:])) and lams[0] == pytest.approx(0.5)
    s.start_epoch(11, num_epochs=12, losses=losses)
    assert s.weights(torch.tensor([5.0])) is None  # all samples in
    s.start_epoch(1, num_epochs=12, losses=losses)
    assert s.weights(torch.tensor([5.0])) is None  # before the pivot: every sample counts


def test_self_paced_threshold_is_fixed_at_the_start_of_the_epoch():
    # The tracker updates its losses batch by batch during an epoch; the
    # threshold must come from the losses as they stood when the epoch began.
    s = create_strategy("scl-hard", pivot_epoch=0, start_quantile=0.5)
    losses = np.array([0.0, 1.0, 2.0])
    s.start_epoch(0, num_epochs=11, losses=losses)
    before = s.weights(torch.tensor([0.5, 1.5]))
    losses[:] = [10.0, 11.0, 12.0]  # the in-place updates of a training pass
    assert torch.equal(s.weights(torch.tensor([0.5, 1.5])), before)
    assert before.tolist() == [1.0, 0.0]


def test_ohem_sees_the_hardest_twice():
    sampler = create_strategy("ohem", pivot_epoch=1, fraction=0.1).create_sampler(100, 16, seed=0)
    sampler.set_scores(np.arange(100.0))
    before = _epoch(sampler, 0)
    assert sorted(np.concatenate(before).tolist()) == list(range(100))  # before the pivot: plain random
    batches = _epoch(sampler, 1)
    counts = np.bincount(np.concatenate(batches), minlength=100)
    assert counts[90:].tolist() == [2] * 10 and counts[:90].tolist() == [1] * 90
    assert len(sampler) == len(batches) == 7
    state = sampler.state_dict()
    other = create_strategy("ohem", pivot_epoch=1, fraction=0.1).create_sampler(100, 16, seed=0)
    other.load_state_dict(state)
    assert list(other) == batches
