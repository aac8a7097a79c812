"""What MoMBS adds to a detector's training time, through the runner (random vs mixed).

Trains the same detection run as ``random`` and as ``mixed`` (the default
schedule, ``K = --k``) with :func:`mombs.train.run`, in the order random,
mixed, mixed, random over two seeds, so that drift in the machine's speed
hits both arms alike. Each run's time is the sum of its epochs' ``seconds``
in ``log.jsonl``: training, the assessor's passes, the validation FROC and,
in the last epoch, the test FROC (the same work in both arms); not the data
generation or the final assessment. The ratio is mixed's total over
random's.

    python benchmarks/det_overhead.py --device cuda --out det_overhead_gpu.json
    python benchmarks/det_overhead.py --model tiny --image-size 64 --subset 16 --epochs 3 --out /tmp/o.json  # smoke
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from mombs.envinfo import environment_info
from mombs.train import RunConfig, run

ORDER = (("random", 0), ("mixed", 0), ("mixed", 1), ("random", 1))


def epoch_seconds(run_dir: Path) -> list[float]:
    """Each epoch's wall seconds as the run logged them."""
    return [json.loads(line)["seconds"] for line in (run_dir / "log.jsonl").read_text().splitlines()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="fasterrcnn_resnet50_fpn")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--subset", type=int, default=100, help="training slices")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--pivot-epoch", type=int, default=2)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW (SGD at 0.02 diverges for ResNet-50-FPN)")
    p.add_argument("--work", default="runs/det_overhead")
    p.add_argument("--out", default="benchmarks/results/det_overhead.json")
    args = p.parse_args(argv)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)  # a fresh start: the runner would skip finished runs
    runs = []
    for strategy, seed in ORDER:
        cfg = RunConfig(
            task="detection",
            model=args.model,
            image_size=args.image_size,
            subset=args.subset,
            noise="annotation",
            noise_rate=0.3,
            batch_size=4,
            epochs=args.epochs,
            pivot_epoch=args.pivot_epoch,
            k=args.k,
            optimizer="adam",
            lr=args.lr,
            strategy=strategy,
            seed=seed,
            device=args.device,
            test_every=args.epochs,
        )
        d = work / f"{strategy}-s{seed}"
        res = run(cfg, d)
        sec = epoch_seconds(d)
        runs.append(
            {
                "strategy": strategy,
                "seed": seed,
                "seconds": round(sum(sec), 3),
                "epoch_seconds": [round(s, 3) for s in sec],
                "froc": res["froc"],
            }
        )
        print(json.dumps(runs[-1]), flush=True)
    total = {s: sum(r["seconds"] for r in runs if r["strategy"] == s) for s in ("random", "mixed")}
    # After the pivot only: the epochs in which the sampler plans and the assessor measures.
    after = {
        s: sum(sum(r["epoch_seconds"][args.pivot_epoch :]) for r in runs if r["strategy"] == s)
        for s in ("random", "mixed")
    }
    rec = {
        "ratio_mixed_over_random": round(total["mixed"] / total["random"], 3),
        "ratio_after_pivot": round(after["mixed"] / after["random"], 3),
        "seconds": {s: round(v, 2) for s, v in total.items()},
        "runs": runs,
    }
    print(json.dumps(rec), flush=True)
    result = {
        "benchmark": "det_overhead",
        "records": [rec],
        "args": vars(args),
        "environment": environment_info(args.device),
        "timing": "sum of each run's logged epoch seconds (training, assessment passes, validation FROC); "
        "runs in the order random s0, mixed s0, mixed s1, random s1, one after the other",
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
