"""Feature-map disturbance and the K-pass uncertainty of MoMBS (``shared/METHOD.md`` §1).

The uncertainty of a sample is the entropy of the model's *mean* prediction
over ``k`` forward passes in which an intermediate feature map ``f`` is
disturbed multiplicatively, ``f + f * xi`` with ``xi ~ U(-alpha, alpha)``
elementwise. Noise on the input barely moves the output; noise on a key feature
map does.

The disturbance is a forward hook on the named submodule: the network's prefix
runs once, the hook tiles its output ``k`` times with independent noise, and
the rest of the network runs on the ``k * B`` copies. Networks whose later
layers reuse earlier activations (U-Net skips) cannot take a tiled batch; for
them the whole network runs ``k`` times (``tiled=False``, or automatically when
the tiled pass fails on a shape mismatch).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn as nn

__all__ = ["feature_noise_uncertainty", "prediction_entropy", "find_module"]

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
        raise ValueError(f"at={name!r} is not a submodule of {type(model).__name__}; "
                         f"available: {shown}")
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
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r} must be an integer >= 1")
    if not isinstance(alpha, (int, float)) or not 0 <= alpha < 1:
        raise ValueError(f"alpha={alpha!r} must be a number in [0, 1)")
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


def feature_noise_uncertainty(model: nn.Module, inputs, *, at: str, k: int = 8, alpha: float = 0.3,
                              activation: str = "auto", tiled: bool | None = None,
                              generator: torch.Generator | None = None, seed: int = 0,
                              output_fn: Callable | None = None) -> torch.Tensor:
    """Entropy of the mean prediction under ``k`` disturbances of a feature map.

    ``u_i = H((1/k) * sum_j p(g(f_i * (1 + xi_j))))`` where ``f`` is the output of
    submodule ``at`` and ``g`` the rest of the network (``shared/METHOD.md`` §1).
    The pass runs without gradients and in eval mode, so BatchNorm running
    statistics are untouched; every module's train/eval flag is restored and
    the hook removed afterwards, also on error.

    Args:
        model: the network.
        inputs: what ``model(inputs)`` takes (a tensor, or a tuple/list that is
            unpacked into positional arguments).
        at: name of the submodule whose output is disturbed, as in
            ``model.named_modules()`` (e.g. ``"layer3"``).
        k: number of disturbed passes, ``>= 1`` (paper: 8).
        alpha: noise half-width, ``0 <= alpha < 1`` (default 0.3).
        activation: ``"softmax"`` (multi-class, ``(B, C, ...)`` logits),
            ``"sigmoid"`` (binary or multi-label) or ``"auto"``: sigmoid when the
            output is ``(B,)`` or ``(B, 1, ...)``, softmax otherwise.
        tiled: run the rest of the network once on ``k * B`` tiled copies
            (``True``), run the whole network ``k`` times (``False``), or try
            tiled and fall back on a shape error (``None``).
        generator: private random generator for the noise; by default one seeded
            with ``seed`` on the feature map's device. The global RNG is never used.
        seed: seed of the default generator.
        output_fn: maps the model's output to logits, for models that return a
            dict or tuple.

    Returns:
        ``(B,)`` float32 tensor on the output's device: entropy in nats, averaged
        over positions for dense outputs; higher = more uncertain. With
        ``k=1, alpha=0`` it is the plain entropy of the prediction.

    Raises:
        ValueError: for an unknown ``at`` (listing the names available) or
            out-of-range ``k``, ``alpha`` or ``activation``.
    """
    _check_noise_args(k, alpha, activation)
    if tiled not in (None, True, False):
        raise ValueError(f"tiled={tiled!r} must be True, False or None")
    module = find_module(model, at)
    args = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    extract = output_fn or (lambda out: out)

    state = {"reps": k, "gen": generator, "batch": None}

    def hook(_mod, _inp, out):
        if not torch.is_tensor(out):
            raise TypeError(f"the output of {at!r} is a {type(out).__name__}; "
                            f"feature noise needs a tensor")
        if state["gen"] is None:
            state["gen"] = torch.Generator(device=out.device).manual_seed(seed)
        state["batch"] = out.shape[0]
        return _disturb(out, state["reps"], alpha, state["gen"])

    with torch.no_grad(), _eval_mode(model):
        handle = module.register_forward_hook(hook)
        try:
            logits = None
            if tiled is not False:
                try:
                    logits = extract(model(*args))
                    batch = state["batch"]
                    if batch is None or logits.shape[0] != k * batch:
                        raise RuntimeError("the output's batch is not k * B")
                except RuntimeError:
                    if tiled:
                        raise
                    logits = None
            if logits is None:
                state["reps"] = 1
                outs = [extract(model(*args)) for _ in range(k)]
                act = _resolve_activation(activation, outs[0])
                mean = sum(_to_probs(o, act) for o in outs) / k
            else:
                act = _resolve_activation(activation, logits)
                probs = _to_probs(logits, act)
                mean = probs.reshape(k, -1, *probs.shape[1:]).mean(dim=0)
        finally:
            handle.remove()
    return prediction_entropy(mean, activation=act).float()
