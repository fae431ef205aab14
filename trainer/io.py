"""Atomic file writes: a reader sees the old file or the new one, never half of either.

A write that runs out of space raises `DiskFullError` naming the file, removes its temporary file
(so the failed write holds no space) and leaves the previous version of the file in place.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

from trainer.errors import DiskFullError

_UMASK = os.umask(0)
os.umask(_UMASK)
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# Libraries that lose the errno still quote the OS message (safetensors: "… (os error 28)").
_FULL_TEXT = re.compile(r"no space left on device|disk quota exceeded|os error (28|122)\b|errno (28|122)\b", re.I)


def _no_free_blocks(directory: Path) -> bool:
    """The filesystem has no block left for this user (root may use the reserved ones)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) == 0


def is_disk_full(e: BaseException, directory: Path) -> bool:
    """Whether `e`, raised while writing into `directory`, means the disk (or quota) is full. torch.save
    reports it only as a RuntimeError about its stream, so such an error on a filesystem with no free
    block counts too; call this before removing the partial file."""
    seen: BaseException | None = e
    while seen is not None:
        if getattr(seen, "errno", None) in _FULL_ERRNOS or _FULL_TEXT.search(str(seen)):
            return True
        seen = seen.__cause__ or seen.__context__
    return isinstance(e, RuntimeError) and _no_free_blocks(directory)


def disk_full_error(path: Path) -> DiskFullError:
    return DiskFullError(f"{path}: no space left on device (disk full); its previous version, if any, is intact")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        if e.errno in _FULL_ERRNOS:
            raise disk_full_error(path) from None
        raise
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes the file private; give it a normal file's mode
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    except Exception as e:
        if not isinstance(e, DiskFullError) and is_disk_full(e, path.parent):
            raise disk_full_error(path) from None
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename inside `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
