"""Your own data through the CLI: `mombs train` on an ImageFolder tree, then `mombs diagnose`
names the files whose label looks wrong (issue 20)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from mombs import cli

PIL = pytest.importorskip("PIL.Image")

CLASSES = ("circle", "cross", "stripe")


def _draw(kind: str, rng) -> np.ndarray:
    """A 16x16 grey picture of one of three easy shapes, with noise."""
    img = rng.normal(40, 12, (16, 16))
    yy, xx = np.mgrid[:16, :16]
    if kind == "circle":
        img[(yy - 8) ** 2 + (xx - 8) ** 2 < 20] += 160
    elif kind == "cross":
        img[7:9, :] += 160
        img[:, 7:9] += 160
    else:
        img[::4, :] += 160
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture
def misfiled_tree(tmp_path):
    """40 pictures per class folder, 6 of them filed under another class (their paths returned)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "shapes"
    misfiled = []
    for kind in CLASSES:
        (root / kind).mkdir(parents=True)
    for c, kind in enumerate(CLASSES):
        for i in range(40):
            drawn, folder = kind, kind
            if i < 2:  # two of each class filed one class over
                folder = CLASSES[(c + 1) % 3]
                misfiled.append(f"{folder}/{kind}_{i:02d}.png")
            PIL.fromarray(_draw(drawn, rng)).save(root / folder / f"{kind}_{i:02d}.png")
    return root, misfiled


def test_diagnose_names_the_misfiled_pictures_of_an_image_folder(misfiled_tree, tmp_path, capsys):
    root, misfiled = misfiled_tree
    out = tmp_path / "runs"
    assert (
        cli.main(
            [
                "train",
                "--set",
                "dataset=imagefolder",
                "--data-dir",
                str(root),
                "--set",
                "strategy=mixed",
                "--set",
                "epochs=8",
                "--set",
                "pivot_epoch=2",
                "--set",
                "batch_size=16",
                "--set",
                "lr=0.05",
                "--set",
                "history=true",
                "--set",
                "threads=1",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    run = next(p for p in out.iterdir() if p.is_dir())
    splits = json.loads((run / "splits.json").read_text())
    train = splits["train"]
    assert sorted(train + splits["val"] + splits["test"]) == sorted(
        str(p.relative_to(root)) for p in root.rglob("*.png")
    )  # every file in exactly one split
    capsys.readouterr()
    assert cli.main(["diagnose", str(run), "--no-images"]) == 0
    with open(run / "diagnose" / "data_quality.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["path"] for r in rows] == train  # each row names its file, in training order
    planted = [p for p in misfiled if p in train]
    assert len(planted) >= 3
    ranks = {r["path"]: int(r["label_issue_rank"]) for r in rows}
    # Above chance: the misfiled pictures rank, on average, in the most suspect tenth.
    mean_rank = np.mean([ranks[p] for p in planted]) / len(rows)
    assert mean_rank < 0.1, (mean_rank, sorted(ranks[p] for p in planted))
    top = sorted(rows, key=lambda r: int(r["label_issue_rank"]))[: len(planted)]
    assert sum(r["path"] in planted for r in top) >= len(planted) - 1


def _only_run(out):
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1
    return runs[0]


def _check_traceable(run, key: str = "path") -> dict:
    """The run folder names its split and every training sample's origin, in training order, and
    every training sample was trained on in every epoch (its per-epoch loss is recorded)."""
    splits = json.loads((run / "splits.json").read_text())
    z = np.load(run / "assessment.npz")
    assert len(z["loss"]) == len(z[f"source_{key}"])
    h = np.load(run / "history.npz")
    assert h["train_loss"].shape == (len(h["epochs"]), len(z["loss"])) and np.isfinite(h["train_loss"]).all()
    np.testing.assert_array_equal(h[f"source_{key}"], z[f"source_{key}"])
    return {"splits": splits, "assessment": z}


def test_mombs_train_on_a_csv_file(misfiled_tree, tmp_path, capsys):
    root, _ = misfiled_tree
    files = sorted(p.relative_to(root) for p in root.rglob("*.png"))
    table = root / "labels.csv"
    table.write_text(
        "path,label,split\n"
        + "".join(
            f"{p},{p.parts[0]},{'test' if i % 5 == 0 else 'val' if i % 5 == 1 else 'train'}\n"
            for i, p in enumerate(files)
        )
    )
    out = tmp_path / "runs"
    assert (
        cli.main(
            [
                "train",
                "--set",
                "dataset=csv",
                "--data-dir",
                str(table),
                "--set",
                "epochs=2",
                "--set",
                "batch_size=32",
                "--set",
                "threads=1",
                "--set",
                "history=true",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    got = _check_traceable(_only_run(out))
    train = [str(p) for i, p in enumerate(files) if i % 5 > 1]
    assert sorted(got["splits"]["train"]) == sorted(train)  # the CSV's split column, file for file
    assert sorted(got["assessment"]["source_path"].tolist()) == sorted(train)


def test_mombs_train_on_a_decathlon_folder_splits_by_case(tmp_path):
    from test_decathlon import make_task

    root = make_task(tmp_path / "Task99_Toy")
    out = tmp_path / "runs"
    assert (
        cli.main(
            [
                "train",
                "--set",
                "task=segmentation",
                "--set",
                "dataset=msd",
                "--data-dir",
                str(root),
                "--set",
                "image_size=32",
                "--set",
                "epochs=2",
                "--set",
                "batch_size=8",
                "--set",
                "threads=1",
                "--set",
                "val_fraction=0.2",
                "--set",
                "history=true",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    got = _check_traceable(_only_run(out), "case")
    splits, z = got["splits"], got["assessment"]
    cases = [set(splits[s]) for s in ("train", "val", "test")]
    assert all(c for c in cases) and not (cases[0] & cases[1] or cases[0] & cases[2] or cases[1] & cases[2])
    assert set(z["source_case"].tolist()) == cases[0]  # every training slice comes from a training case
    assert len(set(zip(z["source_case"].tolist(), z["source_slice"].tolist()))) == len(z["loss"])


def test_mombs_train_on_a_coco_folder_keeps_images_without_boxes(tmp_path):
    from test_coco import write_coco

    root = write_coco(tmp_path / "boxes")
    out = tmp_path / "runs"
    assert (
        cli.main(
            [
                "train",
                "--set",
                "task=detection",
                "--set",
                "dataset=coco",
                "--data-dir",
                str(root),
                "--set",
                "image_size=64",
                "--set",
                "epochs=2",
                "--set",
                "batch_size=4",
                "--set",
                "threads=1",
                "--set",
                "history=true",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    got = _check_traceable(_only_run(out), "image_id")
    doc = json.loads((root / "instances.json").read_text())
    named = sorted(sum((got["splits"][s] for s in ("train", "val", "test")), []))
    assert named == sorted(e["file_name"] for e in doc["images"])  # every image, boxed or not, in one split
    assert sorted(got["assessment"]["source_path"].tolist()) == sorted(got["splits"]["train"])
