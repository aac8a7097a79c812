"""The generated tables in docs/*.md, rendered from the committed result files.

    python benchmarks/docs_tables.py            # print every block
    python benchmarks/docs_tables.py --write    # rewrite the blocks in docs/*.md in place
    python benchmarks/docs_tables.py --check    # exit 1 and print a diff if a block is stale

A block in a docs page looks like this, and everything between the two markers
belongs to this script:

    <!-- generated: NAME (python benchmarks/docs_tables.py) -->
    ...
    <!-- end generated: NAME -->

Every block is a pure function of files under ``benchmarks/results/``: no
training, no timing, only JSON reading. ``tests/test_docs.py`` fails when a
committed block differs from what this script renders.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path("benchmarks/results")
CLASSIFICATION = RESULTS / "classification"
SEGMENTATION = RESULTS / "segmentation"

# study_table.py sits next to this script; its `load` names the study's data sets.
sys.path.insert(0, str(Path(__file__).resolve().parent))

MIN_SEEDS = 5

_BLOCK = re.compile(
    r"(?P<start><!-- generated: (?P<name>[\w.-]+) \(python benchmarks/docs_tables\.py\) -->\n)"
    r"(?P<body>.*?)"
    r"(?P<end><!-- end generated: (?P=name) -->)",
    re.DOTALL,
)
_START = re.compile(r"<!-- generated: ([\w.-]+)")

# What each schedule in benchmarks/overhead.py does; the figures come from the results file.
SCHEDULE_NOTES = {
    "train-features": ("training pass", "from the training forward's features"),
    "rotate-4": ("training pass", "on a rotating 1/4 each epoch"),
    "every-4": ("training pass", "on all, every 4th epoch"),
    "rotate-2": ("training pass", "on a rotating 1/2 each epoch"),
    "every-2": ("training pass", "on all, every 2nd epoch"),
    "reuse-loss": ("training pass", "on all, every epoch"),
    "paper": ("eval pass", "on all, every epoch"),
}

# The estimates that benchmarks/fidelity_limits.py compares with a fresh full assessment.
ESTIMATE_LABELS = {
    "reuse-loss": "fresh uncertainty (`reuse-loss`)",
    "rotate-3+train": "rotating third + training-forward uncertainty, rank-averaged",
    "rotate-4+train": "rotating quarter + training-forward uncertainty",
    "rotate-3": "rotating third (`rotate-3`)",
    "rotate-4": "rotating quarter (`rotate-4`)",
    "rotate-4-moved": "the quarter whose training-loss rank moved most",
    "train-features": "training forward's own features (`train-features`)",
    "stale-1": "every uncertainty one epoch old",
}

# Its diagnostics: how fast the rankings move, and how close the training forward gets.
DIAGNOSTIC_LABELS = {
    "unc_epoch_to_epoch": "uncertainty ranking, one epoch against the next",
    "loss_epoch_to_epoch": "loss ranking, one epoch against the next",
    "unc_train_vs_eval": "training-forward uncertainty against eval mode",
    "unc_trainmode_frozen": "train-mode uncertainty against eval mode, weights frozen",
}


def _read(root: Path, rel: Path) -> dict:
    return json.loads((root / rel).read_text())


def _source(rel: Path, res: dict) -> str:
    """One line naming the results file and the environment it was measured in."""
    env = res.get("environment", {})
    parts = [
        f"{env['cpu']} ({env['cpu_count']} cores)" if "cpu" in env else None,
        f"device {env['device']}" + (f" ({env['gpu']})" if env.get("gpu") else "") if "device" in env else None,
        f"torch {env['torch']}" if "torch" in env else None,
        f"numpy {env['numpy']}" if "numpy" in env else None,
        (f"commit {env['commit'][:7]}" + (" plus uncommitted changes" if env["commit"].endswith("-dirty") else ""))
        if env.get("commit")
        else None,
    ]
    where = ", ".join(p for p in parts if p)
    return f"From `{rel.as_posix()}`" + (f" ({where})." if where else ".")


def _table(head: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _study_runs(root: Path) -> list[dict]:
    from study_table import load

    return load(root / CLASSIFICATION)


def render_study(root: Path) -> str:
    """The study table exactly as ``benchmarks/study_table.py --markdown`` prints it."""
    from mombs.compare import summarize
    from mombs.report import format_table

    runs = _study_runs(root)
    rows = summarize(runs)
    short = [r for r in rows if r.get("n", MIN_SEEDS) < MIN_SEEDS]
    return (
        format_table(rows, markdown=True) + f"\n\n{len(runs)} runs in `{CLASSIFICATION.as_posix()}/`; "
        f"cells with fewer than {MIN_SEEDS} seeds: {len(short)}"
    )


def render_lt_curves(root: Path, dataset: str = "fashion-mnist-LT", batch_size: int = 16) -> str:
    """Mean test top-1 over seeds at every epoch the runs tested, one row per strategy."""
    import numpy as np

    by: dict[str, list[dict]] = {}
    for r in _study_runs(root):
        if r["dataset"] == dataset and r["batch_size"] == batch_size:
            by.setdefault(r["strategy"], []).append(r)
    if not by:
        return f"(no runs of {dataset} at batch size {batch_size})"
    curves = {
        s: np.array([[np.nan if v is None else v for v in r["curves"]["test_top1"]] for r in runs], dtype=np.float64)
        for s, runs in by.items()
    }
    tested = sorted(set.intersection(*(set(np.flatnonzero(~np.isnan(c).any(0))) for c in curves.values())))
    head = ["strategy", "n"] + [f"after epoch {e + 1}" for e in tested]
    order = sorted(by, key=lambda s: (s != "random", s))
    body = [[s, str(len(by[s]))] + [f"{100 * curves[s][:, e].mean():.1f}" for e in tested] for s in order]
    return (
        f"{dataset}, batch size {batch_size}: test top-1 %, mean over seeds "
        f"(the `curves.test_top1` of each run file).\n\n" + _table(head, body)
    )


def render_planner(root: Path) -> str:
    rel = RESULTS / "planner.json"
    res = _read(root, rel)
    head = ["N", "batch size", "strategy", "× argsort", "balance_ratio", "pair_repeat_rate"]
    body = [
        [
            f"{r['n']:,}",
            str(r["batch_size"]),
            r["strategy"],
            f"{r['seconds_over_argsort']:.2f}",
            f"{r['balance_ratio']:.1e}",
            f"{r['pair_repeat_rate']:.1e}",
        ]
        for r in res["records"]
    ]
    return _table(head, body) + "\n\n" + _source(rel, res)


def render_planner_sweep(root: Path) -> str:
    """The mixed plan's time and balance at every batch size 2-256 (a selection shown), and
    its balance under an offset and a scale of the scores."""
    rel = RESULTS / "planner.json"
    res = _read(root, rel)
    shown = set(range(2, 17)) | {24, 31, 32, 33, 48, 63, 64, 96, 127, 128, 192, 255, 256}
    body = [
        [str(r["batch_size"]), f"{r['seconds_over_argsort']:.2f}", f"{r['balance_ratio_median3']:.1e}"]
        for r in res["sweep"]
        if r["batch_size"] in shown
    ]
    summary = res["summary"]
    inv = [
        [str(r["batch_size"]), f"{r['original']:.2e}", f"{r['offset_1e9']:.2e}", f"{r['scale_1e-9']:.2e}"]
        for r in res["invariance"]
    ]
    return (
        _table(["batch size", "× argsort", "balance_ratio"], body)
        + f"\n\nAll {summary['sweep_batch_sizes']} batch sizes from 2 to 256 are in the file: the slowest "
        f"is {summary['max_seconds_over_argsort']:.2f}× an argsort (batch size "
        f"{summary['max_at_batch_size']}), the median {summary['median_seconds_over_argsort']:.2f}×; the "
        f"worst balance_ratio is {summary['max_balance_ratio_median3']:.1e}.\n\n"
        + _table(["batch size", "balance_ratio", "scores + 1e9", "scores × 1e-9"], inv)
        + "\n\n"
        + _source(rel, res)
    )


def render_overhead(root: Path) -> str:
    rel = RESULTS / "overhead_cpu.json"
    res = _read(root, rel)
    head = ["schedule", "loss from", "uncertainty taken", "overhead_ratio", "rank_spearman"]
    records = sorted(res["records"], key=lambda r: (r["overhead_ratio"], r["schedule"]))
    body = [
        [
            r["schedule"],
            *SCHEDULE_NOTES.get(r["schedule"], ("-", "-")),
            f"{r['overhead_ratio']:.2f}",
            f"{r['rank_spearman']:.3f}",
        ]
        for r in records
    ]
    return _table(head, body) + "\n\n" + _source(rel, res)


def render_pass_cost(root: Path) -> str:
    rel = RESULTS / "pass_cost_cpu.json"
    res = _read(root, rel)
    best = res["best_pass"]
    head = [
        "training batch size",
        "full pass / training epoch",
        "measured epoch with a full refresh",
        "share refreshable within 1.10×",
    ]
    body = []
    for train, floor in sorted(
        res["full_refresh_overhead_floor"].items(), key=lambda kv: int(kv[0].rsplit("_b", 1)[1])
    ):
        body.append(
            [
                train.rsplit("_b", 1)[1],
                f"{res['ratios'][f'{best}_over_{train}']:.2f}×",
                f"{floor:.2f}×",
                f"{100 * res['refreshable_fraction_at_1.10'][train]:.0f}%",
            ]
        )
    return (
        _table(head, body) + f"\n\nThe pass at batch size {best.rsplit('_b', 1)[1]} "
        f"(the faster one), K = {res['args']['k']}. " + _source(rel, res)
    )


def _fidelity_rows(summary: dict, keys: list[str], labels: dict) -> list[list[str]]:
    keys = sorted(keys, key=lambda k: (-summary[k]["mean"], k))
    return [
        [labels.get(k, f"`{k}`"), f"{summary[k]['mean']:.3f}", ", ".join(f"{v:.3f}" for v in summary[k]["per_seed"])]
        for k in keys
    ]


def render_fidelity(root: Path) -> str:
    rel = RESULTS / "fidelity_limits_cpu.json"
    res = _read(root, rel)
    summary = res["summary"]
    keys = [k for k in summary if k not in DIAGNOSTIC_LABELS]
    return (
        _table(
            ["estimate (all with the training pass's loss)", "fidelity", "per seed"],
            _fidelity_rows(summary, keys, ESTIMATE_LABELS),
        )
        + "\n\n"
        + _source(rel, res)
    )


def render_fidelity_diagnostics(root: Path) -> str:
    rel = RESULTS / "fidelity_limits_cpu.json"
    res = _read(root, rel)
    summary = res["summary"]
    keys = [k for k in summary if k in DIAGNOSTIC_LABELS]
    return (
        _table(["Spearman correlation of", "mean", "per seed"], _fidelity_rows(summary, keys, DIAGNOSTIC_LABELS))
        + "\n\n"
        + _source(rel, res)
    )


def render_disturbance(root: Path) -> str:
    """What the feature-map disturbance adds over the plain entropy, per model and noise point."""
    rel = RESULTS / "disturbance_cpu.json"
    res = _read(root, rel)

    def cell(stats: dict, key: str) -> str:
        v = stats.get(key)
        return "-" if v is None else f"{v['mean']:.4f} ± {v['std']:.4f}"

    body = []
    for model, points in res["summary"].items():
        for at, by_data in points.items():
            a = by_data["all_datasets"]
            body.append(
                [
                    model,
                    f"`{at}`",
                    cell(a, "spearman_unc"),
                    cell(a, "spearman_score"),
                    cell(a, "top_decile_overlap"),
                    cell(a, "repeat_spearman_unc"),
                    cell(a, "spearman_unc_corrected"),
                    cell(a, "auroc_noisy_unc"),
                ]
            )
    head = [
        "model",
        "noise at",
        "Spearman(u K=8, plain entropy)",
        "Spearman(difficulty scores)",
        "top-10% overlap",
        "K=8 vs another K=8 draw",
        "noise-corrected",
        "flipped-label AUROC of u",
    ]
    return _table(head, body) + "\n\n" + _source(rel, res)


#: How benchmarks/dense_fidelity.py's tasks are named in the docs.
DENSE_TASK_LABELS = {
    "segmentation": "segmentation (U-Net)",
    "detection": "detection (tiny Faster R-CNN)",
    "detection-mobilenet": "detection (MobileNet-v3-FPN)",
    "classification": "classification (small CNN)",
}


def render_dense_fidelity(root: Path) -> str:
    """What the K disturbed passes add in the dense tasks: per task and alpha, per checkpoint, and the costs."""
    import numpy as np

    rel = RESULTS / "dense_fidelity_cpu.json"
    res = _read(root, rel)
    runs = res["runs"]
    # The docs' task order, whatever order the runs finished in.
    summary = {
        t: res["summary"][t]
        for t in sorted(
            res["summary"],
            key=lambda t: (list(DENSE_TASK_LABELS).index(t) if t in DENSE_TASK_LABELS else len(DENSE_TASK_LABELS), t),
        )
    }

    def ms(stats: dict | None, digits: int = 4) -> str:
        if not stats or stats.get("mean") is None:
            return "-"
        return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"

    def label(task: str) -> str:
        return DENSE_TASK_LABELS.get(task, task)

    body = []
    for task, entry in summary.items():
        for alpha, a in entry["per_alpha"].items():
            body.append(
                [
                    label(task),
                    alpha,
                    ms(a["rho_plain"]),
                    ms(a["rho_repeat"]),
                    ms(a["rho_plain_corrected"]),
                    ms(a["rho_score_plain"]),
                    ms(a["rho_train"]),
                    f"{a['k_pass_over_epoch']['mean']:.2f}×",
                ]
            )
    by_alpha = _table(
        [
            "task",
            "alpha",
            "Spearman(u K=8, plain entropy)",
            "K=8 vs another K=8 draw",
            "noise-corrected",
            "Spearman(difficulty scores)",
            "Spearman(u K=8, training-forward entropy)",
            "K=8 pass / epoch",
        ],
        body,
    )

    alphas = [float(a) for a in next(iter(summary.values()))["per_alpha"]]
    shown = [a for a in (0.3, max(alphas)) if a in alphas]
    ck_body = []
    for task in summary:
        task_runs = [r for r in runs if r["task"] == task]
        for epoch in task_runs[0]["checkpoints"]:
            recs = [rec for r in task_runs for rec in r["checkpoint_records"] if rec["epoch"] == epoch]
            cells = [c for r in task_runs for c in r["cells"] if c["epoch"] == epoch]

            def mean(values):
                v = [x for x in values if x is not None]
                return f"{np.mean(v):.3f}" if v else "-"

            row = [label(task), str(epoch)]
            row += [mean(c["rho_plain"] for c in cells if c["alpha"] == a) for a in shown]
            row += [mean(c["rho_repeat"] for c in cells if c["alpha"] == a) for a in shown]
            row += [mean(c["rho_train"] for c in cells if c["alpha"] == 0.3), mean(r["rho_plain_train"] for r in recs)]
            ck_body.append(row)
    per_ckpt = _table(
        ["task", "after epoch"]
        + [f"u(α={a:g}) vs plain" for a in shown]
        + [f"u(α={a:g}) vs another draw" for a in shown]
        + ["u(α=0.3) vs training forward", "plain vs training forward"],
        ck_body,
    )

    cost_body = []
    for task, entry in summary.items():
        task_runs = [r for r in runs if r["task"] == task]
        k_over = np.mean([c["k_pass_over_epoch"] for r in task_runs for c in r["cells"]])
        pc = entry["per_checkpoint"]
        metric = next(k for k in task_runs[0] if k.startswith("final_val_"))
        score = np.mean([r[metric] for r in task_runs])
        cost_body.append(
            [
                label(task),
                str(task_runs[0]["n_train"]),
                f"{metric[len('final_val_') :]} {score:.3f}",
                f"{entry['epoch_seconds_median']['mean']:.2f}",
                f"{pc['plain_over_epoch']['mean']:.2f}×",
                f"{k_over:.2f}×",
                f"{pc['loss_over_epoch']['mean']:.2f}×",
                "0 (read in the training forward)",
            ]
        )
    costs = _table(
        [
            "task",
            "training samples",
            "final validation score",
            "training epoch s (median)",
            "plain pass / epoch",
            f"K={res['args']['k']} pass / epoch",
            "loss pass / epoch",
            "training-forward entropy: extra pass",
        ],
        cost_body,
    )
    seeds = sorted({r["seed"] for r in runs})
    return (
        by_alpha + f"\n\nMean ± std over {len(seeds)} seeds × 3 checkpoints. Per checkpoint "
        f"(mean over seeds):\n\n" + per_ckpt + "\n\nWhat each pass costs, over one training epoch of the same "
        "run (1 CPU thread, the recipe's assessment batch size):\n\n" + costs + "\n\n" + _source(rel, res)
    )


def render_onepath(root: Path) -> str:
    """The committed NL batch-size-32 cell against its rerun through the one path, seed by seed."""
    rel = RESULTS / "onepath_compare.json"
    res = _read(root, rel)
    body = [
        [
            r["strategy"],
            str(r["seed"]),
            f"{100 * r['committed_top1']:.2f}",
            f"{100 * r['rerun_top1']:.2f}",
            f"{100 * (r['rerun_top1'] - r['committed_top1']):+.2f}",
            "yes" if r["identical_curves"] else "no",
        ]
        for r in res["per_seed"]
    ]
    table = _table(
        ["strategy", "seed", "committed top-1 %", "rerun top-1 %", "rerun - committed, pts", "identical curves"], body
    )

    def ci(d):
        if not d:
            return "-"
        text = f"{100 * d['mean']:+.2f}"
        if d.get("ci95"):
            text += f" [{100 * d['ci95'][0]:+.2f}, {100 * d['ci95'][1]:+.2f}]"
        return text + f" (n={d['n']})"

    summary = _table(
        ["paired difference, pts [95% CI]", "value"],
        [[f"rerun - committed, {s}", ci(d)] for s, d in res["rerun_minus_committed"].items()]
        + [[f"mixed - random, {w}", ci(d)] for w, d in res["mixed_minus_random"].items()],
    )
    return table + "\n\n" + summary + "\n\n" + _source(rel, res)


def render_overhead_gpu(root: Path) -> str:
    """The GPU overhead before and after the GPU-path changes, with each run's phase breakdown."""
    rel = RESULTS / "overhead_gpu.json"
    res = _read(root, rel)
    head = [
        "code",
        "commit",
        "MoMBS / random",
        "random s",
        "MoMBS s",
        "assessment passes s",
        "observe s",
        "training steps s (MoMBS − random)",
        "rank_spearman",
    ]
    body = []
    for run in res["runs"]:
        r = run["records"][0]
        ph = r.get("phase_seconds")
        extra = (
            ["-", "-", "-"]
            if ph is None
            else [
                f"{ph['mombs']['assess']:.2f}",
                f"{ph['mombs']['observe']:.2f}",
                f"{ph['mombs']['train'] + ph['mombs']['plan'] - ph['random']['train'] - ph['random']['plan']:+.2f}",
            ]
        )
        body.append(
            [
                run["label"],
                run["commit"][:7],
                f"{r['overhead_ratio']:.3f}",
                f"{r['seconds_random']:.1f}",
                f"{r['seconds_mombs']:.1f}",
                *extra,
                f"{r['rank_spearman']:.3f}",
            ]
        )
    env = res["runs"][-1]["environment"]
    return (
        _table(head, body) + f"\n\nFrom `{rel.as_posix()}` ({env.get('gpu', 'GPU')}, torch {env['torch']}, "
        f"numpy {env['numpy']}); seconds are for one 12-epoch training per arm (the mean of 2 repeats in call 2)."
    )


