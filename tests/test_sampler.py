import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

from conftest import rank_sum
from mombs import MixedOrderBatchSampler, plan_batches


def test_follows_the_batch_sampler_contract():
    s = MixedOrderBatchSampler(103, 10)
    batches = list(s)
    assert len(s) == len(batches) == len(BatchSampler(RandomSampler(range(103)), 10, False))
    assert all(isinstance(b, list) and all(type(i) is int for i in b) for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(103))
    s = MixedOrderBatchSampler(range(103), 10, drop_last=True)
    assert len(s) == len(list(s)) == 10
    assert all(len(b) == 10 for b in s.plan())


def test_random_before_pivot_planned_after():
    scores = rank_sum(400)
    s = MixedOrderBatchSampler(400, 8, pivot_epoch=2, seed=3)
    s.set_scores(scores)
    plan = plan_batches(scores, 8, seed=3, epoch=2)
    for epoch in range(4):
        s.set_epoch(epoch)
        batches = list(s)
        sums = np.array([scores[b].sum() for b in batches])
        if epoch < 2:
            assert not s.uses_scores()
            assert batches == plan_batches(np.zeros(400), 8, order="random", seed=3, epoch=epoch).tolist()
            assert sums.std() > 0.3 * np.sqrt(8) * scores.std()
        else:
            assert s.uses_scores()
            assert sums.std() < 0.05 * np.sqrt(8) * scores.std()
    s.set_epoch(2)
    assert list(s) == plan.tolist()


def test_set_epoch_changes_the_plan_and_same_epoch_repeats_it():
    s = MixedOrderBatchSampler(200, 4)
    s.set_scores(rank_sum(200))
    first = list(s)
    with pytest.warns(RuntimeWarning, match=r"second whole pass over epoch 0 without set_epoch\(\)"):
        assert list(s) == first  # the same batches, and a warning: nothing moved the epoch on
    s.set_epoch(1)
    assert list(s) != first


def test_past_pivot_without_scores_warns_and_samples_at_random():
    s = MixedOrderBatchSampler(50, 5, pivot_epoch=0)
    with pytest.warns(UserWarning, match="set_scores"):
        batches = list(s)
    assert sorted(i for b in batches for i in b) == list(range(50))


def test_random_strategy_ignores_scores():
    s = MixedOrderBatchSampler(50, 5, order="random")
    s.set_scores(np.arange(50.0))
    assert not s.uses_scores()
    assert list(s) == plan_batches(np.zeros(50), 5, order="random").tolist()


def test_works_with_a_dataloader_and_workers():
    n = 96
    ds = TensorDataset(torch.arange(n), torch.from_numpy(rank_sum(n)))
    s = MixedOrderBatchSampler(ds, 8, seed=1)
    s.set_scores(rank_sum(n))
    loader = DataLoader(ds, batch_sampler=s, num_workers=2)
    seen = [x.tolist() for x, _ in loader]
    assert seen == s.plan().tolist()
    assert sorted(i for b in seen for i in b) == list(range(n))


@pytest.mark.parametrize("drop_last", [False, True])
def test_resume_mid_epoch_gives_exactly_the_remaining_batches(drop_last):
    scores = rank_sum(301)
    s = MixedOrderBatchSampler(301, 7, pivot_epoch=1, seed=9, drop_last=drop_last)
    s.set_scores(scores)
    s.set_epoch(3)
    full = list(s)
    it = iter(s)
    head = [next(it) for _ in range(11)]
    state = s.state_dict()
    assert state["batches_done"] == 11

    fresh = MixedOrderBatchSampler(301, 7, pivot_epoch=1, seed=9, drop_last=drop_last)  # the run's settings
    fresh.load_state_dict(state)
    assert len(fresh) == len(full)  # the epoch's length, as torch's samplers report it
    rest = list(fresh)
    assert len(rest) == len(full) - 11 and head + rest == full
    assert len(list(fresh)) == len(full)  # the next pass is a whole epoch again


def test_resume_with_dataloader_step_count():
    # A DataLoader with workers prefetches, so the loop passes its own step count.
    ds = TensorDataset(torch.arange(120))
    s = MixedOrderBatchSampler(ds, 6, seed=2)
    s.set_scores(rank_sum(120))
    full = list(s)
    loader = DataLoader(ds, batch_sampler=s, num_workers=2, prefetch_factor=2)
    taken = []
    for step, (x,) in enumerate(loader):
        taken.append(x.tolist())
        if step == 4:
            state = s.state_dict(batches_done=step + 1)
            break
    resumed = MixedOrderBatchSampler(ds, 6, seed=2)
    resumed.load_state_dict(state)
    assert taken + [x.tolist() for (x,) in DataLoader(ds, batch_sampler=resumed)] == full


