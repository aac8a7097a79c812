"""A detection run's data, built from its config: the synthetic detection set, DeepLesion or your COCO files.

The detection counterpart of :mod:`mombs.recipes.classification.corpus` and
:mod:`mombs.recipes.segmentation.corpus`. Every split is a map-style data set of
``(image (C, H, W) float32, {"boxes": (n, 4), "labels": (n,)})`` items, as
torchvision's detectors take them; DeepLesion's slices and COCO images are
read from disk when an item is asked for, never all at once. Nothing here imports torchvision or
reads a PNG until data is actually read.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DET_DATASETS",
    "DET_LOSSES",
    "DET_NOISE_DEFAULTS",
    "DET_SYNTHETIC_DEFAULT_TRAIN",
    "DET_SYNTHETIC_EVAL_SIZES",
    "DetCorpus",
    "check_det_data_dir",
    "det_noise_options",
    "load_det_corpus",
]

#: Detection data set names understood by :func:`load_det_corpus`.
DET_DATASETS = ("synthetic-det", "deeplesion", "coco")
#: Detection losses: ``"rpn"`` trains on the sum of torchvision's four Faster
#: R-CNN losses and gives the assessor each image's RPN objectness loss.
DET_LOSSES = ("rpn",)
#: Training slices of the synthetic set when ``subset`` is not set: the 100%
#: regime; ``train_fraction`` keeps a prefix of it (same images, same box noise).
DET_SYNTHETIC_DEFAULT_TRAIN = 200
#: Validation and test slices of the synthetic set, fixed whatever the training
#: size, so that the 25/50/100% regimes are scored on the same slices.
DET_SYNTHETIC_EVAL_SIZES = {"val": 50, "test": 100}
#: The box corruptions besides missed boxes that ``noise="annotation"`` plants
#: unless ``noise_mix`` says otherwise: shares of the training lesions given a
#: shifted or a resized box, and spurious boxes per training slice
#: (:func:`mombs.recipes.detection.synthetic_det.make_synthetic_det`'s defaults).
DET_NOISE_DEFAULTS = {"shifted": 0.1, "resized": 0.1, "spurious": 0.05}
#: The default image side: the synthetic set's slices, DeepLesion's native 512.
DET_DEFAULT_SIZE = {"synthetic-det": 64, "deeplesion": 512}

_DEEPLESION_WHERE = (
    "DeepLesion (NIH Clinical Center, https://nihcc.app.box.com/v/DeepLesion): a folder "
    "holding DL_info.csv and Images_png/ (the Images_png_*.zip parts unzipped into one folder)"
)


def check_det_data_dir(dataset: str, data_dir, annotations: str | None = None) -> None:
    """Refuses a missing DeepLesion or COCO folder, naming what to put there.

    Only the file system is asked; a COCO file's contents are checked when
    the corpus is loaded (:func:`~mombs.recipes.detection.coco.read_coco`).

    Raises:
        ValueError: for ``dataset="deeplesion"``, a ``data_dir`` that is
            unset or lacks ``DL_info.csv`` or ``Images_png/``; for
            ``dataset="coco"``, one unset, empty or without its JSON file
            (:func:`~mombs.recipes.detection.coco.find_annotations`).
    """
    if dataset == "coco":
        from .coco import find_annotations

        find_annotations(data_dir, annotations)
        return
    if dataset != "deeplesion":
        return
    ok = (
        isinstance(data_dir, str)
        and os.path.isfile(os.path.join(data_dir, "DL_info.csv"))
        and os.path.isdir(os.path.join(data_dir, "Images_png"))
    )
    if not ok:
        raise ValueError(
            f"data_dir={data_dir!r} must be the folder of dataset='deeplesion': {_DEEPLESION_WHERE}. "
            f"Nothing is downloaded."
        )


def det_noise_options(noise: str, noise_rate: float, noise_mix: dict | None) -> dict:
    """The box-noise fractions of :func:`~mombs.recipes.detection.synthetic_det.make_synthetic_det` a config asks for.

    Args:
        noise: ``"none"`` (clean boxes) or ``"annotation"``.
        noise_rate: share of training lesions left without a box (missed), ``[0, 1)``.
        noise_mix: ``{"shifted": f, "resized": f, "spurious": f}`` overriding
            :data:`DET_NOISE_DEFAULTS` (missing keys keep their default), or ``None``.

    Returns:
        ``missing_fraction``, ``shift_fraction``, ``resize_fraction``, ``spurious_fraction``.

    Raises:
        ValueError: an unknown corruption name, a share outside ``[0, 1]``, or
            lesion shares summing to more than 1.
    """
    if noise != "annotation":
        return {"missing_fraction": 0.0, "shift_fraction": 0.0, "resize_fraction": 0.0, "spurious_fraction": 0.0}
    mix = dict(DET_NOISE_DEFAULTS)
    if noise_mix is not None:
        if not isinstance(noise_mix, dict):
            raise ValueError(f"noise_mix={noise_mix!r} must be a mapping over {list(DET_NOISE_DEFAULTS)}")
        unknown = sorted(set(noise_mix) - set(DET_NOISE_DEFAULTS))
        if unknown:
            raise ValueError(
                f"noise_mix has unknown box corruption(s) {unknown}; valid for task='detection': "
                f"{list(DET_NOISE_DEFAULTS)} (missed boxes are noise_rate)"
            )
        for name, v in noise_mix.items():
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not 0 <= v <= 1:
                raise ValueError(f"noise_mix[{name!r}]={v!r} must be a number in [0, 1]")
            mix[name] = float(v)
    if noise_rate + mix["shifted"] + mix["resized"] > 1 + 1e-9:
        raise ValueError(
            f"noise_rate={noise_rate!r} (missed) + shifted {mix['shifted']!r} + resized "
            f"{mix['resized']!r} must be at most 1: they are shares of the same lesions"
        )
    return {
        "missing_fraction": float(noise_rate),
        "shift_fraction": mix["shifted"],
        "resize_fraction": mix["resized"],
        "spurious_fraction": mix["spurious"],
    }


class _Picked:
    """Items ``indices`` of a map-style data set, in that order."""

    def __init__(self, dataset, indices: np.ndarray):
        self.dataset, self.indices = dataset, np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, i):
        return self.dataset[int(self.indices[i])]


@dataclass
class DetCorpus:
    """The splits of a detection run.

    Attributes:
        name: data set name.
        num_classes: classes of the detector including the background (2: lesion).
        in_channels: image channels.
        image_size: the side the detector's transform resizes images to.
        train, val, test: map-style data sets of ``(image, target)`` items;
            ``train`` serves the given (possibly corrupted) boxes, ``val`` and
            ``test`` the clean ones.
        clean_boxes_train: ``N`` arrays ``(m_i, 4)``, one box per lesion, or
            ``None`` when the truth is unknown (DeepLesion).
        noisy_train: ``(N,)`` bool, images whose given boxes differ from the
            clean ones, or ``None``.
        missing_train: ``(N,)`` bool, images with at least one lesion left
            without a box, or ``None``.
        corruption: ``(N,)`` int64 codes into
            :data:`~mombs.recipes.detection.synthetic_det.DET_CORRUPTIONS`, or ``None``.
        possibly_noisy: ``(N,)`` bool, DeepLesion's ``Possibly_noisy`` on any
            lesion of the slice, or ``None``.
        sources: where each training image comes from, in training order:
            ``{"path": (N,) str}`` (a file name) and, for COCO,
            ``"image_id": (N,) int64``; or ``None`` (the synthetic set, whose
            slices are their own positions).
        splits: the file names of each split, ``{"train": [...], "val": [...],
            "test": [...]}`` (``train`` in training order), or ``None`` (the
            synthetic set).
        info: what :meth:`describe` adds about the files read (COCO: the
            JSON file, the image folder used, how the splits were made, the
            classes), or ``None``.
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    train: object
    val: object
    test: object
    clean_boxes_train: list | None = None
    noisy_train: np.ndarray | None = None
    missing_train: np.ndarray | None = None
    corruption: np.ndarray | None = None
    possibly_noisy: np.ndarray | None = None
    sources: dict | None = None
    splits: dict | None = None
    info: dict | None = None

    def describe(self) -> dict:
        from .synthetic_det import DET_CORRUPTIONS

        d = {
            "name": self.name,
            "task": "detection",
            "num_classes": self.num_classes,
            "train": len(self.train),
            "val": len(self.val),
            "test": len(self.test),
            "in_channels": self.in_channels,
            "image_size": self.image_size,
        }
        if self.noisy_train is not None:
            d["train_noise_rate"] = float(self.noisy_train.mean())
            d["train_missing_rate"] = float(self.missing_train.mean())
            d["train_corruptions"] = {c: int((self.corruption == i).sum()) for i, c in enumerate(DET_CORRUPTIONS)}
        if self.info is not None:
            d.update(self.info)
        return d