def render_overhead_phases(root: Path) -> str:
    """Where the CPU time of the default schedule goes, phase by phase."""
    rel = RESULTS / "overhead_cpu_default.json"
    res = _read(root, rel)
    r = res["records"][0]
    ph = r["phase_seconds"]
    rows = [
        [
            phase,
            f"{ph['random'][phase]:.2f}",
            f"{ph['mombs'][phase]:.2f}",
            f"{(ph['mombs'][phase] - ph['random'][phase]) / r['seconds_random']:+.1%}",
        ]
        for phase in ("plan", "observe", "assess", "train")
    ]
    rows.append(["total", f"{r['seconds_random']:.2f}", f"{r['seconds_mombs']:.2f}", f"{r['overhead_ratio'] - 1:+.1%}"])
    return (
        _table(["phase", "random s", "MoMBS s", "difference, share of random"], rows)
        + f"\n\n`{r['schedule']}`, overhead ratio {r['overhead_ratio']:.2f}, rank_spearman "
        f"{r['rank_spearman']:.3f}. " + _source(rel, res)
    )


def _seg_runs(root: Path) -> list[dict]:
    from study_table import load

    return load(root / SEGMENTATION)


def _ci(d: dict | None) -> str:
    if not d:
        return "-"
    text = f"{100 * d['mean']:+.2f}"
    if d.get("ci95"):
        text += f" [{100 * d['ci95'][0]:+.2f}, {100 * d['ci95'][1]:+.2f}]"
    return text


