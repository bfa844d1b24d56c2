"""OpenFace Action-Unit reader: OpenFace CSVs and GANimation's aus_openface.pkl to 17 AUs in 0..1."""
from __future__ import annotations

import codecs
import collections
import csv
import io
import math
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from manifests.schema import AU_INTENSITY_MAX, AU_NAMES, N_AUS
from tasks.errors import RejectError

STAGE = "openface"

# ---------------------------------------------------------------------------------------------
# OpenFace column layouts, as written by OpenFace's CSV recorders (Utilities/RecorderCSV.cpp in
# 2.x; FeatureExtraction.cpp prepareOutputFile in 1.0-era builds). Columns are only ever looked
# up by name; these tuples exist so the writer produces realistic files and `inspect-au` can say
# which tool wrote one.
# ---------------------------------------------------------------------------------------------
N_FACE_LANDMARKS = 68
N_EYE_LANDMARKS = 56
N_MODEL_MODES = 34  # non-rigid PDM parameters p_0..p_33

_SEQ_2X = ("frame", "face_id", "timestamp", "confidence", "success")  # FeatureExtraction, FaceLandmarkVidMulti
_IMG_2X = ("face", "confidence")                                     # FaceLandmarkImg
_SEQ_PRE2 = ("frame", "timestamp", "confidence", "success")          # before face_id was added
_GAZE_PRE2 = ("gaze_0_x", "gaze_0_y", "gaze_0_z", "gaze_1_x", "gaze_1_y", "gaze_1_z")
_GAZE_2X = (
    _GAZE_PRE2 + ("gaze_angle_x", "gaze_angle_y")
    + tuple(f"eye_lmk_{axis}_{i}" for axis in "xyXYZ" for i in range(N_EYE_LANDMARKS))
)
_POSE = ("pose_Tx", "pose_Ty", "pose_Tz", "pose_Rx", "pose_Ry", "pose_Rz")
_LANDMARKS_2D = tuple(f"{axis}_{i}" for axis in "xy" for i in range(N_FACE_LANDMARKS))
_LANDMARKS_3D = tuple(f"{axis}_{i}" for axis in "XYZ" for i in range(N_FACE_LANDMARKS))
_MODEL_PARAMS = ("p_scale", "p_rx", "p_ry", "p_rz", "p_tx", "p_ty") + tuple(f"p_{i}" for i in range(N_MODEL_MODES))
# OpenFace sorts AU names; 2.x has 17 intensities (no AU28_r) and 18 presences (AU28_c included).
_AU_R = tuple(f"{name}_r" for name in sorted(AU_NAMES))
_AU_C = tuple(f"{name}_c" for name in sorted(AU_NAMES + ("AU28",)))
# The 2016 (0.x) AU models: 14 intensities and 6 presences; no AU07_r, AU23_r or AU45_r.
_AU_R_V0 = tuple(f"AU{n}_r" for n in ("01", "02", "04", "05", "06", "09", "10", "12", "14", "15", "17", "20", "25", "26"))
_AU_C_V0 = tuple(f"AU{n}_c" for n in ("04", "12", "15", "23", "28", "45"))

OPENFACE_LAYOUTS: dict[str, tuple[str, ...]] = {
    # 2.x FeatureExtraction / FaceLandmarkVidMulti, default outputs: 714 columns.
    "feature_extraction": _SEQ_2X + _GAZE_2X + _POSE + _LANDMARKS_2D + _LANDMARKS_3D + _MODEL_PARAMS + _AU_R + _AU_C,
    # 2.x FaceLandmarkImg, default outputs: 711 columns.
    "landmark_img": _IMG_2X + _GAZE_2X + _POSE + _LANDMARKS_2D + _LANDMARKS_3D + _MODEL_PARAMS + _AU_R + _AU_C,
    # 1.0-era FeatureExtraction: no face_id, 6 gaze values, no eye landmarks: 431 columns.
    "feature_extraction_pre2": (_SEQ_PRE2 + _GAZE_PRE2 + _POSE + _LANDMARKS_2D + _LANDMARKS_3D + _MODEL_PARAMS
                                + _AU_R + _AU_C),
    "aus_only": _SEQ_2X + _AU_R + _AU_C,           # FeatureExtraction -aus: 40 columns
    "aus_only_img": _IMG_2X + _AU_R + _AU_C,       # FaceLandmarkImg -aus: 37 (what GANimation's pkl was made from)
    "aus_only_pre2": _SEQ_PRE2 + _AU_R + _AU_C,    # 1.0-era FeatureExtraction, AUs only: 39 columns
    "aus_only_v0": _SEQ_PRE2 + _AU_R_V0 + _AU_C_V0,  # 2016 OpenFace 0.x AU file: 24 columns, lacks 3 of our AUs
}

# OpenFace 68-point (iBUG) indices that correspond to MTCNN's five points.
_RIGHT_EYE_68 = slice(36, 42)  # the eye on the image's left
_LEFT_EYE_68 = slice(42, 48)
_NOSE_TIP_68 = 30
_MOUTH_CORNERS_68 = (48, 54)
# Both eyes and both mouth corners exchanged: the other left/right convention.
_SWAPPED_5 = np.array([1, 0, 2, 4, 3])
_MATCH_POINTS_68 = (*range(36, 48), _NOSE_TIP_68, *_MOUTH_CORNERS_68)  # the points face matching reads
_LANDMARK_COLUMNS = tuple(f"{axis}_{i}" for axis in "xy" for i in _MATCH_POINTS_68)

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
# C++ streams print NaN as nan, -nan or (MSVC) -nan(ind); infinities as inf / -inf(...).
_NAN_TOKEN = re.compile(r"^[+-]?nan(\(.*\))?$", re.IGNORECASE)
_INF_TOKEN = re.compile(r"^([+-]?)inf(inity)?(\(.*\))?$", re.IGNORECASE)
_AU_COLUMN = re.compile(r"^AU\d\d_[rc]$")
_OPENFACE_ID_COLUMNS = {"frame", "face", "face_id", "timestamp", "confidence", "success"}
_MAX_LISTED = 5  # rows named in one reject detail


