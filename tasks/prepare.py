"""Prepare stage: cut sources into work units; per unit load, align, read AUs, and commit shard + manifest part."""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal, Mapping, get_args

import numpy as np

from manifests.dataset import encode_png_rgb
from manifests.schema import make_sample_id, stable_hash
from manifests.writer import Sample, commit_unit, unit_committed
from tasks.align import OUT_OF_FRAME_WARN, AlignConfig, AlignedFace, FaceAligner
from tasks.errors import RejectError
from tasks.imageio import load_image_rgb
from tasks.ingest import SourceRecord
from tasks.landmarks import (
    LandmarkDetector,
    aligned_box_frac,
    check_landmarks,
    flatten_landmarks,
    landmarks_to_crop,
)
from tasks.openface import (
    AUPickle,
    AUReading,
    OpenFaceConfig,
    find_au_file,
    load_ganimation_pkl,
    read_openface_csv,
)
from tasks.units import plan_split_units

PACKAGE_VERSION = "0.1.0"

# Where each face's 68 landmarks come from: "auto" = the OpenFace CSV's points (of the row the AUs
# came from) when it has them, else the detector on the aligned crop, else none (the face is kept without
# landmarks; CSV points off the crop are still a reject); "openface" = only the CSV
# (landmarks_missing when it has none); "detector" = always the detector; "none" = no landmarks.
LandmarkMode = Literal["auto", "openface", "detector", "none"]
LANDMARK_MODES: tuple[str, ...] = get_args(LandmarkMode)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AUConfig:
    """Where AUs come from and what happens to images without them.

    path:    a folder of OpenFace CSVs (matched by image stem through openface.csv_patterns), or
             GANimation's aus_openface.pkl; None means no AUs (au_source null for every image).
    missing: "reject" an image with no AU file (default), or "keep" it with au_source null.
    """

    path: str | None = None
    missing: Literal["reject", "keep"] = "reject"
    openface: OpenFaceConfig = field(default_factory=OpenFaceConfig)


@dataclass(frozen=True)
class WorkUnit:
    unit_id: str
    split: str
    records: tuple[SourceRecord, ...]
    shared_stems: frozenset[str] = frozenset()  # file stems of this unit's sources that other sources share too
    membership: str = ""                          # JSON stored with the unit's part (tasks.units)


class AUSourceError(ValueError):
    """--aus cannot serve this dataset at all (missing, a single CSV, or matching no image): said before any work."""


def image_stem(record: SourceRecord) -> str:
    return Path(record.path).stem


def shared_stems(records: list[SourceRecord]) -> frozenset[str]:
    """File stems carried by more than one source (e.g. Happiness/face.png and Sadness/face.png)."""
    counts = Counter(image_stem(r) for r in records)
    return frozenset(stem for stem, n in counts.items() if n > 1)


def plan_units(records: list[SourceRecord], unit_size: int, config_hash: str,
               committed: Mapping[str, str | None] = {}) -> list[WorkUnit]:
    """Work units per split (tasks.units.plan_split_units), never mixing splits.

    committed: unit id -> stored membership (manifests.writer.committed_units) of the output being resumed.
    A committed unit whose sources are all unchanged (same sha256 and same shared-stem status, which
    decides AU matching) is kept and skipped; the other sources (new, changed, or from a stale unit) go
    into hash buckets of about unit_size / 2 .. unit_size. Committed units not in the plan are stale:
    the flow retires them (manifests.writer.retire_units).
    """
    shared = shared_stems(records)
    units = []
    for split in ("train", "test"):
        by_id = {r.source_id: r for r in records if r.split == split}
        fingerprints = {i: [r.sha256, image_stem(r) in shared] for i, r in by_id.items()}
        for planned in plan_split_units(fingerprints, unit_size, split, config_hash, committed):
            chunk = tuple(by_id[i] for i in planned.source_ids)
            mine = frozenset(image_stem(r) for r in chunk) & shared
            units.append(WorkUnit(planned.unit_id, split, chunk, mine, planned.membership))
    return units


