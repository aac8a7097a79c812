"""Pure batch planning: per-sample difficulty scores -> one epoch of minibatches.

This module knows nothing of models or datasets; it uses numpy only. The sampler
(:mod:`mombs.sampler`) wraps it into a torch ``BatchSampler``.

The ``"mixed"`` order is MoMBS' scheduler (paper eq. 7, ``shared/METHOD.md``
§2): every minibatch gets (nearly) the same total difficulty, so hard samples
travel with easy ones. It works for any batch size, is randomized across epochs
and costs at most about twice one ``np.argsort`` of the scores, at every batch
size (``benchmarks/planner.py`` measures 2 to 256):

0. The scores are standardized first (minus about their median, in units of
   their spread, in float64), so an offset or a scale of the scores changes
   nothing, although every sort below runs on float32 keys.
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
4. Differencing leaves most where its last merges join partials of unlike
   spread (odd ``B``, and ``B = 2 mod 4``). Up to ``B = 32`` one or two layers
   are then re-matched (the rearrangement algorithm: take a layer out, put it
   back lowest rest with highest item), chosen on a small mirror of the
   problem and within a fixed budget of sorting.
5. ``B = 3`` has too few partials to difference, and its re-matching
   converges only linearly: those rounds run on block sums of neighbours,
   and one last re-match on the samples removes what the jitter scrambled.

Samples that do not fill a whole batch (``N mod B``) are picked by stratified
sampling over the sorted order, so a short last batch is as representative as
it can be and ``drop_last`` drops a random, difficulty-stratified set.
"""

from __future__ import annotations

import heapq
import sys
from collections.abc import Iterator, Sequence

import numpy as np

from ._checks import check_int, check_real

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
        return (
            f"BatchPlan(batches={len(self)}, batch_size={self.full.shape[1] if self.full.ndim == 2 else 0}, "
            f"tail={self.tail.size})"
        )


