"""What a classification run trains and scores with: the parts, the fit, the signals, the accuracy."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ...quality.signals import _given_label_margin, _given_label_prob
from .. import TaskParts
from .image_files import LabelledImages
from .losses import create_loss
from .models import FEATURE_MODULE, HEAD_PREFIX, classifier_head, load_weights
from .models import create_model as _create

__all__ = ["class_fit", "create_model", "evaluate", "parts", "training_signals"]

#: Datasets trained with random crops and flips unless ``augment`` says otherwise.
_AUGMENTED = ("cifar10", "cifar100")
#: Images per forward when evaluating a split read from files (decoded as it goes).
FILE_BATCH_SIZE = 64


def _evaluate_files(model, split: Dataset, batch_size: int) -> tuple[float, np.ndarray]:
    device = next(model.parameters()).device
    model.eval()
    preds, ys = [], []
    with torch.no_grad():
        for x, y in DataLoader(split, batch_size=batch_size, shuffle=False):
            preds.append(model(x.to(device)).argmax(1).cpu())
            ys.append(y)
    if not preds:
        return float("nan"), np.zeros(0, dtype=np.int64)
    pred, y = torch.cat(preds).numpy(), torch.cat(ys).numpy()
    return float((pred == y).mean()), pred


def evaluate(model, split, batch_size: int | None = None) -> tuple[float, np.ndarray]:
    """Top-1 accuracy and ``(n,)`` predictions over a whole split.

    Args:
        model: the network; put in eval mode.
        split: ``(x (n, C, H, W), y (n,))`` tensors on the model's device, or
            a data set of ``(x, y)`` items (images read from files), read in
            order and moved to the model's device batch by batch.
        batch_size: images per forward; default 1000 for tensors,
            :data:`FILE_BATCH_SIZE` for a data set.

    Returns:
        ``(top1, pred)``: accuracy in ``[0, 1]`` (NaN for an empty split),
        higher = better, and the predicted classes.
    """
    if isinstance(split, Dataset):
        return _evaluate_files(model, split, batch_size or FILE_BATCH_SIZE)
    batch_size = batch_size or 1000
    x, y = split
    model.eval()
    preds = []
    with torch.no_grad():
        for s in range(0, len(y), batch_size):
            preds.append(model(x[s : s + batch_size]).argmax(1).cpu())
    pred = torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)
    return float((pred == y.cpu().numpy()).mean()) if len(pred) else float("nan"), pred


def class_fit(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(B,)`` 1.0 where the forward predicts the given label, else 0.0."""
    return (logits.argmax(1) == y).float()


def training_signals(logits: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """What a classification training forward says about each sample's given label.

    Args:
        logits: ``(B, C)`` logits, ``C >= 2``.
        y: ``(B,)`` given labels.

    Returns:
        ``prob_given``: ``(B,)`` softmax probability of the given label (dataset
        cartography's confidence; higher = easier); ``margin``: ``(B,)`` the given
        label's logit minus the largest other logit (the AUM margin; negative
        when another class wins); ``pred``: ``(B,)`` the argmax.
    """
    logits = logits.detach().float()
    return {
        "prob_given": _given_label_prob(logits, y),
        "margin": _given_label_margin(logits, y),
        "pred": logits.argmax(1),
    }


def create_model(cfg, data) -> torch.nn.Module:
    """The run's network (weights drawn from torch's global generator: the runner seeds it),
    started from ``cfg.weights`` where given (:func:`~.models.load_weights`)."""
    model = _create(cfg.model, num_classes=data.num_classes, in_channels=data.x_train.shape[1])
    if cfg.weights is not None:
        load_weights(model, cfg.weights, head=HEAD_PREFIX[cfg.model])
    return model


def parts(cfg, data, model, device) -> TaskParts:
    """The training set and the evaluation splits, the loss and the rest.

    In-memory images go to ``device`` whole; images read from files stay
    data sets of ``(x, y)`` items, each batch moved to ``device`` as it is read.
    """

    def on_device(x, y):
        return x.to(device), torch.as_tensor(y).to(device)

    if torch.is_tensor(data.x_train):
        train, val, test = (
            TensorDataset(*on_device(data.x_train, data.y_train)),
            on_device(data.x_val, data.y_val),
            on_device(data.x_test, data.y_test),
        )
    else:
        train, val, test = (
            LabelledImages(data.x_train, data.y_train),
            LabelledImages(data.x_val, data.y_val),
            LabelledImages(data.x_test, data.y_test),
        )
    counts = np.bincount(data.y_train, minlength=data.num_classes)
    return TaskParts(
        model=model,
        at=FEATURE_MODULE[cfg.model],
        train_data=train,
        val=val,
        test=test,
        evaluate=evaluate,
        loss_fn=create_loss(cfg.loss, class_counts=counts, epochs=cfg.epochs).to(device),
        fit_fn=class_fit,
        task="classification",
        signal_fn=training_signals,
        head=classifier_head(cfg.model, model),
        augment=cfg.augment if cfg.augment is not None else cfg.dataset in _AUGMENTED,
    )
