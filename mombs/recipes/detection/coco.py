"""Your own detection data: a COCO instances JSON file and its images, read as torchvision reads COCO.

Point ``data_dir`` at the folder holding the JSON file (``annotations=NAME``
picks one when there are several) and the images. What is read, and how:

- ``images``: every entry is one item, **including images without any
  annotation** (they train and count as images with no boxes: an empty
  ``(0, 4)`` box tensor). ``file_name`` is relative to ``data_dir``, or else
  to ``data_dir/images/``: the first of the two that holds every image is
  used (:attr:`CocoSet.image_root`, and the run's ``config.json`` says which).
- ``annotations``: COCO's ``bbox`` ``[x, y, width, height]`` in pixels becomes
  torchvision's ``(x1, y1, x2, y2) = (x, y, x + width, y + height)``, clipped
  to the image, as torchvision's ``references/detection/coco_utils.py``
  (``ConvertCocoPolysToMask``) does. Annotations with ``iscrowd`` set are
  **skipped**, as torchvision's reference skips them; ``segmentation``,
  ``area`` and ``keypoints`` are not read.
- ``categories``: category ids map to contiguous classes ``1..K`` in sorted id
  order (``0`` is the background), so the detector has ``K + 1`` classes.
  FROC (the recipe's metric) counts boxes whatever their class.
- Pixels are decoded with Pillow when an item is asked for, never all at
  once, to ``float32`` in ``[0, 1]``: 8-bit images divided by 255, 16-bit grey
  ones by 65535, float ones clipped. Colour images give 3 channels; grey ones
  1 channel, repeated to 3 when the model takes 3 (:func:`read_coco`'s
  ``channels``).

Everything is checked before anything trains (:func:`read_coco`): the JSON's
structure, every annotation's image, category and box (inside its image with
a 1-pixel tolerance, positive width and height), and every image file (present,
passing Pillow's ``verify()``, of the size the JSON gives). Each check raises
one ``ValueError`` line naming the JSON file, the first few bad items and how
many there are.

Splits (:func:`coco_splits`): when every image carries a ``"split"`` field
(``"train"``, ``"val"`` or ``"test"``) those are used; otherwise validation
and test images are drawn by a generator seeded from the run's seed. Several
JSON files (say ``train.json`` and ``val.json``) are not merged: one run reads
one file.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import numpy as np

__all__ = [
    "COCO_MAX_SIZE",
    "COCO_SPLITS",
    "COCO_TEST_FRACTION",
    "CocoImage",
    "CocoImages",
    "CocoSet",
    "coco_splits",
    "find_annotations",
    "read_coco",
]

#: The largest default ``image_size``: the longest image side, capped at this.
COCO_MAX_SIZE = 512
#: The share of images drawn for testing when ``test_fraction`` is not set.
COCO_TEST_FRACTION = 0.2
#: The values of an image's ``"split"`` field.
COCO_SPLITS = ("train", "val", "test")
#: Pixel tolerance of the box-inside-image check.
BOX_TOLERANCE = 1.0
#: Bad items a message names before giving the count.
_SHOW = 3
#: Pillow modes read as one grey channel (the rest are converted to RGB).
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_WHAT = (
    "a folder holding a COCO instances JSON file (images, annotations, categories) and its images, "
    "file_name relative to it or to its images/ folder"
)


@dataclass
class CocoImage:
    """One image of the JSON file.

    Attributes:
        file_name: the JSON's ``file_name``.
        image_id: the JSON's ``id``.
        path: the file on disk.
        width, height: pixels.
        grey: the file decodes to one channel.
        boxes: ``(n, 4)`` float32 ``(x1, y1, x2, y2)`` in pixels, ``n >= 0``.
        labels: ``(n,)`` int64 classes in ``1..K``.
        split: the image's ``"split"`` field, or ``None``.
    """

    file_name: str
    image_id: int
    path: str
    width: int
    height: int
    grey: bool
    boxes: np.ndarray
    labels: np.ndarray
    split: str | None = None


@dataclass
class CocoSet:
    """What :func:`read_coco` read and checked.

    Attributes:
        annotations: the JSON file.
        image_root: the folder ``file_name`` is relative to.
        images: every image, in the JSON's order.
        categories: ``K`` ``(category_id, name)`` pairs; class ``k`` is ``categories[k - 1]``.
        crowd_skipped: annotations skipped for their ``iscrowd``.
    """

    annotations: str
    image_root: str
    images: list
    categories: list
    crowd_skipped: int


class CocoImages:
    """Items ``(image (C, H, W) float32 in [0, 1], {"boxes": (n, 4) float32, "labels": (n,) int64})``,
    each read from its file when asked for.

    Args:
        images: the :class:`CocoImage` entries, in item order.
        channels: 1 (grey images only) or 3 (grey images repeated).
    """

    def __init__(self, images: list, channels: int = 3):
        self.images, self.channels = list(images), int(channels)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        import torch

        rec = self.images[i]
        x = torch.from_numpy(_pixels(rec.path, self.channels))
        return x, {"boxes": torch.from_numpy(rec.boxes.copy()), "labels": torch.from_numpy(rec.labels.copy())}


def _pixels(path: str, channels: int) -> np.ndarray:
    """``(channels, H, W)`` float32 in ``[0, 1]`` (module docstring)."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in _GREY_MODES:
            if im.mode.startswith("I"):
                a = np.asarray(im, dtype=np.float32) / 65535.0
            elif im.mode == "F":
                a = np.asarray(im, dtype=np.float32)
            else:
                a = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
            a = np.clip(a, 0.0, 1.0)[None]
            if channels == 3:
                a = np.repeat(a, 3, axis=0)
        else:
            a = np.asarray(im.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
    return np.ascontiguousarray(a, dtype=np.float32)


def _json_files(data_dir: str) -> list:
    return sorted(
        f for f in os.listdir(data_dir) if f.lower().endswith(".json") and os.path.isfile(os.path.join(data_dir, f))
    )


def find_annotations(data_dir, annotations: str | None = None) -> str:
    """The COCO JSON file of ``data_dir``: ``annotations`` there, or its only ``.json`` file.

    Only the file system is asked; nothing is read.

    Raises:
        ValueError: ``data_dir`` unset, not a folder or empty; no JSON file;
            several without ``annotations``; ``annotations`` not a file there.
    """
    if not isinstance(data_dir, str) or not os.path.isdir(data_dir):
        raise ValueError(f"data_dir={data_dir!r} must be the folder of dataset='coco': {_WHAT}. Nothing is downloaded.")
    if not os.listdir(data_dir):
        raise ValueError(f"data_dir={data_dir!r} is empty; dataset='coco' reads {_WHAT}")
    found = _json_files(data_dir)
    if annotations is not None:
        path = os.path.join(data_dir, annotations)
        if not os.path.isfile(path):
            raise ValueError(
                f"annotations={annotations!r} is not a file in data_dir={data_dir!r}; its JSON files: {found}"
            )
        return path
    if not found:
        raise ValueError(f"data_dir={data_dir!r} holds no .json file; dataset='coco' reads {_WHAT}")
    if len(found) > 1:
        raise ValueError(f"data_dir={data_dir!r} holds several JSON files {found}; set annotations to the one to read")
    return os.path.join(data_dir, found[0])


def _refuse(path: str, what: str, bad: list) -> None:
    """One line: the file, what is wrong, the first few bad items and how many."""
    if bad:
        more = f", and {len(bad) - _SHOW} more" if len(bad) > _SHOW else ""
        raise ValueError(f"{path}: {len(bad)} {what}: {'; '.join(bad[:_SHOW])}{more}")


def _is_id(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_size(v) -> bool:
    return _is_id(v) and v > 0


def _load_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a JSON file that parses ({err})") from None
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(doc, dict) or k not in doc]
    if missing:
        raise ValueError(
            f"{path}: lacks {missing}; a COCO instances file holds 'images', 'annotations' and 'categories'"
        )
    for k in ("images", "annotations", "categories"):
        if not isinstance(doc[k], list):
            raise ValueError(f"{path}: {k!r} must be a list, got {type(doc[k]).__name__}")
    for k in ("images", "categories"):
        if not doc[k]:
            raise ValueError(f"{path}: {k!r} is empty")
    return doc


def _check_entries(path: str, doc: dict) -> None:
    """Images and categories: ids, file names, sizes, splits."""
    bad = [
        f"#{i} {e!r}"[:120]
        for i, e in enumerate(doc["images"])
        if not isinstance(e, dict)
        or not _is_id(e.get("id"))
        or not isinstance(e.get("file_name"), str)
        or not e.get("file_name")
    ]
    _refuse(path, "images lack an integer 'id' or a 'file_name'", bad)
    bad = [
        f"image {e['id']}: {e.get('width')!r} x {e.get('height')!r}"
        for e in doc["images"]
        if ("width" in e or "height" in e) and not (_is_size(e.get("width")) and _is_size(e.get("height")))
    ]
    _refuse(path, "images have a 'width' or 'height' that is not a positive integer", bad)
    bad = [
        f"#{i} {e!r}"[:120]
        for i, e in enumerate(doc["categories"])
        if not isinstance(e, dict) or not _is_id(e.get("id"))
    ]
    _refuse(path, "categories lack an integer 'id'", bad)
    for what, ids in (
        ("image", [e["id"] for e in doc["images"]]),
        ("category", [e["id"] for e in doc["categories"]]),
        ("image file_name", [e["file_name"] for e in doc["images"]]),
    ):
        seen, dup = set(), []
        for v in ids:
            if v in seen:
                dup.append(repr(v))
            seen.add(v)
        _refuse(path, f"{what}s appear twice", dup)
    with_split = [e for e in doc["images"] if "split" in e]
    bad = [f"image {e['id']}: {e['split']!r}" for e in with_split if e["split"] not in COCO_SPLITS]
    _refuse(path, f"images have a 'split' other than {list(COCO_SPLITS)}", bad)
    if with_split and len(with_split) != len(doc["images"]):
        no = [repr(e["file_name"]) for e in doc["images"] if "split" not in e]
        _refuse(path, "images lack the 'split' field other images carry (all or none)", no)


def _check_annotations(path: str, doc: dict, image_ids: set, category_ids: set) -> tuple[list, int]:
    """The annotations that count (``iscrowd`` skipped) and the count of skipped ones."""
    bad = [f"#{i} {a!r}"[:120] for i, a in enumerate(doc["annotations"]) if not isinstance(a, dict)]
    _refuse(path, "annotations are not objects", bad)
    kept = [a for a in doc["annotations"] if not a.get("iscrowd", 0)]
    crowd = len(doc["annotations"]) - len(kept)
    _refuse(
        path,
        "annotations name an unknown image_id",
        [
            f"annotation {a.get('id')!r}: image_id {a.get('image_id')!r}"
            for a in kept
            if a.get("image_id") not in image_ids
        ],
    )
    _refuse(
        path,
        f"annotations name a category_id not in 'categories' {sorted(category_ids)}",
        [
            f"annotation {a.get('id')!r}: category_id {a.get('category_id')!r}"
            for a in kept
            if a.get("category_id") not in category_ids
        ],
    )

    def form(b) -> bool:
        return (
            isinstance(b, (list, tuple))
            and len(b) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in b)
        )

    _refuse(
        path,
        "annotations lack a 'bbox' of 4 finite numbers [x, y, width, height]",
        [f"annotation {a.get('id')!r}: {a.get('bbox')!r}" for a in kept if not form(a.get("bbox"))],
    )
    _refuse(
        path,
        "boxes have a non-positive width or height",
        [f"annotation {a.get('id')!r}: bbox {a['bbox']!r}" for a in kept if a["bbox"][2] <= 0 or a["bbox"][3] <= 0],
    )
    return kept, crowd


