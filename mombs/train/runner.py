"""The runner: a run config -> a trained model, per-epoch logs and one results file.

It is split as torchvision's references are: the task's recipe
(:func:`~mombs.recipes.get_recipe`) reads the data and builds the model,
:func:`~mombs.train.build.build` wires them to the library,
:func:`~mombs.train.engine.train_one_epoch` trains, the recipe's ``evaluate``
tests, the checkpoint module saves, :func:`~mombs.train.summary.summarize_run`
writes the results, and :func:`run` strings them together. Nothing here
knows which task it runs. A run is resumable: it
checkpoints after every epoch (written, read back, then renamed into place,
the checkpoint before it kept as ``checkpoint.prev.pt``) and a restarted run
with the same config continues from the last readable checkpoint. A finished
run leaves ``results.json`` and is never redone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from .._atomic import atomic_json, atomic_npz
from ..recipes import get_recipe
from .build import Components, build
from .checkpoint import load_checkpoint, remove_checkpoints, save_checkpoint
from .config import RunConfig, run_dir_name
from .engine import train_one_epoch
from .lock import run_lock
from .summary import FinishedRun, source_arrays, summarize_run

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


def _checkpoint(c: Components, path: Path, cfg: RunConfig, epoch: int, log: list, best: dict, history: dict) -> None:
    save_checkpoint(
        path,
        {
            "key": cfg.key(),
            "epoch": epoch,
            "model": c.model.state_dict(),
            "opt": c.optimizer.state_dict(),
            "sched": c.scheduler.state_dict(),
            "sampler": c.sampler.state_dict(),
            "log": log,
            "best": best,
            "aug_gen": c.augment_gen.get_state() if c.augment_gen is not None else None,
            "assessor": c.assessor.state_dict() if c.assessor is not None else None,
            # Tensors, so that the checkpoint still loads with weights_only=True.
            "history": {k: [torch.from_numpy(v) for v in rows] for k, rows in history.items()},
        },
    )


def _record_history(history: dict, stats: dict, c: Components) -> None:
    """Appends one epoch's per-sample training signals (and measured uncertainties)."""
    for k, v in stats["signals"].items():
        history.setdefault("train_loss" if k == "loss" else k, []).append(v)
    if c.assessor is not None:
        tr = c.assessor.tracker
        unc = np.where(tr.measured("uncertainty"), tr.uncertainty, np.nan).astype(np.float32)
        history.setdefault("uncertainty", []).append(unc)


def _write_history(out: Path, history: dict, sources: dict | None) -> None:
    """``history.npz``: ``(E, N)`` arrays, one row per epoch (see :class:`RunConfig` ``history``),
    and each training sample's origin (``source_*``, ``(N,)``)."""
    arrays = {k: np.stack(rows) for k, rows in history.items()}
    arrays.update(source_arrays(sources))
    arrays["epochs"] = np.arange(len(next(iter(history.values()))), dtype=np.int64)
    atomic_npz(out / "history.npz", **arrays)


#: Fields that change neither a run's numbers nor its files: a rerun may differ in them.
_RERUN_MAY_CHANGE = ("device", "threads", "tags", "data_dir")


def _set_aside(path: Path, why: str) -> None:
    aside = path.with_name(path.name + ".corrupt")
    os.replace(path, aside)
    warnings.warn(
        f"{path} {why}; moved to {aside.name}, and the run resumes from its checkpoint if it has one",
        RuntimeWarning,
        stacklevel=3,
    )


#: The arrays a run writes once it has trained; a run killed while writing them leaves them behind.
_RUN_ARRAYS = ("assessment.npz", "flagged.npz", "history.npz")


def _set_aside_damaged_arrays(out: Path) -> None:
    """Sets aside, named, any ``.npz`` of this unfinished run that does not read back (the run writes
    it again), so that nothing downstream reads a cut file if the run then stops early."""
    import zipfile

    for name in _RUN_ARRAYS:
        path = out / name
        if not path.exists():
            continue
        try:
            with np.load(path, allow_pickle=False) as npz:
                for key in npz.files:
                    npz[key]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            _set_aside(path, f"cannot be read ({type(err).__name__}: {err})")


