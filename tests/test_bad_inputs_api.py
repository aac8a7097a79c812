"""Bad input to the library's API: a clear ValueError at the door, naming the argument and
its value, and nothing changed. (The CLI and the runner: tests/test_bad_inputs_cli.py.)"""

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

import mombs
from mombs.strategies import create_strategy


def _model():
    model = nn.Sequential()
    model.add_module("body", nn.Linear(2, 4))
    model.add_module("head", nn.Linear(4, 2))
    return model


def _data(n=10):
    return mombs.IndexedDataset(TensorDataset(torch.randn(n, 2), torch.zeros(n, dtype=torch.long)))


def _noise(**kw):
    args = dict(at="body")
    args.update(kw)
    return mombs.feature_noise_uncertainty(_model(), torch.randn(3, 2), **args)


CASES = {
    "plan: batch size 0": (lambda: mombs.plan_batches(np.ones(10), 0), r"batch_size=0 must be an integer >= 1"),
    "plan: unknown order": (lambda: mombs.plan_batches(np.ones(10), 2, order="mix"), r"order='mix' is not known"),
    "plan: NaN score": (lambda: mombs.plan_batches(np.array([1.0, np.nan]), 1), r"1 non-finite value"),
    "plan: 2-D scores": (lambda: mombs.plan_batches(np.ones((3, 3)), 1), r"shape \(N,\), got shape \(3, 3\)"),
    "plan: negative seed": (lambda: mombs.plan_batches(np.ones(10), 2, seed=-1), r"seed=-1 must be"),
    "plan: negative jitter": (lambda: mombs.plan_batches(np.ones(10), 2, jitter=-1.0), r"jitter=-1.0 must be"),
    "plan: rank past world": (
        lambda: mombs.plan_batches(np.ones(10), 2, num_replicas=2, rank=2),
        r"rank=2 must be < num_replicas=2",
    ),
    "sampler: fractional batch": (lambda: mombs.MixedOrderBatchSampler(10, 2.5), r"batch_size=2.5"),
    "sampler: a string as data": (lambda: mombs.MixedOrderBatchSampler("abc", 2), r"data_source='abc' must be"),
    "sampler: negative pivot": (lambda: mombs.MixedOrderBatchSampler(10, 2, pivot_epoch=-1), r"pivot_epoch=-1"),
    "sampler: drop_last not bool": (
        lambda: mombs.MixedOrderBatchSampler(10, 2, drop_last="yes"),
        r"drop_last='yes' must be a bool",
    ),
    "sampler: negative epoch": (lambda: mombs.MixedOrderBatchSampler(10, 2).set_epoch(-3), r"epoch=-3"),
    "sampler: more batches done than exist": (
        lambda: mombs.MixedOrderBatchSampler(10, 2).state_dict(batches_done=99),
        r"batches_done=99 exceeds the 5 batches",
    ),
    "scores: unknown measure": (
        lambda: mombs.difficulty_scores(np.ones(3), np.ones(3), measure="x"),
        r"measure='x' is not known",
    ),
    "scores: lengths differ": (lambda: mombs.difficulty_scores(np.ones(3), np.ones(4)), r"has 4 entries but 3"),
    "quadrants: quantile 1.5": (
        lambda: mombs.quadrants(np.ones(3), np.ones(3), loss_quantile=1.5),
        r"loss_quantile=1.5 must be a number in \(0, 1\)",
    ),
    "tracker: no samples": (lambda: mombs.DifficultyTracker(0), r"num_samples=0"),
    "schedule: unknown": (lambda: mombs.create_schedule("weekly"), r"schedule='weekly' is not known"),
    "schedule: unknown field": (
        lambda: mombs.create_schedule("paper", nope=1),
        r"unknown schedule field\(s\) \['nope'\]",
    ),
    "schedule: zero fraction": (
        lambda: mombs.AssessmentSchedule("x", uncertainty_fraction=0),
        r"uncertainty_fraction=0 must be in \(0, 1\]",
    ),
    "task: unknown": (lambda: mombs.create_task("captioning"), r"task='captioning' is not known"),
    "strategy: misspelt": (lambda: create_strategy("mixd"), r"strategy='mixd' is not known"),
    "noise: k = 0": (lambda: _noise(k=0), r"k=0 must be an integer >= 1"),
    "noise: alpha = 1": (lambda: _noise(alpha=1.0), r"alpha=1.0 must be a number in \[0, 1\)"),
    "noise: unknown layer": (lambda: _noise(at="nowhere"), r"at='nowhere' is not a submodule"),
    "noise: chunk of 0 rows": (lambda: _noise(chunk_rows=0), r"chunk_rows=0 must be"),
    "noise: tiled='yes'": (lambda: _noise(tiled="yes"), r"tiled='yes' must be True, False or None"),
    "noise: activation relu": (lambda: _noise(activation="relu"), r"activation='relu' must be"),
    "noise: negative seed": (lambda: _noise(seed=-2), r"seed=-2 must be an integer >= 0"),
    "data: an iterator": (lambda: mombs.IndexedDataset(iter([1])), r"must be map-style"),
    "ranks: NaN": (lambda: mombs.rank_average([1, float("nan")]), r"1 non-finite value"),
    "assessor: batch size 0": (
        lambda: mombs.DifficultyAssessor(_model(), _data(), at="body", batch_size=0),
        r"batch_size=0 must be an integer >= 1",
    ),
    "assessor: head that is not callable": (
        lambda: mombs.DifficultyAssessor(_model(), _data(), at="body", head=3),
        r"head=3 must be callable",
    ),
    "assessor: loader that is not iterable": (
        lambda: mombs.DifficultyAssessor(_model(), _data(), at="body", assessment_loader=3),
        r"assessment_loader=3 must be an iterable",
    ),
    "pass: indices out of range": (
        lambda: mombs.assessment_pass(_model(), _data(), at="body", loss_indices=[10]),
        r"loss_indices must lie in \[0, 10\)",
    ),
    "pass: no layer for the uncertainty": (lambda: mombs.assessment_pass(_model(), _data()), r"at=None"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_bad_argument_is_refused_at_the_door(name):
    call, match = CASES[name]
    with pytest.raises(ValueError, match=match):
        call()


def test_refused_scores_leave_the_sampler_as_it_was():
    s = mombs.MixedOrderBatchSampler(10, 2)
    s.set_scores(np.arange(10.0))
    for bad in (np.ones(9), np.full(10, np.nan), np.ones((10, 1))):
        with pytest.raises(ValueError):
            s.set_scores(bad)
    assert np.array_equal(s.scores, np.arange(10.0))


def test_a_refused_update_writes_nothing_into_the_tracker():
    t = mombs.DifficultyTracker(5)
    for idx, values in (([0, 7], [1.0, 2.0]), ([0, 1], [1.0, np.inf]), ([[0, 1]], [1.0, 2.0])):
        with pytest.raises(ValueError):
            t.update_loss(idx, values)
    assert not t.measured("loss").any() and not t.loss.any()


def test_a_refused_observation_is_not_kept():
    assessor = mombs.DifficultyAssessor(_model(), _data(), at="body", pivot_epoch=0)
    assessor.start_epoch(0)
    with pytest.raises(ValueError, match="wrap the data set in mombs.IndexedDataset"):
        assessor.observe(torch.randn(4, 2), torch.rand(4))  # forgot IndexedDataset: inputs came as indices
    assert not assessor._pending and not assessor.tracker.measured("loss").any()


def test_numpy_scalars_are_taken_where_python_numbers_are():
    i, f = np.int64, np.float32
    model, data = _model(), _data()
    s = mombs.MixedOrderBatchSampler(i(10), i(2), pivot_epoch=i(0), seed=i(1))
    a = mombs.DifficultyAssessor(
        model,
        data,
        at="body",
        sampler=s,
        k=i(4),
        alpha=f(0.2),
        batch_size=i(4),
        pivot_epoch=i(0),
        seed=i(1),
        chunk_rows=i(8),
    )
    a.start_epoch(i(0))
    a.observe(torch.arange(10), torch.rand(10))
    assert a.end_epoch().shape == (10,) and isinstance(a.k, int)
    assert mombs.feature_noise_uncertainty(model, torch.randn(3, 2), at="body", k=i(2), seed=i(3)).shape == (3,)
    assert mombs.quadrants(np.arange(4.0), np.arange(4.0), loss_quantile=f(0.5)).codes.shape == (4,)
    assert mombs.AssessmentSchedule("x", uncertainty_every=i(2)).uncertainty_every == 2


def test_a_refused_observation_does_not_move_the_samplers_position():
    data = _data(12)
    sampler = mombs.MixedOrderBatchSampler(data, 4, pivot_epoch=0)
    assessor = mombs.DifficultyAssessor(_model(), data, at="body", sampler=sampler, pivot_epoch=0)
    assessor.start_epoch(0)
    it = iter(sampler)
    idx = torch.tensor(next(it))
    assessor.observe(idx, torch.rand(4))
    with pytest.raises(ValueError, match=r"got loss of shape \(3,\) for 4 indices"):
        assessor.observe(idx, torch.rand(3))
    assert sampler.state_dict()["batches_done"] == 1 and len(assessor._pending) == 1


# ---------------------------------------------------------------------- #
# Misuse of the training-loop API (issue 23): one line naming the cause (the argument, the
# samples, the counts), and nothing changed: the sampler's position, the tracker, the kept
# observations. (Each case's wider test: tests/test_api_misuse.py.)


def _loop(n=40, batch=8, pivot=0, sampler_size=None, **kw):
    g = torch.Generator().manual_seed(0)
    data = mombs.IndexedDataset(TensorDataset(torch.randn(n, 2, generator=g), torch.randint(0, 2, (n,), generator=g)))
    sampler = mombs.MixedOrderBatchSampler(sampler_size or n, batch, pivot_epoch=pivot)
    assessor = None
    if sampler_size is None:
        assessor = mombs.DifficultyAssessor(_model(), data, at="body", sampler=sampler, pivot_epoch=pivot, **kw)
        assessor.start_epoch(0)
    return data, sampler, assessor


def _state(sampler, assessor) -> str:
    """What a refused call must leave as it was, as one comparable text."""
    parts = [repr(sampler.state_dict()) if sampler is not None else ""]
    if assessor is not None:
        t = assessor.tracker
        parts += [
            repr(t.loss.tolist()),
            repr(t.measured("loss").tolist()),
            repr(len(assessor._pending)),
            repr(assessor._seen.tolist()),
        ]
    return "|".join(parts)


def _observed_once():
    data, sampler, assessor = _loop()
    batch = torch.tensor(next(iter(sampler)))
    assessor.observe(batch, torch.rand(8))
    return (lambda: assessor.observe(batch, torch.rand(8))), sampler, assessor


def _observe(indices, loss):
    data, sampler, assessor = _loop()
    return (lambda: assessor.observe(indices, loss)), sampler, assessor


def _sizes_differ_at_construction():
    data, sampler, _ = _loop(n=30, sampler_size=40)  # the validation set given where the training set goes
    return (lambda: mombs.DifficultyAssessor(_model(), data, at="body", sampler=sampler)), sampler, None


def _sizes_differ_in_the_loader():
    data, sampler, _ = _loop(n=30, sampler_size=40)
    return (lambda: list(torch.utils.data.DataLoader(data, batch_sampler=sampler))), None, None


def _sampler_as_sampler():
    data, sampler, _ = _loop(n=20, batch=4, sampler_size=20)
    return (lambda: next(iter(torch.utils.data.DataLoader(data, sampler=sampler)))), None, None


def _detector(**kw):
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

    pytest.importorskip("torchvision")
    model = GeneralizedRCNN(nn.Identity(), nn.Identity(), nn.Identity(), nn.Identity())  # parts never run
    boxes = [
        (
            torch.rand(3, 24, 24),
            {"boxes": torch.tensor([[2.0, 2.0, 9.0, 9.0]]), "labels": torch.ones(1, dtype=torch.int64)},
        )
        for _ in range(4)
    ]
    return (lambda: mombs.DifficultyAssessor(model, mombs.IndexedDataset(boxes), at="backbone", **kw)), None, None


def _meta_model():
    with torch.device("meta"):
        model = _model()
    data, sampler, assessor = _loop(pivot=0, schedule="paper")
    return (lambda: mombs.assessment_pass(model, data, at="body")), sampler, assessor


def _empty_data_set():
    empty = mombs.IndexedDataset(TensorDataset(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)))
    return (lambda: mombs.DifficultyAssessor(_model(), empty, at="body")), None, None


def _epoch_half_observed():
    data, sampler, assessor = _loop(pivot=1)  # reuse-loss: the losses come from the training steps
    for step, batch in enumerate(sampler):
        if step < 2:
            assessor.observe(torch.tensor(batch), torch.rand(len(batch)))
    return assessor.end_epoch, None, None  # it ends the epoch: what it changes is its job


def _second_pass_without_set_epoch():
    data, sampler, _ = _loop(n=20, batch=4, sampler_size=20)
    first = list(sampler)

    def again():
        assert list(sampler) == first  # the same batches, and said so

    return again, sampler, None


MISUSE = {
    # name: (setup -> (call, sampler, assessor), what is raised or warned, the message)
    "observe(): one batch twice": (
        _observed_once,
        ValueError,
        r"already observed in epoch 0: call observe\(\) once per batch",
    ),
    "observe(): indices from another data set": (
        lambda: _observe(torch.tensor([0, 5, 40, 41]), torch.rand(4)),
        ValueError,
        r"indices \[40, 41\] outside the data set's \[0, 40\)",
    ),
    "observe(): losses for other samples": (
        lambda: _observe(torch.arange(4), torch.rand(5)),
        ValueError,
        r"got loss of shape \(5,\) for 4 indices",
    ),
    "observe(): non-finite losses": (
        lambda: _observe(torch.tensor([3, 5, 7, 9]), torch.tensor([1.0, float("nan"), 2.0, float("inf")])),
        ValueError,
        r"2 non-finite per-sample loss value\(s\) \(NaN or inf\) in "
        r"epoch 0, first for samples \[5, 9\]",
    ),
    "assessor: a sampler built for another size": (
        _sizes_differ_at_construction,
        ValueError,
        r"the sampler was built for 40 samples but the data set has 30",
    ),
    "loader: a sampler built for another size": (
        _sizes_differ_in_the_loader,
        IndexError,
        r"outside the data set of 30 samples: was the sampler built for "
        r"a data set of another size",
    ),
    "loader: the sampler passed as sampler=": (
        _sampler_as_sampler,
        ValueError,
        r"Pass DataLoader\(dataset, batch_sampler=sampler\)",
    ),
    "assessor: a detector without task='detection'": (
        _detector,
        ValueError,
        r"torchvision detector \(GeneralizedRCNN\) but "
        r"task='classification': pass task='detection'",
    ),
    "assessor: a schedule that cannot serve a detector": (
        lambda: _detector(task="detection", schedule="train-entropy", head=nn.Identity()),
        ValueError,
        r"schedule='train-entropy' reads the training forward's output, which a torchvision detector returns",
    ),
    "pass: a model on the meta device": (
        _meta_model,
        ValueError,
        r"'body.weight' is on the meta device: it has shapes but no values",
    ),
    "assessor: an empty data set": (_empty_data_set, ValueError, r"the data set is empty"),
    "end_epoch(): batches never observed": (
        _epoch_half_observed,
        RuntimeWarning,
        r"24 of 40 samples got no per-sample loss from the training steps of "
        r"epoch 0 \(observe\(\) was called 2 times",
    ),
    "sampler: a second pass without set_epoch": (
        _second_pass_without_set_epoch,
        RuntimeWarning,
        r"second whole pass over epoch 0 without set_epoch\(\).*"
        r"MoMBSCallback",
    ),
}


@pytest.mark.parametrize("name", list(MISUSE))
def test_api_misuse_is_one_line_naming_the_cause_and_changes_nothing(name):
    setup, kind, match = MISUSE[name]
    call, sampler, assessor = setup()
    before = _state(sampler, assessor)
    if issubclass(kind, Warning):
        with pytest.warns(kind, match=match) as record:
            call()
        text = str(next(w.message for w in record if issubclass(w.category, kind)))
    else:
        with pytest.raises(kind, match=match) as err:
            call()
        text = str(err.value)
    assert "\n" not in text.strip() and "Traceback" not in text, text
    assert _state(sampler, assessor) == before


def test_a_low_precision_network_is_measured_on_float32_data():
    model = _model().to(torch.bfloat16)
    (_, loss), (_, unc) = mombs.assessment_pass(model, _data(12), at="body", k=2, batch_size=5)
    assert loss.shape == unc.shape == (12,) and np.isfinite(loss).all() and np.isfinite(unc).all()
    assert next(model.parameters()).dtype == torch.bfloat16