@functools.lru_cache(maxsize=2)
def _aligner(config: AlignConfig, device: str | None) -> FaceAligner:
    # MTCNN is built once per process and reused across units.
    return FaceAligner(config, device=device)


@functools.lru_cache(maxsize=4)
def _pkl_aus(path: str, mtime_ns: int) -> AUPickle | RejectError:
    # One load per file version and process; a failed load is cached too, not retried per image.
    try:
        return load_ganimation_pkl(path)
    except RejectError as err:
        return err


@functools.lru_cache(maxsize=4)
def _detector(align: AlignConfig) -> LandmarkDetector:
    """The landmark detector for crops made with these align settings (the model itself loads once per
    process): MTCNN crops put the face in a known box; pre-aligned crops (mode none) are framed their
    own way, so dlib's face detector finds the box."""
    if align.mode == "none":
        return LandmarkDetector(face_box="find")
    return LandmarkDetector(box_frac=aligned_box_frac(align.margin))


def load_au_pickle(path: str | os.PathLike) -> AUPickle:
    """The (cached) aus_openface.pkl; RejectError, also cached, when the file as a whole is unusable."""
    path = Path(path)
    try:
        mtime_ns = path.stat().st_mtime_ns
    except OSError:
        mtime_ns = -1
    table = _pkl_aus(str(path), mtime_ns)
    if isinstance(table, RejectError):
        raise table
    return table


def check_au_source(records: list[SourceRecord], config: AUConfig) -> str | None:
    """Refuse an --aus that cannot serve this dataset, before any work; return a note on how many images it covers.

    Refused: a path that does not exist, a single CSV (AUs come as one CSV per image in a folder, or as
    aus_openface.pkl), and a folder or pickle that matches none of the images (a typo, or the wrong folder).
    """
    if config.path is None or not records:
        return None
    source = Path(config.path)
    if not source.exists():
        raise AUSourceError(f"--aus {source} does not exist")
    if source.is_file() and source.suffix.lower() == ".csv":
        raise AUSourceError(f"--aus {source} is a single CSV; AUs are read from a folder of OpenFace CSVs, one per "
                            f"image (<image stem>.csv), or from GANimation's aus_openface.pkl: pass the folder")
    if source.is_file() and source.suffix.lower() not in (".pkl", ".pickle"):
        raise AUSourceError(f"--aus {source} is neither a folder of OpenFace CSVs nor an aus_openface.pkl")
    if source.is_file():
        try:
            table = load_au_pickle(source)
        except RejectError:
            return None  # every image gets this reject with its reason; the run says so per image
        matched = sum(table.lookup(_pkl_keys(r)) is not None for r in records)
    else:
        matched = sum(_au_csv_for(r, source, config, frozenset()) is not None for r in records)
    if matched == 0:
        example = records[0]
        tried = ", ".join(p.format(stem=image_stem(example)) for p in config.openface.csv_patterns)
        what = f"has no entry for any of the {len(records)} images (e.g. {image_stem(example)!r})" if source.is_file() \
            else f"holds no AU file for any of the {len(records)} images (for {example.source_id} it looked for {tried})"
        raise AUSourceError(f"--aus {source} {what}; check the path, or leave --aus out to prepare without AUs")
    return f"--aus {source} covers {matched} of {len(records)} images"


def _pkl_keys(record: SourceRecord) -> list[str]:
    stem = image_stem(record)
    return [record.source_id, stem, stem.removesuffix("_aligned")]


def _au_csv_for(record: SourceRecord, source: Path, config: AUConfig, shared: frozenset[str]) -> Path | None:
    """The record's AU CSV: by relative path (<aus>/<source id>.csv) first; by file stem only when that stem is
    not shared with another image (RejectError au_file_ambiguous when it is and no relative-path file exists)."""
    relative = find_au_file(PurePosixPath(record.source_id).name, source / PurePosixPath(record.source_id).parent,
                            config.openface.csv_patterns) if "/" in record.source_id else None
    if relative is not None:
        return relative
    stem = image_stem(record)
    found = find_au_file(stem, source, config.openface.csv_patterns)
    if found is not None and stem in shared:
        raise RejectError("openface", "au_file_ambiguous",
                          f"{found.name} in {source} could belong to several images named {stem!r}; put each one's "
                          f"AU file at {source}/<source id>.csv (here {source / record.source_id}.csv)")
    return found


