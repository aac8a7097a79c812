"""The task adapter and its registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..noise import default_output_fn

__all__ = ["TASKS", "TaskAdapter", "create_task", "register_task"]

#: Task adapters by name.
TASKS: dict[str, TaskAdapter] = {}


@dataclass(frozen=True)
class TaskAdapter:
    """What the assessor needs to measure one task.

    Attributes:
        name: registry name.
        loss_fn: ``loss_fn(outputs, targets) -> (B,)`` per-sample losses, higher =
            worse fit; ``outputs`` is what the model returned (tensor, dict, ...)
            and ``targets`` whatever the data set's items carry.
        output_fn: model output -> prediction tensor ``(B, C, ...)`` of logits.
        activation: ``"softmax"``, ``"sigmoid"`` or ``"auto"`` for the prediction.
        uncertainty_fn: ``(B, C, ...)`` mean probabilities -> ``(B,)`` uncertainty,
            higher = more uncertain; ``None``: the mean per-position entropy.
        forward_fn: ``forward_fn(model, inputs) -> output`` for assessment
            passes when the task's measures need more than ``model(inputs)``
            (detection: the RPN's objectness, which an eval-mode torchvision
            detector does not return); ``None``: ``model(inputs)``.
        collate_fn: the collate function of assessment passes when torch's
            default cannot batch the task's items (detection's lists of images
            and box dicts); ``None``: torch's default.
    """

    name: str
    loss_fn: Callable
    output_fn: Callable = default_output_fn
    activation: str = "auto"
    uncertainty_fn: Callable | None = None
    forward_fn: Callable | None = None
    collate_fn: Callable | None = None


def register_task(adapter: TaskAdapter) -> TaskAdapter:
    """Makes ``adapter`` available to :func:`create_task` under its name."""
    if adapter.name in TASKS:
        raise ValueError(f"task {adapter.name!r} is registered twice")
    TASKS[adapter.name] = adapter
    return adapter


def create_task(task: str | TaskAdapter) -> TaskAdapter:
    """A registered adapter by name, or ``task`` itself when it is one."""
    if isinstance(task, TaskAdapter):
        return task
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not known; choose one of {sorted(TASKS)} or pass a TaskAdapter")
    return TASKS[task]