# ---------------------------------------------------------------------------------------------
# Config and result
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OpenFaceConfig:
    """How AU rows are trusted and chosen.

    min_confidence: rows whose OpenFace `confidence` is below this are not trusted. 0.8 is the
        cut commonly used when analysing OpenFace AUs; tracking that is merely "successful" can
        sit well below it, and a wrong AU label is worse than a rejected image.
    video_rule: for a file with several frames, "median" takes the per-AU median over the trusted
        frames of the chosen face; "frame" takes the row whose `frame` value is frame_index
        (OpenFace numbers frames from 1).
    csv_patterns: file names tried in order, in the CSV folder, for an image stem.
    max_landmark_error_iod: when several faces are in a file and the aligner's 5 landmarks are
        given, the best OpenFace face must lie within this mean point distance (in units of the
        aligner's inter-ocular distance), else the file is rejected (au_face_mismatch); None
        accepts the nearest face at any distance.
    """

    min_confidence: float = 0.8
    video_rule: Literal["median", "frame"] = "median"
    frame_index: int | None = None
    csv_patterns: tuple[str, ...] = ("{stem}.csv", "{stem}_aligned.csv")
    max_landmark_error_iod: float | None = 0.5

    def __post_init__(self) -> None:
        # JSON gives lists; keep the config hashable.
        object.__setattr__(self, "csv_patterns", tuple(self.csv_patterns))
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in 0..1, got {self.min_confidence}")
        if self.video_rule not in ("median", "frame"):
            raise ValueError(f"video_rule must be 'median' or 'frame', got {self.video_rule!r}")
        if self.video_rule == "frame" and self.frame_index is None:
            raise ValueError("video_rule='frame' needs frame_index (the value of OpenFace's `frame` column)")
        if not self.csv_patterns:
            raise ValueError("csv_patterns must name at least one pattern")
        for pattern in self.csv_patterns:
            _check_pattern(pattern)
        if self.max_landmark_error_iod is not None and not self.max_landmark_error_iod > 0:
            raise ValueError(f"max_landmark_error_iod must be > 0 or None, got {self.max_landmark_error_iod}")

    def to_json(self) -> dict:
        out = asdict(self)
        out["csv_patterns"] = list(self.csv_patterns)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OpenFaceConfig:
        return cls(**data)


def _check_pattern(pattern: str) -> None:
    if "{stem}" not in pattern:
        raise ValueError(f"csv pattern {pattern!r} must contain '{{stem}}'")
    try:
        pattern.format(stem="x")
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"csv pattern {pattern!r} may only use the field {{stem}}: {err}") from None


@dataclass(frozen=True)
class AUReading:
    """The AUs read for one image and which OpenFace rows they came from."""

    values: np.ndarray            # float32 [17], 0..1, in AU_NAMES order
    path: str
    row_indices: tuple[int, ...]  # 0-based data rows used (the first row after the header is 0)
    face_id: int | None
    frame: int | None
    confidence: float | None
    rule: str                     # single_row | landmark_match | most_confident | video_median | video_frame
    detail: str
    # The 68 2D landmarks of the row the AUs came from ([68, 2] x, y in the pixels of the image OpenFace
    # read; NaN where a cell was nan); None when the file has no x_0..y_67 columns or the AUs are a
    # median over several rows (no single row describes the image then). landmarks_note says why.
    landmarks68: np.ndarray | None = None
    landmarks_note: str = ""

    def landmarks_json(self) -> dict:
        """What inspect-au shows about the landmarks: count, source, bounding box (source pixels)."""
        if self.landmarks68 is None:
            return {"count": 0, "source": None, "note": self.landmarks_note}
        finite = self.landmarks68[np.isfinite(self.landmarks68).all(axis=1)]
        bbox = ([float(finite[:, 0].min()), float(finite[:, 1].min()), float(finite[:, 0].max()), float(finite[:, 1].max())]
                if len(finite) else None)
        return {"count": int(len(finite)), "source": "openface", "bbox_xyxy": bbox, "note": self.landmarks_note}

    def to_json(self) -> dict:
        return {
            "path": self.path,
            "values": [float(v) for v in self.values],
            "aus": {name: float(v) for name, v in zip(AU_NAMES, self.values)},
            "row_indices": list(self.row_indices),
            "face_id": self.face_id,
            "frame": self.frame,
            "confidence": self.confidence,
            "rule": self.rule,
            "detail": self.detail,
            "landmarks": self.landmarks_json(),
        }


# ---------------------------------------------------------------------------------------------
# CSV loading
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Table:
    path: str
    columns: tuple[str, ...]
    rows: list[list[str]]   # cells, already stripped; every row has len(columns) cells
    lines: list[int]        # 1-based line of each row in the file
    index: dict[str, int] = field(repr=False)
    note: str = ""          # what was tolerated while reading (a cut-off last line), for the reading's detail

    def has(self, name: str) -> bool:
        return name in self.index

    def where(self, row: int) -> str:
        return f"{self.path} line {self.lines[row]} (data row {row})"


def _reject(reason: str, detail: str) -> RejectError:
    return RejectError(STAGE, reason, detail)


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise _reject("au_file_missing", f"{path}: no such file")
    try:
        return path.read_bytes()
    except OSError as err:
        raise _reject("au_file_unreadable", f"{path}: {err}") from None


