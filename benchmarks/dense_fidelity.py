"""What the K disturbed passes add in dense tasks (issue 22, item 1).

MoMBS' uncertainty (``shared/METHOD.md`` §1) is the entropy of the mean
prediction over ``K = 8`` forwards with the feature map at ``at`` multiplied by
``1 + U(-alpha, alpha)`` noise. ``benchmarks/disturbance.py`` found that in
classification, at ``alpha = 0.3``, it ranks samples as the plain entropy of one
clean forward does. This script asks the same of the dense tasks, and of a
wider ``alpha``, trained through the library's own pieces (the recipe's
``load``, ``create_model`` and ``parts``, :func:`mombs.train.build.build`,
:func:`mombs.train.engine.train_one_epoch`, strategy ``random``) exactly as
the runner trains:

- **segmentation**: MONAI U-Net on the synthetic CT set, 150 training slices,
  30% corrupted masks, the study's recipe (``configs/study/seg_synth_*.yaml``:
  AdamW 1e-3, 25 epochs), batch 4; disturbed at the encoder output;
- **detection**: the tiny Faster R-CNN on the synthetic box set, 100 training
  slices (``configs/study/det_synth_50.yaml``: AdamW 3e-3, 30 epochs, batch
  4); disturbed after the first backbone block, the prediction the RPN
  objectness over every anchor in the image; optionally MobileNet-v3-FPN
  (``detection-mobilenet``), the same recipe;
- **classification**: the small CNN on Fashion-MNIST with 40% symmetric label
  noise (``configs/study/fmnist_nl.yaml``, batch 32), on a subset; disturbed
  at ``pool`` (scikit-learn digits when Fashion-MNIST is not on disk).

After each checkpoint epoch it measures, over the whole training set, with the
task adapter's own ``output_fn`` and ``uncertainty_fn``:

- ``u_K``: :func:`mombs.assessment_pass` with ``k = 8`` at every ``alpha`` of
  ``--alphas``, and a second draw with another noise seed (the Monte-Carlo
  noise floor);
- ``plain``: the same pass with ``k = 1, alpha = 0``: the entropy of one clean
  eval-mode forward (the disturbance multiplies by exactly 1);
- ``train``: the entropy of the training forward of the epoch that just ended,
  in train mode, as the ``train-entropy`` schedule reads it: through a
  :class:`mombs.DifficultyAssessor` with that schedule for classification and
  segmentation; for detection, whose training forward returns torchvision's
  loss dict (the schedule does not fit it), from the RPN head's objectness of
  that same forward, masked and reduced as the adapter does
  (:class:`DetTrainEntropy`);
- ``loss``: the eval-mode per-sample loss of the task adapter (for the
  difficulty scores).

Per (task, seed, checkpoint, alpha) it reports Spearman's rho of ``u_K`` with
``plain`` and with ``train``, of ``u_K`` with its repeat draw, the corrected
``rho / sqrt(repeat)`` (about 1 when the whole gap to ``plain`` is the
estimate's own noise), the Spearman of the two difficulty scores
``difficulty_scores(loss, u_K)`` and ``difficulty_scores(loss, plain)``, and
the wall time of each pass over that of one training epoch (the median epoch
of the run, the first left out as warm-up).

    python benchmarks/dense_fidelity.py --out benchmarks/results/dense_fidelity_cpu.json
    python benchmarks/dense_fidelity.py --quick        # smoke run: tiny sizes, one seed

Each (task, seed) is appended to ``OUT.partial.json`` as soon as it finishes
(``--resume`` skips those already there); the last line printed is the
summary, and ``--out`` writes the command, the exact run configs, every cell,
the table, the summary and the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import torch

import mombs
from mombs.envinfo import environment_info

#: Each task's run config (``mombs.train.RunConfig`` fields) and the epochs after
#: which it is measured (1-based: after the pivot, the middle, the end).
TASKS = {
    "segmentation": {
        "config": {
            "task": "segmentation",
            "dataset": "synthetic-ct",
            "subset": 150,
            "noise": "annotation",
            "noise_rate": 0.3,
            "model": "unet",
            "loss": "dice-ce",
            "optimizer": "adam",
            "lr": 1e-3,
            "weight_decay": 1e-4,
            "batch_size": 4,
            "epochs": 25,
            "pivot_epoch": 5,
            "test_every": 25,
        },
        "checkpoints": [5, 13, 25],
        "source": "configs/study/seg_synth_10.yaml / seg_synth_50.yaml recipe, 150 training slices, batch 4",
    },
    "detection": {
        "config": {
            "task": "detection",
            "dataset": "synthetic-det",
            "subset": 200,
            "train_fraction": 0.5,
            "noise": "annotation",
            "noise_rate": 0.3,
            "model": "tiny",
            "optimizer": "adam",
            "lr": 3e-3,
            "weight_decay": 1e-4,
            "batch_size": 4,
            "epochs": 30,
            "pivot_epoch": 5,
            "test_every": 30,
        },
        "checkpoints": [5, 15, 30],
        "source": "configs/study/det_synth_50.yaml (100 training slices)",
    },
    "detection-mobilenet": {
        "config": {
            "task": "detection",
            "dataset": "synthetic-det",
            "subset": 200,
            "train_fraction": 0.5,
            "noise": "annotation",
            "noise_rate": 0.3,
            "model": "fasterrcnn_mobilenet_v3_large_fpn",
            "optimizer": "adam",
            "lr": 3e-3,
            "weight_decay": 1e-4,
            "batch_size": 4,
            "epochs": 30,
            "pivot_epoch": 5,
            "test_every": 30,
        },
        "checkpoints": [5, 15, 30],
        "source": "configs/study/det_synth_50.yaml with model fasterrcnn_mobilenet_v3_large_fpn",
    },
    "classification": {
        "config": {
            "task": "classification",
            "dataset": "fashion-mnist",
            "subset": 6000,
            "noise": "symmetric",
            "noise_rate": 0.4,
            "model": "small_cnn",
            "batch_size": 32,
            "epochs": 12,
            "pivot_epoch": 4,
            "lr": 0.02,
            "test_every": 12,
        },
        "checkpoints": [4, 8, 12],
        "source": "configs/study/fmnist_nl.yaml recipe (SGD 0.02, 12 epochs), 6,000 of its 10,000 images, batch 32",
    },
}

#: Figures per (task, seed, checkpoint, alpha) cell that the table and summary average.
CELL_METRICS = (
    "rho_plain",
    "rho_train",
    "rho_repeat",
    "rho_plain_corrected",
    "rho_score_plain",
    "rho_score_train",
    "top_decile_overlap_plain",
)
#: Figures per (task, seed, checkpoint), shared by its alphas.
CHECKPOINT_METRICS = ("rho_plain_train", "rho_plain_loss", "plain_over_epoch", "loss_over_epoch")


def _git_commit() -> str | None:
    """The commit of the checkout this script lives in (``-dirty`` with uncommitted tracked changes)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


