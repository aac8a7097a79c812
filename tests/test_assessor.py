import importlib.util
import pathlib

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import mombs
from mombs import (
    DifficultyAssessor,
    IndexedDataset,
    MixedOrderBatchSampler,
    create_schedule,
    difficulty_scores,
    feature_noise_uncertainty,
    spearman,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]


def tiny_problem(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential()
    model.add_module("body", nn.Sequential(nn.Linear(5, 16), nn.ReLU()))
    model.add_module("head", nn.Linear(16, 2))
    return IndexedDataset(TensorDataset(x, y)), model


def run(schedule, epochs=4, pivot=3, **kw):
    ds, model = tiny_problem()
    sampler = MixedOrderBatchSampler(ds, 8, pivot_epoch=pivot)
    assessor = DifficultyAssessor(model, ds, at="body", sampler=sampler, schedule=schedule, head=model.head, **kw)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    log = []
    for epoch in range(epochs):
        assessor.start_epoch(epoch)
        assert sampler.epoch == epoch
        for idx, x, y in DataLoader(ds, batch_sampler=sampler):
            loss = F.cross_entropy(model(x), y, reduction="none")
            assessor.observe(idx, loss)
            opt.zero_grad()
            loss.mean().backward()
            opt.step()
        log.append((assessor.end_epoch(), sampler.uses_scores(epoch + 1)))
    return ds, model, sampler, assessor, log


def test_item_carries_its_index():
    ds = IndexedDataset(TensorDataset(torch.arange(5) * 10, torch.arange(5)))
    assert [tuple(int(v) for v in ds[i]) for i in (0, 3)] == [(0, 0, 0), (3, 30, 3)]
    assert IndexedDataset([7, 8])[1] == (1, 8)
    with pytest.raises(ValueError, match="map-style"):
        IndexedDataset(iter([1]))


def test_paper_schedule_feeds_fresh_full_pass_scores():
    ds, model, sampler, assessor, log = run("paper")
    assert [s is None for s, _ in log] == [True, True, False, False]  # measured from epoch pivot-1
    assert sampler.uses_scores(3)
    x, y = ds.dataset.tensors
    model.eval()
    with torch.no_grad():
        loss = F.cross_entropy(model(x), y, reduction="none")
    unc = feature_noise_uncertainty(model, x, at="body", seed=123)
    # Same measures, other noise draws: the ranking must agree closely.
    assert spearman(sampler.scores, difficulty_scores(loss, unc)) > 0.95
    assert (assessor.tracker.loss_epoch == 3).all() and (assessor.tracker.uncertainty_epoch == 3).all()


def test_rotating_schedule_covers_everything_by_the_pivot():
    ds, model, sampler, assessor, log = run("rotate-4", epochs=5, pivot=4)
    t = assessor.tracker
    assert [s is None for s, _ in log] == [False] * 5  # starts 4 epochs before the pivot
    assert [u for _, u in log] == [False, False, False, True, True]
    assert t.measured().all()
    # each sample's uncertainty was last taken in the epoch of its part
    parts = [create_schedule("rotate-4").part_indices(p, len(ds), 0) for p in range(4)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(ds)))
    assert (t.uncertainty_epoch[parts[0]] == 4).all() and (t.uncertainty_epoch[parts[3]] == 3).all()
    assert (t.loss_epoch == 4).all()  # the training pass's own losses


def test_a_rotating_schedule_with_an_early_pivot_weighs_both_measures_equally():
    # rotate-4 with the pivot at 1: the first plan has the uncertainty of a quarter
    # of the data only. Its ranks must still span 1..N, as the loss's do.
    ds, model, sampler, assessor, log = run("rotate-4", epochs=1, pivot=1)
    t, n = assessor.tracker, len(ds)
    seen = t.measured("uncertainty")
    assert 0 < seen.sum() < n / 2 and t.measured("loss").all() and sampler.uses_scores(1)
    unc, loss = t.scores("uncertainty"), t.scores("loss")
    assert (unc[seen].min(), unc[seen].max()) == (1.0, n) == (loss.min(), loss.max())
    assert (unc[~seen] == (n + 1) / 2).all()
    # the plan follows both: among the measured, the score agrees with each measure alike
    by_unc, by_loss = spearman(sampler.scores[seen], unc[seen]), spearman(sampler.scores[seen], loss[seen])
    assert by_unc > 0.5 and abs(by_unc - by_loss) < 0.3, (by_unc, by_loss)


