"""A segmentation run's data, built from its config: the synthetic CT set, a public COVID-19 CT set, or
your own Medical Segmentation Decathlon / nnU-Net task folder.

The segmentation counterpart of :mod:`mombs.recipes.classification.corpus`. Nothing here imports
MONAI, nibabel or scipy until data is actually read.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .decathlon import DECATHLON_DATASETS, check_task_folder

if TYPE_CHECKING:  # torch is imported where data is built: a config is checked without it
    import torch

__all__ = ["SEG_DATASETS", "SEG_LOSSES", "SYNTHETIC_EVAL_SIZES", "SegCorpus", "check_seg_data_dir", "load_seg_corpus"]

#: Segmentation data set names understood by :func:`load_seg_corpus`.
SEG_DATASETS = ("synthetic-ct", "covid-ct", "medseg-covid", "msd", "nnunet")
#: Segmentation losses: ``"dice-ce"`` is :func:`mombs.tasks.segmentation.per_image_dice_ce`
#: on the lesion channel (background left out of the Dice term, kept in the CE).
SEG_LOSSES = ("dice-ce",)
#: Validation and test slices of the synthetic set. Fixed, whatever the
#: training size, so that the 10/50/100% regimes are scored on the same slices.
SYNTHETIC_EVAL_SIZES = {"val": 100, "test": 200}
#: Training slices of the synthetic set when ``subset`` is not set.
SYNTHETIC_DEFAULT_TRAIN = 300

_WHERE = {
    "covid-ct": (
        "the COVID-19 CT Lung and Infection Segmentation Dataset (Ma et al., "
        "https://zenodo.org/record/3757476): a folder holding COVID-19-CT-Seg_20cases/ and "
        "Infection_Mask/"
    ),
    "medseg-covid": (
        "the MedSeg COVID-19 CT segmentation set (http://medicalsegmentation.com/covid19/): "
        "a folder holding tr_im.nii.gz and tr_mask.nii.gz"
    ),
}


def check_seg_data_dir(dataset: str, data_dir) -> None:
    """Refuses a missing folder for the public sets, naming what to put there.

    Raises:
        ValueError: ``data_dir`` unset or not a folder for ``covid-ct`` /
            ``medseg-covid``; for ``msd`` / ``nnunet`` also an empty folder or
            one without ``dataset.json``.
    """
    if dataset in DECATHLON_DATASETS:
        check_task_folder(data_dir)
        return
    if dataset not in _WHERE:
        return
    if data_dir is None or not os.path.isdir(data_dir):
        raise ValueError(
            f"data_dir={data_dir!r} must be the folder of dataset={dataset!r}: {_WHERE[dataset]}. "
            f"Nothing is downloaded."
        )


@dataclass
class SegCorpus:
    """The splits of a segmentation run, as tensors.

    Attributes:
        name: data set name.
        num_classes: output channels of the network (2: background, lesion).
        x_train, x_val, x_test: ``(N, C, H, W)`` float32 images.
        y_train: ``(N, H, W)`` int64 training masks as given (possibly corrupted).
        y_train_clean: ``(N, H, W)`` int64 clean training masks, or ``None``
            when the truth is unknown (real data).
        noisy_train: ``(N,)`` bool, the corrupted masks, or ``None``.
        corruption: ``(N,)`` int64 codes into :data:`~mombs.recipes.segmentation.synthetic_ct.CORRUPTIONS`, or ``None``.
        y_val, y_test: ``(N, H, W)`` int64 clean masks.
        size_group_test: ``(N_test,)`` int64 codes into
            :data:`~mombs.recipes.segmentation.synthetic_ct.SIZE_GROUPS` (lesion area of the slice).
        size_group_train: the same for the training slices (clean masks).
        sources: what each training slice is, in training order: name -> ``(N_train,)`` array
            (``"path"``: its file relative to ``data_dir``; ``"case"``, ``"slice"``: its volume and
            axial index, where there are volumes), or ``None``.
        splits: ``{"train": [case ids], "val": [...], "test": [...]}`` where cases are split, or ``None``.
    """

    name: str
    num_classes: int
    x_train: torch.Tensor
    y_train: torch.Tensor
    y_train_clean: np.ndarray | None
    noisy_train: np.ndarray | None
    corruption: np.ndarray | None
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    size_group_test: np.ndarray
    size_group_train: np.ndarray
    sources: dict | None = None
    splits: dict | None = None

    def describe(self) -> dict:
        from .synthetic_ct import CORRUPTIONS, SIZE_GROUPS

        d = {
            "name": self.name,
            "task": "segmentation",
            "num_classes": self.num_classes,
            "train": int(len(self.y_train)),
            "val": int(len(self.y_val)),
            "test": int(len(self.y_test)),
            "image_shape": list(self.x_train.shape[1:]),
            "test_size_groups": {g: int((self.size_group_test == i).sum()) for i, g in enumerate(SIZE_GROUPS)},
        }
        if self.noisy_train is not None:
            d["train_noise_rate"] = float(self.noisy_train.mean())
            d["train_corruptions"] = {c: int((self.corruption == i).sum()) for i, c in enumerate(CORRUPTIONS)}
        if self.splits is not None:
            d["cases"] = {k: len(v) for k, v in self.splits.items()}
        return d


def _size_groups(masks: np.ndarray) -> np.ndarray:
    from .synthetic_ct import size_group_of

    return size_group_of(masks.reshape(len(masks), -1).sum(axis=1), masks.shape[1] * masks.shape[2])


@functools.lru_cache(maxsize=2)
def _synthetic_eval(seed: int, size: int, windows: str):
    """The synthetic validation and test splits. They depend on the seed, the size
    and the windows only (each slice has its own generator), so the runs of one
    seed in a process, the arms of a comparison, draw them once."""
    from .synthetic_ct import make_synthetic_ct

    data = make_synthetic_ct(
        1,
        SYNTHETIC_EVAL_SIZES["val"],
        SYNTHETIC_EVAL_SIZES["test"],
        size=size,
        noise_fraction=0.0,
        seed=seed,
        windows=windows,
    )
    return data.val, data.test


def _synthetic(cfg) -> SegCorpus:
    import torch

    from .synthetic_ct import make_synthetic_ct

    n_train = cfg.subset if cfg.subset is not None else SYNTHETIC_DEFAULT_TRAIN
    size, windows = cfg.image_size or 64, cfg.windows or "lung"
    tr = make_synthetic_ct(
        n_train,
        0,
        0,
        size=size,
        noise_fraction=cfg.noise_rate if cfg.noise == "annotation" else 0.0,
        noise_mix=cfg.noise_mix,
        seed=cfg.seed,
        windows=windows,
    ).train
    va, te = _synthetic_eval(cfg.seed, size, windows)
    t = torch.from_numpy
    noisy = tr.noisy if cfg.noise == "annotation" else None
    # Copies of the cached arrays: nothing a run does reaches the next run's data.
    return SegCorpus(
        cfg.dataset,
        2,
        t(tr.images),
        t(tr.masks),
        tr.clean_masks,
        noisy,
        tr.corruption if noisy is not None else None,
        t(va.images.copy()),
        t(va.clean_masks.copy()),
        t(te.images.copy()),
        t(te.clean_masks.copy()),
        te.size_group.copy(),
        tr.size_group,
        sources={"path": np.asarray([f"synthetic-ct/train#{i}" for i in range(n_train)])},
    )


def _public(cfg) -> SegCorpus:
    import torch

    from .covid_ct import _MA_IMAGES, read_covid_ct_seg, read_medseg_covid

    reader = read_covid_ct_seg if cfg.dataset == "covid-ct" else read_medseg_covid
    splits = {}
    for name in ("train", "val", "test"):
        s = reader(cfg.data_dir, windows=cfg.windows or "lung", split=name, seed=cfg.seed, size=cfg.image_size)
        splits[name] = (torch.from_numpy(np.ascontiguousarray(s.images())), s.masks)
        if name == "train":
            ids = s.slice_ids
    x_tr, y_tr = splits["train"]
    keep = np.arange(len(y_tr))
    if cfg.subset is not None:
        if cfg.subset > len(y_tr):
            raise ValueError(f"subset={cfg.subset} exceeds the {len(y_tr)} training slices of {cfg.dataset}")
        keep = np.sort(np.random.default_rng([cfg.seed, 0x5E6]).choice(len(y_tr), cfg.subset, replace=False))
        x_tr, y_tr = x_tr[keep], y_tr[keep]
    y_val, y_te = splits["val"][1], splits["test"][1]
    t = torch.from_numpy
    folder = f"{_MA_IMAGES}/" if cfg.dataset == "covid-ct" else ""
    sources = {
        "path": np.asarray([f"{folder}{ids[i][0]}.nii.gz" for i in keep]),
        "case": np.asarray([ids[i][0] for i in keep]),
        "slice": np.asarray([ids[i][1] for i in keep], np.int64),
    }
    return SegCorpus(
        cfg.dataset,
        2,
        x_tr,
        t(y_tr),
        None,
        None,
        None,
        splits["val"][0],
        t(y_val),
        splits["test"][0],
        t(y_te),
        _size_groups(y_te),
        _size_groups(y_tr),
        sources=sources,
    )


def _decathlon(cfg) -> SegCorpus:
    import torch

    from .decathlon import DEFAULT_TEST_FRACTION, read_decathlon

    val = cfg.val_fraction
    test = cfg.test_fraction if cfg.test_fraction is not None else DEFAULT_TEST_FRACTION
    d = read_decathlon(
        cfg.data_dir,
        size=cfg.image_size,
        foreground_only=bool(cfg.foreground_only),
        intensity_window=cfg.intensity_window,
        fractions=(1 - val - test, val, test),
        seed=cfg.seed,
    )
    tr = d.train
    keep = np.arange(len(tr.masks))
    if cfg.subset is not None:
        if cfg.subset > len(keep):
            raise ValueError(f"subset={cfg.subset} exceeds the {len(keep)} training slices of {cfg.data_dir}")
        keep = np.sort(np.random.default_rng([cfg.seed, 0x5E6]).choice(len(keep), cfg.subset, replace=False))
    t = torch.from_numpy
    y_tr = tr.masks[keep]
    return SegCorpus(
        cfg.dataset,
        2,
        t(np.ascontiguousarray(tr.images[keep])),
        t(y_tr),
        None,
        None,
        None,
        t(d.val.images),
        t(d.val.masks),
        t(d.test.images),
        t(d.test.masks),
        _size_groups(d.test.masks),
        _size_groups(y_tr),
        sources={"path": tr.path[keep], "case": tr.case[keep], "slice": tr.slice[keep]},
        splits=d.splits,
    )


def load_seg_corpus(cfg) -> SegCorpus:
    """Builds the splits a segmentation :class:`~mombs.train.RunConfig` asks for.

    ``synthetic-ct``: :func:`~mombs.recipes.segmentation.synthetic_ct.make_synthetic_ct` with
    ``subset`` training slices (default 300) and the fixed
    :data:`SYNTHETIC_EVAL_SIZES`, all drawn from ``cfg.seed``.
    ``covid-ct`` / ``medseg-covid``: the readers of :mod:`mombs.recipes.segmentation.covid_ct`
    with their patient-wise split seeded by ``cfg.seed`` (``subset``: a seeded
    share of the training slices). Lesion masks are binary.

    ``msd`` / ``nnunet``: :func:`~mombs.recipes.segmentation.decathlon.read_decathlon` on
    ``data_dir``, cases split by ``cfg.seed`` (``val_fraction``; ``test_fraction``, default
    0.2), all slices or, with ``foreground_only``, those with a non-zero label; the target
    is every non-zero label; ``subset`` as above.
    """
    if cfg.dataset == "synthetic-ct":
        return _synthetic(cfg)
    if cfg.dataset in _WHERE:
        check_seg_data_dir(cfg.dataset, cfg.data_dir)
        return _public(cfg)
    if cfg.dataset in DECATHLON_DATASETS:
        return _decathlon(cfg)
    raise ValueError(f"dataset={cfg.dataset!r} is not known; choose one of {list(SEG_DATASETS)}")
