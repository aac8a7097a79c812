"""Data quality (issue 13): AUM, cartography, the label-issue table, the report and `mombs diagnose`.

Known answers: figures on a hand-computed history, a planted flipped sample
ranked first, exact table contents; run folders are written here with the files
`mombs train` leaves, with synthetic values.
"""

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mombs import QUADRANTS, DifficultyAssessor, DifficultyTracker, IndexedDataset, cli, data_quality
from mombs.diagnose import diagnose
from mombs.quality import (
    area_under_margin,
    aum_threshold,
    cartography,
    detection_metrics,
    given_label_margin,
    given_label_prob,
    write_report,
    write_table,
)

NAN = float("nan")


def test_margin_and_given_probability_by_hand():
    logits = torch.tensor([[1.0, 3.0, 2.0], [0.0, 0.0, 5.0], [2.0, 2.0, 0.0]])
    labels = torch.tensor([1, 0, 0])
    assert given_label_margin(logits, labels).tolist() == [1.0, -5.0, 0.0]
    p = given_label_prob(logits, labels)
    e = np.exp([1.0, 3.0, 2.0])
    assert p[0].item() == pytest.approx(e[1] / e.sum())
    assert p[2].item() == pytest.approx(np.exp(2) / (2 * np.exp(2) + 1))


def test_aum_and_cartography_on_a_hand_computed_history():
    # 3 epochs x 3 samples; sample 2 was not seen in epoch 1 (NaN / -1).
    margin = np.array([[2.0, -1.0, 0.5], [4.0, -3.0, NAN], [0.0, -2.0, 1.5]])
    prob = np.array([[0.6, 0.1, 0.5], [0.8, 0.3, NAN], [1.0, 0.2, 0.7]])
    pred = np.array([[0, 1, 2], [0, 1, -1], [0, 0, 1]])
    labels = np.array([0, 0, 2])
    assert area_under_margin(margin).tolist() == [2.0, -2.0, 1.0]
    c = cartography(prob, pred, labels)
    np.testing.assert_allclose(c["confidence"], [0.8, 0.2, 0.6])
    np.testing.assert_allclose(c["variability"], [np.sqrt(0.08 / 3), np.sqrt(0.02 / 3), 0.1])
    np.testing.assert_allclose(c["correctness"], [1.0, 1 / 3, 0.5])
    assert np.isnan(cartography(prob)["correctness"]).all()
    # Pleiss et al.: the 99th percentile of the threshold samples' AUM.
    assert aum_threshold(np.arange(101.0), 99) == pytest.approx(99.0)
    assert np.isnan(area_under_margin(np.full((2, 1), NAN)))[0]


def test_detection_metrics_by_hand():
    score = np.array([0.9, 0.8, 0.7, 0.2, 0.1])
    truth = np.array([True, False, True, False, False])
    flagged = np.array([True, True, False, False, False])
    m = detection_metrics(score, flagged, truth)
    assert (m["precision"], m["recall"], m["f1"]) == (0.5, 0.5, 0.5)
    assert m["precision_at_k"] == 0.5  # top 2: one of two is wrong
    assert m["auroc"] == pytest.approx(5 / 6)  # pairs (pos, neg) ordered right: 5 of 6
    assert m["ap"] == pytest.approx((1 + 2 / 3) / 2)
    assert (m["flagged"], m["wrong"]) == (2, 2)


