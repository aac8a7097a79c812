import json
from pathlib import Path

import numpy as np
import pytest

from mombs import cli
from mombs.compare import (
    expand_grid,
    load_results,
    paired_difference,
    run_grid,
    summarize,
)
from mombs.report import format_table, write_report
from mombs.train import RunConfig, run, run_dir_name

TINY = dict(dataset="digits", epochs=2, pivot_epoch=1, batch_size=32, test_every=1, threads=1)


def test_paired_difference_by_hand():
    scipy_stats = pytest.importorskip("scipy.stats")
    a = {0: 0.80, 1: 0.82, 2: 0.81, 3: 0.85}
    b = {0: 0.79, 1: 0.80, 2: 0.81, 3: 0.82, 9: 0.5}  # seed 9 has no partner
    d = paired_difference(a, b)
    diffs = np.array([0.01, 0.02, 0.0, 0.03])
    h = scipy_stats.t.ppf(0.975, 3) * diffs.std(ddof=1) / 2
    assert d["n"] == 4 and d["mean"] == pytest.approx(0.015)
    assert d["ci95"] == pytest.approx([0.015 - h, 0.015 + h])
    assert d["p"] == pytest.approx(scipy_stats.ttest_rel([0.80, 0.82, 0.81, 0.85], [0.79, 0.80, 0.81, 0.82]).pvalue)


def test_run_writes_logs_results_and_does_not_redo(tmp_path):
    cfg = RunConfig(strategy="mixed", noise="symmetric", noise_rate=0.3, **TINY)
    res = run(cfg, tmp_path / "r")
    assert {"dataset", "strategy", "batch_size", "seed", "top1"} <= set(res)
    assert res["noise_detection"]["base_rate"] == pytest.approx(0.3, abs=0.01)
    log = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1] and "noisy_fit" in log[0]
    assert not (tmp_path / "r" / "checkpoint.pt").exists()
    assert run(cfg, tmp_path / "r") == res  # finished: read back, not redone


@pytest.fixture
def built(monkeypatch):
    """Every run's :class:`Components`, in the order :func:`run` built them."""
    import mombs.train.runner as runner

    made = []
    original = runner.build

    def keep(*args, **kwargs):
        made.append(original(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(runner, "build", keep)
    return made


def _same_state(a, b) -> bool:
    """Two (nested) state dicts hold equal tensors, arrays and values."""
    import torch

    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b))
    if torch.is_tensor(a):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    return a == b


def test_an_interrupted_run_resumes_to_the_same_run(tmp_path, interrupt_after_epoch, built):
    cfg = RunConfig(strategy="mixed", **dict(TINY, epochs=3))
    whole = run(cfg, tmp_path / "whole")
    interrupt_after_epoch(cfg, tmp_path / "cut", 1)
    assert (tmp_path / "cut" / "checkpoint.pt").exists()
    resumed = run(cfg, tmp_path / "cut")
    a, _, b = built  # the whole run, the cut one, its resumption
    # The weights, the tracker's measures and the sampler's state are the uninterrupted run's ...
    assert _same_state(a.model.state_dict(), b.model.state_dict())
    assert _same_state(a.assessor.state_dict(), b.assessor.state_dict())
    assert _same_state(a.sampler.state_dict(), b.sampler.state_dict())
    assert np.array_equal(a.assessor.tracker.scores(), b.assessor.tracker.scores())
    # ... and so is everything the run reports but its wall-clock seconds.
    for res in (whole, resumed):
        del res["seconds"], res["curves"]["seconds"], res["environment"]
    assert resumed == whole


def test_compare_grid_table_and_report(tmp_path):
    base = RunConfig(imbalance=0.1, **TINY)
    configs = expand_grid(base, strategies=["random", "mixed"], seeds=[0, 1])
    results = run_grid(configs, tmp_path, jobs=1, progress=False)
    assert len(results) == 4
    rows = summarize(results)
    assert [r["strategy"] for r in rows] == ["random", "mixed"]
    assert rows[1]["vs_baseline"]["n"] == 2 and "few" in rows[0]
    table = format_table(rows)
    assert "random" in table and "mixed" in table and "±" in table
    path = write_report(results, rows, tmp_path)
    text = path.read_text()
    assert "curves.png" in text and (tmp_path / "per_class.png").exists()
    # a second call finds everything done
    assert len(run_grid(configs, tmp_path, jobs=1, progress=False)) == 4