def _load_table(path: str | Path) -> _Table:
    """Parse an OpenFace CSV (", " or "," separators, LF or CRLF, optional UTF-8 BOM) into cells."""
    path = Path(path)
    data = _read_bytes(path)
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    if not data.strip():
        raise _reject("au_file_empty", f"{path}: file is empty ({len(data)} bytes, no header)")
    if b"\x00" in data:
        raise _reject("au_file_malformed", f"{path}: binary data (NUL bytes), not a CSV text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        bad_byte = data[err.start:err.start + 1]
        raise _reject("au_file_malformed", f"{path}: not UTF-8 text (byte {err.start}: {bad_byte!r})") from None

    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True)
    parsed: list[tuple[int, list[str]]] = []
    try:
        for cells in reader:
            if len(cells) <= 1 and not "".join(cells).strip():
                continue  # blank line (e.g. the one after the last newline)
            parsed.append((reader.line_num, [c.strip() for c in cells]))
    except csv.Error as err:
        raise _reject("au_file_malformed", f"{path} line {reader.line_num}: unparsable CSV ({err})") from None

    header_line, header = parsed[0]
    while header and header[-1] == "":
        header.pop()  # a trailing separator after the last name
    if len(header) < 2 or not any(n in _OPENFACE_ID_COLUMNS or _AU_COLUMN.match(n) for n in header):
        shown = ", ".join(header[:6]) + (", ..." if len(header) > 6 else "")
        raise _reject("au_file_malformed", f"{path}: not an OpenFace CSV (header line {header_line}: {shown!r})")
    duplicates = sorted(n for n, count in collections.Counter(header).items() if count > 1)
    if duplicates:
        raise _reject("au_file_malformed", f"{path}: header repeats column(s) {', '.join(duplicates)}")
    if len(parsed) == 1:
        raise _reject("au_file_empty", f"{path}: header only ({len(header)} columns), no data rows")

    n_columns = len(header)
    rows, lines = [], []
    note = ""
    last_line, last_cells = parsed[-1]
    if len(parsed) > 2 and not data.endswith(b"\n") and len(last_cells) < n_columns:
        # A file cut off mid-write (no final newline) ends in a partial row: drop that row, keep the rest.
        parsed = parsed[:-1]
        note = f"; line {last_line} was cut off ({len(last_cells)} of {n_columns} fields, no final newline) and skipped"
    for line, cells in parsed[1:]:
        if len(cells) > n_columns and not any(cells[n_columns:]):
            cells = cells[:n_columns]  # trailing separator(s)
        if len(cells) != n_columns:
            raise _reject("au_file_malformed", f"{path} line {line}: {len(cells)} fields, header has {n_columns}")
        rows.append(cells)
        lines.append(line)
    return _Table(str(path), tuple(header), rows, lines, {name: j for j, name in enumerate(header)}, note)


def _parse_cell(text: str) -> float | None:
    """A number (nan/inf included, as C++ prints them); None when the text is not a number."""
    if _NUMBER.match(text):
        return float(text)
    if text == "" or _NAN_TOKEN.match(text):
        return math.nan
    inf = _INF_TOKEN.match(text)
    if inf:
        return -math.inf if inf.group(1) == "-" else math.inf
    return None


def _column(table: _Table, name: str, rows: Sequence[int]) -> np.ndarray:
    """Float64 [len(rows)] values of one column; au_file_malformed on text that is not a number."""
    j = table.index[name]
    out = np.empty(len(rows), dtype=np.float64)
    for k, r in enumerate(rows):
        value = _parse_cell(table.rows[r][j])
        if value is None:
            raise _reject("au_file_malformed", f"{table.where(r)}, column {name}: {table.rows[r][j]!r} is not a number")
        out[k] = value
    return out


def _integer_column(table: _Table, name: str, rows: Sequence[int]) -> np.ndarray:
    values = _column(table, name, rows)
    for k, r in enumerate(rows):
        if not (np.isfinite(values[k]) and values[k] == round(values[k])):
            text = table.rows[r][table.index[name]]
            raise _reject("au_file_malformed", f"{table.where(r)}, column {name}: {text!r} is not an integer")
    return values.astype(np.int64)


def detect_openface_layout(columns: Sequence[str]) -> str:
    """Name of the OpenFace layout a header matches ("+N extra columns" when longer), else "unknown"."""
    columns = tuple(c.strip() for c in columns)
    for name, layout in OPENFACE_LAYOUTS.items():
        if columns[:len(layout)] == layout:
            extra = len(columns) - len(layout)
            return name if extra == 0 else f"{name}+{extra} extra columns"
    return "unknown"


# ---------------------------------------------------------------------------------------------
# Landmarks
# ---------------------------------------------------------------------------------------------
def landmarks5_from_68(landmarks68: np.ndarray) -> np.ndarray:
    """MTCNN-style points from OpenFace's 68: eye centres (image-left first), nose tip, mouth corners.

    landmarks68: [..., 68, 2] -> [..., 5, 2]
    """
    lm = np.asarray(landmarks68, dtype=np.float64)
    if lm.shape[-2:] != (N_FACE_LANDMARKS, 2):
        raise ValueError(f"landmarks68 must be [..., 68, 2], got {lm.shape}")
    return np.stack([
        lm[..., _RIGHT_EYE_68, :].mean(axis=-2),
        lm[..., _LEFT_EYE_68, :].mean(axis=-2),
        lm[..., _NOSE_TIP_68, :],
        lm[..., _MOUTH_CORNERS_68[0], :],
        lm[..., _MOUTH_CORNERS_68[1], :],
    ], axis=-2)


def _check_landmarks5(face_landmarks5: np.ndarray) -> np.ndarray:
    points = np.asarray(face_landmarks5, dtype=np.float64)
    if points.shape != (5, 2) or not np.all(np.isfinite(points)):
        raise ValueError(f"face_landmarks5 must be finite [5, 2] (x, y) pixels, got shape {points.shape}")
    if np.linalg.norm(points[0] - points[1]) <= 0:
        raise ValueError("face_landmarks5 has both eyes at the same point")
    return points


def _row_landmarks68(table: _Table, rows: Sequence[int], points: Sequence[int] = _MATCH_POINTS_68) -> np.ndarray:
    """[len(rows), 68, 2] with NaN where a point is not read (by default only the 15 points matching needs)."""
    out = np.full((len(rows), N_FACE_LANDMARKS, 2), np.nan)
    for axis_index, axis in enumerate("xy"):
        for i in points:
            out[:, i, axis_index] = _column(table, f"{axis}_{i}", rows)
    return out