def render_seg_study(root: Path) -> str:
    """The segmentation study: Dice, small-lesion Dice and the paired differences, per cell."""
    from mombs.compare import paired_difference, summarize
    from mombs.report import format_table

    runs = _seg_runs(root)
    # Cells from the smallest training set to the largest (the labels sort as text).
    rows = sorted(summarize(runs), key=lambda r: (r["train_size"], r["batch_size"]))
    short = [r for r in rows if r.get("n", MIN_SEEDS) < MIN_SEEDS]
    # The small-lesion Dice paired too: the paper's claim is about small, faint findings.
    by = {}
    for r in runs:
        by.setdefault((r["dataset"], r["batch_size"]), {}).setdefault(r["strategy"], {})[r["seed"]] = r
    body = []
    for (ds, b), arms in sorted(by.items(), key=lambda kv: (int(kv[0][0].rsplit("=", 1)[1]), kv[0][1])):
        base = {s: r["small_dice"] for s, r in arms.get("random", {}).items() if r.get("small_dice") is not None}
        for strategy in sorted(s for s in arms if s != "random"):
            vals = {s: r["small_dice"] for s, r in arms[strategy].items() if r.get("small_dice") is not None}
            d = paired_difference(vals, base) if base else None
            body.append([ds, str(b), strategy, str(d["n"]) if d else "0", _ci(d)])
    return (
        format_table(rows, markdown=True)
        + f"\n\n{len(runs)} runs in `{SEGMENTATION.as_posix()}/`; cells with fewer than {MIN_SEEDS} "
        f"seeds: {len(short)}.\n\nSmall-lesion Dice, paired against random (points, 95% t-interval):\n\n"
        + _table(["cell", "B", "strategy", "n", "small-lesion Dice vs random"], body)
    )