def _finished(out: Path, cfg: RunConfig) -> dict | None:
    """The results of this run if the folder holds them; ``None`` when it must (re)run.

    A ``results.json`` that does not read (cut short, empty) is set aside, named,
    and the run resumes; one of another run is refused. Checkpoints that a killed
    run left beside its results are removed.
    """
    path = out / "results.json"
    if not path.exists():
        return None
    try:
        res = json.loads(path.read_text())
        if not isinstance(res, dict):
            raise ValueError(f"it holds a {type(res).__name__}, not a run's results")
    except (OSError, ValueError) as err:
        _set_aside(path, f"cannot be read ({type(err).__name__}: {err})")
        return None
    if res.get("key") not in (None, cfg.key()):
        raise ValueError(
            f"{out} holds the finished run {res.get('key')!r}, not this one ({cfg.key()!r}): "
            f"give this run its own folder"
        )
    remove_checkpoints(out / "checkpoint.pt")
    return res


def _check_same_run(out: Path, cfg: RunConfig) -> None:
    """Refuses a folder that holds (part of) a run with other settings, naming the difference."""
    path = out / "config.json"
    if not path.exists():
        return
    try:
        text = json.loads(path.read_text())
        saved, saved_key = text["config"], text.get("key")
        known = {f.name for f in dataclasses.fields(RunConfig)}
        before = dataclasses.asdict(RunConfig(**{k: v for k, v in saved.items() if k in known}).resolved())
    except (OSError, ValueError, KeyError, TypeError) as err:
        _set_aside(path, f"cannot be read ({type(err).__name__}: {err})")
        return
    now = dataclasses.asdict(cfg.resolved())
    changed = [k for k in now if k not in _RERUN_MAY_CHANGE and before.get(k) != now[k]]
    if not changed and saved_key != cfg.key():  # the same options on another data folder (or other data in it)
        if (
            before.get("data_dir")
            and now["data_dir"]
            and os.path.realpath(before["data_dir"]) == os.path.realpath(now["data_dir"])
        ):
            raise ValueError(
                f"{out} holds a run on data_dir={now['data_dir']!r} as it was then; files in it "
                f"were added, removed or changed since, so this is another run. Give it another "
                f"folder (--out), or remove this one to start over"
            )
        changed = ["data_dir"]
    if changed:
        was = ", ".join(f"{k}={before.get(k)!r}" for k in changed)
        asked = ", ".join(f"{k}={now[k]!r}" for k in changed)
        raise ValueError(
            f"{out} holds a run with {was}; this command asks {asked}. Give it another folder "
            f"(--out), or remove this one to start over"
        )


def _epoch_losses(c: Components) -> np.ndarray | None:
    """A copy of the latest per-sample losses, or ``None`` while some sample has none."""
    if c.assessor is None or not c.assessor.tracker.measured("loss").all():
        return None
    return c.assessor.tracker.loss.copy()


