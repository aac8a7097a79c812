"""Grids of runs (strategies x seeds x batch sizes x losses) and their paired statistics.

Runs go to ``<out>/runs/<name>/``; a finished run (one with ``results.json``)
is never redone and an interrupted one resumes from its checkpoint, so a killed
``compare`` picks up where it stopped. Runs execute in worker processes,
``jobs`` at a time, each with its share of the CPU threads.

Every config and every grid option is checked before the first run starts.
Ctrl-C (SIGINT) is the parent's alone: workers are born with it blocked and
then ignore it, and the parent, interrupted, terminates them at once. A worker
killed mid-epoch loses only that epoch: checkpoints are renamed into place
whole, so a rerun resumes every unfinished run and redoes no finished one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import multiprocessing as mp
import os
import signal
import sys
import threading
import warnings
from pathlib import Path

import numpy as np

from ._checks import check_int
from ._warning_line import warning_line
from .recipes import DEFAULT_TASK, get_recipe
from .strategies import STRATEGY_REGISTRY
from .train import RunConfig, run_dir_name

__all__ = ["check_grid", "expand_grid", "load_results", "paired_difference", "run_grid", "summarize"]


def _grid_list(name: str, values, *, kind: str, check) -> list:
    """``values`` as a list after checking it is a non-empty list of distinct, valid items."""
    example = {
        "strategies": "[random, mixed]",
        "seeds": "[0, 1, 2]",
        "batch_sizes": "[16, 32]",
        "losses": "[ce, focal]",
    }[name]
    if isinstance(values, np.ndarray) and values.ndim == 1:  # np.arange(5) is as good as a list
        values = values.tolist()
    if isinstance(values, (str, bytes, dict)) or not isinstance(values, (list, tuple)):
        raise ValueError(f"{name}={values!r} must be a list of {kind}, e.g. {name}={example}")
    if not values:
        raise ValueError(f"{name}=[] is empty; give at least one, e.g. {name}={example}")
    items = [v.item() if isinstance(v, np.generic) else v for v in values]
    for v in items:
        check(v)
    seen = set()
    for v in items:
        if v in seen:
            raise ValueError(f"{name}={list(values)!r} lists {v!r} twice")
        seen.add(v)
    return items


def _check_int_item(name: str, lo: int, hi: int | None = None):
    def check(v):
        try:
            check_int(name, v, lo, hi)
        except ValueError as err:  # "seeds: -1 must be ...": the item, not a name=value pair
            raise ValueError(str(err).replace(f"{name}=", f"{name}: ", 1)) from None

    return check


def _check_name_item(name: str, registry):
    def check(v):
        if not isinstance(v, str) or v not in registry:
            raise ValueError(f"{name}: {v!r} is not known; choose from {sorted(registry)}")

    return check


def check_grid(*, strategies, seeds, batch_sizes=None, losses=None, task: str = DEFAULT_TASK) -> dict:
    """Checks a grid's axes and returns them as plain lists.

    Args:
        strategies: strategy names, e.g. ``["random", "mixed"]`` (not a single string).
        seeds: distinct integers ``>= 0``.
        batch_sizes: distinct integers ``>= 1``, or ``None`` for the base config's.
        losses: loss names of ``task``, or ``None`` for the base config's.
        task: the runs' task, whose recipe names the losses.

    Returns:
        ``{"strategies", "seeds", "batch_sizes", "losses"}``; numpy scalars become
        Python numbers.

    Raises:
        ValueError: naming the option, the value and what is allowed.
    """
    out = {
        "strategies": _grid_list(
            "strategies", strategies, kind="strategy names", check=_check_name_item("strategies", STRATEGY_REGISTRY)
        ),
        "seeds": _grid_list("seeds", seeds, kind="integers >= 0", check=_check_int_item("seeds", 0, 2**32)),
        "batch_sizes": None,
        "losses": None,
    }
    if batch_sizes is not None:
        out["batch_sizes"] = _grid_list(
            "batch_sizes", batch_sizes, kind="integers >= 1", check=_check_int_item("batch_sizes", 1)
        )
    if losses is not None:
        out["losses"] = _grid_list(
            "losses", losses, kind="loss names", check=_check_name_item("losses", get_recipe(task).choices["loss"])
        )
    return out


def expand_grid(base: RunConfig, *, strategies, seeds, batch_sizes=None, losses=None) -> list[RunConfig]:
    """Every combination, seeds innermost so that early stops still pair up.

    The axes are checked by :func:`check_grid` and every config by
    :meth:`RunConfig.validate`, so a bad combination (say a planned strategy
    whose pivot leaves no planned epoch) stops here, before any run.
    """
    if not isinstance(base, RunConfig):
        raise ValueError(f"base must be a RunConfig, got {type(base).__name__}")
    base.validate()
    grid = check_grid(strategies=strategies, seeds=seeds, batch_sizes=batch_sizes, losses=losses, task=base.task)
    configs = []
    for b in grid["batch_sizes"] or [base.batch_size]:
        for loss in grid["losses"] or [base.loss]:
            for seed in grid["seeds"]:
                for s in grid["strategies"]:
                    configs.append(
                        dataclasses.replace(
                            base, strategy=s, seed=seed, batch_size=b, loss=loss, tags=dict(base.tags)
                        ).validate()
                    )
    return configs


def _worker_init(parent: int, one_line_warnings: bool) -> None:
    """Pool initializer: SIGINT is the parent's to handle, warnings print as the parent's do.

    The worker was started with SIGINT blocked (see :func:`_start_pool`), so a
    Ctrl-C that reached the whole process group while it was still importing
    is pending, not fatal; ignoring it now discards it. A spawned worker starts
    with Python's own two-line warnings; ``one_line_warnings`` (the command
    line's setting in the parent) makes them ``mombs: warning: ...`` here too.
    """
    if one_line_warnings:
        warnings.formatwarning = warning_line
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _die_with_parent(parent)


#: prctl's option that asks the kernel for a signal when the parent dies (linux/prctl.h).
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """On Linux, the kernel kills this worker when the process that started it dies.

    A ``compare`` killed with SIGKILL cannot terminate its pool; its workers would
    go on training and writing, and a rerun of the same command would put two
    writers on one run folder. Elsewhere the run folder's lock still stops that.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl to be had: the run folder's lock remains
        return
    if os.getppid() != parent:  # the parent died before the request was made
        os._exit(1)


