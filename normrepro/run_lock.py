"""One process per run dir: an exclusive ``fcntl.flock`` on ``<run dir>/.lock``, released by the OS when the holder
exits or dies (no stale locks after a kill). The file holds the holder's pid and host; a second process gets one
``ConfigError`` line naming them. The file itself stays (deleting it would let two processes lock two inodes).
flock works on local disks and on NFSv4 (Linux maps it to a POSIX lock there).
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path

from normrepro.errors import ConfigError

LOCK_NAME = ".lock"
_HELD: dict[Path, int] = {}  # run dir -> fd of the lock this process holds


def acquire_run_lock(run_dir: str | os.PathLike) -> Path:
    """Lock ``run_dir`` for this process (idempotent within it); another holder raises a one-line ConfigError."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _HELD:
        return run_dir / LOCK_NAME
    path = run_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ConfigError(f"cannot create the run lock {str(path)!r} ({e.strerror}); use a writable "
                          f"hydra.run.dir") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = _read_holder(fd)
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise ConfigError(f"run dir {str(run_dir)!r} is in use by {holder} (lock {LOCK_NAME}); wait for it to "
                              f"finish or stop it, or use another hydra.run.dir") from None
        raise ConfigError(f"cannot lock the run dir {str(run_dir)!r} ({e.strerror})") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    os.fsync(fd)
    _HELD[run_dir] = fd
    return path


def release_run_lock(run_dir: str | os.PathLike) -> None:
    """Release this process's lock on ``run_dir`` (the OS does it at exit anyway)."""
    fd = _HELD.pop(Path(run_dir).resolve(), None)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").split()
    except OSError:
        text = []
    if not text:
        return "another process"
    return f"process {text[0]}" + (f" on {text[1]}" if len(text) > 1 else "")
