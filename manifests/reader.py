"""Read the manifest as one table, and verify that manifest and shards agree byte for byte."""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from manifests.atomic import TMP_PREFIX
from manifests.schema import MANIFEST_SCHEMA, REJECTS_SCHEMA, sha256_bytes
from manifests.shards import list_members
from manifests.writer import MANIFEST_DIR, REJECTS_DIR, REJECTS_FILE, SHARDS_DIR, ManifestError, part_problem

# Parquet readers before pyarrow 26 cannot read a null fixed-size list (apache/arrow#35692), and the AU and landmark
# columns are such lists, null where a row has none: pyproject asks for >= 26; read_manifest names the cause when an
# older pyarrow is imported anyway (e.g. one preinstalled on a GPU image).
PYARROW_READS_NULL_FIXED_LISTS = 26


def manifest_parts(out_root: str | os.PathLike) -> list[Path]:
    return sorted((Path(out_root) / MANIFEST_DIR).glob("part-*.parquet"))


def read_manifest(out_root: str | os.PathLike, filter: ds.Expression | None = None, columns: list[str] | None = None) -> pa.Table:
    """Every committed part as one table (empty table with the schema when nothing is committed).

    Raises ManifestError naming the file when a part is not Parquet, is truncated, or lacks a column
    of the schema (pyarrow would otherwise fill the missing column with nulls).
    """
    parts = manifest_parts(out_root)
    if not parts:
        table = MANIFEST_SCHEMA.empty_table()
        return table.select(columns) if columns else table
    bad = [f"{p}: {problem}" for p in parts if (problem := part_problem(p))]
    if bad:
        raise ManifestError(f"{len(bad)} damaged manifest part(s): {'; '.join(bad[:3])}; "
                            f"run `singanimation verify {out_root}` for the full list")
    dataset = ds.dataset([str(p) for p in parts], schema=MANIFEST_SCHEMA, format="parquet")
    try:
        table = dataset.to_table(filter=filter, columns=columns)
    except (pa.ArrowException, OSError) as exc:  # a footer that reads but data pages that do not
        if (int(pa.__version__.split(".")[0]) < PYARROW_READS_NULL_FIXED_LISTS
                and "Expected all lists to be of size" in str(exc)):
            raise ManifestError(f"pyarrow {pa.__version__} cannot read the manifest's null AU / landmark lists "
                                f"(apache/arrow#35692, fixed in pyarrow {PYARROW_READS_NULL_FIXED_LISTS}): "
                                f"pip install 'pyarrow>={PYARROW_READS_NULL_FIXED_LISTS}'") from exc
        raise ManifestError(f"the manifest of {out_root} cannot be read ({exc}); "
                            f"run `singanimation verify {out_root}` to find the damaged part") from exc
    return (table.sort_by([("shard", "ascending"), ("offset", "ascending")]) if {"shard", "offset"} <= set(table.column_names)
            else table)


def read_rejects(out_root: str | os.PathLike) -> pa.Table:
    """The merged rejects table, or the parts gathered so far while a run is still going."""
    out_root = Path(out_root)
    if (out_root / REJECTS_FILE).is_file():
        return pq.read_table(out_root / REJECTS_FILE, schema=REJECTS_SCHEMA)
    parts = sorted((out_root / REJECTS_DIR).glob("part-*.parquet"))
    tables = [pq.read_table(p, schema=REJECTS_SCHEMA) for p in parts]
    return pa.concat_tables(tables) if tables else REJECTS_SCHEMA.empty_table()


@dataclass
class VerifyReport:
    rows: int = 0
    shards: int = 0
    errors: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)      # shards with no manifest part referencing them
    leftovers: list[str] = field(default_factory=list)    # temp files of an interrupted write (harmless)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.orphans

    def summary(self) -> str:
        lines = [f"{'OK' if self.ok else 'FAILED'}: {self.rows} rows in {self.shards} shards"]
        lines += [f"error: {e}" for e in self.errors[:50]]
        if len(self.errors) > 50:
            lines.append(f"... and {len(self.errors) - 50} more errors")
        lines += [f"orphan shard (no manifest part): {o}" for o in self.orphans]
        lines += [f"leftover temp file (interrupted write, safe to delete): {t}" for t in self.leftovers]
        return "\n".join(lines)


