"""DeepLesion (NIH Clinical Center): key CT slices with lesion boxes, for universal lesion detection.

DeepLesion holds 32,735 lesions on 32,120 key slices of 4,427 patients
(``shared/METHOD.md`` §6). Nothing is downloaded here: get the data from
https://nihcc.app.box.com/v/DeepLesion (``DL_info.csv`` and the
``Images_png_*.zip`` parts, unzipped into one ``Images_png/`` folder) and point
:class:`DeepLesion` at the folder holding both.

What is read, and how (as DeepLesion's own reference code reads it):

- ``DL_info.csv`` has one row per lesion. The columns used are
  ``File_name`` (``000001_01_01_109.png``: patient, study, series, slice),
  ``Patient_index``, ``Key_slice_index``, ``Bounding_boxes`` (``"x1, y1, x2,
  y2"``), ``Possibly_noisy`` (1 for annotations flagged as possibly wrong),
  ``Slice_range`` (first and last slice of the series on disk),
  ``Spacing_mm_px_`` (``"x, y, z"`` mm) and ``Train_Val_Test`` (1 train,
  2 validation, 3 test: the official split, by patient). Rows that share a
  ``File_name`` are the lesions of one key slice, which is one item here.
- Coordinates in ``DL_info.csv`` start from 1; the boxes are shifted by -1 to
  torchvision's 0-based ``(x1, y1, x2, y2)``, as DeepLesion's reference code
  (3DCE, MULAN) does ("coordinates in info file start from 1").
- A slice ``i`` of series ``000001_01_01`` is ``Images_png/000001_01_01/{i:03d}.png``,
  a 16-bit PNG; Hounsfield units are ``value - 32768``.
- Windowing clips HU to ``window`` (default ``(-1024, 3071)``, the single
  window of 3DCE) and maps it linearly to ``[0, value_max]`` (default 255).
- The three channels are the slices ``key - neighbours``, ``key`` and
  ``key + neighbours``; a neighbour outside ``Slice_range`` is replaced by
  the nearest slice inside it.
- ``norm_spacing`` (mm per pixel) resizes every slice by
  ``Spacing / norm_spacing`` (bilinear) and its boxes with it, so that a pixel
  covers the same tissue everywhere (3DCE uses 0.8 mm); ``max_size`` caps the
  longer side after that.
- Training subsets of 25/50/100% (the paper's regimes) are drawn **by
  patient**: the training patients are shuffled by a private generator seeded
  with ``seed`` and the first ``round(fraction * patients)`` kept, so smaller
  subsets are nested in larger ones and no patient is split.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass

import numpy as np

from ..._checks import check_int, is_real

__all__ = [
    "DL_INFO_COLUMNS",
    "DeepLesion",
    "KeySlice",
    "hu_from_png",
    "patient_subset",
    "read_dl_info",
    "window_hu_to_range",
]

#: The ``DL_info.csv`` columns this reader needs.
DL_INFO_COLUMNS = (
    "File_name",
    "Patient_index",
    "Key_slice_index",
    "Bounding_boxes",
    "Possibly_noisy",
    "Slice_range",
    "Spacing_mm_px_",
    "Train_Val_Test",
)
#: ``Train_Val_Test`` codes.
SPLIT_CODES = {"train": 1, "val": 2, "test": 3}
#: 3DCE's single HU window.
DEFAULT_WINDOW = (-1024.0, 3071.0)
#: What 16-bit DeepLesion PNGs hold above the Hounsfield unit.
HU_OFFSET = 32768

_WHERE = (
    "DeepLesion is not downloaded by mombs: get DL_info.csv and the Images_png_*.zip parts from "
    "https://nihcc.app.box.com/v/DeepLesion and unzip the parts into one Images_png/ folder next to "
    "DL_info.csv"
)


@dataclass(frozen=True)
class KeySlice:
    """One annotated key slice: the lesions of one ``File_name``.

    Attributes:
        file_name: ``DL_info.csv``'s ``File_name``, e.g. ``000001_01_01_109.png``.
        series: the ``Images_png/`` folder, e.g. ``000001_01_01``.
        patient: ``Patient_index``.
        key_slice: ``Key_slice_index``.
        slice_range: ``(first, last)`` slice of the series on disk.
        spacing: ``(x, y, z)`` mm per pixel and between slices.
        boxes: ``(n, 4)`` float32, 0-based ``(x1, y1, x2, y2)`` in the slice's pixels.
        noisy: ``(n,)`` bool, ``Possibly_noisy`` of each lesion.
        split: ``Train_Val_Test`` code (1 train, 2 validation, 3 test).
        rows: ``(n,)`` positions of the lesions' rows in ``DL_info.csv`` (0-based, header excluded).
    """

    file_name: str
    series: str
    patient: int
    key_slice: int
    slice_range: tuple
    spacing: tuple
    boxes: np.ndarray
    noisy: np.ndarray
    split: int
    rows: tuple


def _floats(text: str, n: int, column: str, row: int) -> list:
    parts = [p for p in str(text).replace(";", ",").split(",") if p.strip()]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != n:
        raise ValueError(f"DL_info.csv row {row}: {column}={text!r} must hold {n} comma-separated numbers")
    return values


def read_dl_info(path) -> list:
    """The key slices of ``DL_info.csv``, each with all its lesions.

    Args:
        path: the CSV file.

    Returns:
        :class:`KeySlice` records in the order their first row appears.

    Raises:
        FileNotFoundError: naming the file and where to get it.
        ValueError: for missing columns (listing them) or malformed values
            (naming the row and column).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found. {_WHERE}")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in DL_INFO_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{path} lacks the column(s) {missing}; DL_info.csv has {list(DL_INFO_COLUMNS)} among others"
            )
        groups: dict = {}
        for r, row in enumerate(reader):
            name = row["File_name"].strip()
            if "_" not in name:
                raise ValueError(f"DL_info.csv row {r}: File_name={name!r} is not <series>_<slice>.png")
            box = np.asarray(_floats(row["Bounding_boxes"], 4, "Bounding_boxes", r)) - 1  # 1-based in the file
            lo, hi = (int(v) for v in _floats(row["Slice_range"], 2, "Slice_range", r))
            entry = groups.setdefault(
                name,
                {
                    "series": name.rsplit("_", 1)[0],
                    "patient": int(row["Patient_index"]),
                    "key": int(row["Key_slice_index"]),
                    "range": (lo, hi),
                    "spacing": tuple(_floats(row["Spacing_mm_px_"], 3, "Spacing_mm_px_", r)),
                    "split": int(row["Train_Val_Test"]),
                    "boxes": [],
                    "noisy": [],
                    "rows": [],
                },
            )
            entry["boxes"].append(box)
            entry["noisy"].append(int(float(row["Possibly_noisy"])) > 0)
            entry["rows"].append(r)
    return [
        KeySlice(
            file_name=name,
            series=e["series"],
            patient=e["patient"],
            key_slice=e["key"],
            slice_range=e["range"],
            spacing=e["spacing"],
            boxes=np.asarray(e["boxes"], dtype=np.float32).reshape(-1, 4),
            noisy=np.asarray(e["noisy"], dtype=bool),
            split=e["split"],
            rows=tuple(e["rows"]),
        )
        for name, e in groups.items()
    ]