def _image_root(path: str, data_dir: str, images: list) -> str:
    """The first of ``data_dir``, ``data_dir/images`` that holds every file; else a message."""
    roots = [data_dir, os.path.join(data_dir, "images")]
    missing = [[e["file_name"] for e in images if not os.path.isfile(os.path.join(r, e["file_name"]))] for r in roots]
    for r, m in zip(roots, missing):
        if not m:
            return r
    best = 0 if len(missing[0]) <= len(missing[1]) else 1
    bad = missing[best]
    more = f", and {len(bad) - _SHOW} more" if len(bad) > _SHOW else ""
    raise ValueError(
        f"{path}: {len(bad)} of {len(images)} image files are missing from {roots[best]} "
        f"(looked in {roots[1 - best]} too): {', '.join(map(repr, bad[:_SHOW]))}{more}"
    )


def _check_files(path: str, root: str, images: list) -> list:
    """``(width, height, grey)`` of each file, after Pillow's ``verify()`` pass."""
    from PIL import Image

    out, bad = [], []
    for e in images:
        f = os.path.join(root, e["file_name"])
        try:
            with Image.open(f) as im:
                size, mode = im.size, im.mode
                im.verify()
        except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError... for a broken file
            bad.append(f"{e['file_name']!r} ({type(err).__name__}: {str(err)[:60]})")
            continue
        out.append((size[0], size[1], mode in _GREY_MODES))
    _refuse(path, "image files do not decode", bad)
    bad = [
        f"{e['file_name']!r}: {w} x {h} in the file, {e['width']} x {e['height']} in the JSON"
        for e, (w, h, _) in zip(images, out)
        if "width" in e and (e["width"], e["height"]) != (w, h)
    ]
    _refuse(path, "image files differ in size from their JSON 'width' and 'height'", bad)
    return out


