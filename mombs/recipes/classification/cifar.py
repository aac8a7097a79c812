"""CIFAR-10/100 from the standard python-pickle folders, and CIFAR-100N human labels.

The pickles are read with a restricted unpickler that only rebuilds numpy
arrays and plain containers, so a tampered file cannot run code.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

__all__ = ["load_cifar", "load_cifar100n"]

_LAYOUT = {
    10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
    100: ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
}
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("builtins", "list"),
    ("builtins", "dict"),
    ("builtins", "tuple"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _unpickle(path: Path) -> dict:
    try:
        raw = path.read_bytes()
        return _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as err:
        raise ValueError(f"cannot read CIFAR batch file {path}: {err}") from err


def _how_to_get(num_classes: int) -> str:
    folder = _LAYOUT[num_classes][0]
    return (
        f"download and extract the python version of CIFAR-{num_classes} (folder {folder}) "
        f"yourself and pass the folder that contains it as data_dir / --data-dir; "
        f"mombs never downloads data"
    )


def load_cifar(num_classes: int, split: str = "train", data_dir=".") -> tuple[np.ndarray, np.ndarray]:
    """Reads CIFAR-10 or CIFAR-100 from its python-pickle folder.

    Args:
        num_classes: 10 or 100.
        split: ``"train"`` (50,000 images) or ``"test"`` (10,000).
        data_dir: the extracted folder (``cifar-10-batches-py`` /
            ``cifar-100-python``) or the folder that contains it.

    Returns:
        ``(images, labels)``: ``(N, 32, 32, 3)`` uint8 and ``(N,)`` int64.

    Raises:
        FileNotFoundError: a batch file is missing (named, with how to get it).
        ValueError: bad arguments or a corrupt file (named).
    """
    if num_classes not in _LAYOUT:
        raise ValueError(f"num_classes={num_classes!r} must be 10 or 100")
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r} must be 'train' or 'test'")
    folder, train_files, test_files, label_key = _LAYOUT[num_classes]
    root = Path(data_dir)
    if (root / folder).is_dir():
        root = root / folder
    images, labels = [], []
    for name in train_files if split == "train" else test_files:
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"CIFAR-{num_classes} file {path} not found; {_how_to_get(num_classes)}")
        batch = _unpickle(path)
        if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
            raise ValueError(f"{path} is not a CIFAR-{num_classes} batch (no data/{label_key.decode()} keys)")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(f"{path} holds data of shape {data.shape}, expected (N, 3072)")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    x, y = np.concatenate(images), np.concatenate(labels)
    if len(x) != len(y) or (y.size and (y.min() < 0 or y.max() >= num_classes)):
        raise ValueError(f"CIFAR-{num_classes} files in {root} have inconsistent labels")
    return x, y


def load_cifar100n(path) -> dict[str, np.ndarray]:
    """Reads the CIFAR-100N human labels from ``CIFAR-100_human.pt``.

    The file is loaded with ``torch.load(weights_only=True)`` and only numpy
    arrays allowed, never as an arbitrary pickle.

    Args:
        path: the ``CIFAR-100_human.pt`` file (from the CIFAR-N release).

    Returns:
        A dict with at least ``"noisy_label"`` ``(50000,)`` int64, and
        ``"clean_label"`` when the file has it.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"CIFAR-100N file {path} not found; get CIFAR-100_human.pt from the "
            f"CIFAR-N release and pass its path; mombs never downloads data"
        )
    safe = [np.ndarray, np.dtype, type(np.dtype(np.int64)), type(np.dtype(np.int32)), type(np.dtype(np.uint8))]
    try:
        safe.append(np._core.multiarray._reconstruct)
    except AttributeError:  # numpy < 2
        safe.append(np.core.multiarray._reconstruct)
    try:
        with torch.serialization.safe_globals(safe):
            raw = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, ... for bad files
        raise ValueError(f"cannot read {path} safely: {err}") from err
    if not isinstance(raw, dict) or "noisy_label" not in raw:
        raise ValueError(f"{path} has no 'noisy_label' entry; is it CIFAR-100_human.pt?")
    out = {}
    for key, value in raw.items():
        arr = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
        if arr.ndim == 1 and np.issubdtype(arr.dtype, np.integer):
            out[key] = arr.astype(np.int64)
    labels = out["noisy_label"]
    if labels.min() < 0 or labels.max() >= 100:
        raise ValueError(f"{path}: noisy_label values outside 0..99")
    return out
