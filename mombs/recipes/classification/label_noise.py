"""Label noise with the clean labels and the noise mask kept for diagnostics."""

from __future__ import annotations

import numpy as np

__all__ = ["symmetric_noise"]


def symmetric_noise(labels, rate: float, num_classes: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Flip exactly ``round(rate * N)`` labels, each to a uniformly drawn *other* class.

    Args:
        labels: ``(N,)`` clean integer labels in ``[0, num_classes)``.
        rate: share of labels to flip, in ``[0, 1]``.
        num_classes: number of classes, ``>= 2``.
        seed: seed of a private generator.

    Returns:
        ``(noisy, flipped)``: ``(N,)`` int64 noisy labels and ``(N,)`` bool mask
        of the flipped samples; ``noisy[flipped] != labels[flipped]`` always.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a (N,) integer array, got shape {labels.shape}, dtype {labels.dtype}")
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r} must be an integer >= 2")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    if not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
        raise ValueError(f"rate={rate!r} must be a number in [0, 1]")
    rng = np.random.default_rng([seed, 0xF11F])
    n = labels.shape[0]
    flipped = np.zeros(n, dtype=bool)
    flipped[rng.choice(n, size=int(round(rate * n)), replace=False)] = True
    noisy = labels.astype(np.int64).copy()
    noisy[flipped] = (noisy[flipped] + rng.integers(1, num_classes, size=int(flipped.sum()))) % num_classes
    return noisy, flipped


def pair_noise(labels, rate: float, num_classes: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Asymmetric "pair" noise: in every class, exactly ``round(rate * n_c)`` labels
    become the next class, ``c -> (c + 1) mod C`` (Han et al., Co-teaching).

    Args and returns as :func:`symmetric_noise`; ``rate`` must be ``< 0.5`` for
    the true class to stay the majority.
    """
    labels = np.asarray(labels)
    noisy, _ = symmetric_noise(labels, 0.0, num_classes, seed=seed)  # validates the labels
    if not isinstance(rate, (int, float)) or not 0 <= rate < 0.5:
        raise ValueError(f"rate={rate!r} must be a number in [0, 0.5) for pair noise")
    rng = np.random.default_rng([seed, 0xA1A1])
    flipped = np.zeros(labels.shape[0], dtype=bool)
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        flipped[rng.choice(members, size=int(round(rate * members.size)), replace=False)] = True
    noisy[flipped] = (noisy[flipped] + 1) % num_classes
    return noisy, flipped
