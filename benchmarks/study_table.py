"""The README's study tables, from the committed per-run files.

    python benchmarks/study_table.py                                  # benchmarks/results/classification
    python benchmarks/study_table.py --dir some/folder --markdown

Groups runs by (dataset, batch size, loss, strategy); the last column is the
paired difference against random with the same seed (95% t-interval, paired t-test).
Cells with fewer seeds than ``--min-seeds`` are flagged.

Every file must be what a study config wrote: its name is its run's folder name
(the key recomputed from its config), and the runs of a table cell (dataset,
batch size, loss) agree on every config field but strategy and seed, with one
run per strategy and seed. A file that breaks this, say a 1-epoch run exported
by an ad-hoc ``--set epochs=1``, is refused by name instead of being averaged in.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import Counter
from pathlib import Path

from mombs.compare import summarize
from mombs.report import format_table
from mombs.train import RunConfig, run_dir_name

#: Fields that may differ between the runs of one cell.
_ARM_FIELDS = ("strategy", "seed")


def _config(path: Path, res: dict) -> RunConfig:
    known = {f.name for f in dataclasses.fields(RunConfig)}
    cfg = res.get("config")
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: no config; not a results file of a mombs run")
    return RunConfig(**{k: v for k, v in cfg.items() if k in known})


def _check_cells(runs: list[tuple[Path, dict, dict]]) -> None:
    """Refuses runs whose config differs from the rest of their cell, and repeated seeds."""
    cells: dict[tuple, list[tuple[Path, dict, dict]]] = {}
    for path, res, fields in runs:
        cells.setdefault((res["dataset"], res["batch_size"], res["loss"]), []).append((path, res, fields))
    for (dataset, batch, loss), members in sorted(cells.items(), key=lambda kv: str(kv[0])):
        digests = Counter(json.dumps(f, sort_keys=True) for _, _, f in members)
        if len(digests) > 1:
            common = json.loads(digests.most_common(1)[0][0])
            odd = []
            for path, _, fields in members:
                diff = {k: v for k, v in fields.items() if common.get(k) != v}
                if diff:
                    was = ", ".join(f"{k}={v!r} (cell: {common.get(k)!r})" for k, v in sorted(diff.items()))
                    odd.append(f"  {path}: {was}")
            raise ValueError(
                f"{len(odd)} file(s) differ from the config of their cell ({dataset}, B={batch}, "
                f"{loss}) in more than strategy and seed; a study cell holds the runs of one "
                f"config. Move them out of the folder:\n" + "\n".join(odd)
            )
        seen: dict[tuple, Path] = {}
        for path, res, _ in members:
            arm = (res["strategy"], res["seed"])
            if arm in seen:
                raise ValueError(
                    f"{path} and {seen[arm]} are both {res['strategy']} seed {res['seed']} of the "
                    f"cell ({dataset}, B={batch}, {loss}); keep one"
                )
            seen[arm] = path


def load(folder) -> list[dict]:
    """The study's runs in ``folder``, labelled by cell.

    Raises:
        ValueError: a file whose name is not its run's key, or whose config
            differs from its cell's (named, with the differing fields).
    """
    runs, checked = [], []
    for path in sorted(Path(folder).glob("*.json")):
        res = json.loads(path.read_text())
        cfg = _config(path, res)
        if path.stem != run_dir_name(cfg) or res.get("key") != cfg.key():
            raise ValueError(
                f"{path}: the name does not match its config (expected {run_dir_name(cfg)}.json, "
                f"key {cfg.key()}, file says {res.get('key')}); not a file a study config wrote"
            )
        # The regime search runs on other data than the core grid: keep them apart.
        regime = res.get("config", {}).get("tags", {}).get("regime")
        if res.get("task") in ("segmentation", "detection"):  # the training-size regimes are the cells
            res["dataset"] = f"{res['dataset']} n={res['train_size']}"
        elif regime:
            res["dataset"] = f"{res['dataset']} ({regime})"
        elif res.get("config", {}).get("noise", "none") != "none":
            res["dataset"] = f"{res['dataset']}-NL"
        elif res.get("config", {}).get("imbalance"):
            res["dataset"] = f"{res['dataset']}-LT"
        fields = cfg.outcome_fields()
        for k in _ARM_FIELDS:
            fields.pop(k)
        runs.append(res)
        checked.append((path, res, fields))
    _check_cells(checked)
    return runs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--dir",
        default="benchmarks/results/classification",
        help="folder of result files (or benchmarks/results/segmentation, .../detection)",
    )
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--min-seeds", type=int, default=5)
    args = p.parse_args(argv)
    try:
        runs = load(args.dir)
    except ValueError as err:
        raise SystemExit(f"study_table: {err}") from None
    rows = summarize(runs)
    print(format_table(rows, markdown=args.markdown))
    short = [
        f"{r['dataset']} B={r['batch_size']} {r['strategy']}: {r['n']} seeds" for r in rows if r["n"] < args.min_seeds
    ]
    print(f"\n{len(runs)} runs; cells with fewer than {args.min_seeds} seeds: {len(short)}")
    for line in short:
        print("  " + line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