def verify(out_root: str | os.PathLike) -> VerifyReport:
    """Check every row's member exists at its offset with its size and sha256, ids are unique, no orphans."""
    out_root = Path(out_root)
    report = VerifyReport()
    if not (out_root / MANIFEST_DIR).is_dir():
        report.errors.append(f"{out_root} has no {MANIFEST_DIR}/ folder: not an output root")
        return report
    good = []
    for part in manifest_parts(out_root):
        rel_part = part.relative_to(out_root).as_posix()
        problem = part_problem(part)
        if problem is None:
            try:
                good.append(pq.read_table(part, schema=MANIFEST_SCHEMA))
            except (pa.ArrowException, OSError) as exc:
                problem = f"cannot be read as Parquet ({type(exc).__name__}: {exc})"
        if problem:
            report.errors.append(f"manifest part {rel_part} {problem}; delete it and re-run the flow to redo that unit")
    table = pa.concat_tables(good) if good else MANIFEST_SCHEMA.empty_table()
    report.rows = table.num_rows
    ids = Counter(table.column("sample_id").to_pylist())
    report.errors += [f"sample_id {sid} appears {n} times" for sid, n in sorted(ids.items()) if n > 1]

    by_shard: dict[str, list[dict]] = {}
    for row in table.to_pylist():
        by_shard.setdefault(row["shard"], []).append(row)
    report.shards = len(by_shard)
    for rel, rows in sorted(by_shard.items()):
        path = out_root / rel
        if not path.is_file():
            report.errors.append(f"shard {rel} is missing ({len(rows)} rows point at it)")
            continue
        try:
            members = list_members(path)
        except Exception as exc:  # a damaged tar is a finding, not a crash
            report.errors.append(f"shard {rel} cannot be read as tar: {exc}")
            continue
        with open(path, "rb") as f:
            for row in rows:
                name = f"{row['sample_id']}.png"
                if members.get(name) != (row["offset"], row["size"]):
                    report.errors.append(f"{rel}: member {name} not at offset {row['offset']} size {row['size']} "
                                         f"(tar has {members.get(name)})")
                    continue
                f.seek(row["offset"])
                if sha256_bytes(f.read(row["size"])) != row["sha256"]:
                    report.errors.append(f"{rel}: member {name} bytes do not match the manifest's sha256")
                sidecar = members.get(f"{row['sample_id']}.json")
                if sidecar is not None:
                    f.seek(sidecar[0])
                    report.errors += [f"{rel}: {row['sample_id']}.json {e}" for e in sidecar_mismatches(f.read(sidecar[1]), row)]
        known = {f"{row['sample_id']}{ext}" for row in rows for ext in (".png", ".json")}
        report.errors += [f"{rel}: member {name} has no manifest row" for name in sorted(set(members) - known)]

    report.errors += [f"shard {rel} is referenced by rows of two parts" for rel in _shards_in_two_parts(good)]
    shards_dir = out_root / SHARDS_DIR
    if shards_dir.is_dir():
        for path in sorted(shards_dir.rglob("*")):
            if not path.is_file():
                continue
            rel = path.relative_to(out_root).as_posix()
            if path.name.startswith(TMP_PREFIX):
                report.leftovers.append(rel)
            elif path.suffix == ".tar" and rel not in by_shard:
                report.orphans.append(rel)
    return report


def _shards_in_two_parts(tables: list[pa.Table]) -> list[str]:
    seen: Counter = Counter()
    for table in tables:
        seen.update(set(table.column("shard").to_pylist()))
    return sorted(rel for rel, n in seen.items() if n > 1)


def sidecar_mismatches(blob: bytes, row: dict) -> list[str]:
    """How a sample's `.json` sidecar disagrees with its manifest row (fields of both; floats to float32 precision)."""
    try:
        meta = json.loads(blob)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [f"is not JSON ({exc})"]
    if not isinstance(meta, dict):
        return [f"is a {type(meta).__name__}, not a JSON object"]
    problems = []
    for key in sorted(set(meta) & set(row)):
        want, got = row[key], meta[key]
        if _same(want, got):
            continue
        problems.append(f"says {key}={_short(got)}, the manifest says {_short(want)}")
    return problems


def _same(want, got) -> bool:
    if want is None or got is None or isinstance(want, str) or isinstance(got, str):
        return want == got
    try:
        a, b = np.asarray(want, np.float64), np.asarray(got, np.float64)
    except (TypeError, ValueError):
        return want == got
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-6, atol=1e-7))


def _short(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
