"""When, during training, does a detector's per-image loss point at the images with a missing box?

The detection study found that the final model's signals do not find the
training images with a lesion left without a box (AUROC about 0.55): by
then the detector has fitted the given boxes. This script reads runs made
with ``--set history=true`` (each epoch's per-image RPN loss, and the K-pass
uncertainty where it was measured) and, per epoch, scores how well

- ``loss``: that epoch's training loss,
- ``mean_loss``: the mean training loss over the epochs so far (an
  area-under-the-curve score, as AUM is for classification),
- ``uncertainty``: the latest measured uncertainty (epochs where every image
  has one; none in a ``random`` run, which has no assessor),

rank the images with a missing box (``assessment.npz``'s ``missing``), as
AUROC. Higher = the score is higher for images with a missing box.

    mombs compare --config configs/study/det_synth_100.yaml --set "strategies=[random]" \\
        --set history=true --out runs/det_history
    python benchmarks/det_loss_history.py runs/det_history --out benchmarks/results/det_loss_history.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from mombs.envinfo import environment_info

SCORES = ("loss", "mean_loss", "uncertainty")


def run_curves(run_dir: Path) -> dict:
    """Per epoch, the AUROC of each score for the run's images with a missing box."""
    with np.load(run_dir / "history.npz") as h:
        loss = h["train_loss"].astype(np.float64)
        # A random run has no assessor, so no uncertainty history.
        unc = h["uncertainty"].astype(np.float64) if "uncertainty" in h.files else np.full_like(loss, np.nan)
    with np.load(run_dir / "assessment.npz") as a:
        missing = a["missing"].astype(bool)
    if not 0 < missing.sum() < missing.size:
        raise ValueError(f"{run_dir}: every image (or none) has a missing box; no AUROC")
    mean_loss = np.cumsum(loss, axis=0) / np.arange(1, loss.shape[0] + 1)[:, None]
    curves = {s: [] for s in SCORES}
    for e in range(loss.shape[0]):
        curves["loss"].append(float(roc_auc_score(missing, loss[e])))
        curves["mean_loss"].append(float(roc_auc_score(missing, mean_loss[e])))
        u = unc[e]
        curves["uncertainty"].append(float(roc_auc_score(missing, u)) if np.isfinite(u).all() else None)
    res = json.loads((run_dir / "results.json").read_text())
    final = res.get("noise_detection", {})
    return {
        "run": run_dir.name,
        "strategy": res["strategy"],
        "seed": res["seed"],
        "epochs": loss.shape[0],
        "pivot_epoch": res["pivot_epoch"],
        "base_rate": float(missing.mean()),
        "auroc": curves,
        "final_model": {k: final.get(f"auroc_{k}") for k in ("loss", "uncertainty", "difficulty", "unmatched")},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", help="a `mombs compare` output folder whose runs kept their history")
    p.add_argument("--out", default="benchmarks/results/det_loss_history.json")
    args = p.parse_args(argv)
    dirs = sorted(d for d in (Path(args.folder) / "runs").iterdir() if (d / "history.npz").is_file())
    if not dirs:
        raise SystemExit(f"no run with a history.npz under {args.folder}/runs (train with --set history=true)")
    runs = [run_curves(d) for d in dirs]
    epochs = min(r["epochs"] for r in runs)
    mean = {}
    for s in SCORES:
        rows = [[r["auroc"][s][e] for r in runs] for e in range(epochs)]
        mean[s] = [None if any(v is None for v in row) else round(float(np.mean(row)), 4) for row in rows]
    best = {
        s: int(np.nanargmax([np.nan if v is None else v for v in mean[s]]))
        for s in SCORES
        if any(v is not None for v in mean[s])
    }
    summary = {
        "runs": len(runs),
        "mean_auroc": mean,
        "best_epoch": best,
        "best_mean_auroc": {s: mean[s][e] for s, e in best.items()},
    }
    print(json.dumps(summary), flush=True)
    result = {
        "benchmark": "det_loss_history",
        "summary": summary,
        "runs": runs,
        "args": vars(args),
        "environment": environment_info("cpu"),
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
