"""Your own volumes: a Medical Segmentation Decathlon or nnU-Net raw task folder, as 2-D slices.

The folder (``data_dir``) holds ``dataset.json``, ``imagesTr/`` and
``labelsTr/``; ``imagesTs/`` has no labels, so it is neither a test split nor
read. ``dataset.json`` comes in two dialects, both understood:

- **MSD** (Antonelli et al., 2022, "The Medical Segmentation Decathlon",
  Nature Communications): ``training: [{"image": "./imagesTr/x.nii.gz",
  "label": "./labelsTr/x.nii.gz"}]``, ``labels: {"0": "background", "1":
  "tumour"}``, ``modality: {"0": "CT"}``. An image with several modalities is
  one 4-D file (channels last). nnU-Net v1's folders use this dialect with one
  file per channel, ``imagesTr/x_0000.nii.gz``, ``x_0001.nii.gz``, ...; a
  listed image that is missing while its ``_0000`` file exists is read so.
- **nnU-Net v2** (Isensee et al., 2021, Nature Methods; its
  ``dataset_format.md``): ``channel_names: {"0": "CT"}``, ``labels:
  {"background": 0, "tumor": 1}``, ``file_ending: ".nii.gz"``; no case list:
  the cases are the files of ``labelsTr/`` (``CASE.nii.gz``), each with one
  image per channel, ``imagesTr/CASE_0000.nii.gz``, ``CASE_0001.nii.gz``, ...

A case's id is its label file's name without the file ending. Volumes are read
with nibabel and turned to the canonical axial orientation of
:func:`~mombs.recipes.segmentation.covid_ct._canonical_axial`; slice ``z`` of a
case is canonical slice ``z`` (inferior to superior). The recipe trains
binary: the target is every non-zero label of ``dataset.json`` against
background (its label names are kept in :attr:`DecathlonSlices.labels`).

Everything about the files is checked before any training, each problem as a
one-line :class:`ValueError` naming the file (several bad files: the first
:data:`SHOWN` and their count).
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

__all__ = [
    "DECATHLON_DATASETS",
    "DEFAULT_TEST_FRACTION",
    "SHOWN",
    "CaseFiles",
    "DecathlonSlices",
    "TaskFolder",
    "VolumeSlices",
    "check_task_folder",
    "normalize_volume",
    "read_decathlon",
    "read_task_folder",
]

#: The data set names that read such a folder (one reader; ``nnunet`` is an alias of ``msd``).
DECATHLON_DATASETS = ("msd", "nnunet")
#: Share of cases drawn for testing when ``test_fraction`` is not set: the folder has no labelled test split.
DEFAULT_TEST_FRACTION = 0.2
#: Bad files named in one message; the others are counted.
SHOWN = 3

_HOW = (
    "a Medical Segmentation Decathlon or nnU-Net raw task folder holding dataset.json, imagesTr/ and "
    "labelsTr/ (docs/your-data.md)"
)
_NIFTI = (".nii.gz", ".nii")


def check_task_folder(root) -> None:
    """Refuses a ``data_dir`` that cannot be a task folder; reads nothing but the folder's listing.

    Raises:
        ValueError: ``root`` unset, missing, not a folder, empty, or without ``dataset.json``.
    """
    if root is None or not Path(root).exists():
        raise ValueError(
            f"data_dir={None if root is None else str(root)!r} must be {_HOW}; it does not exist. "
            f"Nothing is downloaded."
        )
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"data_dir={str(root)!r} is not a folder; it must be {_HOW}")
    if not any(root.iterdir()):
        raise ValueError(f"data_dir={str(root)!r} is empty; it must be {_HOW}")
    if not (root / "dataset.json").is_file():
        raise ValueError(f"{root / 'dataset.json'} not found; data_dir must be {_HOW}")


@dataclass
class CaseFiles:
    """One labelled case: its id and its files, relative to the task folder.

    Attributes:
        case: the id (the label file's name without its ending).
        images: one path per channel, or one path to a 4-D file holding every channel.
        label: the label volume's path.
    """

    case: str
    images: tuple
    label: str


@dataclass
class TaskFolder:
    """What ``dataset.json`` says, with the cases found.

    Attributes:
        root: the task folder.
        dialect: ``"msd"`` or ``"nnunet"`` (v2).
        labels: label value -> name, e.g. ``{0: "background", 1: "tumour"}``.
        channels: the modality (channel name) of each image channel, e.g. ``("CT",)``.
        cases: the labelled cases, sorted by id.
    """

    root: Path
    dialect: str
    labels: dict
    channels: tuple
    cases: list


@dataclass
class VolumeSlices:
    """2-D slices of some cases.

    Attributes:
        images: ``(N, C, H, W)`` float32, normalised (see :func:`normalize_volume`).
        masks: ``(N, H, W)`` int64 in ``{0, 1}``: 1 where the label is not background.
        case: ``(N,)`` str, the case of each slice.
        path: ``(N,)`` str, its image file relative to the task folder (the first channel's file
            when each channel has its own).
        slice: ``(N,)`` int64, its axial index ``z`` in the canonical volume.
    """

    images: np.ndarray
    masks: np.ndarray
    case: np.ndarray
    path: np.ndarray
    slice: np.ndarray


@dataclass
class DecathlonSlices:
    """A task folder's labelled cases split by case, as slices.

    Attributes:
        train, val, test: :class:`VolumeSlices` of each split.
        splits: ``{"train": [case ids], "val": [...], "test": [...]}``, each sorted.
        labels: label value -> name, from ``dataset.json``.
        channels: the modality of each image channel.
        dialect: ``"msd"`` or ``"nnunet"``.
    """

    train: VolumeSlices
    val: VolumeSlices
    test: VolumeSlices
    splits: dict
    labels: dict
    channels: tuple
    dialect: str


def _raise_all(problems: list, what: str) -> None:
    """One line for one problem; the first :data:`SHOWN` and the count for several."""
    if len(problems) == 1:
        raise ValueError(problems[0])
    if problems:
        more = f"; and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        raise ValueError(f"{len(problems)} {what}: " + "; ".join(problems[:SHOWN]) + more)


def _int_keys(meta_path, key: str, mapping) -> dict:
    """``{"0": "CT", "1": ...}`` as ``{0: "CT", ...}``."""
    try:
        return {int(k): str(v) for k, v in mapping.items()}
    except (TypeError, ValueError, AttributeError):
        raise ValueError(
            f'{meta_path}: {key!r} must map integer keys to names, e.g. {{"0": "CT"}}; got {mapping!r}'
        ) from None


def _v2_labels(meta_path, mapping) -> dict:
    """nnU-Net v2's ``{"background": 0, "tumor": 1}`` (a region may list several values) as value -> name."""
    if "ignore" in mapping:
        raise ValueError(
            f"{meta_path}: labels has 'ignore' (nnU-Net's unannotated pixels), which this reader "
            f"does not support; give those pixels a label or background"
        )
    out = {}
    for name, value in mapping.items():
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise ValueError(f"{meta_path}: labels[{name!r}]={value!r} must be an integer >= 0 (or a list of them)")
        for v in values:
            out.setdefault(v, str(name))
    return out


def _parse_json(meta_path: Path) -> dict:
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{meta_path} is not readable JSON: {err}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path} must hold a JSON object, got {type(meta).__name__}")
    if "training" in meta:
        need = ("training", "labels", "modality")
    elif "channel_names" in meta:
        need = ("channel_names", "labels", "file_ending")
    else:
        raise ValueError(
            f"{meta_path} has neither 'training' (MSD: training, labels, modality) nor "
            f"'channel_names' (nnU-Net v2: channel_names, labels, file_ending)"
        )
    missing = [k for k in need if k not in meta]
    if missing:
        raise ValueError(f"{meta_path} lacks {missing} (it needs {list(need)})")
    for k in need[1:]:
        if k == "file_ending" and not isinstance(meta[k], str):
            raise ValueError(f'{meta_path}: file_ending={meta[k]!r} must be a string such as ".nii.gz"')
        if k != "file_ending" and (not isinstance(meta[k], dict) or not meta[k]):
            raise ValueError(f"{meta_path}: {k!r} must be a non-empty mapping, got {meta[k]!r}")
    return meta


