"""The data-quality report: the data maps, per-class counts and picture grids of a :class:`DataQuality`.

matplotlib is imported when a figure is drawn (``pip install 'mombs[viz]'``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .._checks import is_int
from ..difficulty import QUADRANTS
from ..plots import plt as _plt
from .table import DataQuality

__all__ = ["write_report"]


_QUADRANT_COLORS = {
    "poorly-labeled": "#d62728",
    "under-represented": "#ff7f0e",
    "well-represented": "#2ca02c",
    "overfitted": "#1f77b4",
}


def _data_map(quality: DataQuality, path: Path) -> None:
    plt = _plt()
    t = quality.table
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for q in QUADRANTS:
        m = t["quadrant"] == q
        ax.scatter(
            t["loss"][m], t["uncertainty"][m], s=4, alpha=0.5, color=_QUADRANT_COLORS[q], label=f"{q} ({int(m.sum())})"
        )
    f = t["flagged"]
    ax.scatter(
        t["loss"][f],
        t["uncertainty"][f],
        s=14,
        facecolors="none",
        edgecolors="k",
        linewidths=0.4,
        label=f"flagged ({int(f.sum())})",
    )
    ax.set_xscale("symlog", linthresh=1e-2)
    ax.set_xlabel("loss (higher = worse fit)")
    ax.set_ylabel("uncertainty (higher = less sure)")
    ax.set_title("data map: loss vs uncertainty")
    ax.legend(fontsize=7, markerscale=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cartography_map(quality: DataQuality, path: Path) -> None:
    plt = _plt()
    t = quality.table
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    color = t["correctness"] if not np.isnan(t["correctness"]).all() else None
    sc = ax.scatter(t["variability"], t["confidence"], s=4, c=color, cmap="viridis", alpha=0.6)
    if color is not None:
        fig.colorbar(sc, ax=ax, label="correctness")
    f = t["flagged"]
    ax.scatter(
        t["variability"][f],
        t["confidence"][f],
        s=14,
        facecolors="none",
        edgecolors="r",
        linewidths=0.4,
        label=f"flagged ({int(f.sum())})",
    )
    ax.set_xlabel("variability")
    ax.set_ylabel("confidence (lower = worse)")
    ax.set_title("dataset cartography")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _grid(images, quality: DataQuality, rows: np.ndarray, title: str, path: Path) -> None:
    plt = _plt()
    t = quality.table
    cols = min(8, max(1, len(rows)))
    nrows = max(1, math.ceil(len(rows) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(1.4 * cols, 1.6 * nrows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, r in zip(axes.ravel(), rows):
        img = np.asarray(images[r], dtype=np.float64)
        if img.ndim == 3 and img.shape[0] in (1, 3):  # CHW -> HWC
            img = np.moveaxis(img, 0, -1)
        if img.ndim == 3 and img.shape[-1] == 1:
            img = img[..., 0]
        lo, hi = float(img.min()), float(img.max())
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        pred = t["predicted_label"][r] if "predicted_label" in t else None
        ax.set_title(
            f"#{t['index'][r]} y={t['given_label'][r]}" + (f" p={pred}" if pred is not None else ""), fontsize=6
        )
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    quality: DataQuality, out_dir, *, images=None, per_quadrant: int = 16, title: str = "data quality", pictures=None
) -> Path:
    """Writes ``report.md`` with the data maps, per-class counts and picture grids.

    Figures: ``data_map.png`` (loss vs uncertainty, by quadrant, flagged
    samples ringed); ``cartography.png`` (confidence vs variability, coloured
    by correctness) when the table has them; ``top_<quadrant>.png``, the
    ``per_quadrant`` most suspect samples of each quadrant, when ``images``
    are given. matplotlib is imported here, lazily.

    Args:
        quality: what :func:`data_quality` returned.
        out_dir: folder to write into (created).
        images: ``(N, H, W)``, ``(N, C, H, W)`` or ``(N, H, W, C)`` array or
            tensor, the samples in table order; optional.
        per_quadrant: pictures per quadrant grid, ``>= 1``.
        title: the report's heading.
        pictures: for masks and boxes, instead of ``images``: ``(quality,
            out_dir, per_quadrant) -> [(caption, file name)]``, which draws the
            task's own picture grids into ``out_dir`` (a recipe's
            ``issue_pictures``).

    Returns:
        The path of ``report.md``.
    """
    if not is_int(per_quadrant) or per_quadrant < 1:
        raise ValueError(f"per_quadrant={per_quadrant!r} must be an integer >= 1")
    if images is not None:
        if hasattr(images, "detach"):  # a torch tensor
            images = images.detach().cpu().numpy()
        if len(images) != len(quality):
            raise ValueError(f"images holds {len(images)} samples but the table has {len(quality)} rows")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t = quality.table
    s = quality.summary()
    lines = [
        f"# {title}",
        "",
        f"{s['samples']} samples; {s['flagged']} flagged as likely wrong labels.",
        "",
        f"- label-issue score: `{quality.score}` (higher = more likely a wrong label)",
        f"- flag: {quality.flag_rule}",
        "",
    ]
    if quality.missing:
        lines += ["**Missing:**", ""] + [f"- {m}" for m in quality.missing] + [""]
    if "known_noise" in s:
        k = s["known_noise"]
        lines += [
            f"Known noise: {k['wrong']} wrong labels; the flag has precision {k['precision']:.3f}, "
            f"recall {k['recall']:.3f}; the score has AUROC {k['auroc']:.3f}, AP {k['ap']:.3f}.",
            "",
        ]
    _data_map(quality, out / "data_map.png")
    lines += ["## Data map", "", "![loss vs uncertainty](data_map.png)", ""]
    if "confidence" in t:
        _cartography_map(quality, out / "cartography.png")
        lines += ["![confidence vs variability](cartography.png)", ""]
    elif "given_label" in t:  # masks and boxes have no cartography
        lines += ["No cartography map: the run kept no per-epoch history.", ""]
    rows = quality.per_class()
    if rows:
        head = list(rows[0])
        lines += ["## Per class", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows] + [""]
    lines += ["## Most suspect labels", ""]
    top = quality.top(10)
    show = [
        c
        for c in (
            "index",
            "path",
            "case",
            "slice",
            "image_id",
            "given_label",
            "predicted_label",
            "quadrant",
            "loss",
            "uncertainty",
            "aum",
            "confidence",
            "suspected_error",
            "corruption",
            "label_issue_score",
            "flagged",
        )
        if c in t
    ]
    lines += ["| " + " | ".join(show) + " |", "|" + "---|" * len(show)]
    for r in top:
        cells = [f"{t[c][r]:.4g}" if isinstance(t[c][r], (float, np.floating)) else str(t[c][r]) for c in show]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if pictures is not None:
        drawn = pictures(quality, out, per_quadrant)
        lines += ["## Pictures: the most suspect images", ""]
        lines += [line for caption, fname in drawn for line in (f"![{caption}]({fname})", "")]
        if not drawn:
            lines += ["No picture grids: the run kept no pictures.", ""]
    elif images is not None:
        lines += ["## Pictures: the most suspect samples of each quadrant", ""]
        for q in QUADRANTS:
            pick = quality.top(per_quadrant, quadrant=q)
            if len(pick) == 0:
                continue
            fname = f"top_{q}.png"
            _grid(images, quality, pick, f"{q}: most suspect first", out / fname)
            lines += [f"![{q}]({fname})", ""]
    else:
        lines += ["No picture grids: the images were not available.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(s, indent=1, default=float) + "\n", encoding="utf-8")
    return path
