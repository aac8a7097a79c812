"""The run configuration: everything that defines one training run."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import os
from dataclasses import dataclass, field

import numpy as np

from ..data.corpus import DATASETS, TRAIN_CLASS_SIZES, check_data_dir
from ..data.det_corpus import DET_DATASETS, DET_LOSSES, check_det_data_dir, det_noise_options
from ..data.seg_corpus import SEG_DATASETS, SEG_LOSSES, check_seg_data_dir
from ..losses import LOSSES
from ..models import MODELS
from ..models.detection import DET_MODELS
from ..models.segmentation import SEG_MODELS
from ..schedule import DEFAULT_PIVOT_EPOCH, DEFAULT_SCHEDULE, SCHEDULES, planned
from ..strategies import STRATEGY_REGISTRY

__all__ = ["DEFAULT_PIVOT_EPOCH", "RunConfig", "TASK_DEFAULTS", "run_dir_name"]

#: Fields that do not change a run's outcome: left out of its key.
_NOT_IN_KEY = ("device", "threads", "tags", "data_dir", "test_every", "history")
#: Fields added with segmentation and detection: in a run's key only when set,
#: so that the keys (and folder names) of every run made before them stay.
_KEY_IF_SET = {"task": "classification", "image_size": None, "noise_mix": None, "windows": None,
               "optimizer": "sgd", "train_fraction": None}
_OPTIMIZERS = ("sgd", "adam")

#: What ``dataset``, ``model`` and ``loss`` are when left unset, per task.
TASK_DEFAULTS = {
    "classification": {"dataset": "fashion-mnist", "model": "small_cnn", "loss": "ce"},
    "segmentation": {"dataset": "synthetic-ct", "model": "unet", "loss": "dice-ce"},
    "detection": {"dataset": "synthetic-det", "model": "tiny", "loss": "rpn"},
}

#: The pivot of the library's samplers, read from the sampler itself so that the
#: runner and a user's own loop can never disagree on it (one default in mombs).

_NOISES = ("none", "symmetric", "pair", "human")
_SEG_NOISES = ("none", "annotation")
#: Per task: the data sets, models, losses and label noises it takes.
_TASK_CHOICES = {
    "classification": {"dataset": DATASETS, "model": MODELS, "loss": LOSSES, "noise": _NOISES},
    "segmentation": {"dataset": SEG_DATASETS, "model": SEG_MODELS, "loss": SEG_LOSSES, "noise": _SEG_NOISES},
    "detection": {"dataset": DET_DATASETS, "model": DET_MODELS, "loss": DET_LOSSES, "noise": _SEG_NOISES},
}
_WINDOWS = ("lung", "three")
_DEVICE_TYPES = ("cpu", "cuda", "mps")


def _plain(value):
    """A numpy scalar as the Python number it holds; anything else as it is.

    Keys are JSON of the fields, and ``json`` refuses ``np.int64``; converting
    (rather than casting every int field) keeps the key of a plain config as it was.
    """
    return value.item() if isinstance(value, np.generic) else value


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{value!r} ({type(value).__name__}) is not a JSON value")


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _int(name: str, v, lo: int, hi: int | None = None, *, optional: bool = False) -> None:
    if optional and v is None:
        return
    if not _is_int(v) or v < lo or (hi is not None and v >= hi):
        allowed = f">= {lo}" if hi is None else f"in [{lo}, {hi})"
        raise ValueError(f"{name}={v!r} must be an integer {allowed}" + (" or null" if optional else ""))


def _real(name: str, v, lo: float, hi: float, *, lo_open: bool, hi_open: bool, optional: bool = False,
          why: str = "") -> None:
    if optional and v is None:
        return
    ok = _is_real(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        if hi == math.inf:
            allowed = f"{'>' if lo_open else '>='} {lo:g}"
        else:
            allowed = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ValueError(f"{name}={v!r} must be a number {allowed}" + (" or null" if optional else "") + why)


def _choice(name: str, v, choices) -> None:
    if not isinstance(v, str) or v not in choices:
        raise ValueError(f"{name}={v!r} is not known; choose one of {sorted(choices)}")


def _check_device(device) -> None:
    import torch

    if not isinstance(device, str):
        raise ValueError(f"device={device!r} must be a string such as 'cpu', 'cuda' or 'cuda:1'")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"device={device!r} is not a device; use 'cpu', 'cuda', 'cuda:N' or 'mps'") from err
    if dev.type not in _DEVICE_TYPES:
        raise ValueError(f"device={device!r} is not supported; use 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r}: CUDA is not available here; use device=cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r}: MPS is not available here; use device=cpu")


@dataclass
class RunConfig:
    """Everything that defines one training run. Defaults: the CPU demo recipe.

    :meth:`validate` checks every field (type, range, allowed names) before
    anything is loaded; :func:`~mombs.train.run` and
    :func:`~mombs.compare.run_grid` call it at their door. numpy scalars are
    accepted wherever Python numbers are. ``dataset``, ``model`` and ``loss``
    left as ``None`` become the task's defaults (:data:`TASK_DEFAULTS`) there.

    Segmentation (``task="segmentation"``): ``subset`` is the number of
    training slices (synthetic default 300), ``noise="annotation"`` with
    ``noise_rate`` corrupts that share of the synthetic training masks in the
    proportions of ``noise_mix``, ``image_size`` is the slice side (synthetic
    default 64; real slices are resampled to it when set) and ``windows`` the
    CT windows as channels (``"lung"``: one, ``"three"``: the paper's three).

    Detection (``task="detection"``, see ``docs/detection.md``): ``subset`` is
    the number of training slices of the synthetic set (default 200, the 100%
    regime) and ``train_fraction`` the share of them kept (a prefix, so the
    25/50/100% regimes are nested; DeepLesion: the share of training
    patients); ``noise="annotation"`` leaves ``noise_rate`` of the synthetic
    training lesions without a box and shifts, resizes and adds boxes as
    ``noise_mix`` says (``{"shifted", "resized", "spurious"}``, default 0.1,
    0.1, 0.05); ``image_size`` is the slice side (synthetic default 64, the
    detector resizes to it) and ``windows`` ``"three"`` (default) or ``"lung"``.
    """

    task: str = "classification"
    dataset: str | None = None        # None: the task's default (TASK_DEFAULTS)
    data_dir: str | None = None
    subset: int | None = None          # training images kept (seeded), before the LT cut
    imbalance: float | None = None     # long-tailed rho, e.g. 0.01
    img_max: int | None = None         # images of the largest class in the LT cut
    noise: str = "none"                # none | symmetric | pair | human
    noise_rate: float = 0.0
    noise_file: str | None = None      # CIFAR-100_human.pt for noise="human"
    val_fraction: float = 0.1
    image_size: int | None = None      # segmentation: slice side in pixels
    noise_mix: dict | None = None      # segmentation: weights of the annotation corruptions
    windows: str | None = None         # segmentation: "lung" (1 channel, default) or "three"
    train_fraction: float | None = None  # detection: share of the training slices (patients) kept
    model: str | None = None           # None: the task's default
    loss: str | None = None            # None: the task's default
    strategy: str = "random"
    pivot_epoch: int = DEFAULT_PIVOT_EPOCH
    schedule: str = DEFAULT_SCHEDULE
    k: int = 8
    alpha: float = 0.3
    batch_size: int = 16
    epochs: int = 20
    optimizer: str = "sgd"             # sgd (Nesterov) or adam (AdamW: weight_decay decoupled)
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool | None = None        # None: crop+flip for CIFAR, nothing otherwise
    test_every: int = 5                # test accuracy every n epochs (and at the end)
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    history: bool = False              # keep per-sample, per-epoch training signals (history.npz)
    tags: dict = field(default_factory=dict)

    def resolved(self) -> "RunConfig":
        """A copy with ``dataset``, ``model`` and ``loss`` filled in from the task's defaults."""
        out = dataclasses.replace(self, tags=dict(self.tags))
        out._resolve_defaults()
        return out

    def _resolve_defaults(self) -> None:
        if self.task in TASK_DEFAULTS:
            for name, value in TASK_DEFAULTS[self.task].items():
                if getattr(self, name) is None:
                    setattr(self, name, value)

    def validate(self) -> "RunConfig":
        """Checks every field; numpy scalars become Python numbers, paths strings.

        Nothing is read but the file system's answer to "does this folder exist".

        Returns:
            ``self``, for chaining.

        Raises:
            ValueError: naming the field, the value given and what is allowed.
        """
        for f in dataclasses.fields(self):
            setattr(self, f.name, _plain(getattr(self, f.name)))
        for name in ("data_dir", "noise_file"):  # a pathlib.Path is as good as a string
            v = getattr(self, name)
            if isinstance(v, os.PathLike):
                setattr(self, name, os.fspath(v))
        _choice("task", self.task, TASK_DEFAULTS)
        self._resolve_defaults()
        seg, det = self.task == "segmentation", self.task == "detection"
        for name in ("dataset", "model", "loss"):
            _choice(name, getattr(self, name), _TASK_CHOICES[self.task][name])
        _choice("strategy", self.strategy, STRATEGY_REGISTRY)
        _choice("optimizer", self.optimizer, _OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("noise", self.noise, _TASK_CHOICES[self.task]["noise"])
        for name in ("batch_size", "epochs", "k", "test_every"):
            _int(name, getattr(self, name), 1)
        _int("pivot_epoch", self.pivot_epoch, 0)
        _int("seed", self.seed, 0, 2 ** 32)
        _int("threads", self.threads, 1, optional=True)
        _int("subset", self.subset, 1, optional=True)
        _int("img_max", self.img_max, 1, optional=True)
        _int("image_size", self.image_size, 32, optional=True)
        if self.windows is not None:
            _choice("windows", self.windows, _WINDOWS)
        if not isinstance(self.history, bool):
            raise ValueError(f"history={self.history!r} must be true or false")
        _real("imbalance", self.imbalance, 0, 1, lo_open=True, hi_open=False, optional=True)
        _real("train_fraction", self.train_fraction, 0, 1, lo_open=True, hi_open=False, optional=True)
        if self.train_fraction is not None and not det:
            raise ValueError(f"train_fraction={self.train_fraction!r} only applies to task='detection'; "
                             f"use subset for a smaller training set")
        _real("val_fraction", self.val_fraction, 0, 1, lo_open=True, hi_open=True,
              why=": choices need a validation split")
        _real("noise_rate", self.noise_rate, 0, 1, lo_open=False, hi_open=True)
        _real("alpha", self.alpha, 0, 1, lo_open=False, hi_open=True)
        _real("lr", self.lr, 0, math.inf, lo_open=True, hi_open=True)
        if self.optimizer == "sgd":
            _real("momentum", self.momentum, 0, 1, lo_open=True, hi_open=True,
                  why=": the runner's SGD uses Nesterov momentum, which needs momentum > 0")
        _real("weight_decay", self.weight_decay, 0, math.inf, lo_open=False, hi_open=True)
        if self.augment is not None and not isinstance(self.augment, bool):
            raise ValueError(f"augment={self.augment!r} must be true, false or null (null: crop+flip for CIFAR)")
        if not isinstance(self.tags, dict) or not all(isinstance(k, str) for k in self.tags):
            raise ValueError(f"tags={self.tags!r} must be a mapping of string keys to values")
        try:
            json.dumps(self.tags)
        except (TypeError, ValueError) as err:
            raise ValueError(f"tags={self.tags!r} must hold JSON values (strings, numbers, lists, ...)") from err
        for name in ("data_dir", "noise_file"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v):
                raise ValueError(f"{name}={v!r} must be a path or null")
        _check_device(self.device)
        if seg:
            self._check_segmentation()
        elif det:
            self._check_detection()
        else:
            self._check_combinations()
            check_data_dir(self.dataset, self.data_dir)
        self._check_pivot()
        return self

    def _check_segmentation(self) -> None:
        """The checks of a segmentation run."""
        from ..data.synthetic_ct import _resolve_mix

        for name, why in (("imbalance", "a long-tailed cut is for classification"),
                          ("img_max", "a long-tailed cut is for classification"),
                          ("noise_file", "human labels are for CIFAR-100")):
            if getattr(self, name) is not None:
                raise ValueError(f"{name}={getattr(self, name)!r} does not apply to task='segmentation' ({why})")
        if self.augment:
            raise ValueError("augment=True does not apply to task='segmentation': the runner's crop and flip "
                             "move the image but not its mask; set augment=false or null")
        synthetic = self.dataset == "synthetic-ct"
        if self.noise == "annotation" and not synthetic:
            raise ValueError(f"noise='annotation' plants mask corruptions in dataset='synthetic-ct' only, "
                             f"got dataset={self.dataset!r}")
        if self.noise == "none" and self.noise_rate != 0:
            raise ValueError(f"noise_rate={self.noise_rate!r} has no effect with noise='none'; "
                             f"set noise=annotation or noise_rate=0")
        if self.noise_mix is not None:
            if self.noise != "annotation":
                raise ValueError(f"noise_mix={self.noise_mix!r} only applies with noise='annotation'")
            if not isinstance(self.noise_mix, dict):
                raise ValueError(f"noise_mix={self.noise_mix!r} must be a mapping of corruption: weight")
            _resolve_mix(self.noise_mix)  # names and weights, with its own message
        if self.image_size is not None and synthetic and self.image_size % 16:
            raise ValueError(f"image_size={self.image_size!r} must be a multiple of 16 (the U-Nets halve "
                             f"the slice 3 or 4 times)")
        check_seg_data_dir(self.dataset, self.data_dir)

    def _check_detection(self) -> None:
        """The checks of a detection run."""
        for name, why in (("imbalance", "a long-tailed cut is for classification"),
                          ("img_max", "a long-tailed cut is for classification"),
                          ("noise_file", "human labels are for CIFAR-100")):
            if getattr(self, name) is not None:
                raise ValueError(f"{name}={getattr(self, name)!r} does not apply to task='detection' ({why})")
        if self.augment:
            raise ValueError("augment=True does not apply to task='detection': the runner's crop and flip "
                             "move the image but not its boxes; set augment=false or null")
        synthetic = self.dataset == "synthetic-det"
        if self.noise == "annotation" and not synthetic:
            raise ValueError(f"noise='annotation' plants box noise in dataset='synthetic-det' only, "
                             f"got dataset={self.dataset!r} (DeepLesion's boxes are as annotated)")
        if self.noise == "none" and self.noise_rate != 0:
            raise ValueError(f"noise_rate={self.noise_rate!r} has no effect with noise='none'; "
                             f"set noise=annotation (noise_rate: share of lesions without a box) or noise_rate=0")
        if self.noise_mix is not None and self.noise != "annotation":
            raise ValueError(f"noise_mix={self.noise_mix!r} only applies with noise='annotation'")
        det_noise_options(self.noise, self.noise_rate, self.noise_mix)  # names and shares, its own message
        if self.windows is not None and not synthetic:
            raise ValueError(f"windows={self.windows!r} only applies to dataset='synthetic-det' (DeepLesion's "
                             f"three channels are the key slice and its neighbours)")
        if self.windows == "lung" and self.model != "tiny":
            raise ValueError(f"windows='lung' gives 1-channel images and model={self.model!r} takes 3 channels; "
                             f"use windows=three or model=tiny")
        if synthetic and self.subset is not None and self.train_fraction is not None \
                and round(self.train_fraction * self.subset) < 1:
            raise ValueError(f"train_fraction={self.train_fraction!r} of subset={self.subset!r} keeps no slice")
        schedule = STRATEGY_REGISTRY[self.strategy].schedule or self.schedule
        if STRATEGY_REGISTRY[self.strategy].measure is not None and SCHEDULES[schedule].uncertainty_source != "pass":
            passes = sorted(k for k, v in SCHEDULES.items() if v.uncertainty_source == "pass")
            raise ValueError(f"strategy={self.strategy!r} with schedule={schedule!r} reads the uncertainty off "
                             f"the training forward, which for a torchvision detector is a loss dict; "
                             f"task='detection' needs a schedule whose uncertainty comes from an assessment "
                             f"pass: one of {passes}")
        check_det_data_dir(self.dataset, self.data_dir)

    def _check_combinations(self) -> None:
        """The checks of a classification run that involve more than one field."""
        for name in ("image_size", "noise_mix", "windows"):
            if getattr(self, name) is not None:
                raise ValueError(f"{name}={getattr(self, name)!r} only applies to task='segmentation' "
                                 f"or task='detection'")
        if self.noise == "none" and self.noise_rate != 0:
            raise ValueError(f"noise_rate={self.noise_rate!r} has no effect with noise='none'; "
                             f"set noise=symmetric or noise=pair, or noise_rate=0")
        if self.noise == "pair" and not self.noise_rate < 0.5:
            raise ValueError(f"noise_rate={self.noise_rate!r} must be below 0.5 for noise='pair' "
                             f"(the true class must stay the majority)")
        if self.noise == "human":
            if self.dataset != "cifar100":
                raise ValueError(f"noise='human' needs dataset='cifar100', got dataset={self.dataset!r}")
            if not isinstance(self.noise_file, str) or not os.path.isfile(self.noise_file):
                raise ValueError(f"noise_file={self.noise_file!r} must be the CIFAR-100_human.pt file for "
                                 f"noise='human' (from the CIFAR-N release)")
        elif self.noise_file is not None:
            raise ValueError(f"noise_file={self.noise_file!r} is only read with noise='human'")
        if self.img_max is not None and self.imbalance is None:
            raise ValueError(f"img_max={self.img_max!r} only applies to a long-tailed cut; set imbalance too")
        sizes = TRAIN_CLASS_SIZES[self.dataset]
        total = sum(sizes)
        if self.subset is not None and self.subset > total:
            raise ValueError(f"subset={self.subset!r} exceeds the {total} training images of {self.dataset}")
        if self.imbalance is not None and self.img_max is not None and self.subset is None:
            from ..data.imbalance import long_tailed_counts

            counts = long_tailed_counts(self.img_max, len(sizes), self.imbalance)
            over = [c for c in range(len(sizes)) if counts[c] > sizes[c]]
            if over:
                c = over[0]
                raise ValueError(f"img_max={self.img_max!r} asks for {counts[c]} images of class {c} of "
                                 f"{self.dataset}, which has {sizes[c]}")

    def _check_pivot(self) -> None:
        """A strategy that plans from the pivot needs a planned epoch."""
        uses_pivot = STRATEGY_REGISTRY[self.strategy].measure is not None
        if uses_pivot and not planned(self.epochs - 1, self.pivot_epoch):
            raise ValueError(
                f"pivot_epoch={self.pivot_epoch} leaves no planned epoch in epochs={self.epochs}: "
                f"strategy={self.strategy!r} plans epochs from the pivot on and the last epoch is "
                f"{self.epochs - 1}; set pivot_epoch to at most {self.epochs - 1} (the default is "
                f"{DEFAULT_PIVOT_EPOCH}) or epochs to at least {self.pivot_epoch + 1}")

    def outcome_fields(self) -> dict:
        """The fields that change the run's outcome (all but device, threads, tags, ...),
        with the task's defaults filled in."""
        d = dataclasses.asdict(self.resolved())
        for k in _NOT_IN_KEY:
            d.pop(k)
        for k, default in _KEY_IF_SET.items():
            if d[k] == default:
                d.pop(k)
        return d

    def key(self) -> str:
        """A short hash of everything that changes the run's outcome."""
        text = json.dumps(self.outcome_fields(), sort_keys=True, default=_json_default)
        return hashlib.sha1(text.encode()).hexdigest()[:10]


def run_dir_name(cfg: RunConfig) -> str:
    """The run's folder name: its labels and its key."""
    f = cfg.outcome_fields()
    return f"{f['dataset']}-{cfg.strategy}-{f['loss']}-b{cfg.batch_size}-s{cfg.seed}-{cfg.key()}"
