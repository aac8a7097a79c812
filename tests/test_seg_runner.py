"""Segmentation through the runner and the CLI (issue 10), and the run history (issue 13)."""

import json

import numpy as np
import pytest
import torch

from conftest import check_dense_diagnose, check_run_files
from mombs import cli
from mombs.quality import noise_detection
from mombs.recipes.segmentation.training import dice_fit
from mombs.train import RunConfig, run

pytest.importorskip("monai")

# 16 training slices of 32 x 32: a 2-epoch run takes a few seconds on one thread.
SEG = dict(
    task="segmentation",
    subset=16,
    image_size=32,
    epochs=2,
    pivot_epoch=1,
    batch_size=4,
    noise="annotation",
    noise_rate=0.25,
    threads=1,
    optimizer="adam",
    lr=0.003,
    weight_decay=0.0,
)


def test_classification_keys_do_not_move_with_the_segmentation_fields():
    # Pinned before the segmentation fields existed: every committed run keeps its folder.
    assert RunConfig().key() == "11f7a7d05f"
    assert RunConfig(dataset="digits", strategy="mixed", epochs=3).key() == "b0e6feab92"
    assert RunConfig(history=True).key() != RunConfig().key()  # history.npz is an output: its own run
    seg = RunConfig(task="segmentation")
    assert seg.key() != RunConfig().key()
    assert seg.resolved().dataset == "synthetic-ct" and seg.resolved().model == "unet"
    assert RunConfig(task="segmentation", dataset="synthetic-ct", model="unet", loss="dice-ce").key() == seg.key()


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(dataset="fashion-mnist"), "dataset='fashion-mnist' is not known; choose one of ['covid-ct'"),
        (dict(model="small_cnn"), "model='small_cnn' is not known"),
        (dict(loss="ce"), "loss='ce' is not known"),
        (dict(noise="symmetric", noise_rate=0.2), "noise='symmetric' is not known"),
        (dict(augment=True), "augment=True does not apply to task='segmentation'"),
        (dict(imbalance=0.1), "imbalance=0.1 does not apply"),
        (dict(noise_rate=0.2), "noise_rate=0.2 has no effect with noise='none'"),
        (dict(noise_mix={"missed": 1.0}), "noise_mix={'missed': 1.0} only applies with noise='annotation'"),
        (dict(noise="annotation", noise_rate=0.2, noise_mix={"typo": 1.0}), "unknown corruption(s) ['typo']"),
        (dict(image_size=40), "image_size=40 must be a multiple of 16"),
        (dict(windows="bone"), "windows='bone' is not known"),
        (dict(dataset="covid-ct"), "data_dir=None must be the folder of dataset='covid-ct'"),
        (dict(dataset="medseg-covid", data_dir="/nonexistent"), "tr_im.nii.gz"),
        (dict(task="keypoints"), "task='keypoints' is not known"),
    ],
)
def test_bad_segmentation_options_are_named(options, message):
    with pytest.raises(ValueError) as err:
        RunConfig(**dict(dict(task="segmentation"), **options)).validate()
    assert message in str(err.value)


@pytest.mark.parametrize("name, value", [("windows", "lung"), ("noise_mix", {"missed": 1})])
def test_segmentation_fields_are_refused_for_classification(name, value):
    with pytest.raises(
        ValueError,
        match=f"{name}=.* does not apply to task='classification'; it is an option of "
        f"task='detection' or task='segmentation'",
    ):
        RunConfig(dataset="digits", **{name: value}).validate()


def test_dice_fit_and_detection_scores_on_hand_computed_cases():
    logits = torch.zeros(3, 2, 2, 2)
    logits[0, 1, 0, 0] = 1  # predicts one pixel; the mask has two, one shared: 2*1/(1+2)
    logits[1, 1] = -1  # predicts nothing, the mask is empty: a perfect fit
    logits[2, 1, 1, 1] = 1  # predicts a pixel where the mask is empty: Dice 0
    target = torch.tensor([[[1, 1], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [0, 0]]])
    assert torch.allclose(dice_fit(logits, target), torch.tensor([2 / 3, 1.0, 0.0]))

    member = np.array([True, True, False, False])
    det = noise_detection(member, {"s": np.array([0.9, 0.2, 0.5, 0.1])}, np.array([True, False, True, False]))
    assert det["precision"] == 0.5 and det["recall"] == 0.5 and det["base_rate"] == 0.5
    assert det["auroc_s"] == pytest.approx(0.75)  # pairs (member, other) ranked right: 3 of 4
    assert noise_detection(np.ones(2, bool), {"s": np.arange(2.0)}, np.ones(2, bool))["auroc_s"] is None
    # Nothing flagged: the flag has no precision (once 0.0 here and NaN in the label table).
    assert noise_detection(member, {}, np.zeros(4, bool))["precision"] is None


