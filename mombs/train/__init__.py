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

from .config import RunConfig, run_dir_name
from .runner import run

__all__ = ["RunConfig", "run", "run_dir_name"]
