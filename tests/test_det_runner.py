"""Detection through the runner and the CLI (issue 11): torchvision Faster R-CNN, the tiny backbone."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("torchvision")

from conftest import check_dense_diagnose, check_run_files  # noqa: E402
from mombs import cli  # noqa: E402
from mombs.recipes.detection import corpus as det_corpus  # noqa: E402
from mombs.recipes.detection.training import DetectionStep, det_fit  # noqa: E402
from mombs.train import RunConfig, run  # noqa: E402

# 16 training slices of 32 x 32, 12 validation and 16 test slices: a 2-epoch
# run takes about a second on one thread.
DET = dict(
    task="detection",
    subset=16,
    image_size=32,
    epochs=2,
    pivot_epoch=1,
    batch_size=4,
    noise="annotation",
    noise_rate=0.25,
    threads=1,
    lr=0.01,
)


@pytest.fixture(autouse=True)
def _small_eval_splits(monkeypatch):
    monkeypatch.setitem(det_corpus.DET_SYNTHETIC_EVAL_SIZES, "val", 12)
    monkeypatch.setitem(det_corpus.DET_SYNTHETIC_EVAL_SIZES, "test", 16)


def test_detection_defaults_and_keys():
    cfg = RunConfig(task="detection").resolved()
    assert (cfg.dataset, cfg.model, cfg.loss) == ("synthetic-det", "tiny", "rpn")
    assert RunConfig().key() == "11f7a7d05f"  # classification keys do not move with train_fraction
    assert RunConfig(task="detection", train_fraction=0.5).key() != RunConfig(task="detection").key()


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(dataset="synthetic-ct"), "dataset='synthetic-ct' is not known; choose one of ['coco', 'deeplesion'"),
        (dict(model="unet"), "model='unet' is not known"),
        (dict(loss="dice-ce"), "loss='dice-ce' is not known"),
        (dict(noise="symmetric", noise_rate=0.2), "noise='symmetric' is not known"),
        (dict(noise_rate=0.2), "noise_rate=0.2 has no effect with noise='none'"),
        (dict(noise="annotation", noise_mix={"missed": 0.1}), "unknown box corruption(s) ['missed']"),
        (dict(noise="annotation", noise_rate=0.9, noise_mix={"shifted": 0.2}), "must be at most 1"),
        (dict(augment=True), "augment=True does not apply to task='detection'"),
        (dict(train_fraction=1.5), "train_fraction=1.5 must be a number in (0, 1]"),
        (dict(dataset="deeplesion"), "data_dir=None must be the folder of dataset='deeplesion'"),
        (dict(dataset="deeplesion", data_dir="/nonexistent"), "nihcc.app.box.com/v/DeepLesion"),
        (
            dict(dataset="deeplesion", noise="annotation"),
            "noise='annotation' plants box noise in dataset='synthetic-det'",
        ),
        (dict(model="fasterrcnn_resnet50_fpn", windows="lung"), "windows='lung' gives 1-channel images"),
        (
            dict(strategy="mixed-entropy"),
            "task='detection' needs a schedule whose uncertainty comes from an assessment",
        ),
    ],
)
def test_bad_detection_options_are_named(options, message):
    with pytest.raises(ValueError) as err:
        RunConfig(**dict(dict(task="detection"), **options)).validate()
    assert message in str(err.value)


def test_train_fraction_is_refused_outside_detection():
    with pytest.raises(
        ValueError,
        match="train_fraction=0.5 does not apply to task='classification'; it is an option of task='detection'$",
    ):
        RunConfig(dataset="digits", train_fraction=0.5).validate()


def test_the_step_objective_is_the_sum_of_torchvisions_losses_without_weights():
    from mombs.recipes.detection.models import create_detection_model
    from mombs.recipes.detection.synthetic_det import make_synthetic_det

    split = make_synthetic_det(4, 0, 0, size=32, seed=1).train.dataset()
    images, targets = zip(*[split[i] for i in range(4)])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_detection_model("tiny", min_size=32, max_size=32).train()
    step = DetectionStep(seed=3)
    out, per_image, objective = step(model, list(images), list(targets))
    assert per_image.shape == (4,) and step.step == 1
    step.set_epoch(0)
    again = step(model, list(images), list(targets))  # the same (seed, epoch, step): the same sample
    assert torch.equal(again[1], per_image) and torch.equal(objective(None), again[2](None))
    assert torch.allclose(objective(torch.ones(4)), objective(None), atol=1e-6)
    assert torch.allclose(det_fit(out), torch.exp(-out)) and ((det_fit(out) > 0) & (det_fit(out) <= 1)).all()


def test_two_epochs_of_detection_through_the_cli_write_results_and_a_report_with_pictures(
    tmp_path, capsys, compare_argv
):
    assert cli.main(compare_argv(tmp_path, DET)) == 0
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2
    for d in runs:
        res = json.loads((d / "results.json").read_text())
        assert res["task"] == "detection" and res["metric"] == "froc" and 0 <= res["froc"] <= 1
        assert set(res["froc_sens"]) == {"0.5", "1", "2", "4", "8", "16"}
        assert res["froc"] == pytest.approx(np.mean([res["froc_sens"][f] for f in ("0.5", "1", "2")]))
        assert len(res["curves"]["val_froc"]) == 2 and res["train_size"] == 16
        assert res["data"]["val"] == 12 and res["data"]["test"] == 16
        det = res["noise_detection"]
        z = np.load(d / "assessment.npz")
        assert z["loss"].shape == z["uncertainty"].shape == z["missing"].shape == (16,)
        assert det["base_rate"] == pytest.approx(z["missing"].mean()) and z["missing"].any()
        assert det["flagged"] == res["quadrant_counts"]["poorly-labeled"] and 0 <= det["auroc_difficulty"] <= 1
        assert z["unmatched"].shape == (16,) and ((z["unmatched"] >= 0) & (z["unmatched"] <= 1)).all()
        assert 0 <= det["auroc_unmatched"] <= 1 and "ap_unmatched" in res["noisy_detection"]
        np.testing.assert_array_equal(z["noisy"], z["corruption"] > 0)
        f = np.load(d / "flagged.npz")
        assert f["image"].shape[1:] == (32, 32) and f["given"].shape[2] == f["clean"].shape[2] == 4
        check_run_files(d, res, "missing")
        np.testing.assert_array_equal(f["missing"], z["missing"][f["index"]])
        assert f["det"].shape[:2] == f["det_scores"].shape
        lines = (d / "log.jsonl").read_text().splitlines()
        assert [json.loads(x)["epoch"] for x in lines] == [0, 1] and "val_froc" in json.loads(lines[0])
    report = (tmp_path / "report.md").read_text()
    assert "FROC %" in report and "sens@0.5FP %" in report and "without a box" in report
    for png in (
        "curves.png",
        "froc.png",
        "scatter-mixed-b4-n16.png",
        "flagged-mixed-b4-n16.png",
        "flagged-random-b4-n16.png",
    ):
        assert f"]({png})" in report and (tmp_path / png).stat().st_size > 1000
    assert "FROC %" in capsys.readouterr().out
    # diagnose: a row per training image with its box scores, and the suspect images' pictures
    check_dense_diagnose(runs[0], 16, {"overlooked", "badly_located", "spurious", "box_issue"}, capsys)


def test_an_interrupted_detection_run_resumes_to_the_same_result(tmp_path, interrupt_after_epoch):
    cfg = RunConfig(strategy="mixed", history=True, **DET)
    whole = run(cfg, tmp_path / "whole")
    interrupt_after_epoch(cfg, tmp_path / "cut", 0)
    resumed = run(cfg, tmp_path / "cut")
    assert resumed["froc_sens"] == whole["froc_sens"]
    assert resumed["curves"]["train_loss"] == whole["curves"]["train_loss"]
    # the history: each epoch's per-image RPN loss (no classification signals), kept across the resume
    h, cut = np.load(tmp_path / "whole/history.npz"), np.load(tmp_path / "cut/history.npz")
    assert set(h.files) == {"train_loss", "uncertainty", "epochs", "source_path"} and h["train_loss"].shape == (2, 16)
    np.testing.assert_array_equal(h["epochs"], [0, 1])
    assert np.isfinite(h["train_loss"]).all()  # every image is seen every epoch
    np.testing.assert_allclose(h["train_loss"].mean(1), whole["curves"]["train_loss"], rtol=1e-5)
    for k in h.files:
        np.testing.assert_array_equal(cut[k], h[k])
    for name in ("loss", "uncertainty"):
        np.testing.assert_array_equal(
            np.load(tmp_path / "cut/assessment.npz")[name], np.load(tmp_path / "whole/assessment.npz")[name]
        )


def test_a_smaller_training_fraction_is_a_prefix_with_the_same_box_noise():
    full = det_corpus.load_det_corpus(RunConfig(**dict(DET, seed=2)).validate())
    half = det_corpus.load_det_corpus(RunConfig(**dict(DET, seed=2, train_fraction=0.5)).validate())
    assert len(half.train) == 8
    for i in range(8):
        assert torch.equal(half.train[i][0], full.train[i][0])
        assert torch.equal(half.train[i][1]["boxes"], full.train[i][1]["boxes"])
    np.testing.assert_array_equal(half.missing_train, full.missing_train[:8])


def test_a_detection_run_reads_deeplesion_files(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    header = (
        "File_name,Patient_index,Study_index,Series_ID,Key_slice_index,Measurement_coordinates,"
        "Bounding_boxes,Lesion_diameters_Pixel_,Normalized_lesion_location,Coarse_lesion_type,"
        "Possibly_noisy,Slice_range,Spacing_mm_px_,Image_size,DICOM_windows,Patient_gender,Patient_age,"
        "Train_Val_Test"
    )
    rows, rng = [], np.random.default_rng(0)
    for patient, split in ((1, 1), (2, 1), (3, 1), (4, 1), (5, 2), (6, 3)):
        series = f"{patient:06d}_01_01"
        rows.append(
            f'{series}_002.png,{patient},1,1,2,"1, 1, 2, 2, 3, 3, 4, 4","6, 8, 17, 19","5, 3",'
            f'"0.5, 0.5, 0.5",-1,{int(patient == 2)},"1, 3","0.8, 0.8, 5","32, 32","-175, 275",M,50,{split}'
        )
        (tmp_path / "Images_png" / series).mkdir(parents=True)
        for z in (1, 2, 3):
            hu = rng.uniform(-1000, 200, (32, 32))
            hu[8:19, 6:17] += 300  # the lesion, where its box is (1-based in the file)
            Image.fromarray((hu + 32768).astype(np.uint16)).save(tmp_path / "Images_png" / series / f"{z:03d}.png")
    (tmp_path / "DL_info.csv").write_text("\n".join([header, *rows]) + "\n")
    cfg = RunConfig(
        task="detection", dataset="deeplesion", data_dir=str(tmp_path), image_size=32, epochs=1, batch_size=2, threads=1
    )
    res = run(cfg, tmp_path / "run")
    assert res["dataset"] == "deeplesion"
    assert (res["data"]["train"], res["data"]["val"], res["data"]["test"]) == (4, 1, 1)
    assert res["lesions"] == 1 and 0 <= res["froc"] <= 1 and "noise_detection" not in res
    assert res["possibly_noisy_detection"]["base_rate"] == 0.25  # patient 2's lesion is flagged


def test_the_cli_names_a_bad_detection_option(tmp_path):
    with pytest.raises(SystemExit) as err:
        cli.main(["train", "--out", str(tmp_path), "--set", "task=detection", "--set", "dataset=deeplesion"])
    assert "data_dir=None must be the folder of dataset='deeplesion'" in str(err.value)
    assert not (tmp_path / "resolved_config.json").exists()  # refused before anything is written


def test_test_fraction_is_refused_for_sets_that_come_with_a_test_split():
    with pytest.raises(ValueError, match="test_fraction=0.3 only applies to dataset='coco'"):
        RunConfig(task="detection", test_fraction=0.3).validate()
