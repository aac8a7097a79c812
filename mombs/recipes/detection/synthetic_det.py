"""An offline, CT-like lesion detection set with planted box noise.

DeepLesion's real trouble is incomplete annotation: many lesions in a slice
carry no box (``shared/METHOD.md`` §4 and §6). This set plants that on
purpose and keeps the truth, so that the difficulty quadrants can be scored:

- **missed**: a chosen fraction of the training lesions get no box;
- **shifted** / **resized**: some boxes are moved by part of their size, or
  grown or shrunk about their centre;
- **spurious**: a few boxes are put where there is no lesion.

The slices are those of :mod:`mombs.recipes.segmentation.synthetic_ct` (its drawing code is
reused, not copied): air, a body, two textured lungs with bright vessel dots,
and soft-edged lesions of log-uniform radius and contrast. With the same
options and seed the images are the segmentation set's images, each image
drawn from its own generator seeded from ``(seed, split, index)``, so the
images of a smaller training set are a prefix of a larger one's and the
evaluation splits do not change with ``n_train``. The box noise is drawn for
the training split as a whole (exact counts); for the 25/50/100% regimes take
prefixes of one full split (:meth:`DetSplit.subset`), which keeps the noise. A lesion's box is
the bounding box of its pixels, ``(x1, y1, x2, y2)`` in continuous pixel
coordinates (a lesion covering columns 3..7 spans ``x1 = 3, x2 = 8``). The
box noise is drawn from a separate generator seeded from ``(seed, "boxes")``.
Validation and test boxes are always clean.

The defaults (200 training slices of 64 x 64, three windows as 3 channels)
are sized for two CPU cores and the ``"tiny"`` detector of
:mod:`mombs.recipes.detection.models`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# The synthetic detection set is the segmentation recipe's synthetic CT slices, boxed.
from ..segmentation.synthetic_ct import _check_count, _check_range, _make_split

__all__ = [
    "BOX_KINDS",
    "BoxDataset",
    "DET_CORRUPTIONS",
    "LESION_STATUS",
    "DetSplit",
    "SyntheticDet",
    "make_synthetic_det",
]

#: What a given box is: ``box_kind == k`` means ``BOX_KINDS[k]``.
BOX_KINDS = ("clean", "shifted", "resized", "spurious")
#: Per-image corruption: ``corruption == k`` means ``DET_CORRUPTIONS[k]``;
#: ``"mixed"`` is an image with more than one kind.
DET_CORRUPTIONS = ("none", "missed", "shifted", "resized", "spurious", "mixed")
#: Per-lesion status in the training split: kept with a clean box, left
#: without one, or given a shifted or resized box.
LESION_STATUS = ("kept", "missed", "shifted", "resized")

_SPLIT_SEED = 0xB0C5


@dataclass
class DetSplit:
    """One split of the detection set.

    Attributes:
        images: ``(N, C, H, W)`` float32; ``C = 3`` for ``windows="three"``,
            1 for ``"lung"`` (each channel in ``[0, 1]``) and for ``None``
            (Hounsfield units).
        boxes: ``N`` float32 arrays ``(n_i, 4)``: the given boxes
            ``(x1, y1, x2, y2)`` (possibly corrupted in train; clean in val
            and test), every one with positive width and height.
        box_kind: ``N`` int64 arrays ``(n_i,)``: codes into :data:`BOX_KINDS`.
        clean_boxes: ``N`` float32 arrays ``(m_i, 4)``: one box per lesion, the truth.
        instances: ``(N, H, W)`` int16: lesion ``k`` of an image is ``k + 1``.
        n_missed, n_shifted, n_resized, n_spurious: ``(N,)`` int64 counts per image.
        corruption: ``(N,)`` int64 codes into :data:`DET_CORRUPTIONS`.
        lesions: per-lesion table, each ``(L,)``: ``image``, ``label`` (value
            in ``instances``), ``area`` (pixels), ``contrast`` (HU above the
            lung), ``radius`` (pixels), ``group`` (code into
            :data:`mombs.recipes.segmentation.synthetic_ct.SIZE_GROUPS`, 1-4), ``status``
            (code into :data:`LESION_STATUS`).
    """

    images: np.ndarray
    boxes: list
    box_kind: list
    clean_boxes: list
    instances: np.ndarray
    n_missed: np.ndarray
    n_shifted: np.ndarray
    n_resized: np.ndarray
    n_spurious: np.ndarray
    corruption: np.ndarray
    lesions: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def corruption_names(self) -> np.ndarray:
        """``(N,)`` str: each image's corruption by name."""
        return np.asarray(DET_CORRUPTIONS)[self.corruption]

    @property
    def noisy(self) -> np.ndarray:
        """``(N,)`` bool: the given boxes differ from the clean ones."""
        return self.corruption != 0

    @property
    def missing(self) -> np.ndarray:
        """``(N,)`` bool: at least one lesion of the image has no box."""
        return self.n_missed > 0

    def subset(self, indices) -> DetSplit:
        """The images at ``indices`` with their boxes and records, as a new split.

        For the 25/50/100% training regimes, build the full set once and take
        prefixes, ``train.subset(range(n))``: the smaller sets then hold the
        same images with the same box noise. The lesion table's ``image``
        column is renumbered to the new positions.

        Args:
            indices: ``(n,)`` integer positions in ``[0, N)``.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise ValueError(f"indices must lie in [0, {len(self)}), got values in [{idx.min()}, {idx.max()}]")
        new_pos = np.full(len(self), -1, dtype=np.int64)
        new_pos[idx] = np.arange(idx.size)
        keep = np.isin(self.lesions["image"], idx)
        lesions = {k: v[keep] for k, v in self.lesions.items()}
        lesions["image"] = new_pos[lesions["image"]]
        pick = lambda seq: [seq[i] for i in idx]  # noqa: E731
        return DetSplit(
            images=self.images[idx],
            boxes=pick(self.boxes),
            box_kind=pick(self.box_kind),
            clean_boxes=pick(self.clean_boxes),
            instances=self.instances[idx],
            n_missed=self.n_missed[idx],
            n_shifted=self.n_shifted[idx],
            n_resized=self.n_resized[idx],
            n_spurious=self.n_spurious[idx],
            corruption=self.corruption[idx],
            lesions=lesions,
        )

    def dataset(self, *, clean: bool = False):
        """A torch data set of ``(image (C, H, W) float32, target)``, as torchvision's detectors take them.

        ``target`` is ``{"boxes": (n, 4) float32, "labels": (n,) int64 ones}``
        (one foreground class, "lesion").

        Args:
            clean: serve the clean boxes (an oracle run), else the given ones.
        """
        return BoxDataset(self.images, self.clean_boxes if clean else self.boxes)


class BoxDataset:
    """Items ``(image (C, H, W), {"boxes": (n, 4) float32, "labels": (n,) int64 ones})``
    from an ``(N, C, H, W)`` array and ``N`` box arrays; torch tensors made at access."""

    def __init__(self, images: np.ndarray, boxes: list):
        self.images, self.boxes = images, boxes

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, i):
        import torch

        b = torch.from_numpy(np.asarray(self.boxes[i], dtype=np.float32).reshape(-1, 4))
        return torch.from_numpy(self.images[i]), {"boxes": b, "labels": torch.ones(len(b), dtype=torch.int64)}


@dataclass
class SyntheticDet:
    """The three splits and the resolved options that made them."""

    train: DetSplit
    val: DetSplit
    test: DetSplit
    config: dict


def _lesion_boxes(instances: np.ndarray, labels) -> np.ndarray:
    """``(L, 4)`` bounding boxes of the pixels of each label, continuous coordinates."""
    out = np.zeros((len(labels), 4), dtype=np.float32)
    for j, lab in enumerate(labels):
        ys, xs = np.nonzero(instances == lab)
        out[j] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return out


def _from_seg(split, size: int) -> DetSplit:
    """A clean detection split from a segmentation split's images and instances."""
    n = len(split)
    table = split.lesions
    clean = []
    for i in range(n):
        rows = np.flatnonzero(table["image"] == i)
        clean.append(_lesion_boxes(split.instances[i], table["label"][rows]))
    zeros = np.zeros(n, dtype=np.int64)
    lesions = {**table, "status": np.zeros(len(table["image"]), dtype=np.int64)}
    return DetSplit(
        images=split.images,
        boxes=[b.copy() for b in clean],
        box_kind=[np.zeros(len(b), dtype=np.int64) for b in clean],
        clean_boxes=clean,
        instances=split.instances,
        n_missed=zeros.copy(),
        n_shifted=zeros.copy(),
        n_resized=zeros.copy(),
        n_spurious=zeros.copy(),
        corruption=zeros.copy(),
        lesions=lesions,
    )


