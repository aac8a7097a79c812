"""Reliability probe (issue 23): faults during runs, damaged data, API misuse, ``diagnose`` on bad
folders, two writers, a SIGKILLed ``compare``, changed commands, low-precision and meta-device
models. Each case runs in its own forked process and temporary folder; what it printed, raised,
warned and left behind is recorded, and rules in :func:`classify` sort it:

- CLEAR: a one-line error or warning that names the cause (the option, the file, the samples), or
  the right behaviour where the case has one (checked by the case);
- UNCLEAR: an error from mombs whose message spans several lines or names none of the case's words;
- SILENT: no error and a wrong result (the case's check fails), or no error where one was due;
- CRASH: a raw traceback: an exception raised outside mombs that does not name the cause, or a
  traceback printed by ``mombs`` without --debug.

    python benchmarks/reliability_probe.py [--out benchmarks/results/reliability_probe_cpu.json] [-k NAME]

Prints the JSON (per-case outcome, its evidence, the counts and the environment) and writes it.
Runs in about two minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import mombs  # noqa: E402
from mombs import cli  # noqa: E402
from mombs.train import RunConfig, run, run_dir_name  # noqa: E402

torch.set_num_threads(1)
#: The smallest digits run (about 0.1 s of training).
TINY = {"dataset": "digits", "subset": 120, "epochs": 2, "threads": 1, "strategy": "mixed", "pivot_epoch": 1}
CASES: dict = {}


def case(group: str, *names: str, expect: str = "error"):
    """Registers a case. ``names``: words a clear message holds at least one of. ``expect``: 'error'
    (a refusal is due), 'warn' (a warning is due, and the run goes on) or 'ok' (only the case's check)."""

    def register(fn):
        CASES[fn.__name__] = dict(fn=fn, group=group, names=list(names), expect=expect)
        return fn

    return register


# ---------------------------------------------------------------- what a case observes


class Obs(dict):
    """What happened: ``kind`` ('api' or 'cli'), ``exc`` (type, message, raised in mombs?, traceback),
    ``exit`` (a SystemExit's text), ``warnings`` (messages), ``stderr``, ``check`` (bool or None)."""


def api(call, check=None) -> Obs:
    """Calls ``call()`` as a user's script would: exceptions and warnings recorded."""
    obs = Obs(kind="api", exc=None, warnings=[], check=None)
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        try:
            value = call()
        except Exception as err:
            tb = traceback.extract_tb(err.__traceback__)
            last = tb[-1].filename if tb else ""
            obs["exc"] = dict(
                type=type(err).__name__,
                message=str(err),
                from_mombs=str(ROOT / "mombs") in last and "site-packages" not in last,
                where=f"{Path(last).name}:{tb[-1].lineno}" if tb else "",
            )
            value = None
    obs["warnings"] = [
        str(w.message)
        for w in ws
        if issubclass(w.category, (RuntimeWarning, UserWarning)) and "mombs" in (w.filename or "") + str(w.message)
    ]
    if check is not None and obs["exc"] is None:
        obs["check"] = bool(check(value))
    return obs


def cli_run(argv, check=None) -> Obs:
    """Runs ``mombs`` in this process with its stderr captured, as a shell would see it."""
    obs = Obs(kind="cli", exit=None, code=0, stderr="", check=None)
    err = io.StringIO()
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        err.write(warnings.formatwarning(message, category, filename, lineno, line))

    warnings.showwarning = show
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            with warnings.catch_warnings():
                warnings.simplefilter("default")
                try:
                    cli.main(argv)
                except SystemExit as e:
                    obs["exit"] = e.code if isinstance(e.code, str) else None
                    obs["code"] = e.code if isinstance(e.code, int) else 1
                except Exception:  # what mombs let through: a traceback on the terminal
                    traceback.print_exc(file=err)
                    obs["code"] = 1
    finally:
        warnings.showwarning = shown
    obs["stderr"] = "\n".join(line for line in err.getvalue().splitlines() if "no strategy given" not in line)
    if check is not None and obs["code"] == 0:
        obs["check"] = bool(check())
    return obs


def process(argv, check=None, timeout=120, env=None) -> Obs:
    """Runs ``argv`` as a whole process."""
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    stderr = "\n".join(line for line in p.stderr.splitlines() if "no strategy given" not in line)
    last = stderr.strip().splitlines()[-1] if stderr.strip() else None
    obs = Obs(
        kind="cli",
        exit=last if p.returncode and last and last.startswith("mombs: ") else None,
        code=p.returncode,
        stderr=stderr,
        check=None,
    )
    if check is not None and p.returncode == 0:
        obs["check"] = bool(check())
    return obs


# ---------------------------------------------------------------- the rules


def _names(text: str, names) -> bool:
    return any(n.lower() in text.lower() for n in names)


def classify(obs: dict, names, expect: str) -> tuple[str, str]:
    """(outcome, why), from the observation alone."""
    if obs.get("kind") == "cli":
        stderr, said = obs.get("stderr") or "", obs.get("exit")
        if "Traceback (most recent call last)" in stderr:
            return "CRASH", "a traceback without --debug"
        if obs.get("code"):
            if said is None:
                return "UNCLEAR", f"exit {obs['code']} without a message"
            if "\n" in said.strip():
                return "UNCLEAR", "a message of several lines"
            if not _names(said, names):
                return "UNCLEAR", "the message names none of " + repr(names)
            return "CLEAR", "one line naming the cause"
        warned = [line for line in stderr.splitlines() if "warning" in line.lower()]
        if obs.get("check") is False:
            return "SILENT", "finished, with a wrong result"
        if expect == "warn":
            good = [w for w in warned if w.startswith("mombs: warning: ") and _names(w, names)]
            if good:
                return "CLEAR", "a one-line warning naming the cause"
            return (
                ("UNCLEAR", "a warning that is not one line naming the cause") if warned else ("SILENT", "no warning")
            )
        if expect == "error":
            return "SILENT", "finished where a refusal was due"
        return "CLEAR", "right behaviour"
    exc = obs.get("exc")
    if exc is not None:
        message = exc["message"]
        if not exc["from_mombs"]:
            return (
                ("UNCLEAR", f"{exc['type']} raised in {exc['where']}, but it names the cause")
                if _names(message, names)
                else ("CRASH", f"{exc['type']} raised in {exc['where']}")
            )
        if expect == "ok":
            return "UNCLEAR", f"refused ({exc['type']}) where the case has a right answer"
        if "\n" in message.strip() or not _names(message, names):
            return "UNCLEAR", f"{exc['type']} that names none of {names} or spans lines"
        return "CLEAR", f"{exc['type']} in one line naming the cause"
    if obs.get("check") is False:
        return "SILENT", "no error, and a wrong result"
    warned = obs.get("warnings") or []
    if expect == "warn":
        if any(_names(w, names) and "\n" not in w.strip() for w in warned):
            return "CLEAR", "a one-line warning naming the cause"
        return ("UNCLEAR", "a warning that does not name the cause") if warned else ("SILENT", "no warning")
    if expect == "error":
        return "SILENT", "no error where one was due"
    return "CLEAR", "right behaviour"


# ---------------------------------------------------------------- helpers


def argv_of(out, options: dict, command="train") -> list:
    return [command, "--out", str(out), "--no-progress"] + [
        a for k, v in options.items() for a in ("--set", f"{k}={v}")
    ]


def folder_of(out, options: dict) -> Path:
    return Path(out) / run_dir_name(cli._run_config(cli._parse_overrides([f"{k}={v}" for k, v in options.items()])))


def finish(out, options=TINY) -> Path:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        cli.main(argv_of(out, options))
    return folder_of(out, options)


def interrupted(out, options=TINY, after=0) -> Path:
    """A run stopped right after epoch ``after``'s checkpoint, as a kill would leave it."""
    import mombs.train.runner as runner

    original = runner._checkpoint

    def then_die(c, path, cfg, epoch, *rest):
        original(c, path, cfg, epoch, *rest)
        if epoch == after:
            raise KeyboardInterrupt

    runner._checkpoint = then_die
    folder = folder_of(out, options)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            run(cli._run_config(cli._parse_overrides([f"{k}={v}" for k, v in options.items()])), folder)
    finally:
        runner._checkpoint = original
    return folder


def cut(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def tree(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(Path(folder).rglob("*"))
    }


def pngs(folder: Path, n=4) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(folder / c / f"{i}.png")
    return folder


def csv_file(folder: Path, edit=None) -> Path:
    pngs(folder)
    rows = ["path,label"] + [f"{c}/{i}.png,{c}" for c in "ab" for i in range(4)]
    if edit:
        rows = edit(rows)
    (folder / "labels.csv").write_bytes("\n".join(rows).encode("latin-1") + b"\n")
    return folder / "labels.csv"


def decathlon(root: Path, *, gz=True) -> Path:
    import nibabel as nib

    rng = np.random.default_rng(0)
    training, ext = [], ".nii.gz" if gz else ".nii"
    for i in range(3):
        vol, lab = rng.uniform(-900, 200, (16, 16, 4)).astype(np.float32), np.zeros((16, 16, 4), np.uint8)
        lab[4:8, 4:8, 1:3] = 1
        for sub, arr in (("imagesTr", vol), ("labelsTr", lab)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(arr, np.eye(4)), str(root / sub / f"case_{i}{ext}"))
        training.append({"image": f"./imagesTr/case_{i}{ext}", "label": f"./labelsTr/case_{i}{ext}"})
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "name": "toy",
                "modality": {"0": "CT"},
                "labels": {"0": "background", "1": "lesion"},
                "numTraining": 3,
                "training": training,
            }
        )
    )
    return root


