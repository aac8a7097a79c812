"""Segmentation data: the synthetic CT set with planted mask noise, and the NIfTI readers."""

import numpy as np
import pytest
from scipy import ndimage

from mombs.recipes.segmentation.covid_ct import (
    THREE_WINDOWS,
    ma_patient_id,
    medseg_blocks,
    read_covid_ct_seg,
    read_medseg_covid,
    split_by_patient,
    three_window,
    window_hu,
)
from mombs.recipes.segmentation.synthetic_ct import CORRUPTIONS, SIZE_GROUPS, make_synthetic_ct

nib = pytest.importorskip("nibabel")


@pytest.fixture(scope="module")
def syn():
    return make_synthetic_ct(200, 20, 20, noise_fraction=0.4, seed=3)


# ---------------------------------------------------------------- synthetic set


def test_synthetic_shapes_ranges_and_determinism(syn):
    tr = syn.train
    assert tr.images.shape == (200, 1, 64, 64) and tr.images.dtype == np.float32
    assert 0 <= tr.images.min() and tr.images.max() <= 1
    assert tr.masks.shape == (200, 64, 64) and tr.masks.dtype == np.int64
    assert set(np.unique(tr.masks)) <= {0, 1}
    again = make_synthetic_ct(200, 20, 20, noise_fraction=0.4, seed=3)
    for a, b in (
        (tr.images, again.train.images),
        (tr.masks, again.train.masks),
        (tr.corruption, again.train.corruption),
        (syn.test.images, again.test.images),
    ):
        np.testing.assert_array_equal(a, b)
    other = make_synthetic_ct(200, 20, 20, noise_fraction=0.4, seed=4)
    assert not np.array_equal(tr.images, other.train.images)
    assert not np.array_equal(tr.corruption, other.train.corruption)


def test_synthetic_eval_sets_do_not_depend_on_train_size(syn):
    small = make_synthetic_ct(50, 20, 20, noise_fraction=0.4, seed=3)
    np.testing.assert_array_equal(small.val.images, syn.val.images)
    np.testing.assert_array_equal(small.train.clean_masks, syn.train.clean_masks[:50])
    assert (syn.val.corruption == 0).all() and np.array_equal(syn.val.masks, syn.val.clean_masks)


def test_synthetic_three_windows_and_hu():
    three = make_synthetic_ct(4, 0, 0, noise_fraction=0.0, windows="three", seed=1)
    hu = make_synthetic_ct(4, 0, 0, noise_fraction=0.0, windows=None, seed=1)
    assert three.train.images.shape == (4, 3, 64, 64)
    np.testing.assert_allclose(three.train.images, three_window(hu.train.images[:, 0]), atol=1e-6)
    assert hu.train.images.min() < -900 and hu.train.images.max() > 0


def test_corruption_fractions_match_config(syn):
    tr = syn.train
    assert tr.noisy.sum() == 80  # exactly round(0.4 * 200)
    counts = np.bincount(tr.corruption, minlength=len(CORRUPTIONS))[1:]
    mix = np.array([syn.config["noise_mix"][n] for n in CORRUPTIONS[1:]])
    assert np.abs(counts - 80 * mix).max() <= 1
    custom = make_synthetic_ct(100, 0, 0, noise_fraction=0.2, noise_mix={"shifted": 1}, seed=0)
    assert set(custom.train.corruption_names[custom.train.noisy]) == {"shifted"}
    assert custom.train.noisy.sum() == 20


def test_clean_masks_untouched_and_every_corruption_changes_the_mask(syn):
    tr = syn.train
    clean = tr.corruption == 0
    np.testing.assert_array_equal(tr.masks[clean], tr.clean_masks[clean])
    assert all((tr.masks[i] != tr.clean_masks[i]).any() for i in np.flatnonzero(~clean))
    np.testing.assert_array_equal(tr.clean_masks, (tr.instances > 0).astype(np.int64))


