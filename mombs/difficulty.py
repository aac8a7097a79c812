"""Difficulty from measurements: rank-sum scores, quadrants and the per-sample tracker
(``shared/METHOD.md`` §1).

This module knows nothing of data sets or models: it turns per-sample loss and
uncertainty values into difficulty scores and keeps them up to date.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._checks import check_int, check_real

__all__ = [
    "MEASURES",
    "QUADRANTS",
    "DifficultyTracker",
    "QuadrantResult",
    "difficulty_scores",
    "quadrants",
    "rank_average",
    "spearman",
]

#: Which ranks :func:`difficulty_scores` sums: both (MoMBS), or one (ablations Mo+l, Mo+u).
MEASURES = ("both", "loss", "uncertainty")

#: Quadrant names, in code order (``QuadrantResult.codes`` indexes this tuple).
QUADRANTS = ("poorly-labeled", "under-represented", "well-represented", "overfitted")


def _as_values(name: str, values, n: int | None = None) -> np.ndarray:
    import torch  # here: ``mombs diagnose`` checks its options without torch

    if torch.is_tensor(values):
        # numpy has no bfloat16: widen on the torch side first (float16 and
        # bfloat16 losses from autocast are common).
        values = values.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must have shape (N,), got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} entries but {n} were expected")
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf) out of {arr.size}")
    return arr


def rank_average(values) -> np.ndarray:
    """Ascending ranks ``1..N`` with ties given their average rank (``(N,)`` float64).

    The same as ``scipy.stats.rankdata(values, method="average")``.
    """
    arr = _as_values("values", values)
    return _compute_ranks(arr)


def _compute_ranks(arr: np.ndarray) -> np.ndarray:
    n = arr.shape[0]
    order = np.argsort(arr, kind="stable")
    sorted_vals = arr[order]
    # Start of each run of equal values; a run's average rank is (first + last) / 2.
    new_run = np.empty(n, dtype=bool)
    new_run[:1] = True
    np.not_equal(sorted_vals[1:], sorted_vals[:-1], out=new_run[1:])
    run_id = np.cumsum(new_run) - 1
    starts = np.flatnonzero(new_run)
    ends = np.append(starts[1:], n)
    avg = (starts + ends + 1) / 2.0  # 1-based ranks start+1 .. end
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = avg[run_id]
    return ranks


def spearman(a, b) -> float:
    """Spearman rank correlation of two ``(N,)`` vectors (average ranks for ties).

    Returns ``nan`` when either vector is constant.
    """
    ra, rb = _compute_ranks(_as_values("a", a)), _compute_ranks(_as_values("b", b, len(a)))
    ra -= ra.mean()
    rb -= rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def difficulty_scores(loss, uncertainty=None, *, measure: str = "both") -> np.ndarray:
    """MoMBS difficulty: the sum of the ascending ranks of loss and uncertainty.

    ``d_i = rank(l_i) + rank(u_i)`` (``shared/METHOD.md`` §1). Ranks remove the
    scale mismatch of the two measures and damp epoch-to-epoch fluctuation.

    Args:
        loss: ``(N,)`` per-sample losses, higher = worse fit.
        uncertainty: ``(N,)`` per-sample uncertainties, higher = more uncertain.
            Not needed for ``measure="loss"``.
        measure: ``"both"`` (MoMBS), ``"loss"`` (ablation Mo+l) or
            ``"uncertainty"`` (Mo+u).

    Returns:
        ``(N,)`` float64 scores, higher = harder: in ``[2, 2N]`` for ``"both"``,
        ``[1, N]`` for one measure. Ties share their average rank.

    Raises:
        ValueError: for an unknown measure, wrong shapes, or NaN/inf values
            (the message says how many).
    """
    if measure not in MEASURES:
        raise ValueError(f"measure={measure!r} is not known; choose one of {list(MEASURES)}")
    if measure == "loss":
        return _compute_ranks(_as_values("loss", loss))
    if uncertainty is None:
        raise ValueError(f"measure={measure!r} needs uncertainty values")
    if measure == "uncertainty":
        return _compute_ranks(_as_values("uncertainty", uncertainty))
    loss = _as_values("loss", loss)
    unc = _as_values("uncertainty", uncertainty, loss.shape[0])
    return _compute_ranks(loss) + _compute_ranks(unc)


@dataclass(frozen=True)
class QuadrantResult:
    """Quadrant of every sample, from a split of loss and uncertainty.

    Attributes:
        codes: ``(N,)`` int8 index into :data:`QUADRANTS`.
        counts: samples per quadrant name.
        loss_threshold: loss above which a sample counts as high-loss.
        uncertainty_threshold: uncertainty above which it counts as high-uncertainty.
    """

    codes: np.ndarray
    counts: dict
    loss_threshold: float
    uncertainty_threshold: float

    @property
    def labels(self) -> np.ndarray:
        """``(N,)`` quadrant names."""
        return np.asarray(QUADRANTS, dtype=object)[self.codes]

    def mask(self, name: str) -> np.ndarray:
        """``(N,)`` bool mask of the samples in quadrant ``name``."""
        if name not in QUADRANTS:
            raise ValueError(f"quadrant {name!r} is not known; choose one of {list(QUADRANTS)}")
        return self.codes == QUADRANTS.index(name)


def quadrants(loss, uncertainty, *, loss_quantile: float = 0.5, uncertainty_quantile: float = 0.5) -> QuadrantResult:
    """Label each sample by the quadrant of the loss-uncertainty plane it falls in.

    ========  ===========  =================
    loss      uncertainty  quadrant
    ========  ===========  =================
    high      low          poorly-labeled (likely a wrong label)
    high      high         under-represented (rare or blurry; worth learning)
    low       low          well-represented
    low       high         overfitted
    ========  ===========  =================

    "High" means above the given quantile (the median by default). The sampler
    uses only the summed score; quadrants are for diagnostics and plots.

    Args:
        loss: ``(N,)`` per-sample losses.
        uncertainty: ``(N,)`` per-sample uncertainties.
        loss_quantile: split point of the loss, in ``(0, 1)``.
        uncertainty_quantile: split point of the uncertainty, in ``(0, 1)``.

    Returns:
        A :class:`QuadrantResult` with codes, counts and the thresholds used.
    """
    loss = _as_values("loss", loss)
    unc = _as_values("uncertainty", uncertainty, loss.shape[0])
    for name, q in (("loss_quantile", loss_quantile), ("uncertainty_quantile", uncertainty_quantile)):
        check_real(name, q, 0, 1, low_open=True, high_open=True)
    if loss.size == 0:
        lt = ut = float("nan")
        codes = np.zeros(0, dtype=np.int8)
    else:
        lt, ut = float(np.quantile(loss, loss_quantile)), float(np.quantile(unc, uncertainty_quantile))
        high_l, high_u = loss > lt, unc > ut
        codes = np.where(high_l, np.where(high_u, 1, 0), np.where(high_u, 3, 2)).astype(np.int8)
    counts = {name: int((codes == i).sum()) for i, name in enumerate(QUADRANTS)}
    return QuadrantResult(codes, counts, lt, ut)


class DifficultyTracker:
    """Per-sample loss and uncertainty for ``N`` samples, kept up to date in training.

    Values arrive as ``(indices, values)`` pairs, from the training pass or from
    an assessment pass. The tracker remembers the epoch each value was last
    measured in, turns the values into :func:`difficulty_scores`, and under
    ``torch.distributed`` merges what each rank measured so that every rank sees
    all ``N`` (:meth:`sync`).

    With ``keep_history=True`` it also keeps every epoch's values, not only
    the latest: one ``(N,)`` float32 row per epoch and measure, ``NaN`` where a
    sample was not measured in that epoch (:meth:`history`). That costs
    ``O(N x epochs)`` memory (8 bytes per sample and epoch for both measures,
    40 MB for 50,000 samples over 100 epochs) and is what
    :func:`mombs.quality.data_quality` reads per-epoch figures from.

    Args:
        num_samples: ``N``, the size of the data set, ``>= 1``.
        keep_history: keep the per-epoch values (off by default).
    """

    def __init__(self, num_samples: int, *, keep_history: bool = False):
        check_int("num_samples", num_samples, 1)
        if not isinstance(keep_history, bool):
            raise ValueError(f"keep_history={keep_history!r} must be True or False")
        self.num_samples = int(num_samples)
        self.keep_history = keep_history
        # epoch -> (N,) float32 row per measure; only with keep_history.
        self._history: dict[str, dict[int, np.ndarray]] = {"loss": {}, "uncertainty": {}}
        self.epoch = 0
        n = self.num_samples
        self.loss = np.zeros(n, dtype=np.float64)
        self.uncertainty = np.zeros(n, dtype=np.float64)
        #: Epoch each value was last measured in; -1 = never.
        self.loss_epoch = np.full(n, -1, dtype=np.int64)
        self.uncertainty_epoch = np.full(n, -1, dtype=np.int64)
        # Entries this rank wrote since the last sync().
        self._dirty = {"loss": np.zeros(n, dtype=bool), "uncertainty": np.zeros(n, dtype=bool)}

    def set_epoch(self, epoch: int) -> None:
        """The epoch that later updates are stamped with."""
        check_int("epoch", epoch, 0)
        self.epoch = int(epoch)

    def _update(self, kind: str, indices, values) -> None:
        import torch

        idx = indices.detach().cpu().numpy() if torch.is_tensor(indices) else np.asarray(indices)
        if idx.size == 0:
            idx = idx.astype(np.int64)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"indices must be a (B,) integer array, got shape {idx.shape} and dtype {idx.dtype}")
        vals = _as_values(kind, values, idx.shape[0])
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_samples):
            raise ValueError(f"indices must lie in [0, {self.num_samples}), got values in [{idx.min()}, {idx.max()}]")
        getattr(self, kind)[idx] = vals
        getattr(self, f"{kind}_epoch")[idx] = self.epoch
        self._dirty[kind][idx] = True
        if self.keep_history:
            self._history_row(kind, self.epoch)[idx] = vals

    def _history_row(self, kind: str, epoch: int) -> np.ndarray:
        rows = self._history[kind]
        if epoch not in rows:
            rows[epoch] = np.full(self.num_samples, np.nan, dtype=np.float32)
        return rows[epoch]

    def history(self, kind: str = "loss") -> tuple[np.ndarray, np.ndarray]:
        """Every epoch's values of one measure (needs ``keep_history=True``).

        Args:
            kind: ``"loss"`` or ``"uncertainty"``.

        Returns:
            ``(epochs, values)``: ``(E,)`` int64 epochs in increasing order, one
            for each epoch in which either measure was taken, and ``(E, N)``
            float32 values, ``NaN`` where a sample was not measured in that
            epoch. The latest value measured within an epoch wins.

        Raises:
            ValueError: for an unknown kind, or a tracker without history.
        """
        if kind not in ("loss", "uncertainty"):
            raise ValueError(f"kind={kind!r} must be 'loss' or 'uncertainty'")
        if not self.keep_history:
            raise ValueError(
                "this tracker keeps no history; create it with keep_history=True "
                "(DifficultyAssessor(..., keep_history=True))"
            )
        epochs = np.array(sorted(set(self._history["loss"]) | set(self._history["uncertainty"])), dtype=np.int64)
        values = np.full((epochs.size, self.num_samples), np.nan, dtype=np.float32)
        for row, epoch in enumerate(epochs):
            if int(epoch) in self._history[kind]:
                values[row] = self._history[kind][int(epoch)]
        return epochs, values

    def update_loss(self, indices, values) -> None:
        """Record per-sample losses.

        Args:
            indices: ``(B,)`` data set indices.
            values: ``(B,)`` finite losses (a tensor is detached and copied).
        """
        self._update("loss", indices, values)

    def update_uncertainty(self, indices, values) -> None:
        """Record per-sample uncertainties; ``(B,)`` indices and ``(B,)`` finite values."""
        self._update("uncertainty", indices, values)

    def measured(self, kind: str = "both") -> np.ndarray:
        """``(N,)`` bool: samples with a loss (``"loss"``), an uncertainty, or both."""
        if kind == "loss":
            return self.loss_epoch >= 0
        if kind == "uncertainty":
            return self.uncertainty_epoch >= 0
        if kind != "both":
            raise ValueError(f"kind={kind!r} must be 'loss', 'uncertainty' or 'both'")
        return (self.loss_epoch >= 0) & (self.uncertainty_epoch >= 0)

    def scores(self, measure: str = "both") -> np.ndarray:
        """Difficulty scores from the latest values, ``(N,)``, higher = harder.

        Each measure's ranks span ``1..N``, however many samples it has: the
        ``S`` measured samples' ranks ``1..S`` are stretched linearly onto
        ``1..N`` (``r -> 1 + (r - 1)(N - 1)/(S - 1)``), so a measure taken on a
        part of the data (the rotating schedules) weighs as much in the sum as
        one taken on all of it. A sample never measured in a measure, and the
        only one when ``S == 1``, gets the middle rank ``(N + 1) / 2``, so it is
        planned as average rather than as easy or hard. With ``S == N`` the
        scores are exactly :func:`difficulty_scores` of the latest values.
        """
        if measure not in MEASURES:
            raise ValueError(f"measure={measure!r} is not known; choose one of {list(MEASURES)}")
        parts = ("loss", "uncertainty") if measure == "both" else (measure,)
        n = self.num_samples
        total = np.zeros(n, dtype=np.float64)
        for kind in parts:
            seen = self.measured(kind)
            s = int(seen.sum())
            if s == n:  # untouched: fully measured runs keep their scores bit for bit
                total += _compute_ranks(getattr(self, kind))
                continue
            ranks = np.full(n, (n + 1) / 2.0)
            if s > 1:
                ranks[seen] = 1.0 + (_compute_ranks(getattr(self, kind)[seen]) - 1.0) * ((n - 1) / (s - 1))
            total += ranks
        return total

    def quadrants(self, **kwargs) -> QuadrantResult:
        """:func:`quadrants` of the latest values.

        Raises:
            ValueError: if some sample has never had its loss or its uncertainty
                measured; its stored zero is not a measurement and would land it
                in a low quadrant.
        """
        missing = int(self.num_samples - self.measured("both").sum())
        if missing:
            raise ValueError(
                f"{missing} of {self.num_samples} samples have no loss or no uncertainty "
                f"measured yet; quadrants need both for every sample (measure them first, "
                f"e.g. with an assessment pass)"
            )
        return quadrants(self.loss, self.uncertainty, **kwargs)

    def sync(self) -> None:
        """Merge what every rank measured since the last sync; no-op without a process group.

        Each rank contributes the entries it wrote; a sample written by several
        ranks (padding) gets the mean of their values and the latest epoch.
        """
        import torch

        dist = torch.distributed
        for kind in ("loss", "uncertainty"):
            dirty = self._dirty[kind]
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                device = (
                    torch.device("cuda", torch.cuda.current_device())
                    if dist.get_backend() == "nccl"
                    else torch.device("cpu")
                )
                vals = getattr(self, kind)
                stamp = getattr(self, f"{kind}_epoch")
                buf = torch.from_numpy(np.stack([np.where(dirty, vals, 0.0), dirty.astype(np.float64)]))
                buf = buf.to(device)
                ep = torch.from_numpy(np.where(dirty, stamp, -1)).to(device)
                dist.all_reduce(buf, op=dist.ReduceOp.SUM)
                dist.all_reduce(ep, op=dist.ReduceOp.MAX)
                sums, epochs = buf.cpu().numpy(), ep.cpu().numpy()
                got = sums[1] > 0
                vals[got] = sums[0][got] / sums[1][got]
                stamp[got] = epochs[got]
                if self.keep_history:  # what other ranks measured joins this rank's history
                    for epoch in np.unique(stamp[got]):
                        at = got & (stamp == epoch)
                        self._history_row(kind, int(epoch))[at] = vals[at]
            dirty[:] = False

    def state_dict(self) -> dict:
        """The values, their epochs, what is not yet synced and the current epoch.

        With ``keep_history=True`` the per-epoch history comes too
        (``history_epochs`` ``(E,)``, ``history_loss`` and
        ``history_uncertainty`` ``(E, N)``). Arrays are torch tensors, so
        ``torch.load`` reads the state with its default ``weights_only=True``.
        """
        import torch

        arrays = {
            key: torch.from_numpy(getattr(self, key).copy())
            for key in ("loss", "uncertainty", "loss_epoch", "uncertainty_epoch")
        }
        state = {
            "num_samples": self.num_samples,
            "epoch": self.epoch,
            **arrays,
            "dirty_loss": torch.from_numpy(self._dirty["loss"].copy()),
            "dirty_uncertainty": torch.from_numpy(self._dirty["uncertainty"].copy()),
        }
        if self.keep_history:
            epochs, loss = self.history("loss")
            state["history_epochs"] = torch.from_numpy(epochs)
            state["history_loss"] = torch.from_numpy(loss)
            state["history_uncertainty"] = torch.from_numpy(self.history("uncertainty")[1])
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restores :meth:`state_dict`."""
        if int(state["num_samples"]) != self.num_samples:
            raise ValueError(
                f"state_dict is for num_samples={state['num_samples']} but this tracker "
                f"has num_samples={self.num_samples}"
            )
        import torch

        self.epoch = int(state["epoch"])
        for key in ("loss", "uncertainty", "loss_epoch", "uncertainty_epoch"):
            arr = state[key].numpy() if torch.is_tensor(state[key]) else np.asarray(state[key])
            if arr.shape != (self.num_samples,):
                raise ValueError(f"state_dict[{key!r}] has shape {arr.shape}, expected ({self.num_samples},)")
            getattr(self, key)[:] = arr
        for kind, dirty in self._dirty.items():
            saved = state.get(f"dirty_{kind}")
            dirty[:] = False if saved is None else np.asarray(saved, dtype=bool)
        if self.keep_history:
            # A state saved without history restores none: the history starts here.
            self._history = {"loss": {}, "uncertainty": {}}
            if "history_epochs" in state:
                epochs = np.asarray(state["history_epochs"]).astype(np.int64)
                for kind in ("loss", "uncertainty"):
                    values = np.asarray(state[f"history_{kind}"], dtype=np.float32)
                    if values.shape != (epochs.size, self.num_samples):
                        raise ValueError(
                            f"state_dict['history_{kind}'] has shape {values.shape}, expected "
                            f"({epochs.size}, {self.num_samples})"
                        )
                    for epoch, row in zip(epochs, values):
                        if not np.isnan(row).all():
                            self._history[kind][int(epoch)] = row.copy()