def render_det_study(root: Path) -> str:
    """The detection study's table (FROC), per training size, from its committed runs."""
    from mombs.compare import summarize
    from mombs.report import format_table
    from study_table import load

    folder = RESULTS / "detection"
    runs = load(root / folder)
    rows = sorted(summarize(runs), key=lambda r: (r["train_size"], r["batch_size"]))
    short = [r for r in rows if r.get("n", MIN_SEEDS) < MIN_SEEDS]
    sizes = sorted({r["train_size"] for r in runs})
    return (
        format_table(rows, markdown=True)
        + f"\n\n{len(runs)} runs in `{folder.as_posix()}/` (training sizes {sizes}); cells with fewer "
        f"than {MIN_SEEDS} seeds: {len(short)}."
    )


def _noise_detection_tables(runs: list, corruptions, unit: str, pooled: str, extra=()) -> str:
    """How the final model's signals find the planted label noise, per training size (all arms pooled).

    Args:
        runs: results with ``train_size`` and ``noise_detection``.
        corruptions: the corruption names of ``recall_by_corruption``, in table order.
        unit: what a training sample is called (``"slices"``).
        pooled: which runs each row pools, for the note under the table.
        extra: names of further scores whose AUROC and AP get columns; a cell
            averaged over fewer runs than its row says how many.
    """
    import numpy as np

    by = {}
    for r in runs:
        if r.get("noise_detection"):
            by.setdefault(r["train_size"], []).append(r["noise_detection"])
    head = [
        f"training {unit}",
        "runs",
        "base rate",
        "PL precision",
        "PL recall",
        "AUROC difficulty",
        "AUROC loss",
        "AUROC uncertainty",
        "AP difficulty",
        "AP loss",
    ]
    head += [f"{what} {name}" for name in extra for what in ("AUROC", "AP")]
    body, rec_body = [], []

    def m(dets, key):
        v = [d[key] for d in dets if d.get(key) is not None]
        if not v:
            return "-"
        text = f"{100 * np.mean(v):.1f} ± {100 * np.std(v, ddof=1) if len(v) > 1 else 0:.1f}"
        return text + (f" ({len(v)} runs)" if len(v) < len(dets) else "")

    for n, dets in sorted(by.items()):
        body.append(
            [
                str(n),
                str(len(dets)),
                m(dets, "base_rate"),
                m(dets, "precision"),
                m(dets, "recall"),
                m(dets, "auroc_difficulty"),
                m(dets, "auroc_loss"),
                m(dets, "auroc_uncertainty"),
                m(dets, "ap_difficulty"),
                m(dets, "ap_loss"),
            ]
            + [m(dets, f"{what}_{name}") for name in extra for what in ("auroc", "ap")]
        )
        rec = [[d["recall_by_corruption"].get(c) for d in dets] for c in corruptions]
        rec_body.append(
            [str(n)]
            + [
                f"{100 * np.mean([x for x in v if x is not None]):.0f}" if any(x is not None for x in v) else "-"
                for v in rec
            ]
        )
    return (
        _table(head, body) + f"\n\nMean ± std over {pooled}; percent. The poorly-labeled quadrant is high "
        "loss and low uncertainty of the final model.\n\n"
        "Recall of the poorly-labeled quadrant by corruption type (percent of that type flagged):\n\n"
        + _table([f"training {unit}"] + list(corruptions), rec_body)
    )