def _landmark_errors(table: _Table, rows: Sequence[int], points5: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: mean distance to points5 in inter-ocular units (NaN if unreadable), and whether eyes were swapped."""
    iod = float(np.linalg.norm(points5[0] - points5[1]))
    ours = landmarks5_from_68(_row_landmarks68(table, rows))                    # [R, 5, 2]
    direct = np.linalg.norm(ours - points5, axis=-1).mean(axis=-1) / iod         # [R]
    swapped = np.linalg.norm(ours[:, _SWAPPED_5] - points5, axis=-1).mean(axis=-1) / iod
    return np.fmin(direct, swapped), swapped < direct


# ---------------------------------------------------------------------------------------------
# Reading a CSV
# ---------------------------------------------------------------------------------------------
def read_openface_csv(
    path: str | Path,
    config: OpenFaceConfig = OpenFaceConfig(),
    face_landmarks5: np.ndarray | None = None,
) -> AUReading:
    """The 17 AU intensities (0..1) of the aligned face in one OpenFace CSV; RejectError when unusable.

    face_landmarks5: the aligner's 5 points ([5, 2] x, y in original-image pixels: left eye, right
    eye, nose, left and right mouth corner) used to pick among several faces.
    """
    points5 = None if face_landmarks5 is None else _check_landmarks5(face_landmarks5)
    return _read_table(_load_table(path), config, points5)


def _require_columns(table: _Table) -> None:
    required = ("confidence",) + tuple(f"{name}_r" for name in AU_NAMES)
    missing = [name for name in required if not table.has(name)]
    if missing:
        raise _reject("au_columns_missing", f"{table.path}: missing column(s) {', '.join(missing)} "
                                            f"(file has {len(table.columns)} columns)")


def _face_keys(table: _Table, rows: list[int]) -> tuple[np.ndarray, str | None]:
    """Which face each row belongs to, and the column that says so."""
    for name in ("face_id", "face"):
        if table.has(name):
            return _integer_column(table, name, rows), name
    if table.has("frame"):
        return np.zeros(len(rows), dtype=np.int64), None  # one tracked face per frame (pre-2.0 FeatureExtraction)
    return np.arange(len(rows), dtype=np.int64), None       # no ids at all: every row is its own face


def _untrusted_reason(success: float | None, confidence: float, min_confidence: float) -> str | None:
    if success is not None and success == 0:
        return "success=0"
    if not confidence >= min_confidence:  # NaN confidence is not trusted either
        return f"confidence={confidence:g} < {min_confidence:g}"
    return None


def _read_table(table: _Table, config: OpenFaceConfig, points5: np.ndarray | None) -> AUReading:
    _require_columns(table)
    all_rows = list(range(len(table.rows)))
    confidence = _column(table, "confidence", all_rows)
    success = _integer_column(table, "success", all_rows) if table.has("success") else None
    if success is not None and not np.isin(success, (0, 1)).all():
        bad = int(np.flatnonzero(~np.isin(success, (0, 1)))[0])
        raise _reject("au_file_malformed", f"{table.where(bad)}, column success: {success[bad]} is not 0 or 1")
    frames = _integer_column(table, "frame", all_rows) if table.has("frame") else None
    faces, face_column = _face_keys(table, all_rows)
    frames, frame_note = _frames_from_timestamps(table, frames, faces)
    is_video = frames is not None and len(np.unique(frames)) > 1

    # 1. Which frame(s) are considered.
    candidates = all_rows
    if config.video_rule == "frame":
        if frames is None:
            raise _reject("au_frame_missing", f"{table.path}: video_rule='frame' but the file has no frame column")
        candidates = [r for r in all_rows if frames[r] == config.frame_index]
        if not candidates:
            raise _reject("au_frame_missing", f"{table.path}: no row with frame={config.frame_index} "
                                              f"(frames {frames.min()}..{frames.max()}, {len(np.unique(frames))} distinct)")

    # 2. Which face, when there are several.
    face_rule, face_note = _choose_face(table, config, points5, candidates, faces, face_column, confidence, success)
    chosen_face = int(faces[candidates[0]]) if face_rule is None else face_rule[1]
    rows_of_face = [r for r in candidates if faces[r] == chosen_face]
    frames_of_face = [frames[r] for r in rows_of_face] if frames is not None else [0] * len(rows_of_face)
    if len(set(frames_of_face)) != len(rows_of_face):
        where = ", ".join(str(table.lines[r]) for r in rows_of_face[:_MAX_LISTED])
        raise _reject("au_file_malformed",
                      f"{table.path}: face {chosen_face} has several rows for one frame (lines {where})")

    # 3. Which of its rows are trusted.
    reasons = {r: _untrusted_reason(None if success is None else success[r], confidence[r], config.min_confidence)
               for r in rows_of_face}
    used = [r for r in rows_of_face if reasons[r] is None]
    if not used:
        listed = "; ".join(f"line {table.lines[r]}: {reasons[r]}" for r in rows_of_face[:_MAX_LISTED])
        more = f"; +{len(rows_of_face) - _MAX_LISTED} more" if len(rows_of_face) > _MAX_LISTED else ""
        scope = f"frame {config.frame_index}, " if config.video_rule == "frame" else ""
        chosen = f"; it was chosen because {face_note}" if face_note else ""
        raise _reject("au_no_trusted_row", f"{table.path}: no trusted row for {scope}face {chosen_face} "
                                           f"({len(rows_of_face)} row(s) untrusted: {listed}{more}){chosen}")

    # 4. Values: checked, then one row or the median of the trusted frames.
    intensities = _checked_intensities(table, used)                              # [U, 17] in 0..5
    values = (np.median(intensities, axis=0) / AU_INTENSITY_MAX).astype(np.float32)
    used_conf = float(np.median(confidence[used]))
    face_id = chosen_face if face_column is not None else None
    frame = int(frames[used[0]]) if frames is not None and len(used) == 1 else None
    prefix = f"{face_note}; " if face_note else ""
    if is_video and config.video_rule == "median":
        rule = "video_median"
        span = f"frames {min(frames_of_face)}..{max(frames_of_face)}{frame_note}"
        detail = (f"{prefix}median over {len(used)} trusted of {len(rows_of_face)} frame(s) ({span}) "
                  f"of face {chosen_face}, median confidence {used_conf:g}")
    elif is_video:
        rule = "video_frame"
        detail = f"{prefix}frame {frame} (line {table.lines[used[0]]}), face {chosen_face}, confidence {used_conf:g}"
    elif face_rule is not None:
        rule, detail = face_rule[0], f"{prefix}line {table.lines[used[0]]}, confidence {used_conf:g}"
    else:
        rule = "single_row"
        detail = f"one face in the file: line {table.lines[used[0]]}, confidence {used_conf:g}"
    landmarks68, landmarks_note = _reading_landmarks(table, used)
    return AUReading(values=values, path=table.path, row_indices=tuple(used), face_id=face_id, frame=frame,
                     confidence=used_conf, rule=rule, detail=detail + table.note, landmarks68=landmarks68,
                     landmarks_note=landmarks_note)


def _reading_landmarks(table: _Table, used: list[int]) -> tuple[np.ndarray | None, str]:
    """The 68 points of the one row the AUs came from, or None and why not."""
    missing = [name for name in _LANDMARKS_2D if not table.has(name)]
    if missing:
        return None, ("no 2D landmark columns (x_0..x_67, y_0..y_67)" if len(missing) == len(_LANDMARKS_2D)
                      else f"landmark columns incomplete: {len(missing)} of {len(_LANDMARKS_2D)} missing "
                           f"(first: {missing[0]})")
    if len(used) != 1:
        return None, f"the AUs are a median over {len(used)} rows; no single row's landmarks describe the image"
    points = _row_landmarks68(table, used, range(N_FACE_LANDMARKS))[0]  # [68, 2]
    unread = int((~np.isfinite(points).all(axis=1)).sum())
    note = f"{table.where(used[0])}" + (f"; {unread} point(s) are nan" if unread else "")
    return points.astype(np.float64), note


def _frames_from_timestamps(table: _Table, frames: np.ndarray | None,
                            faces: np.ndarray) -> tuple[np.ndarray | None, str]:
    """Frame numbers that tell a face's rows apart: the file's own, or the timestamp order when the file's
    do not (a FACSvatar-style fork writes frame = 0 on every row while its timestamps advance)."""
    if frames is None or len(set(zip(faces.tolist(), frames.tolist()))) == len(frames) or not table.has("timestamp"):
        return frames, ""
    stamps = _column(table, "timestamp", list(range(len(table.rows))))
    if not np.all(np.isfinite(stamps)) or len(set(zip(faces.tolist(), stamps.tolist()))) != len(stamps):
        return frames, ""  # timestamps do not tell rows apart either: the caller refuses the file
    order = np.unique(stamps, return_inverse=True)[1].reshape(-1) + 1  # dense rank, 1-based like OpenFace
    return order.astype(np.int64), " numbered by timestamp: the frame column does not tell rows apart"


def _choose_face(
    table: _Table, config: OpenFaceConfig, points5: np.ndarray | None, candidates: list[int],
    faces: np.ndarray, face_column: str | None, confidence: np.ndarray, success: np.ndarray | None,
) -> tuple[tuple[str, int] | None, str]:
    """((rule, face key), note) when the considered rows hold several faces; (None, "") otherwise."""
    keys = sorted({int(faces[r]) for r in candidates})
    if len(keys) == 1:
        return None, ""
    label = face_column or "row"
    has_landmarks = all(table.has(name) for name in _LANDMARK_COLUMNS)
    if points5 is not None and has_landmarks:
        errors, swapped = _landmark_errors(table, candidates, points5)
        per_face = {}
        for key in keys:
            mine = [k for k, r in enumerate(candidates) if faces[r] == key and np.isfinite(errors[k])]
            if mine:
                per_face[key] = (float(np.median(errors[mine])), bool(swapped[mine[0]]))
        if per_face:
            ranked = sorted(per_face, key=lambda key: (per_face[key][0], key))
            best, (error, was_swapped) = ranked[0], per_face[ranked[0]]
            others = ", ".join(f"{label} {k}: {per_face[k][0]:.3g}" for k in ranked[1:])
            limit = config.max_landmark_error_iod
            if limit is not None and error > limit:
                raise _reject("au_face_mismatch", f"{table.path}: no face matches the aligned face's landmarks: "
                                                  f"nearest {label} {best} is {error:.3g} inter-ocular distances away "
                                                  f"(limit {limit:g}; others {others or 'none'})")
            order = "eye order swapped" if was_swapped else "same eye order"
            note = (f"{len(keys)} faces; {label} {best} matches the aligner's 5 landmarks: mean error {error:.3g} "
                    f"inter-ocular distances ({order}; others {others or 'unreadable'})")
            return ("landmark_match", best), note
        why = "their landmark cells are unreadable"
    elif points5 is not None:
        why = "the file has no 2D landmark columns"
    else:
        why = "no aligner landmarks given"

    # Most confident face among trusted rows; ties go to the lowest id so the choice is repeatable.
    trusted = [r for r in candidates
               if _untrusted_reason(None if success is None else success[r], confidence[r], config.min_confidence) is None]
    if not trusted:
        raise _reject("au_no_trusted_row", f"{table.path}: {len(keys)} faces, none has a trusted row "
                                           f"(success=0 or confidence < {config.min_confidence:g} everywhere)")
    mean_conf = {key: float(np.mean([confidence[r] for r in trusted if faces[r] == key]))
                 for key in keys if any(faces[r] == key for r in trusted)}
    best = max(sorted(mean_conf), key=lambda key: mean_conf[key])
    others = ", ".join(f"{label} {k}: {mean_conf[k]:g}" for k in sorted(mean_conf) if k != best)
    note = (f"{len(keys)} faces, {why}; {label} {best} is the most confident ({mean_conf[best]:g}; "
            f"others {others or 'untrusted'})")
    return ("most_confident", best), note


def _checked_intensities(table: _Table, rows: list[int]) -> np.ndarray:
    """[len(rows), 17] AU intensities, each finite and within 0..5, else a RejectError naming the cell."""
    out = np.empty((len(rows), N_AUS), dtype=np.float64)
    for i, name in enumerate(AU_NAMES):
        column = f"{name}_r"
        out[:, i] = _column(table, column, rows)
        for k, r in enumerate(rows):
            value, text = out[k, i], table.rows[r][table.index[column]]
            if np.isnan(value):
                raise _reject("au_value_nan", f"{table.where(r)}, column {column}: {text or 'empty'!r} is not a value")
            if not 0.0 <= value <= AU_INTENSITY_MAX:
                raise _reject("au_value_out_of_range",
                              f"{table.where(r)}, column {column}: {text} is outside 0..{AU_INTENSITY_MAX:g}")
    return out


# ---------------------------------------------------------------------------------------------
# Finding a CSV for an image
# ---------------------------------------------------------------------------------------------
def find_au_file(
    stem: str,
    csv_dir: str | Path,
    patterns: Sequence[str] = OpenFaceConfig().csv_patterns,
) -> Path | None:
    """First existing file for an image stem: each pattern in order, then again with "_aligned" stripped.

    RAF-DB's aligned images are named train_00001_aligned.jpg while their CSVs may be called
    train_00001.csv or train_00001_aligned.csv; both are found.
    """
    for pattern in patterns:
        _check_pattern(pattern)
    stems = [stem]
    if stem.endswith("_aligned") and len(stem) > len("_aligned"):
        stems.append(stem[:-len("_aligned")])
    tried: set[str] = set()
    for candidate_stem in stems:
        for pattern in patterns:
            name = pattern.format(stem=candidate_stem)
            if name in tried:
                continue
            tried.add(name)
            path = Path(csv_dir) / name
            if path.is_file():
                return path
    return None


# ---------------------------------------------------------------------------------------------
# GANimation's aus_openface.pkl
# ---------------------------------------------------------------------------------------------
class _ForbiddenGlobal(pickle.UnpicklingError):
    pass


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Python 3 writes bytes as _codecs.encode(text, 'latin1') in pickle protocols 0-2; nothing else.
    if encoding != "latin1":
        raise _ForbiddenGlobal(f"_codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


# Bounds on what an AU pickle may build, checked before anything is allocated. GANimation's file holds
# 17 values per image; the largest public AU pickles (EmotioNet-scale) hold about 200k images.
MAX_PKL_BYTES = 256 * 1024 * 1024          # the file itself
MAX_PKL_ARRAY_ELEMENTS = 4096              # one array (an entry has 17)
MAX_PKL_TOTAL_ELEMENTS = 17 * 2_000_000    # all arrays of one file together
_PKL_DTYPE_KINDS = "fiub"                  # numbers (and bools); never object, string or void dtypes


def _pkl_elements(shape: Any) -> int:
    """Element count of a shape from the pickle stream, refusing anything that is not small non-negative ints."""
    dims = (shape,) if isinstance(shape, int) else shape
    if not isinstance(dims, (tuple, list)) or len(dims) > 8:
        raise _ForbiddenGlobal(f"array shape {shape!r}")
    total = 1
    for dim in dims:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 0:
            raise _ForbiddenGlobal(f"array shape {shape!r}")
        total *= int(dim)
    return total


def _pkl_dtype(dtype: Any) -> np.dtype:
    try:
        resolved = np.dtype(dtype) if dtype is not None else np.dtype(float)
    except Exception as err:
        raise _ForbiddenGlobal(f"dtype {dtype!r} ({err})") from None
    if resolved.kind not in _PKL_DTYPE_KINDS or resolved.fields is not None or resolved.subdtype is not None:
        raise _ForbiddenGlobal(f"an array of dtype {resolved} (AU arrays hold numbers)")
    return resolved


class _PklBudget:
    """Counts elements across one load; refuses an array before numpy allocates it."""

    def __init__(self) -> None:
        self.elements = 0

    def take(self, shape: Any, dtype: Any) -> None:
        _pkl_dtype(dtype)
        n = _pkl_elements(shape)
        if n > MAX_PKL_ARRAY_ELEMENTS:
            raise _ForbiddenGlobal(f"an array of {n} elements (limit {MAX_PKL_ARRAY_ELEMENTS} per array)")
        self.elements += n
        if self.elements > MAX_PKL_TOTAL_ELEMENTS:
            raise _ForbiddenGlobal(f"more than {MAX_PKL_TOTAL_ELEMENTS} array elements in all")


def _guarded_globals(budget: _PklBudget) -> dict[tuple[str, str], Any]:
    """The allow-list, each callable wrapped so that dtypes, shapes and sizes are checked before allocation."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric

    class GuardedArray(np.ndarray):
        """numpy.ndarray as the pickle sees it: the constructor and __setstate__ (pickle's BUILD) check first."""

        def __new__(cls, shape, dtype=float, *args, **kwargs):
            budget.take(shape, dtype)
            return np.ndarray.__new__(cls, shape, dtype, *args, **kwargs)

        def __setstate__(self, state):
            if not isinstance(state, tuple) or len(state) not in (4, 5):
                raise _ForbiddenGlobal(f"array state of type {type(state).__name__}")
            shape, dtype = state[-4], state[-3]
            budget.take(shape, dtype)
            super().__setstate__(state)

    def reconstruct(subtype, shape, dtype):
        if subtype is not GuardedArray:
            raise _ForbiddenGlobal(f"_reconstruct of {subtype!r}")
        if _pkl_elements(shape) > 1:  # pickle rebuilds arrays as a 0/1-element stub, then sets their state
            raise _ForbiddenGlobal(f"_reconstruct with shape {shape!r}")
        return multiarray._reconstruct(GuardedArray, shape, dtype)

    def scalar(dtype, *data):
        return multiarray.scalar(_pkl_dtype(dtype), *data)

    def frombuffer(buffer, dtype, shape, order):
        budget.take(shape, dtype)
        return numeric._frombuffer(buffer, dtype, shape, order)

    def dtype(*args, **kwargs):
        return _pkl_dtype(np.dtype(*args, **kwargs))

    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): GuardedArray,
        ("numpy", "dtype"): dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for package in ("numpy.core", "numpy._core"):  # numpy 1.x and 2.x names
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = scalar
        # Arrays re-saved from Python 3 with pickle protocol 5 are rebuilt from their buffer.
        allowed[(f"{package}.numeric", "_frombuffer")] = frombuffer
    for module in ("builtins", "__builtin__"):  # Python 3 and Python 2 names
        allowed[(module, "dict")] = dict
        allowed[(module, "list")] = list
    return allowed


