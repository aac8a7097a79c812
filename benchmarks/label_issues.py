"""Label-issue finders on known noise: mombs's signals against AUM, cartography and cleanlab (issue 13).

    python benchmarks/label_issues.py                        # the whole grid (resumable), JSON lines
    python benchmarks/label_issues.py --settings sym20 --seeds 0 --parts detect    # one cell
    python benchmarks/label_issues.py --table                # the docs/quality.md tables, printed
    python benchmarks/label_issues.py --table --write        # ... rewritten in docs/quality.md
    python benchmarks/label_issues.py --table --check        # exit 1 if docs/quality.md is stale
    python benchmarks/label_issues.py --tail                 # lt_tail.json: head vs tail classes flagged

Every method is scored on the same data: a Fashion-MNIST subset with planted
label noise (images averaged down to 14x14 so that the whole grid fits in
about an hour of one CPU core), the library's ``small_cnn``, plain SGD with a
cosine schedule. One ordinary training run records, per epoch and sample, the
training forward's loss, the softmax probability of the given label and the
AUM margin, while a :class:`mombs.DifficultyAssessor` (default schedule,
``keep_history=True``) measures the loss and uncertainty as in a mombs run; a
final assessment pass gives the run's loss and uncertainty as ``mombs train``
does. From that one run: mombs's quadrants, its difficulty score, the
library's :func:`mombs.quality.data_quality` default, AUM without threshold
samples, cartography confidence, cleanlab on in-sample probabilities, and a
combination of quadrant score and AUM whose weight and flag threshold are
chosen on a validation split. Extra runs: AUM with threshold samples (two runs,
each giving a disjoint 1/(C+1) of the data a fake class, Pleiss et al. 2020
§3.2) and cleanlab on K-fold cross-validated probabilities (K runs).

The validation split: a seeded 30% of the training samples whose true labels
the selection may look at (to pick a weight or a threshold); every figure in
the tables is measured on the other 70%.

The retraining part trains again from the same seed on the given labels with
what a method flags dropped, or with its loss weighted by ``DOWN_WEIGHT``, and
compares the test accuracy with the same seed's unfiltered run (paired).

Every (setting, seed, part) writes one JSON file under
``benchmarks/results/label_issues/``; a file that exists is not redone.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mombs import DifficultyAssessor, IndexedDataset, assessment_pass  # noqa: E402
from mombs.difficulty import _compute_ranks, quadrants  # noqa: E402
from mombs.envinfo import environment_info  # noqa: E402
from mombs.quality import (  # noqa: E402
    area_under_margin,
    aum_threshold,
    cartography,
    data_quality,
    detection_metrics,
    given_label_margin,
    given_label_prob,
)
from mombs.recipes.classification.fashion_mnist import load_fashion_mnist  # noqa: E402
from mombs.recipes.classification.imbalance import long_tailed_counts, long_tailed_indices  # noqa: E402
from mombs.recipes.classification.label_noise import pair_noise, symmetric_noise  # noqa: E402
from mombs.recipes.classification.models import create_model  # noqa: E402

RESULTS = Path("benchmarks/results/label_issues")
DOC = Path("docs/quality.md")

#: The grid: noise kind, rate, long-tailed or not.
SETTINGS = {
    "sym20": {"noise": "symmetric", "rate": 0.2, "long_tailed": False},
    "sym40": {"noise": "symmetric", "rate": 0.4, "long_tailed": False},
    "pair40": {"noise": "pair", "rate": 0.4, "long_tailed": False},
    "lt-sym20": {"noise": "symmetric", "rate": 0.2, "long_tailed": True},
}
SEEDS = (0, 1, 2)
PARTS = ("detect", "retrain")

N_TRAIN = 4000  # training images (the long-tailed set: about as many, rho = 0.1)
N_TEST = 2000
LT_RHO = 0.1
SIZE = 14  # 28x28 averaged 2x2
EPOCHS = 10
BATCH = 64
LR = 0.05
WEIGHT_DECAY = 5e-4
K_FOLDS = 4  # cleanlab's cross-validation folds (its own default is 5; see docs/quality.md)
VAL_SHARE = 0.3
DOWN_WEIGHT = 0.2
AUM_PERCENTILE = 99.0
#: Methods whose flags are retrained on.
RETRAIN = ("mombs-quadrant", "aum-threshold", "cleanlab-cv", "combined-val", "oracle")
_FLAGS_KEPT = ("mombs-quadrant", "aum-threshold", "cleanlab-cv", "combined-val")

#: Table order and what each method needs, for the docs.
METHODS = {
    "mombs-quadrant": "poorly-labeled quadrant of the final assessment (loss, K=8 uncertainty); "
    "score rank(loss) - rank(uncertainty)",
    "mombs-quadrant-epochs": "the same from the per-epoch tracker history (mean over epochs)",
    "mombs-difficulty": "the sampler's difficulty score (rank sum, last epoch); flag: threshold chosen on validation",
    "mombs-combined": "data_quality(score='combined'): mean rank of quadrant score and -AUM; "
    "flag: top k, k = #(AUM < 0)",
    "loss": "final loss alone (data_quality score='loss'); flag: loss > ln 2",
    "aum": "AUM of the ordinary run, no threshold samples; flag AUM < 0",
    "aum-threshold": "AUM with threshold samples (2 extra runs, 99th percentile)",
    "confidence": "cartography confidence (data_quality score='confidence'); "
    "flag: confidence < 0.5 and correctness < 0.5",
    "confidence-val": "cartography confidence; flag: threshold chosen on validation",
    "cleanlab-insample": "cleanlab find_label_issues on the final model's in-sample probabilities",
    "cleanlab-cv": f"cleanlab find_label_issues on {K_FOLDS}-fold cross-validated probabilities",
    "combined-val": "rank mix w*quadrant + (1-w)*(-AUM), w and flag threshold chosen on validation",
}


# --------------------------------------------------------------------------- #
# data


def _images(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(x).float().div_(255.0).unsqueeze(1)
    t = F.avg_pool2d(t, 28 // SIZE)
    return (t - 0.286) / 0.353


def make_data(setting: str, seed: int) -> dict:
    """Training images with planted noise, a test subset, and the validation split."""
    spec = SETTINGS[setting]
    xtr, ytr = load_fashion_mnist("train")
    xte, yte = load_fashion_mnist("test")
    rng = np.random.default_rng([seed, 0x1AB])
    if spec["long_tailed"]:
        img_max = next(m for m in range(N_TRAIN, 0, -1) if long_tailed_counts(m, 10, LT_RHO).sum() <= N_TRAIN)
        pool = rng.permutation(len(ytr))
        idx = pool[long_tailed_indices(ytr[pool], LT_RHO, img_max=img_max, seed=seed)]
    else:
        idx = np.sort(rng.choice(len(ytr), N_TRAIN, replace=False))
    clean = ytr[idx]
    noise = symmetric_noise if spec["noise"] == "symmetric" else pair_noise
    given, wrong = noise(clean, spec["rate"], 10, seed=seed)
    test = rng.choice(len(yte), N_TEST, replace=False)
    val = np.zeros(len(idx), dtype=bool)
    val[rng.choice(len(idx), int(round(VAL_SHARE * len(idx))), replace=False)] = True
    return {
        "x": _images(xtr[idx]),
        "y": given,
        "clean": clean,
        "wrong": wrong,
        "val": val,
        "x_test": _images(xte[test]),
        "y_test": yte[test],
        "num_classes": 10,
    }


# --------------------------------------------------------------------------- #
# one training run


def train(
    x: torch.Tensor,
    y: np.ndarray,
    num_classes: int,
    *,
    seed: int,
    weights=None,
    record: bool = False,
    assess: bool = False,
    x_test=None,
    y_test=None,
    probs_for=None,
) -> dict:
    """Trains ``small_cnn`` for ``EPOCHS``; optionally records the history and runs the assessor.

    Returns a dict with the timings (seconds): ``train`` (forward, backward,
    step), ``record`` (the history bookkeeping), ``assess`` (the assessor's
    observe and end_epoch), and, as asked: ``history``, ``tracker``,
    ``top1``, ``probs`` (softmax of ``probs_for``), ``final`` (the eval-mode
    assessment pass's loss and uncertainty).
    """
    torch.manual_seed(seed)  # the model's initial weights (a script; the library never does this)
    model = create_model("small_cnn", num_classes=num_classes, in_channels=1)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, nesterov=True, weight_decay=WEIGHT_DECAY)
    n = x.shape[0]
    steps = EPOCHS * math.ceil(n / BATCH)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    yt = torch.as_tensor(y, dtype=torch.int64)
    w = None if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    out = {"train": 0.0, "record": 0.0, "assess": 0.0}
    hist = None
    if record:
        hist = {k: np.full((EPOCHS, n), np.nan, np.float32) for k in ("train_loss", "prob_given", "margin")}
        hist["pred"] = np.full((EPOCHS, n), -1, np.int32)
    assessor = None
    if assess:
        assessor = DifficultyAssessor(
            model, IndexedDataset(TensorDataset(x, yt)), at="pool", k=8, batch_size=500, seed=seed, keep_history=True
        )
    for epoch in range(EPOCHS):
        model.train()
        if assessor is not None:
            t = time.perf_counter()
            assessor.start_epoch(epoch)
            out["assess"] += time.perf_counter() - t
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n, BATCH):
            t0 = time.perf_counter()
            idx = perm[s : s + BATCH]
            xb, yb = x[idx], yt[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, reduction="none")
            t1 = time.perf_counter()
            if hist is not None:
                i = idx.numpy()
                hist["train_loss"][epoch, i] = loss.detach().numpy()
                hist["prob_given"][epoch, i] = given_label_prob(logits, yb).numpy()
                hist["margin"][epoch, i] = given_label_margin(logits, yb).numpy()
                hist["pred"][epoch, i] = logits.detach().argmax(1).numpy()
            t2 = time.perf_counter()
            if assessor is not None:
                assessor.observe(idx, loss)
            t3 = time.perf_counter()
            if w is None:
                total = loss.mean()
            else:
                wb = w[idx]
                total = (loss * wb).sum() / wb.sum().clamp_min(1e-12)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            sched.step()
            t4 = time.perf_counter()
            out["train"] += (t1 - t0) + (t4 - t3)
            out["record"] += t2 - t1
            out["assess"] += t3 - t2
        if assessor is not None:
            t = time.perf_counter()
            assessor.end_epoch()
            out["assess"] += time.perf_counter() - t
    model.eval()
    if hist is not None:
        out["history"] = hist
    if assessor is not None:
        tr = assessor.tracker
        out["tracker"] = {
            "scores": tr.scores(),
            "loss": tr.history("loss")[1],
            "uncertainty": tr.history("uncertainty")[1],
        }
        assessor.close()
        t = time.perf_counter()
        (_, fl), (_, fu) = assessment_pass(
            model,
            IndexedDataset(TensorDataset(x, yt)),
            at="pool",
            k=8,
            alpha=0.3,
            batch_size=500,
            generator=torch.Generator().manual_seed(seed + 77),
        )
        out["final"] = {"loss": fl, "uncertainty": fu}
        out["final_pass"] = time.perf_counter() - t
    with torch.no_grad():
        if x_test is not None:
            pred = torch.cat([model(x_test[i : i + 1000]).argmax(1) for i in range(0, len(x_test), 1000)])
            out["top1"] = float((pred.numpy() == y_test).mean())
        if probs_for is not None:
            t = time.perf_counter()
            out["probs"] = (
                torch.cat([model(probs_for[i : i + 1000]).softmax(1) for i in range(0, len(probs_for), 1000)])
                .numpy()
                .astype(np.float64)
            )
            out["probs_seconds"] = time.perf_counter() - t
    return out


# --------------------------------------------------------------------------- #
# the detection part


def _nrank(score: np.ndarray) -> np.ndarray:
    return (_compute_ranks(score) - 0.5) / score.shape[0]


def _val_threshold(score: np.ndarray, wrong: np.ndarray, val: np.ndarray) -> tuple[np.ndarray, float]:
    """Flags ``score >= t`` with ``t`` the score quantile that maximizes F1 on the validation split."""
    best, best_t = -1.0, math.inf
    sv, wv = score[val], wrong[val]
    for q in np.linspace(0.01, 0.99, 99):
        t = float(np.quantile(sv, q))
        f = sv >= t
        tp = (f & wv).sum()
        f1 = 2 * tp / (f.sum() + wv.sum()) if f.sum() + wv.sum() else 0.0
        if f1 > best:
            best, best_t = f1, t
    return score >= best_t, best_t


def _cleanlab(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    t = time.perf_counter()
    flags = find_label_issues(labels, probs)  # its defaults: prune_by_noise_rate
    quality = get_label_quality_scores(labels, probs)  # self_confidence, higher = better
    return 1.0 - quality, np.asarray(flags, dtype=bool), time.perf_counter() - t


def detect(setting: str, seed: int) -> tuple[dict, dict]:
    """One cell's detection part: ``(result JSON, flags for the retraining part)``."""
    d = make_data(setting, seed)
    x, y, wrong, val, C = d["x"], d["y"], d["wrong"], d["val"], d["num_classes"]
    n = len(y)
    ev = ~val
    wall = time.perf_counter()
    main = train(x, y, C, seed=seed, record=True, assess=True, x_test=d["x_test"], y_test=d["y_test"], probs_for=x)
    plain = main["train"]  # one ordinary training run: forward, backward, step
    h = main["history"]
    scores, flags, cost, notes = {}, {}, {}, {}

    # mombs: the final assessment pass, as `mombs train` writes it.
    fl, fu = main["final"]["loss"], main["final"]["uncertainty"]
    q = quadrants(fl, fu)
    scores["mombs-quadrant"] = (_compute_ranks(fl) - _compute_ranks(fu)) / n
    flags["mombs-quadrant"] = q.mask("poorly-labeled")
    cost["mombs-quadrant"] = (plain + main["final_pass"]) / plain
    # ... and from the tracker's per-epoch history (the default schedule, every epoch).
    ml, mu = np.nanmean(main["tracker"]["loss"], 0), np.nanmean(main["tracker"]["uncertainty"], 0)
    qe = quadrants(ml, mu)
    scores["mombs-quadrant-epochs"] = (_compute_ranks(ml) - _compute_ranks(mu)) / n
    flags["mombs-quadrant-epochs"] = qe.mask("poorly-labeled")
    cost["mombs-quadrant-epochs"] = (plain + main["assess"]) / plain
    scores["mombs-difficulty"] = main["tracker"]["scores"]
    flags["mombs-difficulty"], _ = _val_threshold(scores["mombs-difficulty"], wrong, val)
    cost["mombs-difficulty"] = (plain + main["assess"]) / plain
    for name, lib in (("mombs-combined", "combined"), ("loss", "loss"), ("confidence", "confidence")):
        dq = data_quality(fl, fu, y, history=h, score=lib)
        scores[name], flags[name] = dq.table["label_issue_score"], dq.table["flagged"]
        notes[name] = dq.flag_rule
    cost["mombs-combined"] = (plain + main["record"] + main["final_pass"]) / plain
    cost["loss"] = (plain + main["final_pass"]) / plain

    # Training dynamics of the same run.
    aum = area_under_margin(h["margin"])
    scores["aum"], flags["aum"] = -aum, aum < 0
    cost["aum"] = (plain + main["record"]) / plain
    carto = cartography(h["prob_given"], h["pred"], y)
    scores["confidence-val"] = 1.0 - carto["confidence"]
    flags["confidence-val"], _ = _val_threshold(scores["confidence-val"], wrong, val)
    cost["confidence"] = cost["confidence-val"] = (plain + main["record"]) / plain

    # Combination, chosen on the validation split: the weight by AP, then the threshold by F1.
    rq, ra = _nrank(scores["mombs-quadrant"]), _nrank(-aum)
    best = None
    for wq in (0.0, 0.25, 0.5, 0.75, 1.0):
        s = wq * rq + (1 - wq) * ra
        ap = detection_metrics(s[val], np.ones(val.sum(), bool), wrong[val])["ap"]
        if best is None or ap > best[0]:
            best = (ap, wq, s)
    scores["combined-val"] = best[2]
    flags["combined-val"], thr = _val_threshold(best[2], wrong, val)
    cost["combined-val"] = (plain + main["record"] + main["final_pass"]) / plain
    notes["combined-val"] = {"weight_quadrant": best[1], "threshold": thr, "val_ap": best[0]}

    # cleanlab on the final model's in-sample probabilities.
    s, f, t = _cleanlab(y, main["probs"])
    scores["cleanlab-insample"], flags["cleanlab-insample"] = s, f
    cost["cleanlab-insample"] = (plain + main["probs_seconds"] + t) / plain

    # AUM with threshold samples: two runs, each giving a disjoint 1/(C+1) a fake class C.
    rng = np.random.default_rng([seed, 0xA0A])
    perm = rng.permutation(n)
    m = n // (C + 1)
    fakes = (perm[:m], perm[m : 2 * m])
    aums, thresholds, spent = [], [], 0.0
    for r, fake in enumerate(fakes):
        yy = y.copy()
        yy[fake] = C
        run = train(x, yy, C + 1, seed=seed + 1000 * (r + 1), record=True)
        spent += run["train"] + run["record"]
        a = area_under_margin(run["history"]["margin"])
        a[fake] = np.nan  # a threshold sample's own AUM says nothing of its real label
        aums.append(a)
        thresholds.append(aum_threshold(area_under_margin(run["history"]["margin"])[fake], AUM_PERCENTILE))
    # Each sample's AUM from the run(s) in which it was not a threshold sample, and the
    # matching threshold: a sample in neither set gets the mean of both.
    both = np.stack(aums)
    aum_t = np.nanmean(both, axis=0)
    thr_t = np.where(np.isnan(both), np.nan, np.asarray(thresholds)[:, None])
    flag_t = aum_t < np.nanmean(thr_t, axis=0)
    scores["aum-threshold"], flags["aum-threshold"] = -aum_t, flag_t
    cost["aum-threshold"] = spent / plain
    notes["aum-threshold"] = {"thresholds": thresholds}

    # cleanlab on K-fold cross-validated probabilities from the same model and recipe.
    from sklearn.model_selection import StratifiedKFold

    probs_cv = np.zeros((n, C))
    spent = 0.0
    folds = StratifiedKFold(n_splits=K_FOLDS, shuffle=True, random_state=seed)
    for k, (tr, ho) in enumerate(folds.split(np.zeros(n), y)):
        run = train(x[tr], y[tr], C, seed=seed + 100 * (k + 1), probs_for=x[ho])
        probs_cv[ho] = run["probs"]
        spent += run["train"] + run["probs_seconds"]
    s, f, t = _cleanlab(y, probs_cv)
    scores["cleanlab-cv"], flags["cleanlab-cv"] = s, f
    cost["cleanlab-cv"] = (spent + t) / plain

    methods = {}
    for name in METHODS:
        met = detection_metrics(np.nan_to_num(scores[name], nan=0.0)[ev], flags[name][ev], wrong[ev])
        met.update(cost_x=float(cost[name]), flagged_all=int(flags[name].sum()))
        if name in notes:
            met["notes"] = notes[name]
        methods[name] = met
    res = {
        "setting": setting,
        "seed": seed,
        "part": "detect",
        **SETTINGS[setting],
        "train_size": n,
        "wrong_share": float(wrong.mean()),
        "eval_size": int(ev.sum()),
        "baseline_top1": main["top1"],
        "methods": methods,
        "seconds": {
            "plain_train": plain,
            "record": main["record"],
            "assessor": main["assess"],
            "final_pass": main["final_pass"],
            "total_wall": time.perf_counter() - wall,
        },
        "config": _config(),
        "environment": environment_info("cpu"),
    }
    keep = {name: flags[name] for name in _FLAGS_KEPT}
    keep["oracle"] = wrong
    return res, keep


# --------------------------------------------------------------------------- #
# the retraining part


def retrain(setting: str, seed: int, flags: dict, baseline_top1: float) -> dict:
    d = make_data(setting, seed)
    x, y, C = d["x"], d["y"], d["num_classes"]
    wall = time.perf_counter()
    rows = {}
    for name in RETRAIN:
        f = flags[name]
        modes = ("drop",) if name == "oracle" else ("drop", "down-weight")
        for mode in modes:
            if mode == "drop":
                keep = ~f
                run = train(x[keep], y[keep], C, seed=seed, x_test=d["x_test"], y_test=d["y_test"])
            else:
                w = np.where(f, DOWN_WEIGHT, 1.0)
                run = train(x, y, C, seed=seed, weights=w, x_test=d["x_test"], y_test=d["y_test"])
            rows[f"{name}/{mode}"] = {
                "top1": run["top1"],
                "delta": run["top1"] - baseline_top1,
                "removed_or_weighted": int(f.sum()),
                "wrong_among_them": int((f & d["wrong"]).sum()),
            }
    return {
        "setting": setting,
        "seed": seed,
        "part": "retrain",
        **SETTINGS[setting],
        "baseline_top1": baseline_top1,
        "runs": rows,
        "down_weight": DOWN_WEIGHT,
        "seconds": time.perf_counter() - wall,
        "config": _config(),
        "environment": environment_info("cpu"),
    }


def tail_analysis() -> dict:
    """On the long-tailed cells: the share of *clean* samples each method flags, head vs tail classes.

    A finder that mistakes rare-but-correct samples for wrong labels would strip
    the tail further; this reads the committed flags and rebuilds the labels.
    """
    out = {"setting": "lt-sym20", "head_classes": [0, 1, 2], "tail_classes": [7, 8, 9], "seeds": {}}
    for seed in SEEDS:
        z = np.load(ROOT / RESULTS / f"lt-sym20_s{seed}_flags.npz")
        n = int(z["n"])
        d = make_data("lt-sym20", seed)
        clean_ok = ~d["wrong"]
        head, tail = np.isin(d["clean"], out["head_classes"]), np.isin(d["clean"], out["tail_classes"])
        row = {}
        for name in _FLAGS_KEPT:
            f = np.unpackbits(z[name.replace("-", "_")])[:n].astype(bool)
            row[name] = {
                "clean_flagged_head": float(f[clean_ok & head].mean()),
                "clean_flagged_tail": float(f[clean_ok & tail].mean()),
                "wrong_found_head": float(f[d["wrong"] & head].mean()),
                "wrong_found_tail": float(f[d["wrong"] & tail].mean()),
            }
        out["seeds"][str(seed)] = {
            "clean_head": int((clean_ok & head).sum()),
            "clean_tail": int((clean_ok & tail).sum()),
            "methods": row,
        }
    return out


def render_tail(root: Path) -> str:
    path = root / RESULTS / "lt_tail.json"
    if not path.exists():
        return "(no lt_tail.json yet: python benchmarks/label_issues.py --tail)\n"
    r = json.loads(path.read_text())
    seeds = r["seeds"]
    lines = [
        f"Long-tailed set, classes {r['head_classes']} (head, about "
        f"{np.mean([v['clean_head'] for v in seeds.values()]):.0f} clean samples) against "
        f"{r['tail_classes']} (tail, about {np.mean([v['clean_tail'] for v in seeds.values()]):.0f}); "
        f"% of samples flagged, mean ± 95% t half-width over {len(seeds)} seeds.\n",
        "| method | clean head flagged | clean tail flagged | wrong head found | wrong tail found |",
        "|---|---|---|---|---|",
    ]
    for name in _FLAGS_KEPT:
        cells = [
            _fmt(*_mean_ci([100 * v["methods"][name][k] for v in seeds.values()]), 1)
            for k in ("clean_flagged_head", "clean_flagged_tail", "wrong_found_head", "wrong_found_tail")
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _config() -> dict:
    return {
        "n_train": N_TRAIN,
        "n_test": N_TEST,
        "size": SIZE,
        "epochs": EPOCHS,
        "batch": BATCH,
        "lr": LR,
        "weight_decay": WEIGHT_DECAY,
        "k_folds": K_FOLDS,
        "val_share": VAL_SHARE,
        "lt_rho": LT_RHO,
        "aum_percentile": AUM_PERCENTILE,
        "model": "small_cnn",
        "threads": torch.get_num_threads(),
    }


def _path(setting: str, seed: int, part: str) -> Path:
    return ROOT / RESULTS / f"{setting}_s{seed}_{part}.json"


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float) + "\n")
    tmp.replace(path)


