"""The runner: a run config -> a trained model, per-epoch logs and one results file.

A run is resumable: it checkpoints after every epoch (written atomically) and a
restarted run with the same config continues from the last finished epoch. A
finished run leaves ``results.json`` and is never redone.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .assessor import DifficultyTracker, difficulty_scores, quadrants
from .data.corpus import Corpus, load_corpus
from .envinfo import environment_info
from .losses import create_loss
from .models import FEATURE_MODULE, create_model
from .noise import feature_noise_uncertainty
from .schedule import DEFAULT_SCHEDULE, SCHEDULES
from .strategies import STRATEGY_REGISTRY, create_strategy

__all__ = ["RunConfig", "run", "run_dir_name"]


@dataclass
class RunConfig:
    """Everything that defines one training run. Defaults: the CPU demo recipe."""

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    subset: int | None = None          # training images kept (seeded), before the LT cut
    imbalance: float | None = None     # long-tailed rho, e.g. 0.01
    img_max: int | None = None         # images of the largest class in the LT cut
    noise: str = "none"                # none | symmetric | pair | human
    noise_rate: float = 0.0
    noise_file: str | None = None      # CIFAR-100_human.pt for noise="human"
    val_fraction: float = 0.1
    model: str = "small_cnn"
    loss: str = "ce"
    strategy: str = "random"
    pivot_epoch: int = 5
    schedule: str = DEFAULT_SCHEDULE
    k: int = 8
    alpha: float = 0.3
    batch_size: int = 16
    epochs: int = 20
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool | None = None        # None: crop+flip for CIFAR, nothing otherwise
    test_every: int = 5                # test accuracy every n epochs (and at the end)
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    tags: dict = field(default_factory=dict)

    def validate(self) -> "RunConfig":
        if self.strategy not in STRATEGY_REGISTRY:
            raise ValueError(f"strategy={self.strategy!r} is not known; choose one of {sorted(STRATEGY_REGISTRY)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r} is not known; choose one of {sorted(SCHEDULES)}")
        if self.noise not in ("none", "symmetric", "pair", "human"):
            raise ValueError(f"noise={self.noise!r} must be none, symmetric, pair or human")
        for name in ("batch_size", "epochs", "k", "test_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} must be an integer >= 1")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction={self.val_fraction!r} must be in (0, 1): choices need a validation split")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr!r} must be > 0")
        return self

    def key(self) -> str:
        """A short hash of everything that changes the run's outcome."""
        d = dataclasses.asdict(self)
        for k in ("device", "threads", "tags", "data_dir", "test_every"):
            d.pop(k)
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


def run_dir_name(cfg: RunConfig) -> str:
    return f"{cfg.dataset}-{cfg.strategy}-{cfg.loss}-b{cfg.batch_size}-s{cfg.seed}-{cfg.key()}"


# --------------------------------------------------------------------------- #


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 4-pixel-padded crop and horizontal flip, per image, on the batch's device."""
    b, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    dx = torch.randint(0, 9, (b,), generator=gen).tolist()
    dy = torch.randint(0, 9, (b,), generator=gen).tolist()
    flip = torch.rand(b, generator=gen) < 0.5
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    return torch.where(flip.to(x.device)[:, None, None, None], out.flip(3), out)


def _evaluate(model, x, y, batch_size=1000) -> tuple[float, np.ndarray]:
    """Top-1 accuracy and predictions over a whole split."""
    model.eval()
    preds = []
    with torch.no_grad():
        for s in range(0, len(y), batch_size):
            preds.append(model(x[s:s + batch_size]).argmax(1).cpu())
    pred = torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)
    return float((pred == y.cpu().numpy()).mean()) if len(pred) else float("nan"), pred


