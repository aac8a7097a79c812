"""Bad input to ``mombs train``, ``mombs compare`` and the runner's Python API.

Every case must stop at the door: a one-line error that names the option and
the value given, before any data is read or any epoch runs, and with nothing
written and nothing lost (no run folder created, finished results untouched).
No case trains, so the whole file takes a few seconds.
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from mombs import cli
from mombs.compare import expand_grid, load_results, run_grid
from mombs.train import RunConfig, run


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A working folder with finished results where the commands would write by
    default; yields a check that nothing in it changed."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MOMBS_DATA", raising=False)
    for out in ("runs/train", "runs/compare"):
        run_dir = tmp_path / out / "runs" / "digits-random-ce-b16-s0-0123456789"
        run_dir.mkdir(parents=True)
        (run_dir / "results.json").write_text(json.dumps({"top1": 0.9, "key": "0123456789"}))
        (run_dir / "checkpoint.pt").write_bytes(b"a checkpoint")
    (tmp_path / "committed").mkdir()
    (tmp_path / "committed" / "run.json").write_text("{}")
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "bad.yaml").write_text("dataset: digits\nepochs: 3\n  lr: 0.1\n")
    (tmp_path / "list.yaml").write_text("- dataset\n- digits\n")
    (tmp_path / "study.yaml").write_text("dataset: digits\nepochs: 2\nexport: committed\n")

    def snapshot():
        return {
            str(p.relative_to(tmp_path)): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
            for p in sorted(tmp_path.rglob("*"))
        }

    before = snapshot()
    yield lambda: snapshot() == before


CLI_CASES = [
    # (argv, the message must match) -- one distinct bad input each
    (["train", "--set", "alpha=1.5"], r"alpha=1\.5 must be a number in \[0, 1\)"),
    (["train", "--set", "subset=0"], r"subset=0 must be an integer >= 1"),
    (["train", "--set", "lr=abc"], r"lr='abc' must be a number > 0"),
    (["train", "--set", "lr=.inf"], r"lr=inf must be a number > 0"),
    (["train", "--set", "alpha=.nan"], r"alpha=nan must be a number"),
    (["compare", "--set", "seeds=3"], r"seeds=3 must be a list of integers"),
    (["compare", "--set", "strategies=[]"], r"strategies=\[\] is empty"),
    (["compare", "--set", "strategies=mixed"], r"strategies='mixed' must be a list of strategy names"),
    (["compare", "--set", "strategies=[random, best]"], r"strategies: 'best' is not known"),
    (["compare", "--set", "seeds=[0, 0]"], r"seeds=\[0, 0\] lists 0 twice"),
    (["compare", "--set", "seeds=[0, -1]"], r"seeds: -1 must be an integer in \[0, "),
    (["compare", "--set", "batch_sizes=[16, 0]"], r"batch_sizes: 0 must be an integer >= 1"),
    (["compare", "--set", "losses=[ce, mse]"], r"losses: 'mse' is not known"),
    (["compare", "--set", "jobs=0"], r"jobs=0 must be an integer >= 1"),
    (["compare", "--set", "jobs=two"], r"jobs='two' must be an integer >= 1"),
    (["compare", "--set", "title=[1]"], r"title=\[1\] must be a string"),
    (["compare", "--set", "out=5"], r"out=5 must be a folder path"),
    (["compare", "--out", "a_file"], r"--out='a_file' exists and is not a folder"),
    (["compare", "--set", "export=true"], r"export=true exports to the config file's export folder"),
    (["compare", "--set", "export=a_file"], r"export='a_file' exists and is not a folder"),
    (["train", "--config", "bad.yaml"], r"^mombs: bad\.yaml, line 3, column 5: not valid YAML \(mapping values"),
    (["train", "--config", "list.yaml"], r"list\.yaml must hold a mapping of option: value, got a list"),
    (["train", "--config", "missing.yaml"], r"config file missing\.yaml not found"),
    (["train", "--set", "lr=[1,"], r"--set lr=\[1,: the value is not valid YAML"),
    (["train", "--set", "noisy"], r"--set takes key=value, got 'noisy'"),
    (["train", "--set", "epoch=3"], r"unknown option\(s\) \['epoch'\]"),
    (["train", "--set", "strategies=[mixed]"], r"strategies is an option of `mombs compare`"),
    (
        ["train", "--set", "dataset=fashion-mnist", "--set", "data_dir=/nonexistent"],
        r"data_dir='/nonexistent' is not an existing folder",
    ),
    (
        ["train", "--set", "dataset=fashion-mnist", "--data-dir", "/nonexistent/fmnist"],
        r"data_dir='/nonexistent/fmnist' is not an existing folder",
    ),
    (
        ["train", "--data-dir", "."],
        r"data_dir='\.' needs a dataset that reads it; give dataset= one of "
        r"task='classification': .*imagefolder, csv",
    ),
    (
        ["train", "--set", "dataset=digits", "--data-dir", "."],
        r"data_dir='\.' is not read by dataset='digits', "
        r"which needs no files",
    ),
    (
        ["train", "--set", "strategy=mixed", "--set", "epochs=5", "--set", "pivot_epoch=5"],
        r"pivot_epoch=5 leaves no planned epoch in epochs=5.*set pivot_epoch to at most 4",
    ),
    (["train", "--set", "pivot_epoch=-1"], r"pivot_epoch=-1 must be an integer >= 0"),
    (["train", "--set", "k=2.5"], r"k=2\.5 must be an integer >= 1"),
    (["train", "--set", "batch_size=0"], r"batch_size=0 must be an integer >= 1"),
    (["train", "--set", "epochs=true"], r"epochs=True must be an integer >= 1"),
    (["train", "--set", "test_every=0"], r"test_every=0 must be an integer >= 1"),
    (["train", "--set", "seed=-1"], r"seed=-1 must be an integer in \[0, "),
    (["train", "--set", "threads=0"], r"threads=0 must be an integer >= 1"),
    (["train", "--set", "val_fraction=1"], r"val_fraction=1 must be a number in \(0, 1\)"),
    (["train", "--set", "momentum=0"], r"momentum=0 must be a number in \(0, 1\).*Nesterov"),
    (["train", "--set", "weight_decay=-0.1"], r"weight_decay=-0\.1 must be a number >= 0"),
    (["train", "--set", "dataset=mnist"], r"dataset='mnist' is not known"),
    (["train", "--set", "model=vgg"], r"model='vgg' is not known"),
    (["train", "--set", "loss=mse"], r"loss='mse' is not known"),
    (["train", "--set", "strategy=best"], r"strategy='best' is not known"),
    (["train", "--set", "schedule=sometimes"], r"schedule='sometimes' is not known"),
    (["train", "--set", "noise=gaussian"], r"noise='gaussian' is not known"),
    (["train", "--set", "noise=symmetric", "--set", "noise_rate=1.0"], r"noise_rate=1\.0 must be a number in \[0, 1\)"),
    (
        ["train", "--set", "noise=pair", "--set", "noise_rate=0.5"],
        r"noise_rate=0\.5 must be below 0\.5 for noise='pair'",
    ),
    (["train", "--set", "noise_rate=0.3"], r"noise_rate=0\.3 has no effect with noise='none'"),
    (["train", "--set", "noise=human", "--set", "dataset=fashion-mnist"], r"noise='human' needs dataset='cifar100'"),
    (["train", "--set", "imbalance=0"], r"imbalance=0 must be a number in \(0, 1\]"),
    (["train", "--set", "img_max=100"], r"img_max=100 only applies to a long-tailed cut"),
    (["train", "--set", "imbalance=0.01", "--set", "img_max=7000"], r"img_max=7000 asks for 7000 images of class 0"),
    (["train", "--set", "subset=70000"], r"subset=70000 exceeds the 60000 training images"),
    (["train", "--set", "device=tpu"], r"device='tpu' is not"),
    (["train", "--set", "device=7"], r"device=7 must be a string"),
    (["train", "--set", "tags=x"], r"tags='x' must be a mapping"),
    (["train", "--set", "augment=maybe"], r"augment='maybe' must be true, false or null"),
]


@pytest.mark.parametrize("argv, message", CLI_CASES, ids=[" ".join(a) for a, _ in CLI_CASES])
def test_the_cli_stops_bad_input_at_the_door(workspace, argv, message):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    text = str(exc.value.code)
    assert text.startswith("mombs: ") and "\n" not in text, text
    assert re.search(message, text), text
    assert workspace()  # nothing written, nothing lost


def test_a_missing_data_folder_in_mombs_data_is_an_error(workspace, monkeypatch):
    monkeypatch.setenv("MOMBS_DATA", "/nowhere/fashion-mnist")
    with pytest.raises(SystemExit, match=r"MOMBS_DATA='/nowhere/fashion-mnist' \(environment variable\)"):
        cli.main(["train", "--set", "dataset=fashion-mnist"])
    assert workspace()


def test_an_explicit_fashion_mnist_folder_never_falls_back_to_the_default(tmp_path, monkeypatch):
    from mombs.recipes.classification.fashion_mnist import find_fashion_mnist, load_fashion_mnist

    monkeypatch.delenv("MOMBS_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte.*/nonexistent \(data_dir\), which does"):
        load_fashion_mnist("train", "/nonexistent")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=f"not found in {empty}, {empty / 'fashion-mnist'}"):
        load_fashion_mnist("train", empty)
    monkeypatch.setenv("MOMBS_DATA", str(tmp_path / "nowhere"))
    assert find_fashion_mnist() is None


API_CASES = [
    (lambda: RunConfig(k=np.float64(2.5)), r"k=2\.5 must be an integer >= 1"),
    (lambda: RunConfig(alpha=np.float32(1.5)), r"alpha=1\.5 must be a number in \[0, 1\)"),
    (lambda: RunConfig(tags=["a"]), r"tags=\['a'\] must be a mapping"),
    (lambda: RunConfig(tags={"when": object()}), r"tags=.* must hold JSON values"),
    (
        lambda: RunConfig(dataset="fashion-mnist", data_dir=Path("/nonexistent")),
        r"data_dir='/nonexistent' is not an existing folder",
    ),
    (lambda: RunConfig(data_dir=""), r"data_dir='' must be a path or null"),
    (lambda: RunConfig(noise_file="labels.pt"), r"noise_file='labels.pt' is only read with noise='human'"),
    (
        lambda: RunConfig(dataset="digits", strategy="mixed", epochs=3, pivot_epoch=3),
        r"pivot_epoch=3 leaves no planned epoch in epochs=3",
    ),
]


@pytest.mark.parametrize("make, message", API_CASES)
def test_run_config_validate_names_the_field_and_value(make, message):
    with pytest.raises(ValueError, match=message):
        make().validate()


def _digits(**kw):
    return RunConfig(**dict(dict(dataset="digits", epochs=2, pivot_epoch=1, batch_size=64, threads=1), **kw))


def _bad_after_construction():
    cfg = _digits()
    cfg.alpha = 2.0  # changed after it was built: run_grid checks again
    return [cfg]


GRID_CASES = [
    (lambda out: run_grid([], out), r"configs must be a non-empty list of RunConfig"),
    (lambda out: run_grid(_digits(), out), r"configs must be a non-empty list of RunConfig"),
    (lambda out: run_grid([{"dataset": "digits"}], out), r"configs\[0\] must be a RunConfig, got dict"),
    (lambda out: run_grid([_digits(), _digits()], out), r"configs holds the run digits-random-ce-b64-s0-\w+ twice"),
    (lambda out: run_grid([_digits()], out, jobs=0), r"jobs=0 must be an integer >= 1"),
    (lambda out: run_grid([_digits()], out, jobs=1.5), r"jobs=1\.5 must be an integer >= 1"),
    (lambda out: run_grid([_digits()], None), r"out_dir=None must be a folder path"),
    (lambda out: run_grid([_digits()], out, on_result="print"), r"on_result='print' must be callable"),
    (lambda out: run_grid(_bad_after_construction(), out), r"alpha=2\.0 must be a number in \[0, 1\)"),
    (lambda out: expand_grid(_digits(), strategies="mixed", seeds=[0]), r"strategies='mixed' must be a list"),
    (lambda out: expand_grid(_digits(), strategies=["mixed"], seeds=[0.5]), r"seeds: 0\.5 must be an integer"),
    (
        lambda out: expand_grid(_digits(epochs=1), strategies=["random", "mixed"], seeds=[0]),
        r"pivot_epoch=1 leaves no planned epoch in epochs=1",
    ),
    (lambda out: run(_digits(subset=0), out / "r"), r"subset=0 must be an integer >= 1"),
    (lambda out: run({"dataset": "digits"}, out / "r"), r"cfg must be a RunConfig, got dict"),
]


@pytest.mark.parametrize("call, message", GRID_CASES)
def test_the_runner_api_stops_bad_input_before_writing(workspace, call, message):
    out = Path("runs/compare")  # holds a finished run already
    with pytest.raises(ValueError, match=message):
        call(out)
    assert workspace()


def test_a_run_whose_data_cannot_be_read_creates_no_folder(tmp_path):
    cfg = _digits(imbalance=0.5, img_max=10, subset=30)  # too few images of some class after the subset
    with pytest.raises(ValueError, match="img_max=10 asks for"):
        run(cfg, tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_the_readme_train_example_plans_its_epochs():
    # `mombs train --set dataset=digits --set strategy=mixed --set epochs=5`: planned from the pivot on.
    cfg = cli._run_config({"dataset": "digits", "strategy": "mixed", "epochs": 5})
    assert 0 < cfg.pivot_epoch < cfg.epochs


def test_the_cli_help_says_how_export_works(capsys):
    with pytest.raises(SystemExit):
        cli.main(["compare", "--help"])
    text = capsys.readouterr().out
    assert "--set export=true" in text and "Ctrl-C" in text


# ---------------------------------------------------------------------- #
# Run folders and damaged files (issue 23): each a one-line error (or warning) naming the
# option or the file, and the run folder as it was (or, for a file set aside, the file kept).

#: The smallest digits run: trains in about 0.1 s.
TINY = {"dataset": "digits", "subset": 120, "epochs": 1, "threads": 1, "strategy": "random"}


def _argv(out, options: dict) -> list:
    return ["train", "--out", str(out), "--no-progress"] + [
        a for k, v in options.items() for a in ("--set", f"{k}={v}")
    ]


def _folder(out, options: dict) -> Path:
    from mombs.train import run_dir_name

    return Path(out) / run_dir_name(_config(options))


def _config(options: dict) -> RunConfig:
    """The run config ``mombs train`` makes of these ``--set`` options."""
    return cli._run_config(cli._parse_overrides([f"{k}={v}" for k, v in options.items()]))


def _tree(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
        for p in sorted(Path(folder).rglob("*"))
    }


def _refused(argv) -> str:
    """The one line ``mombs train`` stops with (the traceback stays behind --debug)."""
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    text = str(exc.value.code)
    assert text.startswith("mombs: ") and "\n" not in text and "Traceback" not in text, text
    return text


def _pngs(folder: Path, n: int = 4) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(folder / c / f"{i}.png")
    return folder


def _cut(path: Path) -> bytes:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return raw[: len(raw) // 2]


@pytest.mark.parametrize("change", ["history", "data_dir", "data in data_dir"])
def test_a_run_folder_holding_other_settings_is_refused_naming_the_difference(tmp_path, change):
    from mombs.train.config import _fingerprint

    folder = tmp_path / "run"
    if change == "history":
        first, second = RunConfig(**TINY), RunConfig(**dict(TINY, history=True))
        message = r"holds a run with history=False; this command asks history=True\. Give it another folder"
    else:
        imgs = _pngs(tmp_path / "imgs")
        opts = dict(dataset="imagefolder", epochs=1, threads=1, strategy="random")
        first = RunConfig(**opts, data_dir=str(imgs))
        if change == "data_dir":
            import shutil

            shutil.copytree(imgs, tmp_path / "copy")
            second = RunConfig(**opts, data_dir=str(tmp_path / "copy"))
            message = rf"holds a run with data_dir='{imgs}'; this command asks data_dir='{tmp_path / 'copy'}'"
        else:
            second = RunConfig(**opts, data_dir=str(imgs))
            message = rf"holds a run on data_dir='{imgs}' as it was then; files in it were added, removed or changed"
    run(first, folder)
    if change == "data in data_dir":
        _pngs(imgs, n=5)  # a picture added to each class
        _fingerprint.cache_clear()  # as a new process lists the folder again
    before = _tree(folder)
    with pytest.raises(ValueError) as err:
        run(second, folder)
    assert re.search(message, str(err.value)) and "\n" not in str(err.value), str(err.value)
    assert _tree(folder) == before


def test_mombs_train_with_a_changed_data_folder_or_history_never_reuses_a_run(tmp_path, capsys):
    imgs = _pngs(tmp_path / "imgs")
    import shutil

    shutil.copytree(imgs, tmp_path / "copy")
    opts = dict(dataset="imagefolder", epochs=1, threads=1, strategy="random", data_dir=str(imgs))
    cli.main(_argv(tmp_path / "runs", opts))
    first = _folder(tmp_path / "runs", opts)
    before = _tree(first)
    for changed in (dict(opts, data_dir=str(tmp_path / "copy")), dict(opts, history="true")):
        cli.main(_argv(tmp_path / "runs", changed))
        assert (
            _folder(tmp_path / "runs", changed) != first
            and (_folder(tmp_path / "runs", changed) / "results.json").exists()
        )
    assert _tree(first) == before
    assert len([p for p in (tmp_path / "runs").iterdir() if p.is_dir()]) == 3


def test_a_locked_run_folder_is_one_line_naming_the_other_process(tmp_path, monkeypatch):
    import subprocess
    import sys

    monkeypatch.delenv("MOMBS_DEBUG", raising=False)
    folder = _folder(tmp_path, TINY)
    code = (
        "import sys, time\nfrom mombs.train.lock import run_lock\n"
        "with run_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _tree(folder)
        text = _refused(_argv(tmp_path, TINY))
        assert re.search(
            rf"^mombs: RunFolderLocked: run folder {re.escape(str(folder))} is being written by another "
            rf"mombs process \(pid {holder.pid} on ",
            text,
        ), text
        assert _tree(folder) == before and list(before) == [".lock"]
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("damage", ["results.json cut", "results.json empty", "assessment.npz cut"])
def test_a_damaged_file_of_a_run_is_set_aside_named_in_one_line(
    tmp_path, capsys, monkeypatch, damage, interrupt_after_epoch
):
    import sys
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):  # as outside pytest: on stderr
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    monkeypatch.setattr(warnings, "showwarning", show)
    monkeypatch.delenv("MOMBS_DEBUG", raising=False)
    opts = dict(TINY, epochs=2)
    folder = _folder(tmp_path, opts)
    name = damage.split()[0]
    if name == "results.json":  # a finished run whose results file was cut
        cli.main(_argv(tmp_path, opts))
        kept = _cut(folder / name) if damage.endswith("cut") else b""
        (folder / name).write_bytes(kept)
    else:  # an unfinished run, killed while it wrote its arrays
        interrupt_after_epoch(_config(opts), folder, 0)
        (folder / name).write_bytes(b"PK\x03\x04 cut short")
        kept = (folder / name).read_bytes()
    capsys.readouterr()
    cli.main(_argv(tmp_path, opts))
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warned) == 1 and re.search(
        rf"^mombs: warning: {re.escape(str(folder / name))} cannot be read "
        rf"\(\w+: .*\); moved to {name}\.corrupt",
        warned[0],
    ), warned
    assert (folder / f"{name}.corrupt").read_bytes() == kept  # set aside as it was
    json.loads((folder / "results.json").read_text())
    with np.load(folder / "assessment.npz") as npz:  # written again, whole
        assert npz["loss"].shape == (len(npz["loss"]),)
    if name != "results.json":  # resumed after epoch 0
        assert [json.loads(x)["epoch"] for x in (folder / "log.jsonl").read_text().splitlines()] == [0, 1]


def test_a_warning_raised_in_a_compare_worker_is_one_line_too(tmp_path, capfd, monkeypatch, interrupt_after_epoch):
    """With ``jobs=2`` the runs train in spawned workers, whose warnings read as the parent's."""
    import mombs.report
    from mombs.train import run_dir_name

    monkeypatch.delenv("MOMBS_DEBUG", raising=False)
    monkeypatch.setattr(mombs.report, "write_report", lambda results, rows, out, title: out / "report.md")
    opts = {"dataset": "digits", "subset": 120, "epochs": 2, "threads": 1}
    cfg = _config(dict(opts, strategy="random", seed=0))  # seed 0 of the grid below, stopped after epoch 0
    interrupt_after_epoch(cfg, tmp_path / "runs" / run_dir_name(cfg), 0)
    argv = ["compare", "--out", str(tmp_path), "--no-progress", "--set", "strategies=[random]"]
    argv += [a for k, v in opts.items() for a in ("--set", f"{k}={v}")]
    (ckpt,) = (tmp_path / "runs").glob("*/checkpoint.pt")
    ckpt.write_bytes(b"PK\x03\x04 cut short")
    capfd.readouterr()
    assert cli.main(argv + ["--set", "seeds=[0, 1]", "--set", "jobs=2"]) == 0
    warned = [line for line in capfd.readouterr().err.splitlines() if "warning" in line.lower()]
    assert len(warned) == 1 and re.search(
        rf"^mombs: warning: checkpoint {re.escape(str(ckpt))} cannot be read \(.*\); moved to checkpoint\.pt\.corrupt",
        warned[0],
    ), warned
    assert len(load_results(tmp_path)) == 2


