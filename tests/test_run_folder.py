"""One run folder, one writer; a changed command never reuses an old run; damaged files are
named and set aside (issue 23, items 1, 2, 3 and 7)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mombs.train import RunConfig, run
from mombs.train.lock import RunFolderLocked, run_lock

TINY = dict(dataset="digits", epochs=3, pivot_epoch=1, batch_size=64, test_every=1, threads=1, strategy="mixed")


def _same(a: dict, b: dict) -> bool:
    a, b = json.loads(json.dumps(a)), json.loads(json.dumps(b))
    for r in (a, b):
        r.pop("seconds"), r["curves"].pop("seconds"), r.pop("environment")
    return a == b


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    return run(RunConfig(**TINY), tmp_path_factory.mktemp("whole") / "run")


def _hold_lock(folder: Path):
    """A second process that holds the folder's lock until it is killed."""
    code = (
        "import sys, time\nfrom mombs.train.lock import run_lock\n"
        "with run_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_second_writer_is_refused_naming_the_first_and_a_dead_ones_lock_is_stale(tmp_path, whole):
    folder = tmp_path / "run"
    child = _hold_lock(folder)
    try:
        with pytest.raises(RunFolderLocked, match=rf"being written by another mombs process \(pid {child.pid} on "):
            run(RunConfig(**TINY), folder)
        assert sorted(p.name for p in folder.iterdir()) == [".lock"]  # nothing written beside the lock
    finally:
        child.kill()
        child.wait()
    # The holder was killed with its lock file still there: the lock died with it.
    assert (folder / ".lock").exists()
    assert _same(run(RunConfig(**TINY), folder), whole)


def test_the_lock_is_free_again_after_its_context(tmp_path):
    with run_lock(tmp_path):
        pass
    with run_lock(tmp_path):  # no error: the same process, or the next, takes it again
        pass


def test_a_cut_results_file_is_set_aside_and_the_run_redone(tmp_path, whole):
    folder = tmp_path / "run"
    run(RunConfig(**TINY), folder)
    (folder / "results.json").write_text('{"top1": 0.9')  # cut short
    with pytest.warns(RuntimeWarning, match=r"results.json cannot be read .*moved to results.json.corrupt"):
        res = run(RunConfig(**TINY), folder)
    assert _same(res, whole) and (folder / "results.json.corrupt").exists()


def test_a_changed_command_is_refused_naming_the_difference(tmp_path):
    folder = tmp_path / "run"
    run(RunConfig(**TINY), folder)
    with pytest.raises(
        ValueError,
        match=r"holds a run with test_every=1; this command asks test_every=2\. "
        r"Give it another folder",
    ):
        run(RunConfig(**dict(TINY, test_every=2)), folder)
    with pytest.raises(ValueError, match=r"holds a run with .*epochs=3.*; this command asks .*epochs=4"):
        run(RunConfig(**dict(TINY, epochs=4)), folder)


def test_history_is_part_of_a_runs_key_and_old_keys_stay():
    assert RunConfig(**dict(TINY, history=True)).key() != RunConfig(**TINY).key()
    assert RunConfig(**dict(TINY, history=False)).key() == RunConfig(**TINY).key()
    assert RunConfig().key() == "11f7a7d05f"  # the key of every default run made before


def test_your_data_folder_and_its_content_are_part_of_the_key(tmp_path):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "imgs" / c / "0.png")
    shutil.copytree(tmp_path / "imgs", tmp_path / "copy")
    key = RunConfig(dataset="imagefolder", data_dir=str(tmp_path / "imgs")).key()
    assert RunConfig(dataset="imagefolder", data_dir=str(tmp_path / "copy")).key() != key  # another folder
    time.sleep(0.01)
    Image.fromarray(np.ones((8, 8), np.uint8)).save(tmp_path / "imgs" / "b" / "1.png")  # a file added
    from mombs.train.config import _fingerprint

    _fingerprint.cache_clear()  # a new process: the listing is read again
    assert RunConfig(dataset="imagefolder", data_dir=str(tmp_path / "imgs")).key() != key


def test_checkpoints_left_beside_finished_results_are_removed(tmp_path, whole):
    folder = tmp_path / "run"
    run(RunConfig(**TINY), folder)
    (folder / "checkpoint.pt").write_bytes(b"left by a run killed after writing results.json")
    (folder / "checkpoint.prev.pt").write_bytes(b"and its previous one")
    assert _same(run(RunConfig(**TINY), folder), whole)
    assert not any("checkpoint" in p.name for p in folder.iterdir())


def test_another_runs_checkpoint_copied_in_does_not_make_the_run_start_over(tmp_path, whole, interrupt_after_epoch):
    other = tmp_path / "other"
    interrupt_after_epoch(RunConfig(**dict(TINY, seed=5)), other, 0)
    folder = tmp_path / "run"
    interrupt_after_epoch(RunConfig(**TINY), folder, 1)  # checkpoint.pt: epoch 1, .prev: epoch 0
    shutil.copy(other / "checkpoint.pt", folder / "checkpoint.pt")
    with pytest.warns(RuntimeWarning, match=r"belongs to another run .*moved to checkpoint.pt.foreign"):
        res = run(RunConfig(**TINY), folder)
    log = [json.loads(line)["epoch"] for line in (folder / "log.jsonl").read_text().splitlines()]
    assert log == [0, 1, 2] and _same(res, whole)  # resumed after epoch 0, not from scratch


