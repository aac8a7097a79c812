"""Why no cheap assessment schedule reaches ranking fidelity 0.9 on the CPU.

Two measurements, each answering one half of issue 3's target (overhead <= 1.10
with fidelity >= 0.9):

``--part fidelity``
    One MoMBS training run per seed (the overhead benchmark's recipe, the
    default schedule feeding the sampler). At the start of every planned epoch
    a fresh full assessment (eval mode, ``K = 8``) is the reference, and every
    cheaper *estimate* of the scores is compared with it by Spearman
    correlation, all from the same run:

    - ``reuse-loss``: training-pass loss + fresh uncertainty (the default);
    - ``stale-1``: training-pass loss + the uncertainty of one epoch before;
    - ``rotate-3`` / ``rotate-4``: a third / quarter of the uncertainties
      refreshed per epoch, the rest stale;
    - ``rotate-3+train`` / ``rotate-4+train``: the stale rotation averaged in
      rank with the training forward's own uncertainty;
    - ``rotate-4-moved``: the quarter refreshed is the one whose training-loss
      rank moved most since its last refresh;
    - ``train-features``: the training forward's own features, disturbed.

    It also reports how stable each measure is from one epoch to the next
    (``unc_epoch_to_epoch``, ``loss_epoch_to_epoch``) and how close the
    training forward's uncertainty is to the eval-mode one with the model frozen
    (``unc_trainmode_frozen``, which isolates BatchNorm's batch statistics from
    the drift of the weights during an epoch).

``--part cost``
    The price of one full eval-mode uncertainty pass as a fraction of one
    training epoch, timed interleaved in one process (ratios, not absolute
    times). A schedule that refreshes every uncertainty every epoch costs at
    least ``1 + pass_over_epoch``.

    python benchmarks/fidelity_limits.py --part fidelity --seeds 0 1 2 --out benchmarks/results/fidelity_limits_cpu.json
    python benchmarks/fidelity_limits.py --part cost --out benchmarks/results/pass_cost_cpu.json

The last line printed is one JSON summary.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import mombs
from mombs.envinfo import environment_info
from mombs.noise import _disturb, find_module
from mombs.recipes.classification.models import FEATURE_MODULE, create_model
from overhead import full_pass, load_data

ESTIMATES = (
    "reuse-loss",
    "stale-1",
    "rotate-3",
    "rotate-4",
    "rotate-3+train",
    "rotate-4+train",
    "rotate-4-moved",
    "train-features",
)


def _rank01(v: np.ndarray) -> np.ndarray:
    return mombs.rank_average(v) / len(v)


def _parts(n: int, k: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, k]).integers(0, k, size=n)


def fidelity_run(args, x, y, seed: int) -> dict:
    """One training run; per planned epoch, the Spearman of each estimate with the reference."""
    n, at = len(y), FEATURE_MODULE[args.model]
    torch.manual_seed(seed)
    model = create_model(args.model, num_classes=10, in_channels=x.shape[1])
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    sampler = mombs.MixedOrderBatchSampler(n, args.batch_size, pivot_epoch=args.pivot_epoch, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    captured = {}
    hook = find_module(model, at).register_forward_hook(
        lambda m, i, o: captured.__setitem__("f", o.detach()) if m.training else None
    )

    def head_uncertainty(features):
        with torch.no_grad():
            logits = model.fc(_disturb(features, args.k, 0.3, gen))
            mean = logits.softmax(-1).reshape(args.k, -1, logits.shape[-1]).mean(0)
        return mombs.prediction_entropy(mean)

    def eval_pass():
        """Loss and uncertainty of every sample under the current weights (the overhead reference's pass)."""
        loss, unc = full_pass(model, x, y, at, args.k, gen)
        return loss.numpy(), unc.numpy()

    def trainmode_uncertainty():
        """Uncertainty with BatchNorm on the batch statistics of random training-size batches, weights frozen."""
        unc = torch.empty(n)
        bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        saved = [m.momentum for m in bns]
        for m in bns:
            m.momentum = 0.0  # running statistics left alone
        model.train()
        with torch.no_grad():
            for idx in torch.randperm(n, generator=gen).split(args.batch_size):
                model(x[idx])
                unc[idx] = head_uncertainty(captured["f"])
        for m, mom in zip(bns, saved):
            m.momentum = mom
        return unc.numpy()

    parts = {3: _parts(n, 3, seed), 4: _parts(n, 4, seed)}
    rotated = {3: np.zeros(n), 4: np.zeros(n)}
    moved_unc, moved_at, have = np.zeros(n), np.zeros(n), np.zeros(n, dtype=bool)
    prev_unc = prev_loss = None
    rows = []
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        train_loss, train_unc = np.zeros(n), np.zeros(n)
        model.train()
        for idx in sampler:
            idx = torch.as_tensor(idx)
            loss = F.cross_entropy(model(x[idx]), y[idx], reduction="none")
            train_loss[idx] = loss.detach().numpy()
            train_unc[idx] = head_uncertainty(captured["f"]).numpy()
            opt.zero_grad(set_to_none=True)
            loss.mean().backward()
            opt.step()
        sched.step()
        # The weights now are those the next epoch starts with: the reference.
        ev_loss, ev_unc = eval_pass()
        for k in (3, 4):
            m = parts[k] == epoch % k
            rotated[k][m] = ev_unc[m]
        if epoch < 3:
            fresh = parts[4] == epoch % 4
        else:
            moved = np.abs(_rank01(train_loss) - moved_at)
            moved[~have] = np.inf
            fresh = np.zeros(n, dtype=bool)
            fresh[np.argsort(-moved, kind="stable")[: n // 4]] = True
        moved_unc[fresh], moved_at[fresh], have = ev_unc[fresh], _rank01(train_loss)[fresh], have | fresh
        planned = epoch + 1
        if planned >= args.pivot_epoch and planned < args.epochs:
            ref = mombs.difficulty_scores(ev_loss, ev_unc)
            est = {
                "reuse-loss": ev_unc,
                "stale-1": prev_unc,
                "rotate-3": rotated[3],
                "rotate-4": rotated[4],
                "rotate-3+train": _rank01(rotated[3]) + _rank01(train_unc),
                "rotate-4+train": _rank01(rotated[4]) + _rank01(train_unc),
                "rotate-4-moved": moved_unc,
                "train-features": train_unc,
            }
            row = {"epoch": planned}
            row.update({name: mombs.spearman(mombs.difficulty_scores(train_loss, u), ref) for name, u in est.items()})
            row["unc_epoch_to_epoch"] = mombs.spearman(prev_unc, ev_unc)
            row["loss_epoch_to_epoch"] = mombs.spearman(prev_loss, ev_loss)
            row["unc_train_vs_eval"] = mombs.spearman(train_unc, ev_unc)
            row["unc_trainmode_frozen"] = mombs.spearman(trainmode_uncertainty(), ev_unc)
            rows.append({k: v if k == "epoch" else round(float(v), 4) for k, v in row.items()})
            print(json.dumps({"seed": seed, **rows[-1]}), flush=True)
        prev_unc, prev_loss = ev_unc, ev_loss
        if planned >= args.pivot_epoch:
            sampler.set_scores(mombs.difficulty_scores(train_loss, ev_unc))
    hook.remove()
    return {
        "seed": seed,
        "per_epoch": rows,
        "mean": {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0] if k != "epoch"},
    }


def pass_cost(args, x, y) -> dict:
    """Seconds of a training epoch (per batch size) and of one full uncertainty pass,
    interleaved over repeats; ratios of the summed times."""
    at = FEATURE_MODULE[args.model]
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=10, in_channels=x.shape[1])
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    n = len(y)

    def train_epoch(b):
        model.train()
        for idx in torch.randperm(n, generator=gen).split(b):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    data = mombs.IndexedDataset(TensorDataset(x, y))

    def uncertainty_pass(b):
        # The library's one measuring pass, uncertainties only, as the assessor runs it.
        mombs.assessment_pass(model, data, loss_indices=[], at=at, k=args.k, batch_size=b, generator=gen)

    jobs = {f"train_b{b}": (train_epoch, b) for b in args.train_batch_sizes}
    jobs.update({f"pass_b{b}": (uncertainty_pass, b) for b in args.pass_batch_sizes})
    seconds = dict.fromkeys(jobs, 0.0)
    for r in range(args.repeats):
        for name in list(jobs) if r % 2 == 0 else list(jobs)[::-1]:
            fn, b = jobs[name]
            t0 = time.perf_counter()
            fn(b)
            seconds[name] += time.perf_counter() - t0
    best_pass = min((k for k in seconds if k.startswith("pass")), key=seconds.get)
    ratios = {
        f"{p}_over_{t}": round(seconds[p] / seconds[t], 4)
        for t in seconds
        if t.startswith("train")
        for p in seconds
        if p.startswith("pass")
    }
    floor = {t: round(1 + seconds[best_pass] / seconds[t], 4) for t in seconds if t.startswith("train")}
    return {
        "seconds": {k: round(v / args.repeats, 3) for k, v in seconds.items()},
        "ratios": ratios,
        "best_pass": best_pass,
        "full_refresh_overhead_floor": floor,
        "refreshable_fraction_at_1.10": {
            t: round(0.10 * seconds[t] / seconds[best_pass], 3) for t in seconds if t.startswith("train")
        },
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["fidelity", "cost"], required=True)
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "digits"])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--n", type=int, default=6000)
    p.add_argument("--noise", type=float, default=0.4)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--pivot-epoch", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--train-batch-sizes", type=int, nargs="+", default=[16, 32])
    p.add_argument("--pass-batch-sizes", type=int, nargs="+", default=[64, 256])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.seed = 0  # load_data's subset and noise draw
    x, _, y, dataset = load_data(args)
    env = environment_info("cpu")
    if args.part == "fidelity":
        runs = [fidelity_run(args, x, y, s) for s in args.seeds]
        keys = runs[0]["mean"].keys()
        summary = {
            k: {
                "mean": round(float(np.mean([r["mean"][k] for r in runs])), 4),
                "per_seed": [r["mean"][k] for r in runs],
            }
            for k in keys
        }
        result = {"benchmark": "fidelity_limits", "runs": runs, "summary": summary}
        last = {k: v["mean"] for k, v in summary.items()}
    else:
        result = {"benchmark": "pass_cost", **pass_cost(args, x, y)}
        last = {"ratios": result["ratios"], "full_refresh_overhead_floor": result["full_refresh_overhead_floor"]}
    result.update({"args": vars(args), "dataset": dataset, "environment": env})
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)
    print(json.dumps({"part": args.part, "device": "cpu", **last}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
