"""Pictures that any task's report draws: the loss-uncertainty scatter and the quadrant grids.

matplotlib is imported when a picture is drawn (``pip install 'mombs[viz]'``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .difficulty import QUADRANTS

__all__ = ["corruption_scatter", "plt", "quadrant_grid", "save", "scatter_figure"]


def plt():
    """``matplotlib.pyplot`` on the Agg backend.

    Raises:
        ImportError: matplotlib is not installed, saying how to install it.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as pyplot
    except ImportError as err:
        raise ImportError("plots need matplotlib: pip install 'mombs[viz]'") from err
    return pyplot


def save(fig, path: Path, *, dpi: int = 110, tight: bool = True) -> str:
    """Writes ``fig`` to ``path``, closes it, and returns the file's name (what the report links)."""
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt().close(fig)
    return path.name


def scatter_figure(loss, unc, codes, member, what: str, title: str, *, kinds=None):
    """Loss against uncertainty: the quadrants, and the true membership (flipped label, tail class).

    Args:
        loss: ``(N,)`` eval-mode losses, higher = harder.
        unc: ``(N,)`` uncertainties, higher = harder.
        codes: ``(N,)`` quadrant codes (indices into :data:`~mombs.QUADRANTS`).
        member: ``(N,)`` bool truth to colour in the second panel, or ``None``;
            with ``kinds``, ``(N,)`` integer codes into ``kinds`` (0 = clean, grey).
        what: what ``member`` marks, for the legend.
        title: the figure's title.
        kinds: names of the codes in ``member`` (e.g. the mask corruptions).

    Returns:
        The matplotlib figure (the caller saves and closes it).
    """
    pyplot = plt()
    loss, unc, codes = np.asarray(loss, dtype=float), np.asarray(unc, dtype=float), np.asarray(codes)
    # Log loss axis: losses span 1e-4 to 10; a floor keeps exact zeros on the plot.
    floor = max(float(loss[loss > 0].min()) if (loss > 0).any() else 1e-6, 1e-6)
    loss = np.maximum(loss, floor)
    fig, axes = pyplot.subplots(1, 2, figsize=(11, 4.2))
    # Largest quadrant first, so the small ones are drawn on top and stay visible.
    for rank, c in enumerate(sorted(range(len(QUADRANTS)), key=lambda c: -int((codes == c).sum()))):
        m = codes == c
        axes[0].scatter(
            loss[m],
            unc[m],
            s=3 if m.sum() > 200 else 8,
            alpha=0.5,
            color=f"C{c}",
            label=f"{QUADRANTS[c]} ({m.sum()})",
            zorder=2 + rank,
        )
    axes[0].set(title="quadrants (median split)")
    if member is not None and kinds is not None:
        member = np.asarray(member)
        for k, name in enumerate(kinds):
            m = member == k
            if m.any():
                axes[1].scatter(
                    loss[m],
                    unc[m],
                    s=3 if k == 0 else 9,
                    alpha=0.4 if k == 0 else 0.8,
                    c="tab:gray" if k == 0 else f"C{k}",
                    label=f"{name} ({m.sum()})",
                    zorder=2 + (k > 0),
                )
    elif member is not None:
        axes[1].scatter(loss[~member], unc[~member], s=3, alpha=0.4, c="tab:gray", label="other")
        axes[1].scatter(loss[member], unc[member], s=5, alpha=0.6, c="tab:red", label=what, zorder=3)
    axes[1].set(title=f"true membership: {what}")
    for ax in axes:
        ax.set(xscale="log", xlabel="loss (eval mode, final model; log scale)", ylabel="uncertainty (K=8 entropy)")
        ax.legend(fontsize=7, markerscale=3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def corruption_scatter(res: dict, out: Path, kinds) -> str | None:
    """One dense run's loss-uncertainty scatter, its samples coloured by planted corruption.

    Args:
        res: the run's results, with ``run_dir`` (its ``assessment.npz`` is read).
        out: the report's folder.
        kinds: names of the corruption codes in ``assessment.npz`` (0 = clean).

    Returns:
        The picture's file name, or ``None`` when the run has no ``assessment.npz``.
    """
    path = Path(res["run_dir"]) / "assessment.npz"
    if not path.exists():
        return None
    z = np.load(path)
    corruption = z["corruption"] if z["corruption"].size else None
    fig = scatter_figure(
        z["loss"],
        z["uncertainty"],
        z["codes"],
        corruption,
        "corruption",
        f"{res['dataset']} {res['strategy']} B={res['batch_size']} seed {res['seed']}",
        kinds=kinds,
    )
    return save(fig, out / f"scatter-{res['strategy']}-b{res['batch_size']}-n{res['train_size']}.png", tight=False)


def quadrant_grid(res, out: Path, draw, kinds, what: str, legend: str, loss_digits: int) -> str | None:
    """The highest-loss training samples of each quadrant, one row per quadrant.

    ``draw(ax, z, m)`` adds the task's overlays (masks, boxes) to sample ``m``'s
    image; ``kinds`` names the corruption codes in ``flagged.npz``.
    """
    path = Path(res["run_dir"]) / "flagged.npz"
    if not path.exists():
        return None
    pyplot = plt()
    z = np.load(path)
    rows = [c for c in range(len(QUADRANTS)) if (z["codes"] == c).any()]
    cols = max(int((z["codes"] == c).sum()) for c in rows)
    fig, axes = pyplot.subplots(len(rows), cols, figsize=(1.9 * cols, 2.1 * len(rows)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, c in enumerate(rows):
        members = np.flatnonzero(z["codes"] == c)
        members = members[np.argsort(-z["loss"][members], kind="stable")]
        for j, m in enumerate(members):
            ax = axes[i, j]
            ax.imshow(z["image"][m].astype(np.float32), cmap="gray")
            draw(ax, z, m)
            code = int(z["corruption"][m])
            kind = kinds[code] if code >= 0 else "?"
            ax.set_title(f"#{z['index'][m]} {kind}\nloss {z['loss'][m]:.{loss_digits}f}", fontsize=7)
        axes[i, 0].text(
            -0.08, 0.5, QUADRANTS[c], transform=axes[i, 0].transAxes, rotation=90, va="center", ha="right", fontsize=8
        )
    fig.suptitle(
        f"highest-loss {what} per quadrant ({res['strategy']}, B={res['batch_size']}, seed {res['seed']}): {legend}",
        fontsize=9,
    )
    return save(fig, out / f"flagged-{res['strategy']}-b{res['batch_size']}-n{res['train_size']}.png", dpi=100)


def issue_grid(z, quality, out: Path, draw, legend: str, per_grid: int) -> list:
    """``diagnose``'s picture grid of masks or boxes: the most suspect training images a run kept.

    Args:
        z: the run's ``label_issues.npz`` arrays (``pic_index``, ``pic_image``
            and the task's overlays).
        quality: the :class:`~mombs.quality.DataQuality` table (rank, score, suspected error).
        out: the report's folder.
        draw: ``draw(ax, z, m)`` adds the task's overlays to kept picture ``m``.
        legend: what the overlays' colours mean.
        per_grid: most pictures drawn.

    Returns:
        ``[(caption, file name)]``, empty when the run kept no pictures.
    """
    t = quality.table
    kept = np.asarray(z["pic_index"])
    if kept.size == 0:
        return []
    order = np.argsort(t["label_issue_rank"][kept], kind="stable")[:per_grid]
    cols = min(6, len(order))
    rows = -(-len(order) // cols)
    pyplot = plt()
    fig, axes = pyplot.subplots(rows, cols, figsize=(2.0 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, m in zip(axes.ravel(), order):
        r = int(kept[m])
        ax.imshow(z["pic_image"][m].astype(np.float32), cmap="gray")
        draw(ax, z, m)
        kind = t["suspected_error"][r] if "suspected_error" in t else ""
        known = f" ({t['corruption'][r]})" if "corruption" in t else ""
        ax.set_title(f"#{r} rank {t['label_issue_rank'][r]}\n{kind}{known}", fontsize=6)
    fig.suptitle(f"most suspect first, by {quality.score}: {legend}", fontsize=8)
    return [(f"most suspect by {quality.score}", save(fig, Path(out) / "suspect.png", dpi=100))]