def render_seg_detection(root: Path) -> str:
    """How the final model's signals find the corrupted masks, per training size (all arms pooled)."""
    from mombs.recipes.segmentation.synthetic_ct import CORRUPTIONS

    return _noise_detection_tables(
        _seg_runs(root), CORRUPTIONS[1:], "slices", "every run (all strategies, both batch sizes, 5 seeds)"
    )


def render_det_detection(root: Path) -> str:
    """How the final detector's signals find the images with a lesion left without a box, per training size."""
    from mombs.recipes.detection.synthetic_det import DET_CORRUPTIONS
    from study_table import load

    return _noise_detection_tables(
        load(root / RESULTS / "detection"),
        DET_CORRUPTIONS[1:],
        "slices",
        "every run (all 7 strategies, 5 seeds)",
        extra=("unmatched",),
    )


#: The operating points of ``froc_sens`` (false positives per image), in table order.
FROC_POINTS = ("0.5", "1", "2", "4", "8", "16")


def render_det_points(root: Path) -> str:
    """Every strategy against random at every FROC operating point, paired by seed, per training size."""
    from mombs.compare import paired_difference
    from study_table import load

    by = {}
    for r in load(root / RESULTS / "detection"):
        by.setdefault(r["train_size"], {}).setdefault(r["strategy"], {})[r["seed"]] = r
    body = []
    for n, arms in sorted(by.items()):
        base = arms.get("random", {})
        for strategy in sorted(s for s in arms if s != "random"):
            runs = arms[strategy]
            cells = [
                paired_difference({s: r["froc"] for s, r in runs.items()}, {s: r["froc"] for s, r in base.items()})
            ]
            cells += [
                paired_difference(
                    {s: r["froc_sens"][p] for s, r in runs.items()}, {s: r["froc_sens"][p] for s, r in base.items()}
                )
                for p in FROC_POINTS
            ]
            body.append([str(n), strategy, str(cells[0]["n"] if cells[0] else 0)] + [_ci(c) for c in cells])
    head = ["training slices", "strategy", "n", "FROC"] + [f"sens@{p}FP" for p in FROC_POINTS]
    return (
        _table(head, body)
        + "\n\nStrategy minus random on the same seed, in points of test-lesion sensitivity, mean [95% "
        "t-interval]; FROC is the mean of the 0.5, 1 and 2 FP points."
    )


