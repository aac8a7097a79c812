"""Feature-map disturbance and the K-pass uncertainty of MoMBS (``shared/METHOD.md`` §1).

The uncertainty of a sample is the entropy of the model's *mean* prediction
over ``k`` forward passes in which an intermediate feature map ``f`` is
disturbed multiplicatively, ``f + f * xi`` with ``xi ~ U(-alpha, alpha)``
elementwise. Noise on the input barely moves the output; noise on a key feature
map does.

The disturbance is a forward hook on the named submodule: the network's prefix
runs once per sample, the hook tiles its output with independent noise, and the
rest of the network runs on the copies. The copies are processed in chunks of
at most ``chunk_rows`` rows (by default the input batch size) and the
probabilities are kept as a running mean, so peak memory stays near that of
one forward at the input batch size whatever ``k`` is. Networks whose later
layers reuse earlier activations (U-Net skips) cannot take tiled copies; for
them the whole network runs ``k`` times, again with a running mean
(``tiled=False``, or automatically when the tiled pass fails with a batch-size
mismatch; any other error, a CUDA out-of-memory error included, is raised).
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn

from ._checks import check_int, check_real

__all__ = ["default_output_fn", "feature_noise_uncertainty", "find_module", "prediction_entropy"]

_EPS = 1e-12


def find_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` in ``model.named_modules()``.

    Raises:
        ValueError: if there is none; the message lists the names available.
    """
    modules = dict(model.named_modules())
    if not isinstance(name, str) or name not in modules or name == "":
        names = [n for n in modules if n]
        shown = ", ".join(names[:40]) + (", ..." if len(names) > 40 else "")
        raise ValueError(f"at={name!r} is not a submodule of {type(model).__name__}; available: {shown}")
    return modules[name]


def prediction_entropy(probs: torch.Tensor, *, activation: str = "softmax") -> torch.Tensor:
    """Per-sample entropy (nats) of predicted probabilities.

    Args:
        probs: probabilities. ``"softmax"``: ``(B, C)`` or dense ``(B, C, *S)``,
            summing to 1 over ``C``. ``"sigmoid"``: ``(B,)``, ``(B, 1, *S)`` or
            ``(B, C, *S)`` of independent probabilities of the positive class.
        activation: which of the two the probabilities came from.

    Returns:
        ``(B,)`` entropies; dense and multi-label outputs are averaged over every
        position and label. Range ``[0, log C]`` (softmax) or ``[0, log 2]``
        (sigmoid); higher = more uncertain.
    """
    p = probs.clamp_min(_EPS)
    if activation == "softmax":
        ent = -(probs * p.log()).sum(dim=1)
    elif activation == "sigmoid":
        q = (1 - probs).clamp_min(_EPS)
        ent = -(probs * p.log() + (1 - probs) * q.log())
    else:
        raise ValueError(f"activation={activation!r} must be 'softmax' or 'sigmoid'")
    return ent.reshape(ent.shape[0], -1).mean(dim=1) if ent.ndim > 1 else ent


def _resolve_activation(activation: str, out: torch.Tensor) -> str:
    if activation not in ("auto", "softmax", "sigmoid"):
        raise ValueError(f"activation={activation!r} must be 'auto', 'softmax' or 'sigmoid'")
    if activation == "auto":
        return "sigmoid" if out.ndim == 1 or out.shape[1] == 1 else "softmax"
    return activation


def _to_probs(out: torch.Tensor, activation: str) -> torch.Tensor:
    out = out.float()
    return torch.softmax(out, dim=1) if activation == "softmax" else torch.sigmoid(out)