def test_cli_compare_with_yaml_and_overrides(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "dataset: digits\nepochs: 1\npivot_epoch: 1\nbatch_size: 64\nstrategies: [random, mixed]\n"
        "seeds: [0]\nthreads: 1\n"
    )
    assert (
        cli.main(["compare", "--config", str(cfg), "--set", "epochs=2", "--out", str(tmp_path / "o"), "--no-progress"])
        == 0
    )
    out = capsys.readouterr().out
    assert "mixed" in out and "report:" in out
    assert json.loads((tmp_path / "o" / "resolved_config.json").read_text())["epochs"] == 2
    assert len(load_results(tmp_path / "o")) == 2


def test_cli_rejects_unknown_options(tmp_path):
    with pytest.raises(SystemExit, match="unknown option"):
        cli.main(["train", "--set", "epoch=3", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="strategy='best'"):
        cli.main(["train", "--set", "strategy=best", "--out", str(tmp_path)])


def test_constant_nonzero_paired_differences_are_significant():
    d = paired_difference({0: 1.5, 1: 2.5, 2: 3.5}, {0: 1.0, 1: 2.0, 2: 3.0})  # exact in binary
    assert d["mean"] == 0.5 and d["p"] == 0.0


def test_a_validation_split_is_required():
    with pytest.raises(ValueError, match="val_fraction=0"):
        RunConfig(val_fraction=0).validate()


def _result(strategy, seed, top1, **config):
    cfg = dict(dataset="digits", strategy=strategy, seed=seed, batch_size=16, **config)
    return {
        "dataset": "digits",
        "batch_size": 16,
        "loss": "ce",
        "strategy": strategy,
        "seed": seed,
        "top1": top1,
        "config": cfg,
    }


def test_summarize_keeps_cells_that_differ_beyond_dataset_batch_and_loss_apart():
    # Same dataset, batch size, loss and seeds, but 12 vs 40 epochs: two cells,
    # never one whose seeds overwrite each other.
    results = [_result("random", s, 0.80 + 0.01 * s, epochs=12) for s in range(3)]
    results += [_result("mixed", s, 0.81 + 0.01 * s, epochs=12) for s in range(3)]
    results += [_result("random", s, 0.60, epochs=40) for s in range(3)]
    results += [_result("mixed", s, 0.50, epochs=40) for s in range(3)]
    rows = summarize(results)
    assert len(rows) == 4 and all(r["n"] == 3 for r in rows)
    diffs = sorted(round(r["vs_baseline"]["mean"], 6) for r in rows if r["strategy"] == "mixed")
    assert diffs == [-0.1, 0.01]
    assert len({r["dataset"] for r in rows}) == 2  # the two cells' labels differ
    # Result files written before a field existed group with runs at its default.
    old = _result("random", 0, 0.7)
    new = _result("mixed", 0, 0.7, k=8)
    assert len({r["dataset"] for r in summarize([old, new])}) == 1


def test_paired_difference_uses_students_t():
    d = paired_difference({s: 0.5 + 0.01 * s for s in range(5)}, {s: 0.5 for s in range(5)})
    # t(0.975, 4) = 2.7764451051977934 (tables): 42% wider than the normal 1.96.
    h = 2.7764451051977934 * np.std([0, 0.01, 0.02, 0.03, 0.04], ddof=1) / np.sqrt(5)
    assert d["n"] == 5 and d["mean"] == pytest.approx(0.02)
    assert d["ci95"] == pytest.approx([0.02 - h, 0.02 + h], abs=1e-12)
    t = 0.02 / (np.std([0, 0.01, 0.02, 0.03, 0.04], ddof=1) / np.sqrt(5))
    from scipy import stats

    assert d["p"] == pytest.approx(2 * stats.t.sf(t, 4), abs=1e-15) and d["p"] < 0.05


def test_summarize_refuses_a_run_given_twice():
    results = [_result("random", s, 0.8) for s in range(2)] + [_result("mixed", s, 0.8) for s in range(2)]
    results.append(_result("mixed", 1, 0.9))  # the same strategy and seed again: once it overwrote the first
    with pytest.raises(ValueError, match="two runs of strategy='mixed', seed=1"):
        summarize(results)


def test_summarize_leaves_a_run_that_flagged_nothing_out_of_the_precision():
    results = [_result("random", s, 0.8) for s in range(2)]
    for r, precision in zip(results, (None, 0.5)):
        r["noise_detection"] = {"precision": precision, "recall": 0.2, "auroc_difficulty": 0.7}
    row = summarize(results)[0]
    assert row["poor_precision"] == 0.5  # not (0 + 0.5) / 2: nothing flagged is no precision at all
    assert row["poor_recall"] == pytest.approx(0.2) and row["auroc"] == pytest.approx(0.7)


def test_the_runner_trains_through_the_strategy_sampler_and_a_dataloader():
    import torch

    from mombs.planner import plan_batches
    from mombs.recipes import get_recipe
    from mombs.recipes.classification.corpus import load_corpus
    from mombs.train.build import build

    cfg = RunConfig(strategy="mixed", **TINY).validate()
    data = load_corpus(cfg)
    c = build(cfg, get_recipe(cfg.task), data, torch.device("cpu"))
    assert c.loader.batch_sampler is c.sampler and c.assessor.sampler is c.sampler
    c.sampler.set_epoch(0)
    expected = plan_batches(np.zeros(len(data.y_train)), 32, order="random", seed=0, epoch=0).tolist()
    got = [idx.tolist() for idx, _, _ in c.loader]
    assert got == expected  # before the pivot: the random plan, batch for batch
    idx, x, y = next(iter(c.loader))
    assert torch.equal(x, data.x_train[idx]) and torch.equal(y, torch.from_numpy(data.y_train)[idx])


# --- a corrupt checkpoint is named and the previous one resumes (issue 9, item 4) ---


@pytest.mark.parametrize("damage", ["truncate", "empty"])
def test_a_corrupt_checkpoint_is_named_and_the_previous_one_resumes(tmp_path, interrupt_after_epoch, damage):
    cfg = RunConfig(strategy="mixed", **dict(TINY, epochs=3))
    whole = run(cfg, tmp_path / "whole")
    out = tmp_path / "cut"
    interrupt_after_epoch(cfg, out, 1)
    ckpt, prev = out / "checkpoint.pt", out / "checkpoint.prev.pt"
    assert ckpt.exists() and prev.exists()  # epoch 1's and epoch 0's
    raw = ckpt.read_bytes()
    ckpt.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else b"")
    with pytest.warns(RuntimeWarning, match=f"checkpoint {ckpt} cannot be read"):
        resumed = run(cfg, out)
    assert resumed["top1"] == whole["top1"] and resumed["curves"]["val_top1"] == whole["curves"]["val_top1"]
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == []  # all cleaned up at the end