def test_a_full_disk_is_named_with_the_path(tmp_path, monkeypatch):
    import mombs._atomic as atomic

    def torch_like(tmp):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(atomic, "_disk_is_full", lambda folder: True)
    with pytest.raises(OSError, match=rf"cannot write {tmp_path / 'checkpoint.pt'}: the disk is full"):
        atomic.atomic_write(tmp_path / "checkpoint.pt", torch_like)
    assert not list(tmp_path.iterdir())  # no temporary file left behind


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux's")
def test_compare_workers_die_with_a_killed_parent(tmp_path):
    argv = [
        sys.executable,
        "-m",
        "mombs.cli",
        "compare",
        "--out",
        str(tmp_path),
        "--no-progress",
        "--set",
        "dataset=digits",
        "--set",
        "epochs=200",
        "--set",
        "strategies=[random, mixed]",
        "--set",
        "seeds=[0]",
        "--set",
        "jobs=2",
        "--set",
        "threads=1",
    ]
    parent = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(list((tmp_path / "runs").glob("*/log.jsonl"))) < 2:
        time.sleep(0.2)  # both workers are training
    workers = [p for p in _children(parent.pid) if Path(f"/proc/{p}/cmdline").read_bytes().count(b"spawn")]
    assert len(workers) >= 2, "the pool's workers were not found"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(
        Path(f"/proc/{p}").exists() and "Z" not in Path(f"/proc/{p}/stat").read_text().split()[2] for p in workers
    ):
        time.sleep(0.1)
    alive = [
        p
        for p in workers
        if Path(f"/proc/{p}").exists() and Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    ]
    for p in alive:
        os.kill(p, signal.SIGKILL)
    assert not alive, f"workers {alive} outlived their parent"


@pytest.mark.parametrize("name", ["assessment.npz", "history.npz"])
def test_diagnose_names_a_damaged_npz(tmp_path, name):
    from mombs.diagnose import diagnose

    folder = tmp_path / "run"
    run(RunConfig(**dict(TINY, history=True)), folder)
    raw = (folder / name).read_bytes()
    (folder / name).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=rf"{folder / name} cannot be read \(BadZipFile: .*run the same "):
        diagnose(folder, images=False)


def test_mombs_train_prints_one_line_for_an_error_during_the_run(tmp_path, capsys, monkeypatch):
    from PIL import Image

    from mombs import cli

    monkeypatch.delenv("MOMBS_DEBUG", raising=False)
    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
    (tmp_path / "imgs" / "b" / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    argv = [
        "train",
        "--set",
        "dataset=imagefolder",
        "--data-dir",
        str(tmp_path / "imgs"),
        "--set",
        "epochs=1",
        "--out",
        str(tmp_path / "runs"),
        "--no-progress",
    ]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    text = str(exc.value.code)
    assert text.startswith("mombs: 1 of 7 image(s) do not decode: b/cut.png") and "\n" not in text, text
    assert not (tmp_path / "runs").exists()  # refused at the door: nothing written
    with pytest.raises(ValueError, match="do not decode"):  # the traceback, for whoever asks
        cli.main(argv + ["--debug"])


def test_a_diverged_run_is_one_line_naming_the_kind_of_failure(tmp_path):
    from mombs import cli

    argv = [
        "train",
        "--set",
        "dataset=digits",
        "--set",
        "epochs=2",
        "--set",
        "lr=1000000000000.0",
        "--set",
        "threads=1",
        "--set",
        "strategy=random",
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    text = str(exc.value.code)
    assert text.startswith("mombs: FloatingPointError: training diverged") and "\n" not in text, text


def test_a_cut_nifti_volume_is_named(tmp_path):
    nib = pytest.importorskip("nibabel")
    from mombs.recipes.segmentation.covid_ct import read_medseg_covid

    vol = np.random.default_rng(0).uniform(-1000, 400, (32, 32, 10)).astype(np.float32)
    mask = np.zeros((32, 32, 10), np.uint8)
    mask[10:14, 10:14, 3:6] = 1
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "tr_im.nii.gz"))
    nib.save(nib.Nifti1Image(mask, np.eye(4)), str(tmp_path / "tr_mask.nii.gz"))
    raw = (tmp_path / "tr_im.nii.gz").read_bytes()
    (tmp_path / "tr_im.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(
        ValueError,
        match=rf"{tmp_path / 'tr_im.nii.gz'}: the NIfTI file's voxel data cannot be "
        r"read \(EOFError: .*cut short or damaged",
    ):
        read_medseg_covid(tmp_path)


def test_a_cut_deeplesion_png_is_named(tmp_path):
    from PIL import Image

    from mombs.recipes.detection.deeplesion import hu_from_png

    path = tmp_path / "000.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 60000, (64, 64)).astype(np.uint16)).save(path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=rf"{path}: the PNG cannot be read \(OSError: .*cut short or damaged"):
        hu_from_png(path)
