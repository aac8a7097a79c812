"""What the feature-map disturbance adds to plain prediction entropy.

MoMBS' uncertainty (``shared/METHOD.md`` §1) is the entropy of the mean softmax
over ``K = 8`` forward passes with multiplicative ``U(-alpha, alpha)`` noise
(``alpha = 0.3``) on an intermediate feature map. The plain alternative is the
softmax entropy of one clean eval-mode forward (``K = 1``, no noise). If the
``K = 8`` uncertainty ranks the samples as plain entropy does, the disturbance
costs ``K`` passes and adds nothing. This script measures how far apart the two
are, for ``small_cnn`` and ``resnet32``, at three noise points each (the pooled
vector, the last stage, a middle stage), on models trained briefly and assessed
at several checkpoints of training, on two data sets:

- scikit-learn ``digits`` (8x8, clean labels, all 1,797 images);
- a Fashion-MNIST training subset with 40% symmetric label noise (skipped with
  a note when the files are not on disk).

For every (data set, model, seed, checkpoint, noise point) cell it reports:

- ``spearman_unc``: Spearman(``u_K8``, plain entropy);
- ``spearman_score``: Spearman of the two difficulty scores
  ``difficulty_scores(loss, u_K8)`` and ``difficulty_scores(loss, plain)``,
  with ``loss`` the eval-mode per-sample cross-entropy against the (noisy)
  training labels;
- ``top_decile_overlap``: the share of the 10% hardest samples by one score
  that are also among the 10% hardest by the other;
- ``repeat_spearman_unc``: Spearman of ``u_K8`` with a second, independent
  ``u_K8`` draw (on the first ``--repeat-n`` assessed samples). This is the
  Monte-Carlo noise floor: a gap to plain entropy no larger than the gap
  between two draws of ``u_K8`` itself is noise, not information.
  ``spearman_unc_corrected`` = ``spearman_unc_subset / sqrt(repeat_spearman_unc)``
  is the classical correction for attenuation (approximate for ranks): about
  1 when the noise-free disturbed uncertainty ranks as plain entropy does;
- on noisy-label data, ``auroc_noisy_*``: how well each measure flags the
  flipped labels (0.5 = chance, higher = flipped samples score higher).

The checkpoint record also carries the plain-entropy figures shared by its
noise points (``auroc_noisy_plain``, ``spearman_plain_loss``...) and the
training accuracy against the noisy and the clean labels.

Training: SGD (lr 0.02, momentum 0.9, Nesterov, weight decay 5e-4, cosine
decay over ``--epochs``), batch 64, one CPU thread. resnet32 on 28x28 images is
slow on one CPU core, so its Fashion-MNIST subset is smaller (``--fmnist-n-resnet``).

    python benchmarks/disturbance.py --out benchmarks/results/disturbance_cpu.json
    python benchmarks/disturbance.py --quick          # smoke run: tiny sizes, one seed, seconds

The last line printed is one JSON object, the summary; ``--out`` writes the
command line, every cell, the per-seed table, the summary and the environment.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import mombs
from mombs.envinfo import environment_info
from mombs.recipes.classification.fashion_mnist import find_fashion_mnist, load_fashion_mnist
from mombs.recipes.classification.label_noise import symmetric_noise
from mombs.recipes.classification.models import create_model

#: The three noise points per model: the pooled vector, the last stage, a middle
#: stage. small_cnn's ``features`` is Sequential(conv, bn, relu, maxpool, conv,
#: bn, relu, maxpool, conv, bn, relu): ``features.10`` ends block 3 (128 x H/4),
#: ``features.7`` ends block 2 after its max-pool (64 x H/4), as resnet32's
#: ``layer2`` output is what its last stage takes in.
NOISE_POINTS = {
    "small_cnn": {
        "pool": "pooled vector (B, 128)",
        "features.10": "last conv block (block 3, 128 ch)",
        "features.7": "middle conv block (block 2, after max-pool, 64 ch)",
    },
    "resnet32": {"pool": "pooled vector (B, 64)", "layer3": "last stage (64 ch)", "layer2": "middle stage (32 ch)"},
}

#: The figures averaged in the summary (per model and noise point).
SUMMARY_METRICS = (
    "spearman_unc",
    "spearman_score",
    "top_decile_overlap",
    "repeat_spearman_unc",
    "spearman_unc_corrected",
    "auroc_noisy_unc",
)


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


def load_datasets(args) -> dict:
    """The raw data sets, scaled to ``[0, 1]``, as ``name -> (x, labels)`` or ``name -> note``.

    Returns:
        ``x`` is a ``(N, 1, H, W)`` float32 tensor, ``labels`` a ``(N,)`` int64 array.
        A data set whose files are missing maps to a string saying so.
    """
    out = {}
    if "digits" in args.datasets:
        from sklearn.datasets import load_digits

        d = load_digits()
        out["digits"] = (torch.tensor(d.images, dtype=torch.float32).div_(16).unsqueeze(1), d.target.astype(np.int64))
    if "fashion-mnist" in args.datasets:
        if find_fashion_mnist(args.data_dir) is None:
            out["fashion-mnist"] = "skipped: Fashion-MNIST files not found"
        else:
            images, labels = load_fashion_mnist("train", args.data_dir)
            out["fashion-mnist"] = (torch.from_numpy(images).float().div_(255).unsqueeze(1), labels)
    return out


def draw_subset(name: str, x, labels, model: str, seed: int, args) -> dict:
    """The seed's training subset, its labels and the part of it that is assessed.

    Digits keep their clean labels; Fashion-MNIST gets exactly ``round(noise * n)``
    flipped labels. The subset and the flips come from private generators seeded
    by ``seed``, so every model sees the same images for a seed (resnet32's
    Fashion-MNIST subset is a prefix of small_cnn's).
    """
    if name == "digits":
        n, n_assess, noise = min(args.digits_n, len(labels)), args.digits_assess_n, 0.0
    else:
        resnet = model == "resnet32"
        n = args.fmnist_n_resnet if resnet else args.fmnist_n
        n_assess = args.fmnist_assess_n_resnet if resnet else args.fmnist_assess_n
        noise = args.noise
    perm = np.random.default_rng([seed, 0xD15]).permutation(len(labels))[:n]
    clean = labels[perm]
    noisy, flipped = symmetric_noise(clean, noise, 10, seed=seed)
    n_assess = min(n_assess or n, n)
    return {
        "x": x[perm],
        "y": torch.from_numpy(noisy),
        "clean": clean,
        "flipped": flipped,
        "n_train": n,
        "n_assess": n_assess,
        "noise": noise,
    }


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for the ``positive`` mask (Mann-Whitney, ties averaged)."""
    pos = int(positive.sum())
    neg = len(positive) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = mombs.rank_average(score)
    return float((ranks[positive].sum() - pos * (pos + 1) / 2) / (pos * neg))


def top_overlap(a: np.ndarray, b: np.ndarray, share: float = 0.1) -> float:
    """Share of the ``share`` highest-scoring samples of ``a`` that are also among those of ``b``."""
    m = max(1, int(math.ceil(share * len(a))))
    top_a = np.argsort(-a, kind="stable")[:m]
    top_b = np.argsort(-b, kind="stable")[:m]
    return len(np.intersect1d(top_a, top_b)) / m


def _uncertainty(model, x, at: str, args, seed: int) -> np.ndarray:
    """``K``-pass feature-noise uncertainty of every row of ``x``: the library's one
    measuring pass (:func:`mombs.assessment_pass`), ``args.chunk`` rows a batch, one
    private generator."""
    gen = torch.Generator().manual_seed(seed)
    data = mombs.IndexedDataset(TensorDataset(x, torch.zeros(len(x), dtype=torch.long)))
    _, (_, unc) = mombs.assessment_pass(
        model, data, loss_indices=[], at=at, k=args.k, alpha=args.alpha, batch_size=args.chunk, generator=gen
    )
    return unc


def assess(model, data: dict, model_name: str, seed: int, epoch: int, args) -> tuple[dict, list[dict]]:
    """Every figure of one checkpoint: the shared plain-entropy record and one cell per noise point."""
    x, y = data["x"][: data["n_assess"]], data["y"][: data["n_assess"]]
    flipped = data["flipped"][: data["n_assess"]]
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x[s : s + args.chunk]) for s in range(0, len(x), args.chunk)])
    # The same clean eval forward gives the loss and the plain (K = 1, no noise) entropy.
    loss = F.cross_entropy(logits, y, reduction="none").numpy().astype(np.float64)
    plain = mombs.prediction_entropy(torch.softmax(logits, 1)).numpy().astype(np.float64)
    pred = logits.argmax(1).numpy()
    d_plain = mombs.difficulty_scores(loss, plain)
    has_noise = bool(flipped.any())
    ckpt = {
        "epoch": epoch,
        "n_assessed": len(y),
        "acc_noisy_labels": round(float((pred == y.numpy()).mean()), 4),
        "acc_clean_labels": round(float((pred == data["clean"][: len(y)]).mean()), 4),
        "mean_plain_entropy": round(float(plain.mean()), 4),
        "spearman_plain_loss": round(mombs.spearman(plain, loss), 4),
    }
    if has_noise:
        ckpt.update(
            {
                "auroc_noisy_loss": round(auroc(loss, flipped), 4),
                "auroc_noisy_plain": round(auroc(plain, flipped), 4),
                "auroc_noisy_score_plain": round(auroc(d_plain, flipped), 4),
            }
        )
    r = min(args.repeat_n, len(y))
    cells = []
    for i, at in enumerate(NOISE_POINTS[model_name]):
        # Distinct noise streams per (seed, checkpoint, noise point, draw); the repeat is independent.
        base = ((seed * 1000 + epoch) * 10 + i) * 2
        u = _uncertainty(model, x, at, args, base)
        u2 = _uncertainty(model, x[:r], at, args, base + 1)
        d_u = mombs.difficulty_scores(loss, u)
        sub = mombs.spearman(u[:r], plain[:r])
        rep = mombs.spearman(u[:r], u2)
        cell = {
            "at": at,
            "spearman_unc": mombs.spearman(u, plain),
            "spearman_score": mombs.spearman(d_u, d_plain),
            "top_decile_overlap": top_overlap(d_u, d_plain),
            "spearman_unc_loss": mombs.spearman(u, loss),
            "mean_unc": float(u.mean()),
            "spearman_unc_subset": sub,
            "repeat_spearman_unc": rep,
            "repeat_spearman_score": mombs.spearman(d_u[:r], mombs.difficulty_scores(loss[:r], u2)),
            "spearman_unc_corrected": sub / math.sqrt(rep) if rep > 0 else float("nan"),
            "repeat_n": r,
        }
        if has_noise:
            cell.update({"auroc_noisy_unc": auroc(u, flipped), "auroc_noisy_score": auroc(d_u, flipped)})
        cells.append({k: round(v, 4) if isinstance(v, float) else v for k, v in cell.items()})
    return ckpt, cells


