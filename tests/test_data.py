import gzip
import pickle

import numpy as np
import pytest
import torch

from mombs.recipes.classification.cifar import load_cifar, load_cifar100n
from mombs.recipes.classification.fashion_mnist import find_fashion_mnist, load_fashion_mnist
from mombs.recipes.classification.imbalance import long_tailed_counts, long_tailed_indices, shot_groups
from mombs.recipes.classification.label_noise import pair_noise, symmetric_noise


def write_idx(path, array, gz=True):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(raw)
    else:
        path.write_bytes(raw)


@pytest.fixture
def fake_fmnist(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("t10k", 5)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", np.arange(n) % 10, gz=(split == "train"))
    return tmp_path


def test_fashion_mnist_reader(fake_fmnist, monkeypatch):
    monkeypatch.delenv("MOMBS_DATA", raising=False)
    x, y = load_fashion_mnist("train", fake_fmnist)
    assert x.shape == (12, 28, 28) and x.dtype == np.uint8 and y.tolist() == list(np.arange(12) % 10)
    assert load_fashion_mnist("test", fake_fmnist)[0].shape == (5, 28, 28)
    monkeypatch.setenv("MOMBS_DATA", str(fake_fmnist))
    assert find_fashion_mnist() == fake_fmnist


def test_fashion_mnist_errors_name_the_file(fake_fmnist, tmp_path, monkeypatch):
    monkeypatch.delenv("MOMBS_DATA", raising=False)
    monkeypatch.setattr("mombs.recipes.classification.fashion_mnist.DEFAULT_FASHION_MNIST_DIR", str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.*apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", tmp_path / "empty")
    bad = fake_fmnist / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") * 3 + b"short"))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz holds 5 bytes"):
        load_fashion_mnist("test", fake_fmnist)
    with pytest.raises(ValueError, match="split='val'"):
        load_fashion_mnist("val", fake_fmnist)


def test_cifar_pickles_are_read_safely(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train", 6), ("test", 3)):
        batch = {b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8), b"fine_labels": list(range(n))}
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    x, y = load_cifar(100, "train", tmp_path)
    assert x.shape == (6, 32, 32, 3) and y.tolist() == list(range(6))
    # a pickle that would run code is refused
    (root / "test").write_bytes(pickle.dumps({b"data": __import__("os").system}, protocol=2))
    with pytest.raises(ValueError, match="refusing to load"):
        load_cifar(100, "test", tmp_path)
    with pytest.raises(FileNotFoundError, match="data_batch_1 not found.*never downloads"):
        load_cifar(10, "train", tmp_path)


def test_cifar100n_human_labels(tmp_path):
    path = tmp_path / "CIFAR-100_human.pt"
    torch.save({"clean_label": np.arange(10) % 100, "noisy_label": (np.arange(10) + 1) % 100}, path)
    out = load_cifar100n(path)
    assert out["noisy_label"].tolist() == [(i + 1) % 100 for i in range(10)]
    with pytest.raises(FileNotFoundError, match="CIFAR-100_human.pt"):
        load_cifar100n(tmp_path / "missing.pt")


def test_symmetric_noise_is_exact_and_keeps_the_mask():
    clean = np.arange(1000) % 10
    noisy, flipped = symmetric_noise(clean, 0.4, 10, seed=3)
    assert flipped.sum() == 400 and (noisy[flipped] != clean[flipped]).all()
    assert (noisy[~flipped] == clean[~flipped]).all()
    # flips go to every other class
    assert set(np.unique(noisy[flipped & (clean == 0)])) == set(range(1, 10))
    with pytest.raises(ValueError, match="rate=1.5"):
        symmetric_noise(clean, 1.5, 10)


def test_pair_noise_flips_to_the_next_class_per_class():
    clean = np.repeat(np.arange(5), 20)
    noisy, flipped = pair_noise(clean, 0.2, 5)
    assert [int(flipped[clean == c].sum()) for c in range(5)] == [4] * 5
    assert (noisy[flipped] == (clean[flipped] + 1) % 5).all()


def test_long_tail_profile():
    assert long_tailed_counts(5000, 10, 0.01).tolist() == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    labels = np.repeat(np.arange(10), 100)
    idx = long_tailed_indices(labels, 0.1, img_max=100, seed=1)
    assert np.bincount(labels[idx]).tolist() == long_tailed_counts(100, 10, 0.1).tolist()
    assert not np.array_equal(idx, long_tailed_indices(labels, 0.1, img_max=100, seed=2))
    groups = shot_groups([500, 100, 50, 19])
    assert {k: v.tolist() for k, v in groups.items()} == {"many": [0], "medium": [1, 2], "few": [3]}
    with pytest.raises(ValueError, match="asks for 200 images of class 0"):
        long_tailed_indices(labels, 0.1, img_max=200)
