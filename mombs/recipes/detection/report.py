"""What a detection comparison's report says and draws beyond the shared pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...plots import corruption_scatter, issue_grid, plt, quadrant_grid, save

__all__ = ["issue_pictures", "report_figures", "report_notes", "run_figures"]


def report_notes(results: list[dict]) -> dict:
    """The report's wording for detection runs."""
    return {
        "what": "FROC is the test sensitivity (IoU >= 0.5) averaged at 0.5, 1 and 2 false positives per "
        "image, final epoch; sens@F FP: the sensitivity at F false positives per image",
        "flipped": "training images with a lesion left without a box",
        "memorization": "exp(-RPN objectness loss) of the images with any box noise in the last training "
        "pass (memorization).",
        "metric_name": "FROC",
        "metric_title": "FROC (mean sensitivity at 0.5, 1, 2 FPs/image)",
        "memorization_axis": "exp(-RPN loss) %, images with noisy boxes",
    }


def _froc_curves(results, out: Path) -> str:
    """The test FROC curve of each strategy (final models, mean over seeds), one panel per training size."""
    by = {}
    for r in results:
        if r.get("froc_curve"):
            by.setdefault(r.get("train_size"), {}).setdefault((r["strategy"], r["batch_size"]), []).append(r)
    sizes = sorted(by, key=lambda n: (n is None, n))
    fig, axes = plt().subplots(1, len(sizes), figsize=(5.5 * len(sizes), 4), squeeze=False)
    for ax, n in zip(axes[0], sizes):
        for (s, b), runs in sorted(by[n].items()):
            fps = np.asarray(runs[0]["froc_curve"]["fps"], dtype=float)
            sens = np.array([r["froc_curve"]["sensitivity"] for r in runs], dtype=float)
            ax.plot(fps, 100 * np.nanmean(sens, axis=0), marker=".", label=f"{s} (B={b}, {len(runs)} seeds)")
        for f in (0.5, 1, 2):
            ax.axvline(f, color="0.85", lw=0.8, zorder=0)
        ax.set(
            xscale="log",
            xlabel="false positives per image (log scale)",
            ylabel="test sensitivity %",
            title=f"FROC, {n} training images",
        )
        ax.legend(fontsize=7)
    return save(fig, out / "froc.png")


def report_figures(results: list[dict], out: Path) -> list[str]:
    """The test FROC curves of each strategy."""
    return [_froc_curves(results, out)]


def _scatter(res: dict, out: Path) -> str | None:
    from .synthetic_det import DET_CORRUPTIONS

    return corruption_scatter(res, out, DET_CORRUPTIONS)


def _flagged_boxes_grid(res: dict, out: Path) -> str | None:
    """Image, given boxes, clean boxes, detections."""

    from .synthetic_det import DET_CORRUPTIONS

    def draw(ax, z, m):
        _draw_boxes(ax, ((z["clean"][m], "lime", "-"), (z["given"][m], "red", "--"), (z["det"][m], "cyan", "-")))

    return quadrant_grid(
        res,
        out,
        draw,
        DET_CORRUPTIONS,
        "images",
        "given boxes red dashed, clean boxes green, detections (score >= 0.5) cyan",
        3,
    )


def _draw_boxes(ax, sets) -> None:
    """Outlines ``(boxes (n, 4) NaN-padded, colour, line style)`` sets of ``(x1, y1, x2, y2)`` boxes on ``ax``."""
    from matplotlib.patches import Rectangle

    for boxes, colour, style in sets:
        for x1, y1, x2, y2 in boxes:
            if np.isfinite(x1):
                ax.add_patch(
                    Rectangle(
                        (x1 - 0.5, y1 - 0.5),
                        x2 - x1,
                        y2 - y1,
                        fill=False,
                        edgecolor=colour,
                        linestyle=style,
                        linewidth=0.8,
                    )
                )


def run_figures(res: dict, out: Path) -> list[str]:
    """One run's loss-uncertainty scatter by box corruption, and its quadrants' highest-loss images."""
    return [f for f in (_scatter(res, out), _flagged_boxes_grid(res, out)) if f]


def issue_pictures(z: dict, quality, out: Path, per_grid: int) -> list:
    """``diagnose``'s grid: each suspect image with its given boxes and the detections."""

    def draw(ax, z, m):
        _draw_boxes(
            ax, ((z["pic_clean"][m], "lime", "-"), (z["pic_given"][m], "red", "--"), (z["pic_det"][m], "cyan", "-"))
        )

    return issue_grid(
        z,
        quality,
        out,
        draw,
        "given boxes red dashed, detections (score >= 0.5) cyan"
        + (", clean boxes green" if np.isfinite(z["pic_clean"]).any() else ""),
        per_grid,
    )
