"""The checks of a classification run's options that involve more than one field."""

from __future__ import annotations

import os

from .corpus import TRAIN_CLASS_SIZES, check_data_dir
from .imbalance import long_tailed_counts

__all__ = ["check"]


def check(cfg) -> None:
    """Cross-field checks of a classification config, then its data folder.

    Raises:
        ValueError: naming the option, its value and what is allowed.
    """
    if cfg.noise == "none" and cfg.noise_rate != 0:
        raise ValueError(f"noise_rate={cfg.noise_rate!r} has no effect with noise='none'; "
                         f"set noise=symmetric or noise=pair, or noise_rate=0")
    if cfg.noise == "pair" and not cfg.noise_rate < 0.5:
        raise ValueError(f"noise_rate={cfg.noise_rate!r} must be below 0.5 for noise='pair' "
                         f"(the true class must stay the majority)")
    if cfg.noise == "human":
        if cfg.dataset != "cifar100":
            raise ValueError(f"noise='human' needs dataset='cifar100', got dataset={cfg.dataset!r}")
        if not isinstance(cfg.noise_file, str) or not os.path.isfile(cfg.noise_file):
            raise ValueError(f"noise_file={cfg.noise_file!r} must be the CIFAR-100_human.pt file for "
                             f"noise='human' (from the CIFAR-N release)")
    elif cfg.noise_file is not None:
        raise ValueError(f"noise_file={cfg.noise_file!r} is only read with noise='human'")
    if cfg.img_max is not None and cfg.imbalance is None:
        raise ValueError(f"img_max={cfg.img_max!r} only applies to a long-tailed cut; set imbalance too")
    sizes = TRAIN_CLASS_SIZES[cfg.dataset]
    total = sum(sizes)
    if cfg.subset is not None and cfg.subset > total:
        raise ValueError(f"subset={cfg.subset!r} exceeds the {total} training images of {cfg.dataset}")
    if cfg.imbalance is not None and cfg.img_max is not None and cfg.subset is None:
        counts = long_tailed_counts(cfg.img_max, len(sizes), cfg.imbalance)
        over = [c for c in range(len(sizes)) if counts[c] > sizes[c]]
        if over:
            c = over[0]
            raise ValueError(f"img_max={cfg.img_max!r} asks for {counts[c]} images of class {c} of "
                             f"{cfg.dataset}, which has {sizes[c]}")
    check_data_dir(cfg.dataset, cfg.data_dir)
