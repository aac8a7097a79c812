"""The environment a result was produced in: versions, device and commit."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone

__all__ = ["environment_info"]


def _git_commit(cwd: str | None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_info(device: str | None = None) -> dict:
    """Versions, hardware and commit, to store next to every result.

    Args:
        device: the torch device the result was computed on, if any
            (``"cpu"``, ``"cuda"``...). A CUDA device adds the GPU's name.

    Returns:
        A JSON-serialisable dict.
    """
    import numpy as np

    info = {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "commit": _git_commit(os.path.dirname(os.path.abspath(__file__))),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if device is not None:
            info["device"] = str(device)
            if str(device).startswith("cuda") and torch.cuda.is_available():
                info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    except ImportError:
        info["torch"] = None
    return info
