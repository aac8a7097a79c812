"""COVID-19 CT lesion segmentation slices from NIfTI files found on disk; nothing is downloaded.

Two public sets are read, volume by volume, with nibabel:

- the COVID-19 CT Lung and Infection Segmentation Dataset (Ma et al., 2021,
  "Towards data-efficient learning: a benchmark for COVID-19 CT lung and
  infection segmentation", Medical Physics; published on Zenodo): 20 CT
  volumes in ``COVID-19-CT-Seg_20cases/<case>.nii.gz`` and their infection
  masks, same file name, in ``Infection_Mask/<case>.nii.gz``. Cases are
  grouped into patients by :func:`ma_patient_id` (two of the 20 cases are one
  patient). The ten ``coronacases_*`` volumes are in HU; the ten
  ``radiopaedia_*`` ones were stored as 0-255 grey levels (reported by users
  of the set), which ``non_hu`` catches.
- the MedSeg "COVID-19 CT segmentation dataset" (medicalsegmentation.com, by
  the Italian Society of Medical and Interventional Radiology's cases):
  ``tr_im.nii.gz`` (a stack of 100 axial slices) and ``tr_mask.nii.gz``
  (1 ground glass, 2 consolidation, 3 pleural effusion). It has no patient ids.

A slice's id is ``(volume, z)``: the file name without ``.nii.gz`` and the
slice index (see the readers for which axis), so ids stay the same whatever
split or selection is asked for. The paper's input is three HU windows stacked
as channels (METHOD.md §6); :func:`three_window` makes them.
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "THREE_WINDOWS",
    "LUNG_WINDOW",
    "SPLITS",
    "window_hu",
    "three_window",
    "split_by_patient",
    "CTSlices",
    "ma_patient_id",
    "medseg_blocks",
    "read_covid_ct_seg",
    "read_medseg_covid",
]

#: The paper's three HU windows (METHOD.md §6), one per input channel.
THREE_WINDOWS = ((-174.0, 274.0), (-1493.0, 484.0), (-534.0, 1425.0))
#: The one-channel option: the second of the paper's windows, which spans lung and lesion.
LUNG_WINDOW = THREE_WINDOWS[1]
SPLITS = ("train", "val", "test")

_MA_IMAGES, _MA_MASKS = "COVID-19-CT-Seg_20cases", "Infection_Mask"
_MA_HOW = (
    "get the 'COVID-19 CT Lung and Infection Segmentation Dataset' (Ma et al., 2021, Medical Physics; "
    f"on Zenodo) and unpack it so that root holds {_MA_IMAGES}/ and {_MA_MASKS}/"
)
_MEDSEG_HOW = (
    "get the MedSeg 'COVID-19 CT segmentation dataset' (medicalsegmentation.com: "
    "tr_im.nii.gz and tr_mask.nii.gz) and put both files in root"
)


def window_hu(hu, lo: float, hi: float) -> np.ndarray:
    """Clips Hounsfield units to ``[lo, hi]`` and maps them linearly to ``[0, 1]``.

    Args:
        hu: array of any shape, in HU.
        lo, hi: the window, ``lo < hi``.

    Returns:
        float32 array of the same shape, in ``[0, 1]`` (``lo`` -> 0, ``hi`` -> 1).
    """
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"window ({lo!r}, {hi!r}) must be finite with lo < hi")
    hu = np.asarray(hu, dtype=np.float32)
    return ((np.clip(hu, lo, hi) - np.float32(lo)) / np.float32(hi - lo)).astype(np.float32)


def three_window(hu) -> np.ndarray:
    """The paper's three HU windows of a slice as channels.

    Args:
        hu: ``(H, W)`` (or ``(..., H, W)``) in HU.

    Returns:
        ``(3, H, W)`` (or ``(..., 3, H, W)``) float32 in ``[0, 1]``: channels
        ``[-174, 274]``, ``[-1493, 484]``, ``[-534, 1425]`` HU.
    """
    hu = np.asarray(hu)
    if hu.ndim < 2:
        raise ValueError(f"hu must have shape (..., H, W), got {hu.shape}")
    return np.stack([window_hu(hu, lo, hi) for lo, hi in THREE_WINDOWS], axis=-3)


def _window_images(hu: np.ndarray, windows) -> np.ndarray:
    """``(N, H, W)`` HU to ``(N, C, H, W)`` float32 for ``windows`` in ``"lung"``, ``"three"``, ``None``."""
    if windows == "three":
        return three_window(hu)
    if windows == "lung":
        return window_hu(hu, *LUNG_WINDOW)[:, None]
    return np.asarray(hu, dtype=np.float32)[:, None]


def split_by_patient(patient_ids, fractions=(0.6, 0.2, 0.2), seed: int = 0) -> np.ndarray:
    """Assigns whole patients to train / val / test.

    The unique ids are sorted, shuffled by a private generator and cut into
    ``round(fractions * number of patients)`` runs (largest remainder; a
    split with a positive fraction gets at least one patient when there are
    enough), so no patient is in two splits and the same ids and seed give the
    same split. Fractions count patients, not slices.

    Args:
        patient_ids: ``(N,)`` ids (str or int), one per item; repeats are the
            same patient.
        fractions: ``(train, val, test)`` shares, each ``>= 0``, summing to 1.
        seed: seed of the private generator.

    Returns:
        ``(N,)`` array of ``"train"``, ``"val"`` or ``"test"``, one per item.
    """
    fractions = tuple(fractions)
    if (
        len(fractions) != 3
        or not all(isinstance(f, (int, float)) and not isinstance(f, bool) and f >= 0 for f in fractions)
        or abs(sum(fractions) - 1) > 1e-6
    ):
        raise ValueError(f"fractions={fractions!r} must be three numbers >= 0 (train, val, test) summing to 1")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"seed={seed!r} must be an integer")
    ids = np.asarray(patient_ids)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError(f"patient_ids must be a non-empty (N,) sequence, got shape {ids.shape}")
    unique = np.unique(ids)
    n = unique.size
    raw = np.asarray(fractions) * n
    counts = np.floor(raw).astype(np.int64)
    counts[np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]] += 1
    # a split asked for should not come back empty just because of rounding
    for k in range(3):
        if fractions[k] > 0 and counts[k] == 0 and n >= sum(f > 0 for f in fractions):
            donor = int(np.argmax(counts))
            counts[donor] -= 1
            counts[k] += 1
    order = unique[np.random.default_rng([seed, 0x5917]).permutation(n)]
    split_of = {}
    start = 0
    for name, c in zip(SPLITS, counts):
        for p in order[start : start + c]:
            split_of[p.item() if hasattr(p, "item") else p] = name
        start += c
    return np.asarray([split_of[p.item() if hasattr(p, "item") else p] for p in ids])


@dataclass
class CTSlices:
    """Axial CT slices with masks, kept as HU; windowed when an item is read.

    Attributes:
        hu: ``(N, H, W)`` float32 Hounsfield units (as stored in the file).
        masks: ``(N, H, W)`` int64: ``{0, 1}`` lesion if ``binary``, else the file's labels.
        slice_ids: ``N`` tuples ``(volume, z)``.
        patients: ``(N,)`` str patient (or, for MedSeg, block) of each slice.
        split: ``(N,)`` str split of each slice.
        windows: ``"three"``, ``"lung"`` or ``None``: what :meth:`__getitem__` returns.

    ``dataset[i]`` is ``(image, mask)``: ``(C, H, W)`` float32 (3 channels in
    ``[0, 1]`` for ``"three"``, 1 in ``[0, 1]`` for ``"lung"``, 1 in HU for
    ``None``) and ``(H, W)`` int64.
    """

    hu: np.ndarray
    masks: np.ndarray
    slice_ids: list
    patients: np.ndarray
    split: np.ndarray
    windows: str | None = "three"

    def __len__(self) -> int:
        return int(self.hu.shape[0])

    def __getitem__(self, i):
        return _window_images(self.hu[i : i + 1] if i >= 0 else self.hu[[i]], self.windows)[0], self.masks[i]

    def images(self) -> np.ndarray:
        """All images windowed: ``(N, C, H, W)`` float32."""
        return _window_images(self.hu, self.windows)


def _check_common(windows, binary, split, fractions, seed, slices, size):
    if windows not in ("three", "lung", None):
        raise ValueError(f"windows={windows!r} must be 'three', 'lung' or None")
    if not isinstance(binary, bool):
        raise ValueError(f"binary={binary!r} must be True or False")
    if split is not None and split not in SPLITS:
        raise ValueError(f"split={split!r} must be one of {list(SPLITS)} or None (all slices)")
    if slices not in ("lesion", "all"):
        raise ValueError(f"slices={slices!r} must be 'lesion' (slices with any lesion pixel) or 'all'")
    if size is not None and (not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 8):
        raise ValueError(f"size={size!r} must be None (native) or an integer >= 8")
    split_by_patient(["a"], fractions, seed)  # validates fractions and seed


def voxels(img) -> np.ndarray:
    """A NIfTI image's voxels as float32, or a ValueError naming its file when the data is damaged.

    nibabel reads the header at ``load`` and the voxels only here: a ``.nii.gz`` cut short
    fails now, with gzip's or numpy's words and no file name.
    """
    try:
        return np.asarray(img.dataobj, dtype=np.float32)
    except (EOFError, OSError, ValueError, zlib.error) as err:
        raise ValueError(
            f"{img.get_filename()}: the NIfTI file's voxel data cannot be read "
            f"({type(err).__name__}: {err}); the file is cut short or damaged"
        ) from err


def _load(path: Path, what: str, how: str):
    """The NIfTI image at ``path`` (a ``nibabel`` image), or an error saying how to get it."""
    import nibabel as nib

    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} not found; {how}")
    try:
        return nib.load(str(path))
    except Exception as err:  # nibabel raises ImageFileError, OSError, EOFError, ...
        raise ValueError(f"cannot read {path} as NIfTI: {err}; {how}") from err


def _resize(a: np.ndarray, size, order: int) -> np.ndarray:
    if size is None or a.shape == (size, size):
        return a
    from scipy import ndimage

    return ndimage.zoom(a, (size / a.shape[0], size / a.shape[1]), order=order)


def _check_hu(vol: np.ndarray, path: Path, non_hu: str) -> bool:
    """Whether to keep a volume; CT in HU has air near -1000, a volume without
    negative values was stored as grey levels and no HU window means anything on it."""
    if vol.size and float(vol.min()) >= 0:
        msg = f"{path} has no negative values (min {float(vol.min()):g}): not Hounsfield units"
        if non_hu == "error":
            raise ValueError(msg)
        if non_hu == "warn":
            warnings.warn(msg + "; its windows are not comparable with the other volumes", stacklevel=4)
        return non_hu != "skip"
    return True


def _select(mask_slices: np.ndarray, slices: str) -> np.ndarray:
    """Indices ``z`` to keep from ``(Z, H, W)`` mask slices."""
    if slices == "all":
        return np.arange(mask_slices.shape[0])
    return np.flatnonzero(mask_slices.reshape(mask_slices.shape[0], -1).any(axis=1))


def _assemble(parts, windows, split_names, patients, what):
    if not parts:
        raise ValueError(f"no {what} slices were selected (split or slice selection left none)")
    shapes = {p[0].shape[1:] for p in parts}
    if len(shapes) > 1:
        raise ValueError(f"{what} slices come in several sizes {sorted(shapes)}; pass size= to resample them")
    return CTSlices(
        hu=np.concatenate([p[0] for p in parts]),
        masks=np.concatenate([p[1] for p in parts]),
        slice_ids=[sid for p in parts for sid in p[2]],
        patients=np.asarray(patients),
        split=np.asarray(split_names),
        windows=windows,
    )


def _canonical_axial(img) -> np.ndarray:
    """Volume data as ``(Z, H, W)`` float32 axial slices in one orientation whatever the affine.

    The data are turned to nibabel's canonical RAS+ voxel order, so ``z``
    counts inferior to superior; each slice is shown as radiologists do: rows
    anterior to posterior, columns the patient's right to left.
    """
    from nibabel.orientations import (
        apply_orientation,
        axcodes2ornt,
        io_orientation,
        ornt_transform,
    )

    data = voxels(img)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"expected a 3-D volume, got shape {data.shape}")
    ras = apply_orientation(data, ornt_transform(io_orientation(img.affine), axcodes2ornt("RAS")))
    # RAS: x grows to the patient's right, y to anterior; flip both, then (x, y, z) -> (z, y, x).
    # A view, not a copy: one volume in float32 is already ~300 MB at 512 x 512 x 300.
    return ras[::-1, ::-1, :].transpose(2, 1, 0)


def ma_patient_id(case: str) -> str:
    """The patient of a case of Ma et al.'s set.

    ``radiopaedia_<n>_<study>_<series>`` cases with the same ``<n>`` (the
    Radiopaedia case) are one patient: the set's author says that
    ``radiopaedia_10_85902_1`` and ``radiopaedia_10_85902_3`` are (issue 3 of
    the COVID-19-CT-Seg-Benchmark repository), and ``radiopaedia_29_86490_1`` /
    ``radiopaedia_29_86491_1`` share a Radiopaedia case too, so they are kept
    together to be safe: merging two patients only costs a split some balance,
    splitting one leaks. Any other name is its own patient.

    Args:
        case: the file name without ``.nii.gz``.

    Returns:
        the patient id, e.g. ``"radiopaedia_10"`` or ``"coronacases_001"``.
    """
    parts = case.split("_")
    if len(parts) >= 3 and parts[0] == "radiopaedia" and parts[1].isdigit():
        return f"radiopaedia_{parts[1]}"
    return case


def read_covid_ct_seg(
    root,
    *,
    windows: str | None = "three",
    binary: bool = True,
    split: str | None = None,
    fractions=(0.6, 0.2, 0.2),
    seed: int = 0,
    slices: str = "lesion",
    size: int | None = None,
    non_hu: str = "warn",
) -> CTSlices:
    """Reads the COVID-19 CT Lung and Infection Segmentation Dataset (Ma et al.).

    Every ``<case>.nii.gz`` in ``root/COVID-19-CT-Seg_20cases`` is paired with
    ``root/Infection_Mask/<case>.nii.gz``. Volumes are read one at a time
    (only the volumes of the asked-for split are read) and reoriented to
    nibabel's canonical RAS+ order; slice ``(case, z)`` is canonical slice
    ``z`` (inferior to superior), shown with rows anterior to posterior and
    columns from the patient's right to left. Cases are grouped into
    patients by :func:`ma_patient_id` before splitting.

    Args:
        root: the folder holding the two subfolders.
        windows: ``"three"`` (the paper's 3 windows as channels), ``"lung"``
            (one channel, [-1493, 484] HU) or ``None`` (HU).
        binary: ``True``: mask is 1 where the infection label is > 0.
        split: ``"train"``, ``"val"``, ``"test"`` (by patient, see
            :func:`split_by_patient`) or ``None`` for all cases.
        fractions, seed: the patient-wise split.
        slices: ``"lesion"`` keeps slices with any lesion pixel (as the
            paper's 908-slice Seg-C19 set does), ``"all"`` keeps every slice.
        size: resample slices to ``size x size`` (linear for HU, nearest for
            masks) or ``None`` to keep them.
        non_hu: what to do with a volume that has no negative values (stored
            as grey levels, not HU): ``"warn"``, ``"skip"`` or ``"error"``.

    Returns:
        :class:`CTSlices`.

    Raises:
        FileNotFoundError: a missing folder or mask, named, with where to get the data.
        ValueError: bad arguments, unreadable files, or image and mask of different shapes.
    """
    _check_common(windows, binary, split, fractions, seed, slices, size)
    if non_hu not in ("warn", "skip", "error"):
        raise ValueError(f"non_hu={non_hu!r} must be 'warn', 'skip' or 'error'")
    root = Path(root)
    img_dir, mask_dir = root / _MA_IMAGES, root / _MA_MASKS
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"COVID-19 CT Lung and Infection Segmentation folder {d} not found; {_MA_HOW}")
    cases = sorted(p.name[: -len(".nii.gz")] for p in img_dir.glob("*.nii.gz"))
    if not cases:
        raise FileNotFoundError(f"no *.nii.gz volumes in {img_dir}; {_MA_HOW}")
    for c in cases:  # every mask is checked before any volume is read: fail early, not after minutes
        if not (mask_dir / f"{c}.nii.gz").is_file():
            raise FileNotFoundError(
                f"infection mask {mask_dir / (c + '.nii.gz')} for volume "
                f"{img_dir / (c + '.nii.gz')} not found; {_MA_HOW}"
            )
    case_split = dict(zip(cases, split_by_patient([ma_patient_id(c) for c in cases], fractions, seed)))
    parts, split_names, patients = [], [], []
    for c in cases:
        if split is not None and case_split[c] != split:
            continue
        img_path, mask_path = img_dir / f"{c}.nii.gz", mask_dir / f"{c}.nii.gz"
        img, mimg = _load(img_path, "CT volume", _MA_HOW), _load(mask_path, "infection mask", _MA_HOW)
        if img.shape[:3] != mimg.shape[:3]:
            raise ValueError(f"{img_path} has shape {img.shape} but its mask {mask_path} has {mimg.shape}")
        mask = np.rint(_canonical_axial(mimg)).astype(np.int64)
        keep = _select(mask, slices)
        if keep.size == 0:
            continue
        vol = _canonical_axial(img)
        if not _check_hu(vol, img_path, non_hu):
            continue
        hu = np.stack([_resize(vol[z], size, 1) for z in keep]).astype(np.float32)
        m = np.stack([_resize(mask[z], size, 0) for z in keep])
        del vol  # one volume in memory at a time
        parts.append((hu, (m > 0).astype(np.int64) if binary else m, [(c, int(z)) for z in keep]))
        split_names += [case_split[c]] * keep.size
        patients += [ma_patient_id(c)] * keep.size
    return _assemble(parts, windows, split_names, patients, "COVID-19 CT Lung and Infection Segmentation")


def medseg_blocks(n: int, fractions=(0.6, 0.2, 0.2), seed: int = 0) -> np.ndarray:
    """Split of MedSeg's ``n`` stacked slices into three contiguous runs.

    MedSeg gives no patient ids. Its 100 slices come from some 40-60 patients
    (accounts differ);
    if a patient's slices sit next to each other in the stack (likely for a
    set assembled patient by patient, but not documented), contiguous runs can
    share a patient only at their three cut points, whereas a random slice
    split would put most patients in two splits. The seed rotates where the
    runs start (the stack is a ring), so different seeds give different splits.

    Returns:
        ``(n,)`` array of ``"train"``, ``"val"``, ``"test"``.
    """
    split_by_patient(["a"], fractions, seed)
    raw = np.asarray(fractions) * n
    counts = np.floor(raw).astype(np.int64)
    counts[np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]] += 1
    names = np.repeat(np.asarray(SPLITS), counts)
    return np.roll(names, int(np.random.default_rng([seed, 0x3ED5]).integers(n)))


def read_medseg_covid(
    root,
    *,
    windows: str | None = "three",
    binary: bool = True,
    split: str | None = None,
    fractions=(0.6, 0.2, 0.2),
    seed: int = 0,
    slices: str = "lesion",
    size: int | None = None,
    non_hu: str = "warn",
) -> CTSlices:
    """Reads the MedSeg COVID-19 slices (``tr_im.nii.gz``, ``tr_mask.nii.gz``).

    The files are a stack of 2-D slices, not one patient's volume, so no
    reorientation is done: slice ``("tr_im", z)`` is ``data[:, :, z]`` of the
    file, transposed to ``(H, W)`` = (file axis 1, file axis 0), as stored.
    Splits are three contiguous runs of the stack (see :func:`medseg_blocks`);
    ``patients`` holds ``"tr_im:<split>"``, the run of each slice.

    Args:
        root: the folder holding both files.
        windows, binary, split, fractions, seed, slices, size, non_hu: as in
            :func:`read_covid_ct_seg`. With ``binary`` the target is any label
            > 0 (ground glass, consolidation, pleural effusion); else the labels 0-3.

    Returns:
        :class:`CTSlices`.

    Raises:
        FileNotFoundError: a missing file, named, with where to get the data.
        ValueError: bad arguments, unreadable files, or image and mask of different shapes.
    """
    _check_common(windows, binary, split, fractions, seed, slices, size)
    if non_hu not in ("warn", "error"):
        raise ValueError(f"non_hu={non_hu!r} must be 'warn' or 'error' (MedSeg is one file)")
    root = Path(root)
    img_path, mask_path = root / "tr_im.nii.gz", root / "tr_mask.nii.gz"
    img, mimg = _load(img_path, "MedSeg image", _MEDSEG_HOW), _load(mask_path, "MedSeg mask", _MEDSEG_HOW)
    if img.shape[:3] != mimg.shape[:3] or len(img.shape) != 3:
        raise ValueError(
            f"{img_path} has shape {img.shape} but {mask_path} has {mimg.shape}; "
            f"expected two (H, W, Z) stacks of the same shape"
        )
    mask = np.rint(voxels(mimg)).astype(np.int64).transpose(2, 1, 0)
    vol = voxels(img).transpose(2, 1, 0)
    _check_hu(vol, img_path, non_hu)
    run = medseg_blocks(vol.shape[0], fractions, seed)
    keep = _select(mask, slices)
    if split is not None:
        keep = keep[run[keep] == split]
    hu = np.stack([_resize(vol[z], size, 1) for z in keep]).astype(np.float32) if keep.size else vol[:0]
    m = np.stack([_resize(mask[z], size, 0) for z in keep]) if keep.size else mask[:0]
    parts = [(hu, (m > 0).astype(np.int64) if binary else m, [("tr_im", int(z)) for z in keep])] if keep.size else []
    return _assemble(parts, windows, list(run[keep]), [f"tr_im:{run[z]}" for z in keep], "MedSeg COVID-19")