def coco(root: Path) -> Path:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    images, anns = [], []
    for i in range(4):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(root / "images" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": 32, "height": 32})
        anns.append({"id": i + 1, "image_id": i, "category_id": 1, "bbox": [4, 4, 10, 10], "iscrowd": 0})
    (root / "instances.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "lesion"}]})
    )
    return root


def seg_opts(data_dir) -> dict:
    return {"task": "segmentation", "dataset": "msd", "data_dir": str(data_dir), "epochs": 1, "threads": 1}


def small_model(classes=3):
    model = nn.Sequential()
    model.add_module("body", nn.Sequential(nn.Linear(2, 8), nn.ReLU()))
    model.add_module("head", nn.Linear(8, classes))
    return model


def small_data(n=40, labels_shape=None):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, labels_shape or (n,), generator=g)
    return mombs.IndexedDataset(TensorDataset(torch.randn(n, 2, generator=g), y))


def loop(n=40, batch=8, pivot=0, **kw):
    data = small_data(n)
    sampler = mombs.MixedOrderBatchSampler(data, batch, pivot_epoch=pivot)
    assessor = mombs.DifficultyAssessor(small_model(), data, at="body", sampler=sampler, pivot_epoch=pivot, **kw)
    assessor.start_epoch(0)
    return data, sampler, assessor


