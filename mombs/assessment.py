"""The stateless half of measuring: one assessment pass, and moving batches to a device.

:func:`assessment_pass` is the one full measuring pass (per-sample losses and
K-pass uncertainties, in eval mode, nothing trained); the stateful
:class:`~mombs.assessor.DifficultyAssessor`, the runner and the benchmarks all
call it. :func:`to_device` moves a batch of any nesting (detection's list of
dicts included) to a device. The private helpers below read data sets, pick
samples out of batches and resolve a task adapter's parts; the assessor uses
them too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import cast

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset

from ._checks import check_int
from .noise import _check_noise_args, _eval_mode, feature_noise_uncertainty, find_module, is_pooled
from .tasks import TaskAdapter, create_task

__all__ = ["assessment_pass", "to_device"]


def to_device(obj, device, *, non_blocking: bool = False):
    """``obj`` with every tensor in it moved to ``device``.

    Tensors, mappings, lists and tuples (named tuples too) are walked
    recursively, so detection targets (a list of dicts of tensors) move like a
    plain label tensor; an object with its own ``.to(device)`` is moved by it;
    anything else is returned as it is.

    Args:
        obj: a tensor or a nested structure holding tensors.
        device: where the tensors go.
        non_blocking: passed to ``Tensor.to``.

    Returns:
        The same structure with its tensors on ``device``.
    """
    if torch.is_tensor(obj):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, Mapping):
        moved = {k: to_device(v, device, non_blocking=non_blocking) for k, v in obj.items()}
        try:
            return type(obj)(moved)  # type: ignore[call-arg]  # the caller's mapping type, where it takes a dict
        except TypeError:  # a mapping type that cannot be built from a dict
            return moved
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # named tuple
        return type(obj)(*(to_device(v, device, non_blocking=non_blocking) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device, non_blocking=non_blocking) for v in obj)
    if callable(getattr(obj, "to", None)):  # structures that move themselves (PyG Data, ...)
        try:
            return obj.to(device)
        except TypeError:
            return obj
    return obj


def _default_batch_fn(batch):
    return batch[0], batch[1], (batch[2] if len(batch) > 2 else None)


def _select(obj, mask: np.ndarray):
    """The samples of a batch picked by a ``(B,)`` bool mask.

    A tensor keeps its selected rows; a tuple or a mapping groups batched
    fields (``(x1, x2)``, ``{"image": ..., "mask": ...}``), each selected in
    turn; a list holds one entry per sample (detection's list of images).
    """
    if torch.is_tensor(obj):
        return obj[torch.from_numpy(mask).to(obj.device)]
    if isinstance(obj, Mapping):
        return {k: _select(v, mask) for k, v in obj.items()}
    if isinstance(obj, tuple):
        picked = [_select(v, mask) for v in obj]
        return type(obj)(*picked) if hasattr(obj, "_fields") else tuple(picked)
    if isinstance(obj, list):
        if len(obj) != len(mask):
            raise ValueError(
                f"a list in the batch has {len(obj)} entries but the batch has {len(mask)} "
                f"samples; lists must hold one entry per sample"
            )
        return [v for v, keep in zip(obj, mask) if keep]
    return obj


def _normal_device(device) -> torch.device:
    """``device`` with its index filled in, so that ``cuda`` and ``cuda:0`` compare equal."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _check_indices(name: str, indices, n: int) -> np.ndarray:
    arr = np.asarray(indices)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be a (n,) integer array, got shape {arr.shape} and dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() >= n:
        raise ValueError(
            f"{name} must lie in [0, {n}), the data set's indices; got values in [{arr.min()}, {arr.max()}]"
        )
    return np.unique(arr.astype(np.int64))


def _task_parts(task, loss_fn, output_fn, uncertainty_fn, activation):
    """The adapter's parts with the caller's overrides. A given ``output_fn``
    also feeds the adapter's default loss, which reads the prediction with it."""
    adapter = create_task(task)
    if loss_fn is None:
        base = adapter.loss_fn
        loss_fn = base if output_fn is None else (lambda outputs, targets: base(output_fn(outputs), targets))
    return (
        loss_fn,
        output_fn or adapter.output_fn,
        uncertainty_fn or adapter.uncertainty_fn,
        activation or adapter.activation,
    )


def _task_io(task, forward_fn, collate_fn):
    """The adapter's forward and collate functions unless the caller gives their own."""
    adapter = create_task(task)
    return forward_fn or adapter.forward_fn, collate_fn or adapter.collate_fn


def _check_materialised(model: nn.Module) -> None:
    """Refuses a model whose weights are on the ``meta`` device (shapes, no values)."""
    for name, t in (*model.named_parameters(), *model.named_buffers()):
        if t.device.type == "meta":
            raise ValueError(
                f"the model's {name!r} is on the meta device: it has shapes but no values, so "
                f"nothing can be measured. Materialise the model first (e.g. "
                f"model.to_empty(device='cpu') and load_state_dict) and measure that"
            )


def _low_precision_dtype(model: nn.Module) -> torch.dtype | None:
    """The model's floating dtype when it is float16 or bfloat16 (``model.half()``), else ``None``."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype if p.dtype in (torch.float16, torch.bfloat16) else None
    return None


def _cast_floats(obj, dtype: torch.dtype):
    """``obj`` with every floating tensor in it cast to ``dtype``; other entries as they are."""
    if torch.is_tensor(obj):
        return obj.to(dtype) if obj.is_floating_point() and obj.dtype != dtype else obj
    if isinstance(obj, Mapping):
        return {k: _cast_floats(v, dtype) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_cast_floats(v, dtype) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cast_floats(v, dtype) for v in obj)
    return obj


def _as_index_array(indices) -> np.ndarray:
    return indices.cpu().numpy() if torch.is_tensor(indices) else np.asarray(indices)


def assessment_pass(
    model: nn.Module,
    dataset,
    *,
    loss_indices=None,
    uncertainty_indices=None,
    at: str | None = None,
    k: int = 8,
    alpha: float = 0.3,
    task: str | TaskAdapter = "classification",
    loss_fn: Callable | None = None,
    output_fn: Callable | None = None,
    uncertainty_fn: Callable | None = None,
    activation: str | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    collate_fn: Callable | None = None,
    batch_fn: Callable | None = None,
    device=None,
    generator: torch.Generator | None = None,
    chunk_rows: int | None = None,
    loader=None,
    forward_fn: Callable | None = None,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """One eval-mode measuring pass: per-sample losses and K-pass uncertainties.

    The data set is read once, in index order, over the union of the two index
    sets, in whole batches where it can (:meth:`mombs.IndexedDataset.read_batch`);
    every batch gets one plain forward for its losses and ``k`` disturbed ones
    (chunked, running mean) for its uncertainties. Values stay on the device
    until the pass ends. Nothing is trained and every module's train/eval flag
    is restored. A float16 or bfloat16 network (``model.half()``) gets its
    floating inputs cast to its dtype; a network on the ``meta`` device is
    refused.

    Args:
        model: the network.
        dataset: items ``(index, input, target, ...)`` as
            :class:`~mombs.data.IndexedDataset` makes them (or what ``batch_fn``
            reads).
        loss_indices: ``(n,)`` indices to measure the loss of; ``None``: all,
            an empty array: none.
        uncertainty_indices: the same for the uncertainty.
        at: submodule whose output is disturbed (needed for uncertainties).
        k: disturbed predictions per sample, ``>= 1``.
        alpha: noise half-width, ``[0, 1)``.
        task: a :class:`~mombs.tasks.TaskAdapter` or its registered name; the
            three ``*_fn`` arguments and ``activation`` override its parts.
        loss_fn: ``loss_fn(outputs, targets) -> (B,)`` per-sample losses.
        output_fn: model output -> prediction tensor.
        uncertainty_fn: ``(B, C, ...)`` mean probabilities -> ``(B,)``.
        activation: ``"auto"``, ``"softmax"`` or ``"sigmoid"``.
        batch_size: samples per batch, ``>= 1``.
        num_workers: ``DataLoader`` workers.
        collate_fn: the ``DataLoader``'s collate function; default the task
            adapter's (detection's list-of-dicts one), else torch's.
        batch_fn: ``batch -> (indices, inputs, targets)``.
        device: where inputs and targets go; default the model's.
        generator: private noise generator; default one seeded with 0.
        chunk_rows: most disturbed rows per forward (see
            :func:`~mombs.feature_noise_uncertainty`).
        loader: an iterable of batches to read instead of ``dataset`` (e.g. a
            ``DataLoader`` with workers and the evaluation transforms). Its
            batches may come in any order and hold other samples too, which are
            skipped; it must cover every index asked for. ``dataset`` still
            gives ``N``.
        forward_fn: ``forward_fn(model, inputs) -> output``; default the task
            adapter's (detection: the RPN's objectness), else ``model(inputs)``
            (Hugging Face models: ``lambda m, b: m(**b)``).

    Returns:
        ``((loss_idx, loss), (unc_idx, unc))``: sorted ``(n,)`` int64 indices and
        ``(n,)`` float64 values of each measure, higher = harder.
    """
    loss_fn, output_fn, uncertainty_fn, activation = _task_parts(task, loss_fn, output_fn, uncertainty_fn, activation)
    forward_fn, collate_fn = _task_io(task, forward_fn, collate_fn)
    _check_noise_args(k, alpha, activation)
    check_int("batch_size", batch_size, 1)
    batch_fn = batch_fn or _default_batch_fn
    n = len(dataset)
    every = np.arange(n, dtype=np.int64)
    loss_idx = every if loss_indices is None else _check_indices("loss_indices", loss_indices, n)
    unc_idx = every if uncertainty_indices is None else _check_indices("uncertainty_indices", uncertainty_indices, n)
    if unc_idx.size:
        if at is None:
            raise ValueError("at=None: uncertainties need the name of the submodule to disturb")
        find_module(model, at)
    idx = np.union1d(loss_idx, unc_idx)
    want_loss, want_unc = np.isin(idx, loss_idx), np.isin(idx, unc_idx)
    _check_materialised(model)
    # A half or bfloat16 network gets its float inputs in its own dtype; a
    # float32 one gets them as they come (so its numbers stay as they were).
    low_precision = _low_precision_dtype(model)
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    losses, uncs = np.zeros(loss_idx.size), np.zeros(unc_idx.size)
    got_loss, got_unc = [], []
    pos = 0
    # Whether the disturbed map is pooled (one vector per sample) is seen in the
    # pass's first batch; later batches then go in one tiled forward each,
    # instead of probing again (see feature_noise_uncertainty's chunk_rows).
    pooled: dict[str, bool] = {}  # the map's shape per sample is fixed: its first sight decides

    def spy_on(_module, _inputs, out):
        pooled.setdefault("seen", is_pooled(out))

    spy = (
        find_module(model, cast(str, at)).register_forward_hook(spy_on) if unc_idx.size and chunk_rows is None else None
    )
    with torch.no_grad(), _eval_mode(model), _removing(spy):
        for batch in _read(dataset, idx, batch_size, num_workers, collate_fn, loader):
            indices, inputs, targets = batch_fn(batch)
            ids = _as_index_array(indices)
            if loader is None:
                sel = slice(pos, pos + len(ids))
                pos += len(ids)
                if not np.array_equal(ids, idx[sel]):
                    raise ValueError(
                        f"the batch carries indices {ids[:5].tolist()}... where positions "
                        f"{idx[sel][:5].tolist()}... were read: wrap the data set in "
                        f"mombs.IndexedDataset, or give a batch_fn that returns its indices"
                    )
                m_loss, m_unc = want_loss[sel], want_unc[sel]
            else:  # a caller's loader: any order, maybe more than was asked for
                ids = ids.astype(np.int64, copy=False)
                m_loss, m_unc = np.isin(ids, loss_idx), np.isin(ids, unc_idx)
            if not (m_loss.any() or m_unc.any()):
                continue
            inputs = to_device(inputs, device, non_blocking=True)
            if low_precision is not None:
                inputs = _cast_floats(inputs, low_precision)
            if m_loss.any():
                output = model(inputs) if forward_fn is None else forward_fn(model, inputs)
                value = loss_fn(output, to_device(targets, device, non_blocking=True))
                if not torch.is_tensor(value) or value.shape != (len(ids),):
                    got = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
                    raise ValueError(f"loss_fn must return ({len(ids)},) per-sample losses, got {got}")
                # Kept on the device until the pass ends: one host copy, not one per batch.
                got_loss.append(
                    (ids[m_loss], value if m_loss.all() else value[torch.from_numpy(m_loss).to(value.device)])
                )
            if m_unc.any():
                value = feature_noise_uncertainty(
                    model,
                    inputs if m_unc.all() else _select(inputs, m_unc),
                    at=cast(str, at),
                    k=k,
                    alpha=alpha,
                    activation=activation,
                    generator=generator,
                    output_fn=output_fn,
                    uncertainty_fn=uncertainty_fn,
                    forward_fn=forward_fn,
                    chunk_rows=_rows_for(pooled, chunk_rows, k, inputs),
                )
                got_unc.append((ids[m_unc], value))
    for name, found, values, order in (("loss", got_loss, losses, loss_idx), ("uncertainty", got_unc, uncs, unc_idx)):
        if not found:
            continue
        ids = np.concatenate([f[0] for f in found])
        if loader is not None and np.setdiff1d(order, ids).size:
            missing = np.setdiff1d(order, ids)
            raise ValueError(
                f"loader= yielded no batch holding {missing.size} of the samples whose {name} "
                f"was asked for (e.g. {missing[:5].tolist()}); it must cover the data set"
            )
        values[np.searchsorted(order, ids)] = (
            torch.cat([f[1].detach().reshape(-1).float() for f in found]).to("cpu", torch.float64).numpy()
        )
    if loader is not None:
        for name, found, order in (("loss", got_loss, loss_idx), ("uncertainty", got_unc, unc_idx)):
            if order.size and not found:
                raise ValueError(f"loader= yielded none of the samples whose {name} was asked for")
    return (loss_idx, losses), (unc_idx, uncs)


@contextlib.contextmanager
def _removing(handle):
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


def _rows_for(pooled: dict, chunk_rows: int | None, k: int, inputs) -> int | None:
    """``chunk_rows`` for the next K-pass: the caller's, else all ``k`` copies of
    the batch at once once the pass has seen pooled features (and only those)."""
    if chunk_rows is not None or not pooled.get("seen") or not torch.is_tensor(inputs):
        return chunk_rows
    return k * inputs.shape[0]


def _read(dataset, idx: np.ndarray, batch_size: int, num_workers: int, collate_fn, loader):
    """The raw batches of an assessment pass over ``idx`` (sorted), in that order.

    A caller's ``loader`` is used as it is. A data set that reads whole batches
    itself (:meth:`mombs.IndexedDataset.read_batch`) is read that way when no
    workers or collate function are asked for; anything else goes through a
    ``DataLoader``.
    """
    if loader is not None:
        yield from loader
        return
    if callable(getattr(dataset, "read_batch", None)) and num_workers == 0 and collate_fn is None:
        for start in range(0, idx.size, batch_size):
            yield dataset.read_batch(torch.from_numpy(idx[start : start + batch_size]))
        return
    data = dataset if idx.size == len(dataset) else Subset(dataset, idx.tolist())
    # A private generator: a DataLoader draws its workers' base seed from the
    # global RNG otherwise, and the library never touches that.
    yield from DataLoader(
        data,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_fn,
        generator=torch.Generator(),
    )
