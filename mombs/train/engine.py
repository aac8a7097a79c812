"""One training epoch and one evaluation, as torchvision's references split them."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["augment", "evaluate", "train_one_epoch"]


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 4-pixel-padded crop and horizontal flip, per image, on the batch's device."""
    b, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    dx = torch.randint(0, 9, (b,), generator=gen).tolist()
    dy = torch.randint(0, 9, (b,), generator=gen).tolist()
    flip = torch.rand(b, generator=gen) < 0.5
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    return torch.where(flip.to(x.device)[:, None, None, None], out.flip(3), out)


def evaluate(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> tuple[float, np.ndarray]:
    """Top-1 accuracy and ``(n,)`` predictions over a whole split."""
    model.eval()
    preds = []
    with torch.no_grad():
        for s in range(0, len(y), batch_size):
            preds.append(model(x[s:s + batch_size]).argmax(1).cpu())
    pred = torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)
    return float((pred == y.cpu().numpy()).mean()) if len(pred) else float("nan"), pred


def train_one_epoch(model, loader, *, loss_fn, optimizer, strategy, assessor, device,
                    num_samples: int, augment_gen: torch.Generator | None = None) -> dict:
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

    Returns:
        ``train_loss`` (mean per-sample loss), and ``fit`` / ``seen``: ``(N,)`` bool
        masks of the samples whose given label the training forward predicted,
        and of the samples the epoch visited.
    """
    model.train()
    fit = np.zeros(num_samples, dtype=bool)
    seen = np.zeros(num_samples, dtype=bool)
    total_loss, total = 0.0, 0
    for idx, xb, yb in loader:
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        if augment_gen is not None:
            xb = augment(xb, augment_gen)
        logits = model(xb)
        per_sample = loss_fn(logits, yb)
        if assessor is not None:
            assessor.observe(idx, per_sample)
        w = strategy.weights(per_sample)
        loss = (per_sample * w).mean() if w is not None else per_sample.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += float(per_sample.detach().sum())
        total += len(idx)
        # Which training labels the model fits, read off the training pass for free.
        batch = idx.numpy()
        fit[batch] = (logits.argmax(1) == yb).cpu().numpy()
        seen[batch] = True
    return {"train_loss": total_loss / max(total, 1), "fit": fit, "seen": seen}
