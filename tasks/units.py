"""Work-unit membership by hash buckets of source ids: stable when a dataset grows."""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from manifests.schema import stable_hash

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
        buckets.setdefault(_bucket_of(source_id, bits), []).append(source_id)
    return [(name, sorted(buckets[name])) for name in sorted(buckets)]


def _bucket_of(source_id: str, bits: int) -> str:
    return "b" + (format(_id_bits(source_id) >> (_HASH_BITS - bits), f"0{bits}b") if bits else "")


def _plain(value: Any) -> Any:
    """The value as it reads back from JSON (tuples become lists), so stored and current fingerprints compare."""
    return json.loads(json.dumps(value, sort_keys=True))


def _pack(buckets: Mapping[str, list[str]], unit_size: int) -> list[tuple[str, list[str]]]:
    """Neighbouring buckets (in name order) merged while they fit in unit_size; a unit is named by its first bucket.

    Packing restarts at every unit boundary, so when an interrupted run's first units are committed the rest
    packs exactly as before; on a grown dataset the new sources, scattered thinly over many buckets, are
    gathered into few units instead of one tiny unit per bucket.
    """
    units: list[tuple[str, list[str]]] = []
    for name in sorted(buckets):
        if units and len(units[-1][1]) + len(buckets[name]) <= unit_size:
            units[-1][1].extend(buckets[name])
        else:
            units.append((name, list(buckets[name])))
    return [(name, sorted(ids)) for name, ids in units]


@dataclass(frozen=True)
class PlannedUnit:
    unit_id: str
    source_ids: tuple[str, ...]
    membership: str      # JSON stored with the unit's manifest part: config, split and every source's fingerprint
    kept: bool           # an already committed unit whose sources are all unchanged


def plan_split_units(fingerprints: Mapping[str, Any], unit_size: int, split: str, config_hash: str,
                     committed: Mapping[str, str | None] = {}) -> list[PlannedUnit]:
    """Units for one split: committed units whose sources are all unchanged are kept; the rest go into hash buckets.

    fingerprints: source id -> what its output depends on besides the config (e.g. its sha256), JSON-able.
    committed:    unit id -> the membership JSON stored with its manifest part (None when unknown).

    A committed unit is kept when it was made with this config and split and every source it holds is still
    here with the same fingerprint; any other committed unit is stale (the caller retires it). The sources
    not in a kept unit are grouped by hash_bucket_units' rule with the bucket bits of the whole split, and
    neighbouring buckets are packed up to unit_size (_pack): after an interruption in plan order the rest
    is planned exactly as an uninterrupted run planned it, and on a grown dataset only new sources (and
    those of stale units) are computed. New unit ids hash their members.
    """
    current = {i: _plain(fp) for i, fp in fingerprints.items()}
    kept: list[PlannedUnit] = []
    covered: set[str] = set()
    for unit_id, stored in sorted(committed.items()):
        try:
            record = json.loads(stored) if stored else None
        except ValueError:
            record = None
        if not isinstance(record, dict) or record.get("config") != config_hash or record.get("split") != split:
            continue
        sources = record.get("sources")
        if not isinstance(sources, dict) or not sources or covered & sources.keys():
            continue
        if all(i in current and current[i] == fp for i, fp in sources.items()):
            kept.append(PlannedUnit(unit_id, tuple(sorted(sources)), stored, True))
            covered |= sources.keys()
    bits = bucket_bits(len(current), unit_size)
    buckets: dict[str, list[str]] = {}
    for source_id in sorted(i for i in current if i not in covered):
        buckets.setdefault(_bucket_of(source_id, bits), []).append(source_id)
    planned = []
    for bucket, ids in _pack(buckets, unit_size):
        sources = {i: current[i] for i in ids}
        digest = stable_hash([config_hash, split, sources], 10)
        membership = json.dumps({"config": config_hash, "split": split, "sources": sources}, sort_keys=True)
        planned.append(PlannedUnit(f"{split}-{bucket}-{digest}", tuple(ids), membership, False))
    return kept + planned
