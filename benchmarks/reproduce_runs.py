"""Do committed study runs still reproduce bit for bit through the CLI? Old commit vs new tree, one machine.

    python benchmarks/reproduce_runs.py [--files F.json ...] [--old-commit SHA] [--new-commit SHA]
        [--jobs 2] [--work DIR] [--out benchmarks/results/reproduce_runs_cpu.json]

For each committed result file (``benchmarks/results/{classification,segmentation,
detection}/*.json``) the run's ``config`` is written as a YAML file (``device``
and ``tags`` dropped, ``threads`` as committed) and trained twice with
``python -m mombs.cli train --config FILE --out DIR --no-progress``: once with the
new code (the working tree, or ``--new-commit``) and once with ``--old-commit``,
each checked out into a temporary ``git worktree`` and run in a subprocess with
this Python, ``PYTHONPATH`` and the working directory pointed at that tree (the
run's ``environment.commit`` is checked to name it).

Compared, with Python ``==`` on the parsed JSON (NaN equal to NaN): the run key,
the metric (``top1``/``dice``/``froc``), ``<metric>_best_val``,
``best_val_epoch``, ``quadrant_counts``, ``noise_detection`` and every curve but
``seconds``; a field only the second result has (added since the first was made)
is listed in ``added_fields``, not counted as a difference. A difference is reported as the first differing field, the first
epoch at which a curve differs (0-based) and the largest absolute difference,
over all differing numbers and per field (counts and floats alike).

Float kernels differ between CPU models, so a committed file may reproduce only
on the CPU it was made on (``environment.cpu``). The claim "the refactor changed
nothing" therefore rests on old == new on this machine (``identical_to_old_commit``;
the exit code is 1 if any run differs or fails); new == committed file is reported
beside it with both CPUs (``identical_to_committed``) and does not set the exit code.

``--old-commit`` defaults to 43dc05a, the last commit before the package
restructuring (moving modules under ``mombs/recipes/``; a76611d after it only
added ``mombs/_checks.py``, which nothing imported). The defaults are one cheap
committed run per task, each with a planned strategy (``mixed``) so that the
assessor, its disturbance passes and the planner are exercised, not only
``random``: see ``DEFAULT_FILES``. At most ``--jobs`` runs (default 2) train at
once, each with the committed thread count (1).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

#: The last commit before the restructuring (see the module docstring).
DEFAULT_OLD_COMMIT = "43dc05aed617329fde878aeacfec7c1828bbe61a"

#: One cheap committed run per task, each with the planned ``mixed`` strategy.
#: Classification: the cheapest ``mixed`` run (Fashion-MNIST-NL, subset 10000, 12
#: epochs, batch 32; 125 s when made; ``mixed-loss``/``random`` are cheaper but skip
#: the disturbance passes). No committed classification file can match the current
#: code on any CPU: all predate the planner and noise changes of 26 Nov (4fec923
#: and 43dc05a differ from the pivot epoch on, on one machine), and the AMD-made
#: ones the one-path runner too; for classification only old == new carries
#: information. Segmentation: the cheapest ``mixed`` run at 30 training slices
#: (13 s). Detection: the cheapest ``mixed`` run at 50 training slices (33 s).
DEFAULT_FILES = (
    "classification/fashion-mnist-mixed-ce-b32-s0-593814e044.json",
    "segmentation/synthetic-ct-mixed-dice-ce-b8-s1-e95c280072.json",
    "detection/synthetic-det-mixed-rpn-b4-s1-45f05d402f.json",
)

#: Config fields that do not belong in the YAML: the device is this machine's (the
#: default, cpu), and tags are labels only.
_DROPPED = ("device", "tags")

_ENV = """
import json, sys
import mombs
assert mombs.__file__.startswith(sys.argv[1]), mombs.__file__
from mombs.envinfo import environment_info
print(json.dumps(environment_info("cpu")))
"""


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


def _cpu_name() -> str:
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def _python_env(tree: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree)
    return env


def _environment(tree: Path) -> dict:
    """``environment_info("cpu")`` as the code in ``tree`` reports it."""
    proc = subprocess.run(
        [sys.executable, "-c", _ENV, str(tree)], cwd=tree, env=_python_env(tree), capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"cannot import mombs from {tree}: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def config_yaml(committed: dict) -> str:
    """The committed run's config as the YAML file the CLI reads."""
    import yaml

    cfg = {k: v for k, v in committed["config"].items() if k not in _DROPPED}
    threads = committed["config"].get("threads") or committed.get("environment", {}).get("torch_threads")
    if threads is not None:
        cfg["threads"] = threads
    return yaml.safe_dump(cfg, sort_keys=False)