def _channel_files(stem: str, ending: str, n: int) -> tuple:
    return tuple(f"imagesTr/{stem}_{c:04d}{ending}" for c in range(n))


def _strip(name: str, endings) -> str:
    for e in endings:
        if name.endswith(e):
            return name[: -len(e)]
    return name


def _msd_cases(root: Path, meta_path: Path, training, n_channels: int) -> list:
    if not isinstance(training, list):
        raise ValueError(f'{meta_path}: \'training\' must be a list of {{"image": ..., "label": ...}}')
    cases = []
    for i, entry in enumerate(training):
        if not (
            isinstance(entry, dict) and isinstance(entry.get("image"), str) and isinstance(entry.get("label"), str)
        ):
            raise ValueError(f'{meta_path}: training[{i}]={entry!r} must be {{"image": path, "label": path}}')
        image, label = (posixpath.normpath(entry[k]) for k in ("image", "label"))
        images = (image,)
        if not (root / image).is_file():  # nnU-Net v1: the listed name, one file per channel
            stem = _strip(posixpath.basename(image), _NIFTI)
            ending = image[len(posixpath.join(posixpath.dirname(image), stem)) :]
            per_channel = tuple(
                posixpath.join(posixpath.dirname(image), f"{stem}_{c:04d}{ending}") for c in range(n_channels)
            )
            if (root / per_channel[0]).is_file():
                images = per_channel
        cases.append(CaseFiles(_strip(posixpath.basename(label), _NIFTI), images, label))
    return cases


