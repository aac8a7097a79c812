"""What a classification comparison's report says and draws beyond the shared pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...plots import plt, save, scatter_figure

__all__ = ["report_figures", "report_notes", "run_figures"]


def report_notes(results: list[dict]) -> dict:
    """The report's wording for classification runs."""
    return {
        "what": "Top-1 is the test accuracy of the final epoch",
        "flipped": "truly flipped labels",
        "memorization": "the share of flipped labels the network reproduces in its last training pass (memorization).",
        "metric_name": "top-1",
        "metric_title": "accuracy",
        "memorization_axis": "% of noisy labels fit in the training pass",
    }


def _per_class(results, out: Path) -> str:
    by = {}
    for r in results:
        by.setdefault(r["strategy"], []).append(r["per_class_top1"])
    fig, ax = plt().subplots(figsize=(11, 3.5))
    names = sorted(by)
    width = 0.8 / len(names)
    for i, s in enumerate(names):
        acc = np.array([[np.nan if v is None else v for v in pc] for pc in by[s]], dtype=float)
        mean = np.nanmean(acc, axis=0)
        ax.bar(np.arange(len(mean)) + i * width, 100 * mean, width, label=s)
    ax.set(
        xlabel="class (training set ordered as given; long-tail: head to tail)",
        ylabel="test top-1 %",
        title="per-class accuracy (mean over seeds and batch sizes)",
    )
    ax.legend(fontsize=7)
    return save(fig, out / "per_class.png")


def report_figures(results: list[dict], out: Path) -> list[str]:
    """The per-class accuracy of each strategy."""
    return [_per_class(results, out)]


def run_figures(res: dict, out: Path) -> list[str]:
    """One run's loss-uncertainty scatter, coloured by flipped label (or, without noise, tail class)."""
    path = Path(res["run_dir"]) / "assessment.npz"
    if not path.exists():
        return []
    z = np.load(path)
    noisy = z["noisy"] if z["noisy"].size else None
    counts = np.bincount(z["y_clean"])
    tail = counts[z["y_clean"]] < np.median(counts) if counts.min() < counts.max() else None
    member = noisy if noisy is not None else tail
    what = "label flipped" if noisy is not None else "tail class"
    fig = scatter_figure(
        z["loss"],
        z["uncertainty"],
        z["codes"],
        member,
        what,
        f"{res['dataset']} {res['strategy']} B={res['batch_size']} seed {res['seed']}",
    )
    return [save(fig, out / f"scatter-{res['strategy']}-b{res['batch_size']}.png", tight=False)]
