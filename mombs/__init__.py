"""mombs: mixed-order minibatch sampling for training on diverse-quality data.

The public surface:

- :func:`plan_batches` plans one epoch of minibatches from difficulty scores.
- :class:`MixedOrderBatchSampler` is the torch ``BatchSampler`` around it.
- :func:`feature_noise_uncertainty`, :func:`difficulty_scores` and
  :func:`quadrants` measure how hard each sample is.
- :class:`DifficultyAssessor` and :class:`IndexedDataset` put it all into a
  plain training loop in a few lines.
- :func:`data_quality` turns a run's signals into a table of likely label
  issues (``mombs.quality``; ``mombs diagnose RUN_DIR`` on the command line).
"""

from importlib import import_module as _import_module
from importlib.util import find_spec as _find_spec

#: Where each public name lives. Imported on first use (PEP 562), so that
#: ``import mombs`` and the ``mombs`` command's ``--help`` cost no torch import.
_WHERE = {
    "assessment": ("assessment_pass", "to_device"),
    "assessor": ("DifficultyAssessor",),
    "data": ("IndexedDataset",),
    "difficulty": (
        "QUADRANTS",
        "DifficultyTracker",
        "QuadrantResult",
        "difficulty_scores",
        "quadrants",
        "rank_average",
        "spearman",
    ),
    "noise": ("default_output_fn", "feature_noise_uncertainty", "prediction_entropy"),
    "planner": ("ORDERS", "BatchPlan", "plan_batches", "replica_layout"),
    "quality": ("DataQuality", "data_quality"),
    "sampler": ("MixedOrderBatchSampler",),
    "schedule": (
        "DEFAULT_PIVOT_EPOCH",
        "DEFAULT_SCHEDULE",
        "SCHEDULES",
        "AssessmentSchedule",
        "create_schedule",
        "planned",
    ),
    "tasks": ("TASKS", "TaskAdapter", "create_task", "per_sample_loss"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

try:  # the installed distribution's version: pyproject.toml is its one source
    from importlib.metadata import PackageNotFoundError as _NotInstalled
    from importlib.metadata import version as _version

    __version__ = _version("mombs")
except _NotInstalled:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "AssessmentSchedule",
    "BatchPlan",
    "DEFAULT_PIVOT_EPOCH",
    "DEFAULT_SCHEDULE",
    "DataQuality",
    "DifficultyAssessor",
    "DifficultyTracker",
    "IndexedDataset",
    "MixedOrderBatchSampler",
    "QUADRANTS",
    "QuadrantResult",
    "SCHEDULES",
    "ORDERS",
    "TASKS",
    "TaskAdapter",
    "assessment_pass",
    "create_schedule",
    "create_task",
    "data_quality",
    "default_output_fn",
    "difficulty_scores",
    "feature_noise_uncertainty",
    "per_sample_loss",
    "plan_batches",
    "prediction_entropy",
    "quadrants",
    "rank_average",
    "replica_layout",
    "planned",
    "spearman",
    "to_device",
    "__version__",
]


def __getattr__(name: str):
    """A public name, or a submodule (``mombs.quality``), imported on first access."""
    if name in _MODULE_OF:
        value = getattr(_import_module(f".{_MODULE_OF[name]}", __name__), name)
    elif not name.startswith("__") and _find_spec(f"{__name__}.{name}") is not None:
        value = _import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
