"""Tables, statistics and plots of a comparison; each task's recipe adds its own columns and pictures.

matplotlib is imported lazily.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .plots import plt, save
from .recipes import DEFAULT_TASK, RECIPES, get_recipe

__all__ = ["format_table", "write_report"]

#: Columns every task's rows may carry (after the recipes' own): how the
#: poorly-labeled quadrant and the difficulty find planted noise.
_NOISE_COLUMNS = {
    "noisy_fit": "noisy fit %",
    "poor_precision": "PL prec. %",
    "poor_recall": "PL rec. %",
    "auroc": "AUROC %",
}


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


def _recipes_of(metrics) -> list:
    """The recipes whose metric is one of ``metrics`` (``None``: every recipe)."""
    recipes = [get_recipe(t) for t in RECIPES]
    return recipes if metrics is None else [r for r in recipes if r.metric in metrics]


def _recipe_of_run(res: dict):
    """The recipe of a result (files from before tasks existed are the default task's runs)."""
    if res.get("task"):
        return get_recipe(res["task"])
    found = _recipes_of({res.get("metric")})
    return found[0] if found else get_recipe(DEFAULT_TASK)


def format_table(rows: list[dict], *, markdown: bool = False) -> str:
    """The comparison table: the metric's mean ± std, extra columns where the data has
    them (each task's recipe names its own), and the paired difference against random
    with its 95% CI and p-value."""
    names = {}
    for recipe in _recipes_of(None):
        names.update(recipe.columns)
    names.update(_NOISE_COLUMNS)
    extras = [c for c in names if any(c in r for r in rows)]
    metrics = {r.get("metric", "top1") for r in rows}
    found = _recipes_of(metrics) if len(metrics) == 1 else []
    metric = f"{found[0].report_notes([])['metric_name']} %" if found else "score %"
    head = ["dataset", "B", "loss", "strategy", "n", metric] + [names[c] for c in extras] + ["vs random, pts [95% CI]"]
    body = []
    for r in rows:
        body.append(
            [
                r["dataset"],
                str(r["batch_size"]),
                r["loss"],
                r["strategy"],
                str(r["n"]),
                f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f}",
            ]
            + [_pct(r.get(c)) for c in extras]
            + [_diff_cell(r)]
        )
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*b) for b in body])


def _curves(results, out: Path, notes: dict) -> str:
    by = {}
    for r in results:
        by.setdefault((r["dataset"], r["batch_size"], r["loss"], r["strategy"]), []).append(r)

    def noisy_fits(runs):
        fits = [r["curves"].get("noisy_fit") for r in runs]
        ok = all(f is not None and len(f) and None not in f for f in fits)
        return np.array(fits, dtype=float) if ok else None

    # Data without label noise has no memorization curve: no empty panel for it.
    memorization = any(noisy_fits(runs) is not None for runs in by.values())
    fig, axes = plt().subplots(1, 2 if memorization else 1, figsize=(11 if memorization else 6, 4), squeeze=False)
    axes = axes[0]
    metric = results[0].get("metric", "top1")
    for (_ds, b, loss, s), runs in sorted(by.items()):
        label = f"{s} (B={b}, {loss})"
        val = np.array([r["curves"][f"val_{metric}"] for r in runs], dtype=float)
        axes[0].plot(np.arange(val.shape[1]), 100 * val.mean(0), label=label)
        fits = noisy_fits(runs)
        if memorization and fits is not None:
            axes[1].plot(100 * fits.mean(0), label=label)
    axes[0].set(
        xlabel="epoch", ylabel=f"validation {notes['metric_name']} % (mean over seeds)", title=notes["metric_title"]
    )
    if memorization:
        axes[1].set(xlabel="epoch", title="memorization", ylabel=notes["memorization_axis"])
    axes[0].legend(fontsize=7)
    return save(fig, out / "curves.png")


#: Strategies whose runs get their own pictures (a scatter, a quadrant grid) in a report.
_PICTURED = ("random", "mixed")


def write_report(results: list[dict], rows: list[dict], out_dir, *, title: str = "mombs comparison") -> Path:
    """Writes ``report.md`` (tables, notes, plots) and ``summary.json`` to ``out_dir``.

    The wording and the task's own pictures come from the runs' recipe.
    Plots are skipped, with a note, when matplotlib is not installed.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=1))
    recipe = _recipe_of_run(results[0])
    notes = recipe.report_notes(results)
    lines = [
        f"# {title}",
        "",
        f"{len(results)} finished runs. {notes['what']}; "
        "the last column is the paired difference against `random` with the same seed "
        "(mean, 95% t-interval, paired t-test).",
        "",
        format_table(rows, markdown=True),
        "",
    ]
    if any("poor_precision" in r for r in rows):
        lines += [
            f"PL prec./rec.: how well the poorly-labeled quadrant (high loss, low uncertainty "
            f"of the final model) finds the {notes['flipped']}; AUROC: the summed-rank difficulty as a "
            f"score for them. Noisy fit: {notes['memorization']}",
            "",
        ]
    for note in notes.get("notes", []):
        lines += [note, ""]
    try:
        figs = [_curves(results, out, notes)] + recipe.report_figures(results, out)
        seen = set()
        for r in sorted(results, key=lambda r: r["seed"]):
            cell = (r["strategy"], r["batch_size"], r.get("train_size"))
            if cell not in seen and r["strategy"] in _PICTURED:
                seen.add(cell)
                figs += recipe.run_figures(r, out)
        lines += [f"![{f}]({f})" for f in figs if f]
    except ImportError as err:
        lines.append(f"(no plots: {err})")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
