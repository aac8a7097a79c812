"""Detection data: the synthetic set with planted box noise, and the DeepLesion reader (issue 11)."""

import numpy as np
import pytest

from mombs.recipes.detection.metrics import box_iou
from mombs.recipes.detection.synthetic_det import BOX_KINDS, DET_CORRUPTIONS, LESION_STATUS, make_synthetic_det


@pytest.fixture(scope="module")
def det():
    return make_synthetic_det(n_train=40, n_val=4, n_test=4, seed=3)


def test_clean_boxes_bound_the_lesion_pixels(det):
    tr = det.train
    for i in range(len(tr)):
        labels = tr.lesions["label"][tr.lesions["image"] == i]
        assert len(tr.clean_boxes[i]) == len(labels)
        for box, lab in zip(tr.clean_boxes[i], labels):
            ys, xs = np.nonzero(tr.instances[i] == lab)
            np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def test_planted_noise_exact_counts_and_records(det):
    tr, cfg = det.train, det.config
    n_les = len(tr.lesions["image"])
    status = np.bincount(tr.lesions["status"], minlength=len(LESION_STATUS))
    assert status[1] == round(cfg["missing_fraction"] * n_les)
    assert status[2] == round(cfg["shift_fraction"] * n_les)
    assert status[3] == round(cfg["resize_fraction"] * n_les)
    assert tr.n_spurious.sum() == round(cfg["spurious_fraction"] * len(tr))
    spurious = BOX_KINDS.index("spurious")
    for i in range(len(tr)):
        kinds, boxes, clean = tr.box_kind[i], tr.boxes[i], tr.clean_boxes[i]
        assert len(kinds) == len(boxes) == len(clean) - tr.n_missed[i] + tr.n_spurious[i]
        assert (kinds == BOX_KINDS.index("shifted")).sum() == tr.n_shifted[i]
        assert (kinds == BOX_KINDS.index("resized")).sum() == tr.n_resized[i]
        assert ((boxes[:, 2:] - boxes[:, :2]) >= 1).all()
        for box, kind in zip(boxes, kinds):
            best = box_iou(box[None], clean).max() if len(clean) else 0.0
            if kind == 0:
                assert best == 1.0  # kept boxes are clean boxes
            elif kind == spurious:
                assert best < 0.1  # on no lesion
            else:
                assert 0 < best < 0.5  # moved or rescaled past a hit
        n_kinds = sum(int(c[i] > 0) for c in (tr.n_missed, tr.n_shifted, tr.n_resized, tr.n_spurious))
        name = DET_CORRUPTIONS[tr.corruption[i]]
        assert name == ("none" if n_kinds == 0 else "mixed" if n_kinds > 1 else name)
    np.testing.assert_array_equal(tr.missing, tr.n_missed > 0)
    assert tr.missing.any() and (~tr.noisy).any()
    for split in (det.val, det.test):  # evaluation boxes are clean
        assert not split.noisy.any()
        assert all(np.array_equal(b, c) for b, c in zip(split.boxes, split.clean_boxes))


def test_reproducible_prefix_and_dataset(det):
    again = make_synthetic_det(n_train=40, n_val=4, n_test=4, seed=3)
    assert np.array_equal(again.train.images, det.train.images)
    assert all(np.array_equal(a, b) for a, b in zip(again.train.boxes, det.train.boxes))
    small = make_synthetic_det(n_train=10, n_val=4, n_test=4, seed=3)
    assert np.array_equal(small.train.images, det.train.images[:10])  # images: a prefix
    assert np.array_equal(small.test.images, det.test.images)  # evaluation unchanged
    sub = det.train.subset(range(10))  # noise too: subset
    assert all(np.array_equal(a, b) for a, b in zip(sub.boxes, det.train.boxes[:10]))
    assert sub.lesions["image"].max() < 10 and len(sub.lesions["image"]) == (det.train.lesions["image"] < 10).sum()
    image, target = det.train.dataset()[1]
    assert tuple(image.shape) == (3, 64, 64) and 0 <= float(image.min()) and float(image.max()) <= 1
    assert target["boxes"].shape == (len(det.train.boxes[1]), 4) and (target["labels"] == 1).all()
    _, clean_target = det.train.dataset(clean=True)[1]
    assert clean_target["boxes"].shape[0] == len(det.train.clean_boxes[1])