def test_an_assessors_observe_counts_what_a_prefetching_loader_really_trained():
    # No step count passed: the assessor's observe() tells the sampler what was consumed.
    import torch.nn as nn

    from mombs import DifficultyAssessor, IndexedDataset

    ds = IndexedDataset(TensorDataset(torch.randn(120, 3), torch.zeros(120, dtype=torch.long)))
    model = nn.Sequential()
    model.add_module("body", nn.Linear(3, 2))
    s = MixedOrderBatchSampler(ds, 6, seed=2, pivot_epoch=0)
    s.set_scores(rank_sum(120))
    full = [b for b in s]
    assessor = DifficultyAssessor(model, ds, at="body", sampler=s, pivot_epoch=0)
    assessor.start_epoch(0)
    taken = []
    for step, (idx, _x, _y) in enumerate(DataLoader(ds, batch_sampler=s, num_workers=2, prefetch_factor=2)):
        assessor.observe(idx, torch.rand(len(idx)))
        taken.append(idx.tolist())
        if step == 3:
            state = s.state_dict()
            break
    assert s._yielded > 4 and state["batches_done"] == 4  # the workers drew ahead; the state did not
    resumed = MixedOrderBatchSampler(ds, 6, seed=2, pivot_epoch=0)
    resumed.load_state_dict(state)
    assert taken + list(resumed) == full


def test_without_counting_a_plain_loop_state_is_what_was_yielded():
    s = MixedOrderBatchSampler(30, 5)
    it = iter(s)
    next(it), next(it)
    assert s.state_dict()["batches_done"] == 2
    s.note_consumed()
    assert s.state_dict()["batches_done"] == 1  # counted: the count wins
    with pytest.raises(ValueError, match="batches=-1"):
        s.note_consumed(-1)


