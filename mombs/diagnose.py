"""``mombs diagnose RUN_DIR``: the data-quality table and report of a finished ``mombs train`` run.

Reads the run's ``assessment.npz`` and, when it kept one, ``history.npz``.
Class labels: the task's recipe rebuilds the training images for the picture
grids. Masks and boxes: the run's ``label_issues.npz`` holds each image's
scores and the most suspect images' pictures.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from .quality import HISTORY_KEYS, SCORES, data_quality, dense_quality, write_report, write_table
from .recipes import DEFAULT_TASK, RECIPES, get_recipe

__all__ = ["diagnose"]


def _run_images(run_dir: Path, n: int):
    """The run's training images, rebuilt from its config; ``(None, why)`` when that fails."""
    try:
        cfg = json.loads((run_dir / "config.json").read_text())
        cfg = cfg.get("config", cfg)  # the runner writes {"config": {...}, "key": ...}
        from .recipes import get_recipe
        from .train import RunConfig

        fields = {k: v for k, v in cfg.items() if k in RunConfig.__dataclass_fields__}
        config = RunConfig(**fields).validate()
        images = get_recipe(config.task).training_images(config)
        if len(images) != n:
            return None, f"the rebuilt training set has {len(images)} images, the run {n}"
        return images, None
    except Exception as err:  # noqa: BLE001 - pictures are optional; say why they are missing
        return None, f"the training images could not be rebuilt from config.json ({type(err).__name__}: {err})"


