"""Stop mid-epoch after the pivot, resume with torchdata's StatefulDataLoader, get the same batches.

``StatefulDataLoader`` saves the state of a batch sampler that has
``state_dict``/``load_state_dict``, as :class:`mombs.MixedOrderBatchSampler`
does, at the batch the loop has consumed (with workers too: it records the
sampler's state as each batch is requested, not as far as the workers
prefetched). With the model, the optimizer and the assessor saved beside it, a
resumed run replays exactly the batches the uninterrupted run trains on, planned
epochs included. This script shows it and checks it:

    python examples/stateful_resume.py --num-workers 2

It trains an uninterrupted run, then a run that stops after ``--stop-batch``
batches of epoch ``--stop-epoch``, saves a checkpoint, and finishes in fresh
objects restored from it. The mombs lines are marked with ``# mombs``.
"""

import argparse
import io

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset
from torchdata.stateful_dataloader import StatefulDataLoader

import mombs


def make_data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, :2].sum(1) > 0).long()
    flip = torch.rand(n, generator=g) < 0.2  # some noisy labels, so difficulty varies
    return TensorDataset(x, torch.where(flip, 1 - y, y))


def build(args):
    """Everything a run trains with; the same seed gives the same objects."""
    g = torch.Generator().manual_seed(args.seed)
    model = nn.Sequential()
    model.add_module("body", nn.Sequential(nn.Linear(8, 32), nn.ReLU()))
    model.add_module("head", nn.Linear(32, 2))
    with torch.no_grad():  # initialised from a private generator: the global RNG stays untouched
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    train = mombs.IndexedDataset(make_data(args.n, args.seed))  # mombs
    sampler = mombs.MixedOrderBatchSampler(
        train, args.batch_size, pivot_epoch=args.pivot_epoch, seed=args.seed
    )  # mombs
    assessor = mombs.DifficultyAssessor(model, train, at="body", sampler=sampler)  # mombs
    loader = StatefulDataLoader(train, batch_sampler=sampler, num_workers=args.num_workers)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, sampler, assessor, loader, opt


def train(args, objects, epochs, *, stop=None, first_epoch=0):
    """Trains ``epochs``; with ``stop=(epoch, batch)`` returns a checkpoint taken after that batch.

    Returns:
        ``(batches, checkpoint)``: the ``(epoch, indices)`` of every batch trained,
        and the checkpoint bytes (``None`` without ``stop``).
    """
    model, sampler, assessor, loader, opt = objects
    seen = []
    for epoch in range(first_epoch, epochs):
        assessor.start_epoch(epoch)  # mombs: also sets the sampler's epoch
        for step, (idx, x, y) in enumerate(loader):
            loss = F.cross_entropy(model(x), y, reduction="none")
            assessor.observe(idx, loss)  # mombs
            opt.zero_grad()
            loss.mean().backward()
            opt.step()
            seen.append((epoch, idx.tolist()))
            if stop == (epoch, step + 1):
                buf = io.BytesIO()
                torch.save(
                    {
                        "epoch": epoch,
                        "model": model.state_dict(),
                        "opt": opt.state_dict(),
                        "loader": loader.state_dict(),  # holds the sampler's state
                        "assessor": assessor.state_dict(),
                    },
                    buf,
                )  # mombs: the tracker, mid-epoch
                return seen, buf.getvalue()
        assessor.end_epoch()  # mombs: measure, plan the next epoch
    return seen, None


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--pivot-epoch", type=int, default=1)
    p.add_argument("--stop-epoch", type=int, default=2, help="stop in this epoch (after the pivot)")
    p.add_argument("--stop-batch", type=int, default=5, help="... after this many of its batches")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--skip-loader-state", action="store_true", help="resume without the loader's state (to see what goes wrong)"
    )
    args = p.parse_args(argv)
    if not args.pivot_epoch <= args.stop_epoch < args.epochs:
        p.error(f"--stop-epoch={args.stop_epoch} must lie in [--pivot-epoch, --epochs)")

    uninterrupted = build(args)
    whole, _ = train(args, uninterrupted, args.epochs)

    first, ckpt = train(args, build(args), args.epochs, stop=(args.stop_epoch, args.stop_batch))
    state = torch.load(io.BytesIO(ckpt))
    model, sampler, assessor, loader, opt = objects = build(args)  # a fresh process, in effect
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    assessor.load_state_dict(state["assessor"])  # mombs
    if not args.skip_loader_state:
        loader.load_state_dict(state["loader"])  # restores the sampler on the next iter()
    rest, _ = train(args, objects, args.epochs, first_epoch=state["epoch"])
    resumed = first + rest

    planned = sorted({e for e, _ in whole if e >= args.pivot_epoch})
    report = {
        "num_workers": args.num_workers,
        "batches": len(whole),
        "same_batches": resumed == whole,
        "planned_epochs": planned,
        "same_scores": bool(np.allclose(assessor.scores(), uninterrupted[2].scores())),
        "stopped_at": [args.stop_epoch, args.stop_batch],
    }
    print(report)
    if not report["same_batches"]:
        diverged = next(i for i, (a, b) in enumerate(zip(resumed, whole)) if a != b)
        print(f"the resumed run diverged at batch {diverged}: {resumed[diverged]} vs {whole[diverged]}")
    return report


if __name__ == "__main__":
    main()
