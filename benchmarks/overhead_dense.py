"""What MoMBS adds to a segmentation or detection run's time and memory, per assessment schedule.

The dense-task counterpart of ``benchmarks/overhead.py`` (issue 22, item 3).
Each run trains through the runner's own pieces: the task's recipe
(:func:`mombs.recipes.get_recipe`: ``load``), :func:`mombs.train.build.build`
and :func:`mombs.train.engine.train_one_epoch`, with the epoch loop of
``mombs/train/runner.py::_train`` (``assessor.start_epoch`` or
``sampler.set_epoch``, the loss's and step's ``set_epoch``,
``strategy.start_epoch``, the epoch, ``scheduler.step``,
``assessor.end_epoch``). What the runner does besides, and which is the same
work with or without MoMBS, is left out: the per-epoch validation, the
checkpoint, the history. Strategy ``random`` is the baseline; ``mixed`` with
one schedule at a time is MoMBS.

**Order.** Per schedule, four runs one after the other: random seed 0, mixed
seed 0, mixed seed 1, random seed 1 (ABBA), each in a process of its own,
forked from one that has loaded the data (``recipe.load``, per seed) and the
libraries. ABBA rather than epoch alternation (``overhead.py``): a linear
drift in the machine's speed over the block still costs both arms the same,
and a run in a process of its own is what alternation in one process cannot
give: its peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, which a forked child counts
from its own start) is its own, and it holds one model, one loader and one
assessor, as the runner does. Epoch alternation would also fit faster drift,
and would put two models' memory in one process.

**Timing.** Every epoch is timed from its ``start_epoch`` to the end of its
``end_epoch``; the run's time is the sum. Before epoch 0 each process takes
one untimed training step on a copy of the model (torch's one-off costs),
the same in both arms. Phases:

- ``plan``: the sampler's planning of each epoch (its first batch; the
  random arm's shuffle too);
- ``observe``: host time in ``DifficultyAssessor.observe``;
- ``capture``: the ``train-*`` schedules' forward hook, which reads the
  uncertainty inside the training forward;
- ``assess``: ``end_epoch``, the schedule's assessment pass(es);
- ``train``: the rest (data, forward, backward, step).

**Ranking fidelity**, not timed: after every ``end_epoch`` that hands the
sampler the scores of a planned epoch, the Spearman correlation between those
scores and a fresh eval-mode :func:`mombs.assessment_pass` (loss and K = 8
uncertainty at the paper's alpha 0.3 whatever the run's, its own noise seed) of the same model. That
pass runs in a forked child (``os.fork``; torch runs one thread), so that it
neither disturbs the run's state nor counts in its time or peak memory.

Sizes, for two shared CPU cores: segmentation is the study recipe of
``configs/study/seg_synth_10.yaml`` (U-Net, AdamW 1e-3, 25 epochs, pivot
5, batch 4) on ``--seg-slices`` training slices (150 by default; the
study's 30 is noisier to time); detection that of
``configs/study/det_synth_50.yaml`` (tiny Faster R-CNN, AdamW 3e-3, pivot 5,
batch 4) on 50 training slices (a quarter of its 200-slice base) and
``--det-epochs`` epochs (20 by default, the study's 30 cut so that both tasks'
every schedule fit in about half an hour). Schedules a task refuses (detection's
training-forward ones; a head the model lacks) are listed with the reason.

    python benchmarks/overhead_dense.py --task segmentation --out benchmarks/results/overhead_segmentation_cpu.json
    python benchmarks/overhead_dense.py --task detection --schedules reuse-loss rotate-4
    python benchmarks/overhead_dense.py --task segmentation --quick      # smoke run: tiny sizes

Each run also reports its final validation score (not timed), to show that
it trained. The last line printed is the summary of the default schedule.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import pickle
import resource
import sys
import time
import traceback

import numpy as np

#: Each task's run config (``mombs.train.RunConfig`` fields) for the CPU; ``subset``,
#: ``train_fraction`` and ``epochs`` as the command line sizes them.
TASKS = {
    "segmentation": {
        "config": {
            "task": "segmentation",
            "dataset": "synthetic-ct",
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
            "k": 8,
            "alpha": 0.3,
            "test_every": 25,
        },
        "source": "configs/study/seg_synth_10.yaml (its recipe; training slices as --seg-slices)",
    },
    "detection": {
        "config": {
            "task": "detection",
            "dataset": "synthetic-det",
            "subset": 200,
            "noise": "annotation",
            "noise_rate": 0.3,
            "model": "tiny",
            "optimizer": "adam",
            "lr": 3e-3,
            "weight_decay": 1e-4,
            "batch_size": 4,
            "epochs": 30,
            "pivot_epoch": 5,
            "k": 8,
            "alpha": 0.3,
            "test_every": 30,
        },
        "source": "configs/study/det_synth_50.yaml (its recipe; train_fraction 0.25 of the 200-slice base: 50 "
        "training slices; epochs as --det-epochs)",
    },
}

PHASES = ("plan", "observe", "capture", "assess", "train")
#: The four runs of one schedule's block, in order (ABBA).
ORDER = (("random", 0), ("mixed", 0), ("mixed", 1), ("random", 1))
#: torch threads in every run (the study's jobs: 2 on 2 cores run one thread each).
THREADS = 1
#: The fidelity reference's K and noise seed (as benchmarks/overhead.py).
REFERENCE_K, REFERENCE_ALPHA, REFERENCE_SEED = 8, 0.3, 987654


def task_fields(args) -> dict:
    """The run config fields shared by every run of ``args.task`` (no strategy, schedule, seed)."""
    fields = dict(TASKS[args.task]["config"])
    if args.task == "segmentation":
        fields["subset"] = args.seg_slices
    else:
        fields["train_fraction"] = args.det_slices / fields["subset"]
        fields["epochs"] = args.det_epochs
    if args.quick:
        fields.update(epochs=3, pivot_epoch=1)
        fields["subset"] = 24 if args.task == "detection" else 12
        fields.pop("train_fraction", None)
    fields["test_every"] = fields["epochs"]
    if args.k is not None:  # the assessment's K and alpha; the fidelity reference stays the paper's K = 8 at 0.3
        fields["k"] = args.k
    if args.alpha is not None:
        fields["alpha"] = args.alpha
    return fields


def make_config(fields: dict, strategy: str, schedule: str, seed: int, threads: int):
    from mombs.train import RunConfig

    cfg = RunConfig(**fields, strategy=strategy, schedule=schedule, seed=seed, device="cpu", threads=threads)
    cfg.validate()
    return cfg


# ---------------------------------------------------------------------- #
# one run, in its own process


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _timed(fn, acc: dict, key: str):
    """``fn`` wrapped so that its wall time adds to ``acc[key]``."""

    def call(*a, **kw):
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            acc[key] += time.perf_counter() - t

    return call


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        b = os.read(fd, 1 << 16)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def in_child(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a forked child process; its (pickled) result.

    The child starts with a copy of this process (imports, loaded data, a
    model) and leaves with ``os._exit``: nothing it does reaches this
    process's state, time or peak memory. torch runs one thread here, so
    forking is safe.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: compute, send, leave without running any of the parent's cleanup
        code = 0
        try:
            os.close(r)
            payload = ("ok", fn(*args, **kwargs))
        except BaseException:  # noqa: BLE001 - the parent raises it
            payload, code = ("error", traceback.format_exc()), 1
        try:
            view = memoryview(pickle.dumps(payload))
            while view:
                view = view[os.write(w, view) :]
        finally:
            os._exit(code)
    os.close(w)
    try:
        data = _read_all(r)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    if not data:
        raise RuntimeError(f"{getattr(fn, '__name__', fn)} died in its child process without a result")
    status, value = pickle.loads(data)
    if status != "ok":
        raise RuntimeError(f"{getattr(fn, '__name__', fn)} failed in its child process:\n{value}")
    return value


def _reference(model, train_set, parts, cfg, batch_size: int, measure: str) -> np.ndarray:
    import torch

    import mombs

    (_, loss), (_, unc) = mombs.assessment_pass(
        model,
        train_set,
        at=parts.at,
        k=REFERENCE_K,
        alpha=REFERENCE_ALPHA,
        task=parts.task,
        batch_size=batch_size,
        generator=torch.Generator().manual_seed(REFERENCE_SEED),
    )
    return np.asarray(mombs.difficulty_scores(loss, unc, measure=measure), np.float64)


def reference_scores(model, train_set, parts, cfg, batch_size: int, measure: str) -> np.ndarray:
    """The fidelity reference: ``(N,)`` difficulty scores of a fresh eval-mode pass, loss and
    K = 8 uncertainty, in a forked child so that the run's state, time and peak memory stay
    as they were."""
    return in_child(_reference, model, train_set, parts, cfg, batch_size, measure)


def _warm_up(c, cfg) -> None:
    """One training step on a copy of the model (and of the step function), torch's RNG restored:
    allocator and kernel one-off costs, paid before the clock starts, in both arms alike."""
    import torch
    from torch.utils.data import DataLoader

    from mombs.assessment import to_device
    from mombs.tasks import create_task

    parts = c.parts
    collate = create_task(parts.task).collate_fn
    loader = DataLoader(
        c.train_set,
        batch_size=cfg.batch_size,
        shuffle=False,
        **({"collate_fn": collate} if collate is not None else {}),
    )
    _, xb, yb = next(iter(loader))
    model = copy.deepcopy(parts.model).train()
    step_fn = copy.deepcopy(parts.step_fn)
    with torch.random.fork_rng(devices=[]):
        xb, yb = to_device(xb, torch.device("cpu")), to_device(yb, torch.device("cpu"))
        if step_fn is None:
            loss = parts.loss_fn(model(xb), yb).mean()
        else:
            loss = step_fn(model, xb, yb)[2](None)
        loss.backward()


def one_run(args, strategy: str, schedule: str, seed: int, corpus) -> dict:
    """One training run on ``corpus`` (what the recipe's ``load`` returned), timed by phase,
    with its ranking fidelity (mixed) and peak memory. Run it in a child of its own."""
    import torch

    import mombs
    from mombs.recipes import get_recipe
    from mombs.schedule import planned
    from mombs.train.build import build
    from mombs.train.engine import train_one_epoch
    from mombs.train.runner import (
        _epoch_losses,  # the runner's own: the strategy sees what it would
    )

    cfg = make_config(task_fields(args), strategy, schedule, seed, THREADS)
    recipe = get_recipe(cfg.task)
    device = torch.device("cpu")
    t_setup = time.perf_counter()
    c = build(cfg, recipe, corpus, device)
    parts, assessor, sampler = c.parts, c.assessor, c.sampler
    acc = dict.fromkeys(PHASES, 0.0)
    per_epoch = []
    sampler._begin = _timed(sampler._begin, acc, "plan")  # the epoch's plan is drawn at its first batch
    if assessor is not None:
        assessor.observe = _timed(assessor.observe, acc, "observe")
        if assessor.schedule.uncertainty_source in ("train", "output"):
            assessor.close()  # re-registered below with the timed hook
            for name in ("_capture", "_capture_output"):
                setattr(assessor, name, _timed(getattr(assessor, name), acc, "capture"))
            assessor.open()
    _warm_up(c, cfg)
    setup_seconds = time.perf_counter() - t_setup
    rss_before = _maxrss_mb()
    fidelity, train_losses = [], []
    n = len(c.train_set)
    try:
        for epoch in range(cfg.epochs):
            before = dict(acc)
            t0 = time.perf_counter()
            if assessor is not None:
                assessor.start_epoch(epoch)  # sets the sampler's epoch too
            else:
                sampler.set_epoch(epoch)
            for stepper in (parts.loss_fn, parts.step_fn):
                if hasattr(stepper, "set_epoch"):
                    stepper.set_epoch(epoch)
            c.strategy.start_epoch(epoch, num_epochs=cfg.epochs, losses=_epoch_losses(c))
            stats = train_one_epoch(
                parts.model,
                c.loader,
                loss_fn=parts.loss_fn,
                optimizer=c.optimizer,
                strategy=c.strategy,
                assessor=assessor,
                device=device,
                num_samples=n,
                fit_fn=parts.fit_fn,
                augment_gen=c.augment_gen,
                step_fn=parts.step_fn,
            )
            c.scheduler.step()
            if assessor is not None:
                t = time.perf_counter()
                assessor.end_epoch()
                acc["assess"] += time.perf_counter() - t
            total = time.perf_counter() - t0
            spent = {k: acc[k] - before[k] for k in PHASES if k != "train"}
            acc["train"] += total - sum(spent.values())
            per_epoch.append({"seconds": total, **spent})
            train_losses.append(stats["train_loss"])
            if assessor is not None and planned(epoch + 1, cfg.pivot_epoch) and epoch + 1 < cfg.epochs:
                ref = reference_scores(
                    parts.model, c.train_set, parts, cfg, recipe.assess_batch_size, c.strategy.measure
                )
                fidelity.append(mombs.spearman(sampler.scores, ref))
    finally:
        if assessor is not None:
            assessor.close()
    peak = _maxrss_mb()
    seconds = sum(e["seconds"] for e in per_epoch)
    val = None
    if not args.no_eval:  # not timed: that the run trained
        val = float(parts.evaluate(parts.model, parts.val)[0])
    return {
        "strategy": strategy,
        "schedule": schedule if strategy != "random" else None,
        "seed": seed,
        "seconds": seconds,
        "seconds_after_pivot": sum(e["seconds"] for e in per_epoch[cfg.pivot_epoch :]),
        "phase_seconds": dict(acc),
        "epoch_seconds": [e["seconds"] for e in per_epoch],
        "epoch_assess_seconds": [e["assess"] for e in per_epoch],
        "fidelity_per_epoch": fidelity,
        "fidelity": float(np.mean(fidelity)) if fidelity else None,
        "peak_rss_mb": peak,
        "rss_mb_before_training": rss_before,
        "setup_seconds": setup_seconds,
        "n_train": n,
        f"final_val_{recipe.metric}": val,
        "final_train_loss": train_losses[-1],
        "loadavg_start_end": None,
    }


# ---------------------------------------------------------------------- #
# the blocks, from the parent process


def load_corpora(args) -> dict:
    """``{seed: data}``: the recipe's ``load`` for each seed (the synthetic sets depend on it),
    once, in this process; every run's child starts with a copy, and with the model's
    libraries imported."""
    from mombs.recipes import get_recipe

    fields = task_fields(args)
    out = {}
    for _, seed in ORDER:
        if seed not in out:
            cfg = make_config(fields, "random", "reuse-loss", seed, THREADS)
            out[seed] = get_recipe(cfg.task).load(cfg)
    # One build here imports what the model needs (MONAI, torchvision: seconds), once for all runs.
    _try_build(make_config(fields, "mixed", "reuse-loss", 0, THREADS), out[0])
    return out


def _try_build(cfg, corpus) -> None:
    import torch

    from mombs.recipes import get_recipe
    from mombs.train.build import build

    c = build(cfg, get_recipe(cfg.task), corpus, torch.device("cpu"))
    if c.assessor is not None:
        c.assessor.close()


def accepted(args, schedules: list[str], corpus) -> tuple[list[str], dict]:
    """The schedules the task takes, and ``{schedule: reason}`` for those it refuses
    (the config's checks, then :func:`mombs.train.build.build`'s, in a child)."""
    fields = task_fields(args)
    ok, refused = [], {}
    for name in schedules:
        try:
            cfg = make_config(fields, "mixed", name, 0, THREADS)
            in_child(_try_build, cfg, corpus)
        except ValueError as err:
            refused[name] = str(err)
            continue
        except RuntimeError as err:  # build's refusal, raised in the child
            last = str(err).strip().splitlines()[-1]
            if not last.startswith("ValueError: "):
                raise
            refused[name] = last[len("ValueError: ") :]
            continue
        ok.append(name)
    return ok, refused


def run_child(args, strategy: str, schedule: str, seed: int, corpus) -> dict:
    """:func:`one_run` in a forked child (its own peak memory); its record."""
    load0 = os.getloadavg()
    t = time.perf_counter()
    rec = in_child(one_run, args, strategy, schedule, seed, corpus)
    rec["loadavg_start_end"] = [round(load0[0], 2), round(os.getloadavg()[0], 2)]
    rec["process_seconds"] = time.perf_counter() - t
    return rec


def _mean_std(values) -> dict:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


def summarize(runs: list[dict]) -> dict:
    """One schedule's block: ratios, fidelity, phases (mean over seeds), phase shares, memory."""
    arms = {s: [r for r in runs if r["strategy"] == s] for s in ("random", "mixed")}
    total = {s: sum(r["seconds"] for r in rs) for s, rs in arms.items()}
    after = {s: sum(r["seconds_after_pivot"] for r in rs) for s, rs in arms.items()}
    by_seed = {s: {r["seed"]: r for r in rs} for s, rs in arms.items()}
    seeds = sorted(set(by_seed["random"]) & set(by_seed["mixed"]))
    per_seed = [by_seed["mixed"][s]["seconds"] / by_seed["random"][s]["seconds"] for s in seeds]
    phases = {s: {p: float(np.mean([r["phase_seconds"][p] for r in rs])) for p in PHASES} for s, rs in arms.items()}
    seconds = {s: float(np.mean([r["seconds"] for r in rs])) for s, rs in arms.items()}
    shares = {s: {p: phases[s][p] / seconds[s] for p in PHASES} for s in arms}
    fid = [r["fidelity"] for r in arms["mixed"]]
    return {
        "ratio": total["mixed"] / total["random"],
        "ratio_after_pivot": after["mixed"] / after["random"],
        "ratio_per_seed": per_seed,
        "ratio_seed_mean_std": _mean_std(per_seed),
        "fidelity": _mean_std(fid)["mean"],
        "fidelity_std": _mean_std(fid)["std"],
        "fidelity_per_seed": fid,
        "seconds": seconds,
        "phases": phases,
        "phase_shares": shares,
        "peak_rss_mb": {s: float(np.mean([r["peak_rss_mb"] for r in rs])) for s, rs in arms.items()},
        "peak_rss_growth_mb": {
            s: float(np.mean([r["peak_rss_mb"] - r["rss_mb_before_training"] for r in rs])) for s, rs in arms.items()
        },
    }


def _round(obj, digits: int = 4):
    if isinstance(obj, float):
        return round(obj, digits) if math.isfinite(obj) else obj
    if isinstance(obj, list):
        return [_round(v, digits) for v in obj]
    if isinstance(obj, dict):
        return {k: _round(v, digits) for k, v in obj.items()}
    return obj


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", required=True, choices=list(TASKS))
    p.add_argument(
        "--schedules",
        nargs="+",
        default=["all"],
        help="schedule names, or 'all' (default): every schedule the task takes",
    )
    p.add_argument("--seg-slices", type=int, default=150, help="segmentation training slices (study: 30)")
    p.add_argument("--det-slices", type=int, default=50, help="detection training slices (of the 200-slice base)")
    p.add_argument("--det-epochs", type=int, default=20, help="detection epochs (study: 30)")
    p.add_argument(
        "--k",
        type=int,
        help="disturbed predictions per sample (default: the task's, or the "
        "study's 8); --k 1 --alpha 0 is one plain eval pass",
    )
    p.add_argument("--alpha", type=float, help="noise half-width (default: the task's, or the study's 0.3)")
    p.add_argument("--no-eval", action="store_true", help="skip the untimed final validation score")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, 3 epochs, pivot 1")
    p.add_argument("--note", action="append", default=[], help="a note kept in the result")
    p.add_argument("--out", help="write the full result to this JSON file")
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    import torch

    # One thread, set before any torch work: runs and fidelity passes are forked from here,
    # which is safe while torch runs one thread (the study runs two 1-thread jobs on 2 cores).
    torch.set_num_threads(THREADS)
    torch.set_num_interop_threads(1)

    import mombs
    from mombs.envinfo import environment_info

    command = " ".join(["python benchmarks/overhead_dense.py", *(sys.argv[1:] if argv is None else argv)])
    wanted = sorted(mombs.SCHEDULES) if args.schedules == ["all"] else args.schedules
    unknown = sorted(set(wanted) - set(mombs.SCHEDULES))
    if unknown:
        raise SystemExit(f"unknown schedule(s) {unknown}; choose from {sorted(mombs.SCHEDULES)} or 'all'")
    # The default first: if the run is cut short, the headline figure is in hand.
    wanted = sorted(wanted, key=lambda s: (s != mombs.DEFAULT_SCHEDULE, s))
    load_start, t0 = os.getloadavg(), time.perf_counter()
    corpora = load_corpora(args)
    schedules, refused = accepted(args, wanted, corpora[0])
    for name, why in refused.items():
        print(json.dumps({"refused": name, "why": why}), flush=True)
    blocks = {}
    for name in schedules:
        runs = []
        for strategy, seed in ORDER:
            runs.append(run_child(args, strategy, name, seed, corpora[seed]))
            r = runs[-1]
            print(
                json.dumps(
                    _round(
                        {
                            "schedule": name,
                            "strategy": strategy,
                            "seed": seed,
                            "seconds": r["seconds"],
                            "fidelity": r["fidelity"],
                            "peak_rss_mb": r["peak_rss_mb"],
                            "loadavg": r["loadavg_start_end"],
                        },
                        3,
                    )
                ),
                flush=True,
            )
        blocks[name] = {**summarize(runs), "runs": runs}
        b = blocks[name]
        print(
            json.dumps(
                _round(
                    {
                        "schedule": name,
                        "ratio": b["ratio"],
                        "ratio_after_pivot": b["ratio_after_pivot"],
                        "fidelity": b["fidelity"],
                    },
                    3,
                )
            ),
            flush=True,
        )
    load_end = os.getloadavg()
    fields = task_fields(args)
    default = mombs.DEFAULT_SCHEDULE if mombs.DEFAULT_SCHEDULE in blocks else next(iter(blocks))
    result = {
        "benchmark": "overhead_dense",
        "task": args.task,
        "command": command,
        "default_schedule": default,
        "ratio": blocks[default]["ratio"],
        "fidelity": blocks[default]["fidelity"],
        "schedules": blocks,
        "refused": refused,
        "config": dataclasses.asdict(make_config(fields, "random", mombs.DEFAULT_SCHEDULE, 0, THREADS)),
        "config_note": "every run's config is `config` with the run's strategy, schedule and seed",
        "source": TASKS[args.task]["source"],
        "order": "per schedule: " + ", ".join(f"{s} seed {d}" for s, d in ORDER) + ", each in its own process",
        "measures": {
            "ratio": "mixed / random: the two mixed runs' summed epoch seconds over the two random runs' "
            "(each epoch from start_epoch to the end of end_epoch; no validation, checkpoint, history)",
            "ratio_after_pivot": "the same over the epochs from the pivot on",
            "fidelity": f"mean over seeds of each run's mean Spearman, over its planned epochs, between the "
            f"scores the sampler plans the epoch with and a fresh eval-mode assessment_pass "
            f"(loss and K = {REFERENCE_K} uncertainty) of the same model, in a forked child; std "
            f"over seeds (ddof=1)",
            "phases": "mean seconds per run: plan (the sampler's planning), observe (DifficultyAssessor.observe), "
            "capture (the train-* schedules' forward hook), assess (end_epoch), train (the rest)",
            "peak_rss_mb": "resource.getrusage(RUSAGE_SELF).ru_maxrss of the run's own process (MiB), mean over "
            "seeds; peak_rss_growth_mb: less its value before epoch 0 (after the data, the build "
            "and the warm-up step)",
        },
        "threads": THREADS,
        "loadavg": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in load_end]},
        "notes": args.note,
        "seconds_total": time.perf_counter() - t0,
        "environment": environment_info("cpu"),
    }
    result = _round(result)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)
            fh.write("\n")
    b = result["schedules"][default]
    print(
        json.dumps(
            {
                "task": args.task,
                "schedule": default,
                "ratio": b["ratio"],
                "ratio_after_pivot": b["ratio_after_pivot"],
                "fidelity": b["fidelity"],
                "seconds_total": round(result["seconds_total"], 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
