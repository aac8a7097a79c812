"""The checks of a classification run's options that involve more than one field."""

from __future__ import annotations

import os
from pathlib import Path

from .corpus import FILE_DATASETS, TRAIN_CLASS_SIZES, check_data_dir
from .imbalance import long_tailed_counts
from .names import wants_rgb

__all__ = ["check"]

#: The built-in sets of grey images.
_GREY = ("digits", "fashion-mnist")
#: What each reader of your files needs as ``data_dir``.
_WHAT_TO_GIVE = {
    "imagefolder": "data_dir=FOLDER with one sub-folder of images per class (or train/, val/ and test/ "
    "folders of them)",
    "csv": "data_dir=FILE.csv with the columns path,label (and optionally split); paths relative to its folder",
}


def _check_files(cfg) -> None:
    """Your own images: a data_dir of the right kind, and none of the built-in sets' cuts and noises."""
    name = cfg.dataset
    for option, value in (("subset", cfg.subset), ("imbalance", cfg.imbalance), ("img_max", cfg.img_max)):
        if value is not None:
            raise ValueError(
                f"{option}={value!r} applies to the built-in data sets only, not to dataset={name!r}; leave it out"
            )
    if cfg.noise != "none":
        raise ValueError(
            f"noise={cfg.noise!r} plants label noise in the built-in data sets only, not in "
            f"dataset={name!r}; leave noise out"
        )
    if cfg.data_dir is None:
        raise ValueError(f"dataset={name!r} reads your images: give {_WHAT_TO_GIVE[name]}")
    path = Path(cfg.data_dir)
    if name == "imagefolder" and not path.is_dir():
        raise ValueError(
            f"data_dir={cfg.data_dir!r} is not an existing folder; dataset='imagefolder' reads "
            f"{_WHAT_TO_GIVE[name].split('=', 1)[1]}"
        )
    if name == "csv" and not path.is_file():
        raise ValueError(
            f"data_dir={cfg.data_dir!r} is not an existing file; dataset='csv' reads "
            f"{_WHAT_TO_GIVE[name].split('=', 1)[1]}"
        )


def _check_built_in(cfg) -> None:
    """The options of your own images that the built-in sets cannot take."""
    name = cfg.dataset
    if cfg.image_size is not None:
        raise ValueError(
            f"image_size={cfg.image_size!r} resizes your own images (dataset='imagefolder' or "
            f"'csv'); dataset={name!r} is used at its own size"
        )
    if cfg.test_fraction is not None:
        raise ValueError(
            f"test_fraction={cfg.test_fraction!r} draws a test split from your own images; "
            f"dataset={name!r} has its own test split"
        )
    if name in _GREY and cfg.normalize == "imagenet":
        raise ValueError(
            f"normalize='imagenet' needs colour images; dataset={name!r} is grey: use normalize='dataset' or 'none'"
        )
    if name in _GREY and wants_rgb(cfg.model):
        raise ValueError(
            f"model={cfg.model!r} takes 3-channel images; dataset={name!r} is grey: use "
            f"model='small_cnn' or 'resnet32', or a colour data set"
        )


def check(cfg) -> None:
    """Cross-field checks of a classification config, then its data folder (or file).

    Nothing is read but the file system's answer to "does this exist"; the
    readers check the files themselves before anything trains.

    Raises:
        ValueError: naming the option, its value and what is allowed.
    """
    if cfg.weights is not None and not Path(cfg.weights).is_file():
        raise ValueError(
            f"weights={cfg.weights!r} is not an existing file; give a local state-dict file "
            f"(torch.save(model.state_dict(), PATH))"
        )
    if cfg.noise == "none" and cfg.noise_rate != 0:
        raise ValueError(
            f"noise_rate={cfg.noise_rate!r} has no effect with noise='none'; "
            f"set noise=symmetric or noise=pair, or noise_rate=0"
        )
    if cfg.noise == "pair" and not cfg.noise_rate < 0.5:
        raise ValueError(
            f"noise_rate={cfg.noise_rate!r} must be below 0.5 for noise='pair' (the true class must stay the majority)"
        )
    if cfg.noise == "human":
        if cfg.dataset != "cifar100":
            raise ValueError(f"noise='human' needs dataset='cifar100', got dataset={cfg.dataset!r}")
        if not isinstance(cfg.noise_file, str) or not os.path.isfile(cfg.noise_file):
            raise ValueError(
                f"noise_file={cfg.noise_file!r} must be the CIFAR-100_human.pt file for "
                f"noise='human' (from the CIFAR-N release)"
            )
    elif cfg.noise_file is not None:
        raise ValueError(f"noise_file={cfg.noise_file!r} is only read with noise='human'")
    if cfg.img_max is not None and cfg.imbalance is None:
        raise ValueError(f"img_max={cfg.img_max!r} only applies to a long-tailed cut; set imbalance too")
    if cfg.dataset in FILE_DATASETS:
        _check_files(cfg)
        return
    _check_built_in(cfg)
    sizes = TRAIN_CLASS_SIZES[cfg.dataset]
    total = sum(sizes)
    if cfg.subset is not None and cfg.subset > total:
        raise ValueError(f"subset={cfg.subset!r} exceeds the {total} training images of {cfg.dataset}")
    if cfg.imbalance is not None and cfg.img_max is not None and cfg.subset is None:
        counts = long_tailed_counts(cfg.img_max, len(sizes), cfg.imbalance)
        over = [c for c in range(len(sizes)) if counts[c] > sizes[c]]
        if over:
            c = over[0]
            raise ValueError(
                f"img_max={cfg.img_max!r} asks for {counts[c]} images of class {c} of "
                f"{cfg.dataset}, which has {sizes[c]}"
            )
    check_data_dir(cfg.dataset, cfg.data_dir)
