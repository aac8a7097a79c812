"""A data set wrapper whose items carry their own index."""

from __future__ import annotations

from torch.utils.data import Dataset

__all__ = ["IndexedDataset"]


class IndexedDataset(Dataset):
    """Wraps a map-style data set so that item ``i`` becomes ``(i, *item)``.

    A batch then carries the data set indices of its samples, which is what
    per-sample bookkeeping needs; nothing in the ``DataLoader`` is patched. A
    tuple item ``(x, y)`` becomes ``(i, x, y)``; any other item ``x`` becomes
    ``(i, x)``. Attributes of the wrapped data set stay reachable through
    :attr:`dataset`.

    Args:
        dataset: a map-style data set with ``__len__`` and ``__getitem__``.
    """

    def __init__(self, dataset):
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise ValueError(f"dataset={type(dataset).__name__} must be map-style "
                             f"(define __len__ and __getitem__)")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        item = self.dataset[index]
        return (index, *item) if isinstance(item, tuple) else (index, item)
