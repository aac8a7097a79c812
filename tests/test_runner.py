import json

import numpy as np
import pytest

from mombs import cli
from mombs.compare import expand_grid, load_results, paired_difference, run_grid, summarize
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
    assert d["p"] == pytest.approx(scipy_stats.ttest_rel([.80, .82, .81, .85], [.79, .80, .81, .82]).pvalue)


def test_run_writes_logs_results_and_does_not_redo(tmp_path):
    cfg = RunConfig(strategy="mixed", noise="symmetric", noise_rate=0.3, **TINY)
    res = run(cfg, tmp_path / "r")
    assert {"dataset", "strategy", "batch_size", "seed", "top1"} <= set(res)
    assert res["noise_detection"]["base_rate"] == pytest.approx(0.3, abs=0.01)
    log = [json.loads(l) for l in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1] and "noisy_fit" in log[0]
    assert not (tmp_path / "r" / "checkpoint.pt").exists()
    assert run(cfg, tmp_path / "r") == res  # finished: read back, not redone


def test_an_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    cfg = RunConfig(strategy="mixed", **dict(TINY, epochs=3))
    whole = run(cfg, tmp_path / "whole")
    import mombs.train as train

    calls = {"n": 0}
    original = train._evaluate

    def dying_evaluate(*a, **k):  # kill the run after its second epoch's checkpoint... almost
        calls["n"] += 1
        if calls["n"] == 4:  # epoch 1: validation (3rd call) then test (4th): die in between
            raise KeyboardInterrupt
        return original(*a, **k)

    monkeypatch.setattr(train, "_evaluate", dying_evaluate)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "cut")
    monkeypatch.setattr(train, "_evaluate", original)
    assert (tmp_path / "cut" / "checkpoint.pt").exists()
    resumed = run(cfg, tmp_path / "cut")
    assert resumed["top1"] == whole["top1"] and resumed["curves"]["val_top1"] == whole["curves"]["val_top1"]


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
    cfg.write_text("dataset: digits\nepochs: 1\npivot_epoch: 1\nbatch_size: 64\nstrategies: [random, mixed]\n"
                   "seeds: [0]\nthreads: 1\n")
    assert cli.main(["compare", "--config", str(cfg), "--set", "epochs=2", "--out", str(tmp_path / "o"),
                     "--no-progress"]) == 0
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
