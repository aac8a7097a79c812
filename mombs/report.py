"""Tables, statistics and plots of a comparison. matplotlib is imported lazily."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .difficulty import QUADRANTS

__all__ = ["format_table", "write_report"]


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _diff_cell(row) -> str:
    d = row.get("vs_baseline")
    if not d:
        return ""
    text = f"{100 * d['mean']:+.2f}"
    if d.get("ci95"):
        lo, hi = d["ci95"]
        text += f" [{100 * lo:+.2f}, {100 * hi:+.2f}]"
    if d.get("p") is not None:
        text += f" p={d['p']:.2f}"
    return text + f" (n={d['n']})"


def format_table(rows: list[dict], *, markdown: bool = False) -> str:
    """The comparison table: top-1 mean ± std, extra columns where the data has
    them, and the paired difference against random with its 95% CI and p-value."""
    names = {"many": "many %", "medium": "med. %", "few": "few %", "sens@0.5": "sens@0.5FP %",
             "sens@1": "sens@1FP %", "sens@2": "sens@2FP %", "small_dice": "small-lesion Dice %",
             "lesion_sensitivity": "lesion sens. %", "noisy_fit": "noisy fit %", "poor_precision": "PL prec. %",
             "poor_recall": "PL rec. %", "auroc": "AUROC %"}
    extras = [c for c in names if any(c in r for r in rows)]
    metrics = {r.get("metric", "top1") for r in rows}
    metric = ({"top1": "top-1 %", "dice": "Dice %", "froc": "FROC %"}.get(metrics.pop(), "score %")
              if len(metrics) == 1 else "score %")
    head = ["dataset", "B", "loss", "strategy", "n", metric] + [names[c] for c in extras] + [
        "vs random, pts [95% CI]"]
    body = []
    for r in rows:
        body.append([r["dataset"], str(r["batch_size"]), r["loss"], r["strategy"], str(r["n"]),
                     f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f}"]
                    + [_pct(r.get(c)) for c in extras] + [_diff_cell(r)])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*b) for b in body])


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("plots need matplotlib: pip install 'mombs[viz]'") from err
    return plt


def _save(fig, path: Path, *, dpi: int = 110, tight: bool = True) -> str:
    """Writes ``fig`` to ``path``, closes it, and returns the file's name (what the report links)."""
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    _plt().close(fig)
    return path.name


def _curves(results, out: Path) -> str:
    plt = _plt()
    by = {}
    for r in results:
        by.setdefault((r["dataset"], r["batch_size"], r["loss"], r["strategy"]), []).append(r)

    def noisy_fits(runs):
        fits = [r["curves"].get("noisy_fit") for r in runs]
        ok = all(f is not None and len(f) and None not in f for f in fits)
        return np.array(fits, dtype=float) if ok else None

    # Data without label noise has no memorization curve: no empty panel for it.
    memorization = any(noisy_fits(runs) is not None for runs in by.values())
    fig, axes = plt.subplots(1, 2 if memorization else 1, figsize=(11 if memorization else 6, 4), squeeze=False)
    axes = axes[0]
    metric = results[0].get("metric", "top1")
    for (ds, b, loss, s), runs in sorted(by.items()):
        label = f"{s} (B={b}, {loss})"
        val = np.array([r["curves"][f"val_{metric}"] for r in runs], dtype=float)
        axes[0].plot(np.arange(val.shape[1]), 100 * val.mean(0), label=label)
        fits = noisy_fits(runs)
        if memorization and fits is not None:
            axes[1].plot(100 * fits.mean(0), label=label)
    seg, det = metric == "dice", metric == "froc"
    name = {"dice": "Dice", "froc": "FROC"}.get(metric, "top-1")
    titles = {"dice": "Dice", "froc": "FROC (mean sensitivity at 0.5, 1, 2 FPs/image)"}
    axes[0].set(xlabel="epoch", ylabel=f"validation {name} % (mean over seeds)", title=titles.get(metric, "accuracy"))
    if memorization:
        axes[1].set(xlabel="epoch", title="memorization",
                    ylabel="training Dice % on corrupted masks" if seg else
                    "exp(-RPN loss) %, images with noisy boxes" if det else
                    "% of noisy labels fit in the training pass")
    axes[0].legend(fontsize=7)
    return _save(fig, out / "curves.png")


def _froc_curves(results, out: Path) -> str:
    """The test FROC curve of each strategy (final models, mean over seeds), one panel per training size."""
    plt = _plt()
    by = {}
    for r in results:
        if r.get("froc_curve"):
            by.setdefault(r.get("train_size"), {}).setdefault((r["strategy"], r["batch_size"]), []).append(r)
    sizes = sorted(by, key=lambda n: (n is None, n))
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.5 * len(sizes), 4), squeeze=False)
    for ax, n in zip(axes[0], sizes):
        for (s, b), runs in sorted(by[n].items()):
            fps = np.asarray(runs[0]["froc_curve"]["fps"], dtype=float)
            sens = np.array([r["froc_curve"]["sensitivity"] for r in runs], dtype=float)
            ax.plot(fps, 100 * np.nanmean(sens, axis=0), marker=".", label=f"{s} (B={b}, {len(runs)} seeds)")
        for f in (0.5, 1, 2):
            ax.axvline(f, color="0.85", lw=0.8, zorder=0)
        ax.set(xscale="log", xlabel="false positives per image (log scale)", ylabel="test sensitivity %",
               title=f"FROC, {n} training images")
        ax.legend(fontsize=7)
    return _save(fig, out / "froc.png")