def _final_assessment(model, x, y, at, k, alpha, seed) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode loss and K-pass uncertainty of every training sample, for diagnostics."""
    gen = torch.Generator(device=x.device).manual_seed(seed + 77)
    losses, uncs = [], []
    model.eval()
    with torch.no_grad():
        for s in range(0, len(y), 512):
            xb, yb = x[s:s + 512], y[s:s + 512]
            losses.append(F.cross_entropy(model(xb), yb, reduction="none").cpu())
            uncs.append(feature_noise_uncertainty(model, xb, at=at, k=k, alpha=alpha, generator=gen).cpu())
    return torch.cat(losses).numpy(), torch.cat(uncs).numpy()


def _atomic_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _atomic_torch(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def run(cfg: RunConfig, out_dir, *, progress: bool = False, corpus: Corpus | None = None) -> dict:
    """Trains one model and writes ``config.json``, ``log.jsonl``, ``results.json``
    (and a resumable ``checkpoint.pt``, removed at the end) under ``out_dir``.

    Args:
        cfg: the run's configuration.
        out_dir: the run's own folder.
        progress: show a progress bar over epochs (needs ``tqdm``).
        corpus: the already loaded data, to skip reading it again.

    Returns:
        The results dict (also in ``results.json``).
    """
    cfg.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    if results_path.exists():
        return json.loads(results_path.read_text())
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    data = corpus or load_corpus(cfg)
    _atomic_json(out / "config.json", {"config": dataclasses.asdict(cfg), "key": cfg.key(),
                                       "data": data.describe()})

    x_tr, y_tr = data.x_train.to(device), torch.from_numpy(data.y_train).to(device)
    x_val, y_val = data.x_val.to(device), torch.from_numpy(data.y_val).to(device)
    x_te, y_te = data.x_test.to(device), torch.from_numpy(data.y_test).to(device)
    n, num_classes = len(y_tr), data.num_classes
    counts = np.bincount(data.y_train, minlength=num_classes)

    # Weight init draws from torch's global generator; fork_rng gives it back untouched.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(cfg.seed)  # CPU only: CUDA's global state stays untouched
        model = create_model(cfg.model, num_classes=num_classes, in_channels=x_tr.shape[1]).to(device)
    at = FEATURE_MODULE[cfg.model]
    loss_fn = create_loss(cfg.loss, class_counts=counts, epochs=cfg.epochs).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    strategy = create_strategy(cfg.strategy, pivot_epoch=cfg.pivot_epoch)
    tracker = DifficultyTracker(n) if strategy.measure else None
    assessor = None
    if strategy.measure in ("both", "uncertainty"):
        from .data.indexed import IndexedDataset
        from .loop import DifficultyAssessor

        train_set = IndexedDataset(torch.utils.data.TensorDataset(x_tr, y_tr))
        assessor = DifficultyAssessor(model, train_set, at=at, schedule=cfg.schedule, k=cfg.k,
                                      alpha=cfg.alpha, measure=strategy.measure,
                                      pivot_epoch=cfg.pivot_epoch, head=model.fc, batch_size=512,
                                      device=device, seed=cfg.seed)
        tracker = assessor.tracker
    augment = cfg.augment if cfg.augment is not None else data.name.startswith("cifar")
    aug_gen = torch.Generator().manual_seed(cfg.seed + 1)

    start, log, best = 0, [], {"val": -1.0, "epoch": -1, "state": None}
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists():
        # CPU first: generator states must stay CPU byte tensors; load_state_dict moves the rest.
        ck = torch.load(ckpt_path, weights_only=False, map_location="cpu")
        if ck["key"] == cfg.key():
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["opt"])
            sched.load_state_dict(ck["sched"])
            if assessor is not None:
                assessor.load_state_dict(ck["assessor"])
            elif tracker is not None:
                tracker.load_state_dict(ck["tracker"])
            aug_gen.set_state(ck["aug_gen"])
            start, log, best = ck["epoch"] + 1, ck["log"], ck["best"]
            # The log on disk may hold an epoch that finished after this checkpoint was cut.
            (out / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    noisy_mask = data.noisy_train
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.epochs, initial=start, desc=run_dir_name(cfg)[:40], leave=False)

    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        if assessor is not None:
            assessor.start_epoch(epoch)
        elif tracker is not None:
            tracker.set_epoch(epoch)
        if hasattr(loss_fn, "set_epoch"):
            loss_fn.set_epoch(epoch)
        have = tracker is not None and tracker.measured("loss" if strategy.measure == "loss" else "both").any()
        scores = tracker.scores(strategy.measure) if have else None
        losses = tracker.loss if (tracker is not None and tracker.measured("loss").all()) else None
        batches = strategy.batches(epoch, n, cfg.batch_size, scores=scores, losses=losses, seed=cfg.seed)
        model.train()
        fit = np.zeros(n, dtype=bool)
        seen = np.zeros(n, dtype=bool)
        total_loss, total = 0.0, 0
        for batch in batches:
            idx = torch.as_tensor(batch)
            xb, yb = x_tr[idx.to(device)], y_tr[idx.to(device)]
            if augment:
                xb = _augment(xb, aug_gen)
            logits = model(xb)
            per_sample = loss_fn(logits, yb)
            if assessor is not None:
                assessor.observe(idx, per_sample)
            elif tracker is not None and epoch >= cfg.pivot_epoch - 1:
                tracker.update_loss(idx, per_sample.detach())
            w = strategy.weights(per_sample, epoch, num_epochs=cfg.epochs, losses=losses)
            loss = (per_sample * w).mean() if w is not None else per_sample.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total_loss += float(per_sample.detach().sum())
            total += len(batch)
            # Which training labels the model fits, read off the training pass for free.
            fit[batch] = (logits.argmax(1) == yb).cpu().numpy()
            seen[batch] = True
        sched.step()
        if assessor is not None:
            assessor.end_epoch()
        val_acc, _ = _evaluate(model, x_val, y_val)
        rec = {"epoch": epoch, "lr": opt.param_groups[0]["lr"], "train_loss": total_loss / max(total, 1),
               "train_fit": float(fit[seen].mean()), "val_top1": val_acc}
        if noisy_mask is not None and noisy_mask.any():
            rec["noisy_fit"] = float(fit[noisy_mask & seen].mean())
            rec["clean_fit"] = float(fit[~noisy_mask & seen].mean())
        if (epoch + 1) % cfg.test_every == 0 or epoch == cfg.epochs - 1:
            rec["test_top1"] = _evaluate(model, x_te, y_te)[0]
        rec["seconds"] = time.perf_counter() - t0
        log.append(rec)
        with open(out / "log.jsonl", "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        if val_acc > best["val"]:
            best = {"val": val_acc, "epoch": epoch,
                    "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
        _atomic_torch(ckpt_path, {
            "key": cfg.key(), "epoch": epoch, "model": model.state_dict(), "opt": opt.state_dict(),
            "sched": sched.state_dict(), "aug_gen": aug_gen.get_state(), "log": log, "best": best,
            "assessor": assessor.state_dict() if assessor is not None else None,
            "tracker": tracker.state_dict() if tracker is not None else None})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(val=f"{val_acc:.3f}")
    if bar is not None:
        bar.close()

    results = _summarize(cfg, data, model, log, best, x_tr, y_tr, x_te, y_te, at, out)
    _atomic_json(results_path, results)
    ckpt_path.unlink(missing_ok=True)
    return results


def _summarize(cfg, data, model, log, best, x_tr, y_tr, x_te, y_te, at, out: Path) -> dict:
    num_classes = data.num_classes
    top1, pred = _evaluate(model, x_te, y_te)
    y_test = data.y_test
    per_class = [float((pred[y_test == c] == c).mean()) if (y_test == c).any() else None
                 for c in range(num_classes)]
    top1_best_val = top1
    if best["state"] is not None:
        final_model_state = copy.deepcopy(model.state_dict())
        model.load_state_dict(best["state"])
        top1_best_val = _evaluate(model, x_te, y_te)[0]
        model.load_state_dict(final_model_state)

    loss, unc = _final_assessment(model, x_tr, y_tr, at, cfg.k, cfg.alpha, cfg.seed)
    q = quadrants(loss, unc)
    np.savez_compressed(out / "assessment.npz", loss=loss, uncertainty=unc, codes=q.codes,
                        noisy=data.noisy_train if data.noisy_train is not None else np.zeros(0, bool),
                        y=data.y_train, y_clean=data.y_train_clean)
    res = {
        "dataset": data.name, "strategy": cfg.strategy, "loss": cfg.loss, "batch_size": cfg.batch_size,
        "seed": cfg.seed, "model": cfg.model, "epochs": cfg.epochs, "pivot_epoch": cfg.pivot_epoch,
        "top1": top1, "top1_best_val": top1_best_val, "best_val_epoch": best["epoch"],
        "val_top1": log[-1]["val_top1"], "per_class_top1": per_class,
        "train_size": int(len(data.y_train)), "quadrant_counts": q.counts,
        "curves": {k: [r.get(k) for r in log] for k in ("val_top1", "test_top1", "train_loss", "train_fit",
                                                         "noisy_fit", "clean_fit", "seconds")},
        "seconds": float(sum(r["seconds"] for r in log)),
        "config": dataclasses.asdict(cfg), "key": cfg.key(), "data": data.describe(),
        "environment": environment_info(cfg.device),
    }
    noisy = data.noisy_train
    if noisy is not None and noisy.any():
        poor = q.mask("poorly-labeled")
        res["noisy_fit"] = log[-1].get("noisy_fit")
        res["noise_detection"] = {"precision": float(noisy[poor].mean()) if poor.any() else 0.0,
                                  "recall": float(poor[noisy].mean()), "base_rate": float(noisy.mean())}
    if data.shot_groups is not None:
        res["shot_top1"] = {}
        for g, classes in data.shot_groups.items():
            m = np.isin(y_test, classes)
            res["shot_top1"][g] = float((pred[m] == y_test[m]).mean()) if m.any() else None
    return res
