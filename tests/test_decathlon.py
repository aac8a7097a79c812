"""Your own volumes: Medical Segmentation Decathlon and nnU-Net raw task folders (issue 20)."""

import json

import numpy as np
import pytest

from mombs.recipes.segmentation.corpus import load_seg_corpus
from mombs.recipes.segmentation.covid_ct import split_by_patient
from mombs.recipes.segmentation.decathlon import read_decathlon
from mombs.train import RunConfig, run

nib = pytest.importorskip("nibabel")

CASES = [f"case_{i:03d}" for i in range(6)]
EMPTY = "case_005"  # its mask has no foreground
SHAPE = (32, 32, 8)
#: Slices with foreground in every case but EMPTY.
FG = range(2, 6)
#: Two affines, so that reading must reorient: RAS and LPS (x and y flipped).
AFFINES = (np.eye(4), np.diag([-1.0, -1.0, 1.0, 1.0]))
WINDOW = [-1000.0, 1000.0]
MSD = dict(task="segmentation", dataset="msd", threads=1)


def _volumes(i: int, channels: int = 1):
    """``channels`` image volumes (HU-like) and the label volume of case ``i``."""
    rng = np.random.default_rng(i)
    xx, yy = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    blob = (xx - 10 - i) ** 2 + (yy - 14) ** 2 < 25
    label = np.zeros(SHAPE, np.uint8)
    if CASES[i] != EMPTY:
        for z in FG:
            label[..., z][blob] = 1 + (z % 2)  # two lesion labels: both are foreground
    images = []
    for c in range(channels):
        img = rng.integers(-900, 200, SHAPE).astype(np.float32) * (c + 1)
        img[label > 0] += 300
        images.append(img)
    return images, label


def _save(path, data, affine):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))


def make_task(root, dialect="msd", channels=1, cases=CASES, four_d=True):
    """A task folder: ``msd`` (a ``training`` list; several channels as one 4-D file, or nnU-Net v1's
    ``_0000`` files with ``four_d=False``) or ``nnunet`` (v2: ``channel_names``, files found by listing)."""
    names = {str(c): m for c, m in enumerate(["CT", "T2", "ADC"][:channels])}
    labels = {"0": "background", "1": "tumour", "2": "cyst"}
    training = []
    for i, case in enumerate(cases):
        images, label = _volumes(CASES.index(case), channels)
        affine = AFFINES[i % 2]
        _save(root / "labelsTr" / f"{case}.nii.gz", label, affine)
        if dialect == "msd" and (channels == 1 or four_d):
            _save(root / "imagesTr" / f"{case}.nii.gz", np.stack(images, -1) if channels > 1 else images[0], affine)
        else:
            for c, img in enumerate(images):
                _save(root / "imagesTr" / f"{case}_{c:04d}.nii.gz", img, affine)
        training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    _save(root / "imagesTs" / "unlabelled.nii.gz", np.zeros(SHAPE, np.float32), np.eye(4))
    if dialect == "msd":
        meta = {
            "name": "toy",
            "modality": names,
            "labels": labels,
            "numTraining": len(cases),
            "training": training,
            "test": ["./imagesTs/unlabelled.nii.gz"],
        }
    else:
        meta = {
            "channel_names": names,
            "labels": {v: int(k) for k, v in labels.items()},
            "numTraining": len(cases),
            "file_ending": ".nii.gz",
        }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def msd(tmp_path_factory):
    return make_task(tmp_path_factory.mktemp("msd"))


def _canonical_slice(path, z: int) -> np.ndarray:
    """Slice ``z`` as the reader should show it, computed with nibabel's own canonical image."""
    data = nib.as_closest_canonical(nib.load(str(path))).get_fdata()
    return data[::-1, ::-1, z].T


def _corpus(data_dir, **kw):
    return load_seg_corpus(RunConfig(**dict(MSD, data_dir=str(data_dir), **kw)).validate().resolved())


# ---------------------------------------------------------------- reading


def test_msd_and_nnunet_dialects_read_the_same_slices(msd, tmp_path):
    v2 = make_task(tmp_path / "v2", dialect="nnunet")
    a, b = read_decathlon(msd, seed=3), read_decathlon(v2, seed=3)
    assert a.dialect == "msd" and b.dialect == "nnunet"
    assert a.labels == b.labels == {0: "background", 1: "tumour", 2: "cyst"} and a.channels == ("CT",)
    assert a.splits == b.splits
    for name in ("train", "val", "test"):
        x, y = getattr(a, name), getattr(b, name)
        np.testing.assert_array_equal(x.images, y.images)
        np.testing.assert_array_equal(x.masks, y.masks)
        np.testing.assert_array_equal(x.case, y.case)
        assert x.images.shape[1:] == (1, 32, 32) and x.images.dtype == np.float32
        assert set(np.unique(x.masks)) <= {0, 1}  # labels 1 and 2 are both the foreground
    assert set(a.train.path) <= {f"imagesTr/{c}.nii.gz" for c in CASES}
    assert set(b.train.path) <= {f"imagesTr/{c}_0000.nii.gz" for c in CASES}
    # The alias reads the same folder the same way.
    np.testing.assert_array_equal(_corpus(msd, dataset="nnunet").x_train, _corpus(msd).x_train)