def _run_task(run: Path) -> str:
    """The task a run folder's ``config.json`` names (runs from before tasks existed: the default task)."""
    cpath = run / "config.json"
    if not cpath.is_file():
        return DEFAULT_TASK
    try:
        cfg = json.loads(cpath.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{cpath} cannot be read as JSON ({err}); is {str(run)!r} a mombs run folder?") from err
    cfg = cfg.get("config", cfg) if isinstance(cfg, dict) else {}
    return cfg.get("task", DEFAULT_TASK)


def _read_npz(path: Path) -> dict:
    """Every array of a run's ``.npz`` file, or a ValueError that names the file when it is damaged."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(
            f"{path} cannot be read ({type(err).__name__}: {err}); the run that wrote it was cut "
            f"short or the file was damaged: run the same `mombs train` command again"
        ) from err


def diagnose(
    run_dir,
    out_dir=None,
    *,
    score: str = "auto",
    images: bool = True,
    parquet: bool | None = None,
    per_quadrant: int = 16,
) -> dict:
    """The data-quality table and report of a finished ``mombs train`` run, for every task.

    Reads ``RUN_DIR/assessment.npz`` (the final loss and uncertainty, the given
    labels and, for planted noise, the wrong-label mask) and, when the run
    kept it (``--set history=true``), ``RUN_DIR/history.npz``: the per-epoch
    ``train_loss``, ``prob_given``, ``margin``, ``pred`` and optionally
    ``uncertainty``. Without the history the table has no AUM or cartography
    columns and the report says how to get them.

    Args:
        run_dir: the run folder.
        out_dir: where to write; default ``RUN_DIR/diagnose``.
        score: class labels: one of :data:`~mombs.quality.SCORES`; masks and
            boxes: ``"auto"`` (the recipe's ``issue_score``) or a column of the
            run's ``label_issues.npz``, ``"loss"``, ``"difficulty"`` or ``"quadrant_score"``.
        images: rebuild the training images from ``config.json`` for the
            picture grids (skipped, with a note, when that fails).
        parquet: as :func:`write_table`.
        per_quadrant: pictures per quadrant.

    Returns:
        ``{"table": csv path, "parquet": path or None, "report": path,
        "summary": dict, "history": bool, "missing": [...]}``.

    Segmentation and detection runs: the table has a row per training image
    with its file (or case and slice), the loss, uncertainty and quadrant, the
    mask or box scores of the run's ``label_issues.npz``
    (:func:`mombs.quality.mask_issue_scores`, :func:`mombs.quality.box_issue_scores`),
    the suspected error, the score, rank and flag; the report's pictures show
    the most suspect images with their given and predicted masks or boxes.

    Raises:
        FileNotFoundError: no ``assessment.npz`` in ``run_dir`` (not a finished run).
        ValueError: a malformed file, a score the run's task does not have,
            or a bad argument (named).
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run_dir={str(run_dir)!r} is not a folder")
    apath = run / "assessment.npz"
    if not apath.is_file():
        raise FileNotFoundError(f"{apath} not found: diagnose needs a finished `mombs train` run (its assessment.npz)")
    task = _run_task(run)
    if task not in RECIPES:
        raise ValueError(
            f"{run / 'config.json'} names task {task!r}, which this mombs does not know; known: {sorted(RECIPES)}"
        )
    recipe = get_recipe(task)
    if not recipe.label_table:
        return _diagnose_dense(
            run, recipe, out_dir, score=score, per_quadrant=per_quadrant, images=images, parquet=parquet
        )
    if score not in SCORES:
        raise ValueError(f"score={score!r} is not known for a {task} run; choose one of {list(SCORES)}")
    a = _read_npz(apath)
    missing_keys = [k for k in ("loss", "uncertainty", "y") if k not in a]
    if missing_keys:
        raise ValueError(f"{apath} lacks {missing_keys}; it holds {sorted(a)}")
    wrong = a.get("noisy")
    wrong = wrong.astype(bool) if wrong is not None and wrong.shape == a["y"].shape else None
    history = None
    hpath = run / "history.npz"
    if hpath.is_file():
        history = {k: v for k, v in _read_npz(hpath).items() if k in HISTORY_KEYS}
        if "uncertainty" in history and np.isnan(history["uncertainty"]).all():
            del history["uncertainty"]
    sources = {k[len("source_") :]: v for k, v in a.items() if k.startswith("source_")}
    q = data_quality(
        a["loss"],
        a["uncertainty"],
        a["y"].astype(np.int64),
        history=history,
        wrong_label=wrong,
        score=score,
        sources=sources or None,
    )
    out = Path(out_dir) if out_dir is not None else run / "diagnose"
    paths = write_table(q, out, parquet=parquet)
    pics, why = (None, "pictures were not asked for") if not images else _run_images(run, len(q))
    if pics is None and images:
        q.missing.append(f"picture grids: {why}")
    report = write_report(q, out, images=pics, per_quadrant=per_quadrant, title=f"data quality of {run.name}")
    return {
        "table": paths["csv"],
        "parquet": paths["parquet"],
        "report": report,
        "summary": q.summary(),
        "history": history is not None,
        "missing": list(q.missing),
    }


def _diagnose_dense(
    run: Path, recipe, out_dir, *, score: str, per_quadrant: int, images: bool, parquet: bool | None
) -> dict:
    """:func:`diagnose` of a run whose labels are masks or boxes."""
    a = _read_npz(run / "assessment.npz")
    missing_keys = [k for k in ("loss", "uncertainty") if k not in a]
    if missing_keys:
        raise ValueError(f"{run / 'assessment.npz'} lacks {missing_keys}; it holds {sorted(a)}")
    lpath = run / "label_issues.npz"
    if not lpath.is_file():
        raise FileNotFoundError(
            f"{lpath} not found: the run was made by a mombs without per-image label-issue "
            f"scores; run the same `mombs train` command in a new --out folder"
        )
    z = _read_npz(lpath)
    scores = {k[len("score_") :]: v for k, v in z.items() if k.startswith("score_")}
    columns = list(scores)
    rankable = ["auto", *columns, "loss", "difficulty", "quadrant_score"]
    if score not in rankable:
        raise ValueError(f"score={score!r} is not a score of this {recipe.name} run; choose one of {rankable}")
    n = len(a["loss"])
    noisy = a.get("noisy")
    wrong = noisy.astype(bool) if noisy is not None and noisy.shape == (n,) else None
    corruption = None
    codes = a.get("corruption")
    names = z.get("corruption_names")  # what the codes mean, on a set with planted corruptions
    if codes is not None and codes.shape == (n,) and names is not None:
        corruption = np.asarray(names)[codes]
    sources = {k[len("source_") :]: v for k, v in a.items() if k.startswith("source_")}
    hpath = run / "history.npz"
    if hpath.is_file():
        hist = _read_npz(hpath)
        if "train_loss" in hist and hist["train_loss"].shape[-1] == n:
            with np.errstate(all="ignore"):
                scores["mean_train_loss"] = np.nanmean(hist["train_loss"], axis=0)
    info = {k: z[k] for k in ("predicted_area", "given_area") if k in z}
    q = dense_quality(
        a["loss"],
        a["uncertainty"],
        scores,
        score=recipe.issue_score if score == "auto" else score,
        kind=z.get("kind"),
        info=info or None,
        flag_by=recipe.issue_flag,
        wrong_label=wrong,
        corruption=corruption,
        sources=sources or None,
    )
    out = Path(out_dir) if out_dir is not None else run / "diagnose"
    paths = write_table(q, out, parquet=parquet)
    if "cleanlab" not in scores:
        q.missing.append("cleanlab: the run had no cleanlab to score with (pip install 'mombs[quality]')")
    pictures = None
    if images and recipe.issue_pictures is not None:

        def pictures(quality, folder, per_grid):
            return recipe.issue_pictures(z, quality, folder, per_grid)

    report = write_report(
        q, out, pictures=pictures, per_quadrant=per_quadrant, title=f"label issues of {run.name} ({recipe.name})"
    )
    return {
        "table": paths["csv"],
        "parquet": paths["parquet"],
        "report": report,
        "summary": q.summary(),
        "history": None,
        "missing": list(q.missing),
    }
