"""One writer per run folder: an advisory lock that dies with its process.

Two ``mombs train`` with the same ``--out``, or a ``compare`` rerun while the
workers of a killed one still run, would otherwise write one run folder at
once: every epoch logged twice, checkpoints that do not read back. The lock is
``fcntl.flock`` on ``<run folder>/.lock``: the kernel releases it when its
process ends, however it ends, so a lock file left behind by a killed run is
stale by construction and the next run simply takes it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

__all__ = ["RunFolderLocked", "run_lock"]

LOCK_NAME = ".lock"


class RunFolderLocked(RuntimeError):
    """Another process holds the run folder's lock."""


@contextlib.contextmanager
def run_lock(folder):
    """Context: this process is the run folder's only writer.

    Args:
        folder: the run folder (created if missing).

    Raises:
        RunFolderLocked: another live process holds it; the message names its
            pid, host and start time as it wrote them.
    """
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no advisory locks to take
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise RunFolderLocked(
                f"run folder {folder} is being written by another mombs process ({holder}); "
                f"wait for it to finish or stop it, then run the same command again"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(
            fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0
        )
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