def test_channels_a_4d_msd_image_v1_channel_files_and_v2_agree(tmp_path):
    four_d = read_decathlon(make_task(tmp_path / "4d", channels=2), seed=0)
    v1 = read_decathlon(make_task(tmp_path / "v1", channels=2, four_d=False), seed=0)
    v2 = read_decathlon(make_task(tmp_path / "v2", dialect="nnunet", channels=2), seed=0)
    assert four_d.channels == v2.channels == ("CT", "T2")
    assert four_d.train.images.shape[1] == 2
    for other in (v1, v2):
        np.testing.assert_array_equal(four_d.train.images, other.train.images)
    # The non-CT channel is a per-volume z-score: over every slice of a case, mean 0 and std 1.
    case = four_d.train.case[0]
    t2 = four_d.train.images[four_d.train.case == case, 1]
    assert abs(t2.mean()) < 1e-4 and abs(t2.std() - 1) < 1e-3


def test_every_slice_is_in_one_split_and_splits_are_by_case_and_seeded(msd):
    d = read_decathlon(msd, fractions=(0.6, 0.2, 0.2), seed=0)
    parts = (d.train, d.val, d.test)
    assert sorted(c for s in d.splits.values() for c in s) == CASES  # each case in exactly one split
    assert all(len(s) >= 1 for s in d.splits.values())
    for name, part in zip(("train", "val", "test"), parts):
        assert set(part.case) == set(d.splits[name])
    seen = [(c, z) for p in parts for c, z in zip(p.case, p.slice)]
    assert len(seen) == len(set(seen)) == len(CASES) * SHAPE[2]  # every slice once, the empty case's too
    assert read_decathlon(msd, seed=0).splits == d.splits
    assert len({json.dumps(read_decathlon(msd, seed=s).splits, sort_keys=True) for s in range(6)}) > 1
    # The run's splits: val_fraction (0.1) and test_fraction (default 0.2) of 6 cases, one each at least.
    corpus = _corpus(msd, seed=0)
    assert {k: len(v) for k, v in corpus.splits.items()} == {"train": 4, "val": 1, "test": 1}
    assert corpus.describe()["cases"] == {"train": 4, "val": 1, "test": 1}


def test_foreground_only_keeps_the_slices_with_foreground_and_the_default_keeps_all(msd):
    fractions = (0.6, 0.2, 0.2)
    seed = next(s for s in range(50) if dict(zip(CASES, split_by_patient(CASES, fractions, s)))[EMPTY] == "train")
    every = read_decathlon(msd, fractions=fractions, seed=seed)
    fg = read_decathlon(msd, fractions=fractions, seed=seed, foreground_only=True)
    assert every.splits == fg.splits
    assert (every.train.case == EMPTY).sum() == SHAPE[2] and not every.train.masks[every.train.case == EMPTY].any()
    for part in (fg.train, fg.val, fg.test):
        assert part.masks.reshape(len(part.masks), -1).any(axis=1).all()
        assert EMPTY not in set(part.case) and set(part.slice) == set(FG)
    assert len(fg.train.masks) == (len(every.splits["train"]) - 1) * len(FG)
    # With the empty case alone in a split there is nothing to score it on: refused, not an empty split.
    bad = next(s for s in range(50) if dict(zip(CASES, split_by_patient(CASES, fractions, s)))[EMPTY] != "train")
    with pytest.raises(ValueError, match=r"cases \['case_005'\] have no slice with foreground"):
        read_decathlon(msd, fractions=fractions, seed=bad, foreground_only=True)