@functools.lru_cache(maxsize=2)
def _synthetic_eval(seed: int, size: int, windows: str, n_val: int, n_test: int):
    """The synthetic validation and test splits: they depend on the seed, the size
    and the windows only (each slice has its own generator), so the arms of a
    comparison draw them once per process."""
    from .synthetic_det import make_synthetic_det

    data = make_synthetic_det(
        1,
        n_val,
        n_test,
        size=size,
        missing_fraction=0.0,
        shift_fraction=0.0,
        resize_fraction=0.0,
        spurious_fraction=0.0,
        seed=seed,
        windows=windows,
    )
    return data.val, data.test


def _synthetic(cfg) -> DetCorpus:
    from .synthetic_det import BoxDataset, make_synthetic_det

    full = cfg.subset if cfg.subset is not None else DET_SYNTHETIC_DEFAULT_TRAIN
    size, windows = cfg.image_size or DET_DEFAULT_SIZE["synthetic-det"], cfg.windows or "three"
    noise = det_noise_options(cfg.noise, cfg.noise_rate, cfg.noise_mix)
    tr = make_synthetic_det(full, 0, 0, size=size, seed=cfg.seed, windows=windows, **noise).train
    if cfg.train_fraction is not None:  # a prefix: the smaller regimes hold the same images and box noise
        tr = tr.subset(np.arange(max(1, int(round(cfg.train_fraction * full)))))
    va, te = _synthetic_eval(cfg.seed, size, windows, DET_SYNTHETIC_EVAL_SIZES["val"], DET_SYNTHETIC_EVAL_SIZES["test"])
    noisy = cfg.noise == "annotation"
    # Copies of the cached arrays: nothing a run does reaches the next run's data.
    return DetCorpus(
        cfg.dataset,
        2,
        int(tr.images.shape[1]),
        size,
        BoxDataset(tr.images, tr.boxes),
        BoxDataset(va.images.copy(), [b.copy() for b in va.clean_boxes]),
        BoxDataset(te.images.copy(), [b.copy() for b in te.clean_boxes]),
        clean_boxes_train=tr.clean_boxes,
        noisy_train=tr.noisy.copy() if noisy else None,
        missing_train=tr.missing.copy() if noisy else None,
        corruption=tr.corruption.copy() if noisy else None,
        sources={"path": np.asarray([f"synthetic-det/train#{i}" for i in range(len(tr))])},
    )


