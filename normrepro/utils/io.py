"""Atomic file writes: write to a temp file ``.<name>.<random>.tmp`` in the same folder, fsync, then ``os.replace``.

A reader (or a crash) never sees a half-written file. A write that fails (disk full, file too large, quota,
read-only) raises a one-line :class:`StorageError` naming the file; the temp file is removed. A kill during a write
leaves the temp file behind: :func:`remove_stale_temp_files` deletes them when a run (re)starts in that folder.
"""
from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from normrepro.errors import StorageError

TEMP_PREFIX, TEMP_SUFFIX = ".", ".tmp"  # temp file of ``name``: .<name>.<8 random chars>.tmp
_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")
_HINTS = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some of your quota",
          errno.EFBIG: "raise the file size limit (ulimit -f)", errno.EROFS: "use a writable hydra.run.dir",
          errno.EACCES: "use a writable hydra.run.dir"}


def storage_error(path: str | os.PathLike, e: OSError) -> StorageError:
    """``StorageError("cannot write 'p': No space left on device (ENOSPC); free some space ...")``."""
    code = errno.errorcode.get(e.errno, "") if e.errno else ""
    why = f"{e.strerror or type(e).__name__}{f' ({code})' if code else ''}"
    hint = _HINTS.get(e.errno, "check the folder")
    return StorageError(f"cannot write {str(path)!r}: {why}; {hint}, or use another hydra.run.dir")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically; any OSError becomes a one-line :class:`StorageError`."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a normal file's mode instead
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise storage_error(path, e) from None
        raise


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files that killed atomic writes left in ``folder`` (not below it); returns them.
    Call it only while holding the folder's run lock: a live writer's temp file looks the same."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in sorted(folder.iterdir()):
        if _TEMP_NAME.match(p.name) and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through a temp file + rename."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def atomic_savefig(fig, path: str | os.PathLike, **kwargs) -> Path:
    """``fig.savefig`` (PNG) through a temp file + rename."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", **kwargs)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