def _nnunet_cases(root: Path, meta_path: Path, ending, n_channels: int) -> list:
    if ending not in _NIFTI:
        raise ValueError(
            f"{meta_path}: file_ending={ending!r} is not read; this reader reads NIfTI ({' or '.join(_NIFTI)})"
        )
    if not (root / "labelsTr").is_dir():
        raise ValueError(f"{root / 'labelsTr'} not found; data_dir must be {_HOW}")
    names = sorted(p.name for p in (root / "labelsTr").iterdir() if p.name.endswith(ending))
    cases = [_strip(n, (ending,)) for n in names]
    return [CaseFiles(c, _channel_files(c, ending, n_channels), f"labelsTr/{c}{ending}") for c in cases]


def read_task_folder(root) -> TaskFolder:
    """Reads ``dataset.json`` (either dialect) and finds the labelled cases; reads no volume.

    Raises:
        ValueError: a folder that is not a task folder; ``dataset.json`` not
            JSON, missing keys or naming files that do not exist; fewer than
            3 labelled cases.
    """
    check_task_folder(root)
    root = Path(root)
    meta_path = root / "dataset.json"
    meta = _parse_json(meta_path)
    if "training" in meta:
        dialect = "msd"
        labels = _int_keys(meta_path, "labels", meta["labels"])
        channels = _int_keys(meta_path, "modality", meta["modality"])
    else:
        dialect = "nnunet"
        labels = _v2_labels(meta_path, meta["labels"])
        channels = _int_keys(meta_path, "channel_names", meta["channel_names"])
    if sorted(channels) != list(range(len(channels))):
        raise ValueError(f"{meta_path}: channel keys {sorted(channels)} must be 0, 1, ..., {len(channels) - 1}")
    channels = tuple(channels[c] for c in range(len(channels)))
    cases = (
        _msd_cases(root, meta_path, meta["training"], len(channels))
        if dialect == "msd"
        else _nnunet_cases(root, meta_path, meta["file_ending"], len(channels))
    )
    named_by = (
        "case {!r} of the training list in " + str(meta_path)
        if dialect == "msd"
        else "a channel image of case {!r}, found in labelsTr/"
    )
    missing = [
        f"{root / p} not found ({named_by.format(c.case)})"
        for c in cases
        for p in (*c.images, c.label)
        if not (root / p).is_file()
    ]
    _raise_all(missing, "files are missing")
    if len(cases) < 3:
        raise ValueError(
            f"{meta_path}: {len(cases)} labelled case(s) found; at least 3 are needed "
            f"(one each for training, validation and test)"
        )
    seen = set()
    for c in cases:
        if c.case in seen:
            raise ValueError(f"{meta_path}: case {c.case!r} is listed twice")
        seen.add(c.case)
    return TaskFolder(root, dialect, labels, channels, sorted(cases, key=lambda c: c.case))


