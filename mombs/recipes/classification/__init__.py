"""The classification recipe: labelled images, a CNN, top-1 accuracy.

Data sets: scikit-learn's digits, Fashion-MNIST, CIFAR-10/100 (``corpus``),
with a seeded subset, a long-tailed cut (``imbalance``), symmetric, pair or
CIFAR-100N human label noise; your own images as an ImageFolder tree or a CSV
of paths and labels, read lazily (``folder``). Models: a small CNN, a CIFAR
ResNet-32, torchvision's ResNet-18/50 and EfficientNet-B0, optionally started
from a local state-dict file (``models``). Losses: cross-entropy and the
long-tail losses (``losses``).
"""

from __future__ import annotations

from .. import Recipe
from .corpus import DATASETS, load_corpus
from .losses import LOSSES
from .models import MODELS
from .options import check
from .report import report_figures, report_notes, run_figures
from .summary import row_extras, summarize
from .training import create_model, parts

__all__ = ["RECIPE"]

#: Label noises a classification run can plant.
NOISES = ("none", "symmetric", "pair", "human")


def training_images(cfg):
    """``(N, C, H, W)`` normalized training images of a run, rebuilt from its config
    (for your own files, a data set that reads image ``i`` when indexed)."""
    return load_corpus(cfg).x_train


RECIPE = Recipe(
    name="classification", metric="top1",
    defaults={"dataset": "fashion-mnist", "model": "small_cnn", "loss": "ce"},
    choices={"dataset": DATASETS, "model": MODELS, "loss": LOSSES, "noise": NOISES},
    takes=("imbalance", "img_max", "noise_file", "image_size", "weights", "normalize"),
    assess_batch_size=512, check=check, load=load_corpus, create_model=create_model, parts=parts,
    summarize=summarize, columns={"many": "many %", "medium": "med. %", "few": "few %"}, row_extras=row_extras,
    report_notes=report_notes, report_figures=report_figures, run_figures=run_figures,
    training_images=training_images, label_table=True,
    reads_data_dir=("fashion-mnist", "cifar10", "cifar100", "imagefolder", "csv"), own_data=("imagefolder", "csv"))