def test_bad_options_name_the_argument():
    with pytest.raises(ValueError, match="missing_fraction"):
        make_synthetic_det(n_train=2, n_val=0, n_test=0, missing_fraction=1.5)
    with pytest.raises(ValueError, match="at most 1"):
        make_synthetic_det(n_train=2, n_val=0, n_test=0, missing_fraction=0.6, shift_fraction=0.6)
    with pytest.raises(ValueError, match="windows"):
        make_synthetic_det(n_train=2, n_val=0, n_test=0, windows="bone")
    with pytest.raises(ValueError, match="scale_range"):
        make_synthetic_det(n_train=2, n_val=0, n_test=0, scale_range=(0.5, 2))


# --------------------------------------------------------------------------- #
# DeepLesion reader, on a tiny DL_info.csv and 16-bit PNGs written here

from mombs.recipes.detection.deeplesion import DeepLesion, hu_from_png, patient_subset, read_dl_info  # noqa: E402

_HEADER = (
    "File_name,Patient_index,Study_index,Series_ID,Key_slice_index,Measurement_coordinates,"
    "Bounding_boxes,Lesion_diameters_Pixel_,Normalized_lesion_location,Coarse_lesion_type,"
    "Possibly_noisy,Slice_range,Spacing_mm_px_,Image_size,DICOM_windows,Patient_gender,Patient_age,"
    "Train_Val_Test"
)


def _row(name, patient, key, box, noisy, rng, spacing, split):
    return (
        f'{name},{patient},1,1,{key},"1, 1, 2, 2, 3, 3, 4, 4","{box}","5, 3","0.5, 0.5, 0.5",-1,{noisy},'
        f'"{rng}","{spacing}","16, 16","-175, 275",M,50,{split}'
    )


@pytest.fixture
def deeplesion_root(tmp_path):
    from PIL import Image

    rows = [
        _row("000001_01_01_003.png", 1, 3, "3, 4, 8, 10", 0, "2, 4", "0.8, 0.8, 5", 1),
        _row("000001_01_01_003.png", 1, 3, "10, 10, 14, 15", 1, "2, 4", "0.8, 0.8, 5", 1),  # same slice
        _row("000002_01_01_002.png", 2, 2, "1, 1, 5, 5", 0, "2, 3", "0.4, 0.4, 5", 1),  # key at the edge
        _row("000003_01_01_005.png", 3, 5, "2, 2, 6, 6", 0, "4, 6", "0.8, 0.8, 5", 1),
        _row("000004_01_01_005.png", 4, 5, "2, 2, 6, 6", 0, "5, 5", "0.8, 0.8, 5", 2),
    ]
    (tmp_path / "DL_info.csv").write_text("\n".join([_HEADER, *rows]) + "\n")
    for series, lo, hi in (
        ("000001_01_01", 2, 4),
        ("000002_01_01", 2, 3),
        ("000003_01_01", 4, 6),
        ("000004_01_01", 5, 5),
    ):
        folder = tmp_path / "Images_png" / series
        folder.mkdir(parents=True)
        for z in range(lo, hi + 1):
            # slice z holds HU = 100 * z - 1024 (stored + 32768), a ramp of +1 HU per column
            hu = 100 * z - 1024 + np.tile(np.arange(16), (16, 1))
            Image.fromarray((hu + 32768).astype(np.uint16)).save(folder / f"{z:03d}.png")
    return tmp_path