def _clip_box(box: np.ndarray, size: int) -> np.ndarray:
    """``box`` inside the image with at least 1 pixel of width and height."""
    x1, y1, x2, y2 = np.clip(box, 0, size)
    x1, y1 = min(x1, size - 1), min(y1, size - 1)
    return np.array([x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)], dtype=np.float32)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from .metrics import box_iou

    return box_iou(a, b)


def _corrupt(split: DetSplit, cfg: dict, seed: int) -> None:
    """Draws which training boxes go wrong and how; edits ``split`` in place."""
    rng = np.random.default_rng([seed, _SPLIT_SEED])
    size = split.images.shape[-1]
    n_les = len(split.lesions["image"])
    counts = [int(round(cfg[f] * n_les)) for f in ("missing_fraction", "shift_fraction", "resize_fraction")]
    order = rng.permutation(n_les)
    status = split.lesions["status"]
    status[order[: counts[0]]] = 1
    status[order[counts[0] : counts[0] + counts[1]]] = 2
    status[order[counts[0] + counts[1] : sum(counts)]] = 3
    lo_sh, hi_sh = cfg["shift_range"]
    lo_sc, hi_sc = cfg["scale_range"]
    for i in range(len(split)):
        rows = np.flatnonzero(split.lesions["image"] == i)
        boxes, kinds = [], []
        for j, row in enumerate(rows):
            box = split.clean_boxes[i][j].astype(np.float64)
            w, h = box[2] - box[0], box[3] - box[1]
            st = status[row]
            if st == 1:
                continue
            if st == 2:  # moved by part of its size, in a random direction
                mag = rng.uniform(lo_sh, hi_sh)
                angle = rng.uniform(0, 2 * np.pi)
                box = (
                    box
                    + np.array([1, 0, 1, 0]) * mag * w * np.cos(angle)
                    + np.array([0, 1, 0, 1]) * mag * h * np.sin(angle)
                )
            elif st == 3:  # grown or shrunk about its centre
                factor = np.exp(rng.uniform(np.log(lo_sc), np.log(hi_sc)))
                factor = factor if rng.random() < 0.5 else 1 / factor
                cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                box = np.array([cx - factor * w / 2, cy - factor * h / 2, cx + factor * w / 2, cy + factor * h / 2])
            boxes.append(_clip_box(box, size))
            kinds.append(BOX_KINDS.index(LESION_STATUS[st]) if st else 0)
        split.boxes[i] = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        split.box_kind[i] = np.asarray(kinds, dtype=np.int64)
        split.n_missed[i] = int((status[rows] == 1).sum())
        split.n_shifted[i] = int((status[rows] == 2).sum())
        split.n_resized[i] = int((status[rows] == 3).sum())
    # spurious boxes: inside the body, lesion-sized, on no lesion
    n_spurious = int(round(cfg["spurious_fraction"] * len(split)))
    radius = np.asarray(cfg["radius_range"]) * size
    for i in rng.integers(0, len(split), n_spurious):
        for _attempt in range(50):
            r = float(np.exp(rng.uniform(*np.log(radius))))
            cx, cy = rng.uniform(0.25 * size, 0.75 * size, 2)
            box = _clip_box(np.array([cx - r, cy - r, cx + r, cy + r]), size)
            clean = split.clean_boxes[i]
            if not clean.size or _iou(box[None], clean).max() < 0.1:
                break
        split.boxes[i] = np.concatenate([split.boxes[i], box[None]]).astype(np.float32)
        split.box_kind[i] = np.concatenate([split.box_kind[i], [BOX_KINDS.index("spurious")]]).astype(np.int64)
        split.n_spurious[i] += 1
    per_kind = np.stack([split.n_missed, split.n_shifted, split.n_resized, split.n_spurious], axis=1) > 0
    kinds = per_kind.sum(axis=1)
    split.corruption[:] = np.where(kinds == 0, 0, np.where(kinds > 1, 5, 1 + per_kind.argmax(axis=1)))