def _check_noise_args(k, alpha, activation) -> None:
    """The checks shared by every caller that disturbs features."""
    check_int("k", k, 1)
    check_real("alpha", alpha, 0, 1, high_open=True)
    if activation not in ("auto", "softmax", "sigmoid"):
        raise ValueError(f"activation={activation!r} must be 'auto', 'softmax' or 'sigmoid'")


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """Eval mode for the duration; each module's own flag is restored after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _disturb(f: torch.Tensor, reps: int, alpha: float, gen: torch.Generator) -> torch.Tensor:
    """``reps`` stacked copies of ``f`` (along dim 0), each times ``1 + U(-alpha, alpha)``."""
    tiled = f.repeat(reps, *([1] * (f.ndim - 1))) if reps > 1 else f
    xi = torch.rand(tiled.shape, generator=gen, device=f.device, dtype=torch.float32)
    xi = xi.mul_(2 * alpha).sub_(alpha).to(f.dtype)
    return tiled + tiled * xi


#: Keys under which dict outputs commonly hold the prediction: torchvision
#: segmentation (``out``), Hugging Face (``logits``), and generic names.
_OUTPUT_KEYS = ("out", "logits", "pred", "prediction")


def default_output_fn(output):
    """The prediction tensor in a model's output.

    A tensor is returned as it is. A mapping (torchvision segmentation models,
    Hugging Face ``ModelOutput``) gives its ``"out"``, ``"logits"``, ``"pred"``
    or ``"prediction"`` entry, or its only tensor. A tuple or list (deep
    supervision heads, auxiliary outputs) gives its first element, the
    full-resolution main output by the usual convention.

    Raises:
        TypeError: when none of these applies; pass ``output_fn=`` then.
    """
    if torch.is_tensor(output):
        return output
    if isinstance(output, Mapping):
        for key in _OUTPUT_KEYS:
            if torch.is_tensor(output.get(key)):
                return output[key]
        tensors = [v for v in output.values() if torch.is_tensor(v)]
        if len(tensors) == 1:
            return tensors[0]
        raise TypeError(
            f"the model returned a {type(output).__name__} with keys {list(output)}; "
            f"pass output_fn= to say which entry is the prediction"
        )
    if isinstance(output, (list, tuple)) and output and torch.is_tensor(output[0]):
        return output[0]
    raise TypeError(
        f"the model returned a {type(output).__name__}; pass output_fn= that maps it "
        f"to the prediction tensor (B, C, ...)"
    )


class _CannotTile(RuntimeError):
    """The network after ``at`` did not carry the tiled copies through."""


# Fragments of torch's messages for tensors whose batch sizes disagree: what a
# skip connection that meets tiled copies raises (cat, add, or a shape check).
_TILE_MISMATCH = (
    "Sizes of tensors must match",
    "must match the size of tensor",
    "size mismatch",
    "shape mismatch",
    "Expected size",
)


def _cannot_tile(err: BaseException) -> bool:
    """Whether ``err`` says that the tiled copies met untiled activations.

    Out-of-memory errors are never taken for it: they must reach the caller.
    """
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    if isinstance(err, oom):
        return False
    if isinstance(err, _CannotTile):
        return True
    return isinstance(err, RuntimeError) and any(f in str(err) for f in _TILE_MISMATCH)


# For each model, the names of the submodules whose tiled copies it could not
# carry, so that later calls skip the failing try. Only a fallback that then
# succeeded is recorded; the noise generator is rewound after a failed try, so a
# call with a warm cache draws exactly what a call with a cold one does.
_UNTILEABLE: weakref.WeakKeyDictionary[nn.Module, set] = weakref.WeakKeyDictionary()


def _rows(output: torch.Tensor) -> int:
    return output.shape[0] if output.ndim else 1


def feature_noise_uncertainty(
    model: nn.Module,
    inputs,
    *,
    at: str,
    k: int = 8,
    alpha: float = 0.3,
    activation: str = "auto",
    tiled: bool | None = None,
    generator: torch.Generator | None = None,
    seed: int = 0,
    output_fn: Callable | None = None,
    uncertainty_fn: Callable | None = None,
    chunk_rows: int | None = None,
    forward_fn: Callable | None = None,
) -> torch.Tensor:
    """Entropy of the mean prediction under ``k`` disturbances of a feature map.

    ``u_i = H((1/k) * sum_j p(g(f_i * (1 + xi_j))))`` where ``f`` is the output of
    submodule ``at`` and ``g`` the rest of the network (``shared/METHOD.md`` §1).
    The pass runs without gradients and in eval mode, so BatchNorm running
    statistics are untouched; every module's train/eval flag is restored and
    the hook removed afterwards, also on error. The ``k`` predictions are
    never held at once: they are summed into a running mean, chunk by chunk.

    Args:
        model: the network.
        inputs: what ``model(inputs)`` takes: a ``(B, ...)`` tensor, or any
            other object (a list of images, a dict) passed as it is.
        at: name of the submodule whose output is disturbed, as in
            ``model.named_modules()`` (e.g. ``"layer3"``).
        k: number of disturbed passes, ``>= 1`` (paper: 8).
        alpha: noise half-width, ``0 <= alpha < 1`` (default 0.3).
        activation: ``"softmax"`` (multi-class, ``(B, C, ...)`` logits),
            ``"sigmoid"`` (binary or multi-label) or ``"auto"``: sigmoid when the
            prediction is ``(B,)`` or ``(B, 1, ...)``, softmax otherwise.
        tiled: run the rest of the network on tiled copies of the feature map
            (``True``), run the whole network ``k`` times (``False``), or try
            tiled and fall back when the copies meet untiled activations
            (``None``). Only that batch-size mismatch selects the fallback.
        generator: private random generator for the noise; by default one seeded
            with ``seed`` on the feature map's device. The global RNG is never used.
        seed: seed of the default generator.
        output_fn: maps the model's output to the prediction tensor ``(B, C, ...)``
            (logits); default :func:`default_output_fn`.
        uncertainty_fn: reduces the ``(B, C, ...)`` mean probabilities to ``(B,)``
            uncertainties, higher = more uncertain; default
            :func:`prediction_entropy` (mean per-position entropy for dense
            outputs). The hook for task-specific reductions (detection anchors).
        chunk_rows: most disturbed rows per forward, ``>= 1``; default the input
            batch size ``B``, so a forward never carries more rows than the
            caller's batch, except after pooled features (a ``(B, C)`` or
            ``(B, C, 1, 1)`` map, where only a small head follows): there the
            default sends the samples after the first sub-batch in one forward
            with all ``k`` copies. Tensor inputs are split into sub-batches of
            ``max(1, chunk_rows // k)`` samples with their copies; other inputs
            go whole, ``max(1, chunk_rows // B)`` copies at a time.
        forward_fn: ``forward_fn(model, inputs) -> output`` calls the model;
            default ``model(inputs)``. For models that take keyword inputs
            (Hugging Face: ``lambda m, batch: m(**batch)``).

    Returns:
        ``(B,)`` float32 tensor on the output's device: entropy in nats, averaged
        over positions for dense outputs; higher = more uncertain. With
        ``k=1, alpha=0`` it is the plain entropy of the prediction.

    Raises:
        ValueError: for an unknown ``at`` (listing the names available), an
            ``at`` that the forward never runs, out-of-range ``k``, ``alpha``,
            ``activation`` or ``chunk_rows``, or an ``uncertainty_fn`` that does
            not return ``(B,)``.
        TypeError: when the output of ``at`` is not a tensor, or the model's
            output holds no prediction that ``output_fn`` can find.
    """
    _check_noise_args(k, alpha, activation)
    if tiled not in (None, True, False):
        raise ValueError(f"tiled={tiled!r} must be True, False or None")
    check_int("chunk_rows", chunk_rows, 1, optional=True)
    check_int("seed", seed, 0)
    k, alpha, seed = int(k), float(alpha), int(seed)
    chunk_rows = None if chunk_rows is None else int(chunk_rows)
    module = find_module(model, at)
    extract = output_fn or default_output_fn
    state: dict[str, Any] = {"reps": 1, "gen": generator, "rows": None, "pooled": False}

    def hook(_mod, _inp, out):
        if not torch.is_tensor(out):
            raise TypeError(f"the output of {at!r} is a {type(out).__name__}; feature noise needs a tensor")
        if state["gen"] is None:
            state["gen"] = torch.Generator(device=out.device).manual_seed(seed)
        state["rows"] = _rows(out)
        state["pooled"] = is_pooled(out)
        return _disturb(out, state["reps"], alpha, state["gen"])

    def predict(x, reps):
        """Probabilities summed over ``reps`` disturbed copies: ``(b, C, ...)``."""
        state["reps"], state["rows"] = reps, None
        pred = extract(model(x) if forward_fn is None else forward_fn(model, x))
        if state["rows"] is None:
            raise ValueError(
                f"at={at!r} was not called during the model's forward, so nothing was "
                f"disturbed; name a submodule that the forward runs"
            )
        if reps > 1 and _rows(pred) != reps * state["rows"]:
            raise _CannotTile(f"the output's batch is not {reps} x that of {at!r}")
        act[0] = act[0] or _resolve_activation(activation, pred)
        probs = _to_probs(pred, act[0])
        return probs.reshape(reps, -1, *probs.shape[1:]).sum(dim=0) if reps > 1 else probs

    def k_times():
        total = None
        for _ in range(k):
            p = predict(inputs, 1)
            total = p if total is None else total.add_(p)
        return total.div_(k)

    act: list[Any] = [None]  # the activation's name, once the hook has seen a prediction
    use_tiles = tiled is not False and k > 1 and not (tiled is None and at in _UNTILEABLE.get(model, ()))
    with torch.no_grad(), _eval_mode(model):
        handle = module.register_forward_hook(hook)
        try:
            mean = None
            if use_tiles:
                rewind = generator.get_state() if generator is not None else None
                try:
                    mean = _tiled_mean(predict, inputs, k, chunk_rows, lambda: state["pooled"])
                except RuntimeError as err:
                    if tiled or not _cannot_tile(err):
                        raise
                    # Rewind the noise, so that the fallback draws what it draws
                    # when the cache already knows (a resumed run has a cold cache).
                    if generator is not None and rewind is not None:  # rewind is None without a generator
                        generator.set_state(rewind)
                    else:
                        state["gen"] = None
                    act[0] = None
                    mean = k_times()
                    _UNTILEABLE.setdefault(model, set()).add(at)
            if mean is None:
                mean = k_times()
        finally:
            handle.remove()
        reduce = uncertainty_fn or (lambda m: prediction_entropy(m, activation=act[0]))
        out = reduce(mean)
    if not torch.is_tensor(out) or out.ndim != 1 or out.shape[0] != mean.shape[0]:
        got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise ValueError(f"uncertainty_fn must return a ({mean.shape[0]},) tensor, got {got}")
    return out.float()


def is_pooled(features) -> bool:
    """Whether a feature map is one vector per sample: ``(B, C)`` or ``(B, C, 1, ...)``.

    What runs after pooled features is a small head, so the ``k`` disturbed
    copies of a whole batch are cheap to send through it in one forward.
    """
    return torch.is_tensor(features) and (features.ndim <= 2 or math.prod(features.shape[2:]) == 1)


def _tiled_mean(
    predict: Callable, inputs, k: int, chunk_rows: int | None, pooled: Callable[[], bool] = lambda: False
) -> torch.Tensor | None:
    """Running mean of ``k`` disturbed predictions, at most ``chunk_rows`` rows a forward.

    Without a ``chunk_rows``, a disturbed map that ``pooled()`` says is one
    vector per sample lets the samples after the first sub-batch go in one
    forward with all their copies: the prefix then runs once per batch, not
    ``k`` times in ``1/k``-sized pieces (a GPU runs small batches no faster
    than large ones).
    """
    if not torch.is_tensor(inputs):
        # Inputs that cannot be sliced (lists of images, dicts) go whole.
        first = predict(inputs, 1)
        copies = 1 if chunk_rows is None else max(1, chunk_rows // max(first.shape[0], 1))
        total, done = first, 1
        while done < k:
            reps = min(copies, k - done)
            total.add_(predict(inputs, reps))
            done += reps
        return total.div_(k)
    b = inputs.shape[0]
    rows = chunk_rows or max(b, 1)
    per = max(1, rows // k)  # samples per forward, each with all its copies
    copies = min(k, rows)  # copies per forward when one sample's k exceed the rows
    mean = None
    s = 0
    while s < b:
        if s and chunk_rows is None and pooled():
            per, copies = b - s, k
        x = inputs[s : s + per]
        total, done = None, 0
        while done < k:
            reps = min(copies, k - done)
            p = predict(x, reps)
            total = p if total is None else total.add_(p)
            done += reps
        if mean is None:  # one (B, C, ...) buffer, filled sub-batch by sub-batch
            mean = total.new_empty((b, *total.shape[1:]))
        mean[s : s + per] = total.div_(k)
        s += per
    return mean