def test_dl_info_rows_group_by_key_slice_and_boxes_become_0_based(deeplesion_root):
    slices = read_dl_info(deeplesion_root / "DL_info.csv")
    assert [s.file_name for s in slices] == [
        "000001_01_01_003.png",
        "000002_01_01_002.png",
        "000003_01_01_005.png",
        "000004_01_01_005.png",
    ]
    first = slices[0]
    assert first.series == "000001_01_01" and first.key_slice == 3 and first.slice_range == (2, 4)
    np.testing.assert_array_equal(first.boxes, [[2, 3, 7, 9], [9, 9, 13, 14]])
    np.testing.assert_array_equal(first.noisy, [False, True])
    assert first.rows == (0, 1) and first.spacing == (0.8, 0.8, 5.0)


def test_png_hu_windowing_and_neighbour_channels(deeplesion_root):
    hu = hu_from_png(deeplesion_root / "Images_png" / "000001_01_01" / "003.png")
    assert hu.dtype == np.int32 and hu[0, 0] == 300 - 1024 and hu[0, 15] == 300 - 1024 + 15
    data = DeepLesion(deeplesion_root, "train", window=(-1024, -524))
    assert len(data) == 3
    image, target = data[0]
    assert tuple(image.shape) == (3, 16, 16)
    # channels: slices 2, 3, 4 -> HU -824, -724, -624 at column 0 -> (HU + 1024) / 500 * 255
    np.testing.assert_allclose(image[:, 0, 0].numpy(), np.array([200, 300, 400]) / 500 * 255, rtol=1e-6)
    assert float(image.max()) <= 255 and float(image.min()) >= 0
    np.testing.assert_array_equal(target["boxes"].numpy(), [[2, 3, 7, 9], [9, 9, 13, 14]])
    assert target["labels"].tolist() == [1, 1] and target["noisy"].tolist() == [False, True]
    # key slice 2 at the bottom of its range: the missing slice 1 is replaced by slice 2
    image, _ = data[1]
    np.testing.assert_allclose(image[:, 0, 0].numpy(), np.array([200, 200, 300]) / 500 * 255, rtol=1e-6)
    # beyond the window: clipped to value_max
    bright = DeepLesion(deeplesion_root, "train", window=(-1024, -900), value_max=1.0)[0][0]
    assert float(bright.max()) == 1.0


def test_spacing_resize_subsets_by_patient_and_drop_noisy(deeplesion_root):
    data = DeepLesion(deeplesion_root, "train", norm_spacing=0.8)
    image, target = data[1]  # 0.4 mm pixels -> half the size
    assert tuple(image.shape) == (3, 8, 8)
    np.testing.assert_allclose(target["boxes"].numpy(), [[0, 0, 2, 2]])
    assert tuple(data[0][0].shape) == (3, 16, 16)  # already 0.8 mm
    assert tuple(DeepLesion(deeplesion_root, "train", max_size=8)[0][0].shape) == (3, 8, 8)
    # patients 1-3 are in train; subsets are nested and never split a patient
    third = set(patient_subset([1, 2, 3, 1], 1 / 3, seed=4).tolist())
    two = set(patient_subset([1, 2, 3], 2 / 3, seed=4).tolist())
    assert len(third) == 1 and len(two) == 2 and third <= two
    sub = DeepLesion(deeplesion_root, "train", fraction=1 / 3, seed=4)
    assert set(sub.patients.tolist()) == third
    assert DeepLesion(deeplesion_root, "val").patients.tolist() == [4]
    clean = DeepLesion(deeplesion_root, "train", drop_noisy=True)
    assert len(clean[0][1]["boxes"]) == 1


def test_missing_files_are_named_with_where_to_get_them(deeplesion_root, tmp_path_factory):
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(FileNotFoundError, match="nihcc.app.box.com"):
        DeepLesion(empty)
    (deeplesion_root / "Images_png" / "000003_01_01" / "006.png").unlink()
    data = DeepLesion(deeplesion_root, "train")
    with pytest.raises(FileNotFoundError, match=r"000003_01_01.006\.png.*Images_png_"):
        data[2]
    (empty / "DL_info.csv").write_text("File_name,Patient_index\n")
    with pytest.raises(ValueError, match="Key_slice_index"):
        read_dl_info(empty / "DL_info.csv")
    with pytest.raises(ValueError, match="fraction"):
        DeepLesion(deeplesion_root, fraction=0)