def run_grid(settings, seeds, parts) -> None:
    """Every detection cell first, then every retraining cell; files that exist are skipped."""
    for part in PARTS:
        if part not in parts:
            continue
        for setting in settings:
            for seed in seeds:
                _run_cell(setting, seed, part)


def _run_cell(setting: str, seed: int, part: str) -> None:
    det_path = _path(setting, seed, "detect")
    flag_path = det_path.with_name(f"{setting}_s{seed}_flags.npz")
    if part == "detect":
        if det_path.exists() and flag_path.exists():
            return
        res, flags = detect(setting, seed)
        flag_path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            flag_path, **{k.replace("-", "_"): np.packbits(v) for k, v in flags.items()}, n=np.array(res["train_size"])
        )
        _write_json(det_path, res)
        print(
            json.dumps(
                {k: res[k] for k in ("setting", "seed", "part", "baseline_top1", "seconds")}
                | {"ap": {m: round(v["ap"], 3) for m, v in res["methods"].items()}}
            ),
            flush=True,
        )
        return
    ret_path = _path(setting, seed, "retrain")
    if ret_path.exists():
        return
    if not (det_path.exists() and flag_path.exists()):
        print(f"skip retrain {setting} seed {seed}: no detect result yet", file=sys.stderr)
        return
    det = json.loads(det_path.read_text())
    z = np.load(flag_path)
    n = int(z["n"])
    flags = {name: np.unpackbits(z[name.replace("-", "_")])[:n].astype(bool) for name in RETRAIN}
    res = retrain(setting, seed, flags, det["baseline_top1"])
    _write_json(ret_path, res)
    print(
        json.dumps(
            {k: res[k] for k in ("setting", "seed", "part", "baseline_top1", "seconds")}
            | {"delta": {r: round(v["delta"], 4) for r, v in res["runs"].items()}}
        ),
        flush=True,
    )