def test_every_n_schedule_measures_every_n_epochs():
    *_, assessor, _ = run("every-2", epochs=6, pivot=2)
    assert (assessor.tracker.uncertainty_epoch == 5).all()
    *_, assessor, _ = run("every-2", epochs=5, pivot=2)
    assert (assessor.tracker.uncertainty_epoch == 3).all()


def test_train_features_schedule_measures_in_the_training_step():
    _, model, sampler, assessor, log = run("train-features", epochs=3, pivot=2)
    assert (assessor.tracker.uncertainty_epoch == 2).all() and (assessor.tracker.loss_epoch == 2).all()
    assessor.close()
    assert not model.body._forward_hooks


def test_observe_before_the_measuring_window_records_nothing():
    *_, assessor, _ = run("reuse-loss", epochs=1, pivot=5)
    assert not assessor.tracker.measured("loss").any()


def test_state_dict_round_trip():
    ds, model, sampler, assessor, _ = run("paper")
    other = DifficultyAssessor(model, ds, at="body", schedule="paper")
    other.load_state_dict(assessor.state_dict())
    assert np.array_equal(other.scores(), assessor.scores()) and other.epoch == assessor.epoch


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(schedule="weekly"), "schedule='weekly' is not known"),
        (dict(schedule="train-features"), "needs head="),
        (dict(at="nowhere"), "at='nowhere' is not a submodule"),
        (dict(measure="max"), "measure='max'"),
        (dict(k=0), "k=0"),
    ],
)
def test_bad_arguments(kwargs, match):
    ds, model = tiny_problem()
    kwargs.setdefault("at", "body")
    with pytest.raises(ValueError, match=match):
        DifficultyAssessor(model, ds, **kwargs)


