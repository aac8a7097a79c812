"""Label-issue finders for masks and boxes on planted corruptions: mombs's scores against cleanlab's (issue 21).

    python benchmarks/dense_label_issues.py                          # the whole grid (resumable), JSON lines
    python benchmarks/dense_label_issues.py --tasks segmentation --rates 0.3 --seeds 0
    python benchmarks/dense_label_issues.py --table [--write|--check]   # the docs/quality.md tables

Per cell (task, corruption rate, seed) one file under
``benchmarks/results/dense_label_issues/``; a file that exists is not redone.
Each cell trains:

- **one in-sample run** on every training image (a plain random-order
  run: Adam, the study's epochs and batch size), recording each image's
  training loss per epoch. After it, one eval-mode pass gives each image's
  prediction (per-pixel probabilities; detections), loss and K-pass
  uncertainty (:func:`mombs.assessment_pass`, the paper's K = 8,
  alpha = 0.3). From this one run: mombs's scores (loss, uncertainty,
  difficulty, the quadrant score, the mean training loss over epochs, and
  the mask or box scores of :mod:`mombs.quality.masks` /
  :mod:`mombs.quality.boxes`) and cleanlab's score on the same in-sample
  predictions.
- **K = 3 fold runs**, each trained the same way on two thirds of the images
  and predicting the other third: cleanlab's score on out-of-sample
  predictions, as cleanlab asks (and mombs's prediction scores on them, for
  reference). Cost: 3 training runs, each on two thirds of the data.

Measures per score (higher = more suspect): AP and AUROC for the corrupted
images, precision among the top ``m`` (``m`` = the number of corrupted images),
and the recall of each corruption type in that top ``m``.

Seeds 0-2 are reported. The default score of ``mombs diagnose`` for each task
is chosen on seed 10 (both rates), which no table reports.

Data: the synthetic CT set (segmentation: 150 training slices of 64x64,
masks missed, eroded, dilated, shifted or swapped) and the synthetic
detection set (100 training slices, lesions left without a box at the given
rate, plus 10% shifted and 10% resized boxes and 5% spurious ones per
slice). The ``detection-long`` task trains the same detector twice as long
on twice the images (``--tasks detection-long --rates 0.3 --seeds 0 1 2``),
for a detector that has learned more of the set.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mombs import assessment_pass  # noqa: E402
from mombs.difficulty import _compute_ranks, difficulty_scores  # noqa: E402
from mombs.envinfo import environment_info  # noqa: E402
from mombs.quality import box_issue_scores, cleanlab_box_scores, mask_issue_scores  # noqa: E402
from mombs.recipes import get_recipe  # noqa: E402
from mombs.train import RunConfig  # noqa: E402

RESULTS = ROOT / "benchmarks/results/dense_label_issues"
#: The commit this process's code came from (the environment records the one at writing time).
STARTED_AT = environment_info().get("commit")
DOC = ROOT / "docs/quality.md"
FOLDS = 3
K, ALPHA = 8, 0.3
REPORTED_SEEDS = (0, 1, 2)
CHOICE_SEED = 10

#: Each task's run: the RunConfig fields of the study's cells (docs/study.md); detection-long
#: (added below) trains the same detector twice as long on twice the images.
TASKS = {
    "segmentation": dict(
        task="segmentation",
        dataset="synthetic-ct",
        subset=150,
        model="unet",
        loss="dice-ce",
        epochs=25,
        batch_size=4,
        lr=1e-3,
        optimizer="adam",
    ),
    "detection": dict(
        task="detection",
        dataset="synthetic-det",
        subset=200,
        train_fraction=0.5,
        model="tiny",
        loss="rpn",
        epochs=30,
        batch_size=4,
        lr=3e-3,
        optimizer="adam",
    ),
}
TASKS["detection-long"] = {**TASKS["detection"], "train_fraction": 1.0, "epochs": 60}
RATES = (0.15, 0.3)


def _config(task: str, rate: float, seed: int, epochs: int | None = None) -> RunConfig:
    fields = dict(TASKS[task], **({"epochs": epochs} if epochs else {}))
    return RunConfig(**fields, noise="annotation", noise_rate=rate, seed=seed, threads=1, strategy="random").validate()


def _seed_all(seed: int) -> torch.Generator:
    torch.manual_seed(seed)  # the model's initial weights (a benchmark may seed torch's global generator)
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- segmentation


def _train_seg(cfg, data, rows: np.ndarray, seed: int):
    """A model trained on training images ``rows``; ``(model, (E, len(rows)) training losses)``."""
    recipe = get_recipe("segmentation")
    from mombs.recipes.segmentation.training import DiceCELoss

    _seed_all(seed)
    model = recipe.create_model(cfg, data)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = DiceCELoss()
    x, y = data.x_train[rows], data.y_train[rows]
    rng = np.random.default_rng(seed)
    hist = np.zeros((cfg.epochs, len(rows)))
    for epoch in range(cfg.epochs):
        model.train()
        order = rng.permutation(len(rows))
        for s in range(0, len(order), cfg.batch_size):
            b = order[s : s + cfg.batch_size]
            per = loss_fn(model(x[b]), y[b])
            opt.zero_grad()
            per.mean().backward()
            opt.step()
            hist[epoch, b] = per.detach().numpy()
    return model, hist


def _seg_probs(model, x: torch.Tensor) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[s : s + 32]).softmax(1) for s in range(0, len(x), 32)]).numpy()


def _seg_pass(cfg, model, data, rows):
    """Eval-mode loss and uncertainty of training images ``rows`` (mombs's assessment pass)."""
    from torch.utils.data import TensorDataset

    from mombs import IndexedDataset
    from mombs.recipes.segmentation.models import seg_feature_module
    from mombs.recipes.segmentation.training import SEG_TASK

    ds = IndexedDataset(TensorDataset(data.x_train[rows], data.y_train[rows]))
    (_, loss), (_, unc) = assessment_pass(
        model,
        ds,
        at=seg_feature_module(model),
        k=K,
        alpha=ALPHA,
        task=SEG_TASK,
        batch_size=32,
        generator=torch.Generator().manual_seed(77),
    )
    return loss, unc


# ---------------------------------------------------------------- detection


def _train_det(cfg, data, rows: np.ndarray, seed: int):
    recipe = get_recipe("detection")
    from mombs.recipes.detection.training import DetectionStep

    _seed_all(seed)
    model = recipe.create_model(cfg, data)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step = DetectionStep(seed)
    rng = np.random.default_rng(seed)
    hist = np.zeros((cfg.epochs, len(rows)))
    for epoch in range(cfg.epochs):
        model.train()
        step.set_epoch(epoch)
        order = rng.permutation(len(rows))
        for s in range(0, len(order), cfg.batch_size):
            b = order[s : s + cfg.batch_size]
            items = [data.train[int(rows[i])] for i in b]
            _, per, objective = step(model, [im for im, _ in items], [t for _, t in items])
            opt.zero_grad()
            objective(None).backward()
            opt.step()
            hist[epoch, b] = per.detach().numpy()
    return model, hist


def _det_predict(model, data, rows):
    from torch.utils.data import Subset

    from mombs.recipes.detection.training import detect

    dets, gts = detect(model, Subset(data.train, [int(r) for r in rows]))
    return dets, gts


def _det_pass(cfg, model, data, rows):
    from torch.utils.data import Subset

    from mombs import IndexedDataset
    from mombs.recipes.detection.models import DET_FEATURE_MODULE

    ds = IndexedDataset(Subset(data.train, [int(r) for r in rows]))
    (_, loss), (_, unc) = assessment_pass(
        model,
        ds,
        at=DET_FEATURE_MODULE[cfg.model],
        k=K,
        alpha=ALPHA,
        task="detection",
        batch_size=32,
        generator=torch.Generator().manual_seed(77),
    )
    return loss, unc


# ---------------------------------------------------------------- one cell


def _prediction_scores(task: str, model, cfg, data, rows) -> dict:
    """mombs's prediction scores and cleanlab's, on training images ``rows``."""
    if task == "segmentation":
        probs = _seg_probs(model, data.x_train[rows])
        s = mask_issue_scores(probs, data.y_train[rows].numpy(), cleanlab=True)
        return {k: v for k, v in s.items() if k not in ("predicted_area", "given_area")}
    dets, gts = _det_predict(model, data, rows)
    s = box_issue_scores(dets, gts)
    s["cleanlab"] = cleanlab_box_scores(dets, gts)
    s["max_confidence"] = np.array([d["scores"].max(initial=0.0) for d in dets])
    return s


def _measure(score: np.ndarray, noisy: np.ndarray, corruption: np.ndarray, names) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    m = int(noisy.sum())
    top = np.zeros(len(score), bool)
    top[np.argsort(-score, kind="stable")[:m]] = True
    clean = corruption == 0
    return {
        "ap": float(average_precision_score(noisy, score)),
        "auroc": float(roc_auc_score(noisy, score)),
        "precision_at_m": float(top[noisy].sum() / m) if m else None,
        "recall_by_type": {names[c]: float(top[corruption == c].mean()) for c in np.unique(corruption) if c != 0},
        # each type against the clean images alone: how well the score finds that kind of error
        "ap_by_type": {
            names[c]: float(
                average_precision_score((corruption == c)[clean | (corruption == c)], score[clean | (corruption == c)])
            )
            for c in np.unique(corruption)
            if c != 0 and clean.any()
        },
    }


def run_cell(task: str, rate: float, seed: int, epochs: int | None = None) -> dict:
    cfg = _config(task, rate, seed, epochs)
    torch.set_num_threads(1)
    recipe = get_recipe(cfg.task)
    data = recipe.load(cfg)
    n = len(data.noisy_train)
    noisy, corruption = data.noisy_train.astype(bool), np.asarray(data.corruption)
    if cfg.task == "segmentation":
        from mombs.recipes.segmentation.synthetic_ct import CORRUPTIONS as names

        train, pass_fn = _train_seg, _seg_pass
    else:
        from mombs.recipes.detection.synthetic_det import DET_CORRUPTIONS as names

        train, pass_fn = _train_det, _det_pass
    every = np.arange(n)
    t0 = time.perf_counter()
    model, hist = train(cfg, data, every, seed)
    seconds_run = time.perf_counter() - t0
    t1 = time.perf_counter()
    loss, unc = pass_fn(cfg, model, data, every)
    seconds_pass = time.perf_counter() - t1
    in_sample = _prediction_scores(task, model, cfg, data, every)
    quadrant_score = (_compute_ranks(loss) - _compute_ranks(unc)) / n
    scores = {
        "loss": loss,
        "uncertainty": unc,
        "difficulty": difficulty_scores(loss, unc),
        "quadrant_score": quadrant_score,
        "mean_train_loss": hist.mean(0),
        "last_train_loss": hist[-1],
    }
    scores.update({name: v for name, v in in_sample.items() if name != "cleanlab"})
    scores["cleanlab_in_sample"] = in_sample["cleanlab"]
    extra = {}
    if task != "segmentation":
        from mombs.recipes.detection.training import evaluate_detection

        extra["test_froc"] = float(evaluate_detection(model, data.test)[0])
        dets, gts = _det_predict(model, data, every)
        from mombs.recipes.detection.metrics import froc

        extra["train_froc_given_boxes"] = float(froc(dets, gts).average)
    else:
        from mombs.recipes.segmentation.training import evaluate_segmentation

        extra["test_dice"] = float(evaluate_segmentation(model, (data.x_test, data.y_test))[0])
    # K-fold out-of-sample predictions, as cleanlab asks
    folds = np.random.default_rng(seed + 1000).permutation(n) % FOLDS
    oos: dict[str, np.ndarray] = {}
    t2 = time.perf_counter()
    for f in range(FOLDS):
        held, kept = every[folds == f], every[folds != f]
        fold_model, _ = train(cfg, data, kept, seed + 100 * (f + 1))
        part = _prediction_scores(task, fold_model, cfg, data, held)
        for name, v in part.items():
            oos.setdefault(name, np.zeros(n))[held] = v
    seconds_folds = time.perf_counter() - t2
    scores["cleanlab_oos"] = oos.pop("cleanlab")
    scores.update({f"{name}_oos": v for name, v in oos.items()})
    scores = {name: np.nan_to_num(np.asarray(v, dtype=np.float64), nan=0.0) for name, v in scores.items()}
    measured = {name: _measure(v, noisy, corruption, names) for name, v in scores.items()}
    cost = {
        name: (FOLDS if name.endswith("_oos") else 1) for name in scores
    }  # training runs (folds: 2/3 of the images each)
    return {
        "task": task,
        "rate": rate,
        "seed": seed,
        "images": n,
        "corrupted": int(noisy.sum()),
        "corrupted_by_type": {names[c]: int((corruption == c).sum()) for c in np.unique(corruption) if c},
        "config": {k: v for k, v in vars(cfg).items() if not k.startswith("_")},
        "folds": FOLDS,
        "scores": measured,
        "cost_in_training_runs": cost,
        **extra,
        "seconds": {"run": seconds_run, "assessment_pass": seconds_pass, "folds": seconds_folds},
        "per_image": {
            "corruption": corruption.tolist(),
            "scores": {name: [round(float(x), 6) for x in v] for name, v in scores.items()},
        },
        "started_at": STARTED_AT,
        "environment": environment_info(),
    }


# ---------------------------------------------------------------- the default's choice

#: Scores a default ``mombs train`` run writes (no history, one run): the candidates
#: for ``mombs diagnose``'s default. The benchmark's names -> the run's names.
RUN_SCORES = {
    "loss": "loss",
    "uncertainty": "uncertainty",
    "difficulty": "difficulty",
    "quadrant_score": "quadrant_score",
    "disagreement": "disagreement",
    "region_error": "region_error",
    "area": "area",
    "overlooked": "overlooked",
    "badly_located": "badly_located",
    "spurious": "spurious",
    "box_issue": "box_issue",
    "cleanlab_in_sample": "cleanlab",
}


def choose(task: str, results: list[dict] | None = None) -> dict:
    """The default score of ``task``'s ``mombs diagnose``: of :data:`RUN_SCORES`, the highest
    mean AP over the choice seed's cells (both rates); no reported seed takes part."""
    cells = [r for r in (results if results is not None else _load()) if r["task"] == task and r["seed"] == CHOICE_SEED]
    if not cells:
        return {}
    names = [n for n in cells[0]["scores"] if n in RUN_SCORES]
    mean_ap = {n: float(np.mean([r["scores"][n]["ap"] for r in cells])) for n in names}
    best = max(mean_ap, key=mean_ap.get)
    return {"score": RUN_SCORES[best], "mean_ap": mean_ap, "cells": sorted(r["rate"] for r in cells)}


# ---------------------------------------------------------------- tables

_BEGIN, _END = "<!-- dense-label-issues:begin -->", "<!-- dense-label-issues:end -->"


def _load() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]


