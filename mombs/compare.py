"""Grids of runs (strategies x seeds x batch sizes x losses) and their paired statistics.

Runs go to ``<out>/runs/<name>/``; a finished run (one with ``results.json``)
is never redone and an interrupted one resumes from its checkpoint, so a killed
``compare`` picks up where it stopped. Runs execute in worker processes,
``jobs`` at a time, each with its share of the CPU threads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np

from .stats import t_quantile, t_two_sided_p
from .train import RunConfig, run, run_dir_name

__all__ = ["expand_grid", "load_results", "paired_difference", "run_grid", "summarize"]


def expand_grid(base: RunConfig, *, strategies, seeds, batch_sizes=None, losses=None) -> list[RunConfig]:
    """Every combination, seeds innermost so that early stops still pair up."""
    configs = []
    for b in batch_sizes or [base.batch_size]:
        for loss in losses or [base.loss]:
            for seed in seeds:
                for s in strategies:
                    configs.append(dataclasses.replace(base, strategy=s, seed=int(seed), batch_size=int(b),
                                                       loss=loss, tags=dict(base.tags)).validate())
    return configs


def _worker(args):
    cfg_dict, run_dir = args
    cfg = RunConfig(**cfg_dict)
    try:
        res = run(cfg, run_dir)
        return run_dir, res["top1"], None
    except Exception as err:  # report and carry on with the rest of the grid
        return run_dir, None, f"{type(err).__name__}: {err}"


def run_grid(configs: list[RunConfig], out_dir, *, jobs: int = 1, progress: bool = True,
             on_result=None) -> list[dict]:
    """Runs every config that has no results yet; returns all results found.

    Args:
        configs: the runs.
        out_dir: the comparison's folder; runs go to ``out_dir/runs``.
        jobs: runs at a time (processes); each gets ``cpu_count // jobs`` threads.
        progress: a progress bar over runs (needs ``tqdm``).
        on_result: called with ``(run_dir, top1, error)`` as each run ends.
    """
    out = Path(out_dir)
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    todo = []
    for cfg in configs:
        d = runs / run_dir_name(cfg)
        if not (d / "results.json").exists():
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
            pool = mp.get_context("spawn").Pool(jobs, maxtasksperchild=1)
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
        finally:
            if pool is not None:
                pool.close()
                pool.join()
            if bar is not None:
                bar.close()
    if errors:
        raise RuntimeError(f"{len(errors)} run(s) failed:\n" + "\n".join(errors))
    return load_results(out, keys={c.key() for c in configs})


def load_results(out_dir, keys=None) -> list[dict]:
    """Results of the finished runs under ``out_dir/runs`` (only ``keys``, if given)."""
    found = []
    for path in sorted(Path(out_dir, "runs").glob("*/results.json")):
        res = json.loads(path.read_text())
        if keys is None or res.get("key") in keys:
            res["run_dir"] = str(path.parent)
            found.append(res)
    return found


def paired_difference(a: dict, b: dict) -> dict | None:
    """Paired comparison of two ``{seed: value}`` dicts on their common seeds.

    Returns:
        ``n``, ``mean`` of ``a - b``, its 95% t-interval ``ci95`` and the
        two-sided paired t-test ``p`` (``None`` when n < 2), plus the per-seed
        ``diffs``; ``None`` without common seeds. The t distribution is exact
        (:mod:`mombs.stats`), with or without scipy.
    """
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    d = np.array([a[s] - b[s] for s in seeds], dtype=np.float64)
    out = {"n": len(d), "mean": float(d.mean()), "diffs": d.tolist(), "ci95": None, "p": None}
    if len(d) >= 2:
        se = d.std(ddof=1) / math.sqrt(len(d))
        h = t_quantile(0.975, len(d) - 1) * se
        out["ci95"] = [float(d.mean() - h), float(d.mean() + h)]
        if se > 0:
            out["p"] = t_two_sided_p(float(d.mean() / se), len(d) - 1)
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


def summarize(results: list[dict], *, metric: str = "top1", baseline: str = "random") -> list[dict]:
    """One row per cell and strategy: mean, std, n and the paired difference
    against ``baseline`` in the same cell, seed by seed.

    A cell is every config field but strategy and seed (see :func:`_group_key`).
    Cells that share their dataset, batch size and loss but differ elsewhere
    get a short suffix on the dataset label, so that no two rows read the same.
    """
    groups: dict[tuple, dict[str, dict[int, dict]]] = {}
    for r in results:
        groups.setdefault(_group_key(r), {}).setdefault(r["strategy"], {})[r["seed"]] = r
    labels: dict[tuple, int] = {}
    for key in groups:
        labels[key[:3]] = labels.get(key[:3], 0) + 1
    rows = []
    for key in sorted(groups):
        by_strategy = groups[key]
        base = {s: r[metric] for s, r in by_strategy.get(baseline, {}).items()}
        order = sorted(by_strategy, key=lambda s: (s != baseline, s))
        for strategy in order:
            runs = by_strategy[strategy]
            vals = np.array([r[metric] for r in runs.values()], dtype=np.float64)
            label = key[0] if labels[key[:3]] == 1 else f"{key[0]} [{_short(key[3])}]"
            row = {"dataset": label, "batch_size": key[1], "loss": key[2], "strategy": strategy,
                   "n": len(vals), "mean": float(vals.mean()),
                   "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                   "seeds": sorted(runs)}
            if strategy != baseline and base:
                row["vs_baseline"] = paired_difference({s: r[metric] for s, r in runs.items()}, base)
            extra = {}
            for name in ("many", "medium", "few"):
                v = [r["shot_top1"][name] for r in runs.values() if r.get("shot_top1", {}).get(name) is not None]
                if v:
                    extra[name] = float(np.mean(v))
            det = [r["noise_detection"] for r in runs.values() if r.get("noise_detection")]
            if det:
                extra["poor_precision"] = float(np.mean([d["precision"] for d in det]))
                extra["poor_recall"] = float(np.mean([d["recall"] for d in det]))
            fits = [r["noisy_fit"] for r in runs.values() if r.get("noisy_fit") is not None]
            if fits:
                extra["noisy_fit"] = float(np.mean(fits))
            row.update(extra)
            rows.append(row)
    return rows