def test_with_every_checkpoint_corrupt_the_run_starts_over(tmp_path, interrupt_after_epoch):
    cfg = RunConfig(strategy="mixed", **dict(TINY, epochs=3))
    whole = run(cfg, tmp_path / "whole")
    out = tmp_path / "cut"
    interrupt_after_epoch(cfg, out, 1)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (out / name).write_bytes(b"PK\x03\x04 not a zip")
    with pytest.warns(RuntimeWarning, match="checkpoint.prev.pt cannot be read"):
        res = run(cfg, out)
    # Started over from epoch 0, with the log of the attempt gone: the run is the uninterrupted one.
    assert [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()] == [0, 1, 2]
    for r in (whole, res):
        del r["seconds"], r["curves"]["seconds"], r["environment"]
    assert res == whole
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == []


def test_a_checkpoint_write_keeps_the_previous_one_until_the_new_one_reads_back(tmp_path, monkeypatch):
    import torch

    from mombs.train import checkpoint as ck

    path = tmp_path / "checkpoint.pt"
    ck.save_checkpoint(path, {"key": "k", "epoch": 0})
    ck.save_checkpoint(path, {"key": "k", "epoch": 1})
    assert torch.load(ck.previous_checkpoint(path))["epoch"] == 0
    monkeypatch.setattr(torch, "save", lambda obj, f: open(f, "wb").write(b"half"))  # a write gone wrong
    with pytest.raises(OSError, match="checkpoint.pt.tmp does not read back"):
        ck.save_checkpoint(path, {"key": "k", "epoch": 2})
    monkeypatch.undo()
    assert ck.load_checkpoint(path, "k")["epoch"] == 1
    assert torch.load(ck.previous_checkpoint(path))["epoch"] == 0


# --- options checked at the door, one pivot default, committed keys (issue 9, items 1, 2, 5) ---

ROOT = Path(__file__).resolve().parents[1]