def _start_pool(jobs: int):
    """A spawn pool whose workers, and those it starts later, begin with SIGINT blocked.

    A blocked signal mask survives fork and exec, unlike a Python handler; the
    pool's helper threads are created here and inherit it too, so every
    replacement worker is born immune.

    Workers are kept from run to run: a fresh process per run paid the imports
    again each time (MONAI's alone takes longer than a small segmentation run's
    training on 2 cores). A run's outcome does not depend on what its worker
    ran before: every run seeds its own generators, sets its own thread count
    and leaves torch's global state as it found it.
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        one_line = warnings.formatwarning is warning_line
        return mp.get_context("spawn").Pool(jobs, initializer=_worker_init, initargs=(os.getpid(), one_line))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _worker_threads(jobs: int) -> int:
    """Torch threads of each of ``jobs`` workers: a share of the cores, capped by ``OMP_NUM_THREADS``.

    Spawned workers would otherwise set ``cpu_count // jobs`` threads over the
    user's ``OMP_NUM_THREADS=1``, which a single ``mombs train`` respects.
    """
    threads = max(1, (os.cpu_count() or 1) // jobs)
    limit = os.environ.get("OMP_NUM_THREADS", "").strip()
    if limit.isdigit() and int(limit) >= 1:
        threads = min(threads, int(limit))
    return threads


def _worker(args):
    from .train import run  # the runner and torch: imported once a run starts, not to check a grid

    cfg_dict, run_dir = args
    try:
        cfg = RunConfig(**cfg_dict)
        res = run(cfg, run_dir)
        return run_dir, res[res.get("metric", "top1")], None
    except Exception as err:  # report and carry on with the rest of the grid
        return run_dir, None, f"{type(err).__name__}: {err}"


def run_grid(configs: list[RunConfig], out_dir, *, jobs: int = 1, progress: bool = True, on_result=None) -> list[dict]:
    """Runs every config that has no results yet; returns all results found.

    Everything is checked before anything is written. On ``KeyboardInterrupt``
    (Ctrl-C) the workers are terminated at once and the interrupt is raised
    again; finished runs and the checkpoints of unfinished ones stay, and the
    same call resumes them.

    Args:
        configs: the runs, a non-empty list of distinct :class:`RunConfig`.
        out_dir: the comparison's folder; runs go to ``out_dir/runs``.
        jobs: runs at a time (processes), ``>= 1``; each gets ``cpu_count // jobs`` threads,
            and no more than ``OMP_NUM_THREADS`` when that is set (as ``mombs train`` honours it),
            unless its config sets ``threads``.
        progress: a progress bar over runs (needs ``tqdm``).
        on_result: called with ``(run_dir, top1, error)`` as each run ends.

    Raises:
        ValueError: a bad argument or config, naming it.
        RuntimeError: some runs failed (the others finished).
    """
    if isinstance(configs, RunConfig) or not isinstance(configs, (list, tuple)) or not configs:
        raise ValueError(f"configs must be a non-empty list of RunConfig, got {configs!r:.80}")
    for i, cfg in enumerate(configs):
        if not isinstance(cfg, RunConfig):
            raise ValueError(f"configs[{i}] must be a RunConfig, got {type(cfg).__name__}")
        cfg.validate()
    seen = set()
    for cfg in configs:
        name = run_dir_name(cfg)
        if name in seen:  # two workers would write the same folder at once
            raise ValueError(f"configs holds the run {name} twice")
        seen.add(name)
    if isinstance(jobs, np.generic):
        jobs = jobs.item()
    check_int("jobs", jobs, 1)
    if not isinstance(out_dir, (str, os.PathLike)) or not os.fspath(out_dir):
        raise ValueError(f"out_dir={out_dir!r} must be a folder path")
    if not isinstance(progress, bool):
        raise ValueError(f"progress={progress!r} must be True or False")
    if on_result is not None and not callable(on_result):
        raise ValueError(f"on_result={on_result!r} must be callable or None")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir={str(out)!r} exists and is not a folder")
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    threads = _worker_threads(jobs)
    todo = []
    for cfg in configs:
        d = runs / run_dir_name(cfg)
        if _read_results(d / "results.json", quiet=True) is None:  # none, or cut short: the runner sets it aside
            c = dataclasses.replace(cfg, threads=cfg.threads or threads)
            todo.append((dataclasses.asdict(c), str(d)))
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(configs), initial=len(configs) - len(todo), desc="runs")
    errors = []
    if todo:
        if jobs <= 1:
            results_iter = map(_worker, todo)
            pool = None
        else:
            pool = _start_pool(jobs)
            results_iter = pool.imap_unordered(_worker, todo)
        try:
            for run_dir, top1, err in results_iter:
                if err:
                    errors.append(f"{run_dir}: {err}")
                if on_result:
                    on_result(run_dir, top1, err)
                if bar is not None:
                    bar.update(1)
                    if top1 is not None:
                        bar.set_postfix(last=f"{top1:.3f}")
        except BaseException:
            # Ctrl-C or an error in on_result: close() + join() would wait for
            # every queued run; terminate() stops them now. A second Ctrl-C must
            # not cut the cleanup short, so SIGINT waits until it is done.
            if pool is not None:
                with _sigint_deferred():
                    pool.terminate()
                    pool.join()
                pool = None
            raise
        finally:
            if pool is not None:
                pool.close()
                pool.join()
            if bar is not None:
                bar.close()
    if errors:
        raise RuntimeError(f"{len(errors)} run(s) failed:\n" + "\n".join(errors))
    return load_results(out, keys={c.key() for c in configs})


class _sigint_deferred:
    """Context: SIGINT ignored inside (main thread only; elsewhere a no-op)."""

    def __enter__(self):
        self.old = None
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)
        return False


def _read_results(path: Path, *, quiet: bool = False) -> dict | None:
    """A run's results, or ``None`` when there are none or they do not read (cut short, empty): then
    a warning names the file, unless ``quiet`` (the run is about to be redone, and the runner says so)."""
    try:
        res = json.loads(path.read_text())
        if not isinstance(res, dict):
            raise ValueError(f"it holds a {type(res).__name__}, not a run's results")
        return res
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        if not quiet:
            warnings.warn(
                f"{path} cannot be read ({type(err).__name__}: {err}); its run is left out (run the "
                f"same command again to redo it)",
                RuntimeWarning,
                stacklevel=3,
            )
        return None


def load_results(out_dir, keys=None) -> list[dict]:
    """Results of the finished runs under ``out_dir/runs`` (only ``keys``, if given)."""
    found = []
    for path in sorted(Path(out_dir, "runs").glob("*/results.json")):
        res = _read_results(path)
        if res is None:
            continue
        if keys is None or res.get("key") in keys:
            res["run_dir"] = str(path.parent)
            found.append(res)
    return found


def paired_difference(a: dict, b: dict) -> dict | None:
    """Paired comparison of two ``{seed: value}`` dicts on their common seeds.

    Returns:
        ``n``, ``mean`` of ``a - b``, its 95% t-interval ``ci95`` and the
        two-sided paired t-test ``p`` (``None`` when n < 2; scipy's Student
        t), plus the per-seed ``diffs``; ``None`` without common seeds.
    """
    from scipy import stats

    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    d = np.array([a[s] - b[s] for s in seeds], dtype=np.float64)
    out = {"n": len(d), "mean": float(d.mean()), "diffs": d.tolist(), "ci95": None, "p": None}
    if len(d) >= 2:
        se = d.std(ddof=1) / math.sqrt(len(d))
        h = float(stats.t.ppf(0.975, len(d) - 1)) * se
        out["ci95"] = [float(d.mean() - h), float(d.mean() + h)]
        if se > 0:
            out["p"] = float(2 * stats.t.sf(abs(d.mean() / se), len(d) - 1))
        else:  # identical differences: no spread at all
            out["p"] = 1.0 if d.mean() == 0 else 0.0
    return out


#: Fields that name the arm and the replicate of a run, not the cell it belongs to.
_ARM_FIELDS = ("strategy", "seed")


def _cell_fields(res: dict) -> dict:
    """The run's outcome fields less strategy and seed, with defaults filled in
    for fields that older result files do not carry."""
    known = {f.name for f in dataclasses.fields(RunConfig)}
    cfg = RunConfig(**{k: v for k, v in res.get("config", {}).items() if k in known})
    fields = cfg.outcome_fields()
    for k in _ARM_FIELDS:
        fields.pop(k)
    return fields


def _group_key(res: dict) -> tuple:
    """A cell: the label columns plus every config field but strategy and seed, so
    that two configs that differ elsewhere (epochs, subset, noise, ...) never
    overwrite each other's seeds."""
    digest = json.dumps(_cell_fields(res), sort_keys=True) if res.get("config") else ""
    return (res["dataset"], res["batch_size"], res["loss"], digest)