def _ci(v: list) -> str:
    from scipy import stats

    v = np.asarray(v, dtype=float)
    if len(v) < 2:
        return f"{v.mean():.2f}"
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return f"{v.mean():.2f} ± {half:.2f}"


def table() -> str:
    res = [r for r in _load() if r["seed"] in REPORTED_SEEDS]
    lines = [_BEGIN, ""]
    for task in TASKS:
        cells = [r for r in res if r["task"] == task]
        if not cells:
            continue
        rates = sorted({r["rate"] for r in cells})
        pick = choose(task)
        if pick and task in ("segmentation", "detection"):
            ranked = sorted(pick["mean_ap"].items(), key=lambda kv: -kv[1])
            lines += [
                f"**{task}: the default of `mombs diagnose`** is `{pick['score']}`, the score a default "
                f"run has with the highest mean AP on seed {CHOICE_SEED} (rates "
                f"{', '.join(f'{x:g}' for x in pick['cells'])}; no table below uses that seed): "
                + ", ".join(f"{RUN_SCORES[n]} {v:.3f}" for n, v in ranked[:5])
                + ".",
                "",
            ]
        names = list(cells[0]["scores"])
        types = sorted({t for r in cells for t in r["corrupted_by_type"]})
        for rate in rates:
            rs = sorted((r for r in cells if r["rate"] == rate), key=lambda r: r["seed"])
            seeds = ", ".join(str(r["seed"]) for r in rs)
            extra = ""
            if "test_froc" in rs[0]:
                extra = (
                    f"; the detector's test FROC {_ci([r['test_froc'] for r in rs])}, FROC on its "
                    f"training images' given boxes {_ci([r['train_froc_given_boxes'] for r in rs])}"
                )
            elif "test_dice" in rs[0]:
                extra = f"; test Dice {_ci([r['test_dice'] for r in rs])}"
            lines += [
                f"**{task}, corruption rate {rate:g}** ({rs[0]['images']} training images, "
                f"{_ci([r['corrupted'] for r in rs])} corrupted, a base rate (the AP of a random ranking) of "
                f"{np.mean([r['corrupted'] / r['images'] for r in rs]):.2f}; seeds {seeds}; mean ± 95% t-interval"
                f"{extra}).",
                "",
                "| score | runs | AP | AUROC | precision@m | " + " | ".join(f"recall {t}" for t in types) + " |",
                "|---|---|---|---|---|" + "---|" * len(types),
            ]
            order = sorted(names, key=lambda nm: -np.mean([r["scores"][nm]["ap"] for r in rs]))
            for nm in order:
                m = [r["scores"][nm] for r in rs]
                cost = rs[0]["cost_in_training_runs"][nm]
                rec = [
                    _ci([x["recall_by_type"].get(t, float("nan")) for x in m])
                    if all(t in x["recall_by_type"] for x in m)
                    else "-"
                    for t in types
                ]
                lines.append(
                    f"| {nm} | {cost:g} | {_ci([x['ap'] for x in m])} | {_ci([x['auroc'] for x in m])} | "
                    f"{_ci([x['precision_at_m'] for x in m])} | " + " | ".join(rec) + " |"
                )
            lines.append("")
            lines += _per_type(task, rs, pick.get("score"))
    lines.append(_END)
    return "\n".join(lines)


