"""Commit a work unit: its shard first, then its manifest part; rejects kept per unit and merged at the end."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from manifests.atomic import atomic_open
from manifests.schema import (
    EDIT_KINDS,
    EMOTIONS,
    LABEL_KINDS,
    LANDMARK_SOURCES,
    LATER_COLUMNS,
    MANIFEST_SCHEMA,
    N_AUS,
    N_LANDMARKS,
    QUALITY_FIELDS,
    REJECTS_SCHEMA,
    SPLITS,
    STAGES,
)
from manifests.shards import ShardSample, write_shard

MANIFEST_DIR = "manifest"
SHARDS_DIR = "shards"
REJECTS_DIR = "rejects"
REJECTS_FILE = "rejects.parquet"

UNIT_MEMBERSHIP_KEY = "singanimation.unit_membership"

# The unit id at the end of a shard name: <split>-<bucket or index>-<10 hex digest>.
_UNIT_SHARD = re.compile(r"-(?P<unit>(?:train|test)-[0-9a-z]+-[0-9a-f]{10})$")

# Filled by the writer from the shard itself; callers never set them.
_LOCATION_COLUMNS = ("shard", "offset", "size", "sha256")


@dataclass
class Sample:
    """One image to commit: the PNG bytes plus its manifest fields (all but the shard location)."""
    png: bytes
    row: dict[str, Any]
    meta: dict[str, Any] | None = field(default=None)


def shard_relpath(split: str, run_name: str, unit_id: str) -> str:
    return f"{SHARDS_DIR}/{split}/{run_name}-{unit_id}.tar"


def part_path(out_root: str | os.PathLike, unit_id: str) -> Path:
    return Path(out_root) / MANIFEST_DIR / f"part-{unit_id}.parquet"


class ManifestError(ValueError):
    """A manifest part that cannot be read as the manifest schema; the message names the file."""


def part_problem(path: str | os.PathLike) -> str | None:
    """Why a manifest part is unusable (not Parquet, truncated, a column missing or of another type), or None."""
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        return f"cannot be read as Parquet ({type(exc).__name__}: {exc})"
    missing = [f.name for f in MANIFEST_SCHEMA if f.name not in schema.names and f.name not in LATER_COLUMNS]
    if missing:
        return f"lacks the required column(s) {missing}"
    wrong = [f"{f.name} is {schema.field(f.name).type}, expected {f.type}" for f in MANIFEST_SCHEMA
             if f.name in schema.names and not schema.field(f.name).type.equals(f.type)]
    return f"has columns of the wrong type: {'; '.join(wrong)}" if wrong else None


def unit_committed(out_root: str | os.PathLike, unit_id: str) -> bool:
    """A unit counts as written once its manifest part exists, reads back, and its shard holds every row's bytes.

    The part is written after its shard, so a part alone is normally proof. A part that is damaged
    (truncated, not Parquet, a column missing) or whose shard is missing or shorter than the rows say
    is treated as uncommitted: the unit is redone and both files are replaced.
    """
    path = part_path(out_root, unit_id)
    if not path.is_file() or part_problem(path) is not None:
        return False
    try:
        table = pq.read_table(path, columns=["shard", "offset", "size"])
    except (pa.ArrowException, OSError):
        return False
    ends: dict[str, int] = {}
    for row in table.to_pylist():
        if row["shard"] is None or row["offset"] is None or row["size"] is None:
            return False
        ends[row["shard"]] = max(ends.get(row["shard"], 0), row["offset"] + row["size"])
    for rel, end in ends.items():
        shard = Path(out_root) / rel
        if not shard.is_file() or shard.stat().st_size < end:
            return False
    return True


def atomic_write_table(table: pa.Table, path: str | os.PathLike) -> Path:
    """Parquet written to a temp name, fsynced, then renamed into place."""
    with atomic_open(path) as f:
        pq.write_table(table, f)
    return Path(path)


def validate_row(row: dict[str, Any]) -> None:
    """Refuse rows that break the contracts, naming the sample and the field."""
    sid = row.get("sample_id")
    def bad(msg: str) -> ValueError:
        return ValueError(f"manifest row {sid!r}: {msg}")
    if not sid or "." in sid or "/" in sid:
        raise bad("sample_id must be non-empty without '.' or '/'")
    for col, allowed in (("split", SPLITS), ("stage", STAGES), ("edit_kind", EDIT_KINDS), ("label_kind", LABEL_KINDS)):
        if row.get(col) not in allowed:
            raise bad(f"{col}={row.get(col)!r} not in {allowed}")
    if row.get("label") not in EMOTIONS:
        raise bad(f"label={row.get('label')!r} is not an emotion id {sorted(EMOTIONS)}")
    for col in ("au_source", "au_target"):
        value = row.get(col)
        if value is not None and len(value) != N_AUS:
            raise bad(f"{col} has {len(value)} values, expected {N_AUS}")
    if row.get("landmark_source") not in LANDMARK_SOURCES:
        raise bad(f"landmark_source={row.get('landmark_source')!r} not in {LANDMARK_SOURCES}")
    landmarks = row.get("landmarks")
    if (landmarks is None) != (row["landmark_source"] == "none"):
        raise bad(f"landmark_source={row['landmark_source']!r} but landmarks is "
                  f"{'null' if landmarks is None else 'set'} (null exactly when the source is 'none')")
    if landmarks is not None and len(landmarks) != 2 * N_LANDMARKS:
        raise bad(f"landmarks has {len(landmarks)} values, expected {2 * N_LANDMARKS} (x, y of {N_LANDMARKS} points)")
    if row["split"] == "test" and row["stage"] != "original":
        raise bad("the test split is never expanded: only originals may be in it")
    unknown = set(row.get("quality") or {}) - set(QUALITY_FIELDS)
    if unknown:
        raise bad(f"unknown quality fields {sorted(unknown)}")


def _check_utf8(row: dict[str, Any]) -> None:
    """Parquet strings are UTF-8: a str carrying surrogates (an undecodable file name) must fail before any write."""
    for name, value in row.items():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as err:
                raise ValueError(f"manifest row {row.get('sample_id')!r}: {name} is not valid UTF-8 ({err})") from None


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    full = []
    for row in rows:
        validate_row(row)
        r = {name: row.get(name) for name in MANIFEST_SCHEMA.names}
        quality = row.get("quality") or {}
        r["quality"] = {name: quality.get(name) for name in QUALITY_FIELDS}
        full.append(r)
    return pa.Table.from_pylist(full, schema=MANIFEST_SCHEMA)


def commit_unit(
    out_root: str | os.PathLike,
    *,
    split: str,
    run_name: str,
    unit_id: str,
    samples: Iterable[Sample],
    rejects: list[dict[str, str]] | None = None,
    membership: str | None = None,
) -> int:
    """Write one unit: shard (atomic), then its rejects part, then its manifest part (the commit point).

    membership: JSON naming the unit's sources (tasks.units), stored in the part's Parquet metadata so that a
    later run can tell whether the unit still matches its inputs (committed_units).
    Returns the number of samples written. A crash before the manifest part leaves the unit uncommitted,
    and a re-run writes it again; the shard's bytes are deterministic, so nothing is duplicated.
    """
    out_root = Path(out_root)
    samples = list(samples)
    for s in samples:
        overlap = set(_LOCATION_COLUMNS) & set(s.row)
        if overlap:
            raise ValueError(f"sample {s.row.get('sample_id')!r}: {sorted(overlap)} are set by the writer")
        if s.row.get("split") != split:
            raise ValueError(f"sample {s.row.get('sample_id')!r} has split {s.row.get('split')!r}, unit is {split!r}")
        validate_row(s.row)  # before the shard: a bad row must not leave a shard without its part
        _check_utf8(s.row)
    rel = shard_relpath(split, run_name, unit_id)
    rows = []
    try:
        if samples:
            locations = write_shard(out_root / rel, [ShardSample(s.row["sample_id"], s.png, s.meta) for s in samples])
            for s, loc in zip(samples, locations):
                rows.append({**s.row, "shard": rel, "offset": loc.offset, "size": loc.size, "sha256": loc.sha256})
        table = rows_to_table(rows)
        if membership is not None:
            table = table.replace_schema_metadata({UNIT_MEMBERSHIP_KEY: membership})
        write_rejects_part(out_root, unit_id, rejects or [])
        atomic_write_table(table, part_path(out_root, unit_id))
    except Exception:
        if not unit_committed(out_root, unit_id):  # the part is the commit point: no part, no shard
            (out_root / rel).unlink(missing_ok=True)
        raise
    return len(rows)


def committed_units(out_root: str | os.PathLike) -> dict[str, str | None]:
    """Unit id -> the membership JSON stored with its manifest part (None when absent or unreadable)."""
    units: dict[str, str | None] = {}
    for part in sorted((Path(out_root) / MANIFEST_DIR).glob("part-*.parquet")):
        unit_id = part.name[len("part-"):-len(".parquet")]
        try:
            metadata = pq.read_schema(part).metadata or {}
        except Exception:  # a damaged part is not a usable commit: its unit is planned again
            metadata = {}
        value = metadata.get(UNIT_MEMBERSHIP_KEY.encode())
        units[unit_id] = value.decode() if value else None
    return units


def retire_units(out_root: str | os.PathLike, keep: set[str]) -> list[str]:
    """Remove every committed unit whose id is not in `keep` (the current plan); return their ids, sorted.

    Unit ids hash their inputs, so a unit that gained, lost or changed a source has a new id and its old
    part would duplicate or keep stale rows. The manifest part goes first (the unit is then uncommitted),
    then its rejects part and shard; shards of no planned unit that have no part (left by a crash
    between shard and part) are removed too. Interrupted midway, the next run finishes the job.
    """
    out_root = Path(out_root)
    retired = []
    for part in sorted((out_root / MANIFEST_DIR).glob("part-*.parquet")):
        unit_id = part.name[len("part-"):-len(".parquet")]
        if unit_id in keep:
            continue
        part.unlink()
        (out_root / REJECTS_DIR / part.name).unlink(missing_ok=True)
        retired.append(unit_id)
    for shard in sorted((out_root / SHARDS_DIR).glob("*/*.tar")):
        match = _UNIT_SHARD.search(shard.stem)  # <run_name>-<unit_id>; run names may hold '-' too
        if match and match["unit"] not in keep and not unit_committed(out_root, match["unit"]):
            shard.unlink()
    return retired


def _utf8_text(value: Any) -> str:
    """str(value), with bytes Python could not decode (lone surrogates from file names) shown as \\xNN escapes."""
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text


def rejects_table(rows: list[dict[str, str]]) -> pa.Table:
    # A reject row must never fail the run it reports on, whatever the name it carries.
    clean = [{k: _utf8_text(r.get(k, "")) for k in REJECTS_SCHEMA.names} for r in rows]
    return pa.Table.from_pylist(clean, schema=REJECTS_SCHEMA)


def write_rejects_part(out_root: str | os.PathLike, name: str, rows: list[dict[str, str]]) -> Path:
    return atomic_write_table(rejects_table(rows), Path(out_root) / REJECTS_DIR / f"part-{name}.parquet")


def merge_rejects(out_root: str | os.PathLike) -> Path:
    """Gather every rejects part into `rejects.parquet` (sorted, so re-runs give the same file)."""
    out_root = Path(out_root)
    parts = sorted((out_root / REJECTS_DIR).glob("part-*.parquet"))
    tables = [pq.read_table(p, schema=REJECTS_SCHEMA) for p in parts]
    table = pa.concat_tables(tables) if tables else REJECTS_SCHEMA.empty_table()
    if table.num_rows:
        table = table.sort_by([("stage", "ascending"), ("source_id", "ascending"), ("reason", "ascending")])
    return atomic_write_table(table, out_root / REJECTS_FILE)