def replica_layout(n: int, batch_size: int, *, num_replicas: int = 1, drop_last: bool = False) -> dict[str, int]:
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
    check_int("n", n, 0)
    check_int("batch_size", batch_size, 1)
    check_int("num_replicas", num_replicas, 1)
    if drop_last:
        full = n // (num_replicas * batch_size)
        return {
            "full_per_replica": full,
            "tail_size": 0,
            "padding": 0,
            "dropped": n - full * num_replicas * batch_size,
            "batches_per_replica": full,
        }
    per_replica = -(-n // num_replicas)
    full, tail = divmod(per_replica, batch_size)
    return {
        "full_per_replica": full,
        "tail_size": tail,
        "padding": per_replica * num_replicas - n,
        "dropped": 0,
        "batches_per_replica": full + (1 if tail else 0),
    }


def plan_batches(
    scores,
    batch_size: int,
    *,
    order: str = "mixed",
    seed: int = 0,
    epoch: int = 0,
    drop_last: bool = False,
    num_replicas: int = 1,
    rank: int = 0,
    jitter: float = DEFAULT_JITTER,
) -> BatchPlan:
    """Plan one epoch of minibatches from per-sample difficulty scores.

    Args:
        scores: ``(N,)`` finite real difficulty scores, higher = harder (for
            instance :func:`mombs.difficulty_scores`). Only their order and sums
            matter, so an offset or a positive scale of all of them gives as
            balanced a plan; ``"random"`` ignores their values but uses their
            length.
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
    check_int("batch_size", batch_size, 1)
    _check_order(order)
    check_int("seed", seed, 0)
    check_int("epoch", epoch, 0)
    check_int("num_replicas", num_replicas, 1)
    check_int("rank", rank, 0)
    if rank >= num_replicas:
        raise ValueError(f"rank={rank} must be < num_replicas={num_replicas}")
    check_real("jitter", jitter, 0)
    if not isinstance(drop_last, (bool, np.bool_)):
        raise ValueError(f"drop_last={drop_last!r} must be a bool")
    return _compute_plan(
        scores,
        int(batch_size),
        order,
        int(seed),
        int(epoch),
        bool(drop_last),
        int(num_replicas),
        int(rank),
        float(jitter),
    )


# --------------------------------------------------------------------------- #
# Validation helpers (public functions call these; private ones trust inputs).


def _check_order(order) -> None:
    if order not in ORDERS:
        hint = ""
        if isinstance(order, str) and order.startswith(("mixed-", "scl", "ohem")):
            hint = (
                f"; {order!r} is a training strategy (mombs.strategies.create_strategy), "
                f"whose sampler plans with one of these orders"
            )
        raise ValueError(f"order={order!r} is not known; choose one of {list(ORDERS)}{hint}")


def _check_scores(scores) -> np.ndarray:
    arr = np.asarray(scores)
    if arr.ndim != 1:
        raise ValueError(f"scores must have shape (N,), got shape {arr.shape}")
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"scores must be real numbers, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise ValueError(
                f"scores contains {bad} non-finite value(s) (NaN or inf) out of {arr.size}; all scores must be finite"
            )
        return arr
    return arr.astype(np.float64)


# --------------------------------------------------------------------------- #
# The planner proper. Everything below trusts its inputs.


#: Elements per chunk where the planner streams through the data.
_CHUNK = 1 << 16
_CHUNK_POSITIONS = np.arange(_CHUNK, dtype=np.uint32)
#: Three layers: rounds run on about this many block sums per layer (they
#: leave about 1 over this number of a random batch's spread), or on the items
#: when there are fewer than four times as many, until the std of the sums is
#: this fraction of a random batch's.
_COARSE_BATCHES = 2048
_THREE_TOL = 2.5e-4
#: Most rounds of re-matching on the block sums (or on small layers).
_COARSE_ROUNDS = 40
#: Rounds stop once one lowers the std of the sums by less than this factor.
_ROUND_GAIN = 0.98
#: Mirror size for choosing the polish steps, and the gain a step must bring there.
_MIRROR_BATCHES = 512
_MIRROR_GAIN = 0.98
#: Polish: at most this many times N keys sorted, at most this many steps,
#: only up to this batch size, and none once the std of the batch sums is
#: below this fraction of a random batch's.
_POLISH_SORTS = 0.6
_POLISH_MAX_STEPS = 2
_POLISH_MAX_B = 32
_POLISH_TOL = 5e-6


def _compute_plan(
    scores: np.ndarray,
    batch_size: int,
    kind: str,
    seed: int,
    epoch: int,
    drop_last: bool,
    num_replicas: int,
    rank: int,
    jitter: float,
) -> BatchPlan:
    n = scores.shape[0]
    layout = replica_layout(n, batch_size, num_replicas=num_replicas, drop_last=drop_last)
    # One generator per (seed, epoch): every replica derives the identical plan.
    rng = np.random.default_rng([seed, epoch])
    local = scores
    if layout["padding"]:
        # Like DistributedSampler: repeat samples from the start of a shuffled list.
        pad = np.resize(rng.permutation(n), layout["padding"])
        items = np.concatenate([np.arange(n, dtype=np.int64), pad])
        local = scores[items]
    num_full = layout["full_per_replica"] * num_replicas
    num_tails = num_replicas if layout["tail_size"] else 0
    full, tails = _plan_items(local, batch_size, num_full, layout["tail_size"], num_tails, kind, rng, jitter)
    full_mine = full[rank::num_replicas] if num_replicas > 1 else full
    tail_mine = tails[rank] if num_tails else np.empty(0, dtype=np.int64)
    if layout["padding"]:  # positions -> data set indices (they differ only when padded)
        full_mine, tail_mine = items[full_mine], items[tail_mine]
    return BatchPlan(full_mine, tail_mine)


def _plan_items(
    scores: np.ndarray,
    batch_size: int,
    num_full: int,
    tail_size: int,
    num_tails: int,
    kind: str,
    rng: np.random.Generator,
    jitter: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``full`` ``(num_full, batch_size)`` and ``tails`` ``(num_tails, tail_size)``
    as positions into ``scores``; positions not used are dropped."""
    n = scores.shape[0]
    n_full = num_full * batch_size
    if kind == "random":
        perm = rng.permutation(n)
        tails = perm[n_full : n_full + num_tails * tail_size].reshape(num_tails, tail_size)
        return perm[:n_full].reshape(num_full, batch_size), tails

    # Every float32 key and every sum below is taken of standardized scores, so
    # an offset or a scale of the scores changes nothing (float32 keys of
    # scores + 1e9 would tie neighbours that differ by less than about 60).
    center, scale = _standardizer(scores)
    if n == 0 or jitter == 0:
        order = np.argsort(scores, kind="stable")
        std = float(np.std(scores, dtype=np.float64)) * scale if n else 0.0
    else:
        order, std = _jittered_order(scores, center, scale, rng, jitter)
    # Samples beyond the full batches are a stratified draw over the sorted
    # order: the short batches stay representative, and drop_last drops a
    # random set that leaves the difficulty distribution intact.
    extra, core = _split_stratified(order, n - n_full, rng)
    del order
    tail_items, _dropped = _split_stratified(extra, num_tails * tail_size, rng)
    layout = _layout_mixed if kind == "mixed" else _layout_anti
    standard = (scores, center, scale, std)
    full = layout(core, standard, num_full, batch_size, rng)
    tails = (
        layout(tail_items, standard, num_tails, tail_size, rng)
        if num_tails
        else np.empty((0, tail_size), dtype=np.int64)
    )
    return full, tails


def _standardizer(scores: np.ndarray) -> tuple[float, float]:
    """``(center, scale)``: about the median of the scores, and one over their
    largest distance from it in a strided sample of at most ~8192 of them.

    The planner only compares and adds scores, so any increasing affine map
    gives the same plan; but float32 keys resolve only about 7 significant
    digits of each value. ``(scores - center) * scale``, computed in float64,
    removes an offset before any float32 work and keeps keys and squares far
    from overflow and underflow, for a few microseconds.
    """
    n = scores.shape[0]
    if n == 0:
        return 0.0, 1.0
    sample = scores[:: max(1, n // 4096)].astype(np.float64)
    center = float(np.median(sample))
    peak = float(np.max(np.abs(sample - center)))
    if not peak > 0.0:  # the sample is constant: take the spread of all scores
        peak = max(float(scores.max()) - center, center - float(scores.min()))
    return center, (1.0 / peak if peak > 0.0 else 1.0)


def _standard(standard: tuple, items: np.ndarray) -> np.ndarray:
    """The standardized scores of ``items`` (any shape), as float64.
    ``standard`` is ``(scores, center, scale, std)``, ``std`` that of all the
    standardized scores."""
    scores, center, scale, _ = standard
    values = _take(scores, items).astype(np.float64, copy=False)
    values -= center
    values *= scale
    return values


def _jitter_half_width(scores: np.ndarray, jitter: float, std: float | None = None) -> float:
    """Half-width of the uniform ordering noise for ``scores`` (``n >= 1``).

    It is ``sqrt(3) * jitter * std`` (noise of std ``jitter * std``; pass
    ``std`` when it is known). On small data sets it is at least the average
    gap between neighbours in the middle half of the scores, so that neighbours
    can trade places and pairs do not repeat; outliers do not inflate that
    floor. A constant vector gets 1.0: a pure shuffle.
    """
    n = scores.shape[0]
    if std is None:
        std = float(np.std(scores, dtype=np.float64))
    half = np.sqrt(3.0) * jitter * std
    if n > 1 and (float(scores.max()) - float(scores.min())) / (n - 1) > half:
        q1, q3 = np.percentile(scores, [25.0, 75.0])
        half = max(half, float(q3 - q1) / (0.5 * n))
    return half if half > 0.0 else 1.0


def _jittered_order(
    scores: np.ndarray, center: float, scale: float, rng: np.random.Generator, jitter: float
) -> tuple[np.ndarray, float]:
    """Order of the standardized scores plus uniform noise of std ``jitter``
    times theirs, ties by position (``n >= 1``); and their std."""
    n = scores.shape[0]
    # float32 keys of the standardized scores, standardized in float64 chunk by
    # chunk: no float64 copy of all the scores, and no float32 over- or underflow.
    key = np.empty(n, dtype=np.float32)
    buffer = np.empty(min(n, _CHUNK), dtype=np.float64)
    for start in range(0, n, _CHUNK):
        part = buffer[: min(_CHUNK, n - start)]
        np.subtract(scores[start : start + part.shape[0]], center, out=part)
        part *= scale
        key[start : start + part.shape[0]] = part
    mean = float(key.sum(dtype=np.float64)) / n
    squares = float(np.dot(key, key))
    if not np.isfinite(squares):  # far outliers overflow float32 squares
        squares = float(np.dot(key.astype(np.float64), key.astype(np.float64)))
    std = float(np.sqrt(max(squares / n - mean * mean, 0.0)))
    half = _jitter_half_width(key, jitter, std)
    # The noise is drawn in chunks (a second array of n floats would cost more
    # in fresh memory than the arithmetic on it), as raw 32-bit words of the
    # generator rounded to float32: uniform on [-half, half] in 2**24 steps,
    # at two thirds of the time of Generator.random.
    noise = np.empty(min(n, _CHUNK), dtype=np.float32)
    for start in range(0, n, _CHUNK):
        part = noise[: min(_CHUNK, n - start)]
        raw = rng.bit_generator.random_raw((part.shape[0] + 1) // 2)
        # Low half of each word first, on any byte order (as Generator's own uint32s).
        part[...] = raw.astype("<u8", copy=False).view("<u4")[: part.shape[0]]
        part *= np.float32(2.0 * half / 2.0**32)
        part -= np.float32(half)
        key[start : start + part.shape[0]] += part
    return _order(key), std


# numpy views a uint64 as two uint32 halves, low half first on little-endian machines.
_LOW = 0 if sys.byteorder == "little" else 1


def _order(values: np.ndarray) -> np.ndarray:
    """Ascending argsort whose result is the same on every machine.

    Every rank of a distributed job derives the plan on its own, so equal keys
    must not be left to the sort kernel (numpy's quicksort orders ties
    differently on AVX-512 and AVX2). The keys are rounded to float32, mapped to
    order-preserving unsigned ints and packed above the position: all keys are
    then distinct and any correct sort returns the same order, ties by position.
    Sorting the packed keys takes about a third of the time of ``np.argsort``
    of float64 (no index array travels with the keys). Rounding to float32 ties
    only values within about 6e-8 of each other relative to their magnitude:
    callers pass standardized scores, or sums minus one of them, so that this
    is far finer than the jitter or the sums' spread.
    """
    n = values.shape[0]
    if n >= 2**32:  # no room for the position: a stable sort is also deterministic
        return np.argsort(values, kind="stable")
    bits = values.astype(np.float32, copy=False).view(np.int32)
    packed = np.empty(n, dtype=np.uint64)
    words = packed.view(np.uint32)
    high = words[1 - _LOW :: 2].view(np.int32)
    low = words[_LOW::2]
    # In chunks that stay in cache, written into the packed words in place:
    # memory touched for the first time costs more than the arithmetic.
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        part = bits[start:stop]
        # Sign-magnitude to two's order: flip all bits of negatives, only the
        # sign bit of the rest (-0.0 sorts just before +0.0).
        key = part >> 31
        key |= np.int32(-0x80000000)
        key ^= part
        high[start:stop] = key
        np.add(_CHUNK_POSITIONS[: stop - start], np.uint32(start), out=low[start:stop])
    packed.sort()
    # The positions are the low halves: mask the keys off in place.
    packed &= np.uint64(0xFFFFFFFF)
    return packed.view(np.int64)


def _take(a: np.ndarray, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``np.take`` of positions that are valid by construction. ``mode="clip"``
    skips the bounds check, with which ``np.take(..., out=)`` fills a temporary
    first (twice the time)."""
    return np.take(a, indices, out=out, mode="clip")


def _order_sums(sums: np.ndarray) -> np.ndarray:
    """:func:`_order` of sums that may all be far from zero: minus their first,
    the float32 keys resolve their differences, not their common offset."""
    key = np.empty(sums.shape[0], dtype=np.float32)
    if sums.shape[0]:
        np.subtract(sums, sums[0], out=key, casting="same_kind")
    return _order(key)


def _split_stratified(order: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``k`` elements of ``order``, one at a random place in each of ``k``
    equal strata. Returns ``(picked, rest)``, both still in ``order``'s order."""
    n = order.shape[0]
    if k <= 0:
        return order[:0], order
    if k >= n:
        return order, order[:0]
    edges = (np.arange(k + 1, dtype=np.float64) * (n / k)).astype(np.int64)
    pos = edges[:-1] + (rng.random(k) * (edges[1:] - edges[:-1])).astype(np.int64)
    if k > 1024:
        mask = np.ones(n, dtype=bool)
        mask[pos] = False
        return order[pos], order[mask]
    # A few picks (drop_last drops fewer than one batch per replica): copy the
    # runs between them, which beats a mask over all n.
    rest = np.empty(n - k, dtype=order.dtype)
    at = prev = 0
    for p in pos.tolist():
        rest[at : at + p - prev] = order[prev:p]
        at += p - prev
        prev = p + 1
    rest[at:] = order[prev:]
    return order[pos], rest


def _layout_anti(sorted_items: np.ndarray, standard, m: int, b: int, rng: np.random.Generator) -> np.ndarray:
    """Consecutive runs of the sorted order, in shuffled batch order."""
    return sorted_items.reshape(m, b)[rng.permutation(m)]


def _layout_mixed(sorted_items: np.ndarray, standard, m: int, b: int, rng: np.random.Generator) -> np.ndarray:
    """``(m, b)`` batches with near-equal score sums from ``m*b`` items sorted by
    (jittered) score, ascending. Rows come in random order.

    The items form ``b`` layers of ``m``, one per batch slot; ``positions[l][j]``
    says which item of layer ``l`` batch ``j`` takes. ``standard`` is
    ``(scores, center, scale, std)`` (see :func:`_standard`).
    """
    if m == 0:
        return sorted_items.reshape(0, b)
    layers = sorted_items.reshape(b, m)
    # A random column order shuffles the batches.
    perm = rng.permutation(m)
    out_t = np.empty((b, m), dtype=sorted_items.dtype)
    if b <= 2:
        # One batch slot, or the i-th easiest with the i-th hardest: the best
        # pairing of the two halves, without a single sum.
        _take(layers[0], perm, out=out_t[0])
        if b == 2:
            _take(layers[1][::-1], perm, out=out_t[1])
        return out_t.T
    v = _standard(standard, layers)  # (b, m) true scores, standardized
    # Layer by layer into the output, each position array dropped once used:
    # fresh memory is a large part of the planner's cost on some machines.
    positions: dict[int, np.ndarray]
    if b == 3:
        positions = _positions_three(v)
        del v
        for layer in range(3):
            _take(layers[layer], _take(positions.pop(layer), perm), out=out_t[layer])
        return out_t.T
    root, total = _differencing_tree(v)
    steps = _polish_steps(v)
    if not steps:
        del v  # the walk needs only the tree
        _walk(root, perm, lambda layer, pos: _take(layers[layer], pos, out=out_t[layer]))
        # A transposed view: a contiguous copy would cost a tenth of the plan.
        return out_t.T
    positions = {}
    _walk(root, perm, positions.__setitem__)
    del root
    _polish(v, positions, _take(total, perm), steps, target=_POLISH_TOL * np.sqrt(b) * standard[3])
    del v
    for layer in range(b):
        _take(layers[layer], positions.pop(layer), out=out_t[layer])
    return out_t.T


# --------------------------------------------------------------------------- #
# Joining the layers. ``v`` is ``(b, m)``: layer ``l`` holds its items' scores
# in jittered ascending order. A join returns ``positions`` (layer -> ``(m,)``
# positions within the layer, one per batch) and the batch sums ``total``.


def _triple_pattern(m: int) -> list[np.ndarray]:
    """Positions for three layers of evenly spaced scores whose sums are all but
    constant: the first layer with the second cyclically shifted by ``m // 2``
    gives pair sums that, sorted, rise by one step per pair; the third layer,
    descending, cancels them."""
    ar = np.arange(m, dtype=np.int64)
    shift = (ar + m // 2) % m
    up = _order(ar + shift)
    return [up, shift[up], ar[::-1].copy()]


def _join_three(v: np.ndarray, layers=(0, 1, 2)) -> tuple[dict, np.ndarray]:
    """The cyclic-shift triple of three layers of ``v``: the pair sums of the
    first two, sorted by their true values, against the third descending
    (``"down"``, see :func:`_differencing_tree`)."""
    a, c, d = layers
    m = v.shape[1]
    ab = np.concatenate([v[c][m // 2 :], v[c][: m // 2]])  # v[c][(r + m // 2) % m], no gather
    ab += v[a]
    up = _order_sums(ab)
    total = _take(ab, up)
    total += v[d][::-1]
    shifted = up + m // 2
    np.subtract(shifted, m, out=shifted, where=shifted >= m)
    return {a: up, c: shifted, d: "down"}, total


def _rematch(
    v: np.ndarray, positions: dict[int, np.ndarray], total: np.ndarray, layer: int, descending: dict[int, np.ndarray]
) -> np.ndarray:
    """One step of coordinate descent on the batch sums, in place: take ``layer``
    out and put it back matched against the other layers' sums, lowest rest
    with highest item (the rearrangement algorithm of Puccetti and Rüschendorf).
    The variance of the sums can only go down. Returns the new sums."""
    if layer not in descending:
        descending[layer] = _order_sums(v[layer])[::-1]
    rest = total - _take(v[layer], positions[layer])
    new = np.empty_like(positions[layer])
    new[_order_sums(rest)] = descending[layer]
    positions[layer] = new
    rest += _take(v[layer], new)
    return rest


def _rematch_rounds(
    v: np.ndarray,
    positions: dict[int, np.ndarray],
    total: np.ndarray,
    *,
    max_rounds: int,
    target: float = 0.0,
    gain: float = _ROUND_GAIN,
) -> np.ndarray:
    """Rounds of :func:`_rematch` over every layer until the std of the sums is
    at most ``target`` or a round lowers it by less than the factor ``gain``
    (or the rounds run out). Returns the sums."""
    descending: dict[int, np.ndarray] = {}
    std = float(total.std())
    for _ in range(max_rounds):
        if std <= target:
            break
        for layer in sorted(positions):
            total = _rematch(v, positions, total, layer, descending)
        new_std = float(total.std())
        if not new_std < gain * std:
            break
        std = new_std
    return total


def _positions_three(v: np.ndarray) -> dict[int, np.ndarray]:
    """Three layers, as positions within them (the batches in no random order).

    The cyclic triple alone leaves a smooth error where the scores are not
    evenly spaced (2e-2 of a random batch's spread on rank sums), and
    re-matching removes it only slowly: each round of all three layers cuts it
    by about a sixth, and the planner used to spend 14 argsorts on that at
    N = 1e6. So the rounds run on block sums: ``mc`` blocks of ``r`` neighbours
    per layer, where a round costs about ``1 / r`` of one on the items. Each
    coarse batch of three blocks becomes ``r`` batches by the evenly spaced
    pattern, and a last re-match of the top layer on the items removes what the
    jitter scrambled inside the blocks (second order: the noise only widens the
    distribution of the other two layers' sums). Layers of fewer than
    ``4 * _COARSE_BATCHES`` items run their rounds on the items themselves.
    """
    m = v.shape[1]
    if m < 4 * _COARSE_BATCHES:  # small: the rounds on the items cost little
        positions, total = _join_three(v)
        positions[2] = np.arange(m - 1, -1, -1, dtype=np.int64)
        _rematch_rounds(
            v, positions, total, max_rounds=_COARSE_ROUNDS, gain=1.0, target=_THREE_TOL * np.sqrt(3.0) * float(v.std())
        )
        return positions
    r = _block_size(m, _COARSE_BATCHES)
    mc, spare = divmod(m, r)
    # The ``spare`` items left over sit in the middle of each layer, between
    # blocks: their batches join the layers' middles, whose sum is close to
    # the mean batch sum, and the last re-match evens them out.
    half = (mc // 2) * r
    blocks = np.concatenate(
        [v[:, :half].reshape(3, mc // 2, r).sum(axis=2), v[:, half + spare :].reshape(3, mc - mc // 2, r).sum(axis=2)],
        axis=1,
    )
    coarse, coarse_total = _join_three(blocks)
    coarse[2] = np.arange(mc - 1, -1, -1, dtype=np.int64)
    _rematch_rounds(blocks, coarse, coarse_total, max_rounds=_COARSE_ROUNDS)
    idx = _index_dtype(m)
    starts = np.arange(mc, dtype=idx) * idx(r)
    starts[mc // 2 :] += idx(spare)
    pattern = [p.astype(idx) for p in _triple_pattern(r)]
    middle = [p.astype(idx) + idx(half) for p in _triple_pattern(spare)]
    positions = {
        layer: np.concatenate([(starts[coarse[layer]][:, None] + pattern[layer]).reshape(-1), middle[layer]])
        for layer in range(3)
    }
    # The re-match of the top layer, without the sums of all three.
    rest = _take(v[0], positions[0])
    rest += _take(v[1], positions[1])
    top = np.empty_like(positions[2])
    top[_order_sums(rest)] = _order_sums(v[2])[::-1]
    positions[2] = top
    return positions


def _block_size(m: int, batches: int) -> int:
    """A block size near ``m / batches`` that leaves few items over."""
    r0 = max(1, m // batches)
    sizes = np.arange(r0, r0 + max(1, r0 // 4) + 1)
    return int(sizes[np.argmin(m % sizes)])


def _differencing_tree(v: np.ndarray) -> tuple[tuple, np.ndarray]:
    """Layers joined in closed form, then the *balanced largest differencing
    method* (Michiels et al.): merge the two partials whose sums spread most,
    lowest sums against highest, until one holds every layer.

    Adjacent layers are joined in opposite order (the i-th easiest of one with
    the i-th hardest of the other), which makes their pair sums almost
    constant; with odd ``b`` the middle three form a cyclic-shift triple, where
    sorted scores are most evenly spaced. Returns the tree (for
    :func:`_walk`) and the batch sums in the root's column order.
    """
    b, m = v.shape
    idx = _index_dtype(m)
    # Leaves of the differencing tree: groups of layers joined in closed form.
    # A group maps layer -> "up" (column r takes item r), "down" (item m-1-r)
    # or an array of positions.
    heap: list[tuple[float, int, tuple, np.ndarray]] = []
    free = list(range(b))
    if b % 2 == 1 and b >= 3:
        t = (b - 3) // 2
        if b <= 5 or b > _POLISH_MAX_B:
            group, sums = _join_three(v, (t, t + 1, t + 2))
        else:
            # Where the polish follows and more partials are differenced, the
            # evenly spaced pattern (no sort of the pair sums) leaves less
            # after the polish: measured at b = 7, 11, 13, 15 on rank sums (a
            # little more at 9; much more at 5, and without the polish).
            first, second, _ = _triple_pattern(m)
            group = {t: first, t + 1: second, t + 2: "down"}
            sums = _take(v[t], first)
            sums += _take(v[t + 1], second)
            sums += v[t + 2][::-1]
        heap.append((-float(np.ptp(sums)), len(heap), ("group", group), sums))
        free = [layer for layer in free if layer not in (t, t + 1, t + 2)]
    for i in range(0, len(free) - 1, 2):
        sums = v[free[i]] + v[free[i + 1]][::-1]
        heap.append((-float(np.ptp(sums)), len(heap), ("group", {free[i]: "up", free[i + 1]: "down"}), sums))
    if len(free) % 2 == 1:  # b == 1
        heap.append((0.0, len(heap), ("group", {free[-1]: "up"}), v[free[-1]].copy()))
    heapq.heapify(heap)
    counter = len(heap)
    while len(heap) > 1:
        _, _, node_a, sums_a = heapq.heappop(heap)
        _, _, node_b, sums_b = heapq.heappop(heap)
        ia = _order_sums(sums_a)
        ib = _order_sums(sums_b)[::-1]
        sums = sums_a[ia]
        sums += sums_b[ib]
        # The tree keeps these until the walk: 4-byte indices halve its memory.
        node = ("merge", node_a, ia.astype(idx), node_b, ib.astype(idx))
        heapq.heappush(heap, (-float(np.ptp(sums)), counter, node, sums))
        counter += 1
    return heap[0][2], heap[0][3]


def _walk(root: tuple, cols: np.ndarray, emit) -> None:
    """Walk the tree once to find, per layer, which item each column takes:
    calls ``emit(layer, positions)`` for every layer. ``cols`` (intp) orders
    the columns."""
    m = cols.shape[0]
    stack = [(root, cols)]
    while stack:
        node, at = stack.pop()
        if node[0] == "group":
            for layer, pos in node[1].items():
                if isinstance(pos, str):
                    emit(layer, at if pos == "up" else (m - 1) - at)
                else:
                    emit(layer, _take(pos, at).astype(np.intp, copy=False))
        else:
            # np.take with intp indices: fancy indexing with 4-byte ones is 3x slower.
            _, node_a, ia, node_b, ib = node
            stack.append((node_a, _take(ia, at).astype(np.intp, copy=False)))
            stack.append((node_b, _take(ib, at).astype(np.intp, copy=False)))


def _index_dtype(m: int):
    """Positions within a layer of ``m`` items: 4 bytes where they fit. The
    planner's memory is most of its cost on machines where fresh pages are slow."""
    return np.int32 if m < 2**31 else np.int64


def _polish_steps(v: np.ndarray) -> list[int]:
    """Which layers to re-match after the differencing, in order: the greedy
    choice on a small mirror of the problem (block sums of neighbours).

    Differencing leaves most where the last merges join partials of unlike
    spread (odd ``b``, and ``b = 2 mod 4``: 2e-3 of a random batch's spread at
    ``b = 6``); one re-matched layer can cut that tenfold, but which layer does
    so depends on the scores. Trying each layer on ``_MIRROR_BATCHES`` block
    sums costs a few hundredths of trying it on the items, and the order found
    there carries over. A step sorts the other layers' sums (``m`` keys) and,
    the first time, the layer itself (``m`` more): the steps stop where that
    would pass ``_POLISH_SORTS`` times ``N``, so that the polish costs at most
    about a quarter of an argsort; two steps at most (one at ``b = 5``, where
    two would take the plan to two argsorts). Sizes ``b % 4 == 0``,
    whose differencing balances to far below any use, and sizes above
    ``_POLISH_MAX_B``, where the mirror would try too many layers, skip this.
    """
    b, m = v.shape
    if b % 4 == 0 or b > _POLISH_MAX_B or m < 2:
        return []
    r = max(1, m // _MIRROR_BATCHES)
    mc = m // r
    blocks = v[:, : mc * r].reshape(b, mc, r).sum(axis=2)
    root, total = _differencing_tree(blocks)
    positions: dict[int, np.ndarray] = {}
    _walk(root, np.arange(mc, dtype=np.intp), positions.__setitem__)
    descending: dict[int, np.ndarray] = {}
    steps: list[int] = []
    std = float(total.std())
    budget = _POLISH_SORTS * b  # in units of m sorted keys
    while len(steps) < _POLISH_MAX_STEPS:
        best = None
        for layer in range(b):
            cost = 1 if layer in steps else 2
            if steps and layer == steps[-1] or cost > budget:
                continue  # re-matching the same layer twice in a row changes nothing
            trial = dict(positions)
            trial_total = _rematch(blocks, trial, total, layer, descending)
            trial_std = float(trial_total.std())
            if best is None or trial_std < best[0]:
                best = (trial_std, layer, trial, trial_total, cost)
        if best is None or not best[0] < _MIRROR_GAIN * std:
            break
        std, layer, positions, total, cost = best
        steps.append(layer)
        budget -= cost
    return steps


def _polish(
    v: np.ndarray, positions: dict[int, np.ndarray], total: np.ndarray, steps: list[int], *, target: float
) -> np.ndarray:
    """Re-match ``steps`` in turn on the items, until the std of the sums is
    below ``target``. Returns the sums."""
    descending: dict[int, np.ndarray] = {}
    for layer in steps:
        if float(total.std()) <= target:
            break
        total = _rematch(v, positions, total, layer, descending)
    return total
