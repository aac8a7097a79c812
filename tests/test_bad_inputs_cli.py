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
from mombs.compare import expand_grid, run_grid
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
        return {str(p.relative_to(tmp_path)): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
                for p in sorted(tmp_path.rglob("*"))}

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
    (["train", "--set", "dataset=fashion-mnist", "--set", "data_dir=/nonexistent"],
     r"data_dir='/nonexistent' is not an existing folder"),
    (["train", "--set", "dataset=fashion-mnist", "--data-dir", "/nonexistent/fmnist"],
     r"data_dir='/nonexistent/fmnist' is not an existing folder"),
    (["train", "--data-dir", "."], r"data_dir='\.' needs a dataset that reads it; give dataset= one of "
                                    r"task='classification': .*imagefolder, csv"),
    (["train", "--set", "dataset=digits", "--data-dir", "."], r"data_dir='\.' is not read by dataset='digits', "
                                                             r"which needs no files"),
    (["train", "--set", "strategy=mixed", "--set", "epochs=5", "--set", "pivot_epoch=5"],
     r"pivot_epoch=5 leaves no planned epoch in epochs=5.*set pivot_epoch to at most 4"),
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
    (["train", "--set", "noise=pair", "--set", "noise_rate=0.5"], r"noise_rate=0\.5 must be below 0\.5 for noise='pair'"),
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
    (lambda: RunConfig(dataset="fashion-mnist", data_dir=Path("/nonexistent")),
     r"data_dir='/nonexistent' is not an existing folder"),
    (lambda: RunConfig(data_dir=""), r"data_dir='' must be a path or null"),
    (lambda: RunConfig(noise_file="labels.pt"), r"noise_file='labels.pt' is only read with noise='human'"),
    (lambda: RunConfig(dataset="digits", strategy="mixed", epochs=3, pivot_epoch=3),
     r"pivot_epoch=3 leaves no planned epoch in epochs=3"),
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
    (lambda out: expand_grid(_digits(epochs=1), strategies=["random", "mixed"], seeds=[0]),
     r"pivot_epoch=1 leaves no planned epoch in epochs=1"),
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