def run(name: str, data: dict, model_name: str, seed: int, args) -> dict:
    """One short training run, assessed at every checkpoint epoch."""
    with torch.random.fork_rng(devices=[]):
        # A benchmark may seed the global RNG, inside fork_rng so nothing leaks out.
        torch.manual_seed(seed)
        model = create_model(model_name, num_classes=10, in_channels=1)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    gen = torch.Generator().manual_seed(seed)
    x, y = data["x"], data["y"]
    t0 = time.perf_counter()
    checkpoints, cells = [], []
    for epoch in range(1, args.epochs + 1):
        model.train()
        for idx in torch.randperm(len(y), generator=gen).split(args.batch_size):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        if epoch in args.checkpoints:
            ckpt, ck_cells = assess(model, data, model_name, seed, epoch, args)
            checkpoints.append(ckpt)
            cells += [{"dataset": name, "model": model_name, "seed": seed, "epoch": epoch, **c} for c in ck_cells]
            print(
                json.dumps(
                    {
                        "dataset": name,
                        "model": model_name,
                        "seed": seed,
                        **ckpt,
                        **{c["at"]: [c["spearman_unc"], c["spearman_score"]] for c in ck_cells},
                    }
                ),
                flush=True,
            )
    return {
        "dataset": name,
        "model": model_name,
        "seed": seed,
        "n_train": data["n_train"],
        "n_assessed": data["n_assess"],
        "label_noise": data["noise"],
        "seconds": round(time.perf_counter() - t0, 2),
        "checkpoints": checkpoints,
        "cells": cells,
    }


