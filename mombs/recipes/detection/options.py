"""The checks of a detection run's options that involve more than one field."""

from __future__ import annotations

import os

from ..._checks import check_choice
from ...schedule import SCHEDULES
from ...strategies import STRATEGY_REGISTRY
from .corpus import check_det_data_dir, det_noise_options

__all__ = ["WINDOWS", "check"]

#: CT windows of the synthetic set as image channels: the lung window alone, or three.
WINDOWS = ("lung", "three")


def check(cfg) -> None:
    """Cross-field checks of a detection config, then its data folder.

    Raises:
        ValueError: naming the option, its value and what is allowed.
    """
    if cfg.windows is not None:
        check_choice("windows", cfg.windows, WINDOWS)
    if cfg.augment:
        raise ValueError(
            "augment=True does not apply to task='detection': the runner's crop and flip "
            "move the image but not its boxes; set augment=false or null"
        )
    synthetic = cfg.dataset == "synthetic-det"
    if cfg.noise == "annotation" and not synthetic:
        raise ValueError(
            f"noise='annotation' plants box noise in dataset='synthetic-det' only, "
            f"got dataset={cfg.dataset!r} (DeepLesion's and COCO files' boxes are as annotated)"
        )
    if cfg.noise == "none" and cfg.noise_rate != 0:
        raise ValueError(
            f"noise_rate={cfg.noise_rate!r} has no effect with noise='none'; "
            f"set noise=annotation (noise_rate: share of lesions without a box) or noise_rate=0"
        )
    if cfg.noise_mix is not None and cfg.noise != "annotation":
        raise ValueError(f"noise_mix={cfg.noise_mix!r} only applies with noise='annotation'")
    det_noise_options(cfg.noise, cfg.noise_rate, cfg.noise_mix)  # names and shares, its own message
    if cfg.windows is not None and not synthetic:
        raise ValueError(
            f"windows={cfg.windows!r} only applies to dataset='synthetic-det' (DeepLesion's "
            f"three channels are the key slice and its neighbours)"
        )
    if cfg.windows == "lung" and cfg.model != "tiny":
        raise ValueError(
            f"windows='lung' gives 1-channel images and model={cfg.model!r} takes 3 channels; "
            f"use windows=three or model=tiny"
        )
    if (
        synthetic
        and cfg.subset is not None
        and cfg.train_fraction is not None
        and round(cfg.train_fraction * cfg.subset) < 1
    ):
        raise ValueError(f"train_fraction={cfg.train_fraction!r} of subset={cfg.subset!r} keeps no slice")
    schedule = STRATEGY_REGISTRY[cfg.strategy].schedule or cfg.schedule
    if STRATEGY_REGISTRY[cfg.strategy].measure is not None and SCHEDULES[schedule].uncertainty_source != "pass":
        passes = sorted(k for k, v in SCHEDULES.items() if v.uncertainty_source == "pass")
        raise ValueError(
            f"strategy={cfg.strategy!r} with schedule={schedule!r} reads the uncertainty off "
            f"the training forward, which for a torchvision detector is a loss dict; "
            f"task='detection' needs a schedule whose uncertainty comes from an assessment "
            f"pass: one of {passes}"
        )
    if cfg.test_fraction is not None and cfg.dataset != "coco":  # never silently ignored
        raise ValueError(
            f"test_fraction={cfg.test_fraction!r} only applies to dataset='coco' (the other sets "
            f"come with their test split)"
        )
    if cfg.annotations is not None and cfg.dataset != "coco":
        raise ValueError(
            f"annotations={cfg.annotations!r} only applies to dataset='coco' (the COCO JSON file "
            f"in data_dir), got dataset={cfg.dataset!r}"
        )
    if cfg.weights is not None and not os.path.isfile(cfg.weights):
        raise ValueError(
            f"weights={cfg.weights!r} is not a file; give a local state-dict file "
            f"(torch.save(model.state_dict(), path)). Nothing is downloaded."
        )
    check_det_data_dir(cfg.dataset, cfg.data_dir, cfg.annotations)
