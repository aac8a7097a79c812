"""Your own images: an ImageFolder tree or a CSV of paths and labels, read lazily with Pillow.

Two readers find the files and their labels (:func:`read_image_folder`, as
torchvision's ``datasets.ImageFolder`` does; :func:`read_csv`),
:func:`assign_splits` draws validation and test files where none are given,
:func:`scan_images` checks that every file decodes and reads its size, and
:class:`ImageFiles` decodes, resizes and normalizes one image at a time. Every
check raises a one-line :class:`ValueError` naming the file and what is wrong,
before anything trains.

Pillow and torchvision are optional dependencies, imported on use; torch too:
the two torch data sets (:class:`ImageFiles`, :class:`LabelledImages`) live in
:mod:`.image_files` and are imported from there when first asked for.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported on first use by __getattr__ below, for checkers and readers
    from .image_files import ImageFiles, LabelledImages

__all__ = [
    "DEFAULT_TEST_FRACTION",
    "FILE_DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SPLITS",
    "FileTable",
    "ImageFiles",
    "LabelledImages",
    "assign_splits",
    "channel_stats",
    "channels_of",
    "read_csv",
    "read_files",
    "read_image_folder",
    "scan_images",
]

#: Data sets read from the user's files.
FILE_DATASETS = ("imagefolder", "csv")
#: The splits a folder or a CSV ``split`` column may name.
SPLITS = ("train", "val", "test")
#: The share of the files drawn for testing where the data has no test split.
DEFAULT_TEST_FRACTION = 0.2
#: ImageNet's per-channel mean and std (``normalize="imagenet"``), as torchvision's weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Pillow modes of one-channel images.
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
#: Bad files named in a message before "and N more".
_NAMED = 3


def __getattr__(name: str):
    """The torch data sets :class:`ImageFiles` and :class:`LabelledImages`, from
    :mod:`.image_files` when first asked for: checking a config needs no torch."""
    if name in ("ImageFiles", "LabelledImages"):
        from . import image_files

        return getattr(image_files, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _pil():
    try:
        from PIL import Image
    except ImportError as err:
        raise ImportError("reading your images needs Pillow: pip install 'mombs[vision]'") from err
    return Image


def _folder_api():
    try:
        from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset
    except ImportError as err:
        raise ImportError("dataset='imagefolder' needs torchvision: pip install 'mombs[vision]'") from err
    return IMG_EXTENSIONS, make_dataset


def _listing(names: list[str], total: int | None = None) -> str:
    """``a, b, c and 4 more``: the first few of a list, for a one-line message."""
    total = len(names) if total is None else total
    shown = ", ".join(names[:_NAMED])
    return shown + (f" and {total - _NAMED} more" if total > _NAMED else "")


@dataclass
class FileTable:
    """The files a reader found.

    Attributes:
        root: the folder the paths are relative to.
        paths: ``(N,)`` str array of file paths, as given relative to ``root``
            (POSIX separators for a folder's files, a CSV's strings as written).
        labels: ``(N,)`` int64 class ids.
        split: ``(N,)`` str array of each file's given split (``train``, ``val``
            or ``test``), or ``None`` when the data names none.
        classes: the class names, by id.
    """

    root: Path
    paths: np.ndarray
    labels: np.ndarray
    split: np.ndarray | None
    classes: list[str]


def _class_folders(folder: Path) -> list[str]:
    """Sorted sub-folder names; hidden ones (``.ipynb_checkpoints``, ...) are not classes."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _folder_files(folder: Path, class_to_idx: dict, root: Path, extensions) -> list[tuple[str, int]]:
    _, make_dataset = _folder_api()
    found = make_dataset(str(folder), class_to_idx, extensions=extensions, allow_empty=True)
    return [(Path(p).relative_to(root).as_posix(), y) for p, y in found]


