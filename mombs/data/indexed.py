"""A data set wrapper whose items carry their own index."""

from __future__ import annotations

import numbers

import torch
from torch.utils.data import Dataset, TensorDataset
from torch.utils.data._utils.collate import default_collate

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

    An item asked for with a list of indices is refused: that is a batch
    sampler passed to the ``DataLoader`` as ``sampler=`` instead of
    ``batch_sampler=`` (:meth:`read_batch` reads a batch at once).
    """

    def __init__(self, dataset):
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise ValueError(f"dataset={type(dataset).__name__} must be map-style (define __len__ and __getitem__)")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        if isinstance(index, list):
            raise ValueError(
                f"IndexedDataset got a list of {len(index)} indices as one item: a batch sampler "
                f"(mombs.MixedOrderBatchSampler yields whole batches) was passed to the DataLoader "
                f"as sampler=. Pass DataLoader(dataset, batch_sampler=sampler), with no "
                f"batch_size, shuffle or drop_last; read_batch(indices) reads a batch at once"
            )
        try:
            item = self.dataset[index]
        except IndexError as err:
            n = len(self.dataset)
            if isinstance(index, numbers.Integral) and not -n <= index < n:
                raise IndexError(
                    f"index {index} is outside the data set of {n} samples: was the sampler "
                    f"built for a data set of another size?"
                ) from err
            raise
        return (index, *item) if isinstance(item, tuple) else (index, item)

    def read_batch(self, indices) -> tuple:
        """Items ``indices`` as one collated batch ``(index, *fields)``.

        A ``TensorDataset`` is read with one gather per tensor, on whatever
        device its tensors live, instead of one small indexing op per item
        (which costs more than a GPU's forward pass of a small model); any other
        data set is read item by item and collated with torch's
        ``default_collate``, as a ``DataLoader`` would.

        Args:
            indices: ``(b,)`` integer indices into the data set.

        Returns:
            ``(index, *fields)``: ``index`` a ``(b,)`` int64 CPU tensor, each
            field batched along a new first dimension.
        """
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        if isinstance(self.dataset, TensorDataset):
            return (idx, *(t[idx.to(t.device)] for t in self.dataset.tensors))
        batch = default_collate([self[int(i)] for i in idx])
        return (idx, *batch[1:])