def _of(tr, name):
    return np.flatnonzero(tr.corruption == CORRUPTIONS.index(name))


def test_each_corruption_does_what_it_says(syn):
    tr = syn.train
    for i in _of(tr, "eroded"):
        assert tr.masks[i].sum() < tr.clean_masks[i].sum()
        assert (tr.masks[i] <= tr.clean_masks[i]).all()  # erosion never adds a pixel
    for i in _of(tr, "dilated"):
        assert tr.masks[i].sum() > tr.clean_masks[i].sum() and (tr.masks[i] >= tr.clean_masks[i]).all()
    for i in _of(tr, "missed"):
        assert (tr.masks[i] <= tr.clean_masks[i]).all() and tr.masks[i].sum() < tr.clean_masks[i].sum()
        # whole lesions go, never parts of one
        for lab in np.unique(tr.instances[i][tr.instances[i] > 0]):
            kept = tr.masks[i][tr.instances[i] == lab]
            assert kept.all() or not kept.any()
    for i in _of(tr, "shifted"):
        c0 = np.array(ndimage.center_of_mass(tr.clean_masks[i]))
        c1 = np.array(ndimage.center_of_mass(tr.masks[i]))
        assert 1.5 <= np.hypot(*(c1 - c0)) <= 5.5
        assert tr.masks[i].sum() == tr.clean_masks[i].sum()  # lesions sit inside the body: nothing falls off
    swapped = _of(tr, "swapped")
    assert swapped.size
    for i in swapped:
        j = tr.swap_source[i]
        assert j != i and j >= 0
        np.testing.assert_array_equal(tr.masks[i], tr.clean_masks[j])
    assert (tr.swap_source[tr.corruption != CORRUPTIONS.index("swapped")] == -1).all()


def test_tiny_faint_and_empty_slices_exist(syn):
    les = syn.train.lesions
    assert ((les["area"] <= 10) & (les["contrast"] <= 120)).any()  # tiny and faint together
    assert les["contrast"].max() > 400 and les["area"].max() > 150
    groups = set(syn.train.size_group.tolist())
    assert {SIZE_GROUPS.index(g) for g in ("empty", "tiny", "small", "medium")} <= groups
    areas = syn.train.clean_masks.sum(axis=(1, 2))
    np.testing.assert_array_equal(np.bincount(les["image"], weights=les["area"], minlength=200), areas)


@pytest.mark.parametrize(
    "kw",
    [
        dict(noise_fraction=1.5),
        dict(noise_mix={"blurred": 1}),
        dict(size=16),
        dict(noise_mix={"missed": -1}),
        dict(windows="bone"),
        dict(n_train=0),
        dict(shift_pixels=(3, 1)),
        dict(noise_fraction=1.0, empty_fraction=0.5),
    ],
)
def test_synthetic_bad_arguments(kw):
    args = dict(n_train=20, n_val=0, n_test=0)
    args.update(kw)
    with pytest.raises(ValueError, match=list(kw)[0]):
        make_synthetic_ct(args.pop("n_train"), args.pop("n_val"), args.pop("n_test"), **args)


# ---------------------------------------------------------------- windowing and splits


def test_window_numbers_on_known_hu():
    hu = np.array([-2000, -1493, -500.5, 484, 3000], dtype=np.float32)
    np.testing.assert_allclose(window_hu(hu, -1493, 484), [0, 0, (-500.5 + 1493) / 1977, 1, 1], rtol=1e-6)
    slab = np.array([[-174.0, 50.0], [274.0, 1425.0]])
    ch = three_window(slab)
    assert ch.shape == (3, 2, 2) and ch.dtype == np.float32
    for k, (lo, hi) in enumerate(THREE_WINDOWS):
        np.testing.assert_allclose(ch[k], np.clip((slab - lo) / (hi - lo), 0, 1), rtol=1e-6)
    np.testing.assert_allclose(ch[:, 0, 1], [224 / 448, 1543 / 1977, 584 / 1959], rtol=1e-6)
    with pytest.raises(ValueError, match="window"):
        window_hu(hu, 5, 5)


