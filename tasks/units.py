"""Work-unit membership by hash buckets of source ids: stable when a dataset grows."""
from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

_HASH_BITS = 64


def _id_bits(source_id: str) -> int:
    return int.from_bytes(hashlib.sha256(source_id.encode("utf-8")).digest()[:8], "big")


def bucket_bits(n_ids: int, unit_size: int) -> int:
    """Bits of sha256(id) that name a bucket: the fewest giving buckets of at most unit_size ids on average."""
    if unit_size < 1:
        raise ValueError(f"unit_size must be >= 1, got {unit_size}")
    return 0 if n_ids <= unit_size else min(_HASH_BITS, math.ceil(math.log2(n_ids / unit_size)))


def hash_bucket_units(source_ids: Iterable[str], unit_size: int) -> list[tuple[str, list[str]]]:
    """[(bucket, sorted ids)]: ids grouped by the leading bucket_bits of sha256(id); empty buckets left out.

    Why not consecutive chunks of the sorted ids: one added id would shift every later chunk, so a re-run on
    a grown dataset would redo everything. Here a source's bucket depends only on its id and the number of
    bits, and the number of bits only grows when the dataset doubles past a power of two times unit_size:
    between those points an addition changes only the bucket it falls into, and a bucket that gains no id
    keeps exactly its members. Buckets hold unit_size / 2 .. unit_size ids on average, spread around that
    by chance (a few may hold more than unit_size).
    """
    ids = list(dict.fromkeys(source_ids))
    bits = bucket_bits(len(ids), unit_size)
    buckets: dict[str, list[str]] = {}
    for source_id in ids:
        key = format(_id_bits(source_id) >> (_HASH_BITS - bits), f"0{bits}b") if bits else ""
        buckets.setdefault("b" + key, []).append(source_id)
    return [(name, sorted(buckets[name])) for name in sorted(buckets)]
