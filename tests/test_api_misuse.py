"""Misuse of the library's API (issue 23, items 5 and 6): each is refused, or warned about, with its
cause, and nothing is changed by a refused call. Frameworks that do not drive the sampler are caught.

Tiny models and synthetic tensors only; a torchvision detector is built only by the detection tests.
"""

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import mombs
import mombs.assessor as assessor_module


def _model(classes=3):
    model = nn.Sequential()
    model.add_module("body", nn.Sequential(nn.Linear(2, 8), nn.ReLU()))
    model.add_module("head", nn.Linear(8, classes))
    return model


def _data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return mombs.IndexedDataset(TensorDataset(torch.randn(n, 2, generator=g), torch.randint(0, 3, (n,), generator=g)))


def _setup(n=40, batch=8, pivot=0, **kw):
    data = _data(n)
    sampler = mombs.MixedOrderBatchSampler(data, batch, pivot_epoch=pivot)
    model = _model()
    assessor = mombs.DifficultyAssessor(model, data, at="body", sampler=sampler, pivot_epoch=pivot, **kw)
    return data, sampler, model, assessor


def _epoch(assessor, data, sampler, model, *, observe_first=None):
    """One epoch of a plain loop; observes only the first ``observe_first`` batches when given."""
    for step, (idx, x, y) in enumerate(DataLoader(data, batch_sampler=sampler)):
        loss = F.cross_entropy(model(x), y, reduction="none")
        if observe_first is None or step < observe_first:
            assessor.observe(idx, loss)


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# ---------------------------------------------------------------------- #
# 1. observe() twice for one batch


@pytest.mark.parametrize("pivot", [0, 5])  # an epoch that feeds a plan, and one before the measuring starts
def test_observing_one_batch_twice_is_refused_naming_the_samples(pivot):
    data, sampler, model, assessor = _setup(pivot=pivot)
    assessor.start_epoch(0)
    idx = torch.tensor(next(iter(sampler)))
    loss = torch.rand(8)
    assessor.observe(idx, loss)
    with pytest.raises(ValueError, match=r"already observed in epoch 0: call observe\(\) once per batch") as err:
        assessor.observe(idx, loss)
    assert str(sorted(idx.tolist())[:10]) in str(err.value)
    # refused: the sampler's resume position and the kept values are those of one call
    assert sampler.state_dict()["batches_done"] == 1
    assert len(assessor._pending) == (1 if pivot == 0 else 0)
    fresh = min(set(range(40)) - set(idx.tolist()))
    with pytest.raises(ValueError, match=rf"samples \[{fresh}\] \(1 in all\) that were already observed"):
        assessor.observe([fresh, fresh], torch.rand(2))  # twice within one call


def test_each_batch_observed_once_is_never_refused_over_epochs_and_a_ddp_padding(no_warnings):
    data, sampler, model, assessor = _setup(n=40, pivot=1)
    for epoch in range(3):
        assessor.start_epoch(epoch)
        _epoch(assessor, data, sampler, model)
        assessor.end_epoch()
    # 3 samples on 2 replicas: rank 1's epoch holds one sample twice (DistributedSampler's padding)
    data = _data(3)
    for rank in (0, 1):
        sampler = mombs.MixedOrderBatchSampler(data, 2, order="random", num_replicas=2, rank=rank)
        assessor = mombs.DifficultyAssessor(_model(), data, at="body", sampler=sampler, pivot_epoch=5)
        for epoch in range(3):
            assessor.start_epoch(epoch)
            for batch in sampler:
                assessor.observe(batch, torch.rand(len(batch)))


def test_a_loop_that_drives_the_sampler_itself_starts_each_epoch_afresh(no_warnings):
    data, sampler, model, assessor = _setup(pivot=5)
    assessor.start_epoch(0)
    for epoch in range(3):  # the assessor's start_epoch is never called again
        sampler.set_epoch(epoch)
        for batch in sampler:
            assessor.observe(batch, torch.rand(len(batch)))


