"""Whether a partial trial file's writer still runs, so that a reader knows how to open it.

A running `TrialWriter` holds a shared lock on one byte far past any data of its partial file, as
an open file description lock (Linux): such a lock conflicts across processes and descriptors
alike, ends when the writer's process does (even by SIGKILL), and is independent of the flock()
that libhdf5 takes on the file, so it disturbs neither libhdf5 nor other readers. Readers only ask
(F_OFD_GETLK) and never take it. The writers of this process are also registered by path, since a
reader in the writer's own process shares the writer's open file in libhdf5.
"""

from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

_LOCK_BYTE = 2**62
_FLOCK = "hhqqi4x"  # struct flock on 64-bit Linux: type, whence, start, len, pid (and padding)
_WRITING_HERE: set[Path] = set()


def _request(kind: int) -> bytes:
    return struct.pack(_FLOCK, kind, os.SEEK_SET, _LOCK_BYTE, 1, 0)


def _key(path: Path) -> Path:
    return Path(os.path.realpath(path))


class WriterLock:
    """Held by a writer from creating its partial file until it closes or finishes it."""

    def __init__(self, path: Path):
        self._key = _key(path)
        self._fd: int | None = None
        if hasattr(fcntl, "F_OFD_SETLK"):
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:  # no lock, as below: the trial is logged all the same
                fd = None
            if fd is not None:
                try:
                    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _request(fcntl.F_RDLCK))
                    self._fd = fd
                except OSError:  # a file system without such locks: readers take the writer for dead
                    os.close(fd)
        _WRITING_HERE.add(self._key)

    def release(self) -> None:
        _WRITING_HERE.discard(self._key)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def writing_here(path: Path) -> bool:
    """Whether a writer of this process has `path` open."""
    return _key(path) in _WRITING_HERE


def writer_alive(path: Path) -> bool:
    """Whether a writer in any process holds `path`. False where that cannot be known (no such
    locks, or no such file): readers then take the writer for dead, which fails rather than waits."""
    if writing_here(path):
        return True
    if not hasattr(fcntl, "F_OFD_GETLK"):
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _request(fcntl.F_WRLCK))
    except OSError:
        return False
    finally:
        os.close(fd)
    return struct.unpack(_FLOCK, answer)[0] != fcntl.F_UNLCK