def _deeplesion(cfg) -> DetCorpus:
    from .deeplesion import DeepLesion

    size = cfg.image_size or DET_DEFAULT_SIZE["deeplesion"]
    # [0, 1]: the range torchvision's ImageNet normalisation (and the tiny model's) expects.
    opts = dict(seed=cfg.seed, value_max=1.0, max_size=size)
    train = DeepLesion(cfg.data_dir, "train", fraction=cfg.train_fraction or 1.0, **opts)
    if cfg.subset is not None:
        if cfg.subset > len(train):
            raise ValueError(f"subset={cfg.subset} exceeds the {len(train)} training key slices of deeplesion")
        keep = np.sort(np.random.default_rng([cfg.seed, 0xDE7]).choice(len(train), cfg.subset, replace=False))
        train_set = _Picked(train, keep)
        slices = [train.slices[i] for i in keep]
    else:
        train_set, slices = train, train.slices
    noisy = np.asarray([bool(np.any(s.noisy)) for s in slices], dtype=bool)
    val, test = DeepLesion(cfg.data_dir, "val", **opts), DeepLesion(cfg.data_dir, "test", **opts)
    names = [s.file_name for s in slices]
    return DetCorpus(
        cfg.dataset,
        2,
        3,
        size,
        train_set,
        val,
        test,
        possibly_noisy=noisy,
        sources={"path": np.asarray(names)},
        splits={"train": names, "val": [s.file_name for s in val.slices], "test": [s.file_name for s in test.slices]},
    )


