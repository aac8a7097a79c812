"""Atomic writes and the per-epoch checkpoint of a run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

__all__ = ["atomic_json", "atomic_torch", "load_checkpoint"]


def atomic_json(path: Path, obj) -> None:
    """Writes ``obj`` as JSON so that a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def atomic_torch(path: Path, obj) -> None:
    """``torch.save`` through a temporary file and an atomic rename."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, key: str) -> dict | None:
    """The checkpoint at ``path`` if it belongs to the run ``key``, else ``None``."""
    if not path.exists():
        return None
    # CPU first: generator states must stay CPU byte tensors; load_state_dict moves the rest.
    ck = torch.load(path, weights_only=False, map_location="cpu")
    return ck if ck.get("key") == key else None
