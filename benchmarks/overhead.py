"""Overhead and ranking fidelity of MoMBS' assessment schedules.

Trains the same model on the same data with the same batch size and epochs
with random minibatches, and with MoMBS (``K`` disturbed passes, one or more
assessment schedules), and reports the wall-clock ratio. The MoMBS run also
measures *ranking fidelity*: at the start of every planned epoch, the Spearman
correlation between the scores the sampler plans that epoch with and a fresh
full-pass assessment (eval mode, ``K = 8``) of the same model. That measurement
is not timed.

Both arms read batches by indexing in-memory tensors, so per-sample data
loading does not dilute the ratio. The two arms run in one process and
alternate epoch by epoch, so that drift in the machine's speed (large on a
shared 2-core machine) hits both alike; the ratio is of their summed times.

    python benchmarks/overhead.py --device cpu                      # default schedule
    python benchmarks/overhead.py --device cpu --schedules all      # every schedule
    python benchmarks/overhead.py --device cuda --model resnet32 --batch-size 16

Each record also splits both arms' time into phases (``phase_seconds``):
drawing the batch order, ``observe``, the assessment pass and the rest.

The last line printed is one JSON object for the default (or first) schedule.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import mombs
from mombs.envinfo import environment_info
from mombs.recipes.classification.fashion_mnist import find_fashion_mnist, load_fashion_mnist
from mombs.recipes.classification.label_noise import symmetric_noise
from mombs.recipes.classification.models import FEATURE_MODULE, create_model


def load_data(args):
    """``(x, clean, noisy, name)``: the first ``--n`` images of a seeded shuffle."""
    if args.dataset == "fashion-mnist" and find_fashion_mnist(args.data_dir) is not None:
        images, labels = load_fashion_mnist("train", args.data_dir)
        x = torch.from_numpy(images).float().div_(255).sub_(0.2860).div_(0.3530).unsqueeze(1)
        name = "fashion-mnist"
    else:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float32).div_(16).unsqueeze(1)
        x = F.interpolate(x, size=28, mode="bilinear", align_corners=False)
        labels, name = d.target.astype(np.int64), "digits"
    if args.model == "resnet32":  # CIFAR-sized input
        x = F.pad(x, (2, 2, 2, 2)).repeat(1, 3, 1, 1)
    perm = np.random.default_rng(args.seed).permutation(len(labels))[: args.n]
    clean = labels[perm]
    noisy, _ = symmetric_noise(clean, args.noise, 10, seed=args.seed)
    return x[perm], torch.from_numpy(clean), torch.from_numpy(noisy), name


def full_pass(model, x, y, at, k, generator, chunk=512):
    """Eval-mode loss and ``k``-pass feature-noise uncertainty of every sample.

    The library's one measuring pass (:func:`mombs.assessment_pass`) over the
    tensors, ``chunk`` samples a batch.

    Returns:
        ``(loss, uncertainty)``, two float tensors of shape ``(N,)`` on the CPU, higher = harder.
        The model's train/eval mode is restored.
    """
    data = mombs.IndexedDataset(TensorDataset(x, y))
    (_, loss), (_, unc) = mombs.assessment_pass(
        model, data, at=at, k=k, batch_size=chunk, device=x.device, generator=generator
    )
    return torch.from_numpy(loss), torch.from_numpy(unc)


def fresh_scores(model, x, y, at, measure):
    """The fidelity reference: a full assessment with K = 8 whatever the schedule's K, and its own noise."""
    gen = torch.Generator(device=x.device).manual_seed(987654)
    loss, unc = full_pass(model, x, y, at, 8, gen)
    return mombs.difficulty_scores(loss, unc, measure=measure)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Arm:
    """One training run, stepped an epoch at a time so that two arms can alternate.

    ``schedule=None`` is the random baseline: plain shuffled batches, no mombs.
    """

    def __init__(self, args, x, y, device, schedule=None):
        torch.manual_seed(args.seed)  # the same initial weights in both arms (a script may seed)
        self.args, self.x, self.y, self.device, self.schedule = args, x, y, device, schedule
        self.model = create_model(args.model, num_classes=10, in_channels=x.shape[1]).to(device)
        # The study runner's recipe (mombs.train): SGD with Nesterov momentum, cosine decay.
        self.opt = torch.optim.SGD(self.model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=args.epochs)
        self.at = FEATURE_MODULE[args.model]
        self.gen = torch.Generator().manual_seed(args.seed)
        self.seconds, self.fidelity = 0.0, []
        # Where the time goes. "plan": drawing the epoch's batch order (the
        # sampler plans at its first batch); "observe": host time in observe();
        # "assess": end_epoch (the assessment pass), GPU-synchronised; "train":
        # the rest (forward, backward, step, batch reads).
        self.phases = {"plan": 0.0, "observe": 0.0, "assess": 0.0, "train": 0.0}
        if schedule is not None:
            data = mombs.IndexedDataset(TensorDataset(x, y))
            self.sampler = mombs.MixedOrderBatchSampler(
                len(y), args.batch_size, pivot_epoch=args.pivot_epoch, seed=args.seed
            )
            self.assessor = mombs.DifficultyAssessor(
                self.model,
                data,
                at=self.at,
                sampler=self.sampler,
                schedule=schedule,
                k=args.k,
                head=self.model.fc,
                batch_size=64 if device.type == "cpu" else 512,
                device=device,
            )

    def epoch(self, epoch: int) -> None:
        model, x, y, args = self.model, self.x, self.y, self.args
        if self.schedule is not None and epoch >= args.pivot_epoch:
            # Not timed: the reference assessment that fidelity is measured against.
            fresh = fresh_scores(model, x, y, self.at, "both")
            self.fidelity.append(mombs.spearman(self.sampler.scores, fresh))
        _sync(self.device)
        t0 = time.perf_counter()
        if self.schedule is None:
            batches = iter(torch.randperm(len(y), generator=self.gen).split(args.batch_size))
        else:
            self.assessor.start_epoch(epoch)
            batches = iter(self.sampler)
        first = next(batches)  # a sampler plans the epoch when its first batch is drawn
        t_plan = time.perf_counter()
        model.train()
        t_obs = 0.0
        for idx in itertools.chain([first], batches):
            idx = torch.as_tensor(idx)
            xb, yb = x[idx.to(x.device)], y[idx.to(y.device)]
            loss = F.cross_entropy(model(xb), yb, reduction="none")
            if self.schedule is not None:
                t = time.perf_counter()
                self.assessor.observe(idx, loss)
                t_obs += time.perf_counter() - t
            self.opt.zero_grad(set_to_none=True)
            loss.mean().backward()
            self.opt.step()
        self.sched.step()
        t_assess = 0.0
        if self.schedule is not None:
            # One synchronisation per epoch, in this arm only: it lets the pass be timed alone.
            _sync(self.device)
            t = time.perf_counter()
            self.assessor.end_epoch()
            _sync(self.device)
            t_assess = time.perf_counter() - t
        _sync(self.device)
        total = time.perf_counter() - t0
        self.seconds += total
        plan = t_plan - t0
        self.phases["plan"] += plan
        self.phases["observe"] += t_obs
        self.phases["assess"] += t_assess
        self.phases["train"] += total - plan - t_obs - t_assess


