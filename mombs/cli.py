"""The ``mombs`` command: ``mombs train`` runs one run, ``mombs compare`` a grid,
``mombs diagnose RUN_DIR`` writes a finished run's data-quality table and report.

Options come from a YAML file (``--config``), then from ``--set key=value``
overrides; every one is checked before any data is read, and the resolved
config is written next to the results. This module only parses and calls.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings
from pathlib import Path

from ._atomic import atomic_write
from ._warning_line import warning_line
from .train import RunConfig

#: Options of ``compare`` that are not fields of a run.
_GRID_KEYS = ("strategies", "seeds", "batch_sizes", "losses", "jobs", "out", "title", "export")
_GRID_DEFAULTS = {
    "strategies": ["random", "mixed"],
    "seeds": [0, 1, 2],
    "batch_sizes": None,
    "losses": None,
    "jobs": 1,
    "title": "mombs comparison",
}
#: Overrides after which a config's runs are still the ones it describes: they
#: change where runs go, how fast they run and where the data is read from.
_EXPORT_SAFE = ("jobs", "threads", "out", "title", "data_dir", "export")

_EPILOG = """\
export: a config's `export: <folder>` copies each finished run's results.json
there (the study configs export to benchmarks/results/<task>). It
applies only to the config as it stands: a --set that changes its runs (say
--set epochs=1 or --set seeds=[0]) keeps them in the run folder alone and says
so. Overrides that keep the runs as they are (jobs, threads, out, title,
data_dir) export as usual. --set export=true exports anyway, --set
export=<folder> exports to another folder, --set export=false not at all. An
exported file that already exists is never overwritten.

Ctrl-C stops at once, at any jobs; finished runs and the checkpoints of
unfinished ones are kept, and the same command resumes them.
"""


def _fail(message: str) -> SystemExit:
    return SystemExit(f"mombs: {message}")


def _yaml_problem(err) -> tuple[str, str]:
    """``(", line L, column C", problem)`` of a YAML error, without the 25-line dump."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None) or str(err).strip().splitlines()[0]
    context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and start is not None and start is not mark:
        problem = f"{context} that starts on line {start.line + 1}: {problem}"
    return where, problem