def test_sources_name_case_and_slice_and_match_the_nifti_data(msd):
    c = _corpus(msd, intensity_window=WINDOW, seed=1)
    n = len(c.y_train)
    assert set(c.sources) == {"path", "case", "slice"} and all(v.shape == (n,) for v in c.sources.values())
    assert set(c.sources["case"]) == set(c.splits["train"])
    for i in range(n):
        want = _canonical_slice(msd / c.sources["path"][i], int(c.sources["slice"][i]))
        np.testing.assert_allclose(c.x_train[i, 0].numpy(), (np.clip(want, *WINDOW) + 1000) / 2000, atol=1e-6)
        mask = _canonical_slice(msd / "labelsTr" / f"{c.sources['case'][i]}.nii.gz", int(c.sources["slice"][i]))
        np.testing.assert_array_equal(c.y_train[i].numpy(), mask > 0)
    # subset keeps a seeded share of the slices, and their sources with them.
    sub = _corpus(msd, intensity_window=WINDOW, seed=1, subset=5)
    keep = [
        int(np.flatnonzero((c.sources["case"] == k) & (c.sources["slice"] == z))[0])
        for k, z in zip(sub.sources["case"], sub.sources["slice"])
    ]
    np.testing.assert_array_equal(sub.x_train.numpy(), c.x_train[keep].numpy())


def test_ct_without_a_window_is_clipped_to_its_percentiles_and_z_scored(msd):
    d = read_decathlon(msd, seed=0)
    case = d.train.case[0]
    vol = np.stack([_canonical_slice(msd / d.train.path[0], z) for z in range(SHAPE[2])]).astype(np.float32)
    lo, hi = np.percentile(vol, [0.5, 99.5])
    clipped = np.clip(vol, lo, hi)
    want = (clipped - clipped.mean()) / clipped.std()
    np.testing.assert_allclose(d.train.images[d.train.case == case, 0], want, atol=1e-4)


def test_other_readers_fill_sources_without_splits():
    c = load_seg_corpus(RunConfig(task="segmentation", subset=8, image_size=32).validate().resolved())
    assert c.splits is None and list(c.sources["path"]) == [f"synthetic-ct/train#{i}" for i in range(8)]


# ---------------------------------------------------------------- refused at the door


def _bad_json(root, text):
    (root / "dataset.json").write_text(text)


def _edit_json(root, **kw):
    meta = json.loads((root / "dataset.json").read_text())
    for k, v in kw.items():
        if v is None:
            meta.pop(k)
        else:
            meta[k] = v
    (root / "dataset.json").write_text(json.dumps(meta))