def test_the_runner_pivot_default_is_the_samplers():
    import inspect

    from mombs import MixedOrderBatchSampler

    sampler_default = inspect.signature(MixedOrderBatchSampler).parameters["pivot_epoch"].default
    assert RunConfig().pivot_epoch == sampler_default
    # The README's example plans from the pivot on instead of training random batches throughout.
    cfg = RunConfig(dataset="digits", strategy="mixed", epochs=5).validate()
    assert cfg.pivot_epoch < cfg.epochs


@pytest.mark.parametrize("strategy", ["mixed", "anti", "scl-hard", "ohem"])
def test_a_pivot_that_leaves_no_planned_epoch_is_refused(strategy):
    with pytest.raises(ValueError, match=r"pivot_epoch=5 leaves no planned epoch in epochs=5.*at most 4"):
        RunConfig(dataset="digits", strategy=strategy, epochs=5, pivot_epoch=5).validate()
    RunConfig(dataset="digits", strategy=strategy, epochs=5, pivot_epoch=4).validate()
    RunConfig(dataset="digits", strategy="random", epochs=5, pivot_epoch=5).validate()  # no plan to miss


def _committed_result_files():
    files = sorted((ROOT / "benchmarks/results/classification").glob("*.json"))
    return files + sorted((ROOT / "benchmarks/results/onepath_rerun").glob("*.json"))


def test_committed_results_keep_their_keys():
    files = _committed_result_files()
    assert len(files) >= 200
    for path in files:
        res = json.loads(path.read_text())
        cfg = RunConfig(**res["config"])
        assert cfg.key() == res["key"], path
        assert path.stem == run_dir_name(cfg), path


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs/study").glob("*.yaml")) + ["demo"])
def test_the_study_configs_name_their_pivot_and_rebuild_the_committed_runs(name):
    import yaml

    path = ROOT / "configs" / ("demo.yaml" if name == "demo" else f"study/{name}")
    options = yaml.safe_load(path.read_text())
    assert "pivot_epoch" in options  # so that a change of the library default never moves their keys
    configs = expand_grid(
        cli._run_config(options),
        strategies=options["strategies"],
        seeds=options["seeds"],
        batch_sizes=options.get("batch_sizes"),
        losses=options.get("losses"),
    )
    if options.get("export"):  # every run of a study config is a committed file, by its key
        missing = [
            run_dir_name(c) for c in configs if not (ROOT / options["export"] / f"{run_dir_name(c)}.json").exists()
        ]
        assert not missing


def test_numpy_scalars_are_accepted_where_python_numbers_are(tmp_path):
    plain = RunConfig(dataset="digits", k=8, seed=1, lr=0.05, batch_size=64, imbalance=0.5, epochs=2, pivot_epoch=1)
    numpy = RunConfig(
        dataset="digits",
        k=np.int64(8),
        seed=np.int32(1),
        lr=np.float64(0.05),
        batch_size=np.int64(64),
        imbalance=np.float64(0.5),
        epochs=np.int16(2),
        pivot_epoch=np.uint8(1),
    )
    assert numpy.key() == plain.key()  # before validate() too
    numpy.validate()
    assert type(numpy.k) is int and type(numpy.seed) is int and numpy == plain.validate()
    configs = expand_grid(
        RunConfig(**TINY), strategies=np.array(["random", "mixed"]), seeds=np.arange(2), batch_sizes=[np.int64(32)]
    )
    assert [(c.strategy, c.seed, c.batch_size) for c in configs] == [
        ("random", 0, 32),
        ("mixed", 0, 32),
        ("random", 1, 32),
        ("mixed", 1, 32),
    ]
    assert all(type(c.seed) is int for c in configs)


# --- Ctrl-C stops compare at any jobs; a rerun resumes (issue 9, item 3) ---


def test_ctrl_c_at_jobs_1_stops_with_a_message_and_keeps_the_checkpoint(tmp_path, monkeypatch, capsys):
    import mombs.report
    import mombs.train.runner as runner

    monkeypatch.setattr(mombs.report, "write_report", lambda results, rows, out, title: out / "report.md")
    original = runner._checkpoint

    def checkpoint_then_ctrl_c(c, path, cfg_, e, *rest):
        original(c, path, cfg_, e, *rest)
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "_checkpoint", checkpoint_then_ctrl_c)
    argv = [
        "compare",
        "--set",
        "dataset=digits",
        "--set",
        "epochs=2",
        "--set",
        "pivot_epoch=1",
        "--set",
        "batch_size=256",
        "--set",
        "strategies=[mixed]",
        "--set",
        "seeds=[0]",
        "--set",
        "threads=1",
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
    ]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "run the same command again" in err and len(err.splitlines()) == 1
    assert len(list((tmp_path / "o" / "runs").glob("*/checkpoint.pt"))) == 1
    monkeypatch.setattr(runner, "_checkpoint", original)
    assert cli.main(argv) == 0 and len(load_results(tmp_path / "o")) == 1


