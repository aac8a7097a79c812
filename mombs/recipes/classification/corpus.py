"""A run's data, built from its config: reader -> subset -> long tail -> split -> label noise.

The built-in sets are read into memory; your own images (``imagefolder``,
``csv``: :mod:`.folder`) are listed, checked and split here and read from
their files as training asks for them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .folder import (
    FILE_DATASETS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SPLITS,
    assign_splits,
    channel_stats,
    channels_of,
    read_files,
    scan_images,
)
from .imbalance import long_tailed_indices, shot_groups
from .label_noise import pair_noise, symmetric_noise
from .names import wants_rgb

if TYPE_CHECKING:  # torch is imported where data is built: a config is checked without it
    import torch

__all__ = ["BUILT_IN", "Corpus", "DATASETS", "FILE_DATASETS", "TRAIN_CLASS_SIZES", "check_data_dir", "load_corpus"]

#: The data sets this package reads itself, into memory.
BUILT_IN = ("digits", "fashion-mnist", "cifar10", "cifar100")
#: Data set names understood by :func:`load_corpus`: the built-in ones, then your own files.
DATASETS = BUILT_IN + FILE_DATASETS
#: Training images the ``dataset`` normalization of your files reads for its mean and std
#: (a seeded sample; all of them when there are fewer).
STATS_SAMPLE = 2048

#: Training images per class of each data set as :func:`load_corpus` reads it
#: (digits: its fixed 1,347-image training split), so that ``subset`` and
#: ``img_max`` can be checked before anything is loaded.
TRAIN_CLASS_SIZES = {
    "digits": (137, 140, 135, 134, 143, 128, 131, 140, 133, 126),
    "fashion-mnist": (6000,) * 10,
    "cifar10": (5000,) * 10,
    "cifar100": (500,) * 100,
}


def check_data_dir(dataset: str, data_dir) -> None:
    """Refuses a data folder that was asked for and does not exist.

    An explicit ``data_dir`` (or ``$MOMBS_DATA`` for Fashion-MNIST, its only
    reader of the variable) that points nowhere is a typo to report, not a
    reason to read the data from somewhere else.

    Raises:
        ValueError: naming the folder and where it came from.
    """
    if data_dir is not None:
        if not Path(data_dir).is_dir():
            raise ValueError(
                f"data_dir={str(data_dir)!r} is not an existing folder; give the folder that "
                f"holds the {dataset} files, or leave data_dir out for the default places"
            )
    elif dataset == "fashion-mnist" and os.environ.get("MOMBS_DATA"):
        env = os.environ["MOMBS_DATA"]
        if not Path(env).is_dir():
            raise ValueError(
                f"MOMBS_DATA={env!r} (environment variable) is not an existing folder; "
                f"point it at the Fashion-MNIST files or unset it"
            )


@dataclass
class Corpus:
    """A run's splits. Images are normalized float ``(N, C, H, W)`` tensors
    (built-in sets) or :class:`~.folder.ImageFiles` that read them from files
    on demand (your own: ``len``, ``[i]`` and ``shape`` as a tensor's); labels
    are int64 numpy arrays. ``y_train``/``y_val`` are the labels trained on
    (noisy where noise was added); the clean ones and the noise mask are kept.

    ``sources`` describes each training sample's origin, in training order:
    ``{"path": (N_train,) str array}``, a file path relative to ``data_dir``
    (your files) or ``"{dataset}/train#{i}"``, ``i`` the index into the set's
    training file (built-in sets). ``splits`` lists the same names per split:
    ``{"train": [...], "val": [...], "test": [...]}``. ``classes`` names the
    class ids of your files; ``data_dir`` is where they were read.
    """

    name: str
    num_classes: int
    x_train: torch.Tensor
    y_train: np.ndarray
    y_train_clean: np.ndarray
    noisy_train: np.ndarray | None
    x_val: torch.Tensor
    y_val: np.ndarray
    x_test: torch.Tensor
    y_test: np.ndarray
    shot_groups: dict | None = None
    sources: dict | None = None
    splits: dict | None = None
    classes: list | None = None
    data_dir: str | None = None

    def describe(self) -> dict:
        import torch

        d = {
            "name": self.name,
            "num_classes": self.num_classes,
            "train": int(len(self.y_train)),
            "val": int(len(self.y_val)),
            "test": int(len(self.y_test)),
            "train_class_counts": np.bincount(self.y_train_clean, minlength=self.num_classes).tolist(),
        }
        if self.noisy_train is not None:
            d["train_noise_rate"] = float(self.noisy_train.mean())
        if self.data_dir is not None:
            d["data_dir"] = self.data_dir
        if self.classes is not None:
            d["classes"] = list(self.classes)
        if not torch.is_tensor(self.x_train):
            d["image_shape"] = list(self.x_train.shape[1:])
        return d


def _read(name: str, data_dir):
    """``(x_train uint8/float NHWC, y_train, x_test, y_test, num_classes)``."""
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = (d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
        perm = np.random.default_rng([0, 0xD161]).permutation(len(x))  # a fixed test split
        test, train = perm[:450], perm[450:]
        return x[train], d.target[train].astype(np.int64), x[test], d.target[test].astype(np.int64), 10
    if name == "fashion-mnist":
        from .fashion_mnist import load_fashion_mnist

        xtr, ytr = load_fashion_mnist("train", data_dir)
        xte, yte = load_fashion_mnist("test", data_dir)
        return xtr[..., None], ytr, xte[..., None], yte, 10
    if name in ("cifar10", "cifar100"):
        from .cifar import load_cifar

        c = 10 if name == "cifar10" else 100
        xtr, ytr = load_cifar(c, "train", data_dir or ".")
        xte, yte = load_cifar(c, "test", data_dir or ".")
        return xtr, ytr, xte, yte, c
    raise ValueError(f"dataset={name!r} is not known; choose one of {list(DATASETS)}")


def _names(dataset: str, split: str, indices) -> np.ndarray:
    """``(n,)`` str array ``"{dataset}/{split}#{i}"``: built-in samples named by their index in the set's file."""
    return np.array([f"{dataset}/{split}#{i}" for i in indices], dtype=str)


def _load_files(cfg) -> Corpus:
    """Your images: listed and checked (every file opened once), split, read lazily."""
    from .image_files import ImageFiles

    table = read_files(cfg.dataset, cfg.data_dir)
    modes, sizes = scan_images(table.root, table.paths)
    if cfg.image_size is None:
        if len(set(sizes)) > 1:
            j = next(i for i, s in enumerate(sizes) if s != sizes[0])
            raise ValueError(
                f"images differ in size ({table.paths[0]} is {sizes[0][0]}x{sizes[0][1]}, "
                f"{table.paths[j]} is {sizes[j][0]}x{sizes[j][1]}); set image_size to resize "
                f"every image to one square side"
            )
        shape = (sizes[0][1], sizes[0][0])
    else:
        shape = (cfg.image_size, cfg.image_size)
    idx = assign_splits(table, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=cfg.seed)
    channels = channels_of(modes, rgb=wants_rgb(cfg.model) or cfg.normalize == "imagenet")
    x = {
        s: ImageFiles(table.root, table.paths[idx[s]], channels=channels, image_shape=shape, size=cfg.image_size)
        for s in SPLITS
    }
    mean = std = None
    if cfg.normalize in (None, "dataset"):
        n = len(x["train"])
        rng = np.random.default_rng([cfg.seed, 0x57A7])
        pick = np.arange(n) if n <= STATS_SAMPLE else np.sort(rng.choice(n, STATS_SAMPLE, replace=False))
        mean, std = channel_stats(x["train"], pick)
    elif cfg.normalize == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    for images in x.values():
        images.set_normalization(mean, std)
    y = {s: table.labels[idx[s]] for s in SPLITS}
    return Corpus(
        cfg.dataset,
        len(table.classes),
        x["train"],
        y["train"],
        y["train"].copy(),
        None,
        x["val"],
        y["val"],
        x["test"],
        y["test"],
        None,
        sources={"path": table.paths[idx["train"]]},
        splits={s: table.paths[idx[s]].tolist() for s in SPLITS},
        classes=list(table.classes),
        data_dir=str(cfg.data_dir),
    )


def load_corpus(cfg) -> Corpus:
    """Builds the splits a :class:`~mombs.train.RunConfig` asks for. All draws use
    private generators seeded from ``cfg.seed``."""
    import torch

    cfg = cfg.resolved() if hasattr(cfg, "resolved") else cfg
    if cfg.dataset in FILE_DATASETS:
        return _load_files(cfg)
    xtr, ytr, xte, yte, num_classes = _read(cfg.dataset, cfg.data_dir)
    rng = np.random.default_rng([cfg.seed, 0xC0DE])
    keep = np.arange(len(ytr))
    if cfg.subset is not None:
        if cfg.subset > len(ytr):
            raise ValueError(f"subset={cfg.subset} exceeds the {len(ytr)} training images of {cfg.dataset}")
        keep = np.sort(rng.choice(len(ytr), size=cfg.subset, replace=False))
    groups = None
    if cfg.imbalance is not None:
        lt = long_tailed_indices(ytr[keep], cfg.imbalance, img_max=cfg.img_max, seed=cfg.seed)
        keep = keep[lt]
    # Validation: a seeded share of the (long-tailed) training set, for choices only.
    perm = rng.permutation(keep.size)
    n_val = max(1, int(round(cfg.val_fraction * keep.size)))
    val_idx, tr_idx = np.sort(keep[perm[:n_val]]), np.sort(keep[perm[n_val:]])
    y_clean = ytr[tr_idx]
    y_train, y_val, noisy = y_clean.copy(), ytr[val_idx].copy(), None
    if cfg.noise == "symmetric":
        y_train, noisy = symmetric_noise(y_clean, cfg.noise_rate, num_classes, seed=cfg.seed)
        y_val, _ = symmetric_noise(y_val, cfg.noise_rate, num_classes, seed=cfg.seed + 1)
    elif cfg.noise == "pair":
        y_train, noisy = pair_noise(y_clean, cfg.noise_rate, num_classes, seed=cfg.seed)
        y_val, _ = pair_noise(y_val, cfg.noise_rate, num_classes, seed=cfg.seed + 1)
    elif cfg.noise == "human":
        from .cifar import load_cifar100n

        if cfg.dataset != "cifar100" or not cfg.noise_file:
            raise ValueError("noise='human' needs dataset='cifar100' and noise_file=CIFAR-100_human.pt")
        human = load_cifar100n(cfg.noise_file)["noisy_label"]
        y_train, y_val = human[tr_idx], human[val_idx]
        noisy = y_train != y_clean
    if cfg.imbalance is not None:
        groups = shot_groups(np.bincount(y_clean, minlength=num_classes))

    def to_tensor(x):
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).float().div_(255)

    x_train, x_val, x_test = to_tensor(xtr[tr_idx]), to_tensor(xtr[val_idx]), to_tensor(xte)
    if cfg.normalize in (None, "dataset"):
        mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
        std = x_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    elif cfg.normalize == "imagenet":  # options.check allows it for the colour sets only
        mean, std = (torch.tensor(v).reshape(1, -1, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    else:
        mean, std = torch.zeros(()), torch.ones(())
    norm = lambda t: (t - mean) / std  # noqa: E731
    train_names = _names(cfg.dataset, "train", tr_idx)
    # No splits.json for a public set: its splits follow from the seed, and listing
    # Fashion-MNIST's 70,000 names would add 1.5 MB to every run folder.
    return Corpus(
        cfg.dataset,
        num_classes,
        norm(x_train),
        y_train,
        y_clean,
        noisy,
        norm(x_val),
        y_val,
        norm(x_test),
        yte,
        groups,
        sources={"path": train_names},
    )