class _AUPickleUnpickler(pickle.Unpickler):
    """Resolves only the globals a pickled dict of numpy arrays needs; anything else is refused unrun,
    and every array is checked against the bounds above before it is allocated."""

    def __init__(self, file, **kwargs):
        super().__init__(file, **kwargs)
        self._allowed = _guarded_globals(_PklBudget())

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _ForbiddenGlobal(f"{module}.{name}") from None


@dataclass(frozen=True)
class AUPickle:
    """GANimation's aus_openface.pkl, read entry by entry: usable AUs, and why each other entry is not."""

    values: dict[str, np.ndarray]                                   # stem -> float32 [17] in 0..1
    bad: dict[str, RejectError] = field(default_factory=dict)       # stem -> why that entry is unusable

    def lookup(self, keys: Sequence[str]) -> np.ndarray | RejectError | None:
        """The first of `keys` present: its AUs, or the RejectError of its bad entry; None if absent."""
        for key in keys:
            if key in self.values:
                return self.values[key]
            if key in self.bad:
                return self.bad[key]
        return None


def load_ganimation_pkl(path: str | Path) -> AUPickle:
    """Every entry of an aus_openface.pkl ({stem: 17 values in 0..5}), checked one by one.

    The file is a Python 2 pickle (read with encoding='latin1') loaded through an allow-list: a pickle
    naming any other callable, or an array of a non-numeric dtype or beyond the size bounds, raises
    RejectError before anything runs or is allocated. A bad entry (NaN, out of range, wrong shape)
    only makes that entry unusable; the file as a whole is refused when it cannot be read.
    """
    path = Path(path)
    if path.is_file() and path.stat().st_size > MAX_PKL_BYTES:
        raise _reject("au_pkl_too_large", f"{path}: {path.stat().st_size} bytes, more than the "
                                          f"{MAX_PKL_BYTES // (1024 * 1024)} MiB an AU pickle may have")
    data = _read_bytes(path)
    if not data:
        raise _reject("au_file_empty", f"{path}: file is empty (0 bytes)")
    try:
        content = _AUPickleUnpickler(io.BytesIO(data), encoding="latin1").load()
    except _ForbiddenGlobal as err:
        raise _reject("au_pkl_forbidden_global", f"{path}: refused to load, the pickle builds {err} "
                                                 "(an AU pickle only holds small numeric numpy arrays)") from None
    except Exception as err:  # unpickling bad bytes can raise nearly any type
        raise _reject("au_file_malformed", f"{path}: not a readable pickle ({type(err).__name__}: {err})") from None
    if not isinstance(content, dict):
        raise _reject("au_file_malformed", f"{path}: holds a {type(content).__name__}, expected a dict of stem -> 17 AUs")
    if not content:
        raise _reject("au_file_empty", f"{path}: the dict has no entries")
    values: dict[str, np.ndarray] = {}
    bad: dict[str, RejectError] = {}
    for key, value in content.items():
        stem = key.decode("latin1") if isinstance(key, bytes) else key
        if not isinstance(stem, str):
            raise _reject("au_file_malformed", f"{path}: key {key!r} is a {type(key).__name__}, expected a string stem")
        try:
            values[stem] = _checked_pkl_value(path, stem, value)
        except RejectError as err:
            bad[stem] = err
    return AUPickle(values, bad)


