"""An offline, CT-like lesion segmentation set with planted annotation noise.

The paper's segmentation task (Seg-C19, COVID-19 lesions on CT; METHOD.md §4,
§6) is about small, faint lesions and inconsistent masks. This generator plants
both on purpose and keeps the truth, so that difficulty quadrants can be scored
against it: every training sample carries its clean mask, its given (possibly
corrupted) mask and the corruption applied.

Nothing is downloaded and nothing touches global random state: each image is
drawn from its own generator seeded from ``(seed, split, index)``, so the
validation and test images do not change when ``n_train`` changes, and a
smaller training set is a prefix of a larger one (the paper's 72 / 352 / 724
training-slice regimes can share their evaluation sets). The annotation noise
is drawn from a separate generator seeded from ``(seed, "noise")``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .covid_ct import _window_images

__all__ = [
    "CORRUPTIONS",
    "SIZE_GROUPS",
    "DEFAULT_NOISE_MIX",
    "SegSplit",
    "SyntheticCT",
    "make_synthetic_ct",
    "size_group_of",
]

#: Corruption codes: ``corruption == k`` means ``CORRUPTIONS[k]``.
CORRUPTIONS = ("none", "missed", "eroded", "dilated", "shifted", "swapped")
#: Lesion-size groups: ``size_group == k`` means ``SIZE_GROUPS[k]``; ``"empty"`` only for images.
SIZE_GROUPS = ("empty", "tiny", "small", "medium", "large")
#: Upper area edges of "tiny", "small", "medium", as fractions of the image area
#: (at 64 x 64: 10, 41 and 164 pixels); larger is "large".
SIZE_EDGES = (0.0025, 0.01, 0.04)
#: Missed lesions first: in lesion annotation the common disagreement is a lesion
#: one reader did not mark, then where a border runs; shifts and swapped masks
#: (a slice-matching mistake) are rarer but cost the most Dice.
DEFAULT_NOISE_MIX = {"missed": 0.3, "eroded": 0.2, "dilated": 0.2, "shifted": 0.15, "swapped": 0.15}

_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
# Hounsfield units of the tissues drawn (rounded textbook values).
_AIR, _LUNG, _SOFT = -1000.0, -850.0, 40.0


@dataclass
class SegSplit:
    """One split of a segmentation set.

    Attributes:
        images: ``(N, C, H, W)`` float32; ``C = 1`` for ``windows="lung"``
            (values in ``[0, 1]``), 3 for ``"three"`` (each in ``[0, 1]``),
            1 for ``None`` (Hounsfield units, from about -1070 for air to a few
            hundred for dense lesions).
        masks: ``(N, H, W)`` int64 in ``{0, 1}``: the masks to train on (given,
            possibly corrupted, for train; clean for val and test).
        clean_masks: ``(N, H, W)`` int64 in ``{0, 1}``: the truth.
        instances: ``(N, H, W)`` int16: lesion ``k`` of an image is ``k + 1``
            (0 background); ``clean_masks == (instances > 0)``.
        corruption: ``(N,)`` int64 codes into :data:`CORRUPTIONS` (0 = ``"none"``).
        swap_source: ``(N,)`` int64: for a ``"swapped"`` sample the index of the
            image whose clean mask it was given, else -1.
        size_group: ``(N,)`` int64 codes into :data:`SIZE_GROUPS` from the total
            clean lesion area of the image (0 = no lesion); per-image Dice of
            groups 1-2 is the "small-lesion Dice".
        lesions: per-lesion table, each value ``(L,)``: ``image`` (index),
            ``label`` (value in ``instances``), ``area`` (pixels, clean),
            ``contrast`` (HU above the lung), ``radius`` (pixels),
            ``group`` (code into :data:`SIZE_GROUPS`, 1-4).
    """

    images: np.ndarray
    masks: np.ndarray
    clean_masks: np.ndarray
    instances: np.ndarray
    corruption: np.ndarray
    swap_source: np.ndarray
    size_group: np.ndarray
    lesions: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def corruption_names(self) -> np.ndarray:
        """``(N,)`` str: the corruption of each sample by name."""
        return np.asarray(CORRUPTIONS)[self.corruption]

    @property
    def noisy(self) -> np.ndarray:
        """``(N,)`` bool: the given mask differs from the clean one."""
        return self.corruption != 0

    def dataset(self, *, clean: bool = False):
        """A torch ``TensorDataset`` of ``(image (C, H, W) float32, mask (H, W) int64)``.

        Args:
            clean: ``True`` serves the clean masks (an oracle run), else the given ones.
        """
        import torch
        from torch.utils.data import TensorDataset

        masks = self.clean_masks if clean else self.masks
        return TensorDataset(torch.from_numpy(self.images), torch.from_numpy(masks))


@dataclass
class SyntheticCT:
    """The three splits and the resolved options that made them."""

    train: SegSplit
    val: SegSplit
    test: SegSplit
    config: dict

    @property
    def clean_masks_train(self) -> np.ndarray:
        return self.train.clean_masks

    @property
    def corruption(self) -> np.ndarray:
        return self.train.corruption


def size_group_of(area, image_area: int) -> np.ndarray:
    """Size-group codes (into :data:`SIZE_GROUPS`) of lesion areas in pixels.

    Args:
        area: ``(L,)`` areas in pixels, ``>= 0``; 0 gives ``"empty"``.
        image_area: ``H * W`` of the image.

    Returns:
        ``(L,)`` int64 in ``[0, 4]``.
    """
    area = np.asarray(area, dtype=np.float64)
    groups = 1 + np.searchsorted(np.asarray(SIZE_EDGES) * image_area, area, side="right")
    return np.where(area > 0, groups, 0).astype(np.int64)


def _check_range(name, value, lo, hi, *, integer=False):
    ok = (
        isinstance(value, tuple)
        and len(value) == 2
        and all(
            isinstance(v, (int, np.integer) if integer else (int, float, np.integer, np.floating))
            and not isinstance(v, bool)
            for v in value
        )
        and lo <= value[0] <= value[1] <= hi
    )
    if not ok:
        kind = "integers" if integer else "numbers"
        raise ValueError(f"{name}={value!r} must be a tuple (low, high) of {kind} with {lo} <= low <= high <= {hi}")


def _check_count(name, value, minimum):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")


def _resolve_mix(noise_mix) -> np.ndarray:
    names = CORRUPTIONS[1:]
    if not isinstance(noise_mix, dict):
        raise ValueError(f"noise_mix={noise_mix!r} must be a dict over {list(names)}")
    unknown = sorted(set(noise_mix) - set(names))
    if unknown:
        raise ValueError(f"noise_mix has unknown corruption(s) {unknown}; valid: {list(names)}")
    weights = []
    for n in names:
        w = noise_mix.get(n, 0.0)
        if not isinstance(w, (int, float, np.integer, np.floating)) or isinstance(w, bool) or not w >= 0:
            raise ValueError(f"noise_mix[{n!r}]={w!r} must be a number >= 0")
        weights.append(float(w))
    weights = np.asarray(weights)
    if weights.sum() <= 0:
        raise ValueError(f"noise_mix={noise_mix!r} must give some corruption a weight > 0")
    return weights / weights.sum()


def _apportion(total: int, shares: np.ndarray) -> np.ndarray:
    """Integer counts summing to ``total``, closest to ``total * shares`` (largest remainder)."""
    raw = total * shares
    counts = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def _blob(h, w, cy, cx, ry, rx, angle, wobble, phases):
    """Normalised radius ``r`` of a wobbly rotated ellipse: the boundary is ``r == 1``."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    theta = np.arctan2(v, u)
    # low angular harmonics bend the ellipse into a blob without breaking it apart
    bend = 1.0 + sum(a * np.cos(k * theta + p) for k, a, p in zip((2, 3, 4), wobble, phases))
    return np.sqrt((u / rx) ** 2 + (v / ry) ** 2) / bend


