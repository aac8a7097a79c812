"""One training epoch, as torchvision's references write it; evaluation is the recipe's."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..assessment import to_device

__all__ = ["augment", "train_one_epoch"]


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 4-pixel-padded crop and horizontal flip, per image, on the batch's device."""
    b, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    dx = torch.randint(0, 9, (b,), generator=gen).tolist()
    dy = torch.randint(0, 9, (b,), generator=gen).tolist()
    flip = torch.rand(b, generator=gen) < 0.5
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    return torch.where(flip.to(x.device)[:, None, None, None], out.flip(3), out)


def train_one_epoch(
    model,
    loader,
    *,
    loss_fn,
    optimizer,
    strategy,
    assessor,
    device,
    num_samples: int,
    fit_fn,
    augment_gen: torch.Generator | None = None,
    signals: bool = False,
    signal_fn=None,
    step_fn=None,
) -> dict:
    """One pass over ``loader``: the public sampler's batches, the assessor's bookkeeping.

    Args:
        model: the network, put in train mode here.
        loader: a ``DataLoader`` over an :class:`~mombs.IndexedDataset`, items
            ``(index, x, y)``, with the strategy's batch sampler.
        loss_fn: ``(logits, y) -> (B,)`` per-sample losses.
        optimizer: steps once per batch.
        strategy: gives the per-sample loss weights (``None``: all ones).
        assessor: a :class:`~mombs.DifficultyAssessor` that observes each step's
            losses, or ``None``.
        device: where batches go.
        num_samples: ``N``, the training set size.
        augment_gen: generator of the random crop and flip; ``None``: no augmentation.
        fit_fn: ``(outputs, y) -> (B,)`` how well the training forward fits each
            given target, in ``[0, 1]`` (say, 1 where the label is predicted).
        signals: also return each sample's training loss and ``signal_fn``'s
            signals, for a run's history.
        signal_fn: ``(outputs, y) -> {name: (B,) tensor}`` per-sample signals
            read off the training forward (a recipe's; say, the given label's
            margin); ``None``: the loss alone.
        step_fn: for models that compute their own losses (torchvision's
            detectors): ``step_fn(model, inputs, targets) -> (outputs,
            per_sample, objective)`` replaces ``loss_fn(model(x), y)``;
            ``per_sample`` ``(B,)`` is what the assessor and the strategy see,
            ``objective(weights or None)`` the scalar the optimizer minimises,
            and ``fit_fn`` reads ``outputs``. Inputs and targets may be lists
            (of images, of target dicts). ``None``: ``loss_fn`` on ``model(x)``.

    Returns:
        ``train_loss`` (mean per-sample loss), ``fit``: ``(N,)`` float fit of
        each sample's last training forward (0 where unseen), ``seen``: ``(N,)``
        bool mask of the samples the epoch visited, and with ``signals`` a dict
        ``signals`` of ``(N,)`` arrays: ``loss`` and each of ``signal_fn``'s
        signals; float signals are float32, NaN where unseen, integer ones
        (a prediction) int32, -1 where unseen.

    Raises:
        FloatingPointError: a step's per-sample losses or objective are NaN
            or infinite (training diverged); raised before the optimizer
            steps on them or the assessor records them.
    """
    model.train()
    fit = np.zeros(num_samples, dtype=np.float64)
    seen = np.zeros(num_samples, dtype=bool)
    sig = None
    if signals:
        sig = {"loss": np.full(num_samples, np.nan, dtype=np.float32)}
    total_loss, total = 0.0, 0
    for step, (idx, xb, yb) in enumerate(loader):
        xb, yb = to_device(xb, device, non_blocking=True), to_device(yb, device, non_blocking=True)
        if augment_gen is not None:
            xb = augment(xb, augment_gen)
        objective = None
        if step_fn is None:
            logits = model(xb)
            per_sample = loss_fn(logits, yb)
        else:
            logits, per_sample, objective = step_fn(model, xb, yb)
        w = strategy.weights(per_sample)
        if objective is not None:
            loss = objective(w)
        else:
            loss = (per_sample * w).mean() if w is not None else per_sample.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # One host read per step (the epoch's mean needs it anyway), of the
        # per-sample losses and of the objective (a detector's holds terms the
        # per-sample losses do not), so that a diverged run stops here, named
        # as such, before the optimizer steps on it or the assessor records it.
        batch_loss, objective_value = torch.stack([per_sample.detach().sum().double(), loss.detach().double()]).tolist()
        if not (math.isfinite(batch_loss) and math.isfinite(objective_value)):
            raise FloatingPointError(
                f"training diverged: step {step} of the epoch gave a non-finite loss "
                f"(per-sample sum {batch_loss}, objective {objective_value}); lower lr, "
                f"or for detectors trained from scratch use optimizer=adam with lr "
                f"around 1e-4"
            )
        if assessor is not None:
            assessor.observe(idx, per_sample)
        optimizer.step()
        total_loss += batch_loss
        total += len(idx)
        # How well the model fits the training targets, read off the training pass for free.
        batch = idx.numpy()
        with torch.no_grad():
            fit[batch] = fit_fn(logits.detach(), yb).cpu().numpy()
        seen[batch] = True
        if sig is not None:
            sig["loss"][batch] = per_sample.detach().float().cpu().numpy()
            for k, v in (signal_fn(logits, yb) if signal_fn is not None else {}).items():
                if k not in sig:
                    sig[k] = (
                        np.full(num_samples, -1, dtype=np.int32)
                        if not v.dtype.is_floating_point
                        else np.full(num_samples, np.nan, dtype=np.float32)
                    )
                sig[k][batch] = v.cpu().numpy()
    out = {"train_loss": total_loss / max(total, 1), "fit": fit, "seen": seen}
    if sig is not None:
        out["signals"] = sig
    return out