def test_device_resident_indices_are_checked_when_they_reach_the_tracker(monkeypatch):
    # Indices on a GPU are not read in observe() (the CPU would wait for the GPU): pretend these are.
    monkeypatch.setattr(assessor_module, "_on_host", lambda t: False)
    data, sampler, model, assessor = _setup(pivot=0)
    assessor.start_epoch(0)
    batch = torch.tensor(next(iter(sampler)))
    assessor.observe(batch, torch.rand(8))
    assessor.observe(batch, torch.rand(8))  # not read yet
    with pytest.raises(ValueError, match=r"already observed in epoch 0: call observe\(\) once per batch"):
        assessor.end_epoch()


# ---------------------------------------------------------------------- #
# 2. an epoch ended with batches never observed


def test_an_epoch_ended_with_unobserved_batches_warns_with_the_counts():
    data, sampler, model, assessor = _setup(n=40, batch=8, pivot=1)  # reuse-loss: losses from training
    assessor.start_epoch(0)
    _epoch(assessor, data, sampler, model, observe_first=2)
    with pytest.warns(
        RuntimeWarning,
        match=r"24 of 40 samples got no per-sample loss from the training steps "
        r"of epoch 0 \(observe\(\) was called 2 times in this process; the "
        r"sampler's epoch has 5 batches",
    ):
        assessor.end_epoch()
    assessor.start_epoch(1)
    _epoch(assessor, data, sampler, model, observe_first=0)  # observe() forgotten altogether
    with pytest.warns(RuntimeWarning, match=r"40 of 40 samples .* called 0 times"):
        assessor.end_epoch()


def test_a_fully_observed_epoch_or_a_schedule_without_training_losses_does_not_warn(no_warnings):
    for kw in ({}, {"schedule": "paper"}):
        data, sampler, model, assessor = _setup(pivot=1, **kw)
        assessor.start_epoch(0)
        _epoch(assessor, data, sampler, model, observe_first=None if not kw else 0)
        assessor.end_epoch()
    data = _data(40)  # drop_last leaves 4 samples out of every epoch
    sampler = mombs.MixedOrderBatchSampler(data, 6, drop_last=True, pivot_epoch=1)
    model = _model()
    assessor = mombs.DifficultyAssessor(model, data, at="body", sampler=sampler)
    assessor.start_epoch(0)
    _epoch(assessor, data, sampler, model)
    assessor.end_epoch()


def test_without_a_mombs_sampler_only_an_epoch_with_nothing_observed_warns():
    data, model = _data(40), _model()
    assessor = mombs.DifficultyAssessor(model, data, at="body", pivot_epoch=1)
    assessor.start_epoch(0)
    assessor.observe(torch.arange(10), torch.rand(10))  # the user's sampler may draw a part of the data
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assessor.end_epoch()
    assessor.start_epoch(1)
    with pytest.warns(RuntimeWarning, match="40 of 40 samples"):
        assessor.end_epoch()


# ---------------------------------------------------------------------- #
# 3. and 5. a sampler and a data set of different sizes


def test_a_sampler_built_for_another_data_set_size_is_refused_naming_both():
    sampler = mombs.MixedOrderBatchSampler(40, 8)
    with pytest.raises(ValueError, match=r"the sampler was built for 40 samples but the data set has 30"):
        mombs.DifficultyAssessor(_model(), _data(30), at="body", sampler=sampler)
    data = _data(30)
    with pytest.raises(
        IndexError,
        match=r"outside the data set of 30 samples: was the sampler built for a "
        r"data set of another size",
    ):
        for _ in DataLoader(data, batch_sampler=sampler):
            pass
    assert data[-1][0] == -1  # negative indices still read as the wrapped data set reads them


# ---------------------------------------------------------------------- #
# 4. and 6. indices from another data set, losses under the wrong samples, non-finite losses


@pytest.mark.parametrize(
    "indices, loss, match",
    [
        (torch.tensor([0, 5, 40, 41]), torch.rand(4), r"indices \[40, 41\] outside the data set's \[0, 40\)"),
        (np.array([-1, 2]), torch.rand(2), r"indices \[-1\] outside the data set's \[0, 40\)"),
        (torch.arange(4), torch.rand(5), r"got loss of shape \(5,\) for 4 indices"),
        (
            torch.tensor([3, 5, 7, 9]),
            torch.tensor([1.0, float("nan"), 2.0, float("inf")]),
            r"2 non-finite per-sample loss value\(s\) \(NaN or inf\) in epoch 0, first for samples \[5, 9\]",
        ),
    ],
)
def test_observe_refuses_values_it_cannot_file_under_their_samples(indices, loss, match):
    data, sampler, model, assessor = _setup(pivot=0)
    assessor.start_epoch(0)
    with pytest.raises(ValueError, match=match):
        assessor.observe(indices, loss)
    assert not assessor._pending and sampler.state_dict()["batches_done"] == 0 and not assessor._seen.any()