def normalize_volume(vol: np.ndarray, modality: str, window=None) -> np.ndarray:
    """One channel of one volume, scaled for training.

    ``window=[lo, hi]``: clipped to it and mapped to ``[0, 1]``
    (:func:`~mombs.recipes.segmentation.covid_ct.window_hu`). Otherwise a
    z-score over the whole volume (mean 0, std 1; std floored at 1e-8), for
    CT (``modality`` "CT", any case) after clipping to the volume's own 0.5
    and 99.5 percentiles. nnU-Net's CT scheme clips to percentiles of the
    foreground over the whole training set and uses that set's mean and std;
    per-volume statistics of the whole volume are the simpler choice made
    here: no pass over the data before reading, and no statistic of the
    validation and test cases leaks into the training slices.

    Args:
        vol: ``(Z, H, W)`` float32, as stored.
        modality: the channel's name in ``dataset.json``.
        window: ``(lo, hi)`` or ``None``.

    Returns:
        ``(Z, H, W)`` float32.
    """
    from .covid_ct import window_hu

    if window is not None:
        return window_hu(vol, *window)
    if modality.strip().lower() == "ct":
        lo, hi = np.percentile(vol, [0.5, 99.5])
        vol = np.clip(vol, lo, hi)
    mean, std = float(vol.mean(dtype=np.float64)), float(vol.std(dtype=np.float64))
    return ((vol - np.float32(mean)) / np.float32(max(std, 1e-8))).astype(np.float32)


def _canonical_shape(img) -> tuple:
    """``(Z, H, W)`` that :func:`_canonical_axial` gives for ``img``, from its header alone."""
    from nibabel.orientations import io_orientation

    ras = [0, 0, 0]
    for axis, (to, _) in enumerate(io_orientation(img.affine)):
        ras[int(to)] = img.shape[axis]
    return ras[2], ras[1], ras[0]


def _headers(task: TaskFolder) -> dict:
    """Every case's canonical ``(Z, H, W)``, after checking each file's header and shape."""
    from .covid_ct import _load

    how = "replace the file or drop its case"
    n_ch = len(task.channels)
    problems, shapes = [], {}
    for c in task.cases:
        try:
            label = _load(task.root / c.label, "label", how)
            images = [_load(task.root / p, "image", how) for p in c.images]
        except ValueError as err:
            problems.append(str(err))
            continue
        lpath = task.root / c.label
        if not (len(label.shape) == 3 or (len(label.shape) == 4 and label.shape[3] == 1)):
            problems.append(f"{lpath} has shape {label.shape}; a label must be one 3-D volume")
            continue
        for p, img in zip(c.images, images):
            want = 1 if len(c.images) == n_ch else n_ch
            got = 1 if len(img.shape) == 3 else (img.shape[3] if len(img.shape) == 4 else None)
            if got != want:
                problems.append(
                    f"{task.root / p} has shape {img.shape}; expected a 3-D volume"
                    + (f" with {want} channels last ({list(task.channels)})" if want > 1 else "")
                )
            elif img.shape[:3] != label.shape[:3]:
                problems.append(
                    f"{lpath} has shape {label.shape[:3]} but its image {task.root / p} has {img.shape[:3]}"
                )
        shapes[c.case] = _canonical_shape(label)
    _raise_all(problems, "volumes are unusable")
    return shapes


def _read_case(task: TaskFolder, c: CaseFiles, window, allowed):
    """``(channels, mask)``: ``C`` normalised ``(Z, H, W)`` float32 volumes and the ``(Z, H, W)``
    int64 label volume, canonical axial."""
    import nibabel as nib

    from .covid_ct import _canonical_axial

    def decoded(rel):
        try:
            img = nib.load(str(task.root / rel))
            return img, np.asarray(img.dataobj, dtype=np.float32)
        except Exception as err:  # gzip's EOFError, zlib.error, OSError, nibabel's errors ...
            raise ValueError(
                f"cannot decode {task.root / rel}: {type(err).__name__}: {err} (a truncated or corrupt file?)"
            ) from err

    limg, ldata = decoded(c.label)
    mask = np.rint(_canonical_axial(SimpleNamespace(dataobj=ldata, affine=limg.affine))).astype(np.int64)
    bad = sorted(set(np.unique(mask).tolist()) - allowed)
    if bad:
        raise ValueError(f"{task.root / c.label} has label values {bad} not in dataset.json's labels {sorted(allowed)}")
    vols = []
    for rel in c.images:
        img, data = decoded(rel)
        per_file = [data] if data.ndim == 3 or len(c.images) > 1 else [data[..., k] for k in range(data.shape[3])]
        for d in per_file:
            vol = _canonical_axial(SimpleNamespace(dataobj=d, affine=img.affine))
            vols.append(normalize_volume(vol, task.channels[len(vols)], window))
    return vols, mask