def read_image_folder(data_dir) -> FileTable:
    """Reads an ImageFolder tree: one sub-folder per class, images anywhere below it.

    Class ids are the sorted class-folder names, as torchvision's
    ``ImageFolder`` gives them (hidden folders aside); files keep its order
    (class, then path) and its extensions (``.jpg``, ``.png``, ``.tif``, ...):
    other files are passed over. A root whose only folders are ``train/``,
    ``val/`` and ``test/`` (``train/`` at least) holds the given splits, each
    with the class folders of ``train/``.

    Args:
        data_dir: the root folder.

    Returns:
        The files, their labels and, for split folders, their splits.

    Raises:
        ValueError: a missing or empty folder, no class folders, a class folder
            without images, a split folder with a class that ``train/`` lacks.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise ValueError(
            f"data_dir={str(data_dir)!r} is not an existing folder; give the folder that holds one sub-folder per class"
        )
    entries = [e for e in os.listdir(root) if not e.startswith(".")]
    if not entries:
        raise ValueError(
            f"data_dir={str(data_dir)!r} is empty; put one sub-folder of images per class in it "
            f"(data_dir/cat/1.png, data_dir/dog/2.png, ...)"
        )
    folders = _class_folders(root)
    if not folders:
        raise ValueError(
            f"data_dir={str(data_dir)!r} has no class folders ({len(entries)} files, no "
            f"sub-folder); ImageFolder reads one sub-folder per class: data_dir/cat/1.png, ..."
        )
    extensions, _ = _folder_api()
    given = "train" in folders and set(folders) <= set(SPLITS)
    if given:
        classes = _class_folders(root / "train")
        if not classes:
            raise ValueError(
                f"{str(root / 'train')!r} has no class folders; put one sub-folder per class in "
                f"train/ (and in val/ and test/)"
            )
        for s in folders:
            extra = sorted(set(_class_folders(root / s)) - set(classes))
            if extra:
                raise ValueError(f"{str(root / s)!r} has class folders that train/ lacks: {_listing(extra)}")
    else:
        classes = folders
    class_to_idx = {c: i for i, c in enumerate(classes)}
    files, split = [], []
    for s in folders if given else [None]:
        found = _folder_files(root / s if s else root, class_to_idx, root, extensions)
        files += found
        split += [s] * len(found)
    if not files:
        raise ValueError(
            f"data_dir={str(data_dir)!r} holds no image files ({', '.join(extensions)}) in its class folders"
        )
    labels = np.array([y for _, y in files], dtype=np.int64)
    train_labels = labels[np.array(split) == "train"] if given else labels
    empty = [classes[c] for c in range(len(classes)) if not (train_labels == c).any()]
    if empty:
        where = "train/" if given else "data_dir"
        raise ValueError(f"class folder(s) {_listing(empty)} in {where} of {str(data_dir)!r} hold no images")
    return FileTable(
        root, np.array([p for p, _ in files], dtype=str), labels, np.array(split, dtype=str) if given else None, classes
    )


def _int_label(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def read_csv(data_dir) -> FileTable:
    """Reads a CSV file with the columns ``path,label`` and an optional ``split``.

    Paths are relative to the CSV file's folder. Labels are all integers (the
    class ids themselves: ``num_classes`` is the largest plus one) or all class
    names (sorted to ids, as ``ImageFolder`` sorts its folders). ``split``
    values are ``train``, ``val`` or ``test``.

    Args:
        data_dir: the CSV file.

    Returns:
        The files, as written, their labels and, with a ``split`` column, their splits.

    Raises:
        ValueError: a missing file, no ``path``/``label`` column (naming the
            columns found), no rows, an empty, negative or mixed label, a bad
            split value, a file listed twice, paths that do not exist (naming
            the first few and the count).
    """
    path = Path(data_dir)
    if not path.is_file():
        raise ValueError(
            f"data_dir={str(data_dir)!r} is not an existing file; dataset='csv' reads a CSV file "
            f"with the columns path,label (and optionally split)"
        )
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            if "path" not in columns or "label" not in columns:
                raise ValueError(
                    f"{str(path)!r} has the columns {columns}; it needs 'path' and 'label' (and optionally 'split')"
                )
            reader.fieldnames = columns
            rows = [(reader.line_num, row) for row in reader]
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{str(path)!r} is not a UTF-8 text file (byte {err.start}: {err.reason}); "
            f"dataset='csv' reads a CSV file with the columns path,label"
        ) from None
    except csv.Error as err:
        raise ValueError(f"{str(path)!r} is not a CSV file that parses (line {reader.line_num}: {err})") from None
    extra = next(((line, row[None]) for line, row in rows if row.get(None)), None)
    if extra:  # more fields than the header names: an unquoted comma in a path, or a shifted row
        raise ValueError(
            f"{str(path)!r} line {extra[0]} has {len(columns) + len(extra[1])} fields but the header "
            f"names {len(columns)} ({','.join(columns)}); quote a path that holds a comma"
        )
    if not rows:
        raise ValueError(f"{str(path)!r} has a header and no rows; list one image per line")
    paths, texts, splits, line_of = [], [], [], {}
    for line, row in rows:
        p, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
        if not p:
            raise ValueError(f"{str(path)!r} line {line}: the path is empty")
        if p in line_of:
            raise ValueError(
                f"{str(path)!r} line {line}: path {p!r} is listed twice (lines {line_of[p]} "
                f"and {line}); give each file once"
            )
        line_of[p] = line
        if not label:
            raise ValueError(
                f"{str(path)!r} line {line} ({p}): the label is empty; it is neither an integer nor a class name"
            )
        if "split" in columns:
            s = (row.get("split") or "").strip().lower()
            if s not in SPLITS:
                raise ValueError(
                    f"{str(path)!r} line {line} ({p}): split {row.get('split')!r} is not one of {', '.join(SPLITS)}"
                )
            splits.append(s)
        paths.append(p)
        texts.append(label)
    ints = [_int_label(t) for t in texts]
    if all(v is not None for v in ints):
        if min(ints) < 0:
            i = int(np.argmin(ints))
            raise ValueError(
                f"{str(path)!r} line {rows[i][0]} ({paths[i]}): label {texts[i]!r} is negative; "
                f"integer labels are class ids 0, 1, ..."
            )
        labels = np.array(ints, dtype=np.int64)
        classes = [str(c) for c in range(int(labels.max()) + 1)]
    else:
        if any(v is not None for v in ints):
            i = next(j for j, v in enumerate(ints) if v is not None)
            k = next(j for j, v in enumerate(ints) if v is None)
            raise ValueError(
                f"{str(path)!r} mixes integer labels ({texts[i]!r}, line {rows[i][0]}) and class "
                f"names ({texts[k]!r}, line {rows[k][0]}); use one or the other"
            )
        classes = sorted(set(texts))
        ids = {c: i for i, c in enumerate(classes)}
        labels = np.array([ids[t] for t in texts], dtype=np.int64)
    root = path.parent
    missing = [p for p in paths if not (root / p).is_file()]
    if missing:
        raise ValueError(
            f"{str(path)!r}: {len(missing)} path(s) do not exist (relative to {str(root)!r}): {_listing(missing)}"
        )
    return FileTable(root, np.array(paths, dtype=str), labels, np.array(splits, dtype=str) if splits else None, classes)


def _draw(pool: np.ndarray, labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A stratified share of ``pool``: about ``fraction`` of each class, one of each kept back."""
    picked = []
    for c in np.unique(labels[pool]):
        members = pool[labels[pool] == c]
        k = min(int(np.floor(fraction * members.size + 0.5)), members.size - 1)
        picked.append(rng.permutation(members)[:k])
    picked = np.concatenate(picked) if picked else np.zeros(0, np.int64)
    if picked.size == 0 and fraction > 0:
        # Classes too small to give a share each: one file of the largest class.
        c = np.bincount(labels[pool]).argmax()
        members = pool[labels[pool] == c]
        if members.size > 1:
            picked = rng.permutation(members)[:1]
    return np.sort(picked)