def test_non_finite_losses_on_a_device_are_named_when_they_reach_the_tracker(monkeypatch):
    monkeypatch.setattr(assessor_module, "_on_host", lambda t: False)
    data, sampler, model, assessor = _setup(pivot=0)
    assessor.start_epoch(0)
    loss = torch.rand(8)
    loss[[2, 6]] = float("nan")
    assessor.observe(torch.arange(8, 16), loss)
    with pytest.raises(ValueError, match=r"2 non-finite .* first for samples \[10, 14\]"):
        assessor.end_epoch()


# ---------------------------------------------------------------------- #
# 7. low-precision and meta-device networks


class _SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.features(x))


def test_a_bfloat16_network_is_measured_on_float32_data():
    g = torch.Generator().manual_seed(0)
    data = mombs.IndexedDataset(
        TensorDataset(torch.randn(12, 1, 6, 6, generator=g), torch.randint(0, 3, (12,), generator=g))
    )
    model = _SmallCNN().to(torch.bfloat16)
    (_, loss), (_, unc) = mombs.assessment_pass(model, data, at="features", k=4, batch_size=5)
    assert loss.shape == unc.shape == (12,) and np.isfinite(loss).all() and np.isfinite(unc).all()
    assert (unc > 0).all() and next(model.parameters()).dtype == torch.bfloat16
    assessor = mombs.DifficultyAssessor(model, data, at="features", schedule="paper", pivot_epoch=0, k=2)
    assessor.start_epoch(0)
    assert np.isfinite(assessor.end_epoch()).all()


def test_a_float32_network_sees_its_inputs_unchanged():
    data, model = _data(20), _model()
    (_, loss), _ = mombs.assessment_pass(model, data, at="body", uncertainty_indices=[])
    x, y = data.dataset.tensors
    with torch.no_grad():
        expected = F.cross_entropy(model(x), y, reduction="none").double().numpy()
    assert np.array_equal(loss, expected)


def test_a_network_on_the_meta_device_is_refused():
    with torch.device("meta"):
        model = _model()
    with pytest.raises(ValueError, match=r"'body.0.weight' is on the meta device: it has shapes but no values"):
        mombs.assessment_pass(model, _data(10), at="body")
    assessor = mombs.DifficultyAssessor(model, _data(10), at="body", pivot_epoch=0, schedule="paper")
    assessor.start_epoch(0)
    with pytest.raises(ValueError, match=r"is on the meta device"):
        assessor.end_epoch()


# ---------------------------------------------------------------------- #
# 8. messages that point at the cause


def test_labels_of_shape_b1_are_named_as_such():
    data = mombs.IndexedDataset(TensorDataset(torch.randn(10, 2), torch.randint(0, 3, (10, 1))))
    with pytest.raises(
        ValueError,
        match=r"labels must be \(B,\) class indices .* got labels of shape \(10, 1\) "
        r"for logits of shape \(10, 3\); squeeze",
    ) as err:
        mombs.assessment_pass(_model(), data, at="body")
    assert "IndexedDataset" not in str(err.value)
    data, sampler, model, assessor = _setup(pivot=0)
    assessor.start_epoch(0)
    with pytest.raises(ValueError, match=r"indices as one \(B,\) integer tensor, got shape \(4, 1\)") as err:
        assessor.observe(torch.arange(4)[:, None], torch.rand(4))
    assert "IndexedDataset" not in str(err.value)


def test_a_scores_length_mismatch_names_the_samplers_size():
    sampler = mombs.MixedOrderBatchSampler(40, 8)
    with pytest.raises(ValueError, match=r"scores has 80 entries but this sampler was built for 40 samples"):
        sampler.set_scores(np.ones(80))