SEG_COST_FILES = ("seg_cost_cpu.json", "seg_cost_gpu_64.json", "seg_cost_gpu_256.json")
DET_COST_FILES = ("det_cost_cpu.json", "det_cost_gpu_tiny.json", "det_cost_gpu_r50.json")


def _cost_results(root: Path, names) -> list:
    """``(rel, result)`` of each cost file present; the CPU one is required, GPU ones exist when a device was lent."""
    out = []
    for name in names:
        rel = RESULTS / name
        if name.endswith("_cpu.json") or (root / rel).exists():
            out.append((rel, _read(root, rel)))
    return out


def _cost_device(r: dict) -> str:
    return "GPU" if str(r["device"]).startswith("cuda") else "CPU"


def _mem_ratio(r: dict, job: str = "pass_full") -> str:
    mem = r.get("peak_memory_mb")
    return f"{mem[job] / mem['train']:.2f}×" if mem and mem.get("train") else "-"


def _cost_notes(table: str, results: list) -> str:
    """The table, how peak memory was measured, and one line per results file on its setting and source."""

    def setting(r):
        boxes = f" ({r['n_boxes']} boxes)" if "n_boxes" in r else ""
        return (
            f"{_cost_device(r)}, {r['n_train']} synthetic slices of {r['size']}×{r['size']}{boxes}, training "
            f"batch {r['batch_size']}, pass batch {r['pass_batch_size']}, K = {r['k']}, {r['threads']} "
            f"thread{'s' * (r['threads'] > 1)}, median of {r['repeats']}."
        )

    return "\n\n".join(
        [table, "Peak memory: resident-set growth on the CPU, growth of torch's peak allocated CUDA memory on the GPU."]
        + [f"{setting(res['records'][0])} {_source(rel, res)}" for rel, res in results]
    )


def render_seg_cost(root: Path) -> str:
    results = _cost_results(root, SEG_COST_FILES)
    head = [
        "device",
        "model",
        "pixels",
        "params",
        "training epoch s",
        "K-pass s",
        "pass / epoch",
        "uncertainties only / epoch",
        "peak memory pass / train",
        "uncertainty runs",
    ]
    body = [
        [
            _cost_device(r),
            r["model"],
            f"{r['size']}²",
            f"{r['params']:,}",
            f"{r['seconds']['train']:.2f}",
            f"{r['seconds']['pass_full']:.2f}",
            f"{r['ratio_pass_full_over_train']:.2f}×",
            f"{r['ratio_pass_unc_over_train']:.2f}×",
            _mem_ratio(r),
            r["uncertainty_runs"],
        ]
        for _, res in results
        for r in res["records"]
    ]
    return _cost_notes(_table(head, body), results)


def render_det_cost(root: Path) -> str:
    results = _cost_results(root, DET_COST_FILES)
    head = [
        "device",
        "model",
        "pixels",
        "params",
        "training epoch s",
        "full pass s (loss + K-pass)",
        "uncertainties s",
        "uncertainties, tiled s",
        "full pass / epoch",
        "uncertainties / epoch",
        "tiled / epoch",
        "peak memory full pass / train",
        "peak memory tiled / train",
    ]
    body = [
        [
            _cost_device(r),
            r["model"],
            f"{r['size']}²",
            f"{r['params']:,}",
            f"{r['seconds']['train']:.2f}",
            f"{r['seconds']['pass_full']:.2f}",
            f"{r['seconds']['pass_unc']:.2f}",
            f"{r['seconds']['pass_unc_tiled']:.2f}",
            f"{r['ratio_pass_full_over_train']:.2f}×",
            f"{r['ratio_pass_unc_over_train']:.2f}×",
            f"{r['ratio_pass_unc_tiled_over_train']:.2f}×",
            _mem_ratio(r),
            _mem_ratio(r, "pass_unc_tiled"),
        ]
        for _, res in results
        for r in res["records"]
    ]
    return _cost_notes(_table(head, body), results)


def render_det_overhead(root: Path) -> str:
    """Training time of mixed against random through the runner, for a detector on a GPU."""
    rel = RESULTS / "det_overhead_gpu.json"
    res = _read(root, rel)
    r, a = res["records"][0], res["args"]
    body = [
        [x["strategy"], str(x["seed"]), f"{x['seconds']:.1f}", " ".join(f"{s:.1f}" for s in x["epoch_seconds"])]
        for x in r["runs"]
    ]
    return (
        _table(["strategy", "seed", "epochs' seconds", "per epoch"], body)
        + f"\n\n{a['model']} at {a['image_size']}², {a['subset']} training slices, batch 4, {a['epochs']} "
        f"epochs, pivot {a['pivot_epoch']}, K = {a['k']}, AdamW lr {a['lr']:g}, default schedule; runs in the "
        f"order shown. mixed / random: {r['ratio_mixed_over_random']:.2f}× over all epochs, "
        f"{r['ratio_after_pivot']:.2f}× after the pivot. " + _source(rel, res)
    )


#: What each schedule measures, for the dense tasks' overhead tables (``train-entropy`` is not in overhead_cpu.json).
DENSE_SCHEDULE_NOTES = {**SCHEDULE_NOTES, "train-entropy": ("training pass", "entropy of the training forward")}


