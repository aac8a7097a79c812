"""How long ``mombs`` takes to answer when it starts no run: ``--help`` and the refusals at the door.

Each command is a whole process (``python -m mombs.cli ...``), timed from its
start to its exit on a monotonic clock, ``--runs`` times after one warm-up run
that is not counted (it fills the file cache). Every command is also run once
in-process under ``python -c`` to say whether it imported torch: none of them
should (issue 20: torch alone takes about 2.4 s to import on the 2-core CPU).

Prints one JSON object: per command its arguments, exit status, first line of
stderr, ``torch_imported`` and the median, min and max wall seconds, with the
environment (``mombs.envinfo.environment_info("cpu")``).

    python benchmarks/cli_startup.py
    python benchmarks/cli_startup.py --out benchmarks/results/cli_startup_cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: (name, arguments, expected exit status): help exits 0, argparse's own refusal 2, ours 1.
COMMANDS = [
    ("help", ["--help"], 0),
    ("train_help", ["train", "--help"], 0),
    ("compare_help", ["compare", "--help"], 0),
    ("diagnose_help", ["diagnose", "--help"], 0),
    ("unknown_flag", ["train", "--no-such-flag"], 2),
    ("bad_value", ["train", "--set", "lr=-1"], 1),
    ("unknown_option", ["train", "--set", "no_such_option=1"], 1),
    ("bad_model", ["train", "--set", "model=nope"], 1),
    ("bad_loss", ["train", "--set", "loss=nope"], 1),
    ("bad_dataset", ["train", "--set", "dataset=nope"], 1),
    ("missing_data_dir", ["train", "--data-dir", "/nonexistent", "--set", "dataset=imagefolder"], 1),
    ("bad_strategy_grid", ["compare", "--set", "strategies=[random, nope]"], 1),
]

#: Runs ``mombs.cli.main(argv)`` in-process and prints whether torch was imported on the way.
_PROBE = (
    "import sys\nfrom mombs import cli\ntry:\n    cli.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
    "print('torch' in sys.modules, file=sys.__stdout__)"
)


def _run(python: str, args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run([python, "-m", "mombs.cli", *args], cwd=ROOT, capture_output=True, text=True)
    return time.perf_counter() - start, proc


def _torch_imported(python: str, args: list[str]) -> bool:
    proc = subprocess.run([python, "-c", _PROBE, *args], cwd=ROOT, capture_output=True, text=True)
    return proc.stdout.strip().splitlines()[-1] == "True"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per command (default 5)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter to time (default: this one)")
    parser.add_argument("--out", help="also write the JSON to this file")
    args = parser.parse_args(argv)

    rows = []
    for name, cli_args, expected in COMMANDS:
        _run(args.python, cli_args)  # warm-up: the file cache
        times, proc = [], None
        for _ in range(args.runs):
            t, proc = _run(args.python, cli_args)
            times.append(t)
        stderr = proc.stderr.strip().splitlines()
        rows.append(
            {
                "name": name,
                "args": cli_args,
                "returncode": proc.returncode,
                "expected": expected,
                "stderr_last_line": stderr[-1] if stderr else "",
                "torch_imported": _torch_imported(args.python, cli_args),
                "median_s": round(statistics.median(times), 3),
                "min_s": round(min(times), 3),
                "max_s": round(max(times), 3),
                "runs": args.runs,
            }
        )
        print(
            f"{name:18s} rc={proc.returncode} median {rows[-1]['median_s']:.3f} s "
            f"(min {rows[-1]['min_s']:.3f}, max {rows[-1]['max_s']:.3f}) torch={rows[-1]['torch_imported']}",
            file=sys.stderr,
        )
    sys.path.insert(0, str(ROOT))
    from mombs.envinfo import environment_info

    result = {
        "benchmark": "cli_startup",
        "what": "wall seconds of `python -m mombs.cli ARGS`, whole process, after one warm-up run",
        "commands": rows,
        "environment": environment_info("cpu"),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