def _decathlon(root: Path, cut_case: int) -> Path:
    nib = pytest.importorskip("nibabel")
    rng = np.random.default_rng(0)
    training = []
    for i in range(3):
        vol, lab = rng.uniform(-900, 200, (16, 16, 4)).astype(np.float32), np.zeros((16, 16, 4), np.uint8)
        lab[4:8, 4:8, 1:3] = 1
        for sub, arr in (("imagesTr", vol), ("labelsTr", lab)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(arr, np.eye(4)), str(root / sub / f"case_{i}.nii.gz"))
        training.append({"image": f"./imagesTr/case_{i}.nii.gz", "label": f"./labelsTr/case_{i}.nii.gz"})
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
    _cut(root / "imagesTr" / f"case_{cut_case}.nii.gz")
    return root / "imagesTr" / f"case_{cut_case}.nii.gz"


def _coco(root: Path, damage: str):
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
    if damage == "json":
        _cut(root / "instances.json")
        return root / "instances.json"
    _cut(root / "images" / "2.png")
    return "2.png"


def _image_folder_cut(root: Path) -> str:
    _cut(_pngs(root) / "b" / "1.png")
    return "b/1.png"  # named as it lies in the folder given


def _csv(root: Path, damage: str) -> Path:
    _pngs(root)
    rows = ["path,label"] + [f"{c}/{i}.png,{c}" for c in "ab" for i in range(4)]
    if damage == "fields":
        rows[3] = "a/2.png,a,extra"
    elif damage == "label":
        rows[3] = "a/2.png,"
    (root / "labels.csv").write_bytes("\n".join(rows).encode() + (b"\xff\xfe\n" if damage == "bytes" else b"\n"))
    return root / "labels.csv"