def _per_class(results, out: Path) -> str:
    plt = _plt()
    by = {}
    for r in results:
        by.setdefault(r["strategy"], []).append(r["per_class_top1"])
    fig, ax = plt.subplots(figsize=(11, 3.5))
    names = sorted(by)
    width = 0.8 / len(names)
    for i, s in enumerate(names):
        acc = np.array([[np.nan if v is None else v for v in pc] for pc in by[s]], dtype=float)
        mean = np.nanmean(acc, axis=0)
        ax.bar(np.arange(len(mean)) + i * width, 100 * mean, width, label=s)
    ax.set(xlabel="class (training set ordered as given; long-tail: head to tail)", ylabel="test top-1 %",
           title="per-class accuracy (mean over seeds and batch sizes)")
    ax.legend(fontsize=7)
    return _save(fig, out / "per_class.png")


def _scatter(res, out: Path) -> str | None:
    path = Path(res["run_dir"]) / "assessment.npz"
    if not path.exists():
        return None
    z = np.load(path)
    if res.get("task") in ("segmentation", "detection"):
        if res["task"] == "detection":
            from .data.synthetic_det import DET_CORRUPTIONS as CORRUPTIONS
        else:
            from .data.synthetic_ct import CORRUPTIONS

        corruption = z["corruption"] if z["corruption"].size else None
        fig = scatter_figure(z["loss"], z["uncertainty"], z["codes"], corruption, "corruption",
                             f"{res['dataset']} {res['strategy']} B={res['batch_size']} seed {res['seed']}",
                             kinds=CORRUPTIONS)
        name = f"scatter-{res['strategy']}-b{res['batch_size']}-n{res['train_size']}.png"
        return _save(fig, out / name, tight=False)
    noisy = z["noisy"] if z["noisy"].size else None
    counts = np.bincount(z["y_clean"])
    tail = counts[z["y_clean"]] < np.median(counts) if counts.min() < counts.max() else None
    member = noisy if noisy is not None else tail
    what = "label flipped" if noisy is not None else "tail class"
    fig = scatter_figure(z["loss"], z["uncertainty"], z["codes"], member, what,
                         f"{res['dataset']} {res['strategy']} B={res['batch_size']} seed {res['seed']}")
    return _save(fig, out / f"scatter-{res['strategy']}-b{res['batch_size']}.png", tight=False)


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
    plt = _plt()
    loss, unc, codes = np.asarray(loss, dtype=float), np.asarray(unc, dtype=float), np.asarray(codes)
    # Log loss axis: losses span 1e-4 to 10; a floor keeps exact zeros on the plot.
    floor = max(float(loss[loss > 0].min()) if (loss > 0).any() else 1e-6, 1e-6)
    loss = np.maximum(loss, floor)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    # Largest quadrant first, so the small ones are drawn on top and stay visible.
    for rank, c in enumerate(sorted(range(len(QUADRANTS)), key=lambda c: -int((codes == c).sum()))):
        m = codes == c
        axes[0].scatter(loss[m], unc[m], s=3 if m.sum() > 200 else 8, alpha=0.5, color=f"C{c}",
                        label=f"{QUADRANTS[c]} ({m.sum()})", zorder=2 + rank)
    axes[0].set(title="quadrants (median split)")
    if member is not None and kinds is not None:
        member = np.asarray(member)
        for k, name in enumerate(kinds):
            m = member == k
            if m.any():
                axes[1].scatter(loss[m], unc[m], s=3 if k == 0 else 9, alpha=0.4 if k == 0 else 0.8,
                                c="tab:gray" if k == 0 else f"C{k}", label=f"{name} ({m.sum()})", zorder=2 + (k > 0))
    elif member is not None:
        axes[1].scatter(loss[~member], unc[~member], s=3, alpha=0.4, c="tab:gray", label="other")
        axes[1].scatter(loss[member], unc[member], s=5, alpha=0.6, c="tab:red", label=what, zorder=3)
    axes[1].set(title=f"true membership: {what}")
    for ax in axes:
        ax.set(xscale="log", xlabel="loss (eval mode, final model; log scale)",
               ylabel="uncertainty (K=8 entropy)")
        ax.legend(fontsize=7, markerscale=3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _quadrant_grid(res, out: Path, draw, kinds, what: str, legend: str, loss_digits: int) -> str | None:
    """The highest-loss training samples of each quadrant, one row per quadrant.

    ``draw(ax, z, m)`` adds the task's overlays (masks, boxes) to sample ``m``'s
    image; ``kinds`` names the corruption codes in ``flagged.npz``.
    """
    path = Path(res["run_dir"]) / "flagged.npz"
    if not path.exists():
        return None
    plt = _plt()
    z = np.load(path)
    rows = [c for c in range(len(QUADRANTS)) if (z["codes"] == c).any()]
    cols = max(int((z["codes"] == c).sum()) for c in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.9 * cols, 2.1 * len(rows)), squeeze=False)
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
        axes[i, 0].text(-0.08, 0.5, QUADRANTS[c], transform=axes[i, 0].transAxes, rotation=90,
                        va="center", ha="right", fontsize=8)
    fig.suptitle(f"highest-loss {what} per quadrant ({res['strategy']}, B={res['batch_size']}, seed "
                 f"{res['seed']}): {legend}", fontsize=9)
    return _save(fig, out / f"flagged-{res['strategy']}-b{res['batch_size']}-n{res['train_size']}.png",
                 dpi=100)