def read_source_aus(record: SourceRecord, face: AlignedFace, config: AUConfig,
                    shared: frozenset[str] = frozenset()) -> tuple[list[float] | None, float | None, AUReading | None]:
    """AUs (0..1, fixed order) for one source, the OpenFace confidence and the CSV reading (None for a pkl or no
    AUs); RejectError when unusable."""
    if config.path is None:
        return None, None, None
    stem = image_stem(record)
    source = Path(config.path)
    if source.suffix == ".pkl":
        table = load_au_pickle(source)
        found = table.lookup(_pkl_keys(record))
        if found is not None and stem in shared and table.lookup([record.source_id]) is None:
            raise RejectError("openface", "au_file_ambiguous",
                              f"{source.name}'s entry {stem!r} could belong to several images with that name; key the "
                              f"entries by source id (here {record.source_id!r})")
        if isinstance(found, RejectError):
            raise found
        if found is not None:
            return [float(v) for v in found], None, None
        if config.missing == "keep":
            return None, None, None
        raise RejectError("openface", "au_file_missing", f"{source.name} has no entry for {stem!r}")
    csv_path = _au_csv_for(record, source, config, shared)
    if csv_path is None:
        if config.missing == "keep":
            return None, None, None
        patterns = ", ".join(p.format(stem=stem) for p in config.openface.csv_patterns)
        raise RejectError("openface", "au_file_missing", f"no AU CSV for {record.source_id} in {source} (tried {patterns})")
    reading = read_openface_csv(csv_path, config.openface, face_landmarks5=face.landmarks5_src)
    return [float(v) for v in reading.values], reading.confidence, reading


def source_landmarks(
    face: AlignedFace, reading: AUReading | None, mode: str, detector: LandmarkDetector | None
) -> tuple[np.ndarray | None, str]:
    """The face's 68 points in crop pixels ([68, 2] float32, or None) and their landmark_source.

    OpenFace's points are in the pixels of the image it read (the source image, also with
    align="none"): they go through the same transform that made the crop (which also undoes a
    centre crop and resize) and must then lie on the crop, or the CSV describes another image:
    RejectError (stage landmarks). mode: see LandmarkMode; detector: needed for auto and detector.
    """
    if mode not in LANDMARK_MODES:
        raise ValueError(f"landmarks mode must be one of {LANDMARK_MODES}, got {mode!r}")
    if mode == "none":
        return None, "none"
    size = face.crop.shape[0]
    have_csv_points = (reading is not None and reading.landmarks68 is not None
                       and bool(np.isfinite(reading.landmarks68).all()))
    if mode == "openface" or (mode == "auto" and have_csv_points):
        if reading is None:
            raise RejectError("landmarks", "landmarks_missing",
                              "landmarks=openface but this face has no OpenFace CSV (no AUs, or a GANimation pkl)")
        if reading.landmarks68 is None:
            raise RejectError("landmarks", "landmarks_missing",
                              f"landmarks=openface but {reading.path} gives none: {reading.landmarks_note}")
        if face.transform is None:
            raise ValueError("AlignedFace.transform is needed to map OpenFace landmarks into the crop")
        points = landmarks_to_crop(reading.landmarks68, face.transform)
        try:
            return check_landmarks(points, size), "openface"
        except RejectError as err:
            raise RejectError(err.stage, err.reason, f"OpenFace landmarks of {reading.path} mapped into the crop "
                                                     f"(does the CSV describe this image?): {err.detail}") from None
    if detector is None:
        raise ValueError(f"landmarks mode {mode!r} needs a LandmarkDetector")
    try:
        return check_landmarks(detector.detect(face.crop), size), "detector"
    except RejectError as err:
        if mode == "auto":
            # Landmarks are optional in auto: the face is kept without them (landmark_source "none"); only
            # the warp editor needs them, and it rejects such a face with landmarks_missing.
            return None, "none"
        raise RejectError(err.stage, err.reason, f"landmark detector on the aligned crop: {err.detail}") from None


