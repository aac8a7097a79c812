"""Planner benchmark: speed, balance and pair variety of each strategy, and the
mixed planner at every batch size.

Prints one JSON line per case. ``balance_ratio`` is the std of the per-batch
score sums under the strategy divided by the same under ``random``;
``pair_repeat_rate`` is the share of sample pairs sharing a batch in epoch 0
that share one again in epoch 1, scores held fixed.

Times are ratios to one ``np.argsort`` of the same scores in the same process,
taken in turns (argsort, plan, plan, argsort, ...) so that machine noise hits
both alike; ``seconds_over_argsort`` is the median of the per-turn ratios.

- ``records``: random, mixed and anti at a few batch sizes on float32 scores
  (the docs table; argsort of float32 is about a fifth faster than of float64)
  and mixed at N = 10M.
- ``sweep``: mixed at every batch size of ``--sweep`` (default all of 2..256)
  on float64 scores: time ratio, balance (epoch 0, and the median of epochs
  0-2, which varies less) and pair repeats. ``summary`` has the worst ratio.
- ``invariance``: the balance of mixed at a few batch sizes for the scores,
  the scores + 1e9 and the scores * 1e-9.

    python benchmarks/planner.py                  # everything (~6 minutes)
    python benchmarks/planner.py --demo           # a small table (seconds)
    python benchmarks/planner.py --out benchmarks/results/planner.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

from mombs.envinfo import environment_info
from mombs.planner import plan_batches


def rank_sum_scores(n: int, seed: int = 0, dtype=np.float32) -> np.ndarray:
    """Scores shaped like MoMBS' difficulty: the sum of the ascending ranks of two
    positively correlated measures (a loss and an uncertainty)."""
    rng = np.random.default_rng(seed)
    loss = rng.standard_normal(n)
    unc = 0.5 * loss + rng.standard_normal(n)
    ranks = np.empty(n, dtype=np.float64)
    ranks[np.argsort(loss)] = np.arange(n)
    total = ranks.copy()
    ranks[np.argsort(unc)] = np.arange(n)
    total += ranks
    return total.astype(dtype)


def batch_sum_std(scores: np.ndarray, plan) -> float:
    return float(scores[plan.full].astype(np.float64).sum(axis=1).std())


def pair_repeat_rate(plan_a, plan_b, n: int) -> float:
    """Share of co-batched pairs of ``plan_a`` that are co-batched in ``plan_b``."""
    m, b = plan_a.full.shape
    if b < 2 or m == 0:
        return 0.0
    batch_of = np.full(n, -1, dtype=np.int64)
    batch_of[plan_b.full.reshape(-1)] = np.repeat(np.arange(len(plan_b.full)), plan_b.full.shape[1])
    other = batch_of[plan_a.full]  # (m, b): batch in plan_b of each member
    other = np.where(other < 0, -1 - np.arange(m * b).reshape(m, b), other)  # unique if dropped
    key = np.sort(other, axis=1)
    same = key[:, 1:] == key[:, :-1]
    # Runs of equal ids inside each sorted row: a run of length g adds g(g-1)/2 pairs.
    ids = np.cumsum(~np.concatenate([np.ones((m, 1), bool), same], axis=1), axis=1)
    _, counts = np.unique(ids + (np.arange(m)[:, None] * (b + 1)), return_counts=True)
    return float((counts * (counts - 1) // 2).sum() / (m * b * (b - 1) // 2))


def timed_against_argsort(fn, scores: np.ndarray, repeats: int) -> dict:
    """Time ``fn`` and ``np.argsort(scores)`` in alternating turns, after one
    untimed call of each."""
    fn()
    np.argsort(scores)
    plan_t, sort_t = [], []
    for i in range(repeats):
        turns = [(fn, plan_t), (lambda: np.argsort(scores), sort_t)]
        if i % 2:  # alternate which goes first: neither always follows the other
            turns.reverse()
        for call, times in turns:
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
    ratios = [p / s for p, s in zip(plan_t, sort_t)]
    return {
        "seconds": round(statistics.median(plan_t), 5),
        "argsort_seconds": round(statistics.median(sort_t), 5),
        "seconds_over_argsort": round(statistics.median(ratios), 3),
        "seconds_over_argsort_max": round(max(ratios), 3),
        "min_over_min": round(min(plan_t) / min(sort_t), 3),
        "timing_repeats": repeats,
    }


def run_case(scores, batch_size, strategy, random_std, repeats):
    n = len(scores)
    timing = timed_against_argsort(
        lambda: plan_batches(scores, batch_size, order=strategy, seed=0, epoch=0, drop_last=True), scores, repeats
    )
    plan = plan_batches(scores, batch_size, order=strategy, seed=0, epoch=0, drop_last=True)
    nxt = plan_batches(scores, batch_size, order=strategy, seed=0, epoch=1, drop_last=True)
    flat = plan.full.reshape(-1)
    return {
        "n": n,
        "batch_size": batch_size,
        "strategy": strategy,
        "dtype": str(scores.dtype),
        **timing,
        "balance_ratio": batch_sum_std(scores, plan) / random_std if random_std else None,
        "pair_repeat_rate": pair_repeat_rate(plan, nxt, n),
        "each_index_at_most_once": bool(np.unique(flat).size == flat.size),
        "all_batches_full": bool(plan.tail.size == 0 and plan.full.shape[1] == batch_size),
    }


def random_batch_std(scores, batch_size) -> float:
    return batch_sum_std(scores, plan_batches(scores, batch_size, order="random", drop_last=True))


def sweep_case(scores, batch_size, repeats) -> dict:
    """Mixed at one batch size: time ratio, balance and pair variety. The
    balance of one plan varies from epoch to epoch by a factor of up to ~3 at
    large batch sizes, so the median over epochs 0-2 is given too."""
    random_std = random_batch_std(scores, batch_size)
    rec = run_case(scores, batch_size, "mixed", random_std, repeats)
    out = {
        k: rec[k]
        for k in (
            "batch_size",
            "seconds",
            "argsort_seconds",
            "seconds_over_argsort",
            "seconds_over_argsort_max",
            "min_over_min",
            "balance_ratio",
            "pair_repeat_rate",
        )
    }
    draws = [rec["balance_ratio"]] + [
        batch_sum_std(scores, plan_batches(scores, batch_size, seed=0, epoch=e, drop_last=True)) / random_std
        for e in (1, 2)
    ]
    out["balance_ratio_median3"] = statistics.median(draws)
    return out


def invariance_case(scores, batch_size) -> dict:
    """Balance of mixed for the scores, an offset and a scale of them (each over
    random on the same transformed scores)."""
    out = {"batch_size": batch_size}
    for name, transformed in (("original", scores), ("offset_1e9", scores + 1e9), ("scale_1e-9", scores * 1e-9)):
        plan = plan_batches(transformed, batch_size, drop_last=True)
        out[name] = batch_sum_std(transformed, plan) / random_batch_std(transformed, batch_size)
    return out


def _sizes(text: str) -> list[int]:
    """``2-16,24,32`` -> [2, ..., 16, 24, 32]."""
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=[2, 3, 4, 16, 64, 256],
        help="batch sizes of the strategy comparison (records)",
    )
    parser.add_argument(
        "--large-n", type=int, default=10_000_000, help="N for the speed case at batch size 64 (0 to skip)"
    )
    parser.add_argument(
        "--sweep", default="2-256", help="batch sizes of the mixed sweep, e.g. '2-16,32,64' ('' to skip)"
    )
    parser.add_argument(
        "--invariance",
        type=int,
        nargs="*",
        default=[2, 3, 4, 5, 7, 16, 64, 256],
        help="batch sizes of the offset/scale check",
    )
    parser.add_argument("--repeats", type=int, default=7, help="timing turns per case (median)")
    parser.add_argument("--demo", action="store_true", help="small, fast run with a table")
    parser.add_argument("--out", help="also write all records and the environment to this JSON file")
    args = parser.parse_args(argv)
    if args.demo:
        args.n, args.batch_sizes, args.large_n, args.repeats = 100_000, [2, 3, 16, 64], 0, 3
        args.sweep, args.invariance = "2-8,16,64", [3, 16]

    records = []
    scores = rank_sum_scores(args.n)
    for b in args.batch_sizes:
        random_std = random_batch_std(scores, b)
        for strategy in ("random", "mixed", "anti"):
            rec = run_case(scores, b, strategy, random_std, args.repeats)
            records.append(rec)
            print(json.dumps(rec), flush=True)
    if args.large_n:
        big = rank_sum_scores(args.large_n, seed=1)
        rec = run_case(big, 64, "mixed", random_batch_std(big, 64), max(3, args.repeats // 2))
        records.append(rec)
        print(json.dumps(rec), flush=True)
        del big

    scores64 = rank_sum_scores(args.n, dtype=np.float64)
    sweep = []
    for b in _sizes(args.sweep) if args.sweep else []:
        rec = sweep_case(scores64, b, args.repeats)
        sweep.append(rec)
        print(json.dumps({"sweep": rec}), flush=True)
    invariance = []
    for b in args.invariance:
        rec = invariance_case(scores64, b)
        invariance.append(rec)
        print(json.dumps({"invariance": rec}), flush=True)
    summary = {}
    if sweep:
        worst = max(sweep, key=lambda r: r["seconds_over_argsort"])
        summary = {
            "sweep_batch_sizes": len(sweep),
            "max_seconds_over_argsort": worst["seconds_over_argsort"],
            "max_at_batch_size": worst["batch_size"],
            "median_seconds_over_argsort": statistics.median(r["seconds_over_argsort"] for r in sweep),
            "max_balance_ratio_median3": max(r["balance_ratio_median3"] for r in sweep),
        }
        print(json.dumps({"summary": summary}), flush=True)

    env = environment_info()
    print(json.dumps({"environment": env}), flush=True)
    if args.demo:
        print(f"\n{'N':>9} {'B':>4} {'strategy':>8} {'x argsort':>9} {'balance':>9} {'pair rep.':>9}", file=sys.stderr)
        for r in records:
            print(
                f"{r['n']:>9} {r['batch_size']:>4} {r['strategy']:>8} {r['seconds_over_argsort']:>9.2f} "
                f"{r['balance_ratio']:>9.2e} {r['pair_repeat_rate']:>9.4f}",
                file=sys.stderr,
            )
        for r in sweep:
            print(
                f"{args.n:>9} {r['batch_size']:>4} {'mixed64':>8} {r['seconds_over_argsort']:>9.2f} "
                f"{r['balance_ratio']:>9.2e} {r['pair_repeat_rate']:>9.4f}",
                file=sys.stderr,
            )
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(
                {
                    "benchmark": "planner",
                    "args": vars(args),
                    "environment": env,
                    "summary": summary,
                    "records": records,
                    "sweep": sweep,
                    "invariance": invariance,
                },
                fh,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