def hu_from_png(path) -> np.ndarray:
    """A DeepLesion slice in Hounsfield units: ``(H, W)`` int32, ``value - 32768``.

    Raises:
        FileNotFoundError: naming the file and where to get it.
        ValueError: when the PNG is not 16-bit grey.
        ImportError: when Pillow is not installed.
    """
    try:
        from PIL import Image
    except ImportError as err:
        raise ImportError("reading DeepLesion needs Pillow: pip install 'mombs[det]'") from err
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found. {_WHERE}")
    try:
        with Image.open(path) as im:
            if im.mode not in ("I;16", "I;16B", "I;16L", "I"):
                raise ValueError(f"{path} is a {im.mode!r} PNG; DeepLesion slices are 16-bit grey ('I;16')")
            values = np.asarray(im, dtype=np.int64)
    except (OSError, SyntaxError) as err:  # Pillow: "image file is truncated", "cannot identify image file"
        raise ValueError(
            f"{path}: the PNG cannot be read ({type(err).__name__}: {err}); the file is cut short or damaged"
        ) from err
    return (values - HU_OFFSET).astype(np.int32)


def window_hu_to_range(hu, window=DEFAULT_WINDOW, value_max: float = 255.0) -> np.ndarray:
    """Clips HU to ``window = (lo, hi)`` and maps it linearly to ``[0, value_max]``.

    Returns:
        float32 array of ``hu``'s shape: ``lo`` and below give 0, ``hi`` and
        above give ``value_max``.
    """
    lo, hi = float(window[0]), float(window[1])
    out = (np.clip(np.asarray(hu, dtype=np.float32), lo, hi) - lo) / (hi - lo)
    return (out * value_max).astype(np.float32)


