"""Pure batch planning: per-sample difficulty scores -> one epoch of minibatches.

This module knows nothing of models or datasets; it uses numpy only. The sampler
(:mod:`mombs.sampler`) wraps it into a torch ``BatchSampler``.

The ``"mixed"`` order is MoMBS' scheduler (paper eq. 7, ``shared/METHOD.md``
§2): every minibatch gets (nearly) the same total difficulty, so hard samples
travel with easy ones. It works for any batch size, is randomized across epochs
and runs in about the time of one ``np.argsort`` plus ``O(N)`` array work:

1. Sort the samples by score plus a small random *jitter*. The jitter breaks
   ties at random and makes neighbouring samples swap places from epoch to
   epoch, so the same pairs do not meet every epoch (the published reference
   code repeats its batches exactly).
2. Cut the sorted samples into ``B`` layers of ``M`` samples, one per batch
   slot. Adjacent layers are joined in opposite order (the i-th easiest of one
   with the i-th hardest of the other), which makes their pair sums almost
   constant. With odd ``B`` three layers are joined by a cyclic-shift
   construction whose sums form an arithmetic progression that the third layer
   cancels exactly.
3. The partial batches are then combined by the *balanced largest differencing
   method* (Michiels et al.): repeatedly take the two partials whose sums spread
   most and match the lowest sums of one with the highest of the other. This
   cancels what the first two steps leave over, for skewed scores too.

Samples that do not fill a whole batch (``N mod B``) are picked by stratified
sampling over the sorted order, so a short last batch is as representative as
it can be and ``drop_last`` drops a random, difficulty-stratified set.
"""

from __future__ import annotations

import heapq
import numbers
from collections.abc import Sequence
from typing import Iterator

import numpy as np

__all__ = ["BatchPlan", "ORDERS", "plan_batches", "replica_layout"]

#: Orders understood by :func:`plan_batches`. They are the planner's own names,
#: not the training strategies of :mod:`mombs.strategies` (several of which,
#: such as ``"mixed-loss"``, plan with ``order="mixed"`` from other scores).
ORDERS = ("mixed", "random", "anti")

#: Default jitter: std of the ordering noise as a fraction of the scores' std.
#: The balance cost is about this fraction of a random batch's spread.
DEFAULT_JITTER = 0.005


class BatchPlan(Sequence):
    """One epoch's minibatches, stored as arrays rather than a list of lists.

    Args:
        full: ``(M, B)`` integer array; row ``i`` is the ``i``-th full batch.
        tail: ``(t,)`` integer array, ``0 <= t < B``; a last, shorter batch when
            ``t > 0``.

    Indexing and iteration give 1-D integer arrays, so a plan can be used like a
    ``list`` of batches. ``len(plan)`` counts the tail batch when it is not empty.
    """

    def __init__(self, full: np.ndarray, tail: np.ndarray | None = None):
        self.full = full
        self.tail = np.empty(0, dtype=np.int64) if tail is None else tail

    def __len__(self) -> int:
        return len(self.full) + (1 if self.tail.size else 0)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"batch index {i} out of range for a plan of {n} batches")
        return self.full[i] if i < len(self.full) else self.tail

    def __iter__(self) -> Iterator[np.ndarray]:
        yield from self.full
        if self.tail.size:
            yield self.tail

    @property
    def num_samples(self) -> int:
        """Number of sample slots in the plan (padding duplicates included)."""
        return int(self.full.size + self.tail.size)

    def indices(self) -> np.ndarray:
        """All planned indices, batch after batch, as one ``(num_samples,)`` array."""
        return np.concatenate([self.full.reshape(-1), self.tail])

    def tolist(self) -> list[list[int]]:
        """The batches as plain lists of Python ints."""
        out = self.full.tolist()
        if self.tail.size:
            out.append(self.tail.tolist())
        return out

    def __repr__(self) -> str:
        return (f"BatchPlan(batches={len(self)}, batch_size={self.full.shape[1] if self.full.ndim == 2 else 0}, "
                f"tail={self.tail.size})")


