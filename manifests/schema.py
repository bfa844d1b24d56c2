"""Fixed data contracts: AU order, emotion ids, manifest and rejects schemas (see shared DESIGN.md)."""
from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa

# OpenFace 2 intensity AUs (`AUxx_r`, 0..5); the pipeline stores them divided by 5 (0..1).
AU_NAMES: tuple[str, ...] = (
    "AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12",
    "AU14", "AU15", "AU17", "AU20", "AU23", "AU25", "AU26", "AU45",
)
N_AUS = len(AU_NAMES)  # 17
AU_INDEX: dict[str, int] = {name: i for i, name in enumerate(AU_NAMES)}
AU_INTENSITY_MAX = 5.0

# RAF-DB basic emotion ids.
EMOTIONS: dict[int, str] = {
    1: "Surprise", 2: "Fear", 3: "Disgust", 4: "Happiness",
    5: "Sadness", 6: "Anger", 7: "Neutral",
}
EMOTION_IDS: dict[str, int] = {name.lower(): i for i, name in EMOTIONS.items()}

SPLITS = ("train", "test")
STAGES = ("original", "warp", "ganimation", "singan")
EDIT_KINDS = ("none", "single_au", "interpolate", "emotion")
LABEL_KINDS = ("original", "inherited", "target")
# Where a row's 68 landmarks came from: OpenFace's CSV, the landmark detector run on the crop, or none.
LANDMARK_SOURCES = ("openface", "detector", "none")
N_LANDMARKS = 68  # iBUG 300-W / OpenFace order

QUALITY_TYPE = pa.struct([
    ("faces_found", pa.int16()),         # faces MTCNN found in the source (align stage)
    ("detect_prob", pa.float32()),       # MTCNN probability of the chosen face
    ("out_of_frame", pa.float32()),      # share of the aligned crop that lies outside the source image (0..1)
    ("au_confidence", pa.float32()),     # OpenFace confidence of the chosen AU row
    ("attention_mean", pa.float32()),    # GANimation: mean of A (1 = kept input)
    ("au_fidelity", pa.float32()),       # GANimation: mean |critic AU(out) - target|
    ("ssim_to_source", pa.float32()),    # SSIM of the sample to the image it was derived from
    ("sifid", pa.float32()),             # SinGAN: single-image FID to its source (optional)
    ("warp_fraction", pa.float32()),     # warp: share of the planned landmark motion achieved
                                         # (1 = all; < 1 = scaled back to avoid a fold)
])
QUALITY_FIELDS: tuple[str, ...] = tuple(f.name for f in QUALITY_TYPE)

AU_LIST = pa.list_(pa.float32(), N_AUS)
LANDMARK_LIST = pa.list_(pa.float32(), 2 * N_LANDMARKS)  # x0, y0, x1, y1, ... in crop pixels

MANIFEST_SCHEMA = pa.schema([
    ("sample_id", pa.string()),
    ("split", pa.string()),
    ("source_id", pa.string()),
    ("source_sha256", pa.string()),
    ("stage", pa.string()),
    ("edit_kind", pa.string()),
    ("label", pa.int8()),
    ("label_kind", pa.string()),
    ("au_source", AU_LIST),
    ("au_target", AU_LIST),
    ("landmarks", LANDMARK_LIST),
    ("landmark_source", pa.string()),
    ("alpha", pa.float32()),
    ("singan_start_scale", pa.int16()),
    ("singan_sample", pa.int16()),
    ("seed", pa.int64()),
    ("shard", pa.string()),
    ("offset", pa.int64()),
    ("size", pa.int64()),
    ("width", pa.int16()),
    ("height", pa.int16()),
    ("sha256", pa.string()),
    ("model_versions", pa.string()),
    ("quality", QUALITY_TYPE),
    ("run_id", pa.string()),
])

# Columns added after the first release: a part written before them is read with nulls there (old prepared
# outputs stay usable), not reported as damaged.
LATER_COLUMNS: tuple[str, ...] = ("landmarks", "landmark_source")

REJECTS_SCHEMA = pa.schema([
    ("source_id", pa.string()),
    ("stage", pa.string()),    # ingest / align / openface / landmarks / ganimation / singan / write / quality
    ("reason", pa.string()),   # short machine-readable code, e.g. "no_face", "corrupt_image"
    ("detail", pa.string()),   # the human-readable specifics
])


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path, chunk_bytes: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_bytes), b""):
            h.update(block)
    return h.hexdigest()


def stable_hash(obj: Any, n_hex: int = 64) -> str:
    """Hash of a JSON-serialisable object with sorted keys: the same value gives the same id anywhere."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n_hex]


def make_sample_id(source_sha256: str, stage: str, edit: Any = None, singan: Any = None, seed: int | None = None) -> str:
    """Deterministic id of a sample: hash of source bytes + edit + SinGAN params + seed.

    24 hex chars, no dots, so it is a valid WebDataset key.
    """
    return stable_hash({"src": source_sha256, "stage": stage, "edit": edit, "singan": singan, "seed": seed}, 24)
