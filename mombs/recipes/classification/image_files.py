"""Your own images as torch data sets: :class:`ImageFiles` reads one image at a time with
Pillow; :class:`LabelledImages` pairs them with their labels. The readers and checks that
need no torch are in :mod:`.folder`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .folder import _GREY_MODES, _pil

__all__ = ["ImageFiles", "LabelledImages"]


class ImageFiles(Dataset):
    """Images read from files when asked for: item ``i`` is a ``(C, H, W)`` float32 tensor.

    Each image is decoded by Pillow, converted to ``channels`` (grey repeated
    to 3 channels; colour and palette images to RGB, alpha dropped), resized
    to ``size`` x ``size`` (bilinear, the aspect ratio not kept), scaled to
    ``[0, 1]`` (16-bit images by 65535) and normalized per channel. Like a
    tensor it has ``len`` and ``shape`` ``(N, C, H, W)``.

    Args:
        root: the folder the paths are relative to.
        paths: ``(N,)`` relative file paths.
        channels: 1 or 3.
        image_shape: ``(H, W)`` after resizing.
        size: the square side to resize to, or ``None`` to keep each image's size.
        mean, std: ``(C,)`` per-channel normalization (``None``: none).
    """

    def __init__(
        self, root, paths, *, channels: int, image_shape: tuple[int, int], size: int | None = None, mean=None, std=None
    ):
        self.root, self.paths = Path(root), np.asarray(paths, dtype=str)
        self.channels, self.size = int(channels), size
        self.shape = (len(self.paths), self.channels, *image_shape)
        self.set_normalization(mean, std)

    def set_normalization(self, mean, std) -> None:
        """Per-channel ``(C,)`` mean and std subtracted and divided (``None``: left as read)."""
        self.mean = None if mean is None else torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        self.std = None if std is None else torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.paths)

    def _read(self, i: int) -> np.ndarray:
        """``(H, W, C)`` float32 in ``[0, 1]``, resized, not normalized."""
        Image = _pil()
        with Image.open(self.root / self.paths[i]) as im:
            scale = 255.0
            if im.mode.startswith("I;16") or im.mode == "I":
                im, scale = im.convert("F"), 65535.0
            elif im.mode == "F":
                scale = 1.0
            elif self.channels == 3 or im.mode not in _GREY_MODES:
                im = im.convert("RGB")
            else:
                im = im.convert("L")
            if self.size is not None and im.size != (self.size, self.size):
                im = im.resize((self.size, self.size), Image.BILINEAR)
            a = np.asarray(im, dtype=np.float32) / scale
        if a.ndim == 2:
            a = a[..., None]
        if a.shape[-1] != self.channels:  # grey read where 3 channels are wanted (16-bit, float)
            a = np.repeat(a, self.channels, axis=-1)
        return a

    def raw(self, i: int) -> torch.Tensor:
        """Item ``i`` before normalization: ``(C, H, W)`` in ``[0, 1]``."""
        try:
            a = self._read(int(i))
        except OSError as err:
            raise ValueError(f"{self.paths[i]} does not decode ({type(err).__name__}: {err})") from err
        return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))

    def __getitem__(self, i) -> torch.Tensor:
        x = self.raw(i)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x


class LabelledImages(Dataset):
    """``(x, y)`` items: an image of ``images`` and its int64 label, as a ``TensorDataset`` gives them."""

    def __init__(self, images, labels):
        self.images, self.labels = images, torch.as_tensor(np.asarray(labels), dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]
