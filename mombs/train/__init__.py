"""The study runner, split as torchvision's references are.

=============  ===============================================================
module         what it owns
=============  ===============================================================
config         :class:`RunConfig`, the run's key and folder name
build          model, loss, optimizer, the strategy's sampler and loader, assessor
engine         ``train_one_epoch``, ``evaluate``, the batch augmentation
checkpoint     atomic writes, loading a run's checkpoint
runner         :func:`run`: build, resume, train, evaluate, checkpoint, summarize
=============  ===============================================================

The runner is a user of the public API like any other: it trains through a
``DataLoader`` over an :class:`~mombs.IndexedDataset` with the strategy's batch
sampler and measures through :class:`~mombs.DifficultyAssessor`.
"""

from importlib import import_module as _import_module

__all__ = ["RunConfig", "run", "run_dir_name"]

#: The module of each public name, imported on first use (PEP 562): the
#: command line checks a config without importing the runner (and torch).
_MODULE_OF = {"RunConfig": "config", "run_dir_name": "config", "run": "runner"}


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