def train(tree: Path, config: Path, out: Path) -> dict:
    """One ``mombs train`` through the CLI of the code in ``tree``: its ``results.json`` and wall time."""
    if out.exists():  # the CLI resumes a finished run folder; every check trains from scratch
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "mombs.cli", "train", "--config", str(config), "--out", str(out), "--no-progress"],
        cwd=tree,
        env=_python_env(tree),
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"mombs train failed in {tree} (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    folders = [p.parent for p in out.glob("*/results.json")]
    if len(folders) != 1:
        raise RuntimeError(f"expected one run folder with results.json under {out}, found {len(folders)}")
    res = json.loads((folders[0] / "results.json").read_text())
    return {
        "result": res,
        "wall_seconds": wall,
        "run_folder": folders[0].name,
        "printed": json.loads(proc.stdout.strip().splitlines()[-1]),
    }


def compared_fields(res: dict) -> dict:
    """The fields of one result that must reproduce exactly, by name."""
    m = res.get("metric", "top1")
    fields = {
        "key": res.get("key"),
        m: res.get(m),
        f"{m}_best_val": res.get(f"{m}_best_val"),
        "best_val_epoch": res.get("best_val_epoch"),
        "quadrant_counts": res.get("quadrant_counts"),
        "noise_detection": res.get("noise_detection"),
    }
    fields.update({f"curves.{c}": v for c, v in res.get("curves", {}).items() if c != "seconds"})
    return fields


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True  # a NaN reproduced is a NaN
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _diffs(a, b, path: str, added: list):
    """``(path, |a - b| or None)`` for every leaf where ``a`` and ``b`` differ, in order.

    A key only ``b`` has is a field added since ``a`` was made: listed in ``added``,
    not a difference (the committed detection files predate ``auroc_unmatched``).
    """
    if isinstance(a, dict) and isinstance(b, dict):
        added.extend(f"{path}.{k}" for k in b if k not in a)
        for k in a:
            if k not in b:
                yield f"{path}.{k} (missing)", None
            else:
                yield from _diffs(a[k], b[k], f"{path}.{k}", added)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            yield f"{path} (length {len(a)} vs {len(b)})", None
        for i, (x, y) in enumerate(zip(a, b)):
            yield from _diffs(x, y, f"{path}[{i}]", added)
    elif not _same(a, b):
        num = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
        yield path, abs(a - b) if num else None


def compare(first: dict, second: dict) -> dict:
    """Exact comparison of the reproduced fields of two results (``first`` is the reference)."""
    fa, fb = compared_fields(first), compared_fields(second)
    diffs, added = [], [n for n in fb if n not in fa]
    for name in fa:
        if name not in fb:
            diffs.append((f"{name} (missing)", None))
        elif fa[name] is None and fb[name] is not None:
            added.append(name)
        else:
            diffs.extend(_diffs(fa[name], fb[name], name, added))
    deltas = [d for _, d in diffs if d is not None and not math.isnan(d)]
    by_field = {}
    for path, d in diffs:
        field = path.split("[")[0].split(" ")[0]
        if field.startswith(("quadrant_counts.", "noise_detection.")):
            field = field.split(".")[0]
        by_field[field] = (
            max(by_field.get(field) or 0, d) if d is not None and not math.isnan(d) else by_field.get(field)
        )
    epochs = [int(path.split("[")[1].split("]")[0]) for path, _ in diffs if path.startswith("curves.") and "[" in path]
    return {
        "identical": not diffs,
        "first_difference": diffs[0][0] if diffs else None,
        "first_differing_epoch": min(epochs) if epochs else None,
        "differing_values": len(diffs),
        "max_abs_difference": max(deltas) if deltas else None,
        "max_abs_difference_by_field": by_field,
        "added_fields": added,
    }


def _values(res: dict) -> dict:
    m = res.get("metric", "top1")
    return {m: res.get(m), f"{m}_best_val": res.get(f"{m}_best_val"), "best_val_epoch": res.get("best_val_epoch")}


