"""Assessment schedules: when, on which samples, and from which pass the
difficulty measures are taken.

The paper measures loss and uncertainty in a full extra pass over the training
set every epoch after the pivot, with ``K = 8`` disturbed predictions per
sample. That costs more than training. The cheaper schedules here reuse the
loss that the training pass computed anyway, and measure the uncertainty less
often, on a rotating part of the data, or from the training forward's own
features. ``benchmarks/overhead.py`` measures what each one costs in time and in
ranking fidelity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np

from ._checks import check_int, is_real

__all__ = ["AssessmentSchedule", "DEFAULT_PIVOT_EPOCH", "SCHEDULES", "DEFAULT_SCHEDULE", "create_schedule", "planned"]

#: The library's one default pivot epoch (the paper's PE): the first epoch
#: planned from scores. 1 plans from the second epoch on, once one epoch has
#: produced scores; the paper used 5 to 50 (``shared/METHOD.md`` §1). The
#: sampler, the strategies, the assessor and the runner all default to it.
DEFAULT_PIVOT_EPOCH = 1


def planned(epoch: int, pivot_epoch: int) -> bool:
    """Whether ``epoch`` is planned from difficulty scores: the pivot rule.

    Epochs before the pivot epoch (the paper's PE) use random batches; from it
    on, batches are planned from the latest scores (``shared/METHOD.md`` §2).
    Every part of mombs that asks "is this epoch planned?" asks this function.
    """
    return epoch >= pivot_epoch


@dataclass(frozen=True)
class AssessmentSchedule:
    """How the difficulty measures are taken.

    Attributes:
        name: a label for logs and results.
        loss_source: ``"train"`` reuses the per-sample loss of the training
            forward; ``"pass"`` measures it in an eval-mode assessment pass.
        uncertainty_source: ``"pass"``: an eval-mode pass with ``k`` disturbed
            predictions; ``"train"``: the training forward's own features at
            ``at`` are disturbed and sent through ``head`` (needs a head);
            ``"output"``: the plain entropy of the training forward's own
            prediction (``K = 1``, no noise, no extra pass).
        uncertainty_every: take the uncertainty every this many epochs (``>= 1``).
        uncertainty_fraction: share of the data whose uncertainty is taken in
            each such epoch, rotating so that all of it is covered (``(0, 1]``).
    """

    name: str
    loss_source: str = "train"
    uncertainty_source: str = "pass"
    uncertainty_every: int = 1
    uncertainty_fraction: float = 1.0

    def __post_init__(self):
        if self.loss_source not in ("train", "pass"):
            raise ValueError(f"loss_source={self.loss_source!r} must be 'train' or 'pass'")
        if self.uncertainty_source not in ("train", "pass", "output"):
            raise ValueError(f"uncertainty_source={self.uncertainty_source!r} must be 'train', 'pass' or 'output'")
        check_int("uncertainty_every", self.uncertainty_every, 1)
        if not is_real(self.uncertainty_fraction) or not 0 < self.uncertainty_fraction <= 1:
            raise ValueError(f"uncertainty_fraction={self.uncertainty_fraction!r} must be in (0, 1]")
        if self.uncertainty_fraction < 1 and self.uncertainty_every != 1:
            raise ValueError(
                f"uncertainty_every={self.uncertainty_every} and uncertainty_fraction="
                f"{self.uncertainty_fraction} do not combine: a rotating part is taken every epoch"
            )

    @property
    def parts(self) -> int:
        """Number of rotating parts the data is split into."""
        return math.ceil(1.0 / self.uncertainty_fraction - 1e-9)

    @property
    def warmup_epochs(self) -> int:
        """Epochs of measuring needed before the pivot so that every sample has
        both measures when the first planned epoch starts."""
        return self.parts if self.uncertainty_source == "pass" else 1

    def first_epoch(self, pivot_epoch: int) -> int:
        """First epoch whose measurements feed the plan of ``pivot_epoch``."""
        return max(0, pivot_epoch - self.warmup_epochs)

    def uncertainty_part(self, epoch: int, pivot_epoch: int) -> int | None:
        """Which rotating part gets its uncertainty taken at the end of ``epoch``
        (``None``: none this epoch). Only for ``uncertainty_source="pass"``."""
        start = self.first_epoch(pivot_epoch)
        if epoch < start:
            return None
        step = epoch - start
        if self.parts > 1:
            return step % self.parts
        return 0 if step % self.uncertainty_every == 0 else None

    def part_indices(self, part: int, num_samples: int, seed: int) -> np.ndarray:
        """Sorted indices of rotating ``part``: a fixed random split of the data."""
        if self.parts == 1:
            return np.arange(num_samples)
        owner = np.random.default_rng([seed, 0x5EED]).integers(0, self.parts, size=num_samples)
        return np.flatnonzero(owner == part)


#: Named schedules (see :class:`AssessmentSchedule`).
SCHEDULES = {
    s.name: s
    for s in (
        AssessmentSchedule("paper", loss_source="pass"),
        AssessmentSchedule("reuse-loss"),
        AssessmentSchedule("every-2", uncertainty_every=2),
        AssessmentSchedule("every-4", uncertainty_every=4),
        AssessmentSchedule("rotate-2", uncertainty_fraction=1 / 2),
        AssessmentSchedule("rotate-4", uncertainty_fraction=1 / 4),
        AssessmentSchedule("train-features", uncertainty_source="train"),
        AssessmentSchedule("train-entropy", uncertainty_source="output"),
    )
}

#: The cheapest schedule that kept ranking fidelity >= 0.9 in
#: ``benchmarks/results/overhead_cpu.json`` (0.97, at 1.31x the time of random
#: training on the CPU). The cheaper ones stayed below 0.9 there: every-2 0.89,
#: rotate-2 0.89, rotate-4 0.89, train-features 0.85, every-4 0.84.
DEFAULT_SCHEDULE = "reuse-loss"


def create_schedule(schedule: str | AssessmentSchedule = DEFAULT_SCHEDULE, **overrides) -> AssessmentSchedule:
    """A schedule by name (one of :data:`SCHEDULES`) or as given, with field overrides."""
    if isinstance(schedule, AssessmentSchedule):
        base = schedule
    elif schedule in SCHEDULES:
        base = SCHEDULES[schedule]
    else:
        raise ValueError(f"schedule={schedule!r} is not known; choose one of {sorted(SCHEDULES)}")
    unknown = sorted(set(overrides) - {f.name for f in fields(AssessmentSchedule)})
    if unknown:
        raise ValueError(
            f"unknown schedule field(s) {unknown}; choose from {[f.name for f in fields(AssessmentSchedule)]}"
        )
    return replace(base, **overrides) if overrides else base
