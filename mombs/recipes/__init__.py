"""Recipes: everything one task knows, behind one registry, so that the runner knows no task.

A recipe owns a task's data readers, synthetic sets, models, metrics,
evaluation, the summary of a finished run and the report's task-specific
pictures. The runner (:mod:`mombs.train`), :mod:`mombs.compare`,
:mod:`mombs.report` and :mod:`mombs.cli` ask ``get_recipe(cfg.task)`` and
never name a task themselves.

==================  ===========================================================
recipe              what it trains
==================  ===========================================================
classification      digits, Fashion-MNIST, CIFAR-10/100 (long-tailed, noisy
                    labels); a small CNN or a CIFAR ResNet-32; top-1 accuracy
segmentation        synthetic CT slices with lesion masks, COVID-19 CT,
                    MedSeg; MONAI U-Nets; lesion Dice
detection           synthetic CT slices with lesion boxes, DeepLesion;
                    torchvision Faster R-CNN; FROC
==================  ===========================================================

Recipes are imported when first asked for (:func:`get_recipe`): choosing one
costs nothing for the others. A recipe imports lightly: what checking a config
needs (its names and ``check``) imports no torch, and the functions that load
data, build models and summarize runs are bound with :func:`lazy`, their
modules imported at the first call, so that ``mombs train --help`` and a
refused option answer in well under a second.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["DEFAULT_TASK", "RECIPES", "Recipe", "TASK_OPTIONS", "TaskParts", "get_recipe", "lazy"]

#: The module holding each task's recipe (its ``RECIPE``), imported on first use.
RECIPES = {
    "classification": "mombs.recipes.classification",
    "segmentation": "mombs.recipes.segmentation",
    "detection": "mombs.recipes.detection",
}

#: Run-config options that only some tasks take (each recipe's ``takes``).
TASK_OPTIONS = (
    "imbalance",
    "img_max",
    "noise_file",
    "image_size",
    "noise_mix",
    "windows",
    "train_fraction",
    "weights",
    "normalize",
    "annotations",
    "foreground_only",
    "intensity_window",
)

#: The task of a run config that names none (every run made before tasks existed).
DEFAULT_TASK = "classification"

_LOADED: dict = {}


def get_recipe(task: str) -> Recipe:
    """The recipe of ``task`` (one of :data:`RECIPES`).

    Raises:
        ValueError: an unknown task, naming the known ones.
    """
    if not isinstance(task, str) or task not in RECIPES:
        raise ValueError(f"task={task!r} is not known; choose one of {sorted(RECIPES)}")
    if task not in _LOADED:
        _LOADED[task] = importlib.import_module(RECIPES[task]).RECIPE
    return _LOADED[task]


def lazy(module: str, name: str) -> Callable:
    """A function that imports ``module`` at its first call and calls its ``name``.

    Args:
        module: the absolute module name, e.g. ``"mombs.recipes.<task>.training"``.
        name: the function in it.

    Returns:
        A function with the same arguments and result as ``module.name``.
    """
    target = None

    def call(*args, **kwargs):
        nonlocal target
        if target is None:
            target = getattr(importlib.import_module(module), name)
        return target(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"``{module}.{name}``, imported at the first call."
    return call


@dataclass
class TaskParts:
    """What a recipe builds for the runner's task-free loop.

    Attributes:
        model: the network, on its device.
        at: the submodule whose output the assessor disturbs.
        train_data: the training set, items ``(x, y)``; the runner wraps it in
            an :class:`~mombs.IndexedDataset`.
        val, test: the evaluation splits, as :attr:`evaluate` takes them.
        evaluate: ``(model, split) -> (score, prediction)``, higher = better.
        loss_fn: ``(outputs, y) -> (B,)`` per-sample training losses, or
            ``None`` when ``step_fn`` computes them.
        fit_fn: ``(outputs, y) -> (B,)`` how well each training forward fits
            its given target, in ``[0, 1]``.
        task: the task adapter (name or :class:`~mombs.TaskAdapter`) the
            assessor measures with.
        signal_fn: ``(outputs, y) -> {name: (B,)}`` per-sample signals kept in
            a run's history besides the loss, or ``None``.
        step_fn: ``(model, x, y) -> (outputs, per_sample, objective)`` for
            models that compute their own losses, or ``None``.
        head: the classifier head the assessor may run alone, or ``None``.
        augment: train on random crops and flips.
    """

    model: object
    at: str
    train_data: object
    val: object
    test: object
    evaluate: Callable
    loss_fn: object
    fit_fn: Callable
    task: object
    signal_fn: Callable | None = None
    step_fn: object = None
    head: object = None
    augment: bool = False


@dataclass
class Recipe:
    """A task's recipe: the options it takes and the functions the runner calls.

    Attributes:
        name: the task.
        metric: the result field a run is scored by (``top1``, ``dice``, ``froc``).
        defaults: ``dataset``, ``model``, ``loss``, and the assessment's ``schedule``,
            ``k`` and ``alpha``, when a config leaves them unset (each recipe says
            why it chose its assessment defaults).
        choices: per option (``dataset``, ``model``, ``loss``, ``noise``) the names it takes.
        takes: the task-specific options (of :data:`TASK_OPTIONS`) it takes;
            the others are refused when set.
        assess_batch_size: samples per batch of an assessment pass.
        label_table: a run has one class label per sample (``mombs diagnose`` reads it).
        reads_data_dir: the data sets that read ``data_dir`` (the others refuse one).
        own_data: of those, the formats whose ``data_dir`` IS the data (a user's
            folder, not a copy of a public set): its path is part of a run's key.
        check: ``(cfg) -> None``: the task's own option checks (cross-field,
            data folder); raises ``ValueError`` naming the option.
        load: ``(cfg) -> data``: the run's splits; ``data.describe()`` is a
            dict, ``data.noisy_train`` the ``(N,)`` planted-noise mask or ``None``.
        create_model: ``(cfg, data) -> nn.Module``, called inside the runner's
            seeded generator scope (weight init).
        parts: ``(cfg, data, model, device) -> TaskParts``.
        summarize: ``(run) -> dict``: the task's fields of ``results.json``
            (its metric on the final and best-validation model and the rest),
            given a :class:`~mombs.train.summary.FinishedRun`; writes the
            run's ``assessment.npz`` and ``flagged.npz``.
        columns: extra comparison-table columns: field -> header, in order.
        row_extras: ``(runs) -> dict``: those columns' values for a cell's runs.
        report_notes: ``(results) -> dict`` of the report's wording (``what``
            the metric is, ``flipped``: what the planted noise is, ``memorization``,
            ``notes``: extra paragraphs, ``metric_name``, ``metric_title``,
            ``memorization_axis``).
        report_figures: ``(results, out) -> [file names]``: task-wide pictures.
        run_figures: ``(result, out) -> [file names]``: one run's pictures.
        training_images: ``(cfg) -> (N, C, H, W)`` array: a run's training
            images rebuilt from its config (pictures of ``diagnose``).
        issue_score: for masks and boxes, the per-image label-issue score
            ``mombs diagnose`` ranks by unless told otherwise (a column of the
            run's ``label_issues.npz``; chosen by measurement, each recipe says how).
        issue_flag: for masks and boxes, the score whose threshold
            (:data:`mombs.quality.DENSE_FLAGS`) flags an image.
        issue_pictures: ``(label_issues, quality, out_dir, per_quadrant) ->
            [(caption, file name)]``: ``diagnose``'s picture grids of masks or boxes.
    """

    name: str
    metric: str
    defaults: dict
    choices: dict
    takes: tuple
    assess_batch_size: int
    check: Callable
    load: Callable
    create_model: Callable
    parts: Callable
    summarize: Callable
    columns: dict = field(default_factory=dict)
    row_extras: Callable = lambda runs: {}
    report_notes: Callable = lambda results: {}
    report_figures: Callable = lambda results, out: []
    run_figures: Callable = lambda result, out: []
    training_images: Callable | None = None
    label_table: bool = False
    issue_score: str | None = None
    issue_flag: str | None = None
    issue_pictures: Callable | None = None
    reads_data_dir: tuple = ()
    own_data: tuple = ()