DAMAGED = {
    # name: (makes the data and returns the file to be named, options, the message after the file's name)
    "imagefolder: a PNG cut in half": (
        _image_folder_cut,
        {"dataset": "imagefolder"},
        r"1 of 8 image\(s\) do not decode: b/1\.png \(OSError: ",
    ),
    "csv: a row with more fields than the header": (
        lambda d: _csv(d, "fields"),
        {"dataset": "csv"},
        r"line 4 has 3 fields but the header names 2",
    ),
    "csv: a row without its label": (lambda d: _csv(d, "label"), {"dataset": "csv"}, r"line 4 .*the label is empty"),
    "csv: bytes that are not text": (lambda d: _csv(d, "bytes"), {"dataset": "csv"}, r"is not a UTF-8 text file"),
    "msd: a .nii.gz cut in half": (lambda d: _decathlon(d, 1), {"task": "segmentation", "dataset": "msd"}, r"EOFError"),
    "coco: a JSON file cut in half": (
        lambda d: _coco(d, "json"),
        {"task": "detection", "dataset": "coco"},
        r"not a JSON file that parses",
    ),
    "coco: an image cut in half": (
        lambda d: _coco(d, "png"),
        {"task": "detection", "dataset": "coco"},
        r"1 image files do not decode: '2\.png' \(OSError",
    ),
}