def _check_fraction(name, value):
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ValueError(f"{name}={value!r} must be a number in [0, 1]")
    return float(value)


def make_synthetic_det(
    n_train: int = 200,
    n_val: int = 50,
    n_test: int = 100,
    *,
    size: int = 64,
    missing_fraction: float = 0.3,
    shift_fraction: float = 0.1,
    resize_fraction: float = 0.1,
    spurious_fraction: float = 0.05,
    seed: int = 0,
    windows: str | None = "three",
    empty_fraction: float = 0.1,
    max_lesions: int = 4,
    radius_range: tuple = (0.04, 0.16),
    contrast_range: tuple = (60.0, 700.0),
    vessels_per_image: float = 6,
    shift_range: tuple = (0.4, 0.8),
    scale_range: tuple = (1.6, 2.2),
) -> SyntheticDet:
    """Builds a synthetic CT-like lesion detection set with planted box noise.

    Of the ``L`` training lesions, exactly ``round(missing_fraction * L)`` get
    no box, then ``round(shift_fraction * L)`` a shifted one and
    ``round(resize_fraction * L)`` a resized one (disjoint, drawn at random);
    ``round(spurious_fraction * n_train)`` spurious boxes go to random
    training slices.

    Args:
        n_train, n_val, n_test: slices per split; ``n_train >= 1``, the others ``>= 0``.
        size: height and width in pixels, ``>= 32``.
        missing_fraction: share of training lesions without a box (missed
            annotations), ``[0, 1]``.
        shift_fraction: share of training lesions whose box is shifted by
            ``shift_range`` times its width and height (default 0.4-0.8 of the
            box, so its IoU with the lesion falls to about 0.1-0.4).
        resize_fraction: share whose box is scaled about its centre by a
            factor log-uniform in ``scale_range``, or its reciprocal (half
            each; 1.6-2.2 gives an IoU of about 0.2-0.4).
        spurious_fraction: spurious boxes per training slice, ``[0, 1]``.
            The three lesion fractions must sum to at most 1.
        seed: seed of the private generators.
        windows: ``"three"`` (the paper's three HU windows as 3 channels, for
            torchvision's 3-channel backbones), ``"lung"`` (one channel) or
            ``None`` (one channel of HU).
        empty_fraction: share of slices drawn without a lesion, ``[0, 1)``.
        max_lesions: most lesions in a slice, ``>= 1``.
        radius_range: lesion radius bounds as fractions of ``size``, in
            ``(0, 0.5]`` (default 0.04-0.16: 2.6-10 pixels at 64, so boxes of
            about 5-20 pixels, the tiny detector's 8-32 pixel anchors).
        contrast_range: lesion contrast bounds in HU above the lung, ``(0, 2000]``.
        vessels_per_image: bright distractor dots per slice, ``>= 0``.
        shift_range: ``(low, high)`` shift as a fraction of the box's sides, ``(0, 2]``.
        scale_range: ``(low, high)`` growth factor, ``[1, 4]``.

    Returns:
        :class:`SyntheticDet` with ``train``, ``val``, ``test``
        (:class:`DetSplit`) and ``config`` (the resolved options).

    Raises:
        ValueError: naming the argument, the value and what is allowed.
    """
    _check_count("n_train", n_train, 1)
    _check_count("n_val", n_val, 0)
    _check_count("n_test", n_test, 0)
    _check_count("size", size, 32)
    _check_count("max_lesions", max_lesions, 1)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed={seed!r} must be an integer >= 0")
    fractions = {
        name: _check_fraction(name, value)
        for name, value in (
            ("missing_fraction", missing_fraction),
            ("shift_fraction", shift_fraction),
            ("resize_fraction", resize_fraction),
            ("spurious_fraction", spurious_fraction),
        )
    }
    if fractions["missing_fraction"] + fractions["shift_fraction"] + fractions["resize_fraction"] > 1 + 1e-9:
        raise ValueError(
            f"missing_fraction + shift_fraction + resize_fraction = "
            f"{missing_fraction + shift_fraction + resize_fraction!r} must be at most 1"
        )
    if not isinstance(empty_fraction, (int, float)) or isinstance(empty_fraction, bool) or not 0 <= empty_fraction < 1:
        raise ValueError(f"empty_fraction={empty_fraction!r} must be a number in [0, 1)")
    if windows not in ("lung", "three", None):
        raise ValueError(f"windows={windows!r} must be 'three', 'lung' or None")
    if (
        not isinstance(vessels_per_image, (int, float))
        or isinstance(vessels_per_image, bool)
        or not vessels_per_image >= 0
    ):
        raise ValueError(f"vessels_per_image={vessels_per_image!r} must be a number >= 0")
    radius_range, contrast_range = tuple(radius_range), tuple(contrast_range)
    shift_range, scale_range = tuple(shift_range), tuple(scale_range)
    _check_range("radius_range", radius_range, 1e-9, 0.5)
    _check_range("contrast_range", contrast_range, 1e-9, 2000)
    _check_range("shift_range", shift_range, 1e-9, 2)
    _check_range("scale_range", scale_range, 1, 4)
    cfg = dict(
        n_train=n_train,
        n_val=n_val,
        n_test=n_test,
        size=size,
        **fractions,
        seed=int(seed),
        windows=windows,
        empty_fraction=float(empty_fraction),
        max_lesions=int(max_lesions),
        radius_range=radius_range,
        contrast_range=contrast_range,
        vessels_per_image=vessels_per_image,
        shift_range=shift_range,
        scale_range=scale_range,
    )
    splits = {
        name: _from_seg(_make_split(seed, name, n, size, cfg), size)
        for name, n in (("train", n_train), ("val", n_val), ("test", n_test))
    }
    _corrupt(splits["train"], cfg, int(seed))
    return SyntheticDet(train=splits["train"], val=splits["val"], test=splits["test"], config=cfg)