def landmarks_version(mode: str, align: AlignConfig) -> str:
    """model_versions entry for the landmark setting (with the detector's id and box when it may be used)."""
    if mode in ("auto", "detector"):
        detector = _detector(align)
        return f"landmarks:{mode}/{detector.model_id}-{detector.face_box}-box"
    return f"landmarks:{mode}"


def prepare_unit(
    unit: WorkUnit,
    out_root: str | os.PathLike,
    *,
    run_name: str,
    run_id: str,
    align: AlignConfig,
    aus: AUConfig,
    landmarks: LandmarkMode = "auto",
    device: str | None = None,
) -> dict:
    """Align and label every source of one unit and commit it; skipped when already committed."""
    started = time.perf_counter()
    if unit_committed(out_root, unit.unit_id):
        return {"unit_id": unit.unit_id, "skipped": True, "written": 0, "rejected": {}, "seconds": 0.0}
    rejects: list[dict] = []
    loaded: list[tuple[SourceRecord, np.ndarray]] = []
    for record in unit.records:
        try:
            loaded.append((record, load_image_rgb(record.path, align.min_image_side_px)))
        except RejectError as err:
            rejects.append(err.as_row(record.source_id))
    faces = _aligner(align, device).align([image for _, image in loaded]) if loaded else []
    versions = (f"align:{'mtcnn-facenet-pytorch-2.5.3' if align.mode == 'mtcnn' else 'none'};"
                f"{landmarks_version(landmarks, align)};singanimation:{PACKAGE_VERSION}")
    detector = _detector(align) if landmarks in ("auto", "detector") else None
    align_id = stable_hash(dataclasses.asdict(align), 16)  # any align setting that changes crops changes ids
    samples = []
    for (record, _), face in zip(loaded, faces):
        try:
            if isinstance(face, RejectError):
                raise face
            au_source, au_confidence, reading = read_source_aus(record, face, aus, unit.shared_stems)
            points, landmark_source = source_landmarks(face, reading, landmarks, detector)
        except RejectError as err:
            rejects.append(err.as_row(record.source_id))
            continue
        size = face.crop.shape[0]
        row = {
            "sample_id": make_sample_id(record.sha256, "original", edit={"align": align_id}),
            "split": record.split, "source_id": record.source_id, "source_sha256": record.sha256,
            "stage": "original", "edit_kind": "none", "label": record.label, "label_kind": "original",
            "au_source": au_source, "au_target": None, "alpha": None,
            "landmarks": flatten_landmarks(points), "landmark_source": landmark_source,
            "singan_start_scale": None, "singan_sample": None, "seed": None,
            "width": size, "height": size, "model_versions": versions, "run_id": run_id,
            "quality": {"faces_found": face.faces_found if align.mode == "mtcnn" else None, "detect_prob": face.prob,
                        "out_of_frame": face.out_of_frame, "au_confidence": au_confidence},
        }
        if face.out_of_frame > OUT_OF_FRAME_WARN:
            log.warning(f"{record.source_id}: {face.out_of_frame:.0%} of its crop lies outside the source image "
                        f"(edge smear; rejected above {align.max_out_of_frame:.0%})")
        meta = {k: row[k] for k in ("source_id", "split", "stage", "label", "au_source")}
        samples.append(Sample(png=encode_png_rgb(face.crop), row=row, meta=meta))
    written = commit_unit(out_root, split=unit.split, run_name=run_name, unit_id=unit.unit_id, samples=samples, rejects=rejects,
                          membership=unit.membership or None)
    return {
        "unit_id": unit.unit_id, "skipped": False, "written": written,
        "rejected": dict(Counter(r["reason"] for r in rejects)), "seconds": round(time.perf_counter() - started, 3),
    }
