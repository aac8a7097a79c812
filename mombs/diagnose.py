"""``mombs diagnose RUN_DIR``: the data-quality table and report of a finished ``mombs train`` run.

Reads the run's ``assessment.npz`` and, when it kept one, ``history.npz``;
the task's recipe rebuilds the training images for the picture grids.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from .quality import HISTORY_KEYS, data_quality, write_report, write_table
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
        raise ValueError(f"{path} cannot be read ({type(err).__name__}: {err}); the run that wrote it was cut "
                         f"short or the file was damaged: run the same `mombs train` command again") from err


def diagnose(run_dir, out_dir=None, *, score: str = "auto", images: bool = True, parquet: bool | None = None,
             per_quadrant: int = 16) -> dict:
    """The data-quality table and report of a finished ``mombs train`` run with one label per sample.

    Reads ``RUN_DIR/assessment.npz`` (the final loss and uncertainty, the given
    labels and, for planted noise, the wrong-label mask) and, when the run
    kept it (``--set history=true``), ``RUN_DIR/history.npz``: the per-epoch
    ``train_loss``, ``prob_given``, ``margin``, ``pred`` and optionally
    ``uncertainty``. Without the history the table has no AUM or cartography
    columns and the report says how to get them.

    Args:
        run_dir: the run folder.
        out_dir: where to write; default ``RUN_DIR/diagnose``.
        score: one of :data:`SCORES`.
        images: rebuild the training images from ``config.json`` for the
            picture grids (skipped, with a note, when that fails).
        parquet: as :func:`write_table`.
        per_quadrant: pictures per quadrant.

    Returns:
        ``{"table": csv path, "parquet": path or None, "report": path,
        "summary": dict, "history": bool, "missing": [...]}``.

    Raises:
        FileNotFoundError: no ``assessment.npz`` in ``run_dir`` (not a finished run).
        ValueError: a run of another task (segmentation, detection), a
            malformed file, or a bad argument (named).
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run_dir={str(run_dir)!r} is not a folder")
    apath = run / "assessment.npz"
    if not apath.is_file():
        raise FileNotFoundError(f"{apath} not found: diagnose needs a finished `mombs train` run "
                                f"(its assessment.npz)")
    task = _run_task(run)
    if task not in RECIPES or not get_recipe(task).label_table:
        takers = sorted(t for t in RECIPES if get_recipe(t).label_table)
        raise ValueError(f"run_dir={str(run_dir)!r} is a {task} run; diagnose reads runs with one class label "
                         f"per sample (task {' or '.join(map(repr, takers))}). A {task} run's assessment.npz "
                         f"holds its per-image loss, uncertainty and quadrants, and results.json how they "
                         f"find the noisy annotations")
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
    sources = {k[len("source_"):]: v for k, v in a.items() if k.startswith("source_")}
    q = data_quality(a["loss"], a["uncertainty"], a["y"].astype(np.int64), history=history,
                     wrong_label=wrong, score=score, sources=sources or None)
    out = Path(out_dir) if out_dir is not None else run / "diagnose"
    paths = write_table(q, out, parquet=parquet)
    pics, why = (None, "pictures were not asked for") if not images else _run_images(run, len(q))
    if pics is None and images:
        q.missing.append(f"picture grids: {why}")
    report = write_report(q, out, images=pics, per_quadrant=per_quadrant,
                          title=f"data quality of {run.name}")
    return {"table": paths["csv"], "parquet": paths["parquet"], "report": report, "summary": q.summary(),
            "history": history is not None, "missing": list(q.missing)}