class DetTrainEntropy:
    """The RPN objectness entropy of each image's training forward, for detectors.

    torchvision's training forward returns a loss dict, so the assessor's
    ``train-entropy`` schedule (a hook on the model's output) has nothing to
    read. This records what the RPN head produced in that same forward
    (:func:`mombs.tasks.detection.detection_losses` calls ``rpn.head`` and
    ``rpn.anchor_generator``), flattens it as
    :func:`mombs.tasks.detection.rpn_forward` does, masks the anchors centred
    outside the image, and reduces the sigmoid with the adapter's
    :func:`~mombs.tasks.detection.anchor_binary_entropy`: the adapter's plain
    entropy, taken from the training forward. It is passed to
    :func:`~mombs.train.engine.train_one_epoch` as its ``assessor`` (only
    :meth:`observe` is called), and removes its hooks in :meth:`close`.
    """

    def __init__(self, model, num_samples: int):
        self.model = model
        self.uncertainty = np.full(num_samples, np.nan)
        self.loss = np.full(num_samples, np.nan)
        self._maps, self._anchors = None, None
        self._hooks = [
            model.rpn.head.register_forward_hook(self._head),
            model.rpn.anchor_generator.register_forward_hook(self._anchor),
        ]

    def _head(self, module, inputs, output):
        if module.training and torch.is_grad_enabled():
            self._maps = [o.detach() for o in output[0]]

    def _anchor(self, module, inputs, output):
        if module.training and torch.is_grad_enabled():
            self._anchors = ([a.detach() for a in output], list(inputs[0].image_sizes))

    def start_epoch(self, epoch: int) -> None:
        self.uncertainty[:] = np.nan
        self.loss[:] = np.nan

    def observe(self, indices, loss: torch.Tensor) -> None:
        from torchvision.models.detection.rpn import concat_box_prediction_layers

        from mombs.tasks.detection import _inside, anchor_binary_entropy, rpn_objectness_map

        maps, (anchors, sizes) = self._maps, self._anchors
        self._maps = self._anchors = None
        with torch.no_grad():
            objectness, _ = concat_box_prediction_layers(maps, [torch.zeros_like(m).repeat(1, 4, 1, 1) for m in maps])
            objectness = objectness.reshape(len(anchors), -1)
            logits = rpn_objectness_map({"objectness": objectness, "in_image": _inside(anchors, sizes)})
            ent = anchor_binary_entropy(torch.sigmoid(logits))
        idx = indices.numpy() if torch.is_tensor(indices) else np.asarray(indices)
        self.uncertainty[idx] = ent.double().cpu().numpy()
        self.loss[idx] = loss.detach().double().cpu().numpy()

    def values(self) -> np.ndarray:
        return self.uncertainty.copy()

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