def render_dense_overhead(root: Path, task: str) -> str:
    """Time, ranking fidelity, phase shares and peak memory of mixed against random, per schedule,
    for one dense task on the CPU (``benchmarks/overhead_dense.py``)."""
    rel = RESULTS / f"overhead_{task}_cpu.json"
    res = _read(root, rel)
    blocks, cfg = res["schedules"], res["config"]

    def pct(share: float) -> str:
        return "<1%" if 0 < share < 0.005 else f"{100 * share:.0f}%"

    body = []
    for name in sorted(blocks, key=lambda s: (blocks[s]["ratio"], s)):
        b = blocks[name]
        sh, mem = b["phase_shares"]["mixed"], b["peak_rss_growth_mb"]
        per_seed = ", ".join(f"{r:.2f}" for r in b["ratio_per_seed"])
        body.append(
            [
                f"`{name}`" + (" (default)" if name == res["default_schedule"] else ""),
                *DENSE_SCHEDULE_NOTES.get(name, ("-", "-")),
                f"{b['ratio']:.2f}× ({per_seed})",
                f"{b['ratio_after_pivot']:.2f}×",
                f"{b['fidelity']:.3f} ± {b['fidelity_std']:.3f}",
                pct(sh["assess"]),
                pct(sh["observe"] + sh["capture"]),
                pct(sh["plan"]),
                pct(sh["train"]),
                f"{mem['mixed']:.0f} / {mem['random']:.0f}",
            ]
        )
    head = [
        "schedule",
        "loss from",
        "uncertainty taken",
        "mixed / random (per seed)",
        "after the pivot",
        "fidelity",
        "assess",
        "observe + hook",
        "plan",
        "train",
        "peak memory growth MiB, mixed / random",
    ]
    runs = [r for b in blocks.values() for r in b["runs"]]
    loads = [x for r in runs for x in r["loadavg_start_end"]]
    peaks = [r["peak_rss_mb"] for r in runs]
    reasons: dict[str, list[str]] = {}  # one reason, the schedule's name left out, for all it refuses
    for name, why in sorted(res["refused"].items()):
        reasons.setdefault(why.split(";")[0].replace(repr(name), "…"), []).append(f"`{name}`")
    refused = "".join(f" Refused by the task: {' and '.join(names)} ({why})." for why, names in reasons.items())
    return (
        _table(head, body)
        + f"\n\n{runs[0]['n_train']} training slices, batch {cfg['batch_size']}, {cfg['epochs']} epochs, pivot "
        f"{cfg['pivot_epoch']}, K = {cfg['k']}, {cfg['optimizer']} lr {cfg['lr']:g}, one torch thread. Per "
        f"schedule four runs, random, mixed, mixed, random (seeds 0, 0, 1, 1), each in its own process; the "
        f"ratio is of the summed epoch times (no validation). Fidelity: Spearman of the scores each planned "
        f"epoch is planned with against a fresh K = 8 eval-mode pass, mean ± std over the 2 seeds. Phase "
        f"shares are of the mixed runs' time; the hook is the `train-*` schedules' forward hook. Peak memory: "
        f"growth of the run's maximum resident set (`getrusage`) over its value before epoch 0 (the whole "
        f"peak, libraries and data included: {min(peaks):.0f}–{max(peaks):.0f} MiB). 1-minute load average "
        f"during the runs: {min(loads):.1f}–{max(loads):.1f} on {res['environment'].get('cpu_count', '?')} "
        f"cores, this run's own process included.{refused} " + _source(rel, res)
    )


def render_seg_overhead(root: Path) -> str:
    return render_dense_overhead(root, "segmentation")


def render_det_overhead_cpu(root: Path) -> str:
    return render_dense_overhead(root, "detection")


def render_default_assessment(root: Path) -> str:
    """Each dense task's default assessment against the paper's: cost and fidelity per run
    (``overhead_dense.py``), and whether the study cell's outcome moved (``default_assessment.py``)."""
    rel = RESULTS / "default_assessment_cpu.json"
    res = _read(root, rel)

    def diff(d) -> str:
        if not d:
            return "-"
        ci = f" [{100 * d['ci95'][0]:+.2f}, {100 * d['ci95'][1]:+.2f}]" if d.get("ci95") else ""
        return f"{100 * d['mean']:+.2f}{ci} (n={d['n']})"

    cost = []
    for task in ("segmentation", "detection"):
        paper = _read(root, RESULTS / f"overhead_{task}_cpu.json")["schedules"]["reuse-loss"]
        plain = _read(root, RESULTS / f"overhead_{task}_plain_cpu.json")["schedules"]
        for _name, label, b in (
            ("reuse-loss", "paper: K = 8, alpha 0.3, every epoch", paper),
            ("reuse-loss", "one plain pass (k = 1, alpha 0), every epoch", plain["reuse-loss"]),
            ("every-2", "**default:** one plain pass, every 2nd epoch", plain["every-2"]),
        ):
            cost.append([task, label, f"{b['ratio']:.2f}×", f"{b['fidelity']:.3f}"])
    out = [_table(["task", "assessment", "mixed / random, whole run", "fidelity vs K = 8"], cost), ""]
    rows = []
    for c in res["cells"]:
        m = c["metric"]
        for field, what in ((m, {"dice": "Dice", "froc": "FROC"}.get(m, m)), ("precision", "PL precision")):
            d = c[field]
            same = d.get("same_cpu")
            rows.append(
                [
                    c["task"],
                    str(c["batch_size"]),
                    what,
                    diff(d["new_minus_random"]),
                    diff(d["old_minus_random"]),
                    diff(d["new_minus_old"]),
                    diff(same["new_minus_old"]) if same else "-",
                ]
            )
    out.append(
        _table(
            [
                "task",
                "B",
                "outcome, points",
                "new mixed − random",
                "paper's mixed − random",
                "new − paper's mixed",
                "new − paper's mixed, same CPU",
            ],
            rows,
        )
    )
    out.append("")
    out.append(
        "Cost and fidelity: 2 seeds, random, mixed, mixed, random on the 2-core CPU "
        "(`benchmarks/results/overhead_{segmentation,detection}{,_plain}_cpu.json`). Outcomes: the study "
        "cell's `mixed` rerun with the default assessment for seeds 0-4, paired by seed with the committed "
        "runs (made on another CPU model; for detection, whose outcome that moves, the last column pairs "
        "them with the committed cell rerun on this CPU). " + _source(rel, res)
    )
    return "\n".join(out)