def run(cfg: RunConfig, out_dir, *, progress: bool = False, corpus=None) -> dict:
    """Trains one model and writes ``config.json``, ``log.jsonl``, ``results.json``
    (and a resumable ``checkpoint.pt``, removed at the end) under ``out_dir``.

    The config is validated first and the data loaded next, so a bad option or
    missing data stops the run before ``out_dir`` is created.

    Args:
        cfg: the run's configuration.
        out_dir: the run's own folder.
        progress: show a progress bar over epochs (needs ``tqdm``).
        corpus: the already loaded data (what the task's recipe ``load`` returns),
            to skip reading it again.

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
    _check_same_run(out, cfg)
    finished = _finished(out, cfg)
    if finished is not None:
        return finished
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    recipe = get_recipe(cfg.task)
    data = corpus or recipe.load(cfg)
    with run_lock(out):  # one writer per run folder; taken once the data has loaded, so a bad input writes nothing
        finished = _finished(out, cfg)  # another process may have finished it while the data loaded
        if finished is not None:
            return finished
        _check_same_run(out, cfg)
        _set_aside_damaged_arrays(out)
        atomic_json(out / "config.json", {"config": dataclasses.asdict(cfg), "key": cfg.key(), "data": data.describe()})
        if getattr(data, "splits", None):  # which files (cases, images) each split holds: a rerun reads the same
            atomic_json(out / "splits.json", data.splits)
        c = build(cfg, recipe, data, device)
        ckpt_path = out / "checkpoint.pt"
        try:
            log, best, history = _train(cfg, c, data, out, ckpt_path, device, progress)
        finally:
            if c.assessor is not None:
                c.assessor.close()  # its hooks come off the model even when training fails
        results = summarize_run(
            FinishedRun(
                cfg=cfg, recipe=recipe, data=data, parts=c.parts, train_set=c.train_set, log=log, best=best, out=out
            )
        )
        if history:
            _write_history(out, history, getattr(data, "sources", None))
        atomic_json(results_path, results)
        remove_checkpoints(ckpt_path)
    return results


def _train(
    cfg: RunConfig, c: Components, data, out: Path, ckpt_path: Path, device: torch.device, progress: bool
) -> tuple[list, dict, dict]:
    """The epochs from the last checkpoint on; ``(log, best, history)``."""
    start, log, best, history = _resume(c, ckpt_path, cfg, out)
    parts = c.parts
    m = get_recipe(cfg.task).metric
    noisy_mask = data.noisy_train
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.epochs, initial=start, desc=run_dir_name(cfg)[:40], leave=False)
    try:
        for epoch in range(start, cfg.epochs):
            t0 = time.perf_counter()
            if c.assessor is not None:
                c.assessor.start_epoch(epoch)  # sets the sampler's epoch too
            else:
                c.sampler.set_epoch(epoch)
            for stepper in (parts.loss_fn, parts.step_fn):  # epoch-dependent losses and step seeds
                if hasattr(stepper, "set_epoch"):
                    stepper.set_epoch(epoch)
            c.strategy.start_epoch(epoch, num_epochs=cfg.epochs, losses=_epoch_losses(c))
            stats = train_one_epoch(
                parts.model,
                c.loader,
                loss_fn=parts.loss_fn,
                optimizer=c.optimizer,
                strategy=c.strategy,
                assessor=c.assessor,
                device=device,
                num_samples=len(c.train_set),
                fit_fn=parts.fit_fn,
                augment_gen=c.augment_gen,
                signals=cfg.history,
                signal_fn=parts.signal_fn,
                step_fn=parts.step_fn,
            )
            c.scheduler.step()
            if c.assessor is not None:
                c.assessor.end_epoch()
            if cfg.history:
                _record_history(history, stats, c)
            val_score, _ = parts.evaluate(parts.model, parts.val)
            fit, seen = stats["fit"], stats["seen"]
            rec = {
                "epoch": epoch,
                "lr": c.optimizer.param_groups[0]["lr"],
                "train_loss": stats["train_loss"],
                "train_fit": float(fit[seen].mean()),
                f"val_{m}": val_score,
            }
            if hasattr(c.sampler, "uses_scores"):  # the ohem sampler has no plan to report
                rec["planned"] = bool(c.sampler.uses_scores(epoch))
            if noisy_mask is not None and noisy_mask.any():
                rec["noisy_fit"] = float(fit[noisy_mask & seen].mean())
                rec["clean_fit"] = float(fit[~noisy_mask & seen].mean())
            if (epoch + 1) % cfg.test_every == 0 or epoch == cfg.epochs - 1:
                rec[f"test_{m}"] = parts.evaluate(parts.model, parts.test)[0]
            rec["seconds"] = time.perf_counter() - t0
            log.append(rec)
            with open(out / "log.jsonl", "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            if val_score > best["val"]:
                best = {
                    "val": val_score,
                    "epoch": epoch,
                    "state": {k: v.detach().cpu().clone() for k, v in parts.model.state_dict().items()},
                }
            _checkpoint(c, ckpt_path, cfg, epoch, log, best, history)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(val=f"{val_score:.3f}")
    finally:
        if bar is not None:
            bar.close()
    return log, best, history