def test_split_by_patient():
    ids = np.repeat([f"p{i}" for i in range(10)], 3)
    a = split_by_patient(ids, (0.6, 0.2, 0.2), seed=1)
    np.testing.assert_array_equal(a, split_by_patient(ids, (0.6, 0.2, 0.2), seed=1))
    for p in np.unique(ids):
        assert len(set(a[ids == p])) == 1  # no patient in two splits
    per = {s: len(set(ids[a == s])) for s in ("train", "val", "test")}
    assert per == {"train": 6, "val": 2, "test": 2}
    assert any(not np.array_equal(a, split_by_patient(ids, (0.6, 0.2, 0.2), seed=s)) for s in range(2, 6))
    assert set(split_by_patient(["a", "b", "c"], (0.8, 0.1, 0.1))) == {"train", "val", "test"}
    with pytest.raises(ValueError, match="fractions"):
        split_by_patient(ids, (0.5, 0.2, 0.2))
    blocks = medseg_blocks(100, (0.6, 0.2, 0.2), seed=2)
    assert (blocks == "train").sum() == 60 and (blocks[1:] != blocks[:-1]).sum() + (blocks[0] != blocks[-1]) == 3


# ---------------------------------------------------------------- NIfTI readers


def _write(path, data, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))


def _ma_case(seed, depth=4):
    """A (X, Y, Z) = (6, 5, depth) HU volume and mask with a lesion on slices 1 and 2 only."""
    rng = np.random.default_rng(seed)
    hu = rng.integers(-1000, 400, size=(6, 5, depth)).astype(np.int16)
    mask = np.zeros((6, 5, depth), dtype=np.uint8)
    mask[1:3, 2:4, 1] = 1
    mask[4, 0, 2] = 1
    return hu, mask


_CASES = ("coronacases_001", "coronacases_002", "radiopaedia_10_85902_1", "radiopaedia_10_85902_3")


@pytest.fixture
def ma_root(tmp_path):
    for k, name in enumerate(_CASES):
        hu, mask = _ma_case(k)
        _write(tmp_path / "COVID-19-CT-Seg_20cases" / f"{name}.nii.gz", hu)
        _write(tmp_path / "Infection_Mask" / f"{name}.nii.gz", mask)
    return tmp_path


def test_read_covid_ct_seg_ids_values_and_targets(ma_root):
    ds = read_covid_ct_seg(ma_root, windows=None)
    assert ds.slice_ids == [(c, z) for c in _CASES for z in (1, 2)]
    assert list(ds.patients[-4:]) == ["radiopaedia_10"] * 4
    hu, mask = _ma_case(0)
    # identity affine is RAS: slice = data[::-1, ::-1, z].T (rows anterior first, columns patient right first)
    np.testing.assert_array_equal(ds.hu[0], hu[::-1, ::-1, 1].T)
    np.testing.assert_array_equal(ds.masks[1], mask[::-1, ::-1, 2].T)
    image, m = ds[0]
    assert image.shape == (1, 5, 6) and m.dtype == np.int64
    three = read_covid_ct_seg(ma_root, windows="three")
    np.testing.assert_allclose(three[3][0], three_window(hu_of(ma_root, "coronacases_002")[::-1, ::-1, 2].T), rtol=1e-6)
    assert read_covid_ct_seg(ma_root, windows="lung")[0][0].shape == (1, 5, 6)
    assert len(read_covid_ct_seg(ma_root, slices="all")) == 16
    sized = read_covid_ct_seg(ma_root, size=10)
    assert sized.hu.shape == (8, 10, 10) and set(np.unique(sized.masks)) <= {0, 1}


def hu_of(root, case):
    return np.asarray(nib.load(str(root / "COVID-19-CT-Seg_20cases" / f"{case}.nii.gz")).dataobj)


