"""The library never touches the global random state (numpy's, Python's, torch's)."""

import random

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import mombs


def _states():
    return np.random.get_state(), random.getstate(), torch.random.get_rng_state()


def _same(a, b) -> bool:
    (np_a, py_a, torch_a), (np_b, py_b, torch_b) = a, b
    return (
        np_a[0] == np_b[0]
        and np.array_equal(np_a[1], np_b[1])
        and np_a[2:] == np_b[2:]
        and py_a == py_b
        and torch.equal(torch_a, torch_b)
    )


@pytest.mark.parametrize(
    "schedule, order",
    [("paper", "mixed"), ("rotate-2", "mixed"), ("train-features", "anti"), ("train-entropy", "random")],
)
def test_a_training_loop_with_the_assessor_and_the_sampler_leaves_the_global_rng_alone(schedule, order):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 5, generator=g), torch.randint(0, 3, (48,), generator=g)
    train = mombs.IndexedDataset(TensorDataset(x, y))
    model = nn.Sequential()
    model.add_module("body", nn.Sequential(nn.Linear(5, 16), nn.ReLU()))
    model.add_module("head", nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    np.random.seed(11), random.seed(12), torch.manual_seed(13)  # the test's own, global state
    before = _states()

    sampler = mombs.MixedOrderBatchSampler(train, 8, order=order, pivot_epoch=1, seed=4)
    assessor = mombs.DifficultyAssessor(
        model, train, at="body", sampler=sampler, schedule=schedule, head=model.head, k=3, batch_size=16
    )
    # The loader's own generator: without one, a DataLoader draws its base seed from torch's global RNG.
    loader = DataLoader(train, batch_sampler=sampler, generator=torch.Generator())
    for epoch in range(3):
        assessor.start_epoch(epoch)
        for idx, xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb, reduction="none")
            assessor.observe(idx, loss)
            opt.zero_grad()
            loss.mean().backward()
            opt.step()
        assessor.end_epoch()
    state = assessor.state_dict(), sampler.state_dict()
    assessor.load_state_dict(state[0])
    sampler.load_state_dict(state[1])
    assessor.quadrants()
    assessor.close()

    assert sampler.uses_scores(2) == (order != "random") and assessor.tracker.measured().all()
    assert _same(_states(), before)