def test_an_empty_data_set_is_called_empty():
    empty = mombs.IndexedDataset(TensorDataset(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"the data set is empty"):
        mombs.DifficultyAssessor(_model(), empty, at="body")


# ---------------------------------------------------------------------- #
# 9. frameworks that do not drive the sampler


def test_a_second_whole_pass_over_one_epoch_warns_once():
    sampler = mombs.MixedOrderBatchSampler(20, 4)
    first = list(sampler)
    it = iter(sampler)
    next(it)  # a pass that stops early is no whole pass
    with pytest.warns(RuntimeWarning, match=r"second whole pass over epoch 0 without set_epoch\(\).*MoMBSCallback"):
        assert list(sampler) == first
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        list(sampler)  # once per sampler


def test_a_lightning_fit_without_the_callback_is_warned_about():
    L = pytest.importorskip("lightning.pytorch")
    data = _data(16)
    sampler = mombs.MixedOrderBatchSampler(data, 4)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _model()

        def training_step(self, batch, batch_idx):
            _, x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return DataLoader(data, batch_sampler=sampler)

    trainer = L.Trainer(
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    with pytest.warns(RuntimeWarning, match=r"second whole pass over epoch 0 .*MoMBSCallback"):
        trainer.fit(Module())
    assert sampler.epoch == 0  # Lightning never moved it


def test_partial_passes_resumes_len_and_set_epoch_do_not_warn(no_warnings):
    sampler = mombs.MixedOrderBatchSampler(20, 4, pivot_epoch=10)
    it = iter(sampler)
    next(it)
    next(it)
    state = sampler.state_dict()
    list(sampler)  # a pass after a partial one
    sampler.load_state_dict(state)  # a resume of the epoch just passed
    assert len(list(sampler)) == 3 and len(sampler) == 5
    sampler.set_epoch(0)  # a driver that says which epoch it is, the same one again
    list(sampler)
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        list(sampler)
        len(sampler)
    loader = DataLoader(_data(20), batch_sampler=sampler, num_workers=0)
    sampler.set_epoch(3)
    iter(loader)  # a loader's iterator that never draws plans nothing
    list(loader)


def test_the_sampler_passed_as_sampler_is_refused_naming_batch_sampler():
    data = _data(20)
    sampler = mombs.MixedOrderBatchSampler(data, 4)
    with pytest.raises(
        ValueError,
        match=r"list of 4 indices as one item: .*passed to the DataLoader as "
        r"sampler=\. Pass DataLoader\(dataset, batch_sampler=sampler\)",
    ):
        next(iter(DataLoader(data, sampler=sampler)))
    with pytest.raises(ValueError, match="batch_sampler="):
        data[[0, 1]]


@pytest.fixture(scope="module")
def detector():
    pytest.importorskip("torchvision")
    from mombs.recipes.detection.models import DET_FEATURE_MODULE, create_detection_model

    torch.manual_seed(0)
    return create_detection_model("tiny"), DET_FEATURE_MODULE["tiny"]


def _boxes(n=4):
    items = []
    for i in range(n):
        items.append(
            (
                torch.rand(3, 48 + 8 * i, 48),
                {"boxes": torch.tensor([[4.0, 4.0, 20.0, 20.0]]), "labels": torch.ones(1, dtype=torch.int64)},
            )
        )
    return mombs.IndexedDataset(items)


def test_a_detector_without_its_task_adapter_is_refused_at_construction(detector):
    model, at = detector
    with pytest.raises(
        ValueError,
        match=r"torchvision detector \(FasterRCNN\) but task='classification': pass "
        r"task='detection'",
    ):
        mombs.DifficultyAssessor(model, _boxes(), at=at)
    mombs.DifficultyAssessor(model, _boxes(), at=at, task="detection")  # the adapter: accepted


@pytest.mark.parametrize("schedule", ["train-entropy", "train-features"])
def test_schedules_that_read_a_detectors_training_forward_are_refused(detector, schedule):
    model, at = detector
    with pytest.raises(
        ValueError,
        match=rf"schedule='{schedule}' reads the training forward's output, which a "
        r"torchvision detector returns as a loss dict",
    ):
        mombs.DifficultyAssessor(model, _boxes(), at=at, task="detection", schedule=schedule, head=nn.Identity())