def _per_type(task: str, rs: list[dict], default: str | None) -> list[str]:
    """Each corruption type's AP (that type against the clean images): cleanlab out of sample
    against the default score and the best one-run score in hindsight."""
    if not all("ap_by_type" in r["scores"]["loss"] for r in rs):
        return []
    bench_name = {v: k for k, v in RUN_SCORES.items()}.get(default, default) if default else None
    one_run = [n for n in rs[0]["scores"] if rs[0]["cost_in_training_runs"][n] == 1]
    types = sorted({t for r in rs for t in r["scores"]["loss"]["ap_by_type"]})
    lines = [
        "AP per corruption type (that type against the clean images alone): cleanlab "
        f"out of sample ({FOLDS} runs), the default `{default}` and the best one-run score in hindsight "
        "(picked on these seeds, so optimistic; `mean_train_loss` needs the run's history).",
        "",
        "| type | base rate | cleanlab_oos | default | default reaches it? | best one-run score | its AP | reaches it? |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in types:
        if not all(t in r["scores"]["loss"]["ap_by_type"] for r in rs):
            continue

        def ap(name, t=t):
            return [r["scores"][name]["ap_by_type"][t] for r in rs]

        base = [r["corrupted_by_type"][t] / (r["corrupted_by_type"][t] + r["images"] - r["corrupted"]) for r in rs]
        best = max(one_run, key=lambda n: np.mean(ap(n)))
        target = np.mean(ap("cleanlab_oos"))
        has_default = bench_name in rs[0]["scores"]
        default_reach = ("yes" if np.mean(ap(bench_name)) >= target else "no") if has_default else "-"
        lines.append(
            f"| {t} | {np.mean(base):.2f} | {_ci(ap('cleanlab_oos'))} | "
            f"{_ci(ap(bench_name)) if has_default else '-'} | {default_reach} | {best} | {_ci(ap(best))} | "
            f"{'yes' if np.mean(ap(best)) >= target else 'no'} |"
        )
    return lines + [""]


def _write_doc(text: str, check: bool) -> int:
    doc = DOC.read_text()
    pattern = re.compile(re.escape(_BEGIN) + ".*?" + re.escape(_END), re.S)
    if not pattern.search(doc):
        if check:
            print(f"{DOC} has no {_BEGIN} block", file=sys.stderr)
            return 1
        new = doc.rstrip("\n") + "\n\n" + text + "\n"
    else:
        new = pattern.sub(lambda _: text, doc)
    if check:
        if new != doc:
            sys.stdout.writelines(difflib.unified_diff(doc.splitlines(True), new.splitlines(True)))
            return 1
        return 0
    DOC.write_text(new)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["segmentation", "detection"], choices=list(TASKS))
    ap.add_argument("--rates", nargs="+", type=float, default=list(RATES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[CHOICE_SEED, *REPORTED_SEEDS])
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--check", action="store_true")
    ap.add_argument(
        "--smoke",
        type=int,
        default=None,
        metavar="EPOCHS",
        help="a quick check of the code: EPOCHS epochs, results printed, nothing written",
    )
    args = ap.parse_args(argv)
    if args.table:
        text = table()
        if args.write or args.check:
            return _write_doc(text, args.check)
        print(text)
        return 0
    if args.smoke:
        res = run_cell(args.tasks[0], args.rates[0], args.seeds[0], epochs=args.smoke)
        print(json.dumps({k: v for k, v in res.items() if k not in ("config", "environment")}, default=float)[:3000])
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    for task in args.tasks:
        for rate in args.rates:
            for seed in args.seeds:
                path = RESULTS / f"{task}-r{rate:g}-s{seed}.json"
                if path.exists():
                    continue
                res = run_cell(task, rate, seed)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(res, indent=1, default=float) + "\n")
                tmp.replace(path)
                print(
                    json.dumps(
                        {
                            "cell": path.name,
                            "seconds": res["seconds"],
                            "ap": {k: round(v["ap"], 3) for k, v in res["scores"].items()},
                        }
                    ),
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