class AssessorTrainEntropy:
    """The ``train-entropy`` schedule's own reading, through a :class:`mombs.DifficultyAssessor`.

    No sampler, pivot 0 so that every epoch's training forwards are captured;
    :meth:`values` is the uncertainty of each sample from the epoch that just ended.
    """

    def __init__(self, model, train_set, parts, num_samples: int):
        self.assessor = mombs.DifficultyAssessor(
            model, train_set, at=parts.at, schedule="train-entropy", pivot_epoch=0, task=parts.task
        )
        self.num_samples = num_samples

    def start_epoch(self, epoch: int) -> None:
        self.assessor.start_epoch(epoch)

    def observe(self, indices, loss) -> None:
        self.assessor.observe(indices, loss)

    def values(self) -> np.ndarray:
        tracker = self.assessor.tracker
        if not (tracker.uncertainty_epoch == tracker.epoch).all():
            raise RuntimeError("the training forward did not reach every sample this epoch")
        return tracker.uncertainty.copy()

    def close(self) -> None:
        self.assessor.close()


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _timed_pass(
    model, train_set, parts, batch_size: int, *, k: int, alpha: float, loss: bool, unc: bool, gen_seed: int
) -> tuple[np.ndarray | None, np.ndarray | None, float]:
    """One :func:`mombs.assessment_pass` over the whole training set and its wall time."""
    empty = np.zeros(0, dtype=np.int64)
    t0 = time.perf_counter()
    (_, lv), (_, uv) = mombs.assessment_pass(
        model,
        train_set,
        loss_indices=None if loss else empty,
        uncertainty_indices=None if unc else empty,
        at=parts.at,
        k=k,
        alpha=alpha,
        task=parts.task,
        batch_size=batch_size,
        generator=torch.Generator().manual_seed(gen_seed),
    )
    seconds = time.perf_counter() - t0
    return (lv if loss else None), (uv if unc else None), seconds