# --------------------------------------------------------------------------- #
# the docs table (pure JSON reading)


def _mean_ci(values) -> tuple[float, float]:
    """Mean and the half-width of its 95% t interval (``nan`` with one value)."""
    from scipy import stats

    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), float("nan")
    return float(v.mean()), float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))


def _fmt(mean: float, half: float, digits: int = 2) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" if math.isnan(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def _load(root: Path, part: str) -> dict:
    out = {}
    for p in sorted((root / RESULTS).glob(f"*_{part}.json")):
        r = json.loads(p.read_text())
        out.setdefault(r["setting"], []).append(r)
    return out


def render_detection(root: Path) -> str:
    runs = _load(root, "detect")
    lines = []
    for setting in SETTINGS:
        rs = runs.get(setting, [])
        if not rs:
            continue
        seeds = sorted(r["seed"] for r in rs)
        spec = SETTINGS[setting]
        lines.append(
            f"**{setting}** ({spec['noise']} {spec['rate']:.0%}"
            f"{', long-tailed rho=' + str(LT_RHO) if spec['long_tailed'] else ''}; "
            f"{rs[0]['train_size']} training images, {rs[0]['eval_size']} scored; "
            f"seeds {seeds}; unfiltered test accuracy "
            f"{_fmt(*_mean_ci([r['baseline_top1'] for r in rs]), 3)})\n"
        )
        lines.append(
            "| method | precision | recall | F1 | AUROC | AP | precision@k | flagged (of those scored) "
            "| cost (x one run) |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for name in METHODS:
            ms = [r["methods"][name] for r in rs if name in r["methods"]]
            cells = [
                _fmt(*_mean_ci([m[k] for m in ms]))
                for k in ("precision", "recall", "f1", "auroc", "ap", "precision_at_k")
            ]
            flagged = np.mean([m["flagged"] for m in ms])
            cost = np.mean([m["cost_x"] for m in ms])
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {flagged:.0f} | {cost:.2f} |")
        weights = [r["methods"]["combined-val"]["notes"]["weight_quadrant"] for r in rs]
        lines.append(
            f"\ncombined-val's weight on the quadrant score, chosen on validation per seed: "
            f"{', '.join(f'{w:g}' for w in weights)}."
        )
        lines.append("")
    return "\n".join(lines)


def render_retrain(root: Path) -> str:
    runs = _load(root, "retrain")
    keys = [f"{m}/{mode}" for m in RETRAIN for mode in (("drop",) if m == "oracle" else ("drop", "down-weight"))]
    head = "| setting | baseline top-1 | " + " | ".join(keys) + " |"
    lines = [head, "|" + "---|" * (2 + len(keys))]
    for setting in SETTINGS:
        rs = runs.get(setting, [])
        if not rs:
            continue
        base = _fmt(*_mean_ci([r["baseline_top1"] for r in rs]), 3)
        cells = []
        for k in keys:
            mean, half = _mean_ci([100 * r["runs"][k]["delta"] for r in rs if k in r["runs"]])
            cells.append(_fmt(mean, half, 1))
        lines.append(f"| {setting} (n={len(rs)}) | {base} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_methods(root: Path) -> str:
    return "| method | what it is |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in METHODS.items()) + "\n"


TABLES = {
    "label-issues-methods": render_methods,
    "label-issues-detection": render_detection,
    "label-issues-retrain": render_retrain,
    "label-issues-tail": render_tail,
}
_BLOCK = re.compile(
    r"(?P<start><!-- label-issues table: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)"
    r"(?P<end><!-- end label-issues table: (?P=name) -->)",
    re.DOTALL,
)


def render_doc(text: str, root: Path = ROOT) -> str:
    """``text`` with every label-issues block's body regenerated from the result files."""
    blocks = {name: "\n" + fn(root).rstrip("\n") + "\n\n" for name, fn in TABLES.items()}
    return _BLOCK.sub(lambda m: m.group("start") + blocks[m.group("name")] + m.group("end"), text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--table", action="store_true", help="print the docs tables from the result files")
    p.add_argument(
        "--tail",
        action="store_true",
        help="write lt_tail.json: clean head/tail samples flagged, from the committed flags",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="with --table: rewrite the blocks in docs/quality.md")
    mode.add_argument("--check", action="store_true", help="with --table: exit 1 if docs/quality.md is stale")
    args = p.parse_args(argv)
    if args.table:
        doc = ROOT / DOC
        if not (args.write or args.check):
            for name, fn in TABLES.items():
                print(f"== {name}\n{fn(ROOT)}")
            return 0
        text = doc.read_text(encoding="utf-8")
        new = render_doc(text)
        if args.write:
            doc.write_text(new, encoding="utf-8")
            print("rewrote" if new != text else "up to date:", DOC)
            return 0
        if new != text:
            sys.stdout.writelines(
                difflib.unified_diff(
                    text.splitlines(True), new.splitlines(True), f"{DOC} (committed)", f"{DOC} (regenerated)"
                )
            )
            return 1
        return 0
    if args.tail:
        _write_json(ROOT / RESULTS / "lt_tail.json", tail_analysis() | {"environment": environment_info()})
        print(render_tail(ROOT))
        return 0
    torch.set_num_threads(args.threads)
    run_grid(args.settings, args.seeds, args.parts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