class _Tree:
    """A commit checked out into a temporary worktree (``None``: the working tree itself)."""

    def __init__(self, commit: str | None, scratch: Path, name: str):
        self.commit = _git("rev-parse", "--verify", f"{commit}^{{commit}}") if commit else None
        self.path = ROOT
        if self.commit:
            self.path = scratch / name
            _git("worktree", "add", "--detach", str(self.path), self.commit)

    def remove(self) -> None:
        if self.commit:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(self.path)], capture_output=True
            )

    def check(self, res: dict) -> None:
        """The run was made by this tree's code: its environment names the commit."""
        made = (res.get("environment") or {}).get("commit") or ""
        want = self.commit or _git("rev-parse", "HEAD")
        if not made.startswith(want):
            raise RuntimeError(f"run made by commit {made!r}, expected {want}: the wrong mombs was imported")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--files",
        nargs="+",
        default=list(DEFAULT_FILES),
        help="committed result files, relative to benchmarks/results/ or paths (default: one per task)",
    )
    p.add_argument(
        "--old-commit",
        default=DEFAULT_OLD_COMMIT,
        help=f"the code before the change (default {DEFAULT_OLD_COMMIT[:7]}, before the restructuring)",
    )
    p.add_argument("--new-commit", help="the code after the change (default: the working tree)")
    p.add_argument("--jobs", type=int, default=2, help="runs at once (default 2)")
    p.add_argument("--work", help="folder for configs and run folders, kept (default: a temporary folder, removed)")
    p.add_argument("--out", default=str(RESULTS / "reproduce_runs_cpu.json"), help="where to write the JSON")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs={args.jobs} must be >= 1")

    files = []
    for f in args.files:
        path = Path(f) if Path(f).is_file() else RESULTS / f
        if not path.is_file():
            p.error(f"--files: {f} is neither a file nor one under {RESULTS}")
        files.append(path.resolve())

    scratch = Path(tempfile.mkdtemp(prefix="reproduce_runs_"))
    work = Path(args.work).resolve() if args.work else scratch
    work.mkdir(parents=True, exist_ok=True)
    trees = {}
    try:
        trees["old"] = _Tree(args.old_commit, scratch, "old")
        trees["new"] = _Tree(args.new_commit, scratch, "new")
        env = {side: _environment(t.path) for side, t in trees.items()}

        jobs = []  # (file index, side), the costliest runs first so that the pairs finish together
        committed = [json.loads(f.read_text()) for f in files]
        for i, (f, c) in enumerate(zip(files, committed)):
            (work / f"{i}_{f.stem}.yaml").write_text(config_yaml(c))
            jobs += [(i, "new"), (i, "old")]
        jobs.sort(key=lambda j: -float(committed[j[0]].get("seconds") or 0))

        def one(job):
            i, side = job
            try:
                got = train(trees[side].path, work / f"{i}_{files[i].stem}.yaml", work / f"{i}_{side}")
                trees[side].check(got["result"])
                return job, got, None
            except Exception as err:  # noqa: BLE001 - reported per run, the others go on
                return job, None, f"{type(err).__name__}: {err}"

        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            done = {job: (got, err) for job, got, err in pool.map(one, jobs)}
    finally:
        for t in trees.values():
            t.remove()
        shutil.rmtree(scratch, ignore_errors=True)  # the worktrees, and the runs unless --work was given

    cpu = _cpu_name()
    runs, ok = [], True
    for i, (f, c) in enumerate(zip(files, committed)):
        (new, new_err), (old, old_err) = done[(i, "new")], done[(i, "old")]
        row = {
            "file": str(f.relative_to(ROOT)) if f.is_relative_to(ROOT) else str(f),
            "task": c.get("task", c["config"].get("task", "classification")),
            "key": c.get("key"),
            "strategy": c["config"].get("strategy"),
            "train_size": c.get("train_size"),
            "cpu": {
                "this": cpu,
                "committed": (c.get("environment") or {}).get("cpu"),
                "same": cpu == (c.get("environment") or {}).get("cpu"),
            },
            "committed_commit": (c.get("environment") or {}).get("commit"),
        }
        if new_err or old_err:
            ok = False
            row["error"] = {"new": new_err, "old": old_err}
        if new:
            row["identical_to_committed"] = compare(c, new["result"])
        if new and old:
            row["identical_to_old_commit"] = compare(old["result"], new["result"])
            ok &= row["identical_to_old_commit"]["identical"]
        row["values"] = {
            "committed": _values(c),
            "new": _values(new["result"]) if new else None,
            "old": _values(old["result"]) if old else None,
        }
        row["seconds"] = {
            "committed": c.get("seconds"),
            **{
                side: None if r is None else {"training": r["result"].get("seconds"), "wall": r["wall_seconds"]}
                for side, r in (("new", new), ("old", old))
            },
        }
        runs.append(row)

    report = {
        "command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
        "claim": "identical_to_old_commit: the change left every run as it was, on this machine; "
        "identical_to_committed: this machine also reproduces the committed file",
        "old_commit": trees["old"].commit,
        "new": trees["new"].commit or "working tree",
        "environment": env["new"],
        "old_environment": env["old"],
        "jobs": args.jobs,
        "all_identical_to_old_commit": ok,
        "all_identical_to_committed": all(r.get("identical_to_committed", {}).get("identical", False) for r in runs),
        "runs": runs,
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