def assign_splits(
    table: FileTable, *, val_fraction: float, test_fraction: float | None, seed: int
) -> dict[str, np.ndarray]:
    """The indices of each split: the given ones, the others drawn from the training files.

    Where the data gives no test split, ``test_fraction`` (default
    :data:`DEFAULT_TEST_FRACTION`) of the training files is drawn for testing;
    where it gives no validation split, ``val_fraction`` of the rest. Draws are
    stratified by class (each class keeps at least one training file) and use a
    private generator seeded from ``seed``.

    Returns:
        ``{"train", "val", "test"}``: ascending ``(n,)`` int64 indices into the
        table; every file is in exactly one.

    Raises:
        ValueError: ``test_fraction`` with a given test split, or a split left empty.
    """
    given = set(table.split.tolist()) if table.split is not None else set()
    if "test" in given and test_fraction is not None:
        raise ValueError(
            f"test_fraction={test_fraction!r} has no use: the data gives its test split; leave test_fraction out"
        )
    n = len(table.paths)
    split = table.split if table.split is not None else np.full(n, "train")
    if "train" not in set(split.tolist()):
        raise ValueError(
            f"the data's given splits ({', '.join(sorted(given))}) hold no training file; mark some files split=train"
        )
    rng = np.random.default_rng([seed, 0xF11E])
    out = {s: np.flatnonzero(split == s) for s in SPLITS}
    pool = out["train"]
    for s, fraction in (
        ("test", DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction),
        ("val", val_fraction),
    ):
        if s not in given:
            drawn = _draw(pool, table.labels, fraction, rng)
            out[s] = drawn
            pool = np.setdiff1d(pool, drawn)
    out["train"] = pool
    for s in SPLITS:
        if out[s].size == 0:
            raise ValueError(
                f"the {s} split is empty: {n} image(s) are too few to give train, val and test "
                f"files; add images or give the splits"
            )
    return {s: out[s].astype(np.int64) for s in SPLITS}