def _flagged_grid(res, out: Path) -> str | None:
    """Segmentation: image, given mask, clean mask, prediction."""
    from .data.synthetic_ct import CORRUPTIONS

    def draw(ax, z, m):
        for key, colour in (("clean", "lime"), ("given", "red"), ("pred", "cyan")):
            if z[key][m].any():
                ax.contour(z[key][m], levels=[0.5], colors=colour, linewidths=0.8)

    return _quadrant_grid(res, out, draw, CORRUPTIONS, "slices",
                          "given mask red, clean mask green, prediction cyan", 2)


def _flagged_boxes_grid(res, out: Path) -> str | None:
    """Detection: image, given boxes, clean boxes, detections."""
    from matplotlib.patches import Rectangle

    from .data.synthetic_det import DET_CORRUPTIONS

    def draw(ax, z, m):
        for key, colour, style in (("clean", "lime", "-"), ("given", "red", "--"), ("det", "cyan", "-")):
            for x1, y1, x2, y2 in z[key][m]:
                if np.isfinite(x1):
                    ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False,
                                           edgecolor=colour, linestyle=style, linewidth=0.8))

    return _quadrant_grid(res, out, draw, DET_CORRUPTIONS, "images",
                          "given boxes red dashed, clean boxes green, detections (score >= 0.5) cyan", 3)


def write_report(results: list[dict], rows: list[dict], out_dir, *, title: str = "mombs comparison") -> Path:
    """Writes ``report.md`` (tables, notes, plots) and ``summary.json`` to ``out_dir``.

    Plots are skipped, with a note, when matplotlib is not installed.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=1))
    seg = any(r.get("task") == "segmentation" for r in results)
    det = any(r.get("task") == "detection" for r in results)
    what = ("Dice is the mean per-image lesion Dice (MONAI DiceMetric) over the test slices with a lesion, "
            "final epoch" if seg else
            "FROC is the test sensitivity (IoU >= 0.5) averaged at 0.5, 1 and 2 false positives per image, "
            "final epoch; sens@F FP: the sensitivity at F false positives per image" if det else
            "Top-1 is the test accuracy of the final epoch")
    lines = [f"# {title}", "",
             f"{len(results)} finished runs. {what}; "
             "the last column is the paired difference against `random` with the same seed "
             "(mean, 95% t-interval, paired t-test).", "", format_table(rows, markdown=True), ""]
    if any("poor_precision" in r for r in rows):
        flipped = ("corrupted masks" if seg else "training images with a lesion left without a box" if det
                   else "truly flipped labels")
        lines += [f"PL prec./rec.: how well the poorly-labeled quadrant (high loss, low uncertainty "
                  f"of the final model) finds the {flipped}; AUROC: the summed-rank difficulty as a "
                  f"score for them. Noisy fit: " + (
                      "the training Dice on corrupted masks in the last training pass (memorization)."
                      if seg else "exp(-RPN objectness loss) of the images with any box noise in the last "
                                  "training pass (memorization)." if det else
                      "the share of flipped labels the network reproduces in its last "
                      "training pass (memorization)."), ""]
    if seg:
        lines += ["Small-lesion Dice: test slices whose lesions cover at most 1% of the slice. "
                  "Lesion sens.: test lesions (connected components) the prediction overlaps.", ""]
    try:
        figs = [_curves(results, out)]
        if det:
            figs.append(_froc_curves(results, out))
        elif not seg:
            figs.append(_per_class(results, out))
        seen = set()
        for r in sorted(results, key=lambda r: r["seed"]):
            cell = (r["strategy"], r["batch_size"], r.get("train_size"))
            if cell not in seen and r["strategy"] in ("random", "mixed"):
                seen.add(cell)
                figs.append(_scatter(r, out))
                if seg:
                    figs.append(_flagged_grid(r, out))
                elif det:
                    figs.append(_flagged_boxes_grid(r, out))
        lines += [f"![{f}]({f})" for f in figs if f]
    except ImportError as err:
        lines.append(f"(no plots: {err})")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
