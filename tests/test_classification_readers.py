"""Your own images: ImageFolder trees and CSV files, their splits and checks, the models users
bring (torchvision builders, local weights) and one run from end to end on a tiny folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("torchvision")
Image = pytest.importorskip("PIL.Image")

from mombs.recipes.classification.corpus import load_corpus  # noqa: E402
from mombs.recipes.classification.folder import LabelledImages  # noqa: E402
from mombs.recipes.classification.models import FEATURE_MODULE, classifier_head, create_model  # noqa: E402
from mombs.recipes.classification.training import create_model as recipe_model  # noqa: E402
from mombs.recipes.classification.training import evaluate, parts  # noqa: E402
from mombs.train import RunConfig  # noqa: E402

CLASSES = ("cat", "dog", "eel")
#: A distinct colour per class, so that the tiny sets are learnable.
COLOURS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "eel": (40, 40, 200)}


def _png(path, colour, *, side=16, mode="RGB", seed=0):
    """A ``side`` x ``side`` image of ``colour`` with a little seeded noise; grey for ``mode="L"``."""
    rng = np.random.default_rng(seed)
    a = np.clip(np.array(colour, dtype=np.int16) + rng.integers(-20, 21, (side, side, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(a, "RGB")
    (img.convert("L") if mode == "L" else img).save(path)


def _folder(root, *, per_class=8, side=16, mode="RGB", prefix=""):
    """``root/[prefix/]class/NN.png``: 3 classes x ``per_class`` images; their relative paths."""
    names = []
    for c in CLASSES:
        for i in range(per_class):
            rel = f"{prefix}{c}/{i:02d}.png"
            _png(root / rel, COLOURS[c], side=side, mode=mode, seed=1000 * len(prefix) + 100 * CLASSES.index(c) + i)
            names.append(rel)
    return names


def _cfg(**kw):
    kw.setdefault("dataset", "imagefolder")
    return RunConfig(**kw).validate()


def _decoded(root, rel, data):
    """File ``rel`` read independently of the reader: ``(C, H, W)``, normalized as the run's training images."""
    a = np.asarray(Image.open(root / rel).convert("RGB"), dtype=np.float32) / 255
    x = torch.from_numpy(a.transpose(2, 0, 1).copy())
    return (x - data.x_train.mean) / data.x_train.std


# ---- ImageFolder -------------------------------------------------------------------------------------------


def test_image_folder_without_splits_draws_seeded_stratified_splits(tmp_path):
    files = _folder(tmp_path)
    data = load_corpus(_cfg(data_dir=str(tmp_path), seed=3))
    splits = data.splits
    every = splits["train"] + splits["val"] + splits["test"]
    assert sorted(every) == sorted(files)  # every file in exactly one split
    assert len(set(every)) == len(files)
    # Stratified: test_fraction 0.2 of 8 -> 2 per class, then val_fraction 0.1 of 6 -> 1 per class.
    for s, n in (("test", 2), ("val", 1), ("train", 5)):
        assert sorted(p.split("/")[0] for p in splits[s]) == sorted(CLASSES * n), s
    assert data.num_classes == 3 and data.classes == list(CLASSES) and data.noisy_train is None
    assert len(data.x_train) == len(data.y_train) == 15 and data.x_train.shape == (15, 3, 16, 16)
    again = load_corpus(_cfg(data_dir=str(tmp_path), seed=3))
    assert again.splits == splits  # reproducible by seed
    other = load_corpus(_cfg(data_dir=str(tmp_path), seed=4))
    assert other.splits != splits
    smaller = load_corpus(_cfg(data_dir=str(tmp_path), seed=3, test_fraction=0.5))
    assert len(smaller.splits["test"]) == 12


