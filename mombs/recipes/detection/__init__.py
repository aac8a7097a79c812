"""The detection recipe: CT slices with lesion boxes, a torchvision Faster R-CNN, FROC.

Data sets: a synthetic set with planted box noise (the synthetic CT slices
of the segmentation recipe, boxed), DeepLesion and your own COCO files
(``corpus``, ``coco``). Models:
torchvision's Faster R-CNN with a ResNet-50-FPN, MobileNet-v3-FPN or tiny
backbone (``models``). Metrics: FROC as lesion-detection papers count it and
the unmatched-detection score (``metrics``).
"""

from __future__ import annotations

from .. import Recipe, lazy
from .corpus import DET_DATASETS, DET_LOSSES, load_det_corpus
from .names import DET_MODELS
from .options import check

__all__ = ["RECIPE"]

#: Label noises a detection run can plant (synthetic set only).
NOISES = ("none", "annotation")

#: The recipe's functions whose modules import torch, by module: bound with
#: :func:`~mombs.recipes.lazy`, so that checking a config imports none of them.
_LAZY = {
    "training": ("create_model", "parts"),
    "summary": ("summarize", "row_extras"),
    "report": ("report_notes", "report_figures", "run_figures", "issue_pictures"),
}

#: The assessment a detection run makes unless told otherwise, chosen by measurement
#: (issue 22): one plain eval pass (k=1, alpha=0: the predictive entropy, no disturbance)
#: every second epoch from the pivot on, the losses read off the training pass. The K = 8
#: disturbed uncertainty ranks like the plain entropy (Spearman 0.996 to 0.9999 at alpha
#: 0.3, 3 seeds x 3 checkpoints: benchmarks/results/dense_fidelity_cpu.json) at about 8x
#: the cost. On the 2-core CPU, the tiny Faster R-CNN: every-2 1.06x random at a fidelity of 0.974,
#: where the paper's K=8 every epoch (reuse-loss) costs 1.23x at 0.978; ratios are noisy
#: within about 0.15 there (benchmarks/results/overhead_detection_plain_cpu.json,
#: overhead_detection_cpu.json); a detector's training forward gives no entropy to read.
#: The paper's assessment stays available by name: schedule=reuse-loss, k=8, alpha=0.3.
ASSESSMENT = {"schedule": "every-2", "k": 1, "alpha": 0.0}

#: The per-image label-issue score ``mombs diagnose`` ranks by: of the scores a default run
#: writes (its loss, uncertainty and their ranks; the boxes scores of :mod:`mombs.quality.boxes`;
#: cleanlab's on the run's predictions), the one with the highest mean AP on the choice seed of
#: ``benchmarks/dense_label_issues.py`` (``docs/quality.md``; a test checks this against the files).
ISSUE_SCORE = "spurious"
#: The score whose threshold flags an image (:data:`mombs.quality.DENSE_FLAGS`): the ranking's own.
ISSUE_FLAG = "spurious"

RECIPE = Recipe(
    name="detection",
    metric="froc",
    defaults={"dataset": "synthetic-det", "model": "tiny", "loss": "rpn", **ASSESSMENT},
    choices={"dataset": DET_DATASETS, "model": DET_MODELS, "loss": DET_LOSSES, "noise": NOISES},
    takes=("image_size", "noise_mix", "windows", "train_fraction", "annotations", "weights"),
    # Each of the K disturbed passes runs the RPN on every image of the batch.
    issue_score=ISSUE_SCORE,
    issue_flag=ISSUE_FLAG,
    assess_batch_size=16,
    check=check,
    load=load_det_corpus,
    columns={"sens@0.5": "sens@0.5FP %", "sens@1": "sens@1FP %", "sens@2": "sens@2FP %"},
    reads_data_dir=("deeplesion", "coco"),
    own_data=("coco",),
    **{name: lazy(f"{__name__}.{module}", name) for module, names in _LAZY.items() for name in names},
)
