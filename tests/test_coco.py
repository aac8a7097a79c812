"""Your own detection data (issue 20): a COCO instances JSON file and its images, and weights= for detectors."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("torchvision")
Image = pytest.importorskip("PIL.Image")

from mombs.recipes.detection import corpus as det_corpus  # noqa: E402
from mombs.recipes.detection.coco import read_coco  # noqa: E402
from mombs.recipes.detection.models import create_detection_model, load_detection_weights  # noqa: E402
from mombs.recipes.detection.training import create_model  # noqa: E402
from mombs.train import RunConfig, run  # noqa: E402

N = 12
#: Images without any annotation (kept, with no boxes).
EMPTY = (9, 10, 11)
#: Hand-made annotations: (image, COCO [x, y, w, h], category id); categories 3 and 7.
BOXES = [(0, [10, 12, 20, 8], 7), (0, [40, 40, 24, 24], 3), (1, [-0.5, 0, 10, 10], 3)] + [
    (i, [4 * i, 6, 14, 16], 7 if i % 2 else 3) for i in range(2, 9)
]


def _name(i: int) -> str:
    return f"img_{i:02d}.png"


def write_coco(folder, *, root="images", grey=False, split=None, json_name="instances.json", edit=None):
    """``N`` 64 x 64 PNGs under ``folder/root`` and their COCO file; ``edit(doc)`` changes the JSON first."""
    folder.mkdir(parents=True, exist_ok=True)
    where = folder / root if root else folder
    where.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    images = []
    for i in range(N):
        a = (rng.uniform(0, 60, (64, 64, 3))).astype(np.uint8)
        for j, b, _ in BOXES:
            if j == i:
                x, y, w, h = (int(max(v, 0)) for v in b)
                a[y : y + h, x : x + w] = 220
        im = Image.fromarray(a[..., 0] if grey else a)
        im.save(where / _name(i))
        e = {"id": 100 + i, "file_name": _name(i), "width": 64, "height": 64}
        if split is not None:
            e["split"] = split[i]
        images.append(e)
    anns = [
        {"id": k + 1, "image_id": 100 + j, "category_id": c, "bbox": b, "iscrowd": 0, "area": b[2] * b[3]}
        for k, (j, b, c) in enumerate(BOXES)
    ]
    anns.append({"id": 99, "image_id": 100, "category_id": 7, "bbox": [0, 0, 90, 90], "iscrowd": 1})  # skipped
    doc = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 7, "name": "nodule"}, {"id": 3, "name": "mass"}],
    }
    if edit is not None:
        edit(doc)
    (folder / json_name).write_text(json.dumps(doc))
    return folder


def coco_cfg(folder, **kw):
    base = {
        "task": "detection",
        "dataset": "coco",
        "data_dir": str(folder),
        "model": "tiny",
        "image_size": 64,
        "epochs": 2,
        "pivot_epoch": 1,
        "strategy": "mixed",
        "batch_size": 4,
        "threads": 1,
        "lr": 0.01,
    }
    return RunConfig(**{**base, **kw})


def load(folder, **kw):
    return det_corpus.load_det_corpus(coco_cfg(folder, **kw).validate())


def test_every_image_is_read_once_including_those_without_boxes(tmp_path):
    data = load(write_coco(tmp_path / "d"))
    names = data.splits["train"] + data.splits["val"] + data.splits["test"]
    assert sorted(names) == [_name(i) for i in range(N)]  # each image in exactly one split
    assert (len(data.train), len(data.val), len(data.test)) == (9, 1, 2)  # val 0.1, test 0.2 of 12
    assert (data.num_classes, data.in_channels, data.image_size) == (3, 3, 64)
    d = data.describe()
    assert d["image_root"] == "data_dir/images" and d["annotations_file"] == "instances.json"
    assert d["crowd_skipped"] == 1 and sum(d["images_without_boxes"].values()) == len(EMPTY)
    assert d["classes"] == [[1, 3, "mass"], [2, 7, "nodule"]]
    json.dumps(d)  # goes into config.json
    seen = 0
    for split in (data.train, data.val, data.test):
        for i in range(len(split)):
            x, t = split[i]
            assert x.dtype == torch.float32 and x.shape == (3, 64, 64) and 0 <= x.min() and x.max() <= 1
            assert t["boxes"].shape == (len(t["labels"]), 4) and t["labels"].dtype == torch.int64
            seen += len(t["boxes"]) == 0
    assert seen == len(EMPTY)


def test_the_splits_are_drawn_by_seed(tmp_path):
    folder = write_coco(tmp_path / "d")
    a, b, c = load(folder, seed=3).splits, load(folder, seed=3).splits, load(folder, seed=4).splits
    assert a == b and a != c
    other = load(folder, seed=3, test_fraction=0.5, val_fraction=0.25).splits
    assert (len(other["test"]), len(other["val"]), len(other["train"])) == (6, 3, 3)


def test_boxes_become_xyxy_and_categories_contiguous_classes(tmp_path):
    coco = read_coco(str(write_coco(tmp_path / "d")))
    assert coco.categories == [(3, "mass"), (7, "nodule")] and coco.crowd_skipped == 1
    first, second = coco.images[0], coco.images[1]
    assert (first.image_id, first.file_name) == (100, _name(0))
    np.testing.assert_array_equal(first.boxes, [[10, 12, 30, 20], [40, 40, 64, 64]])
    np.testing.assert_array_equal(first.labels, [2, 1])  # id 7 -> class 2, id 3 -> class 1
    np.testing.assert_array_equal(second.boxes, [[0, 0, 9.5, 10]])  # half a pixel out: clipped, not refused
    for i in EMPTY:
        assert coco.images[i].boxes.shape == (0, 4) and coco.images[i].labels.shape == (0,)


def test_sources_name_each_training_image_in_training_order(tmp_path):
    folder = write_coco(tmp_path / "d")
    coco = read_coco(str(folder))
    by_name = {im.file_name: im for im in coco.images}
    for kw in ({}, {"subset": 5}, {"train_fraction": 0.5}):
        data = load(folder, **kw)
        src = data.sources
        assert list(src["path"]) == data.splits["train"] and len(src["path"]) == len(data.train)
        assert list(src["image_id"]) == [by_name[p].image_id for p in src["path"]]
        assert src["image_id"].dtype == np.int64
        for i, p in enumerate(src["path"]):
            np.testing.assert_array_equal(data.train[i][1]["boxes"].numpy(), by_name[p].boxes)
        pixels = np.asarray(Image.open(folder / "images" / src["path"][0]), dtype=np.float32) / 255
        np.testing.assert_allclose(data.train[0][0].numpy(), pixels.transpose(2, 0, 1))
    assert len(load(folder, subset=5).train) == 5
    half, full = load(folder, train_fraction=0.5).splits["train"], load(folder).splits["train"]
    assert set(half) < set(full)


def test_a_split_field_and_images_next_to_the_json_are_used(tmp_path):
    split = ["train"] * 8 + ["val", "val", "test", "test"]
    data = load(write_coco(tmp_path / "d", root=None, split=split))
    assert data.splits == {
        "train": [_name(i) for i in range(8)],
        "val": [_name(8), _name(9)],
        "test": [_name(10), _name(11)],
    }
    assert data.describe()["image_root"] == "data_dir" and "split" in data.describe()["split_by"]
    with pytest.raises(ValueError, match="test_fraction=0.3 has no effect"):
        load(tmp_path / "d", test_fraction=0.3)


def test_grey_images_give_one_channel_to_the_tiny_model_and_three_to_the_others(tmp_path):
    folder = write_coco(tmp_path / "d", grey=True)
    tiny = load(folder)
    assert tiny.in_channels == 1 and tiny.train[0][0].shape == (1, 64, 64)
    three = load(folder, model="fasterrcnn_mobilenet_v3_large_fpn")
    x = three.train[0][0]
    assert three.in_channels == 3 and x.shape == (3, 64, 64) and torch.equal(x[0], x[2])


def test_the_annotations_option_picks_one_of_several_files(tmp_path):
    folder = write_coco(tmp_path / "d")
    write_coco(folder, json_name="other.json", edit=lambda d: d["categories"].append({"id": 9, "name": "x"}))
    assert load(folder, annotations="other.json").num_classes == 4
    assert load(folder, annotations="instances.json").num_classes == 3


def _bad(i, **kw):
    """Edits the JSON: ``bbox`` of annotation ``i`` and other fields."""

    def edit(doc):
        doc["annotations"][i].update(kw)

    return edit


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.pop("categories"), "instances.json: lacks ['categories']; a COCO instances file holds"),
        (_bad(0, image_id=555), "instances.json: 1 annotations name an unknown image_id: annotation 1: image_id 555"),
        (_bad(1, category_id=5), "instances.json: 1 annotations name a category_id not in 'categories' [3, 7]"),
        (
            _bad(2, bbox=[50, 50, 20, 5]),
            (
                "1 boxes lie outside their image (by more than 1 pixel): annotation 3: "
                "bbox [50, 50, 20, 5] in image 101 of 64 x 64"
            ),
        ),
        (_bad(0, bbox=[5, 5, 0, 4]), "1 boxes have a non-positive width or height: annotation 1"),
        (_bad(0, bbox=[5, 5, 4]), "lack a 'bbox' of 4 finite numbers"),
        (
            lambda d: [a.update(bbox=[-9, 0, 4, 4]) for a in d["annotations"][:5]],
            "5 boxes lie outside their image (by more than 1 pixel): annotation 1",
        ),
        (lambda d: d["images"][3].update(width=32), "image files differ in size from their JSON"),
        (lambda d: d["images"][3].update(file_name="nowhere.png"), "1 of 12 image files are missing from"),
        (lambda d: d["images"][3].update(id=100), "images appear twice: 100"),
    ],
)
def test_each_bad_coco_file_is_named_before_training(tmp_path, edit, message):
    folder = write_coco(tmp_path / "d", edit=edit)
    with pytest.raises(ValueError) as err:
        run(coco_cfg(folder), tmp_path / "run")
    text = str(err.value)
    assert message in text and "\n" not in text and text.startswith(str(folder / "instances.json"))
    if "5 boxes" in message:
        assert text.endswith(", and 2 more")
    assert not (tmp_path / "run").exists()


def test_a_broken_image_and_a_broken_json_are_named(tmp_path):
    folder = write_coco(tmp_path / "d")
    (folder / "images" / _name(4)).write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match=r"instances.json: 1 image files do not decode: 'img_04.png' \("):
        load(folder)
    (folder / "instances.json").write_text('{"images": [')
    with pytest.raises(ValueError, match="instances.json: not a JSON file that parses"):
        load(folder)


@pytest.mark.parametrize(
    "setup, options, message",
    [
        (None, {}, "must be the folder of dataset='coco'"),
        ("empty", {}, "is empty; dataset='coco' reads"),
        ("no-json", {}, "holds no .json file"),
        ("two", {}, "holds several JSON files ['instances.json', 'other.json']; set annotations"),
        ("two", {"annotations": "third.json"}, "annotations='third.json' is not a file in data_dir"),
        (
            "one",
            {"noise": "annotation", "noise_rate": 0.1},
            "noise='annotation' plants box noise in dataset='synthetic-det'",
        ),
        ("one", {"weights": "/nonexistent/w.pt"}, "weights='/nonexistent/w.pt' is not a file"),
    ],
)
def test_a_bad_coco_folder_is_refused_at_the_door(tmp_path, setup, options, message):
    folder = tmp_path / "d"
    if setup == "empty":
        folder.mkdir()
    elif setup == "no-json":
        folder.mkdir()
        (folder / "a.png").write_bytes(b"")
    elif setup in ("one", "two"):
        write_coco(folder)
        if setup == "two":
            write_coco(folder, json_name="other.json")
    with pytest.raises(ValueError) as err:
        coco_cfg(folder, **options).validate()
    assert message in str(err.value)


def test_annotations_apply_to_coco_only():
    with pytest.raises(ValueError, match="annotations='a.json' only applies to dataset='coco'"):
        RunConfig(task="detection", annotations="a.json").validate()


def test_weights_load_into_the_detector_or_its_backbone(tmp_path):
    torch.manual_seed(0)
    saved = create_detection_model("tiny", num_classes=3, in_channels=3)
    torch.save(saved.state_dict(), tmp_path / "whole.pt")
    torch.save({"state_dict": saved.backbone.state_dict()}, tmp_path / "backbone.pt")
    torch.manual_seed(1)
    fresh = create_detection_model("tiny", num_classes=3, in_channels=3)
    assert load_detection_weights(fresh, tmp_path / "whole.pt") == "detector"
    for k, v in saved.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    other = create_detection_model("tiny", num_classes=5, in_channels=3)  # other classes: heads do not fit
    assert load_detection_weights(other, tmp_path / "whole.pt") == "backbone"
    assert load_detection_weights(other, tmp_path / "backbone.pt") == "backbone"
    for k, v in saved.backbone.state_dict().items():
        assert torch.equal(other.backbone.state_dict()[k], v), k
    (tmp_path / "text.pt").write_text("not a state dict")
    with pytest.raises(ValueError, match="text.pt' is not a file torch.load reads"):
        load_detection_weights(fresh, tmp_path / "text.pt")
    torch.save({"a.weight": torch.zeros(2)}, tmp_path / "alien.pt")
    with pytest.raises(ValueError, match="its 1 keys fit neither the FasterRCNN .* nor its backbone: missing"):
        load_detection_weights(fresh, tmp_path / "alien.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds list, not a state dict"):
        load_detection_weights(fresh, tmp_path / "list.pt")
    # Through the run config: the recipe's create_model loads them.
    folder = write_coco(tmp_path / "d")
    cfg = coco_cfg(folder, weights=str(tmp_path / "whole.pt")).validate()
    model = create_model(cfg, det_corpus.load_det_corpus(cfg))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.state_dict().items())


def test_the_synthetic_set_is_described_as_before():
    data = det_corpus.load_det_corpus(RunConfig(task="detection", subset=4, image_size=32).validate())
    # its training images are named (diagnose's table says which one a row is), the description is unchanged
    assert list(data.sources) == ["path"] and data.sources["path"][1] == "synthetic-det/train#1"
    assert data.splits is None and data.info is None
    assert set(data.describe()) == {"name", "task", "num_classes", "train", "val", "test", "in_channels", "image_size"}


def test_a_coco_run_trains_and_scores(tmp_path):
    folder = write_coco(tmp_path / "d")
    data = load(folder)
    assert sum(len(data.test[i][1]["boxes"]) for i in range(len(data.test))) > 0  # FROC has lesions to find
    res = run(coco_cfg(folder), tmp_path / "run")
    assert 0 <= res["froc"] <= 1 and res["lesions"] > 0
    assert res["data"]["num_classes"] == 3 and res["data"]["train"] == len(data.train)
    with np.load(tmp_path / "run" / "assessment.npz") as z:
        assert len(z["loss"]) == len(data.train) == 9
