"""Prepare stage: cut sources into work units; per unit load, align, read AUs, and commit shard + manifest part."""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from manifests.dataset import encode_png_rgb
from manifests.schema import make_sample_id, stable_hash
from manifests.writer import Sample, commit_unit, unit_committed
from tasks.align import AlignConfig, AlignedFace, FaceAligner
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
    AUReading,
    OpenFaceConfig,
    find_au_file,
    read_ganimation_pkl,
    read_openface_csv,
)

PACKAGE_VERSION = "0.1.0"

# Where each face's 68 landmarks come from: "auto" = the OpenFace CSV's points (of the row the AUs
# came from) when it has them, else the detector on the aligned crop; "openface" = only the CSV
# (landmarks_missing when it has none); "detector" = always the detector; "none" = no landmarks.
LandmarkMode = Literal["auto", "openface", "detector", "none"]
LANDMARK_MODES: tuple[str, ...] = get_args(LandmarkMode)


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


def plan_units(records: list[SourceRecord], unit_size: int, config_hash: str) -> list[WorkUnit]:
    """Chunks of at most unit_size sources, never mixing splits; ids hash their sorted sources + the config."""
    if unit_size < 1:
        raise ValueError(f"unit_size must be >= 1, got {unit_size}")
    units = []
    for split in ("train", "test"):
        chosen = sorted((r for r in records if r.split == split), key=lambda r: r.source_id)
        for index, start in enumerate(range(0, len(chosen), unit_size)):
            chunk = tuple(chosen[start:start + unit_size])
            digest = stable_hash([config_hash, [r.source_id for r in chunk], [r.sha256 for r in chunk]], 10)
            units.append(WorkUnit(f"{split}-{index:05d}-{digest}", split, chunk))
    return units


@functools.lru_cache(maxsize=2)
def _aligner(config: AlignConfig, device: str | None) -> FaceAligner:
    # MTCNN is built once per process and reused across units.
    return FaceAligner(config, device=device)


@functools.lru_cache(maxsize=4)
def _pkl_aus(path: str) -> dict[str, np.ndarray]:
    return read_ganimation_pkl(path)


@functools.lru_cache(maxsize=4)
def _detector(align: AlignConfig) -> LandmarkDetector:
    """The landmark detector for crops made with these align settings (the model itself loads once per
    process): MTCNN crops put the face in a known box; pre-aligned crops (mode none) are framed their
    own way, so dlib's face detector finds the box."""
    if align.mode == "none":
        return LandmarkDetector(face_box="find")
    return LandmarkDetector(box_frac=aligned_box_frac(align.margin))


def read_source_aus(
    record: SourceRecord, face: AlignedFace, config: AUConfig
) -> tuple[list[float] | None, float | None, AUReading | None]:
    """AUs (0..1, fixed order) for one source, the OpenFace confidence and the CSV reading (None for a
    pkl or no AUs); RejectError when unusable."""
    if config.path is None:
        return None, None, None
    stem = Path(record.path).stem
    source = Path(config.path)
    if source.suffix == ".pkl":
        table = _pkl_aus(str(source))
        for key in (stem, stem.removesuffix("_aligned"), record.source_id):
            if key in table:
                return [float(v) for v in table[key]], None, None
        if config.missing == "keep":
            return None, None, None
        raise RejectError("openface", "au_file_missing", f"{source.name} has no entry for {stem!r}")
    csv_path = find_au_file(stem, source, config.openface.csv_patterns)
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
            au_source, au_confidence, reading = read_source_aus(record, face, aus)
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
            "quality": {"faces_found": face.faces_found if align.mode == "mtcnn" else None, "detect_prob": face.prob, "au_confidence": au_confidence},
        }
        meta = {k: row[k] for k in ("source_id", "split", "stage", "label", "au_source")}
        samples.append(Sample(png=encode_png_rgb(face.crop), row=row, meta=meta))
    written = commit_unit(out_root, split=unit.split, run_name=run_name, unit_id=unit.unit_id, samples=samples, rejects=rejects)
    return {
        "unit_id": unit.unit_id, "skipped": False, "written": written,
        "rejected": dict(Counter(r["reason"] for r in rejects)), "seconds": round(time.perf_counter() - started, 3),
    }