def test_read_covid_ct_seg_orientation_follows_the_affine(ma_root, tmp_path):
    # the same physical volume stored flipped in x and y with an LPS-style affine reads the same
    hu, mask = _ma_case(0)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [5, 4]  # voxel 0 of the flipped array sits where voxel (5, 4) was
    other = tmp_path / "other"
    _write(other / "COVID-19-CT-Seg_20cases" / "c.nii.gz", hu[::-1, ::-1].copy(), flip)
    _write(other / "Infection_Mask" / "c.nii.gz", mask[::-1, ::-1].copy(), flip)
    a = read_covid_ct_seg(ma_root, windows=None)
    b = read_covid_ct_seg(other, windows=None)
    np.testing.assert_array_equal(a.hu[:2], b.hu)
    np.testing.assert_array_equal(a.masks[:2], b.masks)


def test_read_covid_ct_seg_split_and_binary(ma_root, tmp_path):
    parts = {
        s: read_covid_ct_seg(ma_root, split=s, fractions=(1 / 3, 1 / 3, 1 / 3), seed=5)
        for s in ("train", "val", "test")
    }
    patients = [set(p.patients) for p in parts.values()]
    # three patients: the two radiopaedia_10 series are one, so they always share a split
    assert all(len(p) == 1 for p in patients) and len(set.union(*patients)) == 3
    assert ma_patient_id("radiopaedia_10_85902_3") == "radiopaedia_10" == ma_patient_id("radiopaedia_10_85902_1")
    assert ma_patient_id("coronacases_007") == "coronacases_007"
    again = read_covid_ct_seg(ma_root, split="train", fractions=(1 / 3, 1 / 3, 1 / 3), seed=5)
    assert again.slice_ids == parts["train"].slice_ids
    # labels kept or made binary
    hu, mask = _ma_case(0)
    mask[1:3, 2:4, 1] = 2
    root = tmp_path / "labels"
    _write(root / "COVID-19-CT-Seg_20cases" / "c.nii.gz", hu)
    _write(root / "Infection_Mask" / "c.nii.gz", mask)
    assert set(np.unique(read_covid_ct_seg(root, binary=False).masks)) == {0, 1, 2}
    assert set(np.unique(read_covid_ct_seg(root).masks)) == {0, 1}