def _stats(values) -> dict:
    """Mean and sample standard deviation (``ddof=1``; 0 for one value), NaNs left out."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if v.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {
        "mean": round(float(v.mean()), 4),
        "std": round(float(v.std(ddof=1)) if v.size > 1 else 0.0, 4),
        "n": int(v.size),
    }


def tabulate(cells: list[dict]) -> tuple[list[dict], dict]:
    """Per-seed table (per data set, model, noise point, checkpoint) and the summary.

    The summary pools seeds and checkpoints: per data set, model and noise point,
    and per model and noise point over both data sets.
    """
    table, summary = [], {}
    keys = sorted({(c["dataset"], c["model"], c["at"], c["epoch"]) for c in cells})
    for ds, model, at, epoch in keys:
        group = sorted(
            (c for c in cells if (c["dataset"], c["model"], c["at"], c["epoch"]) == (ds, model, at, epoch)),
            key=lambda c: c["seed"],
        )
        row = {"dataset": ds, "model": model, "at": at, "epoch": epoch, "seeds": [c["seed"] for c in group]}
        for m in SUMMARY_METRICS:
            if m in group[0]:
                row[m] = {"per_seed": [c[m] for c in group], **_stats(c[m] for c in group)}
        table.append(row)
    for model in NOISE_POINTS:
        for at in NOISE_POINTS[model]:
            group = [c for c in cells if c["model"] == model and c["at"] == at]
            if not group:
                continue
            entry = {"all_datasets": {m: _stats(c.get(m, float("nan")) for c in group) for m in SUMMARY_METRICS}}
            for ds in sorted({c["dataset"] for c in group}):
                sub = [c for c in group if c["dataset"] == ds]
                entry[ds] = {m: _stats(c[m] for c in sub) for m in SUMMARY_METRICS if m in sub[0]}
            summary.setdefault(model, {})[at] = entry
    return table, summary


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["digits", "fashion-mnist"], choices=["digits", "fashion-mnist"])
    p.add_argument("--models", nargs="+", default=list(NOISE_POINTS), choices=list(NOISE_POINTS))
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (default: mombs' search path)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--checkpoints", type=int, nargs="+", default=[2, 5, 10], help="epochs after which to assess")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--k", type=int, default=8, help="disturbed passes")
    p.add_argument("--alpha", type=float, default=0.3, help="noise half-width")
    p.add_argument("--noise", type=float, default=0.4, help="symmetric label-noise rate on Fashion-MNIST")
    p.add_argument("--digits-n", type=int, default=1797, help="digits training images (all: 1797)")
    p.add_argument("--digits-assess-n", type=int, default=0, help="digits images assessed (0: all)")
    p.add_argument("--fmnist-n", type=int, default=3000, help="Fashion-MNIST training images, small_cnn")
    p.add_argument("--fmnist-assess-n", type=int, default=1500, help="Fashion-MNIST images assessed, small_cnn")
    p.add_argument("--fmnist-n-resnet", type=int, default=1000, help="Fashion-MNIST training images, resnet32")
    p.add_argument("--fmnist-assess-n-resnet", type=int, default=800, help="Fashion-MNIST images assessed, resnet32")
    p.add_argument("--repeat-n", type=int, default=300, help="samples given a second, independent K-pass draw")
    p.add_argument("--chunk", type=int, default=250, help="samples per assessment forward")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, one seed, two epochs")
    p.add_argument("--out", help="write the full result to this JSON file")
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.checkpoints = args.seeds[:1], 2, [1, 2]
        args.digits_n, args.digits_assess_n = 256, 128
        args.fmnist_n, args.fmnist_assess_n, args.fmnist_n_resnet, args.fmnist_assess_n_resnet = 256, 128, 128, 64
        args.repeat_n = 64
    bad = [c for c in args.checkpoints if not 1 <= c <= args.epochs]
    if bad:
        raise ValueError(f"--checkpoints {bad} must lie in [1, --epochs={args.epochs}]")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    datasets = load_datasets(args)
    runs, skipped = [], {}
    for name, loaded in datasets.items():
        if isinstance(loaded, str):
            skipped[name] = loaded
            print(json.dumps({"dataset": name, "note": loaded}), flush=True)
            continue
        for model_name in args.models:
            for seed in args.seeds:
                runs.append(run(name, draw_subset(name, *loaded, model_name, seed, args), model_name, seed, args))
    cells = [c for r in runs for c in r["cells"]]
    table, summary = tabulate(cells)
    env = environment_info("cpu")
    result = {
        "benchmark": "disturbance",
        "command": " ".join(
            [
                os.path.basename(sys.argv[0]) if argv is None else "disturbance.py",
                *(sys.argv[1:] if argv is None else argv),
            ]
        ),
        "args": vars(args),
        "commit": _git_commit(),
        "noise_points": NOISE_POINTS,
        "data": {
            "digits": "scikit-learn digits, 8x8, x/16 in [0,1], clean labels, the seed's shuffle",
            "fashion-mnist": f"a seeded training subset, x/255 in [0,1], {args.noise:.0%} symmetric label noise "
            f"(exact count, mombs.recipes.classification.label_noise.symmetric_noise); small_cnn trains on "
            f"{args.fmnist_n} and assesses the first {args.fmnist_assess_n}; resnet32 (slow on "
            f"one CPU core at 28x28) trains on {args.fmnist_n_resnet} and assesses "
            f"{args.fmnist_assess_n_resnet}",
            "skipped": skipped,
        },
        "recipe": {
            "optimizer": "SGD lr 0.02 momentum 0.9 nesterov weight_decay 5e-4",
            "schedule": "cosine over epochs",
            "batch_size": args.batch_size,
            "epochs": args.epochs,
            "checkpoints": args.checkpoints,
            "k": args.k,
            "alpha": args.alpha,
            "loss": "eval-mode per-sample cross-entropy against the training (noisy) labels",
            "plain": "prediction_entropy(softmax(model(x))) of one clean eval forward",
            "std": "sample std (ddof=1) over seeds (table) or over seeds x checkpoints (summary)",
        },
        "seconds_total": round(time.perf_counter() - t0, 1),
        "runs": runs,
        "table": table,
        "summary": summary,
        "environment": env,
    }
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)
    short = {
        model: {
            at: {
                m: f"{e['all_datasets'][m]['mean']} ± {e['all_datasets'][m]['std']}"
                for m in ("spearman_unc", "spearman_score")
            }
            for at, e in per_at.items()
        }
        for model, per_at in summary.items()
    }
    print(
        json.dumps(
            {"benchmark": "disturbance", "seconds_total": result["seconds_total"], "summary": short}, ensure_ascii=False
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
