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

from .assessment import assessment_pass, to_device
from .assessor import DifficultyAssessor
from .data import IndexedDataset
from .difficulty import QUADRANTS, DifficultyTracker, QuadrantResult, difficulty_scores, quadrants, rank_average, spearman
from .noise import default_output_fn, feature_noise_uncertainty, prediction_entropy
from .planner import ORDERS, BatchPlan, plan_batches, replica_layout
from .quality import DataQuality, data_quality
from .sampler import MixedOrderBatchSampler
from .schedule import DEFAULT_PIVOT_EPOCH, DEFAULT_SCHEDULE, SCHEDULES, AssessmentSchedule, create_schedule, planned
from .tasks import TASKS, TaskAdapter, create_task, per_sample_loss

__version__ = "0.1.0"

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
