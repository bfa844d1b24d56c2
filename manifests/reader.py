"""Read the manifest as one table, and verify that manifest and shards agree byte for byte."""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from manifests.schema import MANIFEST_SCHEMA, REJECTS_SCHEMA, sha256_bytes
from manifests.atomic import TMP_PREFIX
from manifests.shards import list_members
from manifests.writer import MANIFEST_DIR, REJECTS_DIR, REJECTS_FILE, SHARDS_DIR


def read_manifest(out_root: str | os.PathLike, filter: ds.Expression | None = None, columns: list[str] | None = None) -> pa.Table:
    """Every committed part as one table (empty table with the schema when nothing is committed)."""
    parts = sorted((Path(out_root) / MANIFEST_DIR).glob("part-*.parquet"))
    if not parts:
        table = MANIFEST_SCHEMA.empty_table()
        return table.select(columns) if columns else table
    dataset = ds.dataset([str(p) for p in parts], schema=MANIFEST_SCHEMA, format="parquet")
    table = dataset.to_table(filter=filter, columns=columns)
    return table.sort_by([("shard", "ascending"), ("offset", "ascending")]) if {"shard", "offset"} <= set(table.column_names) else table


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
    table = read_manifest(out_root)
    report.rows = table.num_rows
    ids = Counter(table.column("sample_id").to_pylist())
    report.errors += [f"sample_id {sid} appears {n} times" for sid, n in sorted(ids.items()) if n > 1]

    by_shard: dict[str, list[dict]] = {}
    for row in table.select(["sample_id", "shard", "offset", "size", "sha256"]).to_pylist():
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
                    report.errors.append(f"{rel}: member {name} not at offset {row['offset']} size {row['size']} (tar has {members.get(name)})")
                    continue
                f.seek(row["offset"])
                if sha256_bytes(f.read(row["size"])) != row["sha256"]:
                    report.errors.append(f"{rel}: member {name} bytes do not match the manifest's sha256")

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