def test_state_dict_survives_torch_save(tmp_path):
    s = MixedOrderBatchSampler(40, 4)
    s.set_scores(rank_sum(40))
    next(iter(s))
    torch.save(s.state_dict(), tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt")  # torch's default, weights_only=True
    other = MixedOrderBatchSampler(40, 4)
    other.load_state_dict(state)
    assert np.array_equal(other.scores, s.scores) and len(list(other)) == len(s) - 1
    assert len(other) == len(s) == 10  # the length stays the epoch's, as torch's samplers report it


@pytest.mark.parametrize(
    "other, match",
    [
        (dict(data_source=40, batch_size=5), "batch_size=4"),
        (dict(data_source=41, batch_size=4), "num_samples=40"),
        (
            dict(data_source=40, batch_size=4, order="anti"),
            "state order='mixed' differs from this sampler's order='anti'; build the sampler with the run's settings",
        ),
        (dict(data_source=40, batch_size=4, num_replicas=2, rank=0), "num_replicas=1"),
        (dict(data_source=40, batch_size=4, drop_last=True), "drop_last=False"),
        # the constructor's values are the run's: a state never changes them behind the assessor's back
        (
            dict(data_source=40, batch_size=4, pivot_epoch=3),
            "state pivot_epoch=1 differs from this sampler's pivot_epoch=3; build the sampler with the run's settings",
        ),
        (dict(data_source=40, batch_size=4, seed=7), "state seed=0 differs from this sampler's seed=7"),
        (dict(data_source=40, batch_size=4, jitter=0.0), "state jitter=0.005 differs from this sampler's jitter=0.0"),
    ],
)
def test_load_state_dict_rejects_other_settings(other, match):
    state = MixedOrderBatchSampler(40, 4).state_dict()
    assert state["jitter"] == 0.005  # the default the jitter case names
    fresh = MixedOrderBatchSampler(**other)
    before = fresh.state_dict()
    with pytest.raises(ValueError, match=match):
        fresh.load_state_dict(state)
    after = fresh.state_dict()
    assert all(before[k] == after[k] for k in before if k not in ("scores", "epoch_scores"))  # untouched


def test_simulated_replicas_cover_the_data_set_once():
    n, world = 103, 3
    scores = rank_sum(n)
    samplers = [MixedOrderBatchSampler(n, 4, num_replicas=world, rank=r) for r in range(world)]
    for s in samplers:
        s.set_scores(scores)
    batches = [list(s) for s in samplers]
    assert len({len(b) for b in batches}) == 1  # same number of steps on every rank
    flat = [i for b in batches for batch in b for i in batch]
    assert set(flat) == set(range(n)) and len(flat) == 105  # padded to 35 per rank


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(data_source=10, batch_size=0), "batch_size=0"),
        (dict(data_source=3.5, batch_size=2), "data_source"),
        (dict(data_source=10, batch_size=2, order="best"), "order='best'"),
        (dict(data_source=10, batch_size=2, pivot_epoch=-1), "pivot_epoch=-1"),
        (dict(data_source=10, batch_size=2, drop_last="yes"), "drop_last='yes'"),
        (dict(data_source=10, batch_size=2, num_replicas=2, rank=5), "rank=5"),
        (dict(data_source=10, batch_size=2, jitter=float("nan")), "jitter=nan"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MixedOrderBatchSampler(**kwargs)


def test_bad_scores():
    s = MixedOrderBatchSampler(10, 2)
    with pytest.raises(ValueError, match="9 entries but this sampler was built for 10 samples"):
        s.set_scores(np.zeros(9))
    with pytest.raises(ValueError, match="1 non-finite"):
        s.set_scores(np.r_[np.zeros(9), np.nan])
    with pytest.raises(ValueError, match="epoch=-1"):
        s.set_epoch(-1)


def test_new_scores_mid_epoch_do_not_change_the_replayed_epoch():
    s = MixedOrderBatchSampler(200, 8, seed=1)
    s.set_scores(rank_sum(200, seed=1))
    s.set_epoch(2)
    it = iter(s)
    head = [next(it) for _ in range(5)]
    full = head + list(it)
    s.set_scores(rank_sum(200, seed=2))  # e.g. an assessor that measures as it goes
    state = s.state_dict(batches_done=5)
    resumed = MixedOrderBatchSampler(200, 8, seed=1)
    resumed.load_state_dict(state)
    assert list(resumed) == full[5:]
    resumed.set_epoch(3)  # the next epoch is planned from the newest scores
    assert np.array_equal(resumed.scores, rank_sum(200, seed=2))


def test_plan_is_pure_so_a_resume_replays_the_scores_the_epoch_used():
    # Batches 0-1 of epoch 2 come from scores A. Then new scores arrive and
    # someone calls plan() (to look at the next plan): a resume must still
    # replay the rest of epoch 2 from A.
    a, b = np.arange(40.0), np.arange(40.0)[::-1].copy()
    s = MixedOrderBatchSampler(40, 4, pivot_epoch=1, seed=5)
    s.set_scores(a)
    s.set_epoch(2)
    it = iter(s)
    first = [next(it), next(it)]
    s.set_scores(b)
    peek = s.plan()
    assert peek.tolist() != [x for x in first]  # plan() shows the new scores' plan...
    state = s.state_dict(batches_done=2)
    whole = MixedOrderBatchSampler(40, 4, pivot_epoch=1, seed=5)
    whole.set_scores(a)
    whole.set_epoch(2)
    expected = list(whole)
    resumed = MixedOrderBatchSampler(40, 4, pivot_epoch=1, seed=5)
    resumed.load_state_dict(state)
    assert first + list(resumed) == expected  # ...but the epoch in flight keeps its own


def test_one_pivot_default_in_the_whole_library():
    import inspect

    import mombs
    from mombs.strategies import STRATEGY_REGISTRY
    from mombs.strategies.ohem import HardExampleBatchSampler
    from mombs.train import RunConfig

    takers = [MixedOrderBatchSampler, HardExampleBatchSampler, *set(STRATEGY_REGISTRY.values())]
    defaults = {
        c.__name__: inspect.signature(c).parameters["pivot_epoch"].default
        for c in takers
        if "pivot_epoch" in inspect.signature(c).parameters
    }
    defaults["RunConfig"] = RunConfig().pivot_epoch
    assert len(defaults) >= 4 and set(defaults.values()) == {mombs.DEFAULT_PIVOT_EPOCH}, defaults


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_sampler_in_a_plain_dataloader_with_workers_yields_the_rest(workers):
    # torch's multi-worker iterator calls iter(batch_sampler) twice before drawing: the skip must survive.
    s = MixedOrderBatchSampler(64, 8, seed=1)
    s.set_scores(rank_sum(64))
    full = [b for b in s]
    state = s.state_dict(batches_done=3)
    r = MixedOrderBatchSampler(64, 8, seed=1)
    r.load_state_dict(state)
    got = [b.tolist() for b in DataLoader(torch.arange(64), batch_sampler=r, num_workers=workers)]
    assert got == full[3:] and len(r) == 8


def test_an_ohem_state_from_another_seed_is_refused():
    from mombs.strategies import create_strategy

    state = create_strategy("ohem", pivot_epoch=1).create_sampler(40, 8, seed=0).state_dict()
    other = create_strategy("ohem", pivot_epoch=1).create_sampler(40, 8, seed=5)
    with pytest.raises(ValueError, match="state seed=0 differs from this sampler's seed=5"):
        other.load_state_dict(state)