def replica_layout(n: int, batch_size: int, *, num_replicas: int = 1,
                   drop_last: bool = False) -> dict[str, int]:
    """How ``n`` samples split into per-replica batches, as torch would split them.

    ``drop_last=False`` pads the data set to a multiple of ``num_replicas`` by
    repeating samples, as ``torch.utils.data.DistributedSampler`` does, and each
    replica ends with one shorter batch when its share is not a multiple of
    ``batch_size``. ``drop_last=True`` keeps only full batches, the same number on
    every replica, with no padding.

    Args:
        n: number of samples in the data set, ``>= 0``.
        batch_size: per-replica batch size, ``>= 1``.
        num_replicas: world size, ``>= 1``.
        drop_last: drop samples that do not fill a whole batch on every replica.

    Returns:
        A dict with ``full_per_replica`` (full batches each replica gets),
        ``tail_size`` (size of each replica's last short batch, 0 if none),
        ``padding`` (duplicated samples added), ``dropped`` (samples left out)
        and ``batches_per_replica``.
    """
    _check_int("n", n, 0)
    _check_int("batch_size", batch_size, 1)
    _check_int("num_replicas", num_replicas, 1)
    if drop_last:
        full = n // (num_replicas * batch_size)
        return {"full_per_replica": full, "tail_size": 0, "padding": 0,
                "dropped": n - full * num_replicas * batch_size, "batches_per_replica": full}
    per_replica = -(-n // num_replicas)
    full, tail = divmod(per_replica, batch_size)
    return {"full_per_replica": full, "tail_size": tail,
            "padding": per_replica * num_replicas - n, "dropped": 0,
            "batches_per_replica": full + (1 if tail else 0)}


def plan_batches(scores, batch_size: int, *, order: str = "mixed", seed: int = 0,
                 epoch: int = 0, drop_last: bool = False, num_replicas: int = 1,
                 rank: int = 0, jitter: float = DEFAULT_JITTER) -> BatchPlan:
    """Plan one epoch of minibatches from per-sample difficulty scores.

    Args:
        scores: ``(N,)`` finite real difficulty scores, higher = harder (for
            instance :func:`mombs.difficulty_scores`). Only their order and sums
            matter; ``"random"`` ignores their values but uses their length.
        batch_size: samples per batch (per replica), ``>= 1``; odd sizes work.
        order: ``"mixed"`` (MoMBS: equal per-batch score sums),
            ``"random"`` (plain shuffle, the baseline) or ``"anti"`` (hard with
            hard, easy with easy; the paper's ablation).
        seed: non-negative seed shared by all replicas.
        epoch: non-negative epoch; with the seed it fixes the plan, and each
            epoch gives different batches even for the same scores.
        drop_last: drop samples that do not fill a whole batch. Otherwise the
            last batch is shorter, and for ``"mixed"`` its mean difficulty is
            close to the overall mean.
        num_replicas: number of distributed replicas, ``>= 1``.
        rank: this replica, ``0 <= rank < num_replicas``. All replicas compute
            the same global plan from the same scores and keep their share, so
            together they cover every sample once per epoch (padded as
            ``DistributedSampler`` pads when ``drop_last=False``).
        jitter: ordering noise, as a fraction of the scores' standard deviation
            (``>= 0``, default 0.005). It randomizes the pairs across epochs at a
            balance cost of about that fraction of a random batch's spread;
            ``0`` gives a deterministic pairing, as in the reference code.

    Returns:
        A :class:`BatchPlan`: full batches in random order, then the short batch
        if any. Indices are positions in ``scores``.

    Raises:
        ValueError: on a wrong shape, non-finite scores, a bad batch size, an
            unknown order or an out-of-range seed, epoch, rank or jitter.
    """
    scores = _check_scores(scores)
    _check_int("batch_size", batch_size, 1)
    _check_order(order)
    _check_int("seed", seed, 0)
    _check_int("epoch", epoch, 0)
    _check_int("num_replicas", num_replicas, 1)
    _check_int("rank", rank, 0)
    if rank >= num_replicas:
        raise ValueError(f"rank={rank} must be < num_replicas={num_replicas}")
    if not isinstance(jitter, numbers.Real) or isinstance(jitter, bool) or not np.isfinite(jitter) or jitter < 0:
        raise ValueError(f"jitter={jitter!r} must be a finite number >= 0")
    if not isinstance(drop_last, (bool, np.bool_)):
        raise ValueError(f"drop_last={drop_last!r} must be a bool")
    return _compute_plan(scores, int(batch_size), order, int(seed), int(epoch),
                         bool(drop_last), int(num_replicas), int(rank), float(jitter))


# --------------------------------------------------------------------------- #
# Validation helpers (public functions call these; private ones trust inputs).


def _check_order(order) -> None:
    if order not in ORDERS:
        hint = ""
        if isinstance(order, str) and order.startswith(("mixed-", "scl", "ohem")):
            hint = (f"; {order!r} is a training strategy (mombs.strategies.create_strategy), "
                    f"whose sampler plans with one of these orders")
        raise ValueError(f"order={order!r} is not known; choose one of {list(ORDERS)}{hint}")


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}={value!r} must be an integer >= {low}")
    if value < low:
        raise ValueError(f"{name}={value!r} must be an integer >= {low}")