def _truncate(root, rel):
    p = root / rel
    data = p.read_bytes()
    p.write_bytes(data[: 2 * len(data) // 3])  # the header stays, the data is cut


def _relabel(root, case, fn):
    p = root / "labelsTr" / f"{case}.nii.gz"
    img = nib.load(str(p))
    _save(p, fn(np.asarray(img.dataobj)), img.affine)


BAD = {
    "no dataset.json": (lambda r: (r / "dataset.json").unlink(), r"dataset.json not found"),
    "not JSON": (lambda r: _bad_json(r, "{training: oops"), r"dataset.json is not readable JSON"),
    "not an object": (lambda r: _bad_json(r, "[1, 2]"), r"dataset.json must hold a JSON object, got list"),
    "neither dialect": (lambda r: _edit_json(r, training=None), r"has neither 'training' \(MSD"),
    "missing key": (lambda r: _edit_json(r, modality=None), r"dataset.json lacks \['modality'\]"),
    "bad labels": (lambda r: _edit_json(r, labels={"zero": "background"}), r"'labels' must map integer keys"),
    "missing file": (
        lambda r: (r / "imagesTr" / "case_002.nii.gz").unlink(),
        r"imagesTr/case_002.nii.gz not found \(case 'case_002' of the training list in .*dataset.json\)$",
    ),
    "several missing": (
        lambda r: [p.unlink() for p in sorted((r / "labelsTr").iterdir())[:5]],
        r"^5 files are missing: .*labelsTr/case_000.nii.gz not found.*; and 2 more$",
    ),
    "truncated": (
        lambda r: _truncate(r, "imagesTr/case_003.nii.gz"),
        r"cannot decode .*imagesTr/case_003.nii.gz: EOFError",
    ),
    "not NIfTI": (
        lambda r: (r / "labelsTr" / "case_001.nii.gz").write_bytes(b"not a volume"),
        r"cannot read .*labelsTr/case_001.nii.gz as NIfTI",
    ),
    "shape": (
        lambda r: _relabel(r, "case_004", lambda a: a[..., :7]),
        r"labelsTr/case_004.nii.gz has shape \(32, 32, 7\) but its image .*case_004.nii.gz has \(32, 32, 8\)",
    ),
    "label value": (
        lambda r: _relabel(r, "case_001", lambda a: np.where(a > 0, 3, 0).astype(np.uint8)),
        r"labelsTr/case_001.nii.gz has label values \[3\] not in dataset.json's labels \[0, 1, 2\]",
    ),
    "too few cases": (
        lambda r: _edit_json(r, training=json.loads((r / "dataset.json").read_text())["training"][:2]),
        r"2 labelled case\(s\) found; at least 3 are needed",
    ),
}


@pytest.mark.parametrize("what", list(BAD))
def test_bad_task_folders_are_refused_naming_the_file_before_training(tmp_path, what):
    root = make_task(tmp_path / "task", cases=CASES)
    spoil, message = BAD[what]
    spoil(root)
    with pytest.raises(ValueError, match=message) as err:
        run(RunConfig(**dict(MSD, data_dir=str(root), epochs=1)), tmp_path / "out")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "data_dir, options, message",
    [
        (None, {}, r"data_dir=None must be a Medical Segmentation Decathlon or nnU-Net raw task folder"),
        ("missing", {}, r"data_dir='.*missing' must be a Medical .* it does not exist"),
        ("file", {}, r"data_dir='.*file' is not a folder"),
        ("empty", {}, r"data_dir='.*empty' is empty"),
        (
            "task",
            dict(noise="annotation", noise_rate=0.2),
            r"noise='annotation' plants mask corruptions in dataset='synthetic-ct' only, got dataset='msd'",
        ),
        ("task", dict(windows="lung"), r"windows='lung' applies to the HU sets"),
        ("task", dict(image_size=40), r"image_size=40 must be a multiple of 16"),
        ("task", dict(val_fraction=0.5, test_fraction=0.5), r"leave no training cases"),
    ],
)
def test_bad_data_dirs_and_options_are_refused(msd, tmp_path, data_dir, options, message):
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    where = {None: None, "task": str(msd)}.get(data_dir, str(tmp_path / str(data_dir)))
    with pytest.raises(ValueError, match=message):
        RunConfig(**dict(MSD, data_dir=where, **options)).validate()


def test_nnunet_v2_folders_are_checked_too(tmp_path):
    root = make_task(tmp_path / "v2", dialect="nnunet", channels=2)
    (root / "imagesTr" / "case_004_0001.nii.gz").unlink()
    with pytest.raises(
        ValueError,
        match=r"imagesTr/case_004_0001.nii.gz not found \(a channel image of case "
        r"'case_004', found in labelsTr/\)$",
    ):
        read_decathlon(root)
    _edit_json(root, labels={"background": 0, "tumor": 1, "ignore": 2})
    with pytest.raises(ValueError, match=r"labels has 'ignore'"):
        read_decathlon(root)
    _edit_json(root, labels={"background": 0, "tumor": 1}, file_ending=".png")
    with pytest.raises(ValueError, match=r"file_ending='.png' is not read; this reader reads NIfTI"):
        read_decathlon(root)


def test_different_in_plane_sizes_need_image_size(tmp_path):
    root = make_task(tmp_path / "task")
    img = nib.load(str(root / "imagesTr" / "case_002.nii.gz"))
    lab = nib.load(str(root / "labelsTr" / "case_002.nii.gz"))
    _save(root / "imagesTr" / "case_002.nii.gz", np.asarray(img.dataobj)[:16], img.affine)
    _save(root / "labelsTr" / "case_002.nii.gz", np.asarray(lab.dataobj)[:16], lab.affine)
    with pytest.raises(ValueError, match=r"in-plane sizes differ: 32x32 \(case 'case_000'\), 32x16 .*set image_size"):
        _corpus(root)
    assert _corpus(root, image_size=32).x_train.shape[2:] == (32, 32)


# ---------------------------------------------------------------- through the runner


def test_a_run_on_a_task_folder_trains_and_names_every_slice(msd, tmp_path):
    pytest.importorskip("monai")
    cfg = RunConfig(
        task="segmentation",
        dataset="msd",
        data_dir=str(msd),
        image_size=32,
        epochs=2,
        pivot_epoch=1,
        strategy="mixed",
        batch_size=4,
        threads=1,
    )
    res = run(cfg, tmp_path / "run")
    corpus = _corpus(msd, image_size=32)
    n_train = len(corpus.y_train)
    assert 0 <= res["dice"] <= 1 and res["train_size"] == n_train
    assert all(np.isfinite(v) for v in res["curves"]["train_loss"])
    z = np.load(tmp_path / "run" / "assessment.npz")
    assert len(z["loss"]) == n_train and np.isfinite(z["loss"]).all()
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert sorted(c for s in splits.values() for c in s) == CASES
    assert splits == corpus.splits
    for name in ("path", "case", "slice"):  # the runner stamps each row's origin
        np.testing.assert_array_equal(z[f"source_{name}"], corpus.sources[name])