def read_files(dataset: str, data_dir) -> FileTable:
    """The table of ``dataset`` (one of :data:`FILE_DATASETS`) at ``data_dir``."""
    if dataset == "imagefolder":
        return read_image_folder(data_dir)
    if dataset == "csv":
        return read_csv(data_dir)
    raise ValueError(f"dataset={dataset!r} is not read from files; choose one of {list(FILE_DATASETS)}")


def scan_images(root: Path, paths) -> tuple[list[str], list[tuple[int, int]]]:
    """Opens every file once (Pillow's ``verify``: headers and, for PNG, checksums; no decoding).

    Returns:
        Each file's Pillow mode and ``(width, height)``.

    Raises:
        ValueError: naming the first few files that do not open and how many do not.
    """
    Image = _pil()
    modes, sizes, bad = [], [], []
    for p in paths:
        try:
            with Image.open(root / p) as im:
                modes.append(im.mode)
                sizes.append(im.size)
                im.verify()
        except Exception as err:  # noqa: BLE001 - any failure to open is the file's fault; name it
            why = (
                "not an image Pillow can read"
                if isinstance(err, Image.UnidentifiedImageError)
                else f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'broken'}"
            )
            bad.append(f"{p} ({why})")
    if bad:
        raise ValueError(f"{len(bad)} of {len(paths)} image(s) do not decode: {_listing(bad)}")
    return modes, sizes


def channels_of(modes, *, rgb: bool) -> int:
    """1 when every image is grey and nothing asks for colour, else 3 (grey images repeated)."""
    return 3 if rgb or any(m not in _GREY_MODES for m in modes) else 1


def channel_stats(images: ImageFiles, indices) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (unbiased) over every pixel of the images ``indices``.

    Returns:
        ``(C,)`` mean and ``(C,)`` std (at least ``1e-6``).
    """
    total = np.zeros(images.channels)
    squares = np.zeros(images.channels)
    count = 0
    for i in indices:
        x = images.raw(int(i)).double().flatten(1).numpy()
        total += x.sum(1)
        squares += (x * x).sum(1)
        count += x.shape[1]
    mean = total / count
    var = (squares - count * mean * mean) / max(count - 1, 1)
    return mean, np.sqrt(np.maximum(var, 0)).clip(min=1e-6)