def _draw_image(rng, size, n_lesions, radius_px, contrast_hu, n_vessels):
    """One slice: HU image ``(H, W)`` float32, instance map ``(H, W)`` int16, per-lesion rows."""
    from scipy import ndimage  # here, not at the top: checking a config's noise_mix needs no scipy

    h = w = size
    hu = np.full((h, w), _AIR)
    body = (
        _blob(
            h,
            w,
            h / 2 + rng.normal(0, 0.01 * h),
            w / 2 + rng.normal(0, 0.01 * w),
            rng.uniform(0.32, 0.38) * h,
            rng.uniform(0.42, 0.47) * w,
            rng.normal(0, 0.05),
            rng.uniform(0, 0.03, 3),
            rng.uniform(0, 2 * np.pi, 3),
        )
        <= 1
    )
    hu[body] = _SOFT
    lung = np.zeros((h, w), dtype=bool)
    for side in (-1, 1):
        lung |= (
            _blob(
                h,
                w,
                h * rng.uniform(0.47, 0.52),
                w * (0.5 + side * rng.uniform(0.19, 0.22)),
                rng.uniform(0.22, 0.26) * h,
                rng.uniform(0.12, 0.15) * w,
                side * rng.uniform(0, 0.15),
                rng.uniform(0, 0.06, 3),
                rng.uniform(0, 2 * np.pi, 3),
            )
            <= 1
        )
    lung &= body
    # parenchyma texture: smoothed noise, so faint lesions compete with structure, not only pixel noise
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), 1.2)
    texture *= 35.0 / max(texture.std(), 1e-6)
    hu[lung] = _LUNG + texture[lung]
    # vessels: small bright dots in the lung, not lesions; they make tiny lesions ambiguous
    lung_pix = np.flatnonzero(lung)
    for _ in range(n_vessels):
        cy, cx = divmod(int(rng.choice(lung_pix)), w)
        r = _blob(h, w, cy, cx, *(rng.uniform(0.6, 1.3, 2)), 0.0, (0, 0, 0), (0, 0, 0))
        with np.errstate(over="ignore"):  # far pixels: exp overflows to inf and the profile is exactly 0, as wanted
            hu += lung * rng.uniform(300, 700) / (1 + np.exp((r - 1) * 4))
    instances = np.zeros((h, w), dtype=np.int16)
    rows = []
    for _ in range(n_lesions):
        for _attempt in range(20):
            cy, cx = divmod(int(rng.choice(lung_pix)), w)
            rad = float(np.exp(rng.uniform(*np.log(radius_px))))
            aspect = rng.uniform(0.6, 1.0)
            r = _blob(
                h,
                w,
                cy,
                cx,
                rad * aspect,
                rad,
                rng.uniform(0, np.pi),
                rng.uniform(0, 0.15, 3) * (rad > 3),
                rng.uniform(0, 2 * np.pi, 3),
            )
            inside = (r <= 1) & lung
            area = int(inside.sum())
            # keep lesions visible as lesions: enough pixels in the lung, mostly not under an earlier one
            if area >= 3 and (instances[inside] > 0).mean() < 0.3:
                break
        else:
            continue
        contrast = float(np.exp(rng.uniform(*np.log(contrast_hu))))
        edge = rng.uniform(0.4, 1.5)  # pixels of soft border; the mask's border is the half-contrast line
        with np.errstate(over="ignore"):  # as for the vessels: inf far away gives a profile of exactly 0
            profile = 1.0 / (1.0 + np.exp(-(1.0 - r) * rad / edge))
        hu += lung * contrast * profile
        label = len(rows) + 1
        instances[inside & (instances == 0)] = label
        rows.append((label, contrast, rad))
    hu = ndimage.gaussian_filter(hu, 0.5)  # partial volume: scanners blur every edge a little
    hu += rng.normal(0, 12.0, (h, w))  # quantum noise
    return hu.astype(np.float32), instances, rows


