"""Did a task's new default assessment move its study's outcome? (issue 22, item 4)

    python benchmarks/default_assessment.py --out benchmarks/results/default_assessment_cpu.json

For segmentation (30 slices, batch 4 and 8) and detection (100 slices), the
study cell's ``mixed`` runs were rerun with the task's new default assessment
(one plain eval pass, k=1 and alpha=0, every second epoch: ``configs/study/
*_default_assessment.yaml``). This pairs them by seed with the same cell's
committed ``random`` and ``mixed`` runs (the paper's K=8 at alpha 0.3, every
epoch) and reports, with 95% t-intervals: new mixed - random, old mixed -
random, and new mixed - old mixed, on the task's metric (Dice, FROC), and the
quadrants' noise detection. Pure JSON reading; the committed cells were made on
another CPU model (``environment``), so only their outcomes are compared, not
their seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mombs.compare import paired_difference  # noqa: E402
from mombs.envinfo import environment_info  # noqa: E402

CELLS = {
    "segmentation": ("configs/study/seg_synth_10.yaml", "configs/study/seg_synth_10_default_assessment.yaml"),
    "detection": ("configs/study/det_synth_50.yaml", "configs/study/det_synth_50_default_assessment.yaml"),
}
#: Options of a config file that are not a run's own.
_GRID = ("title", "out", "export", "strategies", "seeds", "batch_sizes", "jobs", "losses")


#: Same-CPU reruns of a committed cell's random and mixed runs, where the CPU moved its numbers
#: (detection: benchmarks/results/reproduce_runs_cpu.json shows FROC 0.165 here against 0.188 there).
SAME_CPU = {"detection": "benchmarks/results/detection_same_cpu_baseline"}


def _runs(config: str, folder: str | None = None) -> list[dict]:
    """The exported results of ``config``'s cell (in ``folder``, default its export folder):
    every file whose config matches its run options."""
    spec = yaml.safe_load((ROOT / config).read_text())
    want = {k: v for k, v in spec.items() if k not in _GRID}
    batch = spec.get("batch_sizes")
    found = []
    for path in sorted((ROOT / (folder or spec["export"])).glob("*.json")):
        res = json.loads(path.read_text())
        cfg = res.get("config", {})
        if all(cfg.get(k) == v for k, v in want.items()) and (batch is None or res["batch_size"] in batch):
            res["file"] = str(path.relative_to(ROOT))
            found.append(res)
    return found


def _by_seed(runs: list[dict], strategy: str, batch: int, field: str) -> dict:
    out = {}
    for r in runs:
        if r["strategy"] == strategy and r["batch_size"] == batch:
            if r["seed"] in out:
                raise ValueError(f"two {strategy} runs of seed {r['seed']} at batch {batch}")
            out[r["seed"]] = r[field] if field in r else r["noise_detection"][field]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/default_assessment_cpu.json")
    args = p.parse_args(argv)
    cells = []
    for task, (old_cfg, new_cfg) in CELLS.items():
        old, new = _runs(old_cfg), _runs(new_cfg)
        here = _runs(old_cfg, SAME_CPU[task]) if task in SAME_CPU and (ROOT / SAME_CPU[task]).is_dir() else []
        metric = new[0]["metric"] if new else None
        for batch in sorted({r["batch_size"] for r in new}):
            cell = {
                "task": task,
                "batch_size": batch,
                "metric": metric,
                "train_size": new[0]["train_size"],
                "new_assessment": {k: new[0]["config"][k] for k in ("schedule", "k", "alpha")},
                "old_assessment": {k: old[0]["config"][k] for k in ("schedule", "k", "alpha")},
            }
            for field in (metric, "precision", "auroc_difficulty"):
                random = _by_seed(old, "random", batch, field)
                mixed_old = _by_seed(old, "mixed", batch, field)
                mixed_new = _by_seed(new, "mixed", batch, field)
                cell[field] = {
                    "n_new": len(mixed_new),
                    "new_minus_random": paired_difference(mixed_new, random),
                    "old_minus_random": paired_difference(mixed_old, random),
                    "new_minus_old": paired_difference(mixed_new, mixed_old),
                }
                if here:  # the same comparisons with the committed cell rerun on this CPU
                    random_here = _by_seed(here, "random", batch, field)
                    mixed_here = _by_seed(here, "mixed", batch, field)
                    cell[field]["same_cpu"] = {
                        "new_minus_random": paired_difference(mixed_new, random_here),
                        "old_minus_random": paired_difference(mixed_here, random_here),
                        "new_minus_old": paired_difference(mixed_new, mixed_here),
                    }
            cell["files_new"] = sorted(r["file"] for r in new if r["batch_size"] == batch)
            cells.append(cell)
    result = {
        "benchmark": "default_assessment",
        "command": "python benchmarks/default_assessment.py",
        "cells": cells,
        "environment": environment_info("cpu"),
        "note": "the committed random and mixed runs were made on an Intel Xeon, the new mixed runs on "
        "this machine's CPU, whose float kernels differ; for detection, where that moves the outcome, "
        "same_cpu pairs the new runs with the committed cell rerun here "
        "(benchmarks/results/detection_same_cpu_baseline)",
    }
    text = json.dumps(result, indent=1)
    print(text)
    Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
