"""What a segmentation comparison's report says and draws beyond the shared pictures."""

from __future__ import annotations

from pathlib import Path

from ...plots import corruption_scatter, issue_grid, quadrant_grid

__all__ = ["issue_pictures", "report_notes", "run_figures"]


def report_notes(results: list[dict]) -> dict:
    """The report's wording for segmentation runs."""
    return {
        "what": "Dice is the mean per-image lesion Dice (MONAI DiceMetric) over the test slices with a "
        "lesion, final epoch",
        "flipped": "corrupted masks",
        "memorization": "the training Dice on corrupted masks in the last training pass (memorization).",
        "notes": [
            "Small-lesion Dice: test slices whose lesions cover at most 1% of the slice. "
            "Lesion sens.: test lesions (connected components) the prediction overlaps."
        ],
        "metric_name": "Dice",
        "metric_title": "Dice",
        "memorization_axis": "training Dice % on corrupted masks",
    }


def _scatter(res: dict, out: Path) -> str | None:
    from .synthetic_ct import CORRUPTIONS

    return corruption_scatter(res, out, CORRUPTIONS)


def _flagged_grid(res: dict, out: Path) -> str | None:
    """Image, given mask, clean mask, prediction."""
    from .synthetic_ct import CORRUPTIONS

    def draw(ax, z, m):
        for key, colour in (("clean", "lime"), ("given", "red"), ("pred", "cyan")):
            if z[key][m].any():
                ax.contour(z[key][m], levels=[0.5], colors=colour, linewidths=0.8)

    return quadrant_grid(res, out, draw, CORRUPTIONS, "slices", "given mask red, clean mask green, prediction cyan", 2)


def run_figures(res: dict, out: Path) -> list[str]:
    """One run's loss-uncertainty scatter by corruption, and its quadrants' highest-loss slices."""
    return [f for f in (_scatter(res, out), _flagged_grid(res, out)) if f]


def issue_pictures(z: dict, quality, out: Path, per_grid: int) -> list:
    """``diagnose``'s grid: each suspect slice with its given mask, the prediction and where they
    disagree (red: the mask claims lesion the model does not see; blue: the model sees lesion the mask lacks)."""

    def draw(ax, z, m):
        diff = z["pic_map"][m].astype("float32")
        ax.imshow(diff, cmap="bwr_r", vmin=-1, vmax=1, alpha=0.45 * (abs(diff) > 0.25))
        for key, colour in (("pic_given", "red"), ("pic_pred", "cyan")):
            if z[key][m].any():
                ax.contour(z[key][m], levels=[0.5], colors=colour, linewidths=0.7)

    return issue_grid(
        z,
        quality,
        out,
        draw,
        "given mask red, prediction cyan; shading: red = mask without model support, blue = model finding without mask",
        per_grid,
    )
