"""mombs: mixed-order minibatch sampling for training on diverse-quality data.

The public surface:

- :func:`plan_batches` plans one epoch of minibatches from difficulty scores.
- :class:`MixedOrderBatchSampler` is the torch ``BatchSampler`` around it.
"""

from .planner import STRATEGIES, BatchPlan, plan_batches, replica_layout
from .sampler import MixedOrderBatchSampler

__version__ = "0.1.0"

__all__ = [
    "BatchPlan",
    "MixedOrderBatchSampler",
    "STRATEGIES",
    "plan_batches",
    "replica_layout",
    "__version__",
]
