"""Task adapters: what the assessor needs to know about a task, and nothing else.

An adapter says how a model's output becomes the prediction tensor, how
per-sample losses are computed, and how the mean disturbed prediction reduces
to one uncertainty per sample. The assessor knows nothing of tasks beyond this.

==================  =============================================================
name                what it covers
==================  =============================================================
classification      ``(B, C)`` logits, or dense ``(B, C, *S)`` logits with
                    ``(B, *S)`` class maps: cross-entropy averaged per sample,
                    mean per-position entropy of the mean softmax
detection           torchvision Faster R-CNN: per-image RPN objectness loss over
                    its sampled anchors, mean binary entropy of the objectness
                    over every in-image anchor (its passes run ``rpn_forward``
                    and collate with ``collate_detection``)
==================  =============================================================
"""

# The adapters register in this order, which is TASKS' order: not sorted.
# isort: off
from .base import TASKS, TaskAdapter, create_task, register_task
from . import classification  # noqa: F401  (registers the adapter)
from . import segmentation  # noqa: F401  (registers the adapter; MONAI is imported at first use)
from . import detection  # noqa: F401  (registers the adapter; torchvision is imported at first use)

# isort: on
from .classification import per_sample_loss

__all__ = ["TASKS", "TaskAdapter", "create_task", "per_sample_loss", "register_task"]
