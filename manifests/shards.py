"""WebDataset-compatible tar shards: written whole to a temp name, fsynced, renamed; read by byte range."""
from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from manifests.atomic import atomic_open, fault_point
from manifests.schema import sha256_bytes

# Fixed member metadata so the same samples always give the same shard bytes.
_MEMBER_MTIME = 0


@dataclass(frozen=True)
class ShardSample:
    key: str                    # the sample_id: no dots, so WebDataset groups .png and .json by it
    png: bytes
    meta: dict | None = None    # written as <key>.json when given


@dataclass(frozen=True)
class MemberLocation:
    key: str
    offset: int                 # byte offset of the PNG data inside the tar
    size: int                   # bytes of PNG data
    sha256: str


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = _MEMBER_MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_shard(path: str | os.PathLike, samples: Iterable[ShardSample]) -> list[MemberLocation]:
    """Write all samples to `path` atomically; return where each PNG landed.

    The shard either exists whole or not at all: a crash leaves only a `.tmp-*` file behind.
    """
    path = Path(path)
    locations: list[MemberLocation] = []
    seen: set[str] = set()
    with atomic_open(path) as raw:
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for sample in samples:
                if "." in sample.key or "/" in sample.key:
                    raise ValueError(f"shard key {sample.key!r} must not contain '.' or '/'")
                if sample.key in seen:
                    raise ValueError(f"duplicate key {sample.key!r} in shard {path.name}")
                seen.add(sample.key)
                info = _tarinfo(f"{sample.key}.png", len(sample.png))
                # Data starts right after this member's header block(s).
                data_offset = tar.offset + len(info.tobuf(tar.format, tar.encoding, tar.errors))
                tar.addfile(info, io.BytesIO(sample.png))
                fault_point(f"member {path.name}/{sample.key}.png")
                locations.append(MemberLocation(sample.key, data_offset, info.size, sha256_bytes(sample.png)))
                if sample.meta is not None:
                    blob = json.dumps(sample.meta, sort_keys=True, default=_json_default).encode()
                    tar.addfile(_tarinfo(f"{sample.key}.json", len(blob)), io.BytesIO(blob))
    return locations


def read_member(path: str | os.PathLike, offset: int, size: int) -> bytes:
    """Random access to one member's bytes, without scanning the tar."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise OSError(f"{path}: wanted {size} bytes at {offset}, got {len(data)} (truncated shard?)")
    return data


def list_members(path: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """Member name -> (data offset, size) for every file in a shard."""
    with tarfile.open(path, mode="r:") as tar:
        return {m.name: (m.offset_data, m.size) for m in tar.getmembers() if m.isfile()}


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