def test_sources_name_each_training_file_in_training_order(tmp_path):
    _folder(tmp_path)
    data = load_corpus(_cfg(data_dir=str(tmp_path)))
    paths = data.sources["path"]
    assert isinstance(paths, np.ndarray) and paths.shape == (len(data.y_train),)
    assert paths.tolist() == data.splits["train"] == sorted(paths.tolist())  # ImageFolder's order
    for i, rel in enumerate(paths):
        assert data.classes[data.y_train[i]] == rel.split("/")[0]
        torch.testing.assert_close(data.x_train[i], _decoded(tmp_path, rel, data))
    d = data.describe()
    assert d["classes"] == list(CLASSES) and d["data_dir"] == str(tmp_path) and d["image_shape"] == [3, 16, 16]
    # The "dataset" normalization: the training images' own per-channel mean and std.
    stacked = torch.stack([data.x_train[i] for i in range(len(data.x_train))])
    torch.testing.assert_close(stacked.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(stacked.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-4, rtol=0)


def test_image_folder_with_split_folders_keeps_them(tmp_path):
    train = _folder(tmp_path, per_class=4, prefix="train/")
    val = _folder(tmp_path, per_class=2, prefix="val/")
    test = _folder(tmp_path, per_class=3, prefix="test/")
    data = load_corpus(_cfg(data_dir=str(tmp_path)))
    assert data.splits == {"train": train, "val": val, "test": test}
    assert data.sources["path"].tolist() == train and data.y_test.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    with pytest.raises(ValueError, match=r"test_fraction=0.3 has no use: the data gives its test split"):
        load_corpus(_cfg(data_dir=str(tmp_path), test_fraction=0.3))


def test_image_folder_with_train_and_test_folders_draws_val_from_train(tmp_path):
    train = _folder(tmp_path, per_class=10, prefix="train/")
    test = _folder(tmp_path, per_class=2, prefix="test/")
    data = load_corpus(_cfg(data_dir=str(tmp_path)))
    assert data.splits["test"] == test
    assert sorted(data.splits["train"] + data.splits["val"]) == sorted(train) and len(data.splits["val"]) == 3


def test_a_split_folder_with_an_unknown_class_is_refused(tmp_path):
    _folder(tmp_path, per_class=2, prefix="train/")
    _png(tmp_path / "test" / "fox" / "0.png", (9, 9, 9))
    with pytest.raises(ValueError, match=r"test'.*class folders that train/ lacks: fox"):
        load_corpus(_cfg(data_dir=str(tmp_path)))


# ---- CSV ---------------------------------------------------------------------------------------------------


def _csv(tmp_path, rows, header="path,label"):
    path = tmp_path / "labels.csv"
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return str(path)


def test_csv_with_class_names_sorts_them_to_ids(tmp_path):
    files = _folder(tmp_path / "img")
    rows = [(f"img/{f}", f.split("/")[0]) for f in reversed(files)]
    data = load_corpus(_cfg(dataset="csv", data_dir=_csv(tmp_path, rows)))
    assert data.classes == list(CLASSES)
    label = dict(rows)
    for rel, y in zip(data.sources["path"], data.y_train):
        assert data.classes[y] == label[rel]
    assert sorted(sum(data.splits.values(), [])) == sorted(r[0] for r in rows)
    # Training order: the CSV's own order, restricted to the training rows.
    order = [r[0] for r in rows if r[0] in set(data.splits["train"])]
    assert data.sources["path"].tolist() == order


def test_csv_with_integer_labels_keeps_them(tmp_path):
    files = _folder(tmp_path)
    rows = [(f, 2 * CLASSES.index(f.split("/")[0])) for f in files]  # ids 0, 2, 4: class 1 and 3 unseen
    data = load_corpus(_cfg(dataset="csv", data_dir=_csv(tmp_path, rows)))
    assert data.num_classes == 5 and data.classes == ["0", "1", "2", "3", "4"]
    truth = dict(rows)
    assert [truth[p] for p in data.sources["path"]] == data.y_train.tolist()


def test_csv_split_column_gives_the_splits(tmp_path):
    files = _folder(tmp_path, per_class=4)
    split = ["train", "train", "val", "test"] * 3
    rows = [(f, f.split("/")[0], s) for f, s in zip(files, split)]
    data = load_corpus(_cfg(dataset="csv", data_dir=_csv(tmp_path, rows, "path,label,split")))
    for s in ("train", "val", "test"):
        assert data.splits[s] == [f for f, t in zip(files, split) if t == s]
    assert data.sources["path"].tolist() == data.splits["train"]


# ---- checks at the door: one message each ------------------------------------------------------------------


def test_user_data_without_data_dir_says_what_to_give():
    with pytest.raises(ValueError, match=r"dataset='imagefolder' reads your images: give data_dir=FOLDER"):
        _cfg()
    with pytest.raises(ValueError, match=r"dataset='csv' reads your images: give data_dir=FILE.csv"):
        _cfg(dataset="csv")


def test_missing_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"data_dir='.*nowhere' is not an existing folder"):
        _cfg(data_dir=str(tmp_path / "nowhere"))


