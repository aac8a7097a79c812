"""Data quality from training signals: a label-issue score, a flag and a data map per sample.

A training run already computes, for every sample, its loss, and mombs adds
its uncertainty (``shared/METHOD.md`` §1). Kept per epoch (the tracker's
``keep_history=True``, the runner's ``history: true``), the same run also gives
the training-dynamics figures of AUM (Pleiss et al. 2020) and dataset
cartography (Swayamdipta et al. 2020). Split as cleanlab splits its
``rank`` and ``filter``:

==========  =================================================================
module      what it owns
==========  =================================================================
signals     per-step figures of one training forward: the given label's
            margin and probability
scores      pure per-sample scores (AUM, cartography) and how well a score
            finds known noise (:func:`detection_metrics`, :func:`noise_detection`)
table       :func:`data_quality`: a row per sample, ranked (higher = more
            likely a wrong label); :func:`write_table`: CSV and Parquet
report      :func:`write_report`: the data maps and picture grids
masks       per-image scores of segmentation masks (:func:`mask_issue_scores`)
boxes       per-image scores of detection boxes (:func:`box_issue_scores`)
measure     :func:`measure_label_issues`: the table from a user's own loop,
            after one eval-mode pass with the current model
==========  =================================================================

``mombs diagnose RUN_DIR`` (:mod:`mombs.diagnose`) does all of it for a
finished run folder. ``docs/quality.md`` holds the measured comparison with
cleanlab, AUM with its threshold samples and cartography.
"""

from .boxes import BOX_KINDS, BOX_SCORES, box_issue_kind, box_issue_scores, cleanlab_box_scores
from .masks import MASK_KINDS, MASK_SCORES, mask_issue_kind, mask_issue_map, mask_issue_scores
from .measure import eval_pass, measure_label_issues
from .report import write_report
from .scores import (
    area_under_margin,
    aum_threshold,
    cartography,
    detection_metrics,
    noise_detection,
)
from .signals import given_label_margin, given_label_prob
from .table import DENSE_FLAGS, HISTORY_KEYS, SCORES, DataQuality, data_quality, dense_quality, dense_score, write_table

__all__ = [
    "BOX_KINDS",
    "BOX_SCORES",
    "MASK_KINDS",
    "MASK_SCORES",
    "box_issue_kind",
    "box_issue_scores",
    "cleanlab_box_scores",
    "mask_issue_kind",
    "mask_issue_map",
    "mask_issue_scores",
    "measure_label_issues",
    "DENSE_FLAGS",
    "HISTORY_KEYS",
    "SCORES",
    "DataQuality",
    "area_under_margin",
    "aum_threshold",
    "cartography",
    "data_quality",
    "dense_quality",
    "dense_score",
    "detection_metrics",
    "eval_pass",
    "given_label_margin",
    "given_label_prob",
    "noise_detection",
    "write_report",
    "write_table",
]