def _make_split(seed, split, n, size, cfg):
    images = np.empty((n, size, size), dtype=np.float32)
    instances = np.zeros((n, size, size), dtype=np.int16)
    table = {k: [] for k in ("image", "label", "area", "contrast", "radius")}
    radius_px = (cfg["radius_range"][0] * size, cfg["radius_range"][1] * size)
    n_vessels = int(round(cfg["vessels_per_image"]))
    for i in range(n):
        rng = np.random.default_rng([seed, _SPLIT_CODES[split], i])
        k = 0 if rng.random() < cfg["empty_fraction"] else int(rng.integers(1, cfg["max_lesions"] + 1))
        images[i], instances[i], rows = _draw_image(rng, size, k, radius_px, cfg["contrast_range"], n_vessels)
        for label, contrast, rad in rows:
            table["image"].append(i)
            table["label"].append(label)
            table["area"].append(int((instances[i] == label).sum()))
            table["contrast"].append(contrast)
            table["radius"].append(rad)
    lesions = {
        "image": np.asarray(table["image"], dtype=np.int64),
        "label": np.asarray(table["label"], dtype=np.int64),
        "area": np.asarray(table["area"], dtype=np.int64),
        "contrast": np.asarray(table["contrast"], dtype=np.float64),
        "radius": np.asarray(table["radius"], dtype=np.float64),
    }
    lesions["group"] = size_group_of(lesions["area"], size * size)
    clean = (instances > 0).astype(np.int64)
    return SegSplit(
        images=_window_images(images, cfg["windows"]),
        masks=clean.copy(),
        clean_masks=clean,
        instances=instances,
        corruption=np.zeros(n, dtype=np.int64),
        swap_source=np.full(n, -1, dtype=np.int64),
        size_group=size_group_of(clean.sum(axis=(1, 2)), size * size),
        lesions=lesions,
    )