def top_overlap(a: np.ndarray, b: np.ndarray, share: float = 0.1) -> float:
    """Share of the ``share`` highest of ``a`` that are also among the highest of ``b``."""
    m = max(1, int(math.ceil(share * len(a))))
    return len(np.intersect1d(np.argsort(-a, kind="stable")[:m], np.argsort(-b, kind="stable")[:m])) / m


def measure(model, train_set, parts, recipe, train_unc: np.ndarray, seed: int, epoch: int, args) -> tuple[dict, list]:
    """Every figure of one checkpoint: the shared record and one cell per alpha."""
    bs = recipe.assess_batch_size
    loss, _, t_loss = _timed_pass(model, train_set, parts, bs, k=1, alpha=0.0, loss=True, unc=False, gen_seed=0)
    _, plain, t_plain = _timed_pass(model, train_set, parts, bs, k=1, alpha=0.0, loss=False, unc=True, gen_seed=0)
    bad = [name for name, v in (("loss", loss), ("plain", plain), ("train", train_unc)) if not np.isfinite(v).all()]
    if bad:
        raise RuntimeError(f"non-finite values in {bad} at epoch {epoch}")
    d_plain = mombs.difficulty_scores(loss, plain)
    d_train = mombs.difficulty_scores(loss, train_unc)
    ckpt = {
        "epoch": epoch,
        "n": len(train_set),
        "rho_plain_train": mombs.spearman(plain, train_unc),
        "rho_plain_loss": mombs.spearman(plain, loss),
        "mean_plain": float(plain.mean()),
        "mean_train": float(train_unc.mean()),
        "seconds_loss_pass": t_loss,
        "seconds_plain_pass": t_plain,
    }
    cells = []
    for i, alpha in enumerate(args.alphas):
        u, t_k = _timed_pass(
            model, train_set, parts, bs, k=args.k, alpha=alpha, loss=False, unc=True, gen_seed=_seed(seed, epoch, i, 0)
        )[1:]
        u2, t_k2 = _timed_pass(
            model, train_set, parts, bs, k=args.k, alpha=alpha, loss=False, unc=True, gen_seed=_seed(seed, epoch, i, 1)
        )[1:]
        d_u = mombs.difficulty_scores(loss, u)
        rep = mombs.spearman(u, u2)
        rho = mombs.spearman(u, plain)
        cells.append(
            {
                "alpha": alpha,
                "rho_plain": rho,
                "rho_train": mombs.spearman(u, train_unc),
                "rho_repeat": rep,
                "rho_plain_corrected": rho / math.sqrt(rep) if rep > 0 else float("nan"),
                "rho_score_plain": mombs.spearman(d_u, d_plain),
                "rho_score_train": mombs.spearman(d_u, d_train),
                "top_decile_overlap_plain": top_overlap(u, plain),
                "rho_loss": mombs.spearman(u, loss),
                "mean_u": float(u.mean()),
                "seconds_k_pass": [t_k, t_k2],
            }
        )
    return ckpt, cells


