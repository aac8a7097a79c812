"""End-to-end check of the CLI on a GPU: every task trains, assesses, evaluates and reports on CUDA.

The unit tests run on the CPU (CI has no GPU), so this script is how the
runner's device handling is checked on a lent GPU: for each case it runs
``mombs compare`` with ``device=cuda`` (random and mixed, one seed, a few
epochs, small sets), then reads every run's ``results.json`` and checks that
the metric is finite and in range, that the quadrants cover the training set,
and that the report and its pictures were written. The tiny detector's mixed
run is then repeated into a second folder, to say whether a CUDA run
reproduces itself (torch's CUDA kernels need not be deterministic, so this is
a reading, not a pass condition).

Accuracy figures from these few-epoch runs mean nothing; the record is about
whether the code runs on the device, and how long each case took.

    python benchmarks/gpu_e2e.py --out gpu_e2e.json                       # on a GPU
    python benchmarks/gpu_e2e.py --device cpu --quick --out /tmp/e2e.json  # smoke test here
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

from mombs import cli
from mombs.envinfo import environment_info

#: name -> options; every case runs random and mixed at seed 0.
CASES = {
    "classification": {"dataset": "digits", "epochs": 4, "pivot_epoch": 2, "noise": "symmetric", "noise_rate": 0.2},
    "segmentation": {
        "task": "segmentation",
        "subset": 60,
        "batch_size": 8,
        "epochs": 4,
        "pivot_epoch": 2,
        "noise": "annotation",
        "noise_rate": 0.3,
    },
    "detection-tiny": {
        "task": "detection",
        "subset": 60,
        "batch_size": 4,
        "epochs": 4,
        "pivot_epoch": 2,
        "noise": "annotation",
        "noise_rate": 0.3,
    },
    "detection-resnet50-fpn": {
        "task": "detection",
        "model": "fasterrcnn_resnet50_fpn",
        "image_size": 256,
        "subset": 40,
        "batch_size": 4,
        "epochs": 2,
        "pivot_epoch": 1,
        "noise": "annotation",
        "noise_rate": 0.3,
        # from scratch, SGD at the runner's default lr 0.02 gave NaN losses here
        "optimizer": "adam",
        "lr": 1e-4,
    },
}
QUICK = {"epochs": 2, "pivot_epoch": 1, "subset": 16}


def _compare(out: Path, opts: dict, strategies: str = "[random, mixed]") -> float:
    argv = [
        "compare",
        "--out",
        str(out),
        "--no-progress",
        "--set",
        f"strategies={strategies}",
        "--set",
        "seeds=[0]",
        "--set",
        "jobs=1",
    ] + [a for k, v in opts.items() for a in ("--set", f"{k}={v}")]
    t0 = time.perf_counter()
    try:
        rc = cli.main(argv)
    except SystemExit as err:  # the CLI exits non-zero when a run fails; keep going to the next case
        rc = err.code
    if rc != 0:
        raise RuntimeError(f"mombs {' '.join(argv)} exited with {rc}")
    return time.perf_counter() - t0


def _check_runs(out: Path) -> tuple:
    """Each run's key figures, after checking what a finished run must have."""
    runs = []
    for d in sorted((out / "runs").iterdir()):
        res = json.loads((d / "results.json").read_text())
        metric = res["metric"]
        value = res[metric]
        if not (isinstance(value, float) and math.isfinite(value) and 0 <= value <= 1):
            raise AssertionError(f"{d.name}: {metric}={value!r} is not a finite value in [0, 1]")
        counts = res.get("quadrant_counts", {})
        if counts and sum(counts.values()) != res["train_size"]:
            raise AssertionError(f"{d.name}: quadrant counts {counts} do not cover {res['train_size']} images")
        runs.append(
            {
                "run": d.name,
                "strategy": res["strategy"],
                "metric": metric,
                "value": round(value, 4),
                "device": res.get("config", {}).get("device"),
                "quadrant_counts": counts,
                "train_loss_last": res["curves"]["train_loss"][-1],
            }
        )
    report = out / "report.md"
    pictures = sorted(p.name for p in out.glob("*.png"))
    if not report.exists() or not pictures:
        raise AssertionError(f"{out}: no report or no pictures")
    return runs, pictures


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--work", default="runs/gpu_e2e", help="where the runs go")
    p.add_argument("--quick", action="store_true", help="2 epochs on 16 images (a smoke test on the CPU)")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--out", default="benchmarks/results/gpu_e2e.json")
    args = p.parse_args(argv)
    work = Path(args.work)
    records, failed = [], 0
    for name in args.cases:
        opts = {**CASES[name], "device": args.device, **(QUICK if args.quick else {})}
        if name == "classification":
            opts.pop("subset", None)  # the digits set is small already
        rec = {"case": name, "options": opts}
        for folder in (work / name, work / f"{name}-again"):
            shutil.rmtree(folder, ignore_errors=True)  # a fresh start: compare would skip finished runs
        try:
            rec["seconds"] = round(_compare(work / name, opts), 1)
            rec["runs"], rec["pictures"] = _check_runs(work / name)
            if name == "detection-tiny":
                again = work / f"{name}-again"
                _compare(again, opts, strategies="[mixed]")
                first = json.loads(next((work / name / "runs").glob("*mixed*/results.json")).read_text())
                second = json.loads(next((again / "runs").glob("*mixed*/results.json")).read_text())
                rec["repeat_identical"] = {
                    "froc_sens": first["froc_sens"] == second["froc_sens"],
                    "train_loss": first["curves"]["train_loss"] == second["curves"]["train_loss"],
                }
            rec["ok"] = True
        except Exception as err:  # noqa: BLE001 - one failing case must not hide the others
            rec["ok"], rec["error"] = False, f"{type(err).__name__}: {err}"[:2000]
            failed += 1
        print(json.dumps(rec), flush=True)
        records.append(rec)
    result = {
        "benchmark": "gpu_e2e",
        "records": records,
        "args": vars(args),
        "environment": environment_info(args.device),
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
