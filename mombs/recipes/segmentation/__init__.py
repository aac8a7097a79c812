"""The segmentation recipe: CT slices with lesion masks, a MONAI U-Net, lesion Dice.

Data sets: a synthetic CT set with planted mask corruptions, the COVID-19 CT
set of Ma et al., MedSeg, and your own Medical Segmentation Decathlon or nnU-Net
task folder (``corpus``, ``decathlon``). Models: MONAI's ``UNet`` and
``BasicUNet`` (``models``). Metrics: per-image Dice, small-lesion Dice and
lesion-wise sensitivity (``metrics``).
"""

from __future__ import annotations

from .. import Recipe, lazy
from .corpus import SEG_DATASETS, SEG_LOSSES, load_seg_corpus
from .models import SEG_MODELS
from .options import check

__all__ = ["RECIPE"]

#: Label noises a segmentation run can plant (synthetic set only).
NOISES = ("none", "annotation")

#: The recipe's functions whose modules import torch, by module: bound with
#: :func:`~mombs.recipes.lazy`, so that checking a config imports none of them.
_LAZY = {
    "training": ("create_model", "parts"),
    "summary": ("summarize", "row_extras"),
    "report": ("report_notes", "run_figures", "issue_pictures"),
}

#: The assessment a segmentation run makes unless told otherwise, chosen by measurement
#: (issue 22): one plain eval pass (k=1, alpha=0: the predictive entropy, no disturbance)
#: every second epoch from the pivot on, the losses read off the training pass. The K = 8
#: disturbed uncertainty ranks like the plain entropy (Spearman 0.996 to 0.9999 at alpha
#: 0.3, 3 seeds x 3 checkpoints: benchmarks/results/dense_fidelity_cpu.json) at about 8x
#: the cost. On the 2-core CPU, the U-Net: every-2 1.05x random at a fidelity of 0.978 against the K=8 pass,
#: where the paper's K=8 every epoch (reuse-loss) costs 2.04x at 0.990 and the training
#: forward's entropy (train-entropy) 1.03x at 0.907 (benchmarks/results/
#: overhead_segmentation_plain_cpu.json, overhead_segmentation_cpu.json).
#: The paper's assessment stays available by name: schedule=reuse-loss, k=8, alpha=0.3.
ASSESSMENT = {"schedule": "every-2", "k": 1, "alpha": 0.0}

#: The per-image label-issue score ``mombs diagnose`` ranks by: of the scores a default run
#: writes (its loss, uncertainty and their ranks; the masks scores of :mod:`mombs.quality.masks`;
#: cleanlab's on the run's predictions), the one with the highest mean AP on the choice seed of
#: ``benchmarks/dense_label_issues.py`` (``docs/quality.md``; a test checks this against the files).
ISSUE_SCORE = "loss"
#: The score whose threshold flags an image (:data:`mombs.quality.DENSE_FLAGS`): a loss has none.
ISSUE_FLAG = "disagreement"

RECIPE = Recipe(
    name="segmentation",
    metric="dice",
    defaults={"dataset": "synthetic-ct", "model": "unet", "loss": "dice-ce", **ASSESSMENT},
    choices={"dataset": SEG_DATASETS, "model": SEG_MODELS, "loss": SEG_LOSSES, "noise": NOISES},
    takes=("image_size", "noise_mix", "windows", "foreground_only", "intensity_window"),
    # Every slice's K disturbed predictions are whole maps: smaller batches than classification's.
    issue_score=ISSUE_SCORE,
    issue_flag=ISSUE_FLAG,
    assess_batch_size=32,
    check=check,
    load=load_seg_corpus,
    columns={"small_dice": "small-lesion Dice %", "lesion_sensitivity": "lesion sens. %"},
    reads_data_dir=("covid-ct", "medseg-covid", "msd", "nnunet"),
    own_data=("msd", "nnunet"),
    **{name: lazy(f"{__name__}.{module}", name) for module, names in _LAZY.items() for name in names},
)
