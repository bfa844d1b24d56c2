"""Atomic file writes: a temp name beside the target, fsync, rename, fsync of the folder.

A reader sees the old file or the whole new one, never a part; a crash leaves at most a
`.tmp-*` file, which readers and `verify` ignore. (models/checkpoints.py keeps its own copy of
this pattern because models/ must not import manifests/.)
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO, Iterator

TMP_PREFIX = ".tmp-"


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temp file for writing; on a clean exit it replaces `path` durably, on an error it is removed."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes whole files: mode 'wb' or 'w', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)