def render_det_history(root: Path) -> str:
    """Per epoch, how well the training loss ranks the images with a missing box (runs with a history)."""
    rel = RESULTS / "det_loss_history.json"
    res = _read(root, rel)
    summ, runs = res["summary"], res["runs"]
    epochs = len(summ["mean_auroc"]["loss"])
    show = sorted({0, 1, 2, 3, 5, 10, 15, 20, 25, epochs - 1} & set(range(epochs)))

    def row(name, key):
        per = [[r["auroc"][key][e] for r in runs] for e in show]
        return [name] + [f"{100 * min(v):.0f}–{100 * max(v):.0f} ({100 * sum(v) / len(v):.0f})" for v in per]

    body = [row("that epoch's training loss", "loss"), row("mean training loss so far", "mean_loss")]
    final = [r["final_model"] for r in runs]
    fm = ", ".join(
        f"{k} {100 * sum(f[k] for f in final) / len(final):.0f}" for k in ("loss", "difficulty", "unmatched")
    )
    strategies = sorted({r["strategy"] for r in runs})
    return (
        _table(["AUROC % (min–max over runs, mean)"] + [f"epoch {e}" for e in show], body)
        + f"\n\n{len(runs)} runs ({', '.join(strategies)}, seeds {sorted(r['seed'] for r in runs)}, "
        f"{runs[0]['epochs']} epochs, pivot {runs[0]['pivot_epoch']}); images with a missing box: "
        f"{100 * sum(r['base_rate'] for r in runs) / len(runs):.0f}% on average. The final model's "
        f"assessment, for comparison (mean AUROC %): {fm}. " + _source(rel, res)
    )


RENDERERS = {
    "seg-study": render_seg_study,
    "seg-detection": render_seg_detection,
    "seg-cost": render_seg_cost,
    "det-study": render_det_study,
    "det-points": render_det_points,
    "det-detection": render_det_detection,
    "det-history": render_det_history,
    "det-cost": render_det_cost,
    "det-overhead": render_det_overhead,
    "det-overhead-cpu": render_det_overhead_cpu,
    "seg-overhead": render_seg_overhead,
    "study": render_study,
    "disturbance": render_disturbance,
    "dense-fidelity": render_dense_fidelity,
    "default-assessment": render_default_assessment,
    "onepath": render_onepath,
    "lt-curves": render_lt_curves,
    "planner": render_planner,
    "planner-sweep": render_planner_sweep,
    "overhead": render_overhead,
    "overhead-gpu": render_overhead_gpu,
    "overhead-phases": render_overhead_phases,
    "pass-cost": render_pass_cost,
    "fidelity": render_fidelity,
    "fidelity-diagnostics": render_fidelity_diagnostics,
}


def render_all(root: Path = ROOT) -> dict[str, str]:
    """Every block's body, by name, as it belongs between its markers."""
    return {name: "\n" + fn(Path(root)).rstrip("\n") + "\n\n" for name, fn in RENDERERS.items()}


def block_names(text: str) -> list[str]:
    """The names of the generated blocks in ``text``, in order."""
    return _START.findall(text)


def update(text: str, blocks: dict[str, str]) -> str:
    """``text`` with every generated block's body replaced by ``blocks[name]``.

    Raises:
        ValueError: a block names no renderer, or its end marker is missing.
    """
    complete = [m.group("name") for m in _BLOCK.finditer(text)]
    if complete != block_names(text):
        raise ValueError(
            f"unterminated or malformed generated block(s) among {block_names(text)}; "
            f"each needs '<!-- end generated: NAME -->'"
        )
    unknown = sorted(set(complete) - set(blocks))
    if unknown:
        raise ValueError(f"unknown generated block(s) {unknown}; known: {sorted(blocks)}")
    return _BLOCK.sub(lambda m: m.group("start") + blocks[m.group("name")] + m.group("end"), text)


def docs_pages(root: Path = ROOT) -> list[Path]:
    return sorted((Path(root) / "docs").glob("*.md"))


def stale(root: Path = ROOT) -> dict[Path, tuple[str, str]]:
    """``{page: (committed, regenerated)}`` for every docs page whose blocks are out of date."""
    blocks = render_all(root)
    out = {}
    for page in docs_pages(root):
        text = page.read_text(encoding="utf-8")
        new = update(text, blocks)
        if new != text:
            out[page] = (text, new)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the blocks in docs/*.md in place")
    mode.add_argument("--check", action="store_true", help="exit 1 and print a diff if a block differs")
    p.add_argument("--root", type=Path, default=ROOT, help="the repository root (default: %(default)s)")
    args = p.parse_args(argv)

    if not (args.write or args.check):
        for name, body in render_all(args.root).items():
            print(f"== {name}{body}")
        return 0
    try:
        changed = stale(args.root)
    except ValueError as err:
        print(f"docs_tables: {err}", file=sys.stderr)
        return 1
    if args.write:
        for page, (_, new) in changed.items():
            page.write_text(new, encoding="utf-8")
            print(f"rewrote {page.relative_to(args.root)}")
        if not changed:
            print("docs tables are up to date")
        return 0
    for page, (old, new) in changed.items():
        rel = page.relative_to(args.root).as_posix()
        sys.stdout.writelines(
            difflib.unified_diff(
                old.splitlines(keepends=True),
                new.splitlines(keepends=True),
                f"{rel} (committed)",
                f"{rel} (regenerated)",
            )
        )
    if changed:
        print("\ndocs tables are stale: run  python benchmarks/docs_tables.py --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