def test_empty_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"is empty; put one sub-folder of images per class"):
        load_corpus(_cfg(data_dir=str(tmp_path)))


def test_folder_without_class_folders_is_refused(tmp_path):
    _png(tmp_path / "a.png", (1, 2, 3))
    with pytest.raises(ValueError, match=r"has no class folders \(1 files, no sub-folder\)"):
        load_corpus(_cfg(data_dir=str(tmp_path)))


def test_class_folder_without_images_is_refused(tmp_path):
    _folder(tmp_path, per_class=2)
    (tmp_path / "fox").mkdir()
    with pytest.raises(ValueError, match=r"class folder\(s\) fox in data_dir .* hold no images"):
        load_corpus(_cfg(data_dir=str(tmp_path)))


def test_csv_that_is_a_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"is not an existing file; dataset='csv' reads FILE.csv"):
        _cfg(dataset="csv", data_dir=str(tmp_path))


def test_csv_without_path_and_label_columns_names_the_columns(tmp_path):
    with pytest.raises(ValueError, match=r"has the columns \['file', 'y'\]; it needs 'path' and 'label'"):
        load_corpus(_cfg(dataset="csv", data_dir=_csv(tmp_path, [("a.png", 0)], "file,y")))


def test_csv_label_that_is_neither_integer_nor_name(tmp_path):
    _folder(tmp_path, per_class=1)
    with pytest.raises(ValueError, match=r"line 3 \(dog/00.png\): the label is empty; it is neither an integer"):
        load_corpus(_cfg(dataset="csv", data_dir=_csv(tmp_path, [("cat/00.png", "cat"), ("dog/00.png", "")])))
    with pytest.raises(ValueError, match=r"mixes integer labels \('1', line 3\) and class names \('cat', line 2\)"):
        load_corpus(_cfg(dataset="csv", data_dir=_csv(tmp_path, [("cat/00.png", "cat"), ("dog/00.png", 1)])))


def test_csv_split_value_outside_train_val_test(tmp_path):
    _folder(tmp_path, per_class=1)
    with pytest.raises(ValueError, match=r"line 3 \(dog/00.png\): split 'valid' is not one of train, val, test"):
        load_corpus(
            _cfg(
                dataset="csv",
                data_dir=_csv(
                    tmp_path, [("cat/00.png", "cat", "train"), ("dog/00.png", "dog", "valid")], "path,label,split"
                ),
            )
        )


def test_csv_path_that_does_not_exist(tmp_path):
    _folder(tmp_path, per_class=1)
    rows = [("cat/00.png", "cat"), ("cat/07.png", "cat"), ("dog/09.png", "dog")]
    with pytest.raises(ValueError, match=r"2 path\(s\) do not exist \(relative to .*\): cat/07.png, dog/09.png$"):
        load_corpus(_cfg(dataset="csv", data_dir=_csv(tmp_path, rows)))


def test_images_that_do_not_decode_are_named_with_their_count(tmp_path):
    _folder(tmp_path)
    for i in range(5):
        (tmp_path / "dog" / f"bad{i}.png").write_bytes(b"not a png at all")
    with pytest.raises(
        ValueError,
        match=r"^5 of 29 image\(s\) do not decode: dog/bad0.png \(not an image Pillow "
        r"can read\), dog/bad1.png .*, dog/bad2.png .* and 2 more$",
    ):
        load_corpus(_cfg(data_dir=str(tmp_path)))


def test_normalize_imagenet_and_none_on_files(tmp_path):
    _folder(tmp_path, mode="L")
    raw = load_corpus(_cfg(data_dir=str(tmp_path), model="small_cnn", normalize="none"))
    x = raw.x_train[0]
    assert x.shape == (1, 16, 16) and 0 <= float(x.min()) and float(x.max()) <= 1
    rel = raw.sources["path"][0]
    expected = np.asarray(Image.open(tmp_path / rel), dtype=np.float32) / 255
    torch.testing.assert_close(x[0], torch.from_numpy(expected))
    # ImageNet's statistics are per colour channel: grey images are repeated to 3 for them.
    net = load_corpus(_cfg(data_dir=str(tmp_path), model="small_cnn", normalize="imagenet"))
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(net.x_train[0], (x.expand(3, -1, -1) - mean[:, None, None]) / std[:, None, None])