def read_coco(data_dir, annotations: str | None = None) -> CocoSet:
    """Reads and checks a COCO instances JSON file and its images (module docstring).

    Args:
        data_dir: the folder holding the JSON file and the images.
        annotations: the JSON file's name in ``data_dir``; needed only when
            there are several.

    Returns:
        A :class:`CocoSet`: every image (with or without boxes) in the JSON's
        order, the categories, the folder the images were found in.

    Raises:
        ValueError: one line naming the JSON file and what is wrong (the
            first few bad items and their count): a folder or JSON file
            that :func:`find_annotations` refuses; a JSON file that does not
            parse or lacks ``images``, ``annotations`` or ``categories``; bad
            or repeated ids; an annotation naming an unknown image or
            category; a box with non-positive width or height or outside its
            image by more than 1 pixel; an image file missing, failing
            Pillow's ``verify()``, or of another size than the JSON says.
    """
    path = find_annotations(data_dir, annotations)
    doc = _load_json(path)
    _check_entries(path, doc)
    images, cats = doc["images"], sorted(doc["categories"], key=lambda c: c["id"])
    kept, crowd = _check_annotations(path, doc, {e["id"] for e in images}, {c["id"] for c in cats})
    root = _image_root(path, data_dir, images)
    files = _check_files(path, root, images)
    sizes = {e["id"]: (w, h) for e, (w, h, _) in zip(images, files)}
    outside = []
    for a in kept:
        x, y, w, h = (float(v) for v in a["bbox"])
        W, H = sizes[a["image_id"]]
        if x < -BOX_TOLERANCE or y < -BOX_TOLERANCE or x + w > W + BOX_TOLERANCE or y + h > H + BOX_TOLERANCE:
            outside.append(f"annotation {a.get('id')!r}: bbox {a['bbox']!r} in image {a['image_id']!r} of {W} x {H}")
    _refuse(path, f"boxes lie outside their image (by more than {BOX_TOLERANCE:g} pixel)", outside)
    label = {c["id"]: k + 1 for k, c in enumerate(cats)}
    per_image: dict = {e["id"]: [] for e in images}
    for a in kept:
        per_image[a["image_id"]].append(a)
    out = []
    for e, (W, H, grey) in zip(images, files):
        anns = per_image[e["id"]]
        xywh = np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, W)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, H)
        out.append(
            CocoImage(
                e["file_name"],
                int(e["id"]),
                os.path.join(root, e["file_name"]),
                int(W),
                int(H),
                bool(grey),
                boxes.astype(np.float32),
                np.asarray([label[a["category_id"]] for a in anns], dtype=np.int64),
                e.get("split"),
            )
        )
    return CocoSet(path, root, out, [(int(c["id"]), str(c.get("name", c["id"]))) for c in cats], crowd)