def read_ganimation_pkl(path: str | Path) -> dict[str, np.ndarray]:
    """{image stem: float32 [17] AUs in 0..1}; strict: RejectError on the first bad entry (see load_ganimation_pkl)."""
    table = load_ganimation_pkl(path)
    if table.bad:
        raise next(iter(table.bad.values()))
    return table.values


def _checked_pkl_value(path: Path, stem: str, value: Any) -> np.ndarray:
    try:
        array = np.asarray(value)
    except Exception as err:
        raise _reject("au_file_malformed", f"{path}: {stem!r}: value is not an array ({err})") from None
    if array.dtype.kind not in "fiu":
        raise _reject("au_file_malformed", f"{path}: {stem!r}: values have dtype {array.dtype}, expected numbers")
    if array.shape != (N_AUS,):
        raise _reject("au_value_shape", f"{path}: {stem!r}: shape {array.shape}, expected ({N_AUS},)")
    array = array.astype(np.float64)
    for i, value_i in enumerate(array):
        if np.isnan(value_i):
            raise _reject("au_value_nan", f"{path}: {stem!r}: {AU_NAMES[i]} is NaN")
        if not 0.0 <= value_i <= AU_INTENSITY_MAX:
            raise _reject("au_value_out_of_range",
                          f"{path}: {stem!r}: {AU_NAMES[i]} = {value_i:g} is outside 0..{AU_INTENSITY_MAX:g}")
    return (array / AU_INTENSITY_MAX).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Inspection (`singanimation inspect-au`)
