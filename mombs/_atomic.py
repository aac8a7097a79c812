"""The one way mombs writes a file that must never be seen half-written."""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["atomic_json", "atomic_npz", "atomic_write"]


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform without directory handles: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, write: Callable[[Path], object], *, verify: Callable[[Path], None] | None = None) -> None:
    """Writes ``path`` through a temporary file in its folder, synced, then renamed into place.

    A reader sees the old file or the new one, never part of one, and after a
    power cut the new one is on disk (the file and its folder are fsynced
    before and after the rename).

    Args:
        path: the file to write.
        write: ``write(tmp)`` writes the whole content to the temporary path ``tmp``.
        verify: ``verify(tmp)`` raises when what was written is wrong; the
            temporary file is then removed and ``path`` left as it was.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        try:
            write(tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        except Exception as err:
            raise _explained(path, err) from err
        if verify is not None:
            verify(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _explained(path: Path, err: Exception) -> Exception:
    """A write error as one line that names the file and says what is wrong with the disk.

    torch reports a full disk as ``[enforce fail at inline_container.cc:...]``; numpy and the
    file system as ``OSError`` with an errno. Either way the user reads the path and the cause.
    """
    code = getattr(err, "errno", None)
    if code == errno.ENOSPC or (code is None and _disk_is_full(path.parent)):
        return OSError(errno.ENOSPC, f"cannot write {path}: the disk is full ({type(err).__name__}: {err})")
    if code == errno.EROFS:
        return OSError(errno.EROFS, f"cannot write {path}: the file system is read-only")
    if code in (errno.EACCES, errno.EPERM):
        return OSError(code, f"cannot write {path}: permission denied")
    return err


def _disk_is_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def atomic_json(path, obj, *, indent: int | None = 1) -> None:
    """``obj`` as JSON at ``path``, written with :func:`atomic_write`."""
    text = json.dumps(obj, indent=indent)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_npz(path, **arrays) -> None:
    """``np.savez_compressed(path, **arrays)``, written with :func:`atomic_write`."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a handle: numpy would add ".npz" to the temporary name
            np.savez_compressed(fh, **arrays)

    atomic_write(path, write)