def _round(obj):
    if isinstance(obj, float):
        return round(obj, 4) if math.isfinite(obj) else obj
    if isinstance(obj, list):
        return [_round(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    return obj


def task_config(name: str, seed: int, args) -> mombs.train.RunConfig:
    from mombs.recipes.classification.fashion_mnist import find_fashion_mnist
    from mombs.train import RunConfig

    fields = dict(TASKS[name]["config"])
    if name == "classification" and find_fashion_mnist() is None:
        fields.update(dataset="digits", subset=None)
    if args.quick:
        fields["epochs"] = 2
        fields["subset"] = (
            {"segmentation": 24, "detection": 24, "detection-mobilenet": 24, "classification": 256}[name]
            if fields.get("subset")
            else None
        )
        fields.pop("train_fraction", None)
    if args.epochs.get(name):
        fields["epochs"] = args.epochs[name]
    cfg = RunConfig(**fields, seed=seed, strategy="random", device="cpu", threads=args.threads)
    cfg.validate()
    return cfg


def checkpoints_for(name: str, cfg, args) -> list[int]:
    if args.quick:
        return [1, 2]
    given = args.checkpoints.get(name) or TASKS[name]["checkpoints"]
    return sorted({min(max(1, c), cfg.epochs) for c in given})


def run(name: str, seed: int, args) -> dict:
    """One training run of ``name`` with ``seed``, measured after each checkpoint epoch."""
    from mombs.recipes import get_recipe
    from mombs.train.build import build
    from mombs.train.engine import train_one_epoch

    cfg = task_config(name, seed, args)
    checkpoints = checkpoints_for(name, cfg, args)
    recipe = get_recipe(cfg.task)
    t_start = time.perf_counter()
    data = recipe.load(cfg)
    device = torch.device("cpu")
    c = build(cfg, recipe, data, device)
    parts = c.parts
    n = len(c.train_set)
    reader = (
        DetTrainEntropy(parts.model, n)
        if cfg.task == "detection"
        else AssessorTrainEntropy(parts.model, c.train_set, parts, n)
    )
    epoch_seconds, records, cells = [], [], []
    try:
        for epoch in range(cfg.epochs):
            t0 = time.perf_counter()
            reader.start_epoch(epoch)
            c.sampler.set_epoch(epoch)
            for stepper in (parts.loss_fn, parts.step_fn):
                if hasattr(stepper, "set_epoch"):
                    stepper.set_epoch(epoch)
            c.strategy.start_epoch(epoch, num_epochs=cfg.epochs, losses=None)
            stats = train_one_epoch(
                parts.model,
                c.loader,
                loss_fn=parts.loss_fn,
                optimizer=c.optimizer,
                strategy=c.strategy,
                assessor=reader,
                device=device,
                num_samples=n,
                fit_fn=parts.fit_fn,
                augment_gen=c.augment_gen,
                step_fn=parts.step_fn,
            )
            c.scheduler.step()
            epoch_seconds.append(time.perf_counter() - t0)
            if epoch + 1 in checkpoints:
                ckpt, ck_cells = measure(
                    parts.model, c.train_set, parts, recipe, reader.values(), seed, epoch + 1, args
                )
                ckpt["train_loss"] = stats["train_loss"]
                records.append(ckpt)
                cells += [{"task": name, "seed": seed, "epoch": epoch + 1, **cell} for cell in ck_cells]
                print(
                    json.dumps(
                        _round(
                            {
                                "task": name,
                                "seed": seed,
                                "epoch": epoch + 1,
                                "rho_plain_train": ckpt["rho_plain_train"],
                                "alpha": {
                                    cl["alpha"]: [cl["rho_plain"], cl["rho_train"], cl["rho_repeat"]] for cl in ck_cells
                                },
                            }
                        )
                    ),
                    flush=True,
                )
    finally:
        reader.close()
    val_score, _ = parts.evaluate(parts.model, parts.val)
    # The first epoch carries one-off costs (allocations, lazy imports): left out.
    epoch_ref = float(np.median(epoch_seconds[1:] if len(epoch_seconds) > 1 else epoch_seconds))
    for ckpt in records:
        ckpt["plain_over_epoch"] = ckpt["seconds_plain_pass"] / epoch_ref
        ckpt["loss_over_epoch"] = ckpt["seconds_loss_pass"] / epoch_ref
    for cell in cells:
        cell["k_pass_over_epoch"] = float(np.mean(cell["seconds_k_pass"])) / epoch_ref
    return _round(
        {
            "task": name,
            "seed": seed,
            "config": dataclasses.asdict(cfg),
            "data": data.describe(),
            "at": parts.at,
            "checkpoints": checkpoints,
            "n_train": n,
            "train_entropy_from": (
                "RPN head objectness of the training forward (DetTrainEntropy)"
                if cfg.task == "detection"
                else "DifficultyAssessor(schedule='train-entropy')"
            ),
            f"final_val_{recipe.metric}": float(val_score),
            "epoch_seconds": epoch_seconds,
            "epoch_seconds_median": epoch_ref,
            "seconds": time.perf_counter() - t_start,
            "checkpoint_records": records,
            "cells": cells,
        }
    )


def _stats(values) -> dict:
    v = np.asarray([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], float)
    if v.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {
        "mean": round(float(v.mean()), 4),
        "std": round(float(v.std(ddof=1)) if v.size > 1 else 0.0, 4),
        "n": int(v.size),
    }


def tabulate(runs: list[dict]) -> tuple[list[dict], dict]:
    """The table (per task, checkpoint and alpha, over seeds) and the summary (per task and
    alpha, over seeds and checkpoints, plus the pass costs)."""
    cells = [c for r in runs for c in r["cells"]]
    table = []
    for task in [t for t in TASKS if any(c["task"] == t for c in cells)]:
        for epoch in sorted({c["epoch"] for c in cells if c["task"] == task}):
            for alpha in sorted({c["alpha"] for c in cells if c["task"] == task}):
                group = sorted(
                    (c for c in cells if (c["task"], c["epoch"], c["alpha"]) == (task, epoch, alpha)),
                    key=lambda c: c["seed"],
                )
                if not group:
                    continue
                row = {"task": task, "epoch": epoch, "alpha": alpha, "seeds": [c["seed"] for c in group]}
                for m in CELL_METRICS + ("k_pass_over_epoch",):
                    row[m] = {"per_seed": [c[m] for c in group], **_stats(c[m] for c in group)}
                table.append(row)
    summary = {}
    for r in runs:
        summary.setdefault(r["task"], {"seeds": [], "per_alpha": {}, "per_checkpoint": {}})["seeds"].append(r["seed"])
    for task, entry in summary.items():
        tc = [c for c in cells if c["task"] == task]
        recs = [rec for r in runs if r["task"] == task for rec in r["checkpoint_records"]]
        for alpha in sorted({c["alpha"] for c in tc}):
            group = [c for c in tc if c["alpha"] == alpha]
            entry["per_alpha"][str(alpha)] = {
                m: _stats(c[m] for c in group) for m in CELL_METRICS + ("k_pass_over_epoch",)
            }
        entry["per_checkpoint"] = {m: _stats(rec[m] for rec in recs) for m in CHECKPOINT_METRICS}
        entry["epoch_seconds_median"] = _stats(r["epoch_seconds_median"] for r in runs if r["task"] == task)
        entry["seeds"] = sorted(entry["seeds"])
    return table, summary


def _parse_per_task(items: list[str] | None, cast) -> dict:
    """``TASK=V[,V...]`` pairs as ``{task: [v, ...]}`` (one value: ``{task: v}`` for epochs)."""
    out = {}
    for item in items or []:
        task, _, vals = item.partition("=")
        if task not in TASKS or not vals:
            raise ValueError(f"{item!r} must be TASK=VALUE with TASK one of {list(TASKS)}")
        out[task] = cast(vals)
    return out


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=["segmentation", "detection", "classification"], choices=list(TASKS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.3, 0.6, 0.9])
    p.add_argument("--k", type=int, default=8, help="disturbed passes")
    p.add_argument("--epochs", nargs="*", default=None, metavar="TASK=N", help="override a task's epochs")
    p.add_argument(
        "--checkpoints",
        nargs="*",
        default=None,
        metavar="TASK=E1,E2,...",
        help="override a task's checkpoint epochs (1-based)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, two epochs, one seed")
    p.add_argument("--resume", action="store_true", help="skip the (task, seed) runs already in OUT.partial.json")
    p.add_argument("--note", action="append", default=[], help="a note kept in the result (what was cut and why)")
    p.add_argument("--out", help="write the full result to this JSON file (and OUT.partial.json while running)")
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    args.epochs = _parse_per_task(args.epochs, int)
    args.checkpoints = _parse_per_task(args.checkpoints, lambda v: [int(x) for x in v.split(",")])
    if args.quick:
        args.seeds = args.seeds[:1]
    if any(not 0 <= a < 1 for a in args.alphas):
        raise ValueError(f"--alphas {args.alphas} must lie in [0, 1)")
    torch.set_num_threads(args.threads)
    command = " ".join(
        [
            os.path.basename(sys.argv[0]) if argv is None else "dense_fidelity.py",
            *(sys.argv[1:] if argv is None else argv),
        ]
    )
    partial = f"{args.out[:-5] if args.out.endswith('.json') else args.out}.partial.json" if args.out else None
    runs = []
    if partial and args.resume and os.path.exists(partial):
        with open(partial) as fh:
            runs = json.load(fh)["runs"]
    t0 = time.perf_counter()
    for name in args.tasks:
        for seed in args.seeds:
            if any(r["task"] == name and r["seed"] == seed for r in runs):
                continue
            runs.append(run(name, seed, args))
            print(
                json.dumps(
                    {
                        "task": name,
                        "seed": seed,
                        "seconds": runs[-1]["seconds"],
                        "epoch_seconds_median": runs[-1]["epoch_seconds_median"],
                    }
                ),
                flush=True,
            )
            if partial:
                with open(partial, "w") as fh:
                    json.dump(
                        {"benchmark": "dense_fidelity", "command": command, "commit": _git_commit(), "runs": runs},
                        fh,
                        indent=1,
                    )
    table, summary = tabulate(runs)
    result = {
        "benchmark": "dense_fidelity",
        "command": command,
        "args": vars(args),
        "commit": _git_commit(),
        "tasks": {
            name: {
                "config": TASKS[name]["config"],
                "checkpoints": TASKS[name]["checkpoints"],
                "source": TASKS[name]["source"],
            }
            for name in args.tasks
        },
        "measures": {
            "u_K": f"assessment_pass(k={args.k}, alpha) over the training set, eval mode, the task adapter's "
            f"output_fn and uncertainty_fn; a second draw with another noise seed for rho_repeat",
            "plain": "assessment_pass(k=1, alpha=0): the entropy of one clean eval-mode forward, same reduction",
            "train": "the entropy of the training forward of the checkpoint epoch (train mode, weights moving "
            "during the epoch): DifficultyAssessor(schedule='train-entropy') for classification and "
            "segmentation; for detection the RPN head's objectness of that forward, masked to anchors "
            "centred in the image and reduced by anchor_binary_entropy",
            "loss": "the task adapter's eval-mode per-sample loss (for the difficulty scores)",
            "rho_plain_corrected": "rho_plain / sqrt(rho_repeat): correction for attenuation (approximate for ranks)",
            "k_pass_over_epoch": "mean wall time of the two K-pass draws over the run's median training epoch "
            "(first epoch left out)",
            "plain_over_epoch": "wall time of the plain pass (uncertainty only) over the median training epoch",
            "loss_over_epoch": "wall time of the loss-only eval pass over the median training epoch",
            "std": "sample std (ddof=1) over seeds (table) or over seeds x checkpoints (summary)",
        },
        "notes": args.note,
        "seconds_total": round(time.perf_counter() - t0, 1),
        "runs": runs,
        "table": table,
        "summary": summary,
        "environment": environment_info("cpu"),
    }
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)
    short = {
        task: {
            alpha: {m: f"{e[m]['mean']} ± {e[m]['std']}" for m in ("rho_plain", "rho_train", "rho_repeat")}
            for alpha, e in entry["per_alpha"].items()
        }
        for task, entry in summary.items()
    }
    print(
        json.dumps(
            {"benchmark": "dense_fidelity", "seconds_total": result["seconds_total"], "summary": short},
            ensure_ascii=False,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
