"""The checks of a segmentation run's options that involve more than one field."""

from __future__ import annotations

from ..._checks import check_choice
from .corpus import check_seg_data_dir
from .decathlon import DECATHLON_DATASETS, DEFAULT_TEST_FRACTION

__all__ = ["WINDOWS", "check"]

#: CT windows as image channels: the lung window alone, or the paper's three.
WINDOWS = ("lung", "three")


def check(cfg) -> None:
    """Cross-field checks of a segmentation config, then its data folder.

    Raises:
        ValueError: naming the option, its value and what is allowed.
    """
    from .synthetic_ct import _resolve_mix

    if cfg.windows is not None:
        check_choice("windows", cfg.windows, WINDOWS)
    if cfg.augment:
        raise ValueError(
            "augment=True does not apply to task='segmentation': the runner's crop and flip "
            "move the image but not its mask; set augment=false or null"
        )
    synthetic = cfg.dataset == "synthetic-ct"
    volumes = cfg.dataset in DECATHLON_DATASETS
    if cfg.noise == "annotation" and not synthetic:
        raise ValueError(
            f"noise='annotation' plants mask corruptions in dataset='synthetic-ct' only, got dataset={cfg.dataset!r}"
        )
    if cfg.noise == "none" and cfg.noise_rate != 0:
        raise ValueError(
            f"noise_rate={cfg.noise_rate!r} has no effect with noise='none'; set noise=annotation or noise_rate=0"
        )
    if cfg.noise_mix is not None:
        if cfg.noise != "annotation":
            raise ValueError(f"noise_mix={cfg.noise_mix!r} only applies with noise='annotation'")
        if not isinstance(cfg.noise_mix, dict):
            raise ValueError(f"noise_mix={cfg.noise_mix!r} must be a mapping of corruption: weight")
        _resolve_mix(cfg.noise_mix)  # names and weights, with its own message
    if volumes and cfg.windows is not None:
        raise ValueError(
            f"windows={cfg.windows!r} applies to the HU sets (synthetic-ct, covid-ct, medseg-covid); "
            f"for dataset={cfg.dataset!r} give intensity_window=[lo, hi] or null (per-volume z-score)"
        )
    if not volumes:
        for name in ("foreground_only", "intensity_window", "test_fraction"):
            if getattr(cfg, name) is not None:  # never silently ignored
                raise ValueError(
                    f"{name}={getattr(cfg, name)!r} applies to a task folder of your own "
                    f"(dataset={' or '.join(map(repr, DECATHLON_DATASETS))}), not to "
                    f"dataset={cfg.dataset!r}"
                )
    if volumes:
        test = cfg.test_fraction if cfg.test_fraction is not None else DEFAULT_TEST_FRACTION
        if cfg.val_fraction + test >= 1:
            raise ValueError(
                f"val_fraction={cfg.val_fraction!r} and test_fraction={test!r} leave no training "
                f"cases for dataset={cfg.dataset!r}; their sum must be below 1"
            )
    if cfg.image_size is not None and (synthetic or volumes) and cfg.image_size % 16:
        raise ValueError(
            f"image_size={cfg.image_size!r} must be a multiple of 16 (the U-Nets halve the slice 3 or 4 times)"
        )
    check_seg_data_dir(cfg.dataset, cfg.data_dir)
