"""The runner: a run config -> a trained model, per-epoch logs and one results file.

It is split as torchvision's references are: :func:`~mombs.train.build.build`
makes the pieces, :func:`~mombs.train.engine.train_one_epoch` and
:func:`~mombs.train.engine.evaluate` train and test, the checkpoint module
saves, and :func:`run` strings them together. A run is resumable: it
checkpoints after every epoch (written, read back, then renamed into place,
the checkpoint before it kept as ``checkpoint.prev.pt``) and a restarted run
with the same config continues from the last readable checkpoint. A finished
run leaves ``results.json`` and is never redone.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from ..assessor import assessment_pass
from ..data.corpus import Corpus, load_corpus
from ..data.det_corpus import load_det_corpus
from ..data.seg_corpus import load_seg_corpus
from ..difficulty import difficulty_scores, quadrants
from ..envinfo import environment_info
from .build import ASSESS_BATCH_SIZE, Components, build
from .checkpoint import atomic_json, load_checkpoint, remove_checkpoints, save_checkpoint
from .config import RunConfig, run_dir_name
from .engine import evaluate, train_one_epoch, training_signals
from .segmentation import detection_scores, summarize_segmentation

__all__ = ["RunConfig", "run", "run_dir_name"]


def _resume(c: Components, ckpt_path: Path, cfg: RunConfig, out: Path) -> tuple[int, list, dict, dict]:
    """Restores a checkpoint of this run if there is one; ``(start epoch, log, best, history)``."""
    ck = load_checkpoint(ckpt_path, cfg.key())
    if ck is None:
        # Starting over: lines of an earlier attempt that left no usable checkpoint go.
        (out / "log.jsonl").unlink(missing_ok=True)
        return 0, [], {"val": -1.0, "epoch": -1, "state": None}, {}
    c.model.load_state_dict(ck["model"])
    c.optimizer.load_state_dict(ck["opt"])
    c.scheduler.load_state_dict(ck["sched"])
    c.sampler.load_state_dict(ck["sampler"])
    if c.assessor is not None:
        c.assessor.load_state_dict(ck["assessor"])
    if c.augment_gen is not None:
        c.augment_gen.set_state(ck["aug_gen"])
    # The log on disk may hold an epoch that finished after this checkpoint was cut.
    (out / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ck["log"]))
    history = {k: [torch.as_tensor(v).numpy() for v in rows] for k, rows in (ck.get("history") or {}).items()}
    return ck["epoch"] + 1, ck["log"], ck["best"], history


def _checkpoint(c: Components, path: Path, cfg: RunConfig, epoch: int, log: list, best: dict,
                history: dict) -> None:
    save_checkpoint(path, {
        "key": cfg.key(), "epoch": epoch, "model": c.model.state_dict(), "opt": c.optimizer.state_dict(),
        "sched": c.scheduler.state_dict(), "sampler": c.sampler.state_dict(), "log": log, "best": best,
        "aug_gen": c.augment_gen.get_state() if c.augment_gen is not None else None,
        "assessor": c.assessor.state_dict() if c.assessor is not None else None,
        # Tensors, so that the checkpoint still loads with weights_only=True.
        "history": {k: [torch.from_numpy(v) for v in rows] for k, rows in history.items()}})


def _record_history(history: dict, stats: dict, c: Components) -> None:
    """Appends one epoch's per-sample training signals (and measured uncertainties)."""
    for k, v in stats["signals"].items():
        history.setdefault("train_loss" if k == "loss" else k, []).append(v)
    if c.assessor is not None:
        tr = c.assessor.tracker
        unc = np.where(tr.measured("uncertainty"), tr.uncertainty, np.nan).astype(np.float32)
        history.setdefault("uncertainty", []).append(unc)


def _write_history(out: Path, history: dict) -> None:
    """``history.npz``: ``(E, N)`` arrays, one row per epoch (see :class:`RunConfig` ``history``)."""
    arrays = {k: np.stack(rows) for k, rows in history.items()}
    arrays["epochs"] = np.arange(len(next(iter(history.values()))), dtype=np.int64)
    tmp = out / "history.tmp.npz"
    np.savez_compressed(tmp, **arrays)
    tmp.replace(out / "history.npz")


