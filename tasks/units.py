"""Work-unit membership by hash buckets of source ids: stable when a dataset grows."""
from __future__ import annotations

import hashlib
from collections.abc import Iterable

_HASH_BITS = 64


def _id_bits(source_id: str) -> int:
    return int.from_bytes(hashlib.sha256(source_id.encode("utf-8")).digest()[:8], "big")


def hash_bucket_units(source_ids: Iterable[str], unit_size: int) -> list[tuple[str, list[str]]]:
    """[(bucket, sorted ids)]: ids split by the leading bits of sha256(id) until each bucket holds <= unit_size.

    A bucket is a bit prefix ("b" for all ids, "b0"/"b1" for its halves, ...); one that holds more than
    unit_size ids is split in two by the next bit, and empty buckets are left out. Why not consecutive
    chunks of the sorted ids: one added id would shift every later chunk, so a re-run on a grown dataset
    would redo everything. Here an addition only changes the bucket it falls into (which may split):
    a bucket that gains no id keeps exactly its members, because its ancestors only grow. Units hold
    between about unit_size / 4 and unit_size ids for realistic sizes (the hash spreads ids evenly).
    """
    if unit_size < 1:
        raise ValueError(f"unit_size must be >= 1, got {unit_size}")
    keyed = sorted((_id_bits(i), i) for i in dict.fromkeys(source_ids))
    out: list[tuple[str, list[str]]] = []

    def split(members: list[tuple[int, str]], depth: int, prefix: str) -> None:
        if not members:
            return
        if len(members) <= unit_size or depth == _HASH_BITS:
            out.append((prefix, sorted(i for _, i in members)))
            return
        bit = _HASH_BITS - 1 - depth
        split([m for m in members if not (m[0] >> bit) & 1], depth + 1, prefix + "0")
        split([m for m in members if (m[0] >> bit) & 1], depth + 1, prefix + "1")

    split(keyed, 0, "b")
    return out
