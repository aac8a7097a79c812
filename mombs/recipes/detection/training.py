"""What a detection run trains and scores with: the parts, the training step, the fit, FROC.

A torchvision Faster R-CNN computes its
own losses from ``(images, targets)``, so a detection run trains through a
step function (:class:`DetectionStep`) instead of ``loss_fn(model(x), y)``:

- the optimizer minimises the **sum of torchvision's four losses**
  (``loss_classifier``, ``loss_box_reg``, ``loss_objectness``,
  ``loss_rpn_box_reg``) of :func:`mombs.tasks.detection.detection_losses`;
- the assessor observes each image's **RPN objectness loss** from the same
  forward (the paper's difficulty, ``shared/METHOD.md`` §1);
- a strategy with per-sample weights (the self-paced ones) weights the
  per-image objectness losses, and the three batch-pooled losses by the
  batch's mean weight (torchvision gives no per-image RoI-head loss);
  without weights the objective is exactly the sum of the four losses.

Every step's random draws (the RPN's and RoI heads' anchor and proposal
samples) come from torch's generators seeded from ``(seed, epoch, step)``
and restored afterwards, so a resumed run repeats the uninterrupted one.

Evaluation is FROC (:func:`mombs.recipes.detection.metrics.froc`): the mean
sensitivity at 0.5, 1 and 2 false positives per image, higher = better.
"""

from __future__ import annotations

import numpy as np
import torch

from ...tasks.detection import detection_losses
from .. import TaskParts
from .metrics import froc

__all__ = ["DetectionStep", "create_model", "det_fit", "detect", "evaluate_detection", "parts"]

#: Images per evaluation forward.
EVAL_BATCH_SIZE = 32


def _step_seed(seed: int, epoch: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, step, 0xDE7]).generate_state(1)[0])


class DetectionStep:
    """One detection training forward: ``(model, images, targets) -> (outputs, per_image, objective)``.

    ``per_image`` is the ``(B,)`` RPN objectness loss of each image, with its
    graph (higher = worse fit); ``outputs`` the same values detached (what
    :func:`det_fit` reads); ``objective(weights)`` the scalar to minimise:
    the sum of torchvision's four losses for ``weights=None``, else the
    weighted mean of ``per_image`` plus the other three losses times
    ``weights.mean()`` (module docstring).

    Args:
        seed: the run's seed; step ``s`` of epoch ``e`` draws its anchor and
            proposal samples from torch's generators seeded from ``(seed, e, s)``
            (:func:`mombs.tasks.detection.seeded_torch_rng`: restored afterwards).
    """

    def __init__(self, seed: int = 0):
        self.seed, self.epoch, self.step = int(seed), 0, 0

    def set_epoch(self, epoch: int) -> None:
        """Starts the step count of ``epoch``."""
        self.epoch, self.step = int(epoch), 0

    def __call__(self, model, images, targets):
        seed = _step_seed(self.seed, self.epoch, self.step)
        self.step += 1
        losses, per_image = detection_losses(model, images, targets, seed=seed)
        total = sum(losses.values())
        rest = total - losses["loss_objectness"]

        def objective(weights):
            if weights is None:
                return total
            return (per_image * weights).mean() + rest * weights.mean()

        return per_image.detach(), per_image, objective


def det_fit(outputs: torch.Tensor, targets=None) -> torch.Tensor:
    """How well a training forward fits each image's given boxes: ``(B,)`` in ``(0, 1]``.

    ``exp(-loss)`` of the per-image RPN objectness loss: the geometric mean,
    over the anchors the RPN sampled, of the probability it gives the anchor's
    label from the given boxes (higher = better fit).

    Args:
        outputs: ``(B,)`` per-image objectness losses (:class:`DetectionStep`'s outputs).
        targets: unused (the fit is read off the loss).
    """
    return torch.exp(-outputs.float())


def detect(model, dataset, indices=None, *, batch_size: int = EVAL_BATCH_SIZE) -> tuple[list, list]:
    """The detector's eval-mode detections on items of a data set, and their boxes.

    Args:
        model: a torchvision detector; put in eval mode.
        dataset: map-style, items ``(image (C, H, W), {"boxes": (n, 4), ...})``.
        indices: which items (default all), in that order.
        batch_size: images per forward.

    Returns:
        ``(detections, boxes)``: per item a dict of ``"boxes"`` ``(d, 4)`` and
        ``"scores"`` ``(d,)`` float32 arrays, and its ``(n, 4)`` target boxes.
    """
    device = next(model.parameters()).device
    idx = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64)
    model.eval()
    dets, gts = [], []
    with torch.no_grad():
        for s in range(0, idx.size, batch_size):
            items = [dataset[int(i)] for i in idx[s : s + batch_size]]
            out = model([im.to(device) for im, _ in items])
            for (_, t), o in zip(items, out):
                dets.append({"boxes": o["boxes"].cpu().numpy(), "scores": o["scores"].cpu().numpy()})
                gts.append(torch.as_tensor(t["boxes"]).reshape(-1, 4).numpy())
    return dets, gts


def evaluate_detection(model, dataset, batch_size: int = EVAL_BATCH_SIZE) -> tuple[float, list]:
    """FROC over a split: the recipe's ``evaluate``.

    Args:
        model: the detector; put in eval mode.
        dataset: the split, items ``(image, target)`` with the clean boxes.
        batch_size: images per forward.

    Returns:
        ``(froc, detections)``: the mean sensitivity at 0.5, 1 and 2 false
        positives per image (IoU >= 0.5), in ``[0, 1]``, higher = better (NaN
        without lesions), and the detections of every image.
    """
    dets, gts = detect(model, dataset, batch_size=batch_size)
    return froc(dets, gts).average, dets


def create_model(cfg, data) -> torch.nn.Module:
    """The run's Faster R-CNN (weights drawn from torch's global generator: the runner seeds it),
    then ``cfg.weights`` loaded into it when set
    (:func:`~mombs.recipes.detection.models.load_detection_weights`)."""
    from .models import create_detection_model, load_detection_weights

    model = create_detection_model(
        cfg.model,
        num_classes=data.num_classes,
        in_channels=data.in_channels,
        min_size=data.image_size,
        max_size=data.image_size,
    )
    if cfg.weights is not None:
        load_detection_weights(model, cfg.weights)
    return model


def parts(cfg, data, model, device) -> TaskParts:
    """The training images (read item by item; batches move to the device in the loop), the
    evaluation splits, the seeded training step and the rest."""
    from .models import DET_FEATURE_MODULE

    return TaskParts(
        model=model,
        at=DET_FEATURE_MODULE[cfg.model],
        train_data=data.train,
        val=data.val,
        test=data.test,
        evaluate=evaluate_detection,
        loss_fn=None,
        fit_fn=det_fit,
        task="detection",
        step_fn=DetectionStep(cfg.seed),
        head=getattr(model, "fc", None),
    )