def _shift(mask, dy, dx):
    """``mask`` moved by ``(dy, dx)`` pixels; what leaves the image is lost, nothing wraps around."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = mask[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def _corrupt(split: SegSplit, n_noisy: int, mix: np.ndarray, seed: int, cfg) -> None:
    """Draws which training masks go wrong and how; edits ``split`` in place."""
    from scipy import ndimage

    rng = np.random.default_rng([seed, 0x0015E])
    has_lesion = np.flatnonzero(split.clean_masks.any(axis=(1, 2)))
    # only masks with a lesion can be missed, eroded, dilated or shifted; drawing all
    # corrupted samples from them makes every corrupted mask differ from its clean one
    chosen = rng.permutation(has_lesion)[:n_noisy]
    kinds = np.repeat(np.arange(1, len(CORRUPTIONS)), _apportion(n_noisy, mix))
    lo_it, hi_it = cfg["border_iterations"]
    lo_sh, hi_sh = cfg["shift_pixels"]
    for i, kind in zip(chosen, rng.permutation(kinds)):
        clean = split.clean_masks[i]
        name = CORRUPTIONS[kind]
        if name == "missed":
            labels = np.unique(split.instances[i])
            labels = labels[labels > 0]
            # half the time one lesion is overlooked, half the time the whole slice was left empty
            drop = labels if (labels.size == 1 or rng.random() < 0.5) else rng.choice(labels, 1)
            given = clean * ~np.isin(split.instances[i], drop)
        elif name in ("eroded", "dilated"):
            op = ndimage.binary_erosion if name == "eroded" else ndimage.binary_dilation
            given = op(clean.astype(bool), iterations=int(rng.integers(lo_it, hi_it + 1))).astype(np.int64)
        elif name == "shifted":
            mag = int(rng.integers(lo_sh, hi_sh + 1))
            angle = rng.uniform(0, 2 * np.pi)
            dy, dx = int(round(mag * np.sin(angle))), int(round(mag * np.cos(angle)))
            if dy == 0 and dx == 0:
                dx = mag
            given = _shift(clean, dy, dx)
        else:  # swapped: the clean mask of another slice that has a lesion and looks different
            donors = has_lesion[(has_lesion != i)]
            donors = donors[[not np.array_equal(split.clean_masks[j], clean) for j in donors]]
            j = int(rng.choice(donors))
            given = split.clean_masks[j].copy()
            split.swap_source[i] = j
        split.masks[i] = given
        split.corruption[i] = kind


def make_synthetic_ct(
    n_train: int = 300,
    n_val: int = 100,
    n_test: int = 100,
    *,
    size: int = 64,
    noise_fraction: float = 0.3,
    noise_mix: dict | None = None,
    seed: int = 0,
    windows: str | None = "lung",
    empty_fraction: float = 0.1,
    max_lesions: int = 4,
    radius_range: tuple = (0.02, 0.16),
    contrast_range: tuple = (60.0, 700.0),
    vessels_per_image: float = 6,
    border_iterations: tuple = (1, 3),
    shift_pixels: tuple = (2, 5),
) -> SyntheticCT:
    """Builds a synthetic CT-like lesion segmentation set with planted annotation noise.

    Each slice has air, a soft-tissue body and two lung fields with smoothed
    texture and a few bright vessel dots; lesions are soft-edged wobbly
    ellipses inside the lungs, their radii log-uniform over ``radius_range``
    (from a few pixels to large) and their contrasts log-uniform over
    ``contrast_range`` (faint ground glass to dense consolidation). A lesion's
    mask is where its profile passes half contrast, clipped to the lung.

    Exactly ``round(noise_fraction * n_train)`` training masks are corrupted,
    drawn among the training slices that have a lesion, and split between the
    kinds in proportion to ``noise_mix``:

    - ``"missed"``: one lesion (or, half the time or when there is one, all) left out;
    - ``"eroded"`` / ``"dilated"``: the border moved in / out by
      ``border_iterations`` steps of a 3 x 3 cross (a tiny lesion can erode
      away entirely, as a missed one);
    - ``"shifted"``: the mask moved by ``shift_pixels`` pixels in a random direction;
    - ``"swapped"``: the clean mask of another training slice (``swap_source``).

    Args:
        n_train, n_val, n_test: slices per split; ``n_train >= 1``, the others ``>= 0``.
        size: height and width in pixels, ``>= 32``. The default 64 with 300
            training slices trains a small U-Net in about a minute on 2 cores
            (MONAI's 2-D ``UNet``, channels 16-32-64, batch 16: 30 epochs took
            20-40 s, test Dice about 0.63 clean, 0.62 at 30% noise, 0.53 at 60%).
        noise_fraction: share of training masks corrupted, in ``[0, 1]``; at
            most the share of training slices with a lesion.
        noise_mix: weights over ``"missed"``, ``"eroded"``, ``"dilated"``,
            ``"shifted"``, ``"swapped"`` (missing names weigh 0; normalised);
            ``None``: :data:`DEFAULT_NOISE_MIX`.
        seed: seed of the private generators.
        windows: ``"lung"`` (one channel, the paper's [-1493, 484] HU window,
            in ``[0, 1]``), ``"three"`` (the paper's three windows as 3 channels,
            METHOD.md §6) or ``None`` (one channel of HU).
        empty_fraction: share of slices drawn without a lesion, in ``[0, 1)``.
        max_lesions: most lesions in a slice, ``>= 1`` (uniform in ``1..max_lesions``).
        radius_range: lesion radius bounds as fractions of ``size``, in ``(0, 0.5]``.
        contrast_range: lesion contrast bounds in HU above the lung, ``(0, 2000]``.
        vessels_per_image: bright distractor dots per slice, ``>= 0``.
        border_iterations: ``(low, high)`` erosion / dilation steps, ``>= 1``.
        shift_pixels: ``(low, high)`` shift length in pixels, ``>= 1``.

    Returns:
        :class:`SyntheticCT` with ``train``, ``val``, ``test`` (:class:`SegSplit`)
        and ``config`` (the resolved options). Val and test masks are clean.

    Raises:
        ValueError: naming the argument, the value and what is allowed.
    """
    _check_count("n_train", n_train, 1)
    _check_count("n_val", n_val, 0)
    _check_count("n_test", n_test, 0)
    _check_count("size", size, 32)
    _check_count("max_lesions", max_lesions, 1)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed={seed!r} must be an integer >= 0")
    if not isinstance(noise_fraction, (int, float)) or isinstance(noise_fraction, bool) or not 0 <= noise_fraction <= 1:
        raise ValueError(f"noise_fraction={noise_fraction!r} must be a number in [0, 1]")
    if not isinstance(empty_fraction, (int, float)) or isinstance(empty_fraction, bool) or not 0 <= empty_fraction < 1:
        raise ValueError(f"empty_fraction={empty_fraction!r} must be a number in [0, 1)")
    if windows not in ("lung", "three", None):
        raise ValueError(f"windows={windows!r} must be 'lung', 'three' or None")
    if (
        not isinstance(vessels_per_image, (int, float))
        or isinstance(vessels_per_image, bool)
        or not vessels_per_image >= 0
    ):
        raise ValueError(f"vessels_per_image={vessels_per_image!r} must be a number >= 0")
    radius_range, contrast_range = tuple(radius_range), tuple(contrast_range)
    border_iterations, shift_pixels = tuple(border_iterations), tuple(shift_pixels)
    _check_range("radius_range", radius_range, 1e-9, 0.5)
    _check_range("contrast_range", contrast_range, 1e-9, 2000)
    _check_range("border_iterations", border_iterations, 1, size, integer=True)
    _check_range("shift_pixels", shift_pixels, 1, size // 2, integer=True)
    mix = _resolve_mix(DEFAULT_NOISE_MIX if noise_mix is None else noise_mix)
    cfg = dict(
        n_train=n_train,
        n_val=n_val,
        n_test=n_test,
        size=size,
        noise_fraction=float(noise_fraction),
        noise_mix=dict(zip(CORRUPTIONS[1:], mix.tolist())),
        seed=int(seed),
        windows=windows,
        empty_fraction=float(empty_fraction),
        max_lesions=int(max_lesions),
        radius_range=radius_range,
        contrast_range=contrast_range,
        vessels_per_image=vessels_per_image,
        border_iterations=border_iterations,
        shift_pixels=shift_pixels,
    )
    train = _make_split(seed, "train", n_train, size, cfg)
    n_noisy = int(round(noise_fraction * n_train))
    n_lesion = int(train.clean_masks.any(axis=(1, 2)).sum())
    if n_noisy > n_lesion:
        raise ValueError(
            f"noise_fraction={noise_fraction!r} asks for {n_noisy} corrupted masks but only "
            f"{n_lesion} of {n_train} training slices have a lesion to corrupt; lower "
            f"noise_fraction or empty_fraction (={empty_fraction!r})"
        )
    if mix[CORRUPTIONS.index("swapped") - 1] > 0 and n_lesion < 2 and n_noisy > 0:
        raise ValueError(
            f"noise_mix gives 'swapped' a weight but only {n_lesion} training slice(s) have a "
            f"lesion; a swapped mask needs another one (raise n_train)"
        )
    _corrupt(train, n_noisy, mix, seed, cfg)
    return SyntheticCT(
        train=train,
        val=_make_split(seed, "val", n_val, size, cfg),
        test=_make_split(seed, "test", n_test, size, cfg),
        config=cfg,
    )
