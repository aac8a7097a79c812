"""The command answers fast when it starts no run (issue 20): ``--help`` and every refusal
at the door come back in under a second, because nothing on the way imports torch
(about 2.4 s on the 2-core CPU) or the other heavy dependencies."""

from __future__ import annotations

import importlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mombs
import mombs.train

ROOT = Path(__file__).resolve().parent.parent
#: Wall seconds a help or a refusal may take (the median of TRIES whole processes).
LIMIT_S = 1.0
TRIES = 3
#: What must not be imported before a run starts.
HEAVY = ("torch", "torchvision", "monai", "lightning", "sklearn", "scipy", "matplotlib", "PIL", "nibabel")


def _timed(args: list[str]) -> tuple[list[float], subprocess.CompletedProcess]:
    times, proc = [], None
    for _ in range(TRIES):
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "mombs.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        times.append(time.perf_counter() - start)
    return times, proc


@pytest.mark.parametrize(
    "args", [["--help"], ["train", "--help"], ["compare", "--help"], ["diagnose", "--help"]], ids=" ".join
)
def test_help_answers_in_under_a_second(args):
    times, proc = _timed(args)
    assert proc.returncode == 0, proc.stderr
    assert "usage: mombs" in proc.stdout
    median = statistics.median(times)
    assert median < LIMIT_S, f"mombs {' '.join(args)}: median {median:.3f} s of {[round(t, 3) for t in times]}"


@pytest.mark.parametrize(
    "args, says",
    [
        (["train", "--set", "lr=-1"], "mombs: lr=-1 must be a number > 0"),
        (["train", "--set", "model=nope"], "mombs: model='nope' is not known; choose one of"),
        (
            ["train", "--data-dir", "/nonexistent", "--set", "dataset=imagefolder"],
            "mombs: data_dir='/nonexistent' is not an existing folder",
        ),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_a_refusal_answers_in_under_a_second(args, says):
    times, proc = _timed(args)
    assert proc.returncode == 1 and proc.stdout == "", (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(says), proc.stderr
    median = statistics.median(times)
    assert median < LIMIT_S, f"mombs {' '.join(args)}: median {median:.3f} s of {[round(t, 3) for t in times]}"


#: Argument lists whose parse-and-validate path must import nothing heavy.
_DOOR = [
    ["--help"],
    ["train", "--help"],
    ["compare", "--help"],
    ["diagnose", "--help"],
    ["train", "--no-such-flag"],
    ["train", "--set", "lr=-1"],
    ["train", "--set", "no_such_option=1"],
    ["train", "--set", "model=nope"],
    ["train", "--set", "loss=nope"],
    ["train", "--set", "dataset=nope"],
    ["train", "--set", "model=resnet18"],
    ["train", "--data-dir", "/nonexistent", "--set", "dataset=imagefolder"],
    ["train", "--set", "task=segmentation", "--set", "model=nope"],
    [
        "train",
        "--set",
        "task=segmentation",
        "--set",
        "noise=annotation",
        "--set",
        "noise_rate=0.1",
        "--set",
        "noise_mix={bogus: 1}",
    ],
    ["train", "--set", "task=segmentation", "--set", "dataset=msd"],
    ["train", "--set", "task=detection", "--set", "dataset=coco", "--data-dir", "/nonexistent"],
    ["train", "--set", "task=detection", "--set", "strategy=mixed", "--set", "schedule=train-entropy"],
    ["compare", "--set", "strategies=[random, nope]"],
    ["compare", "--set", "losses=[nope]"],
    ["diagnose", "/nonexistent", "--score", "nope"],
]

_PROBE = """
import json, sys
from mombs import cli
heavy = {heavy!r}
out = []
for argv in json.loads(sys.argv[1]):
    try:
        cli.main(argv)
        code = 0
    except SystemExit as err:
        code = err.code
    out.append([argv, code if isinstance(code, int) else str(code), [m for m in heavy if m in sys.modules]])
print(json.dumps(out), file=sys.__stdout__)
"""


def test_the_door_imports_no_torch():
    """More robust than a clock: every help and refusal, in one process, leaves torch unimported."""
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE.format(heavy=HEAVY), json.dumps(_DOOR)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(rows) == len(_DOOR)
    for argv, code, loaded in rows:
        assert code != 0 or "--help" in argv, (argv, code)  # each is refused (or is a help)
        assert code == 0 or str(code).startswith("mombs: ") or code == 2, (argv, code)
        assert loaded == [], f"mombs {' '.join(argv)} imported {loaded}"


def test_importing_the_package_imports_no_torch():
    code = (
        "import sys, mombs, mombs.train, mombs.strategies, mombs.recipes\n"
        "from mombs.recipes import RECIPES, get_recipe\n"
        "[get_recipe(t) for t in RECIPES]\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout


@pytest.mark.parametrize("package", [mombs, mombs.train], ids=lambda m: m.__name__)
def test_the_lazy_public_names_are_the_modules_own(package):
    for name in package.__all__:
        value = getattr(package, name)
        if name.startswith("__"):
            continue
        home = importlib.import_module(f"{package.__name__}.{package._MODULE_OF[name]}")
        assert value is getattr(home, name), name
    assert set(package.__all__) <= set(dir(package))
    with pytest.raises(AttributeError, match="no_such_name"):
        package.no_such_name  # noqa: B018


def test_submodules_are_reachable_as_attributes():
    assert mombs.quality.data_quality is importlib.import_module("mombs.quality").data_quality
    assert mombs.plots is importlib.import_module("mombs.plots")