def test_images_of_different_sizes_need_image_size(tmp_path):
    _folder(tmp_path)
    _png(tmp_path / "eel" / "big.png", COLOURS["eel"], side=20)
    with pytest.raises(
        ValueError,
        match=r"images differ in size \(cat/00.png is 16x16, eel/big.png is 20x20\); "
        r"set image_size",
    ):
        load_corpus(_cfg(data_dir=str(tmp_path)))
    data = load_corpus(_cfg(data_dir=str(tmp_path), image_size=32))
    assert data.x_train.shape[1:] == (3, 32, 32) and data.x_train[0].shape == (3, 32, 32)


def test_options_the_built_in_sets_cannot_take_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"image_size=32 resizes your own images"):
        _cfg(dataset="digits", image_size=32)
    with pytest.raises(ValueError, match=r"test_fraction=0.2 draws a test split from your own images"):
        _cfg(dataset="digits", test_fraction=0.2)
    with pytest.raises(ValueError, match=r"normalize='imagenet' needs colour images; dataset='digits' is grey"):
        _cfg(dataset="digits", normalize="imagenet")
    with pytest.raises(ValueError, match=r"model='resnet18' takes 3-channel images; dataset='fashion-mnist'"):
        _cfg(dataset="fashion-mnist", model="resnet18")
    with pytest.raises(ValueError, match=r"subset=5 applies to the built-in data sets only"):
        _cfg(data_dir=str(tmp_path), subset=5)
    with pytest.raises(ValueError, match=r"noise='symmetric' plants label noise in the built-in data sets only"):
        _cfg(data_dir=str(tmp_path), noise="symmetric", noise_rate=0.2)
    with pytest.raises(ValueError, match=r"weights='.*none.pt' is not an existing file"):
        _cfg(dataset="digits", weights=str(tmp_path / "none.pt"))


def test_built_in_sets_take_normalize_none_and_name_their_samples():
    # "none" on a built-in set: the images in [0, 1], the default path untouched otherwise.
    plain = load_corpus(_cfg(dataset="digits", normalize="none"))
    default = load_corpus(_cfg(dataset="digits"))
    assert 0 <= float(plain.x_train.min()) and float(plain.x_train.max()) <= 1
    mean = plain.x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = plain.x_train.std(dim=(0, 2, 3), keepdim=True)
    torch.testing.assert_close(default.x_train, (plain.x_train - mean) / std)
    # Built-in samples are named by their index in the set's training file, in training order.
    names = default.sources["path"]
    assert names.shape == default.y_train.shape
    index = np.array([int(p.split("#")[1]) for p in names])
    assert names[0].startswith("digits/train#") and (np.diff(index) > 0).all()
    assert default.splits is None  # a public set's splits follow from the seed: no splits.json


# ---- models users bring ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0"])
def test_torchvision_heads_run_on_their_pooled_features(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=4).eval()
    seen = {}
    dict(model.named_modules())[FEATURE_MODULE[name]].register_forward_hook(lambda m, i, o: seen.update(f=o))
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 32))
        torch.testing.assert_close(classifier_head(name, model)(seen["f"]), logits)
    assert logits.shape == (2, 4)


def test_grey_images_are_repeated_to_three_channels_for_resnet18(tmp_path):
    _folder(tmp_path, mode="L")
    grey = load_corpus(_cfg(data_dir=str(tmp_path), model="small_cnn"))
    assert grey.x_train.shape[1] == 1 and grey.x_train[0].shape == (1, 16, 16)
    cfg = _cfg(data_dir=str(tmp_path), model="resnet18", image_size=32)
    data = load_corpus(cfg)
    x = data.x_train[0]
    assert x.shape == (3, 32, 32)
    torch.testing.assert_close(
        x[0] * data.x_train.std[0] + data.x_train.mean[0], x[2] * data.x_train.std[2] + data.x_train.mean[2]
    )
    torch.manual_seed(0)
    model = recipe_model(cfg.resolved(), data)
    p = parts(cfg.resolved(), data, model, torch.device("cpu"))
    top1, pred = p.evaluate(model, p.test)
    assert 0 <= top1 <= 1 and pred.shape == (len(data.y_test),)