def _coco(cfg) -> DetCorpus:
    from .coco import COCO_MAX_SIZE, CocoImages, coco_splits, read_coco

    coco = read_coco(cfg.data_dir, cfg.annotations)
    split = coco_splits(coco, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=cfg.seed)
    train = split["train"]
    if cfg.train_fraction is not None:  # one seeded order: the smaller shares are nested in the larger
        order = np.random.default_rng([cfg.seed, 0xC0C1]).permutation(train.size)
        train = np.sort(train[order[: max(1, int(round(cfg.train_fraction * train.size)))]])
    if cfg.subset is not None:
        if cfg.subset > train.size:
            raise ValueError(f"subset={cfg.subset} exceeds the {train.size} training images of {coco.annotations}")
        train = np.sort(np.random.default_rng([cfg.seed, 0xC0C2]).choice(train, cfg.subset, replace=False))
    # One channel only for a model that takes it (the tiny one) and grey images only.
    channels = 1 if cfg.model == "tiny" and all(im.grey for im in coco.images) else 3
    size = cfg.image_size or min(COCO_MAX_SIZE, max(max(im.width, im.height) for im in coco.images))
    parts = {
        "train": [coco.images[i] for i in train],
        **{s: [coco.images[i] for i in split[s]] for s in ("val", "test")},
    }
    tr = parts["train"]
    info = {
        "annotations_file": os.path.basename(coco.annotations),
        "image_root": "data_dir" if coco.image_root == cfg.data_dir else "data_dir/images",
        "split_by": "the images' 'split' field" if coco.images[0].split is not None else f"drawn from seed {cfg.seed}",
        "classes": [[k + 1, cid, name] for k, (cid, name) in enumerate(coco.categories)],
        "crowd_skipped": coco.crowd_skipped,
        "images_without_boxes": {s: sum(not len(im.boxes) for im in v) for s, v in parts.items()},
    }
    return DetCorpus(
        cfg.dataset,
        len(coco.categories) + 1,
        channels,
        int(size),
        *(CocoImages(parts[s], channels) for s in ("train", "val", "test")),
        sources={
            "path": np.asarray([im.file_name for im in tr]),
            "image_id": np.asarray([im.image_id for im in tr], dtype=np.int64),
        },
        splits={s: [im.file_name for im in v] for s, v in parts.items()},
        info=info,
    )


def load_det_corpus(cfg) -> DetCorpus:
    """Builds the splits a detection :class:`~mombs.train.RunConfig` asks for.

    ``synthetic-det``: :func:`~mombs.recipes.detection.synthetic_det.make_synthetic_det`
    with ``subset`` training slices (default
    :data:`DET_SYNTHETIC_DEFAULT_TRAIN`, the 100% regime) of ``image_size``
    pixels (64), ``windows`` (``"three"``), the box noise of
    :func:`det_noise_options`, and the fixed :data:`DET_SYNTHETIC_EVAL_SIZES`,
    all drawn from ``cfg.seed``; ``train_fraction`` keeps the first
    ``round(train_fraction * subset)`` slices, so the 25/50/100% regimes are
    nested and share their box noise.
    ``deeplesion``: :class:`~mombs.recipes.detection.deeplesion.DeepLesion` with the
    official split, ``train_fraction`` of the training patients (seeded by
    ``cfg.seed``), ``subset`` a seeded share of those key slices, slices
    scaled to ``[0, 1]`` with their longer side capped at ``image_size`` (512).
    ``coco``: :func:`~mombs.recipes.detection.coco.read_coco` on ``data_dir``
    (``annotations`` picks the JSON file), split by
    :func:`~mombs.recipes.detection.coco.coco_splits` (the images' ``"split"``
    field, else ``val_fraction`` and ``test_fraction`` (0.2) drawn from
    ``cfg.seed``); ``train_fraction`` keeps a seeded share of the training
    images (nested), ``subset`` a seeded count of those; ``num_classes`` is
    the categories plus the background; ``image_size`` defaults to the longest
    image side, capped at 512; grey images give 1 channel for ``model="tiny"``,
    3 otherwise.
    """
    if cfg.dataset == "synthetic-det":
        return _synthetic(cfg)
    if cfg.dataset == "deeplesion":
        check_det_data_dir(cfg.dataset, cfg.data_dir)
        return _deeplesion(cfg)
    if cfg.dataset == "coco":
        return _coco(cfg)
    raise ValueError(f"dataset={cfg.dataset!r} is not known; choose one of {list(DET_DATASETS)}")
