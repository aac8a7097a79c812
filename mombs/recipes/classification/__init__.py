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

from .. import Recipe, lazy
from .corpus import DATASETS, load_corpus
from .names import LOSS_NAMES, MODEL_NAMES
from .options import check

__all__ = ["RECIPE"]

#: Label noises a classification run can plant.
NOISES = ("none", "symmetric", "pair", "human")

#: The recipe's functions whose modules import torch, by module: bound with
#: :func:`~mombs.recipes.lazy`, so that checking a config imports none of them.
_LAZY = {
    "training": ("create_model", "parts"),
    "summary": ("summarize", "row_extras"),
    "report": ("report_notes", "report_figures", "run_figures"),
}


def training_images(cfg):
    """``(N, C, H, W)`` normalized training images of a run, rebuilt from its config
    (for your own files, a data set that reads image ``i`` when indexed)."""
    return load_corpus(cfg).x_train


#: The assessment a classification run makes unless told otherwise: the paper's K = 8
#: disturbed predictions at alpha 0.3, measured after every epoch from the pivot on
#: with the training pass's losses (``reuse-loss``). For the CPU's small CNN the
#: disturbance costs almost nothing beyond one eval pass (only the head runs K
#: times: benchmarks/results/dense_fidelity_cpu.json, K=8 pass 0.31x an epoch
#: against 0.32x for a plain pass), so the paper's K stays.
ASSESSMENT = {"schedule": "reuse-loss", "k": 8, "alpha": 0.3}

RECIPE = Recipe(
    name="classification",
    metric="top1",
    defaults={"dataset": "fashion-mnist", "model": "small_cnn", "loss": "ce", **ASSESSMENT},
    choices={"dataset": DATASETS, "model": MODEL_NAMES, "loss": LOSS_NAMES, "noise": NOISES},
    takes=("imbalance", "img_max", "noise_file", "image_size", "weights", "normalize"),
    assess_batch_size=512,
    check=check,
    load=load_corpus,
    columns={"many": "many %", "medium": "med. %", "few": "few %"},
    training_images=training_images,
    label_table=True,
    reads_data_dir=("fashion-mnist", "cifar10", "cifar100", "imagefolder", "csv"),
    own_data=("imagefolder", "csv"),
    **{name: lazy(f"{__name__}.{module}", name) for module, names in _LAZY.items() for name in names},
)
