"""Fashion-MNIST from its IDX files, found on disk; nothing is downloaded."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

__all__ = ["DEFAULT_FASHION_MNIST_DIR", "find_fashion_mnist", "load_fashion_mnist"]

#: Where Debian's ``dataset-fashion-mnist`` package installs the files.
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_HOW_TO_GET = (
    "install Debian's package (apt-get install dataset-fashion-mnist), or put the four "
    "IDX files (optionally .gz) from the Fashion-MNIST release in a folder and pass it "
    "as data_dir / --data-dir or $MOMBS_DATA"
)


def _candidates(data_dir) -> list[Path]:
    """Where to look: the explicit folder alone if one was given, else ``$MOMBS_DATA``
    alone if set, else the default. A folder that was asked for never falls back
    to another one: that would train on other files than the user named."""
    if data_dir is not None:
        root = Path(data_dir)
    elif os.environ.get("MOMBS_DATA"):
        root = Path(os.environ["MOMBS_DATA"])
    else:
        return [Path(DEFAULT_FASHION_MNIST_DIR)]
    return [root, root / "fashion-mnist"]


def _locate(name: str, dirs: list[Path]) -> Path | None:
    for d in dirs:
        for candidate in (d / name, d / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def find_fashion_mnist(data_dir=None) -> Path | None:
    """The folder holding all four Fashion-MNIST files, or ``None``.

    Looks in ``data_dir`` if given, else in ``$MOMBS_DATA`` if set, else in
    :data:`DEFAULT_FASHION_MNIST_DIR` (each also with a ``fashion-mnist``
    subfolder); an explicit folder is never replaced by a later one.
    """
    for d in _candidates(data_dir):
        if all(_locate(n, [d]) for pair in _FILES.values() for n in pair):
            return d
    return None


def _read_idx(path: Path, expect_dims: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"cannot read {path}: {err}; {_HOW_TO_GET}") from err
    if len(raw) < 4 + 4 * expect_dims or raw[0:2] != b"\x00\x00" or raw[2] != 0x08 or raw[3] != expect_dims:
        raise ValueError(
            f"{path} is not an IDX file of unsigned bytes with {expect_dims} dimension(s) "
            f"(corrupt or wrong file); {_HOW_TO_GET}"
        )
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(expect_dims)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * expect_dims)
    if data.size != int(np.prod(dims)):
        raise ValueError(
            f"{path} holds {data.size} bytes of data but its header says {dims} (truncated or corrupt); {_HOW_TO_GET}"
        )
    return data.reshape(dims).copy()  # writable, unlike the frombuffer view


def load_fashion_mnist(split: str = "train", data_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """Reads one split of Fashion-MNIST.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        data_dir: the folder to read from (see :func:`find_fashion_mnist`);
            ``None``: ``$MOMBS_DATA``, else :data:`DEFAULT_FASHION_MNIST_DIR`.

    Returns:
        ``(images, labels)``: ``(N, 28, 28)`` uint8 and ``(N,)`` int64 in ``[0, 10)``.

    Raises:
        FileNotFoundError: when the files are not there (or the folder asked
            for does not exist); the message says where it looked and how to
            get them.
        ValueError: for an unknown split or a corrupt file (named).
    """
    if split not in _FILES:
        raise ValueError(f"split={split!r} must be 'train' or 'test'")
    dirs = _candidates(data_dir)
    img_name, lbl_name = _FILES[split]
    img_path, lbl_path = _locate(img_name, dirs), _locate(lbl_name, dirs)
    if img_path is None or lbl_path is None:
        missing = img_name if img_path is None else lbl_name
        where = ", ".join(str(d) for d in dirs)
        if not dirs[0].is_dir():
            source = "data_dir" if data_dir is not None else "MOMBS_DATA" if len(dirs) == 2 else "the default"
            where = f"{dirs[0]} ({source}), which does not exist"
        raise FileNotFoundError(f"Fashion-MNIST file {missing}[.gz] not found in {where}; {_HOW_TO_GET}")
    images = _read_idx(img_path, 3)
    labels = _read_idx(lbl_path, 1).astype(np.int64)
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{img_path} ({images.shape}) and {lbl_path} ({labels.shape}) do not form "
            f"a Fashion-MNIST split; {_HOW_TO_GET}"
        )
    if labels.size and labels.max() > 9:
        raise ValueError(f"{lbl_path} has label {labels.max()} outside 0..9 (corrupt file)")
    return images, labels