def test_read_covid_ct_seg_missing_and_bad_files(ma_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="COVID-19-CT-Seg_20cases.*Ma et al"):
        read_covid_ct_seg(tmp_path / "nowhere")
    (ma_root / "Infection_Mask" / "coronacases_002.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="coronacases_002.nii.gz.*Zenodo"):
        read_covid_ct_seg(ma_root)
    with pytest.raises(ValueError, match="windows"):
        read_covid_ct_seg(ma_root, windows="bone")
    grey = tmp_path / "grey"
    hu, mask = _ma_case(1)
    _write(grey / "COVID-19-CT-Seg_20cases" / "g.nii.gz", (hu + 1000).astype(np.int16))
    _write(grey / "Infection_Mask" / "g.nii.gz", mask)
    with pytest.warns(UserWarning, match="not Hounsfield"):
        read_covid_ct_seg(grey)
    with pytest.raises(ValueError, match="not Hounsfield"):
        read_covid_ct_seg(grey, non_hu="error")


def _medseg(root, n=10):
    rng = np.random.default_rng(9)
    im = rng.uniform(-1000, 300, size=(6, 5, n)).astype(np.float32)
    mask = np.zeros((6, 5, n), dtype=np.float32)
    mask[0, 0, ::2] = 1
    mask[1, 1, ::3] = 3
    _write(root / "tr_im.nii.gz", im)
    _write(root / "tr_mask.nii.gz", mask)
    return im, mask


def test_read_medseg(tmp_path):
    im, mask = _medseg(tmp_path)
    ds = read_medseg_covid(tmp_path, windows=None)
    zs = [z for z in range(10) if mask[..., z].any()]
    assert ds.slice_ids == [("tr_im", z) for z in zs]
    np.testing.assert_allclose(ds.hu[0], im[..., zs[0]].T)
    assert set(np.unique(ds.masks)) == {0, 1}
    assert set(np.unique(read_medseg_covid(tmp_path, binary=False).masks)) == {0, 1, 3}
    assert read_medseg_covid(tmp_path)[0][0].shape == (3, 5, 6)
    whole = read_medseg_covid(tmp_path, slices="all", seed=1)
    split = {s: read_medseg_covid(tmp_path, slices="all", split=s, seed=1).slice_ids for s in ("train", "val", "test")}
    assert sorted(sum(split.values(), [])) == sorted(whole.slice_ids) and len(split["train"]) == 6
    assert not set(split["train"]) & set(split["test"])
    with pytest.raises(FileNotFoundError, match="tr_mask.nii.gz.*MedSeg"):
        (tmp_path / "tr_mask.nii.gz").unlink()
        read_medseg_covid(tmp_path)


def test_synthetic_split_as_torch_dataset(syn):
    import torch

    ds = syn.train.dataset()
    i = int(np.flatnonzero(syn.train.noisy)[0])
    image, mask = ds[i]
    assert image.shape == (1, 64, 64) and image.dtype == torch.float32 and mask.dtype == torch.int64
    np.testing.assert_array_equal(mask.numpy(), syn.train.masks[i])
    np.testing.assert_array_equal(syn.train.dataset(clean=True)[i][1].numpy(), syn.train.clean_masks[i])


def test_corruptions_on_a_hand_made_square():
    from mombs.recipes.segmentation.synthetic_ct import SegSplit, _corrupt

    n = 4
    inst = np.zeros((n, 20, 20), dtype=np.int16)
    for i in range(n):
        inst[i, 6 + i : 12 + i, 6:12] = 1  # a 6 x 6 square, one row lower in each image
        inst[i, 3, 3] = 2  # and a one-pixel lesion, 3 px from the edge: a 3 px shift keeps it
    clean = (inst > 0).astype(np.int64)

    def run(kind, **cfg):
        s = SegSplit(
            images=np.zeros((n, 1, 20, 20), np.float32),
            masks=clean.copy(),
            clean_masks=clean.copy(),
            instances=inst,
            corruption=np.zeros(n, np.int64),
            swap_source=np.full(n, -1, np.int64),
            size_group=np.zeros(n, np.int64),
        )
        mix = np.zeros(5)
        mix[CORRUPTIONS.index(kind) - 1] = 1
        _corrupt(s, n, mix, 0, dict(dict(border_iterations=(1, 1), shift_pixels=(3, 3)), **cfg))
        assert (s.corruption == CORRUPTIONS.index(kind)).all()
        return s

    assert (run("eroded").masks.sum(axis=(1, 2)) == 16).all()  # 6x6 -> 4x4 and the dot is gone
    # the cross dilates a 6x6 square to 8x8 less its 4 corners, the dot to a 5-pixel plus
    assert (run("dilated").masks.sum(axis=(1, 2)) == 64 - 4 + 5).all()
    assert (run("eroded", border_iterations=(2, 2)).masks.sum(axis=(1, 2)) == 4).all()
    s = run("shifted")
    for i in range(n):
        moved = np.array(ndimage.center_of_mass(s.masks[i])) - ndimage.center_of_mass(clean[i])
        assert abs(np.hypot(*moved) - 3) <= 0.5 and s.masks[i].sum() == 37
    s = run("missed")
    assert all(s.masks[i].sum() in (0, 1, 36) for i in range(n))  # whole lesions: none, the dot, or the square
    s = run("swapped")
    for i in range(n):
        np.testing.assert_array_equal(s.masks[i], clean[s.swap_source[i]])