def _planted(n=40, epochs=4, seed=0):
    """A history where sample 7 is a flipped label: high loss, low uncertainty, negative margin."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    loss = rng.uniform(0.0, 0.5, n)
    unc = rng.uniform(0.2, 1.0, n)
    margin = rng.uniform(0.5, 3.0, (epochs, n))
    prob = rng.uniform(0.6, 0.99, (epochs, n))
    pred = np.tile(labels, (epochs, 1))
    loss[7], unc[7] = 5.0, 0.01
    margin[:, 7], prob[:, 7] = -2.0, 0.02
    pred[:, 7] = (labels[7] + 1) % 4
    history = {
        "train_loss": rng.uniform(0, 1, (epochs, n)),
        "prob_given": prob,
        "margin": margin,
        "pred": pred,
        "epochs": np.arange(epochs),
    }
    wrong = np.zeros(n, bool)
    wrong[7] = True
    return loss, unc, labels, history, wrong


@pytest.mark.parametrize("score", ["auto", "quadrant", "loss", "aum", "confidence", "combined"])
def test_a_planted_flipped_sample_is_ranked_first_and_flagged(score):
    loss, unc, labels, history, wrong = _planted()
    q = data_quality(loss, unc, labels, history=history, wrong_label=wrong, score=score)
    t = q.table
    assert t["label_issue_rank"][7] == 1 and q.ranked()[0] == 7 and q.top(1).tolist() == [7]
    assert t["flagged"][7] and t["quadrant"][7] == "poorly-labeled"
    assert t["predicted_label"][7] == (labels[7] + 1) % 4
    assert q.summary()["known_noise"]["precision_at_k"] == 1.0
    assert q.score == ("aum" if score == "auto" else score)
    if score in ("auto", "combined", "aum", "loss"):  # AUM < 0 and loss > ln 2 only for the planted sample
        assert t["flagged"].sum() == 1
    assert sorted(np.unique(t["label_issue_rank"])) == list(range(1, 41))


def test_without_history_the_table_says_what_is_missing():
    loss, unc, labels, _, _ = _planted()
    q = data_quality(loss, unc, labels)
    assert q.score == "loss" and "aum" not in q.table and "confidence" not in q.table
    assert q.table["label_issue_rank"][7] == 1
    assert any("history=true" in m for m in q.missing)
    with pytest.raises(ValueError, match="score='aum' needs the per-epoch history"):
        data_quality(loss, unc, labels, score="aum")


def test_bad_arguments_raise_value_errors_naming_them():
    loss, unc, labels, history, _ = _planted()
    with pytest.raises(ValueError, match="score='nope'"):
        data_quality(loss, unc, labels, score="nope")
    with pytest.raises(ValueError, match="labels"):
        data_quality(loss, unc, labels.astype(float))
    with pytest.raises(ValueError, match="loss"):
        data_quality(loss[:-1], unc, labels)
    with pytest.raises(ValueError, match="history has unknown key"):
        data_quality(loss, unc, labels, history={"margins": history["margin"]})
    with pytest.raises(ValueError, match=r"history\['margin'\]"):
        data_quality(loss, unc, labels, history={"margin": history["margin"][:, :5]})
    with pytest.raises(ValueError, match="aum_threshold"):
        data_quality(loss, unc, labels, history=history, aum_threshold=float("nan"))
    with pytest.raises(ValueError, match="wrong_label"):
        data_quality(loss, unc, labels, wrong_label=np.zeros(3, bool))
    with pytest.raises(ValueError, match="percentile"):
        aum_threshold([1.0, 2.0], 0)
    with pytest.raises(ValueError, match="prob_given"):
        cartography(np.full((2, 3), 1.5))
    with pytest.raises(ValueError, match="labels"):
        given_label_margin(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="flagged"):
        detection_metrics(np.zeros(3), np.zeros(3), np.zeros(3, bool))
    q = data_quality(loss, unc, labels)
    with pytest.raises(ValueError, match="quadrant='nope'"):
        q.top(3, quadrant="nope")
    with pytest.raises(ValueError, match="per_quadrant"):
        write_report(q, "unused", per_quadrant=0)


def test_csv_and_parquet_tables_hold_the_values(tmp_path):
    loss, unc, labels, history, wrong = _planted(n=12)
    q = data_quality(loss, unc, labels, history=history, wrong_label=wrong)
    paths = write_table(q, tmp_path)
    with open(paths["csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12 and list(rows[0]) == q.columns
    r7 = rows[7]
    assert r7["index"] == "7" and r7["label_issue_rank"] == "1" and r7["flagged"] == "1"
    assert r7["quadrant"] == "poorly-labeled" and r7["wrong_label"] == "1"
    assert float(r7["loss"]) == 5.0 and float(r7["aum"]) == -2.0
    assert float(rows[3]["confidence"]) == pytest.approx(history["prob_given"][:, 3].mean())
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(paths["parquet"])
    assert table.column_names == q.columns
    assert table.column("label_issue_rank").to_pylist() == q.table["label_issue_rank"].tolist()
    assert table.column("quadrant").to_pylist()[7] == "poorly-labeled"
    assert write_table(q, tmp_path / "b", parquet=False)["parquet"] is None


def test_per_class_counts():
    loss, unc, labels, history, wrong = _planted()
    q = data_quality(loss, unc, labels, history=history, wrong_label=wrong)
    rows = q.per_class()
    assert sum(r["samples"] for r in rows) == 40 and sum(r["flagged"] for r in rows) == 1
    assert rows[labels[7]]["wrong_label"] == 1
    assert all(sum(r[name] for name in QUADRANTS) == r["samples"] for r in rows)


def _run_dir(path, *, with_history: bool, n=40):
    loss, unc, labels, history, wrong = _planted(n=n)
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"dataset": "nonexistent-set"}))
    (path / "results.json").write_text(json.dumps({"top1": 0.5}))
    np.savez_compressed(
        path / "assessment.npz",
        loss=loss,
        uncertainty=unc,
        codes=np.zeros(n, np.int8),
        noisy=wrong,
        y=labels,
        y_clean=np.where(wrong, (labels + 1) % 4, labels),
    )
    if with_history:
        e = history["margin"].shape[0]
        unc_hist = np.full((e, n), np.nan, np.float32)  # not measured by this strategy
        np.savez_compressed(
            path / "history.npz",
            epochs=np.arange(e),
            uncertainty=unc_hist,
            train_loss=history["train_loss"].astype(np.float32),
            prob_given=history["prob_given"].astype(np.float32),
            margin=history["margin"].astype(np.float32),
            pred=history["pred"].astype(np.int32),
        )
    return path


def test_diagnose_with_history_writes_table_maps_and_report(tmp_path):
    pytest.importorskip("matplotlib")
    run = _run_dir(tmp_path / "run", with_history=True)
    res = diagnose(run, images=False)
    out = run / "diagnose"
    assert res["history"] and res["summary"]["score"] == "aum"
    assert (out / "data_quality.csv").exists() and (out / "data_map.png").exists()
    assert (out / "cartography.png").exists() and (out / "summary.json").exists()
    report = (out / "report.md").read_text()
    assert "Per class" in report and "cartography.png" in report and "| 7 |" in report
    with open(out / "data_quality.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[7]["label_issue_rank"] == "1" and "mean_uncertainty" not in rows[7]  # an all-NaN history is dropped


def test_diagnose_pictures_from_given_images(tmp_path):
    pytest.importorskip("matplotlib")
    loss, unc, labels, history, wrong = _planted()
    q = data_quality(loss, unc, labels, history=history)
    write_report(q, tmp_path, images=np.random.default_rng(0).random((40, 1, 8, 8)), per_quadrant=4)
    assert (tmp_path / "top_poorly-labeled.png").exists()
    assert "top_poorly-labeled.png" in (tmp_path / "report.md").read_text()


def test_cli_diagnose_without_history_says_how_to_get_it(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run = _run_dir(tmp_path / "run", with_history=False)
    assert cli.main(["diagnose", str(run), "--out", str(tmp_path / "o")]) == 0
    out, err = capsys.readouterr()
    res = json.loads(out.strip().splitlines()[-1])
    assert res["history"] is False and res["score"] == "loss" and res["flagged"] >= 1
    assert "--set history=true" in err and "no AUM" in err
    assert "could not be rebuilt" in err  # the picture grids are missing, and it says why
    report = (tmp_path / "o" / "report.md").read_text()
    assert "history=true" in report and "No cartography map" in report
    with pytest.raises(SystemExit, match="assessment.npz"):
        cli.main(["diagnose", str(tmp_path)])
    with pytest.raises(
        SystemExit,
        match=r"^mombs: score='x' is not known for a classification run; choose one "
        r"of \['auto', 'quadrant', 'loss', 'aum', 'confidence', 'combined'\]$",
    ):
        cli.main(["diagnose", str(run), "--score", "x"])


# --------------------------------------------------------------------------- #
# the tracker's per-epoch history


def test_tracker_history_is_off_by_default_and_kept_per_epoch_when_on():
    t = DifficultyTracker(4)
    with pytest.raises(ValueError, match="keep_history=True"):
        t.history("loss")
    assert "history_loss" not in t.state_dict()
    with pytest.raises(ValueError, match="keep_history"):
        DifficultyTracker(4, keep_history="yes")

    t = DifficultyTracker(4, keep_history=True)
    t.set_epoch(0)
    t.update_loss([0, 1, 2, 3], [1.0, 2.0, 3.0, 4.0])
    t.update_uncertainty([0, 1], [0.5, 0.6])
    t.set_epoch(2)
    t.update_loss([1, 3], [0.1, 0.2])
    t.update_loss([1], [0.3])  # the latest value of an epoch wins
    epochs, loss = t.history("loss")
    assert epochs.tolist() == [0, 2] and loss.dtype == np.float32
    np.testing.assert_array_equal(loss, [[1, 2, 3, 4], [NAN, np.float32(0.3), NAN, np.float32(0.2)]])
    _, unc = t.history("uncertainty")
    np.testing.assert_array_equal(unc, np.array([[0.5, 0.6, NAN, NAN], [NAN] * 4], np.float32))
    assert t.loss.tolist() == [1.0, 0.3, 3.0, 0.2]  # the latest values are as without history

    state = t.state_dict()
    assert state["history_loss"].shape == (2, 4)
    other = DifficultyTracker(4, keep_history=True)
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.history("loss")[1], loss)
    np.testing.assert_array_equal(other.history("uncertainty")[1], unc)
    plain = DifficultyTracker(4)
    plain.load_state_dict(state)  # a tracker without history reads a state with one
    assert plain.loss.tolist() == t.loss.tolist()


def test_assessor_passes_keep_history_to_its_tracker():
    x = torch.randn(12, 1, 6, 6)
    y = torch.randint(0, 3, (12,))
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3)
    )
    ds = IndexedDataset(torch.utils.data.TensorDataset(x, y))
    assert not DifficultyAssessor(model, ds, at="2").tracker.keep_history
    a = DifficultyAssessor(model, ds, at="2", keep_history=True, k=2)
    for epoch in range(2):
        a.start_epoch(epoch)
        idx = torch.arange(12)
        a.observe(idx, F.cross_entropy(model(x), y, reduction="none"))
        a.end_epoch()
    epochs, unc = a.tracker.history("uncertainty")
    assert epochs.tolist() == [0, 1] and np.isfinite(unc).all() and np.isfinite(a.tracker.history("loss")[1]).all()
    assert "history_uncertainty" in a.state_dict()["tracker"]


def test_a_flipped_label_in_real_training_has_the_lowest_aum():
    # Two well separated blobs, one label flipped; a linear model's training history.
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(30, 2, generator=g) + 3, torch.randn(30, 2, generator=g) - 3])
    y = torch.cat([torch.zeros(30, dtype=torch.long), torch.ones(30, dtype=torch.long)])
    y[5] = 1
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.randn(2, 2, generator=g) * 0.1)
        model.bias.zero_()
    margins, probs = [], []
    for _ in range(8):  # full-batch gradient descent, lr 0.1
        logits = model(x)
        margins.append(given_label_margin(logits, y).numpy())
        probs.append(given_label_prob(logits, y).numpy())
        model.zero_grad()
        F.cross_entropy(logits, y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
    aum = area_under_margin(np.stack(margins))
    assert np.argmin(aum) == 5 and aum[5] < 0 < np.delete(aum, 5).min()
    assert np.argmin(cartography(np.stack(probs))["confidence"]) == 5


# --------------------------------------------------------------------------- #
# a real run, and the committed comparison table


def test_diagnose_a_tiny_mombs_train_run_with_history(tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    out = tmp_path / "runs"
    assert (
        cli.main(
            [
                "train",
                "--set",
                "dataset=digits",
                "--set",
                "epochs=2",
                "--set",
                "pivot_epoch=1",
                "--set",
                "batch_size=32",
                "--set",
                "threads=1",
                "--set",
                "history=true",
                "--set",
                "noise=symmetric",
                "--set",
                "noise_rate=0.2",
                "--set",
                "strategy=mixed",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    run = next(p for p in out.iterdir() if p.is_dir())
    assert (run / "history.npz").exists()
    capsys.readouterr()
    assert cli.main(["diagnose", str(run), "--no-images"]) == 0  # pictures: tested above
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["history"] and res["score"] == "aum"
    with open(run / "diagnose" / "data_quality.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {"aum", "confidence", "variability", "predicted_label", "wrong_label"} <= set(rows[0])
    # 20% planted noise: the 20 most suspect rows are mostly wrong labels.
    top = sorted(rows, key=lambda r: int(r["label_issue_rank"]))[:20]
    assert sum(r["wrong_label"] == "1" for r in top) >= 15
    assert (run / "diagnose" / "cartography.png").exists()


def test_the_committed_comparison_tables_match_the_result_files():
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("label_issues", root / "benchmarks" / "label_issues.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (root / "docs" / "quality.md").read_text(encoding="utf-8")
    assert module.render_doc(text, root) == text, "run: python benchmarks/label_issues.py --table --write"