def _parse_value(text: str, item: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        _, problem = _yaml_problem(err)
        raise _fail(
            f"--set {item}: the value is not valid YAML ({problem}); quote a string that holds special characters"
        ) from None


def _read_config_file(path: str | None) -> dict:
    if not path:
        return {}
    import yaml

    p = Path(path)
    if not p.is_file():
        raise _fail(f"config file {path} not found")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise _fail(f"cannot read config file {path}: {err}") from None
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as err:
        where, problem = _yaml_problem(err)
        raise _fail(f"{path}{where}: not valid YAML ({problem})") from None
    cfg = {} if cfg is None else cfg
    if not isinstance(cfg, dict):
        raise _fail(f"{path} must hold a mapping of option: value, got a {type(cfg).__name__}")
    bad = [k for k in cfg if not isinstance(k, str)]
    if bad:
        raise _fail(f"{path}: option names must be strings, got {bad[0]!r}")
    return cfg


def _parse_overrides(overrides: list[str]) -> dict:
    out = {}
    for item in overrides:
        if "=" not in item:
            raise _fail(f"--set takes key=value, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if not key:
            raise _fail(f"--set takes key=value, got {item!r} (no key)")
        out[key] = _parse_value(value, item)
    return out


def load_config(path: str | None, overrides: list[str]) -> dict:
    """YAML file (optional) updated by ``key=value`` overrides (values parsed as YAML).

    Raises:
        SystemExit: a missing file, or YAML that does not parse (one line naming
            the file and the line, or the ``--set`` item).
    """
    return {**_read_config_file(path), **_parse_overrides(overrides)}


def _run_config(options: dict) -> RunConfig:
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(options) - fields - set(_GRID_KEYS))
    if unknown:
        raise _fail(f"unknown option(s) {unknown}; known: {sorted(fields | set(_GRID_KEYS))}")
    try:
        return RunConfig(**{k: v for k, v in options.items() if k in fields}).validate()
    except (TypeError, ValueError) as err:
        raise _fail(str(err)) from None


def _path_option(name: str, value) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _fail(f"{name}={value!r} must be a folder path")
    p = Path(value)
    if p.exists() and not p.is_dir():
        raise _fail(f"{name}={value!r} exists and is not a folder")
    return p


def _effective(options: dict, key: str):
    """What an option amounts to: its value, else its default."""
    if key in options:
        return options[key]
    if key in _GRID_DEFAULTS:
        return _GRID_DEFAULTS[key]
    f = {f.name: f for f in dataclasses.fields(RunConfig)}.get(key)
    if f is None:
        return None
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _export_folder(config_path, file_opts: dict, set_opts: dict) -> tuple[Path | None, str | None]:
    """``(folder to export to or None, a note to print or None)``: see ``_EPILOG``."""
    from_file = file_opts.get("export")
    if from_file is True:
        raise _fail(f"{config_path}: export: true needs a folder; write export: <folder>")
    if from_file is not False:
        _path_option("export", from_file)
    if "export" in set_opts:
        given = set_opts["export"]
        if given is True:
            if not from_file:
                which = f"{config_path} names none" if config_path else "no --config was given"
                raise _fail(
                    f"export=true exports to the config file's export folder, and {which}; give export=<folder>"
                )
            return Path(from_file), None
        if given is None or given is False:
            return None, None
        return _path_option("export", given), None
    if not from_file:
        return None, None
    merged = {**file_opts, **set_opts}
    changed = [k for k in set_opts if k not in _EXPORT_SAFE and _effective(merged, k) != _effective(file_opts, k)]
    if changed:
        what = ", ".join(f"{k}={set_opts[k]!r}" for k in changed)
        return None, (
            f"mombs: not exporting to {from_file}: {what} change(s) the runs of {config_path}; "
            f"they stay in the run folder (add --set export=true to export them anyway)"
        )
    return Path(from_file), None


def _copy_result(run_dir, export: Path) -> None:
    """Exports one finished run; an existing file is a committed record: left alone."""
    dst = export / f"{Path(run_dir).name}.json"
    if dst.exists():
        return
    text = (Path(run_dir) / "results.json").read_text()
    atomic_write(dst, lambda tmp: tmp.write_text(text))


def _interrupted(out: Path) -> SystemExit:
    print(
        f"mombs: interrupted; finished runs and checkpoints are kept in {out}; run the same command again to resume",
        file=sys.stderr,
    )
    return SystemExit(130)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mombs", description="Mixed-order minibatch sampling studies.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (("train", "train one run"), ("compare", "run a grid of strategies x seeds and report")):
        p = sub.add_parser(
            name,
            help=helptext,
            description=helptext,
            epilog=_EPILOG if name == "compare" else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--config", help="YAML file of options")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override an option (repeatable), e.g. --set epochs=5",
        )
        p.add_argument("--out", help="output folder (default: from the config, else runs/<command>)")
        p.add_argument("--data-dir", help="the data folder (same as --set data_dir=...); must exist")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.add_argument("--debug", action="store_true", help="show the full traceback of an error (also: MOMBS_DEBUG=1)")
    d = sub.add_parser(
        "diagnose",
        help="data-quality table and report of a finished `mombs train` run",
        description="Writes RUN_DIR/diagnose/data_quality.csv (and .parquet with pyarrow), "
        "report.md and the data maps, from the run's assessment.npz, its "
        "label_issues.npz (masks and boxes) and, when the run kept it "
        "(--set history=true), its history.npz.",
    )
    d.add_argument("run_dir", help="a finished `mombs train` run folder")
    d.add_argument("--out", help="output folder (default: RUN_DIR/diagnose)")
    d.add_argument(
        "--score",
        default="auto",
        help="label-issue score (higher = more likely wrong). Class labels: auto (aum with a history, "
        "else loss), quadrant, loss, aum, confidence, combined. Masks: auto (disagreement), "
        "region_error, area, cleanlab, loss, difficulty, quadrant_score. Boxes: auto (box_issue), "
        "overlooked, badly_located, spurious, cleanlab, loss, difficulty, quadrant_score",
    )
    d.add_argument("--no-images", action="store_true", help="no picture grids (do not rebuild the data)")
    d.add_argument("--per-quadrant", type=int, default=16, help="pictures per quadrant grid (default 16)")
    d.add_argument("--debug", action="store_true", help="show the full traceback of an error (also: MOMBS_DEBUG=1)")
    return parser


def _debugging(args) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get("MOMBS_DEBUG", "") not in ("", "0")


def _one_line(err: BaseException) -> SystemExit:
    """An error raised during a run as the one line ``mombs: ...`` (its traceback is behind --debug)."""
    text = " ".join(str(err).split()) or "(no message)"
    if not isinstance(err, (ValueError, FileNotFoundError)):  # say what kind of failure it is
        text = f"{type(err).__name__}: {text}"
    return _fail(f"{text} (--debug shows where)")


def _diagnose(args) -> int:
    from .diagnose import diagnose

    if args.per_quadrant < 1:
        raise _fail(f"--per-quadrant={args.per_quadrant} must be >= 1")
    try:
        res = diagnose(
            args.run_dir, args.out, score=args.score, images=not args.no_images, per_quadrant=args.per_quadrant
        )
    except (FileNotFoundError, ValueError) as err:
        if _debugging(args):
            raise
        raise _fail(str(err)) from None
    s = res["summary"]
    print(
        json.dumps(
            {
                "table": str(res["table"]),
                "parquet": str(res["parquet"]) if res["parquet"] else None,
                "report": str(res["report"]),
                "samples": s["samples"],
                "flagged": s["flagged"],
                "score": s["score"],
                "history": res["history"],
            }
        )
    )
    if res["history"] is False:  # None: a task without AUM or cartography (masks, boxes)
        print(
            f"mombs: {args.run_dir} has no history.npz, so the table has no AUM and no cartography "
            f"(confidence/variability), and the score is {s['score']!r}; retrain with --set history=true "
            f"to get them",
            file=sys.stderr,
        )
    for note in res["missing"]:
        if res["history"] or not note.startswith("the per-epoch history"):
            print(f"mombs: missing: {note}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    formatwarning = warnings.formatwarning
    if not _debugging(args):
        warnings.formatwarning = warning_line
    try:
        return _main(args)
    finally:
        warnings.formatwarning = formatwarning


def _main(args) -> int:
    if args.command == "diagnose":
        return _diagnose(args)
    file_opts = _read_config_file(args.config)
    set_opts = _parse_overrides(args.set)
    if args.data_dir is not None:
        set_opts["data_dir"] = args.data_dir
    options = {**file_opts, **set_opts}
    cfg = _run_config(options)
    out = _path_option("--out", args.out) if args.out else _path_option("out", options.get("out"))
    out = out or Path(f"runs/{args.command}")

    if args.command == "train":
        grid_only = [k for k in set_opts if k in _GRID_KEYS and k != "out"]
        if grid_only:
            raise _fail(f"{grid_only[0]} is an option of `mombs compare`, not of `mombs train`")
        from .train import run, run_dir_name

        if "strategy" not in options:  # the default is the baseline: say so before anything else
            print(
                f"mombs: no strategy given: training with random batches (strategy={cfg.strategy}, the "
                f"baseline); --set strategy=mixed trains with MoMBS, `mombs compare` runs both",
                file=sys.stderr,
                flush=True,
            )
        try:  # the run creates its folder only once its data has loaded: a refusal writes nothing
            res = run(cfg, out / run_dir_name(cfg), progress=not args.no_progress)
        except KeyboardInterrupt:
            raise _interrupted(out) from None
        except Exception as err:  # a data, disk or training error: one line, as compare reports its runs'
            if _debugging(args):
                raise
            raise _one_line(err) from None
        finally:
            if out.is_dir():
                (out / "resolved_config.json").write_text(json.dumps(options, indent=1, default=str))
        m = res.get("metric", "top1")
        print(
            json.dumps(
                {k: res[k] for k in ("dataset", "strategy", "batch_size", "seed", m, f"{m}_best_val", "seconds")}
            )
        )
        return 0

    from .compare import expand_grid, run_grid, summarize

    title = _effective(options, "title")
    if not isinstance(title, str):
        raise _fail(f"title={title!r} must be a string")
    jobs = _effective(options, "jobs")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise _fail(f"jobs={jobs!r} must be an integer >= 1")
    try:
        configs = expand_grid(
            cfg,
            strategies=_effective(options, "strategies"),
            seeds=_effective(options, "seeds"),
            batch_sizes=options.get("batch_sizes"),
            losses=options.get("losses"),
        )
    except ValueError as err:
        raise _fail(str(err)) from None
    export, note = _export_folder(args.config, file_opts, set_opts)
    if note:
        print(note, file=sys.stderr)

    out.mkdir(parents=True, exist_ok=True)
    resolved = dict(options, export=str(export) if export else None)
    (out / "resolved_config.json").write_text(json.dumps(resolved, indent=1, default=str))
    on_result = None
    if export is not None:
        export.mkdir(parents=True, exist_ok=True)

        def on_result(run_dir, top1, err):  # one file per finished run, as soon as it finishes
            if err is None:
                _copy_result(run_dir, export)

    try:
        results = run_grid(configs, out, jobs=jobs, progress=not args.no_progress, on_result=on_result)
    except KeyboardInterrupt:
        raise _interrupted(out) from None
    except RuntimeError as err:
        if _debugging(args):
            raise
        raise _fail(str(err)) from None
    if export is not None:  # runs finished in an earlier sitting too
        for res in results:
            _copy_result(res["run_dir"], export)
    from .report import format_table, write_report

    rows = summarize(results)
    print(format_table(rows))
    path = write_report(results, rows, out, title=title)
    print(f"\nreport: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