def test_two_epochs_of_segmentation_through_the_cli_write_results_and_a_report_with_pictures(
    tmp_path, capsys, compare_argv
):
    assert cli.main(compare_argv(tmp_path, SEG)) == 0
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2
    for d in runs:
        res = json.loads((d / "results.json").read_text())
        assert res["task"] == "segmentation" and res["metric"] == "dice" and 0 <= res["dice"] <= 1
        assert len(res["curves"]["val_dice"]) == 2 and res["train_size"] == 16
        det = res["noise_detection"]
        assert det["base_rate"] == 0.25 and det["flagged"] == res["quadrant_counts"]["poorly-labeled"]
        assert 0 <= det["auroc_difficulty"] <= 1
        assert set(det["recall_by_corruption"]) <= {"missed", "eroded", "dilated", "shifted", "swapped"}
        z = np.load(d / "assessment.npz")
        assert z["loss"].shape == (16,) and (z["corruption"] > 0).sum() == 4
        np.testing.assert_array_equal(z["noisy"], z["corruption"] > 0)
        f = np.load(d / "flagged.npz")
        assert f["image"].shape[1:] == (32, 32) and f["given"].shape == f["pred"].shape == f["clean"].shape
        check_run_files(d, res, "noisy")
        np.testing.assert_array_equal(f["corruption"], z["corruption"][f["index"]])
        lines = (d / "log.jsonl").read_text().splitlines()
        assert [json.loads(x)["epoch"] for x in lines] == [0, 1] and "val_dice" in json.loads(lines[0])
    report = (tmp_path / "report.md").read_text()
    assert "Dice %" in report and "small-lesion Dice" in report and "corrupted masks" in report
    rows = json.loads((tmp_path / "summary.json").read_text())
    assert [(r["strategy"], r["n"]) for r in rows] == [("random", 1), ("mixed", 1)]
    mixed = json.loads(next(d for d in runs if "-mixed-" in d.name).joinpath("results.json").read_text())
    assert rows[1]["mean"] == mixed["dice"] and rows[1]["poor_precision"] == mixed["noise_detection"]["precision"]
    for png in ("curves.png", "scatter-mixed-b4-n16.png", "flagged-mixed-b4-n16.png", "flagged-random-b4-n16.png"):
        assert f"]({png})" in report and (tmp_path / png).stat().st_size > 1000
    assert "Dice %" in capsys.readouterr().out
    # diagnose: a row per training slice with its mask scores, and the suspect slices' pictures
    check_dense_diagnose(runs[0], 16, {"disagreement", "region_error", "area"}, capsys)


def test_an_interrupted_segmentation_run_resumes_to_the_same_result(tmp_path, interrupt_after_epoch):
    cfg = RunConfig(strategy="mixed", **SEG)
    whole = run(cfg, tmp_path / "whole")
    interrupt_after_epoch(cfg, tmp_path / "cut", 0)
    resumed = run(cfg, tmp_path / "cut")
    assert resumed["dice"] == whole["dice"] and resumed["curves"]["val_dice"] == whole["curves"]["val_dice"]
    np.testing.assert_array_equal(
        np.load(tmp_path / "cut/assessment.npz")["loss"], np.load(tmp_path / "whole/assessment.npz")["loss"]
    )


def test_the_history_of_a_run_survives_a_resume_and_reads_right(tmp_path, interrupt_after_epoch):
    cfg = RunConfig(
        dataset="digits",
        strategy="mixed",
        epochs=3,
        pivot_epoch=1,
        batch_size=64,
        threads=1,
        noise="symmetric",
        noise_rate=0.2,
        history=True,
    )
    run(cfg, tmp_path / "whole")
    h = np.load(tmp_path / "whole/history.npz")
    n = json.loads((tmp_path / "whole/results.json").read_text())["train_size"]
    assert h["train_loss"].shape == h["prob_given"].shape == h["margin"].shape == h["pred"].shape == (3, n)
    assert list(h["epochs"]) == [0, 1, 2] and not np.isnan(h["train_loss"]).any()
    assert ((h["prob_given"] > 0) & (h["prob_given"] < 1)).all()
    # The margin is positive exactly where the given label wins the argmax.
    y = np.load(tmp_path / "whole/assessment.npz")["y"]
    np.testing.assert_array_equal(h["margin"] > 0, h["pred"] == y[None, :])
    # The mixed arm measures uncertainties from the pivot on: every sample has one by the end.
    assert not np.isnan(h["uncertainty"][-1]).any()

    interrupt_after_epoch(cfg, tmp_path / "cut", 1)
    run(cfg, tmp_path / "cut")
    cut = np.load(tmp_path / "cut/history.npz")
    for k in h.files:
        np.testing.assert_array_equal(cut[k], h[k], err_msg=k)
    run(RunConfig(**dict(vars(cfg), history=False)), tmp_path / "plain")
    assert not (tmp_path / "plain/history.npz").exists()


def test_a_segmentation_run_reads_the_medseg_files(tmp_path):
    nib = pytest.importorskip("nibabel")
    rng = np.random.default_rng(3)
    im = rng.uniform(-1000, 300, size=(32, 32, 30)).astype(np.float32)
    mask = np.zeros((32, 32, 30), dtype=np.float32)
    mask[8:14, 10:20, :] = 1  # a lesion on every slice: all 30 are kept
    for name, a in (("tr_im.nii.gz", im), ("tr_mask.nii.gz", mask)):
        nib.save(nib.Nifti1Image(a, np.eye(4)), str(tmp_path / name))
    cfg = RunConfig(
        task="segmentation",
        dataset="medseg-covid",
        data_dir=str(tmp_path),
        epochs=1,
        batch_size=4,
        threads=1,
        windows="three",
    )
    res = run(cfg, tmp_path / "run")
    assert res["dataset"] == "medseg-covid" and res["data"]["image_shape"] == [3, 32, 32]
    assert res["data"]["train"] + res["data"]["val"] + res["data"]["test"] == 30
    assert "noise_detection" not in res and 0 <= res["dice"] <= 1  # no truth to score the quadrants against


@pytest.mark.parametrize(
    "name, value", [("foreground_only", True), ("intensity_window", [-1000, 400]), ("test_fraction", 0.3)]
)
def test_options_of_task_folders_are_refused_for_the_built_in_sets(name, value):
    with pytest.raises(ValueError, match=f"{name}=.* applies to a task folder of your own"):
        RunConfig(task="segmentation", **{name: value}).validate()
