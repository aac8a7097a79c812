"""The per-epoch checkpoint of a run.

A run keeps two checkpoints: ``checkpoint.pt`` (the latest epoch) and
``checkpoint.prev.pt`` (the one before). A new checkpoint is written to a
temporary file, read back, and only then renamed into place, the old one
becoming ``.prev``. A file cut short by a full disk, a killed process or a
copy gone wrong is therefore never the only one: :func:`load_checkpoint`
reports it by its path, sets it aside and resumes from the previous one.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from .._atomic import atomic_write

__all__ = ["load_checkpoint", "previous_checkpoint", "remove_checkpoints", "save_checkpoint"]


def previous_checkpoint(path: Path) -> Path:
    """Where the checkpoint before ``path`` is kept: ``checkpoint.pt`` -> ``checkpoint.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _read(path: Path) -> dict:
    # CPU first: generator states must stay CPU byte tensors; load_state_dict moves the rest.
    ck = torch.load(path, weights_only=False, map_location="cpu")
    if not isinstance(ck, dict) or "key" not in ck or "epoch" not in ck:
        raise ValueError("not a mombs checkpoint (no 'key' and 'epoch' entries)")
    return ck


def save_checkpoint(path: Path, obj: dict) -> None:
    """Writes a checkpoint, verified, keeping the one it replaces as ``.prev``.

    The new file is read back before anything is renamed, so a write that went
    wrong raises :class:`OSError` here and leaves both older checkpoints as
    they were.

    Args:
        path: ``.../checkpoint.pt``.
        obj: the checkpoint, a dict with at least ``key`` and ``epoch``.
    """
    path = Path(path)
    prev = previous_checkpoint(path)

    def verify(tmp: Path) -> None:
        try:
            back = _read(tmp)
        except Exception as err:  # whatever torch raises for a bad file
            raise OSError(
                f"checkpoint {tmp} does not read back ({type(err).__name__}: {err}); the previous checkpoints are kept"
            ) from err
        if back["key"] != obj["key"] or back["epoch"] != obj["epoch"]:
            raise OSError(
                f"checkpoint {tmp} reads back as another one (epoch {back['epoch']}); the previous checkpoints are kept"
            )
        if path.exists():  # only once the new one is known good
            os.replace(path, prev)

    atomic_write(path, lambda tmp: torch.save(obj, tmp), verify=verify)


def load_checkpoint(path: Path, key: str) -> dict | None:
    """The newest readable checkpoint of the run ``key``: ``path``, else its ``.prev``.

    A checkpoint that cannot be read (empty, truncated, not a checkpoint) is
    reported with a :class:`RuntimeWarning` naming it, renamed to
    ``<name>.corrupt`` so that the next save does not keep it as the previous
    one, and the previous checkpoint is tried. A checkpoint of another run
    (another key, say one copied in by hand) is set aside the same way, as
    ``<name>.foreign``, with a warning naming both keys: it never makes the
    run start over while a checkpoint of its own remains.

    Returns:
        The checkpoint dict, or ``None`` when there is none to resume from.
    """
    path = Path(path)
    for candidate in (path, previous_checkpoint(path)):
        if not candidate.exists():
            continue
        try:
            ck = _read(candidate)
        except Exception as err:  # torch raises EOFError, OSError, RuntimeError, UnpicklingError, ...
            corrupt = candidate.with_name(candidate.name + ".corrupt")
            os.replace(candidate, corrupt)
            warnings.warn(
                f"checkpoint {candidate} cannot be read ({type(err).__name__}: {err}); "
                f"moved to {corrupt.name}, resuming from the previous checkpoint if there is one",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        if ck.get("key") != key:
            foreign = candidate.with_name(candidate.name + ".foreign")
            os.replace(candidate, foreign)
            warnings.warn(
                f"checkpoint {candidate} belongs to another run (key {ck.get('key')!r}, this run's is "
                f"{key!r}); moved to {foreign.name}, resuming from the previous checkpoint if there "
                f"is one",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        if candidate != path:
            warnings.warn(f"resuming from {candidate} (epoch {ck['epoch']})", RuntimeWarning, stacklevel=2)
        return ck
    return None


def remove_checkpoints(path: Path) -> None:
    """Deletes a finished run's checkpoints (latest, previous, temporary, set-aside corrupt ones).

    Files set aside as another run's (``.foreign``) are left: they are not this run's to delete.
    """
    path = Path(path)
    prev = previous_checkpoint(path)
    for p in (
        path,
        prev,
        path.with_suffix(path.suffix + ".tmp"),
        path.with_name(path.name + ".corrupt"),
        prev.with_name(prev.name + ".corrupt"),
    ):
        p.unlink(missing_ok=True)