def patient_subset(patients, fraction: float, seed: int = 0) -> np.ndarray:
    """The patients kept in a ``fraction`` training subset.

    The unique ids are sorted, shuffled by ``numpy.random.default_rng(seed)``
    and the first ``round(fraction * n)`` kept (at least one when
    ``fraction > 0``): for one seed, a smaller fraction's patients are a
    subset of a larger one's.

    Args:
        patients: ``(N,)`` patient ids (repeats allowed).
        fraction: share of patients, in ``(0, 1]``.
        seed: seed of the private generator, ``>= 0``.

    Returns:
        Sorted ``(m,)`` array of the kept ids.
    """
    if not is_real(fraction) or not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction!r} must be a number in (0, 1] (the paper uses 0.25, 0.5, 1)")
    check_int("seed", seed, 0)
    ids = np.unique(np.asarray(patients))
    order = np.random.default_rng(int(seed)).permutation(ids.size)
    keep = max(1, int(round(fraction * ids.size))) if ids.size else 0
    return np.sort(ids[order[:keep]])


class DeepLesion:
    """DeepLesion key slices as a torch data set for torchvision's detectors.

    Items are ``(image, target)``: ``image`` ``(3, H, W)`` float32 in
    ``[0, value_max]`` (slices ``key - neighbours``, ``key``, ``key +
    neighbours``), ``target`` a dict with ``"boxes"`` ``(n, 4)`` float32
    (0-based ``(x1, y1, x2, y2)`` in the returned image's pixels),
    ``"labels"`` ``(n,)`` int64 ones and ``"noisy"`` ``(n,)`` bool
    (``Possibly_noisy``).

    Args:
        root: folder with ``DL_info.csv`` and ``Images_png/``.
        split: ``"train"``, ``"val"`` or ``"test"`` (``Train_Val_Test`` 1, 2, 3).
        fraction: share of the split's patients kept, ``(0, 1]``
            (:func:`patient_subset`); the paper trains on 0.25, 0.5 and 1.
        seed: seed of the patient subset.
        window: ``(lo, hi)`` HU window, ``lo < hi``.
        value_max: the top of the output range (255; 1.0 for torchvision's
            ImageNet normalisation).
        neighbours: slice offset of the side channels, ``>= 0`` (0: the key
            slice three times).
        norm_spacing: mm per pixel to resize every slice to, ``> 0``; ``None``
            keeps the native pixels.
        max_size: most pixels on the longer side after resizing, ``>= 1``, or ``None``.
        drop_noisy: leave out lesions flagged ``Possibly_noisy`` (a slice
            left without lesions is dropped).
        info_csv: the CSV file, default ``root/DL_info.csv``.

    Attributes:
        slices: the :class:`KeySlice` records served, in ``DL_info.csv`` order.

    Raises:
        FileNotFoundError: for a missing ``DL_info.csv`` or ``Images_png/``,
            naming the path and where to get the data.
        ValueError: for bad options (naming them).
    """

    def __init__(
        self,
        root,
        split: str = "train",
        *,
        fraction: float = 1.0,
        seed: int = 0,
        window=DEFAULT_WINDOW,
        value_max: float = 255.0,
        neighbours: int = 1,
        norm_spacing: float | None = None,
        max_size: int | None = None,
        drop_noisy: bool = False,
        info_csv=None,
    ):
        if split not in SPLIT_CODES:
            raise ValueError(f"split={split!r} must be one of {list(SPLIT_CODES)}")
        window = tuple(window)
        if len(window) != 2 or not all(is_real(w) for w in window) or not window[0] < window[1]:
            raise ValueError(f"window={window!r} must be (lo, hi) HU with lo < hi")
        if not is_real(value_max) or not value_max > 0:
            raise ValueError(f"value_max={value_max!r} must be a number > 0")
        check_int("neighbours", neighbours, 0)
        if norm_spacing is not None and (not is_real(norm_spacing) or not norm_spacing > 0):
            raise ValueError(f"norm_spacing={norm_spacing!r} must be a number > 0 (mm per pixel) or None")
        if max_size is not None:
            check_int("max_size", max_size, 1)
        self.root = os.fspath(root)
        self.images_dir = os.path.join(self.root, "Images_png")
        records = [
            s for s in read_dl_info(info_csv or os.path.join(self.root, "DL_info.csv")) if s.split == SPLIT_CODES[split]
        ]
        if not os.path.isdir(self.images_dir):
            raise FileNotFoundError(f"{self.images_dir} not found. {_WHERE}")
        kept = patient_subset([s.patient for s in records], fraction, seed) if records else np.zeros(0)
        kept = set(kept.tolist())
        records = [s for s in records if s.patient in kept]
        if drop_noisy:
            records = [_without_noisy(s) for s in records]
            records = [s for s in records if len(s.boxes)]
        self.slices = records
        self.split, self.fraction, self.seed = split, float(fraction), int(seed)
        self.window, self.value_max, self.neighbours = window, float(value_max), int(neighbours)
        self.norm_spacing, self.max_size = norm_spacing, max_size

    def __len__(self) -> int:
        return len(self.slices)

    @property
    def patients(self) -> np.ndarray:
        """``(N,)`` ``Patient_index`` of each item."""
        return np.asarray([s.patient for s in self.slices], dtype=np.int64)

    def slice_path(self, record: KeySlice, index: int) -> str:
        """The PNG of slice ``index`` of ``record``'s series."""
        return os.path.join(self.images_dir, record.series, f"{index:03d}.png")

    def scale(self, record: KeySlice, shape) -> float:
        """The resize factor applied to ``record``'s slice of ``(H, W)`` ``shape``."""
        factor = 1.0 if self.norm_spacing is None else record.spacing[0] / self.norm_spacing
        if self.max_size is not None and max(shape) * factor > self.max_size:
            factor = self.max_size / max(shape)
        return factor

    def __getitem__(self, i):
        import torch

        rec = self.slices[i]
        lo, hi = rec.slice_range
        offsets = (-self.neighbours, 0, self.neighbours)
        hu = [hu_from_png(self.slice_path(rec, min(max(rec.key_slice + o, lo), hi))) for o in offsets]
        image = torch.from_numpy(np.stack([window_hu_to_range(h, self.window, self.value_max) for h in hu]))
        boxes = torch.from_numpy(rec.boxes.copy())
        shape = tuple(image.shape[1:])
        factor = self.scale(rec, shape)
        if factor != 1.0:
            size = [max(1, int(round(s * factor))) for s in shape]
            image = torch.nn.functional.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
            boxes = _scale_boxes(boxes, shape, size)
        return image, {
            "boxes": boxes,
            "labels": torch.ones(len(boxes), dtype=torch.int64),
            "noisy": torch.from_numpy(rec.noisy.copy()),
        }


def _scale_boxes(boxes, old_shape, new_shape):
    import torch

    sy, sx = new_shape[0] / old_shape[0], new_shape[1] / old_shape[1]
    return boxes * torch.tensor([sx, sy, sx, sy], dtype=boxes.dtype)


def _without_noisy(rec: KeySlice) -> KeySlice:
    keep = ~rec.noisy
    return KeySlice(
        file_name=rec.file_name,
        series=rec.series,
        patient=rec.patient,
        key_slice=rec.key_slice,
        slice_range=rec.slice_range,
        spacing=rec.spacing,
        boxes=rec.boxes[keep],
        noisy=rec.noisy[keep],
        split=rec.split,
        rows=tuple(r for r, k in zip(rec.rows, keep) if k),
    )
