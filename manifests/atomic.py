"""Atomic file writes: a temp name beside the target, fsync, rename, fsync of the folder.

A reader sees the old file or the whole new one, never a part; a crash leaves at most a
`.tmp-*` file, which readers and `verify` ignore. (models/checkpoints.py keeps its own copy of
this pattern because models/ must not import manifests/.)
"""
from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import IO, Iterator

TMP_PREFIX = ".tmp-"

# Test hook, used only by tests/flows/test_fault_injection.py: "N:COUNTER_FILE" makes the process SIGKILL
# itself at the Nth write step, counted across processes in COUNTER_FILE (the step's name is appended to
# COUNTER_FILE.killed first). Unset (always, outside that test), fault_point does nothing.
FAULT_ENV = "SINGANIMATION_TEST_KILL_AT"


def fault_point(name: str) -> None:
    """One write step (a shard member added, a temp file written, a file renamed into place); see FAULT_ENV."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    kill_at, _, counter_file = spec.partition(":")
    counter = Path(counter_file)
    step = (int(counter.read_text() or 0) if counter.is_file() else 0) + 1
    counter.write_text(str(step))
    if step == int(kill_at):
        with open(f"{counter}.killed", "a") as f:
            f.write(f"{step} {name}\n")
        os.kill(os.getpid(), signal.SIGKILL)


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
        fault_point(f"written {path.parent.name}/{path.name}")
        os.replace(tmp, path)
        fsync_dir(path.parent)
        fault_point(f"renamed {path.parent.name}/{path.name}")
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
