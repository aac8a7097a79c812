"""The run configuration: everything that defines one training run."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from ..schedule import DEFAULT_SCHEDULE, SCHEDULES
from ..strategies import STRATEGY_REGISTRY

__all__ = ["RunConfig", "run_dir_name"]

#: Fields that do not change a run's outcome: left out of its key.
_NOT_IN_KEY = ("device", "threads", "tags", "data_dir", "test_every")


@dataclass
class RunConfig:
    """Everything that defines one training run. Defaults: the CPU demo recipe."""

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    subset: int | None = None          # training images kept (seeded), before the LT cut
    imbalance: float | None = None     # long-tailed rho, e.g. 0.01
    img_max: int | None = None         # images of the largest class in the LT cut
    noise: str = "none"                # none | symmetric | pair | human
    noise_rate: float = 0.0
    noise_file: str | None = None      # CIFAR-100_human.pt for noise="human"
    val_fraction: float = 0.1
    model: str = "small_cnn"
    loss: str = "ce"
    strategy: str = "random"
    pivot_epoch: int = 5
    schedule: str = DEFAULT_SCHEDULE
    k: int = 8
    alpha: float = 0.3
    batch_size: int = 16
    epochs: int = 20
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool | None = None        # None: crop+flip for CIFAR, nothing otherwise
    test_every: int = 5                # test accuracy every n epochs (and at the end)
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    tags: dict = field(default_factory=dict)

    def validate(self) -> "RunConfig":
        if self.strategy not in STRATEGY_REGISTRY:
            raise ValueError(f"strategy={self.strategy!r} is not known; choose one of {sorted(STRATEGY_REGISTRY)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r} is not known; choose one of {sorted(SCHEDULES)}")
        if self.noise not in ("none", "symmetric", "pair", "human"):
            raise ValueError(f"noise={self.noise!r} must be none, symmetric, pair or human")
        for name in ("batch_size", "epochs", "k", "test_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} must be an integer >= 1")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction={self.val_fraction!r} must be in (0, 1): choices need a validation split")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr!r} must be > 0")
        return self

    def outcome_fields(self) -> dict:
        """The fields that change the run's outcome (all but device, threads, tags, ...)."""
        d = dataclasses.asdict(self)
        for k in _NOT_IN_KEY:
            d.pop(k)
        return d

    def key(self) -> str:
        """A short hash of everything that changes the run's outcome."""
        return hashlib.sha1(json.dumps(self.outcome_fields(), sort_keys=True).encode()).hexdigest()[:10]


def run_dir_name(cfg: RunConfig) -> str:
    return f"{cfg.dataset}-{cfg.strategy}-{cfg.loss}-b{cfg.batch_size}-s{cfg.seed}-{cfg.key()}"