def test_ctrl_c_stops_a_two_job_compare_within_seconds_and_a_rerun_resumes(tmp_path, monkeypatch, capsys):
    """A real SIGINT to the process group of a real ``mombs compare`` (what Ctrl-C sends)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch

    import mombs.report

    cfg = tmp_path / "grid.yaml"
    cfg.write_text(
        "dataset: digits\nepochs: 4\npivot_epoch: 1\nstrategies: [mixed]\nseeds: [0]\n"
        "batch_sizes: [256, 4]\ntest_every: 1\njobs: 2\nout: o\n"
    )
    argv = ["compare", "--config", str(cfg), "--no-progress"]
    # The batch-256 run is finished before the two-job compare starts, here (one job, no plots), so that
    # nothing races: the signal comes while batch 4, the compare's only run, is mid-run.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(mombs.report, "write_report", lambda results, rows, out, title: out / "report.md")
    assert cli.main(argv + ["--set", "batch_sizes=[256]", "--set", "jobs=1", "--set", "threads=1"]) == 0
    runs = tmp_path / "o" / "runs"
    assert len(list(runs.glob("*-b256-*/results.json"))) == 1
    # The compare must get SIGINT as a terminal gives it. An ignored or blocked SIGINT survives exec, and
    # fresh-clone CI runs of this suite saw the compare run to its end (exit 0) after the signal. So the
    # child starts with SIGINT at its default and unblocked, and the test's own state is kept for the message.
    state = (
        f"test process: SIGINT handler {signal.getsignal(signal.SIGINT)}, "
        f"blocked {sorted(signal.pthread_sigmask(signal.SIG_BLOCK, []))}"
    )

    def default_sigint():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    proc = subprocess.Popen(
        [sys.executable, "-m", "mombs.cli"] + argv,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=default_sigint,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        if list(runs.glob("*-b4-*/checkpoint.pt")):  # batch 4 is mid-run: it has 3 epochs to go
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    finished = {p: p.read_bytes() for p in runs.glob("*/results.json")}
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the parent and both workers get it
    t0 = time.monotonic()
    try:
        _, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert time.monotonic() - t0 < 5  # it stops at once (about 0.6 s here)
    assert proc.returncode == 130 and "interrupted" in err and len(err.strip().splitlines()) <= 2, (state, err)
    assert len(finished) == 1 and all(p.read_bytes() == raw for p, raw in finished.items())
    ckpt = next(runs.glob("*-b4-*/checkpoint.pt"))
    kept = torch.load(ckpt, weights_only=False)  # intact: it loads
    assert kept["epoch"] < 3 and not (ckpt.parent / "results.json").exists()  # intact, not finished

    # The rerun: the same grid, in this process (one job, no plots) to keep the test short.
    assert cli.main(argv + ["--set", "jobs=1", "--set", "threads=1"]) == 0  # 2 threads crawl on a busy machine
    assert all(p.read_bytes() == raw for p, raw in finished.items())  # not redone
    assert len(load_results(tmp_path / "o")) == 2
    slow = json.loads((ckpt.parent / "results.json").read_text())
    # Resumed, not restarted: the epochs before the cut keep the timings they had.
    n = kept["epoch"] + 1
    assert slow["curves"]["seconds"][:n] == [r["seconds"] for r in kept["log"]]


# --- committed study results: written only by the study configs as they stand (issue 9, item 6) ---


def _fake_result(res_dir, **changes):
    """A copy of a committed result with config ``changes``, renamed to the key they give."""
    src = sorted((ROOT / "benchmarks/results/classification").glob("fashion-mnist-random-ce-b64-s*.json"))
    res = json.loads(src[0].read_text())
    res["config"].update(changes)
    cfg = RunConfig(**res["config"])
    res["key"] = cfg.key()
    res.update({k: v for k, v in changes.items() if k in ("seed", "strategy")})
    path = res_dir / f"{run_dir_name(cfg)}.json"
    path.write_text(json.dumps(res))
    return path


def test_the_study_table_refuses_a_record_whose_config_differs_from_its_cell(tmp_path):
    import importlib.util
    import shutil

    spec = importlib.util.spec_from_file_location("study_table", ROOT / "benchmarks" / "study_table.py")
    study_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study_table)
    folder = tmp_path / "classification"
    folder.mkdir()
    for p in (ROOT / "benchmarks/results/classification").glob("fashion-mnist-*-ce-b64-*.json"):
        shutil.copy(p, folder)
    runs = study_table.load(folder)
    assert len(runs) >= 10
    stray = _fake_result(folder, epochs=1, seed=0)  # what `--set epochs=1 --set seeds=[0]` used to export
    with pytest.raises(ValueError, match=f"(?s)1 file.*{stray.name}: epochs=1 \\(cell: 12\\)"):
        study_table.load(folder)
    with pytest.raises(SystemExit, match=stray.name):
        study_table.main(["--dir", str(folder)])
    stray.unlink()
    renamed = folder / "fashion-mnist-random-ce-b64-s0-0000000000.json"
    shutil.copy(next(folder.glob("fashion-mnist-random-ce-b64-s1-*.json")), renamed)
    with pytest.raises(ValueError, match=f"{renamed.name}: the name does not match its config"):
        study_table.load(folder)


def test_a_study_config_exports_only_as_it_stands(tmp_path, monkeypatch, capsys):
    import mombs.report

    monkeypatch.setattr(mombs.report, "write_report", lambda results, rows, out, title: out / "report.md")
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "study.yaml"
    cfg.write_text(
        "dataset: digits\nepochs: 1\nbatch_size: 256\nstrategies: [random]\nseeds: [0]\n"
        "threads: 1\nout: runs/study\nexport: committed\n"
    )
    base = ["compare", "--config", str(cfg), "--no-progress"]
    exported = tmp_path / "committed"

    assert cli.main(base + ["--set", "epochs=2"]) == 0  # an ad-hoc override: the run folder alone
    assert "not exporting to committed: epochs=2 change(s) the runs" in capsys.readouterr().err
    assert not exported.exists() and len(load_results(tmp_path / "runs/study")) == 1

    assert cli.main(base) == 0  # the config as it stands
    files = list(exported.iterdir())
    assert len(files) == 1 and "-s0-" in files[0].name
    stamp = files[0].stat().st_mtime_ns, files[0].read_bytes()

    assert cli.main(base + ["--set", "jobs=1", "--set", "epochs=1", "--out", "elsewhere"]) == 0  # same runs
    assert "not exporting" not in capsys.readouterr().err
    assert (files[0].stat().st_mtime_ns, files[0].read_bytes()) == stamp  # never overwritten

    assert cli.main(base + ["--set", "epochs=2", "--set", "export=true"]) == 0  # explicitly
    assert len(list(exported.iterdir())) == 2
    assert (files[0].stat().st_mtime_ns, files[0].read_bytes()) == stamp


def test_a_diverged_step_stops_training_before_the_optimizer_steps_on_it():
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    from mombs import IndexedDataset
    from mombs.train.engine import train_one_epoch

    class NoWeights:
        def weights(self, per_sample):
            return None

    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.bias[0] = float("nan")  # every logit row has a NaN: the first step's loss is NaN
    before = [p.detach().clone() for p in model.parameters()]
    data = IndexedDataset(TensorDataset(torch.randn(8, 3), torch.zeros(8, dtype=torch.long)))
    with pytest.raises(FloatingPointError, match=r"training diverged: step 0 .*lower lr"):
        train_one_epoch(
            model,
            DataLoader(data, batch_size=4),
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            loss_fn=lambda out, y: F.cross_entropy(out, y, reduction="none"),
            strategy=NoWeights(),
            assessor=None,
            device=torch.device("cpu"),
            num_samples=8,
            fit_fn=lambda out, y: (out.argmax(1) == y).float(),
        )
    # nothing stepped: the weights are as they were (NaN where they were NaN)
    assert all(torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0)) for a, b in zip(model.parameters(), before))


def test_a_plain_mombs_train_says_first_that_it_trains_random_batches(tmp_path, capsys):
    argv = [
        "train",
        "--set",
        "dataset=digits",
        "--set",
        "epochs=1",
        "--set",
        "batch_size=64",
        "--set",
        "threads=1",
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert err.splitlines()[0].startswith("mombs: no strategy given: training with random batches")
    assert cli.main(argv + ["--set", "strategy=random"]) == 0  # asked for by name: nothing to say
    assert "no strategy given" not in capsys.readouterr().err
