"""The run configuration: everything that defines one training run."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from .._checks import check_choice, check_int, check_real, is_real
from ..recipes import DEFAULT_TASK, RECIPES, TASK_OPTIONS, get_recipe
from ..schedule import DEFAULT_PIVOT_EPOCH, SCHEDULES, planned
from ..strategies import STRATEGY_REGISTRY

__all__ = ["DEFAULT_PIVOT_EPOCH", "RunConfig", "run_dir_name"]

#: Fields that do not change a run's outcome: left out of its key.
_NOT_IN_KEY = ("device", "threads", "tags", "data_dir", "test_every")
#: Fields added with segmentation and detection: in a run's key only when set,
#: so that the keys (and folder names) of every run made before them stay.
_KEY_IF_SET = {
    "task": DEFAULT_TASK,
    "image_size": None,
    "noise_mix": None,
    "windows": None,
    "optimizer": "sgd",
    "train_fraction": None,
    "test_fraction": None,
    "weights": None,
    "normalize": None,
    "annotations": None,
    "foreground_only": None,
    "intensity_window": None,
    "history": False,
}
_OPTIMIZERS = ("sgd", "adam")
#: How images are scaled: by the training set's own mean and std, ImageNet's, or not at all.
_NORMALIZATIONS = ("dataset", "imagenet", "none")

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


def _check_device(device) -> None:
    if not isinstance(device, str):
        raise ValueError(f"device={device!r} must be a string such as 'cpu', 'cuda' or 'cuda:1'")
    if device == "cpu":
        return  # always there: checking it needs no torch import (seconds on a small CPU)
    import torch

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
    left as ``None`` become the task's defaults (its recipe's ``defaults``)
    there. Which options a task takes, and what they mean for it, is its
    recipe's business (:mod:`mombs.recipes`; ``docs/segmentation.md`` and
    ``docs/detection.md`` for the dense tasks): ``image_size``, ``noise_mix``,
    ``windows`` and ``train_fraction`` are options of some tasks only, and a
    task that does not take one refuses it by name.
    """

    task: str = DEFAULT_TASK
    dataset: str | None = None  # None: the task's default (its recipe's defaults)
    data_dir: str | None = None
    subset: int | None = None  # training images kept (seeded), before the LT cut
    imbalance: float | None = None  # long-tailed rho, e.g. 0.01
    img_max: int | None = None  # images of the largest class in the LT cut
    noise: str = "none"  # none | symmetric | pair | human
    noise_rate: float = 0.0
    noise_file: str | None = None  # CIFAR-100_human.pt for noise="human"
    val_fraction: float = 0.1
    image_size: int | None = None  # dense tasks: slice side in pixels
    noise_mix: dict | None = None  # dense tasks: weights of the annotation corruptions
    windows: str | None = None  # dense tasks: CT windows as channels, "lung" or "three"
    train_fraction: float | None = None  # share of the training slices (patients) kept, where taken
    test_fraction: float | None = None  # your data without a test split: the share drawn for testing
    weights: str | None = None  # a local state-dict file to start the model from
    normalize: str | None = None  # images: "dataset" (its mean/std), "imagenet" or "none"
    annotations: str | None = None  # COCO: the instances JSON file in data_dir (if there are several)
    foreground_only: bool | None = None  # volumes: train on slices with foreground only
    intensity_window: list | None = None  # volumes: [lo, hi] clip before scaling (None: per-volume z-score)
    model: str | None = None  # None: the task's default
    loss: str | None = None  # None: the task's default
    strategy: str = "random"
    pivot_epoch: int = DEFAULT_PIVOT_EPOCH
    schedule: str | None = None  # None: the task's default (its recipe's defaults; mombs.schedule)
    k: int | None = None  # None: the task's default (K disturbed predictions per sample)
    alpha: float | None = None  # None: the task's default (noise half-width, 1 + U(-alpha, alpha))
    batch_size: int = 16
    epochs: int = 20
    optimizer: str = "sgd"  # sgd (Nesterov) or adam (AdamW: weight_decay decoupled)
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool | None = None  # None: crop+flip for CIFAR, nothing otherwise
    test_every: int = 5  # test accuracy every n epochs (and at the end)
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    history: bool = False  # keep per-sample, per-epoch training signals (history.npz)
    tags: dict = field(default_factory=dict)

    def resolved(self) -> RunConfig:
        """A copy with ``dataset``, ``model``, ``loss``, ``schedule``, ``k`` and ``alpha`` filled
        in from the task's defaults."""
        out = dataclasses.replace(self, tags=dict(self.tags))
        out._resolve_defaults()
        return out

    def _resolve_defaults(self) -> None:
        if self.task in RECIPES:
            for name, value in get_recipe(self.task).defaults.items():
                if getattr(self, name) is None:
                    setattr(self, name, value)

    def validate(self) -> RunConfig:
        """Checks every field; numpy scalars become Python numbers, paths strings.

        Nothing is read but the file system's answer to "does this folder exist".

        Returns:
            ``self``, for chaining.

        Raises:
            ValueError: naming the field, the value given and what is allowed.
        """
        for f in dataclasses.fields(self):
            setattr(self, f.name, _plain(getattr(self, f.name)))
        for name in ("data_dir", "noise_file", "weights", "annotations"):  # a pathlib.Path is as good as a string
            v = getattr(self, name)
            if isinstance(v, os.PathLike):
                setattr(self, name, os.fspath(v))
        check_choice("task", self.task, RECIPES)
        recipe = get_recipe(self.task)
        self._check_data_dir_has_a_reader(recipe)
        self._resolve_defaults()
        for name in ("dataset", "model", "loss"):
            check_choice(name, getattr(self, name), recipe.choices[name])
        check_choice("strategy", self.strategy, STRATEGY_REGISTRY)
        check_choice("optimizer", self.optimizer, _OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("noise", self.noise, recipe.choices["noise"])
        for name in ("batch_size", "epochs", "k", "test_every"):
            check_int(name, getattr(self, name), 1)
        check_int("pivot_epoch", self.pivot_epoch, 0)
        check_int("seed", self.seed, 0, 2**32)
        check_int("threads", self.threads, 1, optional=True)
        check_int("subset", self.subset, 1, optional=True)
        check_int("img_max", self.img_max, 1, optional=True)
        check_int("image_size", self.image_size, 32, optional=True)
        if not isinstance(self.history, bool):
            raise ValueError(f"history={self.history!r} must be true or false")
        check_real("imbalance", self.imbalance, 0, 1, low_open=True, high_open=False, optional=True)
        check_real("train_fraction", self.train_fraction, 0, 1, low_open=True, high_open=False, optional=True)
        check_real(
            "val_fraction",
            self.val_fraction,
            0,
            1,
            low_open=True,
            high_open=True,
            why=": choices need a validation split",
        )
        check_real("test_fraction", self.test_fraction, 0, 1, low_open=True, high_open=True, optional=True)
        check_real("noise_rate", self.noise_rate, 0, 1, low_open=False, high_open=True)
        check_real("alpha", self.alpha, 0, 1, low_open=False, high_open=True)
        check_real("lr", self.lr, 0, math.inf, low_open=True, high_open=True)
        if self.optimizer == "sgd":
            check_real(
                "momentum",
                self.momentum,
                0,
                1,
                low_open=True,
                high_open=True,
                why=": the runner's SGD uses Nesterov momentum, which needs momentum > 0",
            )
        check_real("weight_decay", self.weight_decay, 0, math.inf, low_open=False, high_open=True)
        if self.augment is not None and not isinstance(self.augment, bool):
            raise ValueError(f"augment={self.augment!r} must be true, false or null (null: crop+flip for CIFAR)")
        if not isinstance(self.tags, dict) or not all(isinstance(k, str) for k in self.tags):
            raise ValueError(f"tags={self.tags!r} must be a mapping of string keys to values")
        try:
            json.dumps(self.tags)
        except (TypeError, ValueError) as err:
            raise ValueError(f"tags={self.tags!r} must hold JSON values (strings, numbers, lists, ...)") from err
        for name in ("data_dir", "noise_file", "weights", "annotations"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v):
                raise ValueError(f"{name}={v!r} must be a path or null")
        if self.normalize is not None:
            check_choice("normalize", self.normalize, _NORMALIZATIONS)
        if self.foreground_only is not None and not isinstance(self.foreground_only, bool):
            raise ValueError(f"foreground_only={self.foreground_only!r} must be true, false or null")
        if self.intensity_window is not None:
            w = self.intensity_window
            if not isinstance(w, (list, tuple)) or len(w) != 2 or not all(is_real(v) for v in w) or not w[0] < w[1]:
                raise ValueError(
                    f"intensity_window={w!r} must be [lo, hi] with lo < hi (say [-1000, 400] "
                    f"for a CT lung window), or null for a per-volume z-score"
                )
            self.intensity_window = [float(v) for v in w]
        _check_device(self.device)
        self._check_task_options(recipe)
        recipe.check(self)  # the task's own options: cross-field checks and its data folder
        self._check_pivot()
        return self

    def _check_data_dir_has_a_reader(self, recipe) -> None:
        """A data folder needs a data set that reads one; it is never silently ignored."""
        if not isinstance(self.data_dir, str) or not self.data_dir:
            return  # none, or not a path: the field's own check names it
        readers = {t: get_recipe(t).reads_data_dir for t in RECIPES}
        if self.dataset is None:
            said = "; ".join(f"task={t!r}: {', '.join(names)}" for t, names in readers.items() if names)
            raise ValueError(
                f"data_dir={self.data_dir!r} needs a dataset that reads it; give dataset= one of "
                f"{said} (docs/your-data.md)"
            )
        if self.dataset in recipe.choices["dataset"] and self.dataset not in recipe.reads_data_dir:
            raise ValueError(
                f"data_dir={self.data_dir!r} is not read by dataset={self.dataset!r}, which needs "
                f"no files; drop data_dir, or give a dataset that reads it: "
                f"{', '.join(recipe.reads_data_dir)}"
            )

    def _check_task_options(self, recipe) -> None:
        """Refuses an option of other tasks, naming the tasks that take it."""
        for name in TASK_OPTIONS:
            value = getattr(self, name)
            if value is not None and name not in recipe.takes:
                takers = " or ".join(f"task={t!r}" for t in sorted(RECIPES) if name in get_recipe(t).takes)
                raise ValueError(f"{name}={value!r} does not apply to task={self.task!r}; it is an option of {takers}")

    def _check_pivot(self) -> None:
        """A strategy that plans from the pivot needs a planned epoch."""
        uses_pivot = STRATEGY_REGISTRY[self.strategy].measure is not None
        if uses_pivot and not planned(self.epochs - 1, self.pivot_epoch):
            raise ValueError(
                f"pivot_epoch={self.pivot_epoch} leaves no planned epoch in epochs={self.epochs}: "
                f"strategy={self.strategy!r} plans epochs from the pivot on and the last epoch is "
                f"{self.epochs - 1}; set pivot_epoch to at most {self.epochs - 1} (the default is "
                f"{DEFAULT_PIVOT_EPOCH}) or epochs to at least {self.pivot_epoch + 1}"
            )

    def outcome_fields(self) -> dict:
        """The fields that change the run's outcome (all but device, threads, tags, ...),
        with the task's defaults filled in; ``data_dir`` (its real path) where it holds
        a user's own data, not where it locates a public set's files."""
        d = dataclasses.asdict(self.resolved())
        data_dir = d["data_dir"]
        for k in _NOT_IN_KEY:
            d.pop(k)
        if data_dir and self.task in RECIPES and d["dataset"] in get_recipe(self.task).own_data:
            # Your folder is the data: another folder, or files added, removed or changed in it, is another run.
            d["data_dir"] = os.path.realpath(data_dir)
            d["data_fingerprint"] = data_fingerprint(d["data_dir"])
        for k, default in _KEY_IF_SET.items():
            if d[k] == default:
                d.pop(k)
        return d

    def key(self) -> str:
        """A short hash of everything that changes the run's outcome."""
        text = json.dumps(self.outcome_fields(), sort_keys=True, default=_json_default)
        return hashlib.sha1(text.encode()).hexdigest()[:10]


@functools.lru_cache(maxsize=16)
def _fingerprint(path: str, stamp: tuple) -> str:
    digest = hashlib.sha1()
    root = path if os.path.isdir(path) else os.path.dirname(path)
    files = [path] if os.path.isfile(path) else []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        files += [os.path.join(folder, n) for n in sorted(names) if not n.startswith(".")]
    for f in files:
        try:
            st = os.stat(f)
        except OSError:  # vanished while listing: its absence is the fingerprint
            continue
        digest.update(f"{os.path.relpath(f, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:12]


def data_fingerprint(path: str) -> str:
    """A short hash of the files under ``path`` (a folder, or a file and its folder): their
    relative paths, sizes and modification times. Nothing is read but the file system's listing.

    The listing is taken once per process for as long as the folder's own modification time
    stays the same (a run asks for its key at every checkpoint).
    """
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return _fingerprint(path, (st.st_mtime_ns, st.st_size))


def run_dir_name(cfg: RunConfig) -> str:
    """The run's folder name: its labels and its key."""
    f = cfg.outcome_fields()
    return f"{f['dataset']}-{cfg.strategy}-{f['loss']}-b{cfg.batch_size}-s{cfg.seed}-{cfg.key()}"