def coco_splits(coco: CocoSet, *, val_fraction: float, test_fraction: float | None = None, seed: int = 0) -> dict:
    """Which images are training, validation and test ones.

    Images carrying a ``"split"`` field keep it. Otherwise
    ``max(1, round(test_fraction * N))`` test images (default
    :data:`COCO_TEST_FRACTION`) and then ``max(1, round(val_fraction * N))``
    validation images are drawn by ``numpy.random.default_rng([seed, 0xC0C0])``;
    the rest train.

    Returns:
        ``{"train": (n,), "val": (n,), "test": (n,)}`` int64 positions into
        ``coco.images``, each ascending (the JSON's order); every image is in
        exactly one.

    Raises:
        ValueError: a split left empty, or ``test_fraction`` given for images
            that carry their split.
    """
    n = len(coco.images)
    if coco.images[0].split is not None:
        if test_fraction is not None:
            raise ValueError(
                f"test_fraction={test_fraction!r} has no effect: the images of "
                f"{coco.annotations} carry a 'split' field; leave it null"
            )
        split = np.asarray([im.split for im in coco.images])
        out = {s: np.flatnonzero(split == s).astype(np.int64) for s in COCO_SPLITS}
        empty = [s for s in COCO_SPLITS if not out[s].size]
        if empty:
            raise ValueError(
                f"{coco.annotations}: no image has 'split' {empty}; each of {list(COCO_SPLITS)} needs at least one"
            )
        return out
    tf = COCO_TEST_FRACTION if test_fraction is None else float(test_fraction)
    n_test, n_val = max(1, round(tf * n)), max(1, round(val_fraction * n))
    if n - n_test - n_val < 1:
        raise ValueError(
            f"{coco.annotations}: {n} images leave none for training after {n_test} test "
            f"(test_fraction={tf!r}) and {n_val} validation (val_fraction={val_fraction!r}) ones"
        )
    perm = np.random.default_rng([int(seed), 0xC0C0]).permutation(n)
    test, val = np.sort(perm[:n_test]), np.sort(perm[n_test : n_test + n_val])
    return {
        "train": np.sort(perm[n_test + n_val :]).astype(np.int64),
        "val": val.astype(np.int64),
        "test": test.astype(np.int64),
    }
