"""The prepare flow: dataset -> ingest -> align -> AUs -> shards + manifest (stage original) + rejects + report."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from tqdm import tqdm

from flows._run import (
    ConfigMismatch,
    current_run_id,
    output_lock,
    publish_report,
    record_inputs,
    require_dir,
    require_file_or_dir,
    settings_hash,
    write_run_config,
)
from manifests.reader import verify
from manifests.writer import committed_units, merge_rejects, retire_units, write_rejects_part
from tasks.align import AlignConfig
from tasks.ingest import IngestConfig, ingest_dataset, inputs_fingerprint
from tasks.prepare import AUConfig, LandmarkMode, check_au_source, plan_units, prepare_unit
from tasks.report import write_report


class PrepareSettings(BaseModel):
    """Everything a prepare run depends on; validated at the boundary and written before work starts."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(description="dataset root (RAF-DB, class folders, or a folder holding the CSV list)")
    out: str = Field(description="output root: shards/, manifest/, rejects.parquet, report.md")
    run_name: str = Field("prepare", pattern=r"^[A-Za-z0-9_-]+$", description="shard name prefix")
    ingest: IngestConfig = IngestConfig()
    align: AlignConfig = AlignConfig()
    aus: AUConfig = AUConfig()
    landmarks: LandmarkMode = Field("auto", description="68 landmarks from: auto (OpenFace CSV when it has them, "
                                                        "else the detector), openface, detector, none")
    unit_size: int = Field(256, ge=1, description="source images per work unit (one shard each)")
    device: str | None = Field(None, description="cuda / cpu; default: CUDA when present")

    @field_validator("dataset", "out")
    @classmethod
    def _absolute(cls, value: str) -> str:
        # Relative paths would hash the same from two working directories and merge two datasets.
        return str(Path(value).expanduser().resolve())

    @model_validator(mode="after")
    def _check_paths(self) -> "PrepareSettings":
        if self.aus.path is not None:
            self.aus = dataclasses.replace(self.aus, path=str(Path(self.aus.path).expanduser().resolve()))
        dataset = Path(self.dataset)
        root = dataset.parent if dataset.suffix.lower() == ".csv" else dataset
        out = Path(self.out)
        if out == root or root in out.parents:
            raise ValueError(f"--out {out} is inside the dataset root {root}: a re-run would ingest its own outputs "
                             f"(shards, contact sheet) as images; choose an --out outside the dataset")
        return self

    def config_hash(self) -> str:
        """Hash of what decides the output; device and output path excluded, so a resumed run matches."""
        return settings_hash(self, exclude={"device", "out"})


def check_prepare_inputs(settings: PrepareSettings) -> None:
    """Refuse, before anything is written, a run whose inputs are missing (StartError names the option)."""
    require_dir(settings.dataset, "the dataset", "give the dataset root (RAF-DB, class folders, or the CSV list's folder)")
    csv = settings.ingest.csv_path
    if csv is not None and not Path(csv).expanduser().is_absolute() and Path(settings.dataset).is_dir():
        csv = str(Path(settings.dataset) / csv)  # a relative --csv is read under the dataset root, as ingest does
    for value, what in ((csv, "--csv"), (settings.aus.path, "--aus")):
        if value is not None:
            require_file_or_dir(value, what)


@task(name="prepare-unit", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def prepare_unit_task(unit, out: str, run_name: str, run_id: str, align: AlignConfig, aus: AUConfig,
                      landmarks: str, device: str | None) -> dict:
    return prepare_unit(unit, out, run_name=run_name, run_id=run_id, align=align, aus=aus, landmarks=landmarks,
                        device=device)


@flow(name="prepare", log_prints=True)
def prepare(settings: PrepareSettings) -> dict:
    """Prepare a dataset for expansion; re-running on the same output resumes and never duplicates."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    # 1. Check the inputs and ingest (labels, splits, source ids and hashes) before writing anything, so a
    #    typo never leaves a run_config.json behind; then lock the output and record the settings.
    check_prepare_inputs(settings)
    ingested = ingest_dataset(settings.dataset, settings.ingest)
    au_note = check_au_source(ingested.records, settings.aus)  # a useless --aus is refused before any work
    config_hash = settings.config_hash()
    out = settings.out
    with output_lock(out, "prepare"):
        write_run_config(out, "prepare", settings, config_hash)
        return _prepare_locked(settings, ingested, au_note, config_hash, timings, t0)


def _prepare_locked(settings: PrepareSettings, ingested, au_note: str | None, config_hash: str,
                    timings: dict[str, float], t0: float) -> dict:
    logger = get_run_logger()
    out = settings.out

    # 2. Bad dataset entries become rejects.
    write_rejects_part(out, "ingest", ingested.rejects)
    logger.info(ingested.summary())
    for warning in ingested.warnings:
        logger.warning(warning)
    fingerprint = inputs_fingerprint(ingested.records)
    previous = record_inputs(out, fingerprint, len(ingested.records))
    timings["ingest"] = time.perf_counter() - t0

    # 3. Cut into work units (one shard + one manifest part each). Units are hash buckets of source ids
    #    whose ids hash their inputs: on a grown or edited dataset, units that no longer match are
    #    retired and redone, the rest are skipped (an incremental update, correct by construction).
    units = plan_units(ingested.records, settings.unit_size, config_hash, committed_units(out))
    retired = retire_units(out, {u.unit_id for u in units})
    logger.info(f"{len(units)} work units of up to {settings.unit_size} images")
    if previous not in (None, fingerprint):
        logger.warning(f"the dataset changed since the last run on {out} (inputs {previous} -> {fingerprint}): "
                       f"{len(retired)} committed units no longer match and were retired; their sources and the new "
                       f"ones are prepared now, every other unit is kept")

    # 4. Align + read AUs + commit, unit by unit; committed units are skipped.
    t1 = time.perf_counter()
    run_id = current_run_id()
    results = []
    for unit in tqdm(units, desc="prepare units", unit="unit"):
        result = prepare_unit_task(unit, out, settings.run_name, run_id, settings.align, settings.aus,
                                   settings.landmarks, settings.device)
        results.append(result)
        status = ("skipped (already committed)" if result["skipped"]
                  else f"{result['written']} written, rejects {result['rejected']}")
        logger.info(f"unit {unit.unit_id}: {status}")
    timings["align + AUs + write"] = time.perf_counter() - t1

    # 5. Gather rejects, check the output, write the report.
    merge_rejects(out)
    check = verify(out)
    timings["total"] = time.perf_counter() - t0
    notes = [f"config hash {config_hash}", f"inputs {fingerprint} ({len(ingested.records)} sources)",
             f"{sum(r['skipped'] for r in results)} of {len(units)} units were already committed, "
             f"{len(retired)} stale units retired",
             *([au_note] if au_note else []),
             f"verify: {check.summary().splitlines()[0]}", *ingested.warnings]
    report_md, sheet = write_report(out, "Prepare run", timings, notes=notes)
    publish_report(report_md.read_text(), key="prepare-report")
    summary = {"out": out, "units": len(units), "written": sum(r["written"] for r in results),
               "skipped_units": sum(r["skipped"] for r in results), "retired_units": len(retired),
               "inputs_fingerprint": fingerprint, "verify_ok": check.ok,
               "report": str(report_md), "contact_sheet": str(sheet)}
    if not check.ok:
        raise RuntimeError(f"output failed verification:\n{check.summary()}")
    return summary


__all__ = ["PrepareSettings", "prepare", "check_prepare_inputs", "ConfigMismatch"]
