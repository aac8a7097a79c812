"""The ``mombs`` command: ``mombs train`` runs one run, ``mombs compare`` a grid.

Options come from a YAML file (``--config``), then from ``--set key=value``
overrides; the resolved config is written next to the results. This module only
parses and calls.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .train import RunConfig

_GRID_KEYS = ("strategies", "seeds", "batch_sizes", "losses", "jobs", "out", "title", "export")


def _parse_value(text: str):
    import yaml

    return yaml.safe_load(text)


def load_config(path: str | None, overrides: list[str]) -> dict:
    """YAML file (optional) updated by ``key=value`` overrides (values parsed as YAML)."""
    cfg = {}
    if path:
        import yaml

        p = Path(path)
        if not p.is_file():
            raise SystemExit(f"mombs: config file {path} not found")
        cfg = yaml.safe_load(p.read_text()) or {}
        if not isinstance(cfg, dict):
            raise SystemExit(f"mombs: {path} must hold a mapping of option: value")
    for item in overrides:
        if "=" not in item:
            raise SystemExit(f"mombs: --set takes key=value, got {item!r}")
        key, value = item.split("=", 1)
        cfg[key.strip().replace("-", "_")] = _parse_value(value)
    return cfg


def _run_config(options: dict) -> RunConfig:
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(options) - fields - set(_GRID_KEYS))
    if unknown:
        raise SystemExit(f"mombs: unknown option(s) {unknown}; known: {sorted(fields | set(_GRID_KEYS))}")
    try:
        return RunConfig(**{k: v for k, v in options.items() if k in fields}).validate()
    except (TypeError, ValueError) as err:
        raise SystemExit(f"mombs: {err}") from err


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mombs", description="Mixed-order minibatch sampling studies.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (("train", "train one run"), ("compare", "run a grid of strategies x seeds and report")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--config", help="YAML file of options")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override an option (repeatable), e.g. --set epochs=5")
        p.add_argument("--out", help="output folder (default: from the config, else runs/<command>)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    options = load_config(args.config, args.set)
    cfg = _run_config(options)
    out = Path(args.out or options.get("out") or f"runs/{args.command}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "resolved_config.json").write_text(json.dumps(options, indent=1, default=str))
    if args.command == "train":
        from .train import run, run_dir_name

        res = run(cfg, out / run_dir_name(cfg), progress=not args.no_progress)
        print(json.dumps({k: res[k] for k in ("dataset", "strategy", "batch_size", "seed", "top1",
                                               "top1_best_val", "seconds")}))
        return 0

    from .compare import expand_grid, run_grid, summarize
    from .report import format_table, write_report

    configs = expand_grid(cfg, strategies=options.get("strategies", ["random", "mixed"]),
                          seeds=options.get("seeds", [0, 1, 2]), batch_sizes=options.get("batch_sizes"),
                          losses=options.get("losses"))
    on_result = None
    if options.get("export"):
        export = Path(options["export"])
        export.mkdir(parents=True, exist_ok=True)

        def on_result(run_dir, top1, err):  # one file per finished run, as soon as it finishes
            if err is None:
                src = Path(run_dir) / "results.json"
                (export / f"{Path(run_dir).name}.json").write_text(src.read_text())

    results = run_grid(configs, out, jobs=int(options.get("jobs", 1)), progress=not args.no_progress,
                       on_result=on_result)
    if options.get("export"):  # runs finished in an earlier sitting too
        for res in results:
            dst = Path(options["export"]) / f"{Path(res['run_dir']).name}.json"
            if not dst.exists():
                dst.write_text((Path(res["run_dir"]) / "results.json").read_text())
    rows = summarize(results)
    print(format_table(rows))
    path = write_report(results, rows, out, title=options.get("title", "mombs comparison"))
    print(f"\nreport: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
