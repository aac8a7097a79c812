"""Timing and memory helpers shared by the cost benchmarks (``seg_cost.py``, ``det_cost.py``)."""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

CUDA_MEMORY_METHOD = (
    "growth of torch.cuda.max_memory_allocated over one more run of each job after "
    "torch.cuda.reset_peak_memory_stats, in the timing process (MB); torch's allocations only"
)


def sync(device: torch.device) -> None:
    """Waits for the GPU's queued work, so that a wall-clock time covers it; nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cuda_memory(device: torch.device, job: Callable[[], None]) -> dict:
    """Growth of torch's peak allocated CUDA memory over one run of ``job``.

    Args:
        device: a CUDA device.
        job: what to run once.

    Returns:
        ``allocated_before_mb``, ``peak_allocated_mb`` and their difference
        ``delta_mb``, in MiB (torch's allocations only, not the cache).
    """
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    job()
    sync(device)
    peak = torch.cuda.max_memory_allocated(device)
    return {
        "allocated_before_mb": round(before / 2**20, 1),
        "peak_allocated_mb": round(peak / 2**20, 1),
        "delta_mb": round((peak - before) / 2**20, 1),
    }


def status_kb(field: str) -> int:
    """A field of ``/proc/self/status``.

    Args:
        field: ``"VmRSS"`` (resident set now) or ``"VmHWM"`` (its high-water mark).

    Returns:
        The value in kB.
    """
    with open("/proc/self/status") as fh:
        return int(re.search(rf"^{field}:\s+(\d+) kB", fh.read(), re.M).group(1))