def _epoch_losses(c: Components) -> np.ndarray | None:
    """A copy of the latest per-sample losses, or ``None`` while some sample has none."""
    if c.assessor is None or not c.assessor.tracker.measured("loss").all():
        return None
    return c.assessor.tracker.loss.copy()


def run(cfg: RunConfig, out_dir, *, progress: bool = False, corpus: Corpus | None = None) -> dict:
    """Trains one model and writes ``config.json``, ``log.jsonl``, ``results.json``
    (and a resumable ``checkpoint.pt``, removed at the end) under ``out_dir``.

    The config is validated first and the data loaded next, so a bad option or
    missing data stops the run before ``out_dir`` is created.

    Args:
        cfg: the run's configuration.
        out_dir: the run's own folder.
        progress: show a progress bar over epochs (needs ``tqdm``).
        corpus: the already loaded data, to skip reading it again.

    Returns:
        The results dict (also in ``results.json``).

    Raises:
        ValueError: a bad config (naming the option) or unreadable data.
    """
    if not isinstance(cfg, RunConfig):
        raise ValueError(f"cfg must be a RunConfig, got {type(cfg).__name__}")
    cfg.validate()
    if not isinstance(out_dir, (str, Path)) or not str(out_dir):
        raise ValueError(f"out_dir={out_dir!r} must be a folder path")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir={str(out)!r} exists and is not a folder")
    results_path = out / "results.json"
    if results_path.exists():
        return json.loads(results_path.read_text())
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    seg, det = cfg.task == "segmentation", cfg.task == "detection"
    data = corpus or (load_det_corpus(cfg) if det else load_seg_corpus(cfg) if seg else load_corpus(cfg))
    out.mkdir(parents=True, exist_ok=True)
    atomic_json(out / "config.json", {"config": dataclasses.asdict(cfg), "key": cfg.key(),
                                      "data": data.describe()})
    c = build(cfg, data, device)
    if det:  # data sets of (image, target) items, read in batches by the evaluation
        x_val, y_val, x_te, y_te = data.val, None, data.test, None
    else:
        x_val, y_val = data.x_val.to(device), torch.as_tensor(data.y_val).to(device)
        x_te, y_te = data.x_test.to(device), torch.as_tensor(data.y_test).to(device)
    ckpt_path = out / "checkpoint.pt"
    start, log, best, history = _resume(c, ckpt_path, cfg, out)
    m = c.metric
    score_fn = c.evaluate or evaluate
    signals = cfg.history  # classification adds its logit signals; other tasks keep the loss
    signal_fn = training_signals if cfg.task == "classification" else None
    noisy_mask = data.noisy_train
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.epochs, initial=start, desc=run_dir_name(cfg)[:40], leave=False)

    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        if c.assessor is not None:
            c.assessor.start_epoch(epoch)  # sets the sampler's epoch too
        else:
            c.sampler.set_epoch(epoch)
        if hasattr(c.loss_fn, "set_epoch"):
            c.loss_fn.set_epoch(epoch)
        if hasattr(c.step_fn, "set_epoch"):
            c.step_fn.set_epoch(epoch)
        c.strategy.start_epoch(epoch, num_epochs=cfg.epochs, losses=_epoch_losses(c))
        stats = train_one_epoch(c.model, c.loader, loss_fn=c.loss_fn, optimizer=c.optimizer,
                                strategy=c.strategy, assessor=c.assessor, device=device,
                                num_samples=len(c.train_set), augment_gen=c.augment_gen, fit_fn=c.fit_fn,
                                signals=signals, signal_fn=signal_fn, step_fn=c.step_fn)
        c.scheduler.step()
        if c.assessor is not None:
            c.assessor.end_epoch()
        if signals:
            _record_history(history, stats, c)
        val_score, _ = score_fn(c.model, x_val, y_val)
        fit, seen = stats["fit"], stats["seen"]
        rec = {"epoch": epoch, "lr": c.optimizer.param_groups[0]["lr"], "train_loss": stats["train_loss"],
               "train_fit": float(fit[seen].mean()), f"val_{m}": val_score}
        if hasattr(c.sampler, "uses_scores"):  # the ohem sampler has no plan to report
            rec["planned"] = bool(c.sampler.uses_scores(epoch))
        if noisy_mask is not None and noisy_mask.any():
            rec["noisy_fit"] = float(fit[noisy_mask & seen].mean())
            rec["clean_fit"] = float(fit[~noisy_mask & seen].mean())
        if (epoch + 1) % cfg.test_every == 0 or epoch == cfg.epochs - 1:
            rec[f"test_{m}"] = score_fn(c.model, x_te, y_te)[0]
        rec["seconds"] = time.perf_counter() - t0
        log.append(rec)
        with open(out / "log.jsonl", "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        if val_score > best["val"]:
            best = {"val": val_score, "epoch": epoch,
                    "state": {k: v.detach().cpu().clone() for k, v in c.model.state_dict().items()}}
        _checkpoint(c, ckpt_path, cfg, epoch, log, best, history)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(val=f"{val_score:.3f}")
    if bar is not None:
        bar.close()
    if c.assessor is not None:
        c.assessor.close()

    if det:
        from .detection import summarize_detection

        results = summarize_detection(cfg, data, c, log, best, x_te, y_te, out)
    elif seg:
        results = summarize_segmentation(cfg, data, c, log, best, x_te, y_te, out)
    else:
        results = _summarize(cfg, data, c, log, best, x_te, y_te, out)
    if history:
        _write_history(out, history)
    atomic_json(results_path, results)
    remove_checkpoints(ckpt_path)
    return results


def _summarize(cfg: RunConfig, data: Corpus, c: Components, log: list, best: dict, x_te, y_te,
               out: Path) -> dict:
    model = c.model
    num_classes = data.num_classes
    top1, pred = evaluate(model, x_te, y_te)
    y_test = data.y_test
    per_class = [float((pred[y_test == k] == k).mean()) if (y_test == k).any() else None
                 for k in range(num_classes)]
    top1_best_val = top1
    if best["state"] is not None:
        final_model_state = copy.deepcopy(model.state_dict())
        model.load_state_dict(best["state"])
        top1_best_val = evaluate(model, x_te, y_te)[0]
        model.load_state_dict(final_model_state)

    # Eval-mode loss and K-pass uncertainty of every training sample, for the diagnostics.
    device = next(model.parameters()).device
    (_, loss), (_, unc) = assessment_pass(
        model, c.train_set, at=c.at, k=cfg.k, alpha=cfg.alpha, batch_size=ASSESS_BATCH_SIZE,
        device=device, generator=torch.Generator(device=device).manual_seed(cfg.seed + 77))
    q = quadrants(loss, unc)
    np.savez_compressed(out / "assessment.npz", loss=loss, uncertainty=unc, codes=q.codes,
                        noisy=data.noisy_train if data.noisy_train is not None else np.zeros(0, bool),
                        y=data.y_train, y_clean=data.y_train_clean)
    res = {
        "dataset": data.name, "strategy": cfg.strategy, "loss": cfg.loss, "batch_size": cfg.batch_size,
        "seed": cfg.seed, "model": cfg.model, "epochs": cfg.epochs, "pivot_epoch": cfg.pivot_epoch,
        "task": "classification", "metric": "top1", "top1": top1, "top1_best_val": top1_best_val, "best_val_epoch": best["epoch"],
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
        res["noisy_fit"] = log[-1].get("noisy_fit")
        res["noise_detection"] = detection_scores(noisy, {"difficulty": difficulty_scores(loss, unc), "loss": loss},
                                                  q.mask("poorly-labeled"))
    if data.shot_groups is not None:
        res["shot_top1"] = {}
        for g, classes in data.shot_groups.items():
            m = np.isin(y_test, classes)
            res["shot_top1"][g] = float((pred[m] == y_test[m]).mean()) if m.any() else None
    return res