# ---------------------------------------------------------------------------------------------
def inspect_au(path: str | Path, config: OpenFaceConfig = OpenFaceConfig()) -> dict:
    """JSON-able summary of one AU file: what would be read from it, or why it is rejected."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".pkl", ".pickle"):
            table = load_ganimation_pkl(path)
            return {
                "path": str(path), "ok": bool(table.values), "kind": "ganimation_pkl",
                "n_keys": len(table.values) + len(table.bad), "n_bad": len(table.bad),
                "aus": {stem: {name: float(v) for name, v in zip(AU_NAMES, values)} for stem, values in table.values.items()},
                "bad_entries": {stem: {"reason": err.reason, "detail": err.detail} for stem, err in table.bad.items()},
            }
        csv_table = _load_table(path)
        reading = _read_table(csv_table, config, None)
        return {
            "ok": True, "kind": "openface_csv", "layout": detect_openface_layout(csv_table.columns),
            "n_columns": len(csv_table.columns), "n_rows": len(csv_table.rows), **reading.to_json(),
        }
    except RejectError as err:
        return {"path": str(path), "ok": False, "stage": err.stage, "reason": err.reason, "detail": err.detail}


# ---------------------------------------------------------------------------------------------
# Writing OpenFace-format CSVs (test fixtures and the demo)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OpenFaceRow:
    """One data row to write. aus: intensities 0..5, a {AU01: v} mapping or 17 values in AU_NAMES order."""

    aus: Mapping[str, float] | Sequence[float] | np.ndarray
    confidence: float = 0.98
    success: int = 1
    face_id: int = 0
    frame: int = 1
    timestamp: float | None = None          # default (frame - 1) / 30 s
    landmarks68: np.ndarray | None = None   # [68, 2] x, y pixels; default a synthetic face placed by face_id
    presence: Mapping[str, float] | None = None  # AUxx -> 0/1 for the _c columns; default intensity >= 1


def synthetic_landmarks68(center_xy: Sequence[float], inter_ocular_px: float) -> np.ndarray:
    """A plausible frontal 68-point (iBUG order) face: [68, 2] pixels, eye centres inter_ocular_px apart.

    Eye centres sit at center_xy -/+ (inter_ocular_px / 2, 0), the nose tip 0.6 and the mouth
    corners 1.1 inter-ocular distances below, so landmarks5_from_68 of it is known exactly.
    """
    jaw_t = np.linspace(0.0, np.pi, 17)
    jaw = np.stack([-np.cos(jaw_t), 0.1 + 1.4 * np.sin(jaw_t)], axis=1)
    brow_x = np.linspace(-0.9, -0.15, 5)
    brow_left = np.stack([brow_x, -0.35 - 0.1 * np.sin(np.linspace(0, np.pi, 5))], axis=1)
    brow_right = brow_left[::-1] * [-1.0, 1.0]
    nose_bridge = np.stack([np.zeros(4), np.linspace(-0.1, 0.6, 4)], axis=1)
    nose_base = np.stack([np.linspace(-0.25, 0.25, 5), np.full(5, 0.7)], axis=1)
    eye_t = np.deg2rad([180, 120, 60, 0, 300, 240])  # outer corner, upper lid, inner corner, lower lid
    eye = np.stack([0.2 * np.cos(eye_t), -0.1 * np.sin(eye_t)], axis=1)
    mouth_t = np.deg2rad(180 - 30 * np.arange(12))     # 48 left corner ... 54 right corner ...
    mouth_outer = np.stack([0.45 * np.cos(mouth_t), 1.1 - 0.2 * np.sin(mouth_t)], axis=1)
    inner_t = np.deg2rad(180 - 45 * np.arange(8))
    mouth_inner = np.stack([0.3 * np.cos(inner_t), 1.1 - 0.08 * np.sin(inner_t)], axis=1)
    template = np.concatenate([
        jaw, brow_left, brow_right, nose_bridge, nose_base,
        eye + [-0.5, 0.0], eye + [0.5, 0.0], mouth_outer, mouth_inner,
    ])                                                                               # [68, 2], IOD = 1
    return np.asarray(center_xy, dtype=np.float64) + float(inter_ocular_px) * template


def _as_row(row: OpenFaceRow | Mapping[str, Any]) -> OpenFaceRow:
    return row if isinstance(row, OpenFaceRow) else OpenFaceRow(**row)


def _au_intensities(aus: Mapping[str, float] | Sequence[float] | np.ndarray) -> dict[str, float]:
    if isinstance(aus, Mapping):
        missing = [name for name in AU_NAMES if name not in aus]
        if missing:
            raise ValueError(f"row aus lacks {', '.join(missing)}")
        return {name: float(aus[name]) for name in AU_NAMES}
    values = np.asarray(aus, dtype=np.float64).reshape(-1)
    if values.shape != (N_AUS,):
        raise ValueError(f"row aus must hold {N_AUS} values in AU_NAMES order, got shape {values.shape}")
    return dict(zip(AU_NAMES, values.tolist()))


def _format_number(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)  # repr round-trips exactly


def _row_cells(row: OpenFaceRow, columns: tuple[str, ...]) -> list[str]:
    intensities = _au_intensities(row.aus)
    presence = dict(row.presence or {})
    landmarks = (np.asarray(row.landmarks68, dtype=np.float64) if row.landmarks68 is not None
                 else synthetic_landmarks68((60.0 + 120.0 * row.face_id, 60.0), 40.0))
    if landmarks.shape != (N_FACE_LANDMARKS, 2):
        raise ValueError(f"landmarks68 must be [68, 2], got {landmarks.shape}")
    known = {
        "frame": row.frame, "face_id": row.face_id, "face": row.face_id,
        "timestamp": (row.frame - 1) / 30.0 if row.timestamp is None else row.timestamp,
        "confidence": row.confidence, "success": row.success,
    }
    cells = []
    for name in columns:
        if name in known:
            value = known[name]
        elif _AU_COLUMN.match(name) and name.endswith("_r"):
            value = intensities[name[:-2]]
        elif _AU_COLUMN.match(name):
            au = name[:-2]
            value = presence.get(au, 1.0 if intensities.get(au, 0.0) >= 1.0 else 0.0)
        elif re.fullmatch(r"[xy]_\d+", name):
            value = landmarks[int(name[2:]), 0 if name[0] == "x" else 1]
        else:
            value = 0.0  # gaze, pose, 3D points, model parameters, extra columns: not read by us
        cells.append(_format_number(value))
    return cells


def write_openface_csv(
    path: str | Path,
    rows: Sequence[OpenFaceRow | Mapping[str, Any]],
    variant: str = "feature_extraction",
    sep: str = ", ",
    crlf: bool = False,
    extra_columns: int = 0,
    bom: bool = False,
) -> Path:
    """Write rows in one OpenFace layout (see OPENFACE_LAYOUTS) with known values; returns the path.

    sep ", " is what 2.0.x release builds write, "," what builds from current source write;
    extra_columns appends columns extra_0.. (as modified builds do); bom prefixes a UTF-8 BOM.
    """
    if variant not in OPENFACE_LAYOUTS:
        raise ValueError(f"variant must be one of {sorted(OPENFACE_LAYOUTS)}, got {variant!r}")
    if sep not in (", ", ","):
        raise ValueError(f"sep must be ', ' or ',', got {sep!r}")
    if extra_columns < 0:
        raise ValueError(f"extra_columns must be >= 0, got {extra_columns}")
    columns = OPENFACE_LAYOUTS[variant] + tuple(f"extra_{i}" for i in range(extra_columns))
    newline = "\r\n" if crlf else "\n"
    lines = [sep.join(columns)] + [sep.join(_row_cells(_as_row(row), columns)) for row in rows]
    text = newline.join(lines) + newline
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((codecs.BOM_UTF8 if bom else b"") + text.encode("utf-8"))
    return path