@pytest.mark.parametrize("name", list(DAMAGED))
def test_a_damaged_data_file_is_one_line_naming_it_and_writes_nothing(tmp_path, monkeypatch, name):
    make, options, message = DAMAGED[name]
    monkeypatch.delenv("MOMBS_DEBUG", raising=False)
    data = tmp_path / "data"
    data.mkdir()
    bad = make(data)
    data_dir = bad if options["dataset"] == "csv" else data
    before = _tree(tmp_path)
    text = _refused(
        _argv(tmp_path / "runs", dict(options, epochs=1, threads=1, strategy="random", data_dir=str(data_dir)))
    )
    assert str(bad) in text and re.search(message, text), text
    assert _tree(tmp_path) == before  # no run folder, nothing changed


def test_compare_over_a_cut_results_json_redoes_that_run_and_names_the_file(tmp_path, monkeypatch):
    from mombs.compare import load_results

    monkeypatch.delenv("MOMBS_DEBUG", raising=False)
    argv = [
        "compare",
        "--out",
        str(tmp_path),
        "--no-progress",
        "--set",
        "dataset=digits",
        "--set",
        "subset=120",
        "--set",
        "epochs=1",
        "--set",
        "threads=1",
        "--set",
        "strategies=[random]",
        "--set",
        "seeds=[0]",
    ]
    cli.main(argv)
    [path] = (tmp_path / "runs").glob("*/results.json")
    kept = _cut(path)
    with pytest.warns(RuntimeWarning, match=rf"{re.escape(str(path))} cannot be read \(JSONDecodeError: "):
        cli.main(argv)  # was a JSONDecodeError traceback: the grid took the cut file for a finished run
    assert (path.parent / "results.json.corrupt").read_bytes() == kept and json.loads(path.read_text())["top1"] > 0
    _cut(path)  # a reader of the folder leaves a cut file out, named in one line
    with pytest.warns(RuntimeWarning, match=rf"{re.escape(str(path))} cannot be read .*its run is left out") as w:
        assert load_results(tmp_path) == []
    assert all("\n" not in str(x.message) for x in w)