def read_decathlon(
    root,
    *,
    size: int | None = None,
    foreground_only: bool = False,
    intensity_window=None,
    fractions=(0.6, 0.2, 0.2),
    seed: int = 0,
) -> DecathlonSlices:
    """Reads a task folder's labelled cases as 2-D slices, split by case.

    Validation and test cases are drawn by
    :func:`~mombs.recipes.segmentation.covid_ct.split_by_patient` (each case
    its own patient): the same cases and seed give the same split, no case is
    in two splits and each split gets at least one case. ``imagesTs/`` is not
    read (no labels). All slices are in memory at once, resized to ``size``.

    Args:
        root: the task folder (see the module docstring).
        size: resample slices to ``size x size`` (linear for images, nearest
            for masks); ``None`` keeps the volumes' in-plane size, which must
            then be the same for every case and a multiple of 16 per side
            (the recipe's U-Nets halve a slice up to 4 times).
        foreground_only: keep only slices with a non-zero label (in the
            volume's own grid), else every slice.
        intensity_window: ``(lo, hi)`` or ``None``: see :func:`normalize_volume`.
        fractions: ``(train, val, test)`` shares of the cases, summing to 1.
        seed: the split's seed.

    Returns:
        :class:`DecathlonSlices`; masks are binary (any non-zero label).

    Raises:
        ValueError: each bad input as one line naming the file, before any
            slice is returned: see :func:`read_task_folder`; a volume that
            does not decode; a label whose shape differs from its image's; a
            label value not in ``dataset.json``; in-plane sizes that differ
            (without ``size``); a validation or test split without slices.
    """
    from .covid_ct import _resize, _select, split_by_patient

    if size is not None and (not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 8):
        raise ValueError(f"size={size!r} must be None (native) or an integer >= 8")
    if not isinstance(foreground_only, bool):
        raise ValueError(f"foreground_only={foreground_only!r} must be True or False")
    if intensity_window is not None:
        intensity_window = tuple(float(v) for v in intensity_window)
    task = read_task_folder(root)
    shapes = _headers(task)
    if size is None:
        planes = {c: s[1:] for c, s in shapes.items()}
        if len(set(planes.values())) > 1:
            first = {}
            for c, hw in planes.items():
                first.setdefault(hw, c)
            said = ", ".join(f"{h}x{w} (case {c!r})" for (h, w), c in first.items())
            raise ValueError(
                f"the volumes' in-plane sizes differ: {said}; set image_size to resample every slice to one size"
            )
        h, w = next(iter(planes.values()))
        if h % 16 or w % 16:
            raise ValueError(
                f"the volumes' in-plane size {h}x{w} is not a multiple of 16 (the U-Nets halve a "
                f"slice up to 4 times); set image_size to resample the slices"
            )
    ids = [c.case for c in task.cases]
    split_of = dict(zip(ids, split_by_patient(ids, fractions, seed)))
    allowed = set(task.labels)
    parts = {"train": [], "val": [], "test": []}
    problems = []
    for c in task.cases:
        try:
            vols, mask = _read_case(task, c, intensity_window, allowed)
        except ValueError as err:
            problems.append(str(err))
            continue
        if problems:  # keep reading only to name every bad file
            continue
        keep = _select(mask, "lesion" if foreground_only else "all")
        if keep.size == 0:
            continue
        x = np.stack([np.stack([_resize(v[z], size, 1) for v in vols]) for z in keep]).astype(np.float32)
        m = np.stack([_resize((mask[z] > 0).astype(np.int64), size, 0) for z in keep])
        parts[split_of[c.case]].append((x, m, c.case, c.images[0], keep))
        del vols, mask  # one case in memory at a time
    _raise_all(problems, "volumes are unusable")
    out = {}
    for name, ps in parts.items():
        if not ps:
            hint = " with foreground; set foreground_only=false or another seed" if foreground_only else ""
            raise ValueError(f"the {name} cases {sorted(c for c in ids if split_of[c] == name)} have no slice{hint}")
        out[name] = VolumeSlices(
            images=np.concatenate([p[0] for p in ps]),
            masks=np.concatenate([p[1] for p in ps]),
            case=np.asarray([p[2] for p in ps for _ in p[4]]),
            path=np.asarray([p[3] for p in ps for _ in p[4]]),
            slice=np.concatenate([p[4] for p in ps]).astype(np.int64),
        )
    splits = {name: sorted(c for c in ids if split_of[c] == name) for name in parts}
    return DecathlonSlices(out["train"], out["val"], out["test"], splits, task.labels, task.channels, task.dialect)