def test_weights_load_and_a_head_that_does_not_fit_is_replaced_with_a_warning(tmp_path):
    _folder(tmp_path / "img", per_class=3)
    torch.manual_seed(1)
    source = create_model("resnet18", num_classes=5)
    path = tmp_path / "r18.pt"
    torch.save(source.state_dict(), path)
    cfg = _cfg(data_dir=str(tmp_path / "img"), model="resnet18", weights=str(path))
    data = load_corpus(cfg)
    with pytest.warns(UserWarning, match=r"r18.pt'.*head does not fit.*fc.weight, fc.bias start\(s\) from a fresh"):
        model = recipe_model(cfg.resolved(), data)
    torch.testing.assert_close(model.conv1.weight, source.conv1.weight)
    torch.testing.assert_close(model.layer4[1].bn2.running_mean, source.layer4[1].bn2.running_mean)
    assert model.fc.out_features == 3
    # A head that fits is loaded too, without a warning.
    torch.save(model.state_dict(), path)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = recipe_model(cfg.resolved(), data)
    torch.testing.assert_close(again.fc.weight, model.fc.weight)


def test_weights_that_are_not_a_state_dict_or_do_not_fit_are_refused(tmp_path):
    _folder(tmp_path / "img", per_class=3)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    cfg = _cfg(data_dir=str(tmp_path / "img"), model="resnet18", weights=str(bad))
    data = load_corpus(cfg)
    with pytest.raises(ValueError, match=r"weights='.*bad.pt' cannot be read as a state dict with torch.load"):
        recipe_model(cfg.resolved(), data)
    other = tmp_path / "cnn.pt"
    torch.save(create_model("small_cnn", num_classes=3, in_channels=3).state_dict(), other)
    cfg = _cfg(data_dir=str(tmp_path / "img"), model="resnet18", weights=str(other))
    with pytest.raises(
        ValueError,
        match=r"does not fit model ResNet beyond its head \(fc\): \d+ key\(s\) differ: "
        r"conv1.weight \(missing\)",
    ):
        recipe_model(cfg.resolved(), data)
    torch.save([1, 2], other)
    with pytest.raises(ValueError, match=r"holds a list, not a state dict"):
        recipe_model(cfg.resolved(), data)


# ---- evaluation and a whole run ----------------------------------------------------------------------------


def test_evaluate_on_files_matches_evaluate_on_tensors(tmp_path):
    _folder(tmp_path)
    data = load_corpus(_cfg(data_dir=str(tmp_path)))
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=3, in_channels=3)
    split = LabelledImages(data.x_test, data.y_test)
    x = torch.stack([data.x_test[i] for i in range(len(data.x_test))])
    on_files = evaluate(model, split, batch_size=4)
    on_tensors = evaluate(model, (x, torch.from_numpy(data.y_test)))
    assert on_files[0] == on_tensors[0] and np.array_equal(on_files[1], on_tensors[1])


def test_a_run_on_an_image_folder_sees_every_training_file_once_per_epoch(tmp_path, monkeypatch):
    import mombs.train.runner as runner

    root = tmp_path / "data"
    _folder(root)
    seen = []
    real = runner.train_one_epoch

    def counting(model, loader, **kw):
        epoch = []

        class Counted:
            def __iter__(self):
                for batch in loader:
                    epoch.extend(batch[0].tolist())
                    yield batch

        out = real(model, Counted(), **kw)
        seen.append(epoch)
        return out

    monkeypatch.setattr(runner, "train_one_epoch", counting)
    cfg = RunConfig(
        dataset="imagefolder",
        data_dir=str(root),
        model="small_cnn",
        epochs=2,
        pivot_epoch=1,
        strategy="mixed",
        batch_size=8,
    )
    res = runner.run(cfg, tmp_path / "run")
    n = len(load_corpus(cfg.resolved()).y_train)  # 3 classes x 8: 6 test, 3 val
    assert len(seen) == 2 and all(sorted(e) == list(range(n)) for e in seen)
    assert 0 <= res["top1"] <= 1 and res["train_size"] == n
    assert json.loads((tmp_path / "run" / "results.json").read_text())["top1"] == res["top1"]
    z = np.load(tmp_path / "run" / "assessment.npz")
    assert len(z["loss"]) == len(z["uncertainty"]) == n == 15
    data = load_corpus(cfg.resolved())
    # The runner names each row's file and writes the splits (issue 20).
    assert z["source_path"].tolist() == data.sources["path"].tolist()
    assert json.loads((tmp_path / "run" / "splits.json").read_text()) == data.splits
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"]["classes"] == list(CLASSES)