def _check_scores(scores) -> np.ndarray:
    arr = np.asarray(scores)
    if arr.ndim != 1:
        raise ValueError(f"scores must have shape (N,), got shape {arr.shape}")
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer)
                                 or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"scores must be real numbers, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise ValueError(f"scores contains {bad} non-finite value(s) (NaN or inf) "
                             f"out of {arr.size}; all scores must be finite")
        return arr
    return arr.astype(np.float64)


# --------------------------------------------------------------------------- #
# The planner proper. Everything below trusts its inputs.


def _compute_plan(scores: np.ndarray, batch_size: int, kind: str, seed: int, epoch: int,
                  drop_last: bool, num_replicas: int, rank: int, jitter: float) -> BatchPlan:
    n = scores.shape[0]
    layout = replica_layout(n, batch_size, num_replicas=num_replicas, drop_last=drop_last)
    # One generator per (seed, epoch): every replica derives the identical plan.
    rng = np.random.default_rng([seed, epoch])
    items = np.arange(n, dtype=np.int64)
    local = scores
    if layout["padding"]:
        # Like DistributedSampler: repeat samples from the start of a shuffled list.
        pad = np.resize(rng.permutation(n), layout["padding"])
        items = np.concatenate([items, pad])
        local = scores[items]
    num_full = layout["full_per_replica"] * num_replicas
    num_tails = num_replicas if layout["tail_size"] else 0
    full, tails = _plan_items(local, batch_size, num_full, layout["tail_size"],
                              num_tails, kind, rng, jitter)
    full_mine = full[rank::num_replicas] if num_replicas > 1 else full
    tail_mine = tails[rank] if num_tails else np.empty(0, dtype=np.int64)
    if layout["padding"]:  # positions -> data set indices (they differ only when padded)
        full_mine, tail_mine = items[full_mine], items[tail_mine]
    return BatchPlan(full_mine, tail_mine)


