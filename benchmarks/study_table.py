"""The README's study tables, from the committed per-run files.

    python benchmarks/study_table.py                                  # benchmarks/results/classification
    python benchmarks/study_table.py --dir some/folder --markdown

Groups runs by (dataset, batch size, loss, strategy); the last column is the
paired difference against random with the same seed (95% t-interval, paired t-test).
Cells with fewer seeds than ``--min-seeds`` are flagged.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mombs.compare import summarize
from mombs.report import format_table


def load(folder) -> list[dict]:
    runs = []
    for path in sorted(Path(folder).glob("*.json")):
        res = json.loads(path.read_text())
        # The regime search runs on other data than the core grid: keep them apart.
        regime = res.get("config", {}).get("tags", {}).get("regime")
        if regime:
            res["dataset"] = f"{res['dataset']} ({regime})"
        elif res.get("config", {}).get("noise", "none") != "none":
            res["dataset"] = f"{res['dataset']}-NL"
        elif res.get("config", {}).get("imbalance"):
            res["dataset"] = f"{res['dataset']}-LT"
        runs.append(res)
    return runs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", default="benchmarks/results/classification")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--min-seeds", type=int, default=5)
    args = p.parse_args(argv)
    runs = load(args.dir)
    rows = summarize(runs)
    print(format_table(rows, markdown=args.markdown))
    short = [f"{r['dataset']} B={r['batch_size']} {r['strategy']}: {r['n']} seeds"
             for r in rows if r["n"] < args.min_seeds]
    print(f"\n{len(runs)} runs; cells with fewer than {args.min_seeds} seeds: {len(short)}")
    for line in short:
        print("  " + line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