def _short(digest: str) -> str:
    return hashlib.sha1(digest.encode()).hexdigest()[:6]


def summarize(results: list[dict], *, metric: str | None = None, baseline: str = "random") -> list[dict]:
    """One row per cell and strategy: mean, std, n and the paired difference
    against ``baseline`` in the same cell, seed by seed.

    ``metric`` is the result field compared (``None``: each run's own, ``top1``
    for classification, ``dice`` for segmentation, ``froc`` for detection).
    Detection rows also carry the mean sensitivity at 0.5, 1 and 2 false
    positives per image (``sens@0.5``, ...).

    A cell is every config field but strategy and seed (see :func:`_group_key`).
    Cells that share their dataset, batch size and loss but differ elsewhere
    get a short suffix on the dataset label, so that no two rows read the same.
    """
    groups: dict[tuple, dict[str, dict[int, dict]]] = {}
    for r in results:
        runs = groups.setdefault(_group_key(r), {}).setdefault(r["strategy"], {})
        if r["seed"] in runs:  # a second copy would silently replace the first and leave n as it was
            where = [x.get("run_dir") or x.get("key") for x in (runs[r["seed"]], r)]
            raise ValueError(
                f"results hold two runs of strategy={r['strategy']!r}, seed={r['seed']} in the cell "
                f"{r['dataset']} B={r['batch_size']} {r['loss']} ({where[0]} and {where[1]}); "
                f"remove one"
            )
        runs[r["seed"]] = r
    labels: dict[tuple, int] = {}
    for key in groups:
        labels[key[:3]] = labels.get(key[:3], 0) + 1
    rows = []
    for key in sorted(groups):
        by_strategy = groups[key]
        first = next(iter(next(iter(by_strategy.values())).values()))
        recipe = _recipe_of(first)
        m = metric or first.get("metric", recipe.metric)
        base = {s: r[m] for s, r in by_strategy.get(baseline, {}).items()}
        order = sorted(by_strategy, key=lambda s: (s != baseline, s))
        for strategy in order:
            runs = by_strategy[strategy]
            vals = np.array([r[m] for r in runs.values()], dtype=np.float64)
            label = key[0] if labels[key[:3]] == 1 else f"{key[0]} [{_short(key[3])}]"
            row = {
                "dataset": label,
                "batch_size": key[1],
                "loss": key[2],
                "strategy": strategy,
                "metric": m,
                "train_size": first.get("train_size"),
                "n": len(vals),
                "mean": float(vals.mean()),
                "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                "seeds": sorted(runs),
            }
            if strategy != baseline and base:
                row["vs_baseline"] = paired_difference({s: r[m] for s, r in runs.items()}, base)
            row.update(recipe.row_extras(list(runs.values())))
            row.update(_noise_extras(list(runs.values())))
            rows.append(row)
    return rows


def _recipe_of(res: dict):
    """The recipe of a result file (files from before tasks existed are the default task's)."""
    return get_recipe(res.get("task") or DEFAULT_TASK)


def _mean_of(values) -> float | None:
    """The mean of the values that are defined (``None`` and NaN left out), or ``None``."""
    v = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(v)) if v else None


def _noise_extras(runs: list[dict]) -> dict:
    """How the quadrant and the difficulty found planted noise, and its memorization, over a cell's runs.

    A run whose quadrant flagged nothing has no precision: it is left out of
    the mean rather than counted as 0.
    """
    extra = {}
    found = [r["noise_detection"] for r in runs if r.get("noise_detection")]
    if found:
        for name, field in (("poor_precision", "precision"), ("poor_recall", "recall"), ("auroc", "auroc_difficulty")):
            value = _mean_of(d.get(field) for d in found)
            if value is not None:
                extra[name] = value
    fit = _mean_of(r.get("noisy_fit") for r in runs)
    if fit is not None:
        extra["noisy_fit"] = fit
    return extra