def test_plain_loop_example_runs(capsys):
    spec = importlib.util.spec_from_file_location("plain_loop", ROOT / "examples" / "plain_loop.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(["--epochs", "2", "--pivot-epoch", "1", "--schedule", "paper"])
    out = capsys.readouterr().out
    assert "planned=False" in out and "planned=True" in out
    # the planned epoch is balanced: its batches' difficulty sums are nearly equal, random ones' are not
    mixed, rand = result["balance"][1]
    assert list(result["balance"]) == [1] and mixed < 0.05 * rand, result["balance"]
    # the poorly-labeled quadrant catches the planted wrong labels well above their base rate
    for found in result["labels"].values():
        assert found["precision"] > 2 * found["base_rate"] and found["recall"] > 0.2, result["labels"]
    assert 0.5 < result["accuracy"] <= 1.0  # ten digit classes: chance is 0.1


def test_schedule_fields_are_checked():
    with pytest.raises(ValueError, match="do not combine"):
        create_schedule("rotate-2", uncertainty_every=2)
    with pytest.raises(ValueError, match="unknown schedule field"):
        create_schedule("paper", every=3)


class DetectorLike(nn.Module):
    """Returns a dict, as torchvision detection and Hugging Face models do."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(5, 16), nn.ReLU())
        self.objectness = nn.Linear(16, 6)  # 6 "anchors" per sample, one logit each

    def forward(self, x):
        return {"objectness": self.objectness(self.backbone(x)), "features": torch.zeros(1)}


class BoxSet(torch.utils.data.Dataset):
    """Items (x, target) with a dict target: per-anchor labels, as a detection set has."""

    def __init__(self, n=48, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 5, generator=g)
        self.labels = (torch.rand(n, 6, generator=g) < 0.3).float()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], {"anchor_labels": self.labels[i], "image_id": torch.tensor(i)}


def collate_detection(items):
    """Detection's collate: inputs stacked, targets kept as a list of dicts."""
    idx, xs, targets = zip(*items)
    return torch.tensor(idx), torch.stack(xs), list(targets)


def per_image_bce(outputs, targets):
    labels = torch.stack([t["anchor_labels"] for t in targets])
    return F.binary_cross_entropy_with_logits(outputs["objectness"], labels, reduction="none").mean(1)


def test_dict_model_with_list_of_dict_targets_trains_through_the_assessor():
    ds = IndexedDataset(BoxSet())
    model = DetectorLike()
    sampler = MixedOrderBatchSampler(ds, 8, pivot_epoch=1, seed=0)
    assessor = DifficultyAssessor(
        model,
        ds,
        at="backbone",
        sampler=sampler,
        schedule="paper",
        output_fn=lambda out: out["objectness"],
        loss_fn=per_image_bce,
        activation="sigmoid",
        collate_fn=collate_detection,
        batch_size=16,
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate_detection)
    for epoch in range(3):
        assessor.start_epoch(epoch)
        for idx, x, targets in loader:
            loss = per_image_bce(model(x), targets)
            assessor.observe(idx, loss.to(torch.bfloat16))  # autocast-style half-precision losses
            opt.zero_grad()
            loss.mean().backward()
            opt.step()
        assessor.end_epoch()
    assert assessor.tracker.measured().all() and sampler.uses_scores(3)
    # The pass's values are the hand-computed ones: eval-mode per-image loss, and
    # the K = 1, alpha = 0 uncertainty is the mean binary entropy over the anchors.
    (idx, loss), (uidx, unc) = mombs.assessment_pass(
        model,
        ds,
        at="backbone",
        k=1,
        alpha=0.0,
        output_fn=lambda out: out["objectness"],
        loss_fn=per_image_bce,
        activation="sigmoid",
        collate_fn=collate_detection,
    )
    with torch.no_grad():
        targets = [ds.dataset[i][1] for i in range(len(ds))]
        p = torch.sigmoid(model(ds.dataset.x)["objectness"])
        expected_unc = -(p * p.log() + (1 - p) * (1 - p).log()).mean(1)
        expected_loss = per_image_bce(model(ds.dataset.x), targets)
    assert np.allclose(unc, expected_unc.numpy(), atol=1e-5) and np.allclose(loss, expected_loss.numpy(), atol=1e-6)
    assert idx.tolist() == uidx.tolist() == list(range(len(ds)))


def test_targets_move_to_the_device_recursively():
    target = [{"boxes": torch.zeros(2, 4), "labels": torch.tensor([1, 2]), "name": "a"}, (torch.ones(1), 3)]
    moved = mombs.to_device(target, "meta")
    assert moved[0]["boxes"].device.type == "meta" and moved[0]["name"] == "a"
    assert moved[1][0].device.type == "meta" and moved[1][1] == 3 and isinstance(moved[1], tuple)


def test_train_entropy_schedule_measures_the_plain_entropy_of_the_training_forward():
    ds, model = tiny_problem()
    sampler = MixedOrderBatchSampler(ds, 8, pivot_epoch=1)
    assessor = DifficultyAssessor(model, ds, at="body", sampler=sampler, schedule="train-entropy")
    assessor.start_epoch(0)
    model.train()
    idx, x, y = next(iter(DataLoader(ds, batch_size=8)))
    logits = model(x)
    assessor.observe(idx, F.cross_entropy(logits, y, reduction="none"))
    p = torch.softmax(logits.detach(), 1)
    assert np.allclose(assessor.tracker.uncertainty[:8], (-(p * p.log()).sum(1)).numpy(), atol=1e-6)
    with pytest.warns(RuntimeWarning, match="112 of 120 samples got no per-sample"):  # one batch observed
        assert assessor.end_epoch() is not None  # no extra pass: nothing else to measure
    assessor.close()


def test_assessment_pass_checks_its_indices_and_its_data_at_the_door():
    ds, model = tiny_problem(n=20)
    with pytest.raises(ValueError, match=r"loss_indices must lie in \[0, 20\)"):
        mombs.assessment_pass(model, ds, loss_indices=np.arange(1, 21), uncertainty_indices=[], at="body")
    with pytest.raises(ValueError, match="wrap the data set in mombs.IndexedDataset"):
        mombs.assessment_pass(model, ds.dataset, at="body", batch_fn=lambda b: (b[1], b[0], b[1]))
    with pytest.raises(ValueError, match=r"loss_fn must return \(20,\) per-sample losses, got \(\)"):
        mombs.assessment_pass(model, ds, at="body", batch_size=32, loss_fn=lambda o, t: o.sum())


def test_assessment_pass_leaves_the_global_random_state_alone():
    ds, model = tiny_problem(n=20)
    state = torch.get_rng_state()
    mombs.assessment_pass(model, ds, at="body", batch_size=8)
    assert torch.equal(torch.get_rng_state(), state)


def test_a_partial_selection_keeps_every_input_of_a_multi_input_batch():
    from mombs.assessment import _select

    a, b = torch.arange(3), torch.arange(3) * 10
    picked = _select((a, b, {"m": a}, [7, 8, 9]), np.array([True, False, True]))
    assert picked[0].tolist() == [0, 2] and picked[1].tolist() == [0, 20]
    assert picked[2]["m"].tolist() == [0, 2] and picked[3] == [7, 9]


def test_a_given_output_fn_also_feeds_the_default_loss():
    ds = IndexedDataset(TensorDataset(torch.randn(12, 5), torch.randint(0, 2, (12,))))

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(5, 2)

        def forward(self, x):
            out = self.body(x)
            return {"seg": out, "aux": out * 0}  # two tensors: the default cannot choose

    model = Two()
    (_, loss), (_, unc) = mombs.assessment_pass(model, ds, at="body", output_fn=lambda o: o["seg"])
    expected = F.cross_entropy(model(ds.dataset.tensors[0])["seg"], ds.dataset.tensors[1], reduction="none")
    assert np.allclose(loss, expected.detach().numpy(), atol=1e-6) and unc.shape == (12,)


def test_loading_an_assessor_refeeds_a_loss_only_sampler():
    ds, model = tiny_problem()
    sampler = MixedOrderBatchSampler(ds, 8, pivot_epoch=1)
    a = DifficultyAssessor(model, ds, at="body", sampler=sampler, measure="loss")
    a.start_epoch(0)
    a.observe(torch.arange(len(ds)), torch.rand(len(ds)))
    a.end_epoch()
    fresh = MixedOrderBatchSampler(ds, 8, pivot_epoch=1)
    b = DifficultyAssessor(model, ds, at="body", sampler=fresh, measure="loss")
    b.load_state_dict(a.state_dict())
    assert fresh.scores is not None and np.array_equal(fresh.scores, sampler.scores)


# --------------------------------------------------------------------------- #
# the GPU path: whole-batch reads, a caller's loader, no host copy per step


def test_read_batch_gathers_what_a_dataloader_collates():
    ds = IndexedDataset(TensorDataset(torch.randn(10, 3), torch.arange(10)))
    idx = torch.tensor([7, 2, 5])
    got = ds.read_batch(idx)
    want = next(iter(DataLoader(torch.utils.data.Subset(ds, idx.tolist()), batch_size=3)))
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    items = IndexedDataset([(torch.full((2,), float(i)), i) for i in range(6)])  # not tensor-backed
    idx_b, x_b, y_b = items.read_batch([4, 1])
    assert idx_b.tolist() == [4, 1] and x_b[:, 0].tolist() == [4.0, 1.0] and y_b.tolist() == [4, 1]


def test_a_callers_loader_in_any_order_gives_the_values_of_the_default_read():
    ds, model = tiny_problem(n=40)
    default = mombs.assessment_pass(model, ds, at="body", batch_size=16)
    shuffled = DataLoader(ds, batch_size=7, shuffle=True, generator=torch.Generator().manual_seed(1))
    given = mombs.assessment_pass(
        model, ds, at="body", batch_size=16, loader=shuffled, generator=torch.Generator().manual_seed(0)
    )
    assert np.allclose(given[0][1], default[0][1], atol=1e-6)  # losses: no noise, order-free
    assert given[1][1].shape == (40,) and (given[1][1] > 0).all()
    part = mombs.assessment_pass(model, ds, at="body", loss_indices=[3, 30], uncertainty_indices=[], loader=shuffled)
    assert np.allclose(part[0][1], default[0][1][[3, 30]], atol=1e-6)
    short = DataLoader(torch.utils.data.Subset(ds, range(20)), batch_size=8)
    with pytest.raises(ValueError, match="loader= yielded no batch holding 20 of the samples"):
        mombs.assessment_pass(model, ds, at="body", loader=short)


def test_an_assessor_reads_its_assessment_loader():
    ds, model = tiny_problem(n=24)
    seen = []

    class Counting:
        def __iter__(self):
            for batch in DataLoader(ds, batch_size=5):
                seen.append(batch[0].tolist())
                yield batch

    assessor = DifficultyAssessor(model, ds, at="body", schedule="paper", pivot_epoch=1, assessment_loader=Counting())
    assessor.start_epoch(0)
    assert assessor.end_epoch() is not None
    assert sorted(sum(seen, [])) == list(range(24)) and assessor.tracker.measured().all()
    with pytest.raises(ValueError, match="assessment_loader=3 must be an iterable"):
        DifficultyAssessor(model, ds, at="body", assessment_loader=3)


def test_observe_makes_no_host_copy_until_the_epoch_ends():
    # Meta tensors have no data: any copy to the host in observe() would fail.
    ds, model = tiny_problem(n=16)
    assessor = DifficultyAssessor(model, ds, at="body", pivot_epoch=1)
    assessor.start_epoch(0)
    for s in (0, 8):
        assessor.observe(torch.arange(s, s + 8, device="meta"), torch.rand(8, device="meta"))
    assert len(assessor._pending) == 2
    with pytest.raises(NotImplementedError):  # the one copy, at the flush
        _ = assessor.tracker


def test_observed_values_reach_the_tracker_at_the_flush_and_are_checked_there():
    ds, model = tiny_problem(n=16)
    assessor = DifficultyAssessor(model, ds, at="body", pivot_epoch=1)
    assessor.start_epoch(0)
    loss = torch.rand(16)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast-style half-precision losses
        assessor.observe(torch.arange(16), loss.to(torch.bfloat16))
    assert np.allclose(assessor.tracker.loss, loss.to(torch.bfloat16).double().numpy())
    assert (assessor.tracker.loss_epoch == 0).all()
    bad = torch.rand(8)
    bad[3] = float("nan")
    with pytest.raises(
        ValueError,
        match=r"observe\(\) got 1 non-finite per-sample loss value\(s\) \(NaN or inf\) "
        r"in epoch 0, first for samples \[3\]",
    ):
        assessor.observe(torch.arange(8), bad)  # losses on the host are read at once


@pytest.mark.parametrize(
    "indices, loss, match",
    [
        (torch.randn(4, 1, 8, 8), torch.rand(4), "wrap the data set in mombs.IndexedDataset"),
        (torch.arange(4), torch.rand(4, 2), r"got loss of shape \(4, 2\) for 4 indices"),
        (torch.arange(4), [0.1, 0.2, 0.3, 0.4], "needs the per-sample loss as a tensor"),
    ],
)
def test_observe_checks_its_arguments_at_the_door(indices, loss, match):
    ds, model = tiny_problem(n=16)
    assessor = DifficultyAssessor(model, ds, at="body", pivot_epoch=1)
    assessor.start_epoch(0)
    with pytest.raises(ValueError, match=match):
        assessor.observe(indices, loss)
    assert not assessor._pending


def test_forward_fn_calls_a_model_that_takes_keyword_inputs():
    class Keywords(nn.Module):  # a Hugging Face-like forward: model(**batch) -> {"logits": ...}
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(5, 8)
            self.head = nn.Linear(8, 2)

        def forward(self, input_ids=None, mask=None):
            return {"logits": self.head(torch.relu(self.body(input_ids * mask)))}

    x, y = torch.randn(12, 5), torch.randint(0, 2, (12,))
    items = [(i, {"input_ids": x[i], "mask": torch.ones(5)}, y[i]) for i in range(12)]
    model = Keywords()
    call = lambda m, batch: m(**batch)  # noqa: E731
    (_, loss), (_, unc) = mombs.assessment_pass(model, items, at="body", forward_fn=call, batch_size=5)
    expected = F.cross_entropy(model(input_ids=x, mask=torch.ones(12, 5))["logits"], y, reduction="none")
    assert np.allclose(loss, expected.detach().numpy(), atol=1e-6) and unc.shape == (12,) and (unc > 0).all()
    assessor = DifficultyAssessor(model, items, at="body", schedule="paper", pivot_epoch=1, forward_fn=call)
    assessor.start_epoch(0)
    assert assessor.end_epoch().shape == (12,)
    with pytest.raises(ValueError, match="forward_fn=3 must be callable"):
        DifficultyAssessor(model, items, at="body", forward_fn=3)