def detector():
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

    model = GeneralizedRCNN(nn.Identity(), nn.Identity(), nn.Identity(), nn.Identity())
    boxes = [
        (
            torch.rand(3, 24, 24),
            {"boxes": torch.tensor([[2.0, 2.0, 9.0, 9.0]]), "labels": torch.ones(1, dtype=torch.int64)},
        )
        for _ in range(4)
    ]
    return model, mombs.IndexedDataset(boxes)


def log_epochs(folder: Path) -> list:
    return [json.loads(x)["epoch"] for x in (folder / "log.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- faults during runs


@case("faults during runs", "results.json", expect="warn")
def cut_results_json(tmp):
    folder = finish(tmp)
    cut(folder / "results.json")
    return cli_run(argv_of(tmp, TINY), check=lambda: json.loads((folder / "results.json").read_text())["top1"] > 0)


@case("faults during runs", "results.json", expect="warn")
def empty_results_json(tmp):
    folder = finish(tmp)
    (folder / "results.json").write_text("")
    return cli_run(argv_of(tmp, TINY), check=lambda: json.loads((folder / "results.json").read_text())["top1"] > 0)


@case("faults during runs", "assessment.npz", expect="warn")
def cut_npz_of_an_unfinished_run(tmp):
    folder = interrupted(tmp)
    (folder / "assessment.npz").write_bytes(b"PK\x03\x04 cut")
    return cli_run(
        argv_of(tmp, TINY),
        check=lambda: log_epochs(folder) == [0, 1] and np.load(folder / "assessment.npz")["loss"].size > 0,
    )


@case("faults during runs", "checkpoint.pt", expect="warn")
def cut_checkpoint(tmp):
    folder = interrupted(tmp, after=0)
    cut(folder / "checkpoint.pt")
    return cli_run(argv_of(tmp, TINY), check=lambda: (folder / "results.json").exists())


@case("faults during runs", "checkpoint.pt", "another run", expect="warn")
def foreign_checkpoint(tmp):
    other = interrupted(tmp / "other", dict(TINY, seed=5))
    folder = interrupted(tmp)
    shutil.copy(other / "checkpoint.pt", folder / "checkpoint.pt")
    return cli_run(argv_of(tmp, TINY), check=lambda: (folder / "results.json").exists())


@case("faults during runs", expect="ok")
def checkpoints_left_beside_results(tmp):
    folder = finish(tmp)
    (folder / "checkpoint.pt").write_bytes(b"left by a kill between results.json and the clean-up")
    return cli_run(argv_of(tmp, TINY), check=lambda: not any("checkpoint" in p.name for p in folder.iterdir()))


@case("faults during runs", "config.json", expect="warn")
def cut_config_json(tmp):
    folder = interrupted(tmp)
    cut(folder / "config.json")
    return cli_run(argv_of(tmp, TINY), check=lambda: (folder / "results.json").exists())


@case("faults during runs", "disk is full", "checkpoint")
def disk_full(tmp):
    import mombs._atomic as atomic

    atomic._disk_is_full = lambda folder: True

    def save(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    torch.save = save
    return cli_run(argv_of(tmp, TINY))


@case("faults during runs", "read-only")
def read_only_file_system(tmp):
    def save(obj, f, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(f))

    torch.save = save
    return cli_run(argv_of(tmp, TINY))


@case("faults during runs", "diverged", "lr")
def diverged_training(tmp):
    return cli_run(argv_of(tmp, dict(TINY, lr=1e12, strategy="random")))


@case("faults during runs", expect="ok")
def sigkilled_train_resumes(tmp):
    opts = dict(TINY, subset=400, epochs=40)
    argv = [sys.executable, "-m", "mombs.cli"] + argv_of(tmp, opts)
    folder = folder_of(tmp, opts)
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not (
        (folder / "log.jsonl").exists() and len((folder / "log.jsonl").read_text().splitlines()) >= 3
    ):
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    return process(argv, check=lambda: log_epochs(folder) == list(range(40)))


@case("faults during runs", "results.json", expect="warn")
def compare_rerun_over_a_cut_results_json(tmp):
    opts = dict(TINY, strategies="[random]", seeds="[0]")
    argv = argv_of(tmp, opts, command="compare")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        cli.main(argv)
    [res] = list((tmp / "runs").glob("*/results.json"))
    cut(res)
    return cli_run(argv, check=lambda: json.loads(res.read_text())["top1"] > 0)


# ---------------------------------------------------------------- two writers


@case("two writers", "another mombs process", "pid")
def locked_run_folder(tmp):
    folder = folder_of(tmp, TINY)
    code = (
        "import sys, time\nfrom mombs.train.lock import run_lock\n"
        "with run_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True, cwd=str(ROOT)
    )
    try:
        holder.stdout.readline()
        return cli_run(argv_of(tmp, TINY))
    finally:
        holder.kill()
        holder.wait()


@case("two writers", expect="ok")
def lock_of_a_killed_writer_is_stale(tmp):
    folder = folder_of(tmp, TINY)
    code = (
        "import sys, time\nfrom mombs.train.lock import run_lock\nrun_lock(sys.argv[1]).__enter__()\n"
        "print('held', flush=True)\ntime.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True, cwd=str(ROOT)
    )
    holder.stdout.readline()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    return cli_run(argv_of(tmp, TINY), check=lambda: (folder / "results.json").exists())


@case("two writers", expect="ok")
def sigkilled_compare_leaves_no_workers(tmp):
    argv = [
        sys.executable,
        "-m",
        "mombs.cli",
        "compare",
        "--out",
        str(tmp),
        "--no-progress",
        "--set",
        "dataset=digits",
        "--set",
        "epochs=300",
        "--set",
        "strategies=[random, mixed]",
        "--set",
        "seeds=[0]",
        "--set",
        "jobs=2",
        "--set",
        "threads=1",
    ]
    parent = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(ROOT))
    deadline = time.time() + 90
    while time.time() < deadline and len(list((tmp / "runs").glob("*/log.jsonl"))) < 2:
        time.sleep(0.2)

    def children(pid):
        kids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError):
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(stat.parent.name))
        return kids

    workers = children(parent.pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    time.sleep(3)

    def alive(p):
        try:
            return Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    left = [p for p in workers if alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    return Obs(kind="api", exc=None, warnings=[], check=bool(workers) and not left)


# ---------------------------------------------------------------- a changed command


@case("config changes", "history")
def history_toggled_on_one_folder(tmp):
    run(RunConfig(**TINY), tmp / "run")
    return api(lambda: run(RunConfig(**dict(TINY, history=True)), tmp / "run"))


@case("config changes", "data_dir")
def data_dir_changed_on_one_folder(tmp):
    opts = dict(dataset="imagefolder", epochs=1, threads=1)
    pngs(tmp / "a")
    shutil.copytree(tmp / "a", tmp / "b")
    run(RunConfig(**opts, data_dir=str(tmp / "a")), tmp / "run")
    return api(lambda: run(RunConfig(**opts, data_dir=str(tmp / "b")), tmp / "run"))


@case("config changes", "data_dir", "changed")
def data_in_data_dir_changed(tmp):
    from mombs.train.config import _fingerprint

    opts = dict(dataset="imagefolder", epochs=1, threads=1, data_dir=str(pngs(tmp / "a")))
    run(RunConfig(**opts), tmp / "run")
    pngs(tmp / "a", n=5)
    _fingerprint.cache_clear()
    return api(lambda: run(RunConfig(**opts), tmp / "run"))


@case("config changes", "epochs")
def epochs_changed_on_one_folder(tmp):
    run(RunConfig(**TINY), tmp / "run")
    return api(lambda: run(RunConfig(**dict(TINY, epochs=3)), tmp / "run"))


@case("config changes", expect="ok")
def cli_with_another_data_dir_is_another_run(tmp):
    opts = dict(dataset="imagefolder", epochs=1, threads=1, data_dir=str(pngs(tmp / "a")))
    first = finish(tmp / "runs", opts)
    before = tree(first)
    shutil.copytree(tmp / "a", tmp / "b")
    other = dict(opts, data_dir=str(tmp / "b"))
    return cli_run(
        argv_of(tmp / "runs", other),
        check=lambda: tree(first) == before and (folder_of(tmp / "runs", other) / "results.json").exists(),
    )


@case("config changes", expect="ok")
def cli_history_true_after_a_run_without(tmp):
    finish(tmp)
    opts = dict(TINY, history="true")
    return cli_run(argv_of(tmp, opts), check=lambda: (folder_of(tmp, opts) / "history.npz").exists())


# ---------------------------------------------------------------- damaged data


@case("damaged data", "b/1.png")
def png_cut_in_half(tmp):
    cut(pngs(tmp / "d") / "b" / "1.png")
    return cli_run(argv_of(tmp / "runs", dict(dataset="imagefolder", epochs=1, data_dir=str(tmp / "d"))))


@case("damaged data", "b/1.png")
def png_that_is_not_a_png(tmp):
    (pngs(tmp / "d") / "b" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return cli_run(argv_of(tmp / "runs", dict(dataset="imagefolder", epochs=1, data_dir=str(tmp / "d"))))


@case("damaged data", "labels.csv")
def csv_row_with_extra_fields(tmp):
    f = csv_file(tmp / "d", lambda r: r[:3] + ["a/2.png,a,x"] + r[4:])
    return cli_run(argv_of(tmp / "runs", dict(dataset="csv", epochs=1, data_dir=str(f))))


@case("damaged data", "labels.csv")
def csv_bytes_not_text(tmp):
    f = csv_file(tmp / "d", lambda r: r + ["\xff\xfe\x00"])
    return cli_run(argv_of(tmp / "runs", dict(dataset="csv", epochs=1, data_dir=str(f))))


@case("damaged data", "labels.csv", "a/9.png")
def csv_path_missing(tmp):
    f = csv_file(tmp / "d", lambda r: r + ["a/9.png,a"])
    return cli_run(argv_of(tmp / "runs", dict(dataset="csv", epochs=1, data_dir=str(f))))


@case("damaged data", "case_1.nii.gz")
def nifti_gz_cut_in_half(tmp):
    cut(decathlon(tmp / "d") / "imagesTr" / "case_1.nii.gz")
    return cli_run(argv_of(tmp / "runs", seg_opts(tmp / "d")))


@case("damaged data", "case_1.nii")
def nifti_short_of_voxel_data(tmp):
    path = decathlon(tmp / "d", gz=False) / "imagesTr" / "case_1.nii"
    path.write_bytes(path.read_bytes()[:452])  # the header and 100 bytes of voxels
    return cli_run(argv_of(tmp / "runs", seg_opts(tmp / "d")))


@case("damaged data", "dataset.json")
def decathlon_json_cut(tmp):
    cut(decathlon(tmp / "d") / "dataset.json")
    return cli_run(argv_of(tmp / "runs", seg_opts(tmp / "d")))


@case("damaged data", "instances.json")
def coco_json_cut(tmp):
    cut(coco(tmp / "d") / "instances.json")
    return cli_run(argv_of(tmp / "runs", dict(task="detection", dataset="coco", epochs=1, data_dir=str(tmp / "d"))))


@case("damaged data", "2.png")
def coco_image_cut(tmp):
    cut(coco(tmp / "d") / "images" / "2.png")
    return cli_run(argv_of(tmp / "runs", dict(task="detection", dataset="coco", epochs=1, data_dir=str(tmp / "d"))))


@case("damaged data", "train-images-idx3-ubyte")
def idx_file_cut(tmp):
    d = tmp / "fm"
    d.mkdir()
    for name, dims, size in (
        ("train-images-idx3-ubyte", [100, 28, 28], 100 * 784),
        ("train-labels-idx1-ubyte", [100], 100),
        ("t10k-images-idx3-ubyte", [10, 28, 28], 7840),
        ("t10k-labels-idx1-ubyte", [10], 10),
    ):
        head = bytes([0, 0, 8, len(dims)]) + b"".join(int(x).to_bytes(4, "big") for x in dims)
        (d / name).write_bytes(head + bytes(size))
    cut(d / "train-images-idx3-ubyte")
    return cli_run(argv_of(tmp / "runs", dict(dataset="fashion-mnist", epochs=1, data_dir=str(d))))


# ---------------------------------------------------------------- API misuse


@case("API misuse", "already observed")
def batch_observed_twice(tmp):
    data, sampler, assessor = loop()
    batch = torch.tensor(next(iter(sampler)))
    assessor.observe(batch, torch.rand(8))
    return api(lambda: assessor.observe(batch, torch.rand(8)))


@case("API misuse", "observe()", "24 of 40", expect="warn")
def epoch_ended_with_unobserved_batches(tmp):
    data, sampler, assessor = loop(pivot=1)
    for step, batch in enumerate(sampler):
        if step < 2:
            assessor.observe(torch.tensor(batch), torch.rand(len(batch)))
    return api(assessor.end_epoch)


@case("API misuse", "observe()", "40 of 40", expect="warn")
def observe_never_called(tmp):
    data, sampler, assessor = loop(pivot=1)
    list(sampler)
    return api(assessor.end_epoch)


@case("API misuse", "40 samples", "30")
def sampler_built_for_another_size(tmp):
    sampler = mombs.MixedOrderBatchSampler(40, 8)
    return api(lambda: mombs.DifficultyAssessor(small_model(), small_data(30), at="body", sampler=sampler))


@case("API misuse", "30 samples", "another size")
def loader_with_a_sampler_of_another_size(tmp):
    sampler = mombs.MixedOrderBatchSampler(40, 8)
    return api(lambda: list(DataLoader(small_data(30), batch_sampler=sampler)))


@case("API misuse", "[40, 41]", "outside")
def indices_from_another_data_set(tmp):
    data, sampler, assessor = loop()
    return api(lambda: assessor.observe(torch.tensor([0, 5, 40, 41]), torch.rand(4)))


@case("API misuse", "(5,)", "4 indices")
def losses_of_another_length(tmp):
    data, sampler, assessor = loop()
    return api(lambda: assessor.observe(torch.arange(4), torch.rand(5)))


@case("API misuse", "[5, 9]")
def non_finite_losses(tmp):
    data, sampler, assessor = loop()
    return api(
        lambda: assessor.observe(torch.tensor([3, 5, 7, 9]), torch.tensor([1.0, float("nan"), 2.0, float("inf")]))
    )


@case("API misuse", "set_epoch", expect="warn")
def sampler_iterated_twice_without_set_epoch(tmp):
    sampler = mombs.MixedOrderBatchSampler(20, 4)
    list(sampler)
    return api(lambda: list(sampler))


@case("API misuse", "batch_sampler=")
def sampler_passed_as_sampler(tmp):
    sampler = mombs.MixedOrderBatchSampler(20, 4)
    return api(lambda: next(iter(DataLoader(small_data(20), sampler=sampler))))


@case("API misuse", "task='detection'")
def detector_without_its_task(tmp):
    model, data = detector()
    return api(lambda: mombs.DifficultyAssessor(model, data, at="backbone"))


@case("API misuse", "train-entropy")
def schedule_that_cannot_serve_a_detector(tmp):
    model, data = detector()
    return api(
        lambda: mombs.DifficultyAssessor(
            model, data, at="backbone", task="detection", schedule="train-entropy", head=nn.Identity()
        )
    )


@case("API misuse", "(10, 1)", "squeeze")
def labels_of_shape_b1(tmp):
    return api(lambda: mombs.assessment_pass(small_model(), small_data(10, (10, 1)), at="body"))


@case("API misuse", "empty")
def empty_data_set(tmp):
    empty = mombs.IndexedDataset(TensorDataset(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)))
    return api(lambda: mombs.DifficultyAssessor(small_model(), empty, at="body"))


@case("API misuse", "IndexedDataset")
def data_set_not_wrapped(tmp):
    data, sampler, assessor = loop()
    return api(lambda: assessor.observe(torch.randn(4, 2), torch.rand(4)))


@case("API misuse", "scores", "40 samples")
def scores_of_another_length(tmp):
    return api(lambda: mombs.MixedOrderBatchSampler(40, 8).set_scores(np.ones(80)))


@case("API misuse", "batch_size=0")
def batch_size_zero(tmp):
    return api(lambda: mombs.MixedOrderBatchSampler(40, 0))


@case("API misuse", "nowhere")
def unknown_layer(tmp):
    return api(lambda: mombs.DifficultyAssessor(small_model(), small_data(), at="nowhere"))


# ---------------------------------------------------------------- precision and devices


def _cnn():
    model = nn.Sequential()
    model.add_module(
        "features", nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    )
    model.add_module("head", nn.Linear(4, 3))
    return model


def _images(n=12):
    g = torch.Generator().manual_seed(0)
    return mombs.IndexedDataset(
        TensorDataset(torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g))
    )


def _measured(result):
    (_, loss), (_, unc) = result
    return loss.shape == (12,) and np.isfinite(loss).all() and np.isfinite(unc).all()


@case("precision and devices", expect="ok")
def bfloat16_model_on_float32_data(tmp):
    return api(lambda: mombs.assessment_pass(_cnn().to(torch.bfloat16), _images(), at="features", k=2), check=_measured)


@case("precision and devices", "float16", "half", expect="ok")
def half_model_on_float32_data(tmp):
    return api(lambda: mombs.assessment_pass(_cnn().half(), _images(), at="features", k=2), check=_measured)


@case("precision and devices", "meta device")
def meta_device_model(tmp):
    with torch.device("meta"):
        model = _cnn()
    return api(lambda: mombs.assessment_pass(model, _images(), at="features"))


@case("precision and devices", "device")
def unknown_device(tmp):
    return cli_run(argv_of(tmp, dict(TINY, device="tpu")))


@case("precision and devices", "cuda")
def cuda_on_a_machine_without_one(tmp):
    if torch.cuda.is_available():
        return Obs(kind="api", exc=None, warnings=[], check=None, skipped="a GPU is here")
    return cli_run(argv_of(tmp, dict(TINY, device="cuda")))


# ---------------------------------------------------------------- diagnose on bad folders


@case("diagnose", "nowhere")
def diagnose_a_missing_folder(tmp):
    return cli_run(["diagnose", str(tmp / "nowhere")])


@case("diagnose", "assessment.npz", "finished")
def diagnose_an_empty_folder(tmp):
    (tmp / "empty").mkdir()
    return cli_run(["diagnose", str(tmp / "empty")])


@case("diagnose", "results.json", "finished")
def diagnose_an_unfinished_run(tmp):
    return cli_run(["diagnose", str(interrupted(tmp))])


@case("diagnose", "assessment.npz")
def diagnose_a_cut_assessment(tmp):
    folder = finish(tmp)
    cut(folder / "assessment.npz")
    return cli_run(["diagnose", str(folder), "--no-images"])


@case("diagnose", "history.npz")
def diagnose_a_cut_history(tmp):
    opts = dict(TINY, history="true")
    folder = finish(tmp, opts)
    cut(folder / "history.npz")
    return cli_run(["diagnose", str(folder), "--no-images"])


@case("diagnose", expect="ok")
def diagnose_does_not_need_results_json(tmp):
    folder = finish(tmp)
    cut(folder / "results.json")  # diagnose reads assessment.npz and config.json only
    return cli_run(
        ["diagnose", str(folder), "--no-images"],
        check=lambda: (folder / "diagnose").is_dir() or any(p.suffix == ".md" for p in folder.rglob("*")),
    )


@case("diagnose", "config.json")
def diagnose_a_cut_config_json(tmp):
    folder = finish(tmp)
    cut(folder / "config.json")
    return cli_run(["diagnose", str(folder), "--no-images"])


@case("diagnose", "score='best'", "--score")
def diagnose_an_unknown_score(tmp):
    return cli_run(["diagnose", str(finish(tmp)), "--score", "best", "--no-images"])


# ---------------------------------------------------------------- running the cases


def _child(name: str, tmp: Path, result: Path) -> None:
    os.chdir(tmp)
    out = os.open(str(tmp / ".stdout"), os.O_WRONLY | os.O_CREAT)
    os.dup2(out, 1)
    os.dup2(out, 2)
    try:
        obs = CASES[name]["fn"](tmp)
    except Exception as err:  # the case's set-up failed: recorded as what it is
        obs = Obs(
            kind="api",
            exc=dict(type=type(err).__name__, message=f"probe set-up: {err}", from_mombs=False, where="probe"),
            warnings=[],
            check=None,
            setup_failed=True,
        )
    result.write_text(json.dumps(obs, default=str))


def run_case(name: str, timeout: float = 150.0) -> dict:
    spec = CASES[name]
    with tempfile.TemporaryDirectory(prefix="mombs-probe-") as d:
        tmp = Path(d)
        result = tmp / ".result.json"
        t0 = time.time()
        pid = os.fork()
        if pid == 0:
            try:
                _child(name, tmp, result)
            finally:
                os._exit(0)
        status = None
        while time.time() - t0 < timeout:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        seconds = round(time.time() - t0, 2)
        if result.exists():
            obs = json.loads(result.read_text())
            outcome, why = classify(obs, spec["names"], spec["expect"])
        else:
            obs = {
                "died": status,
                "output": (tmp / ".stdout").read_text()[-2000:] if (tmp / ".stdout").exists() else "",
            }
            outcome, why = "CRASH", f"the case's process died (status {status}) or ran past {timeout:.0f} s"
    said = (
        obs.get("exit")
        or (obs.get("exc") or {}).get("message")
        or ("; ".join(obs.get("warnings") or []) or (obs.get("stderr") or "").strip()[-500:])
    )
    return {
        "case": name,
        "group": spec["group"],
        "outcome": outcome,
        "why": why,
        "expect": spec["expect"],
        "names": spec["names"],
        "said": (said or "")[:600],
        "check": obs.get("check"),
        "seconds": seconds,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "reliability_probe_cpu.json"))
    p.add_argument("-k", default=None, help="run only the cases whose name holds this")
    args = p.parse_args(argv)
    os.environ.pop("MOMBS_DEBUG", None)
    from mombs.envinfo import environment_info

    t0 = time.time()
    names = [n for n in CASES if args.k is None or args.k in n]
    rows = []
    for n in names:
        rows.append(run_case(n))
        print(f"{rows[-1]['outcome']:8s} {n} ({rows[-1]['seconds']} s): {rows[-1]['why']}", file=sys.stderr, flush=True)
    counts = {k: sum(r["outcome"] == k for r in rows) for k in ("CLEAR", "UNCLEAR", "SILENT", "CRASH")}
    doc = {
        "benchmark": "reliability_probe",
        "cases": len(rows),
        "counts": counts,
        "not_clear": [f"{r['case']}: {r['outcome']} ({r['why']})" for r in rows if r["outcome"] != "CLEAR"],
        "seconds": round(time.time() - t0, 1),
        "results": rows,
        "environment": environment_info("cpu"),
    }
    text = json.dumps(doc, indent=1)
    print(text)
    if args.k is None:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
