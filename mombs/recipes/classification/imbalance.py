"""Long-tailed subsets with an exponential profile (Cao et al., LDAM; Cui et al.)."""

from __future__ import annotations

import numpy as np

__all__ = ["long_tailed_counts", "long_tailed_indices", "shot_groups"]


def long_tailed_counts(img_max: int, num_classes: int, imbalance: float = 0.01) -> np.ndarray:
    """Images per class, ``floor(img_max * imbalance ** (c / (C - 1)))``, ``(C,)`` int64.

    Args:
        img_max: images of the largest class (class 0), ``>= 1``.
        num_classes: ``C >= 2``.
        imbalance: ``rho = n_min / n_max`` in ``(0, 1]``; 0.01 is the usual CIFAR-LT.
    """
    if not isinstance(img_max, (int, np.integer)) or img_max < 1:
        raise ValueError(f"img_max={img_max!r} must be an integer >= 1")
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r} must be an integer >= 2")
    if not isinstance(imbalance, (int, float)) or not 0 < imbalance <= 1:
        raise ValueError(f"imbalance={imbalance!r} must be in (0, 1]")
    c = np.arange(num_classes)
    return np.maximum(1, np.floor(img_max * imbalance ** (c / (num_classes - 1)))).astype(np.int64)


def long_tailed_indices(labels, imbalance: float = 0.01, *, img_max: int | None = None, seed: int = 0) -> np.ndarray:
    """Indices of a seeded long-tailed subset of a balanced labelled set.

    Args:
        labels: ``(N,)`` integer labels in ``[0, C)``.
        imbalance: ``rho`` of :func:`long_tailed_counts`.
        img_max: images kept of class 0; default: the size of the smallest class.
        seed: seed of the private generator that picks the images.

    Returns:
        Sorted ``(M,)`` int64 indices into ``labels``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or labels.size == 0:
        raise ValueError(f"labels must be a non-empty (N,) integer array, got shape {labels.shape}")
    num_classes = int(labels.max()) + 1
    sizes = np.bincount(labels, minlength=num_classes)
    img_max = int(sizes.min()) if img_max is None else img_max
    counts = long_tailed_counts(img_max, num_classes, imbalance)
    if (counts > sizes).any():
        c = int(np.argmax(counts > sizes))
        raise ValueError(f"img_max={img_max} asks for {counts[c]} images of class {c}, which has {sizes[c]}")
    rng = np.random.default_rng([seed, 0x7A11])
    keep = [rng.choice(np.flatnonzero(labels == c), size=counts[c], replace=False) for c in range(num_classes)]
    return np.sort(np.concatenate(keep)).astype(np.int64)


def shot_groups(train_counts, many: int = 100, few: int = 20) -> dict[str, np.ndarray]:
    """Class ids per shot group: ``many`` (> many images), ``few`` (< few), ``medium`` (the rest).

    The usual thresholds are 100 and 20 training images (Liu et al., OLTR).
    """
    counts = np.asarray(train_counts)
    return {
        "many": np.flatnonzero(counts > many),
        "medium": np.flatnonzero((counts <= many) & (counts >= few)),
        "few": np.flatnonzero(counts < few),
    }