def _plan_items(scores: np.ndarray, batch_size: int, num_full: int, tail_size: int,
                num_tails: int, kind: str, rng: np.random.Generator,
                jitter: float) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``full`` ``(num_full, batch_size)`` and ``tails`` ``(num_tails, tail_size)``
    as positions into ``scores``; positions not used are dropped."""
    n = scores.shape[0]
    n_full = num_full * batch_size
    if kind == "random":
        perm = rng.permutation(n)
        tails = perm[n_full:n_full + num_tails * tail_size].reshape(num_tails, tail_size)
        return perm[:n_full].reshape(num_full, batch_size), tails

    order = _jittered_order(scores, rng, jitter)
    # Samples beyond the full batches are a stratified draw over the sorted
    # order: the short batches stay representative, and drop_last drops a
    # random set that leaves the difficulty distribution intact.
    extra, core = _split_stratified(order, n - n_full, rng)
    tail_items, _dropped = _split_stratified(extra, num_tails * tail_size, rng)
    layout = _layout_mixed if kind == "mixed" else _layout_anti
    full = layout(core, scores, num_full, batch_size, rng)
    tails = (layout(tail_items, scores, num_tails, tail_size, rng)
             if num_tails else np.empty((0, tail_size), dtype=np.int64))
    return full, tails


def _jitter_half_width(scores: np.ndarray, jitter: float) -> float:
    """Half-width of the uniform ordering noise for ``scores`` (``n >= 1``).

    It is ``sqrt(3) * jitter * std`` (noise of std ``jitter * std``). On small
    data sets it is at least the average gap between neighbours in the middle
    half of the scores, so that neighbours can trade places and pairs do not
    repeat; outliers do not inflate that floor. A constant vector gets 1.0: a
    pure shuffle.
    """
    n = scores.shape[0]
    half = np.sqrt(3.0) * jitter * float(np.std(scores, dtype=np.float64))
    if n > 1 and (float(scores.max()) - float(scores.min())) / (n - 1) > half:
        q1, q3 = np.percentile(scores, [25.0, 75.0])
        half = max(half, float(q3 - q1) / (0.5 * n))
    return half if half > 0.0 else 1.0


def _jittered_order(scores: np.ndarray, rng: np.random.Generator, jitter: float) -> np.ndarray:
    """Argsort of ``scores`` plus uniform noise of std ``jitter * std(scores)``."""
    n = scores.shape[0]
    if n == 0 or jitter == 0:
        return np.argsort(scores, kind="stable")
    key_dtype = np.float64 if scores.dtype == np.float64 else np.float32
    half = _jitter_half_width(scores, jitter)
    noise = rng.random(n, dtype=key_dtype)
    noise -= key_dtype(0.5)
    noise *= key_dtype(2.0 * half)
    noise += scores
    return _order(noise)


_LOW32 = np.uint64(0xFFFFFFFF)


def _order(values: np.ndarray) -> np.ndarray:
    """Ascending argsort whose result is the same on every machine.

    Every rank of a distributed job derives the plan on its own, so equal keys
    must not be left to the sort kernel (numpy's quicksort orders ties
    differently on AVX-512 and AVX2). The keys are rounded to float32, mapped to
    order-preserving unsigned ints and packed above the position: all keys are
    then distinct and any correct sort returns the same order, ties by position.
    Sorting the packed keys costs little more than ``np.argsort`` of float32.
    Rounding to float32 ties only values within about 6e-8 of each other
    relative to their magnitude: far finer than the jitter or the merge sums
    unless the scores carry an offset millions of times their spread.
    """
    n = values.shape[0]
    if n >= 2 ** 32:  # no room for the position: a stable sort is also deterministic
        return np.argsort(values, kind="stable")
    bits = values.astype(np.float32).view(np.uint32).astype(np.uint64)
    negative = bits >= np.uint64(0x80000000)
    # Sign-magnitude to two's-order: flip all bits of negatives, the sign bit of
    # the rest; -0.0 sorts just before +0.0.
    np.bitwise_xor(bits, _LOW32, out=bits, where=negative)
    np.bitwise_or(bits, np.uint64(0x80000000), out=bits, where=~negative)
    bits <<= np.uint64(32)
    bits |= np.arange(n, dtype=np.uint64)
    bits.sort()
    bits &= _LOW32
    return bits.astype(np.int64)


def _split_stratified(order: np.ndarray, k: int,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``k`` elements of ``order``, one at a random place in each of ``k``
    equal strata. Returns ``(picked, rest)``, both still in ``order``'s order."""
    n = order.shape[0]
    if k <= 0:
        return order[:0], order
    if k >= n:
        return order, order[:0]
    edges = (np.arange(k + 1, dtype=np.float64) * (n / k)).astype(np.int64)
    pos = edges[:-1] + (rng.random(k) * (edges[1:] - edges[:-1])).astype(np.int64)
    mask = np.ones(n, dtype=bool)
    mask[pos] = False
    return order[pos], order[mask]


