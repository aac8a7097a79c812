"""The committed Fashion-MNIST-NL batch-size-32 cell against its rerun through the one path.

    python benchmarks/onepath_compare.py --out benchmarks/results/onepath_compare.json

Pairs every rerun file (``benchmarks/results/onepath_rerun``, made by
``mombs compare --config configs/study/fmnist_nl_onepath.yaml``) with the
committed file of the same run key (``benchmarks/results/classification``):
the same config, seed and strategy. Reports, per seed, the test top-1 of both,
the paired difference rerun - committed for each strategy, and the study's
effect (mixed - random, paired by seed) in each set, all with 95% t-intervals.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mombs.compare import paired_difference  # noqa: E402
from mombs.envinfo import environment_info  # noqa: E402


def _by_key(folder: Path) -> dict:
    runs = {}
    for path in sorted(folder.glob("*.json")):
        res = json.loads(path.read_text())
        runs[res["key"]] = res
    return runs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--committed", default="benchmarks/results/classification")
    p.add_argument("--rerun", default="benchmarks/results/onepath_rerun")
    p.add_argument("--out")
    args = p.parse_args(argv)
    committed, rerun = _by_key(ROOT / args.committed), _by_key(ROOT / args.rerun)
    missing = sorted(k for k in rerun if k not in committed)
    if missing:
        raise SystemExit(f"rerun keys with no committed partner: {missing}")
    per_seed, top1 = [], {"committed": {}, "rerun": {}}
    for key, new in sorted(rerun.items(), key=lambda kv: (kv[1]["strategy"], kv[1]["seed"])):
        old = committed[key]
        s, seed = new["strategy"], new["seed"]
        top1["committed"].setdefault(s, {})[seed] = old["top1"]
        top1["rerun"].setdefault(s, {})[seed] = new["top1"]
        per_seed.append(
            {
                "strategy": s,
                "seed": seed,
                "key": key,
                "committed_top1": old["top1"],
                "rerun_top1": new["top1"],
                "identical_curves": old["curves"] == new["curves"],
                "committed_cpu": old["environment"].get("cpu"),
                "rerun_cpu": new["environment"].get("cpu"),
            }
        )
    report = {
        "command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
        "per_seed": per_seed,
        "rerun_minus_committed": {
            s: paired_difference(top1["rerun"][s], top1["committed"][s]) for s in sorted(top1["rerun"])
        },
        "mixed_minus_random": {
            which: paired_difference(top1[which].get("mixed", {}), top1[which].get("random", {}))
            for which in ("committed", "rerun")
        },
        "environment": environment_info("cpu"),
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