def compare(args, x, y, device, schedule):
    """Random and MoMBS arms, alternating epoch by epoch (and which goes first),
    so that drift in machine speed hits both alike."""
    base, arm = Arm(args, x, y, device), Arm(args, x, y, device, schedule)
    for epoch in range(args.epochs):
        for a in (base, arm) if epoch % 2 == 0 else (arm, base):
            a.epoch(epoch)
    arm.assessor.close()
    return base, arm


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default=None, help="small_cnn (default on cpu) or resnet32 (default on cuda)")
    p.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "digits"])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--n", type=int, default=6000, help="training images")
    p.add_argument("--noise", type=float, default=0.4, help="symmetric label noise rate")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--pivot-epoch", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--schedules", nargs="+", default=[mombs.DEFAULT_SCHEDULE], help="schedule names, or 'all'")
    p.add_argument("--repeats", type=int, default=1, help="timing repeats of the pair of arms")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write all records and the environment to this JSON file")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.model is None:
        args.model = "resnet32" if device.type == "cuda" else "small_cnn"
    schedules = sorted(mombs.SCHEDULES) if args.schedules == ["all"] else args.schedules

    x, clean, noisy, dataset = load_data(args)
    x, noisy = x.to(device), noisy.to(device)
    env = environment_info(str(device))
    records = []
    for name in schedules:
        t_rand, t_mombs, fid = 0.0, 0.0, []
        phases = {"random": dict.fromkeys(("plan", "observe", "assess", "train"), 0.0)}
        phases["mombs"] = dict(phases["random"])
        for _ in range(args.repeats):
            base, arm = compare(args, x, noisy, device, name)
            t_rand, t_mombs, fid = t_rand + base.seconds, t_mombs + arm.seconds, arm.fidelity
            for key, a in (("random", base), ("mombs", arm)):
                for phase, sec in a.phases.items():
                    phases[key][phase] += sec / args.repeats
        rec = {
            "schedule": name,
            "seconds_random": round(t_rand / args.repeats, 3),
            "seconds_mombs": round(t_mombs / args.repeats, 3),
            "overhead_ratio": round(t_mombs / t_rand, 4),
            "rank_spearman": round(float(np.mean(fid)), 4),
            "rank_spearman_per_epoch": [round(f, 4) for f in fid],
            "phase_seconds": {arm: {k: round(v, 3) for k, v in ph.items()} for arm, ph in phases.items()},
            "device": env.get("gpu", str(device)),
            "k": args.k,
            "model": args.model,
            "dataset": dataset,
            "n": len(noisy),
            "noise": args.noise,
            "epochs": args.epochs,
            "pivot_epoch": args.pivot_epoch,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
        }
        records.append(rec)
        print(json.dumps(rec), flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(
                {
                    "benchmark": "overhead",
                    "args": vars(args),
                    "environment": env,
                    "default_schedule": mombs.DEFAULT_SCHEDULE,
                    "records": records,
                },
                fh,
                indent=1,
            )
    last = next((r for r in records if r["schedule"] == mombs.DEFAULT_SCHEDULE), records[0])
    print(
        json.dumps(
            {
                k: last[k]
                for k in (
                    "seconds_random",
                    "seconds_mombs",
                    "overhead_ratio",
                    "rank_spearman",
                    "device",
                    "schedule",
                    "k",
                )
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