def _layout_anti(sorted_items: np.ndarray, scores: np.ndarray, m: int, b: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Consecutive runs of the sorted order, in shuffled batch order."""
    return sorted_items.reshape(m, b)[rng.permutation(m)]


def _layout_mixed(sorted_items: np.ndarray, scores: np.ndarray, m: int, b: int,
                  rng: np.random.Generator) -> np.ndarray:
    """``(m, b)`` batches with near-equal score sums from ``m*b`` items sorted by
    (jittered) score, ascending. Rows come in random order."""
    if m == 0:
        return sorted_items.reshape(0, b)
    layers = sorted_items.reshape(b, m)
    values = scores[layers].astype(np.float64, copy=False)  # (b, m) true scores
    ar = np.arange(m, dtype=np.int64)
    rev = ar[::-1]

    # Leaves of the differencing tree: groups of layers joined in closed form.
    # A group maps layer -> positions (m,): column r of the group takes that
    # layer's item at positions[r].
    groups: list[dict[int, np.ndarray]] = []
    free = list(range(b))
    if b % 2 == 1 and b >= 3:
        t = (b - 3) // 2  # middle three layers: where sorted scores are most linear
        shift = (ar + m // 2) % m
        ab = values[t] + values[t + 1][shift]
        up = _order(ab)
        groups.append({t: up, t + 1: shift[up], t + 2: rev})
        free = [l for l in free if l not in (t, t + 1, t + 2)]
    for i in range(0, len(free) - 1, 2):
        groups.append({free[i]: ar, free[i + 1]: rev})
    if len(free) % 2 == 1:  # b == 1
        groups.append({free[-1]: ar})

    # Balanced largest differencing: merge the two partials that spread most,
    # lowest sums against highest, until one partial holds every layer.
    heap = []
    for gid, g in enumerate(groups):
        sums = np.zeros(m, dtype=np.float64)
        for layer, pos in g.items():
            sums += values[layer][pos]
        heap.append((-float(np.ptp(sums)), gid, ("group", g), sums))
    heapq.heapify(heap)
    counter = len(heap)
    while len(heap) > 1:
        _, _, node_a, sums_a = heapq.heappop(heap)
        _, _, node_b, sums_b = heapq.heappop(heap)
        ia = _order(sums_a)
        ib = _order(sums_b)[::-1]
        sums = sums_a[ia] + sums_b[ib]
        heapq.heappush(heap, (-float(np.ptp(sums)), counter, ("merge", node_a, ia, node_b, ib), sums))
        counter += 1
    root = heap[0][2]

    # Walk the tree once to find, per layer, which item each column takes.
    positions: dict[int, np.ndarray] = {}
    stack = [(root, ar)]
    while stack:
        node, cols = stack.pop()
        if node[0] == "group":
            for layer, pos in node[1].items():
                positions[layer] = pos[cols]
        else:
            _, node_a, ia, node_b, ib = node
            stack.append((node_a, ia[cols]))
            stack.append((node_b, ib[cols]))

    if b % 2 == 1 and 3 <= b < 8:
        # Few partials to cancel the triple's residual: polish by re-matching.
        _rematch_layers(positions, values, target_std=_REMATCH_TOL * np.sqrt(b) * float(values.std()),
                        max_rounds=_REMATCH_MAX_ROUNDS)

    # A random column order shuffles the batches.
    perm = rng.permutation(m)
    out_t = np.empty((b, m), dtype=sorted_items.dtype)
    for layer, pos in positions.items():
        out_t[layer] = layers[layer][pos[perm]]
    # A transposed view: a contiguous copy would cost a tenth of the plan.
    return out_t.T


#: Small odd batch sizes are polished by re-matching until the batch sums'
#: std is below this fraction of a random batch's (or the rounds run out): the
#: cyclic-shift triple assumes evenly spaced scores, and with few partials the
#: differencing cannot cancel what that leaves.
_REMATCH_TOL = 1e-3
_REMATCH_MAX_ROUNDS = 30


def _rematch_layers(positions: dict[int, np.ndarray], values: np.ndarray, *,
                    target_std: float, max_rounds: int) -> None:
    """Coordinate descent on the batch sums, in place: take one layer out and put
    it back matched against the other layers' sums, lowest rest with highest
    item. Each step can only lower the variance of the sums."""
    m = values.shape[1]
    descending = {l: _order(values[l])[::-1] for l in positions}
    total = sum(values[l][p] for l, p in positions.items())
    for _ in range(max_rounds):
        if float(total.std()) <= target_std:
            break
        for layer in sorted(positions):
            rest = total - values[layer][positions[layer]]
            new = np.empty(m, dtype=np.int64)
            new[_order(rest)] = descending[layer]
            positions[layer] = new
            total = rest + values[layer][new]
