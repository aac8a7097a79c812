"""Two real gloo processes on the CPU."""

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import rank_sum
from mombs import MixedOrderBatchSampler

pytestmark = pytest.mark.distributed

N, BATCH, EPOCHS = 203, 6, 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out_dir, drop_last):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        # num_replicas and rank come from the process group.
        sampler = MixedOrderBatchSampler(N, BATCH, pivot_epoch=1, seed=4, drop_last=drop_last)
        sampler.set_scores(rank_sum(N))
        epochs = []
        for epoch in range(EPOCHS):
            sampler.set_epoch(epoch)
            epochs.append(list(sampler))
        # The replicas must take the same number of steps, or DDP would hang.
        steps = torch.tensor([len(epochs[-1])])
        gathered = [torch.zeros_like(steps) for _ in range(world)]
        dist.all_gather(gathered, steps)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
            json.dump(
                {
                    "epochs": epochs,
                    "steps": [int(g) for g in gathered],
                    "world": sampler.num_replicas,
                    "rank": sampler.rank,
                },
                fh,
            )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("drop_last", [False, True])
def test_two_gloo_processes_cover_the_epoch_with_balanced_batches(tmp_path, drop_last):
    world = 2
    mp.spawn(_worker, args=(world, _free_port(), str(tmp_path), drop_last), nprocs=world, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    assert [r["rank"] for r in results] == [0, 1] and all(r["world"] == 2 for r in results)
    assert results[0]["steps"] == results[1]["steps"]
    scores = rank_sum(N)
    for epoch in range(EPOCHS):
        per_rank = [r["epochs"][epoch] for r in results]
        flat = [i for batches in per_rank for b in batches for i in b]
        counts = np.bincount(flat, minlength=N)
        if drop_last:
            assert counts.max() == 1 and all(len(b) == BATCH for bs in per_rank for b in bs)
            assert len(flat) == (N // (world * BATCH)) * world * BATCH
        else:
            assert counts.min() == 1 and len(flat) == 204  # padded by one, as DistributedSampler
        full = [b for bs in per_rank for b in bs if len(b) == BATCH]
        sums = np.array([scores[b].sum() for b in full])
        spread = sums.std() / (np.sqrt(BATCH) * scores.std())
        if epoch == 0:
            assert spread > 0.3  # before the pivot: random batches
        else:
            assert spread < 0.05  # every rank's batches are balanced
    # Same plan as a single process that is told its rank.
    for r, res in enumerate(results):
        s = MixedOrderBatchSampler(N, BATCH, pivot_epoch=1, seed=4, drop_last=drop_last, num_replicas=world, rank=r)
        s.set_scores(scores)
        s.set_epoch(2)
        assert list(s) == res["epochs"][2]


def _tracker_worker(rank, world, port, out_dir):
    from mombs import DifficultyTracker

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        t = DifficultyTracker(10)
        t.set_epoch(4 + rank)
        mine = np.arange(rank, 10, world)  # rank 0: even, rank 1: odd indices
        t.update_loss(mine, mine * 1.5)
        t.update_uncertainty(mine, -mine.astype(float))
        t.update_loss([0], [10.0 + rank])  # written by both ranks, as with padding
        t.sync()
        t.sync()  # nothing new: must not change anything
        with open(os.path.join(out_dir, f"tracker{rank}.json"), "w") as fh:
            json.dump(
                {
                    "loss": t.loss.tolist(),
                    "unc": t.uncertainty.tolist(),
                    "loss_epoch": t.loss_epoch.tolist(),
                    "scores": t.scores().tolist(),
                },
                fh,
            )
    finally:
        dist.destroy_process_group()


def test_tracker_sync_gathers_all_values_on_every_rank(tmp_path):
    mp.spawn(_tracker_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"tracker{r}.json").read_text()) for r in range(2))
    assert r0 == r1
    expected = np.arange(10) * 1.5
    expected[0] = 10.5  # the mean of the two ranks' values
    assert np.allclose(r0["loss"], expected)
    assert r0["unc"] == (-np.arange(10.0)).tolist()
    assert r0["loss_epoch"] == [5] + [5, 4] * 4 + [5]  # odd indices: rank 1, at epoch 5


def test_ddp_example_runs_with_two_gloo_processes():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(_free_port()),
            str(root / "examples" / "ddp_loop.py"),
            "--epochs",
            "2",
            "--pivot-epoch",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, "\n".join(line for line in proc.stderr.splitlines() if not line.startswith("W"))[
        -3000:
    ]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("epoch")]
    assert len(lines) == 2 and "world 2" in lines[0] and "planned=True" in lines[-1]
