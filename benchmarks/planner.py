"""Planner benchmark: speed, balance and pair variety of each strategy.

Prints one JSON line per case. ``balance_ratio`` is the std of the per-batch
score sums under the strategy divided by the same under ``random``;
``pair_repeat_rate`` is the share of sample pairs sharing a batch in epoch 0
that share one again in epoch 1, scores held fixed. ``argsort_seconds`` is one
``np.argsort`` of the same float32 scores, timed in the same process.

    python benchmarks/planner.py                  # the full study (~3 minutes)
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


def rank_sum_scores(n: int, seed: int = 0) -> np.ndarray:
    """Scores shaped like MoMBS' difficulty: the sum of the ascending ranks of two
    positively correlated measures (a loss and an uncertainty), as float32."""
    rng = np.random.default_rng(seed)
    loss = rng.standard_normal(n)
    unc = 0.5 * loss + rng.standard_normal(n)
    ranks = np.empty(n, dtype=np.float64)
    ranks[np.argsort(loss)] = np.arange(n)
    total = ranks.copy()
    ranks[np.argsort(unc)] = np.arange(n)
    total += ranks
    return total.astype(np.float32)


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


def _timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def run_case(scores, batch_size, strategy, random_std, repeats=1, argsort_seconds=None):
    n = len(scores)
    if argsort_seconds is None:
        argsort_seconds, _ = _timed(lambda: np.argsort(scores), repeats)
    seconds, plan = _timed(lambda: plan_batches(scores, batch_size, order=strategy,
                                                seed=0, epoch=0, drop_last=True), repeats)
    nxt = plan_batches(scores, batch_size, order=strategy, seed=0, epoch=1, drop_last=True)
    flat = plan.full.reshape(-1)
    return {
        "n": n, "batch_size": batch_size, "strategy": strategy,
        "seconds": round(seconds, 4), "argsort_seconds": round(argsort_seconds, 4),
        "seconds_over_argsort": round(seconds / argsort_seconds, 3),
        "balance_ratio": batch_sum_std(scores, plan) / random_std if random_std else None,
        "pair_repeat_rate": pair_repeat_rate(plan, nxt, n),
        "each_index_at_most_once": bool(np.unique(flat).size == flat.size),
        "all_batches_full": bool(plan.tail.size == 0 and plan.full.shape[1] == batch_size),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 3, 4, 16, 64, 256])
    parser.add_argument("--large-n", type=int, default=10_000_000,
                        help="N for the speed case at batch size 64 (0 to skip)")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (median)")
    parser.add_argument("--demo", action="store_true", help="small, fast run with a table")
    parser.add_argument("--out", help="also write all records and the environment to this JSON file")
    args = parser.parse_args(argv)
    if args.demo:
        args.n, args.batch_sizes, args.large_n, args.repeats = 100_000, [2, 3, 16, 64], 0, 1

    records = []
    scores = rank_sum_scores(args.n)
    for b in args.batch_sizes:
        random_std = batch_sum_std(scores, plan_batches(scores, b, order="random", drop_last=True))
        for strategy in ("random", "mixed", "anti"):
            rec = run_case(scores, b, strategy, random_std, repeats=1)
            records.append(rec)
            print(json.dumps(rec), flush=True)
    if args.large_n:
        big = rank_sum_scores(args.large_n, seed=1)
        random_std = batch_sum_std(big, plan_batches(big, 64, order="random", drop_last=True))
        # Interleave the two timings so that machine noise hits both alike.
        sort_t, plan_t = [], []
        for _ in range(args.repeats):
            sort_t.append(_timed(lambda: np.argsort(big), 1)[0])
            plan_t.append(_timed(lambda: plan_batches(big, 64, drop_last=True), 1)[0])
        rec = run_case(big, 64, "mixed", random_std, repeats=1,
                       argsort_seconds=statistics.median(sort_t))
        rec["seconds"] = round(statistics.median(plan_t), 4)
        rec["seconds_over_argsort"] = round(rec["seconds"] / rec["argsort_seconds"], 3)
        rec["timing_repeats"] = args.repeats
        records.append(rec)
        print(json.dumps(rec), flush=True)

    env = environment_info()
    print(json.dumps({"environment": env}), flush=True)
    if args.demo:
        print(f"\n{'N':>9} {'B':>4} {'strategy':>8} {'seconds':>8} {'balance':>9} {'pair rep.':>9}",
              file=sys.stderr)
        for r in records:
            print(f"{r['n']:>9} {r['batch_size']:>4} {r['strategy']:>8} {r['seconds']:>8.3f} "
                  f"{r['balance_ratio']:>9.4f} {r['pair_repeat_rate']:>9.4f}", file=sys.stderr)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"benchmark": "planner", "args": vars(args), "environment": env,
                       "records": records}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
