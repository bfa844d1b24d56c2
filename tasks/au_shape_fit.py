"""Fit the AU -> landmark displacement model (models.au_shape) from real OpenFace output, with a held-out report."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from manifests.atomic import atomic_write_text
from manifests.schema import AU_INTENSITY_MAX, AU_NAMES, N_AUS
from models.au_shape import N_LANDMARKS, AUShapeModel, default_au_shape_model, face_frame
from tasks import openface
from tasks.errors import RejectError

STAGE = "au_shape_fit"

# Regions of the iBUG 68-point layout, for the per-region error columns.
REGIONS: dict[str, tuple[int, ...]] = {
    "brows": tuple(range(17, 27)),
    "eyes": tuple(range(36, 48)),
    "nose": tuple(range(27, 36)),
    "mouth": tuple(range(48, 68)),
    "jaw": tuple(range(0, 17)),
}
POSE_COLUMNS = ("pose_Rx", "pose_Ry", "pose_Rz")  # head rotation, radians (OpenFace)
LANDMARK_COLUMNS = tuple(f"{axis}_{i}" for i in range(N_LANDMARKS) for axis in "xy")  # x_0, y_0, x_1, ...
RIDGE_GRID = (0.01, 0.1, 0.3, 1.0, 3.0, 10.0)
# A row counts as "expressive" when some AU is at least this far (0..1 units; 0.2 = one OpenFace step) from
# its subject's mean: most video frames sit near the subject's mean, where every method looks alike.
EXPRESSIVE_AU_DELTA = 0.2


class FitInputError(Exception):
    """The inputs cannot give a fit (no landmark columns, too few usable rows, ...): one clear line for the CLI."""


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FitConfig:
    """How the model is fitted and judged.

    ridge:        penalty on the AU basis (None: the best of RIDGE_GRID by held-out error). Units: sum over
                  rows of squared, subject-centred AU intensity (0..1); an AU whose centred intensities have
                  sum of squares S keeps about S / (S + ridge) of what the data alone say.
    mode:         "full" fits the basis from the data (shrunk toward 0); "residual" fits the difference from the
                  FACS default (shrunk toward the default); "local" is "residual" restricted to the points the
                  FACS table lets each AU move (an AU cannot pick up motion elsewhere on the face that merely
                  co-occurs with it in the data); "scaled" keeps the default's points and directions and fits
                  one size per AU (shrunk toward the default's size); "auto" measures all four.
    pose:         "linear": per-point terms linear in pose_Rx/Ry/Rz, so head pose does not leak into the AU
                  basis; "none": no pose terms (prepared manifests carry no pose).
    holdout:      "blocks": per subject, contiguous blocks of block_frames rows (time order) go to `folds` folds
                  round robin; training drops gap_frames rows each side of a held-out block (neighbouring
                  frames are near copies). "files": leave one subject/file out; the held-out subject's neutral
                  shape is its own mean (the editor always knows the face it edits).
    subjects:     who gets an own neutral shape. "file": each CSV (each face_id of a multi-face file);
                  "pooled": one for all rows; "auto": each file/face with at least min_subject_rows rows (a
                  video of one person), and one shared by all smaller ones (single-image CSVs, e.g. one
                  FaceLandmarkImg file per RAF-DB photo: one row cannot tell a neutral shape from an AU).
                  A prepared manifest's rows are always one pooled group (it records no subject).
    iod_px:       the inter-ocular distance used to report errors in pixels (about 31 px in a 128 px crop).
    choose:       "best": the candidate with the lowest held-out error; "1se": the most conservative candidate
                  (scaled, local, residual, full; larger ridge first) whose error is within one standard
                  error (over held-out blocks) of the best: differences smaller than the noise of the
                  estimate do not buy a model that strays further from FACS.
    """

    ridge: float | None = None
    mode: Literal["auto", "full", "residual", "local", "scaled"] = "auto"
    pose: Literal["linear", "none"] = "linear"
    holdout: Literal["blocks", "files"] = "blocks"
    block_frames: int = 25
    gap_frames: int = 3
    folds: int = 5
    min_confidence: float = openface.OpenFaceConfig().min_confidence
    min_rows: int = 40
    subjects: Literal["auto", "file", "pooled"] = "auto"
    min_subject_rows: int = 10
    iod_px: float = 31.0
    choose: Literal["1se", "best"] = "1se"

    def __post_init__(self) -> None:
        if self.ridge is not None and not self.ridge >= 0:
            raise ValueError(f"ridge must be >= 0, got {self.ridge}")
        if self.mode not in ("auto", "full", "residual", "local", "scaled"):
            raise ValueError(f"mode must be auto, full, residual, local or scaled, got {self.mode!r}")
        if self.pose not in ("linear", "none"):
            raise ValueError(f"pose must be linear or none, got {self.pose!r}")
        if self.holdout not in ("blocks", "files"):
            raise ValueError(f"holdout must be blocks or files, got {self.holdout!r}")
        if self.block_frames < 1 or self.gap_frames < 0 or self.folds < 2:
            raise ValueError("block_frames >= 1, gap_frames >= 0 and folds >= 2 are needed")
        if self.choose not in ("1se", "best"):
            raise ValueError(f"choose must be 1se or best, got {self.choose!r}")
        if self.subjects not in ("auto", "file", "pooled"):
            raise ValueError(f"subjects must be auto, file or pooled, got {self.subjects!r}")
        if self.min_rows < 2:
            raise ValueError(f"min_rows must be >= 2, got {self.min_rows}")


# ---------------------------------------------------------------------------------------------
# Rows: landmarks in the face frame, AUs, pose, subject and time order
# ---------------------------------------------------------------------------------------------
@dataclass
class ShapeRows:
    """Usable rows: points [N, 68, 2] in face units, aus [N, 17] in 0..1, pose [N, 3] radians or None,
    group [N] (index into groups: one subject/video each), time [N] (order within its group)."""

    points: np.ndarray
    aus: np.ndarray
    pose: np.ndarray | None
    group: np.ndarray
    time: np.ndarray
    groups: list[str]
    inputs: list[dict[str, Any]] = field(default_factory=list)    # path, sha256, rows used / skipped
    skipped: dict[str, int] = field(default_factory=dict)          # reason -> rows
    rejected: list[dict[str, str]] = field(default_factory=list)   # whole inputs that gave nothing

    def __len__(self) -> int:
        return len(self.aus)


def _skip(counts: dict[str, int], reason: str) -> None:
    counts[reason] = counts.get(reason, 0) + 1


def _to_face(points_px: np.ndarray) -> np.ndarray | None:
    """[68, 2] image px -> face units, or None for a degenerate face (eyes coincide)."""
    try:
        return face_frame(points_px).to_face(points_px)
    except ValueError:
        return None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_openface_rows(path: str | Path, min_confidence: float, skipped: dict[str, int]) -> dict[str, Any]:
    """One OpenFace CSV -> {faces: {face key: dict(points, aus, pose, time)}, note}; RejectError when unusable.

    Reuses tasks.openface's table reader (", " or "," separators, CRLF, BOM, a cut-off last line) and column
    checks. Rows with success == 0, confidence below min_confidence, a non-finite or out-of-range value, or a
    degenerate face are skipped and counted in `skipped` by reason.
    """
    table = openface._load_table(path)
    openface._require_columns(table)
    missing = [name for name in LANDMARK_COLUMNS if not table.has(name)]
    if missing:
        raise RejectError(STAGE, "landmark_columns_missing",
                          f"{table.path}: no 2D landmark columns x_0..x_67, y_0..y_67 ({len(missing)} of "
                          f"{len(LANDMARK_COLUMNS)} missing; FeatureExtraction / FaceLandmarkImg write them by default)")
    rows = list(range(len(table.rows)))
    confidence = openface._column(table, "confidence", rows)
    success = openface._column(table, "success", rows) if table.has("success") else np.ones(len(rows))
    faces, _ = openface._face_keys(table, rows)
    # Time order: timestamps advance even in files whose frame column is constant (frame = 0 everywhere).
    if table.has("timestamp"):
        time = openface._column(table, "timestamp", rows)
    elif table.has("frame"):
        time = openface._column(table, "frame", rows)
    else:
        time = np.arange(len(rows), dtype=np.float64)
    time = np.where(np.isfinite(time), time, np.arange(len(rows), dtype=np.float64))
    aus = np.stack([openface._column(table, f"{name}_r", rows) for name in AU_NAMES], axis=1)      # [R, 17]
    coords = np.stack([openface._column(table, name, rows) for name in LANDMARK_COLUMNS], axis=1)  # [R, 136]
    has_pose = all(table.has(name) for name in POSE_COLUMNS)
    pose = (np.stack([openface._column(table, name, rows) for name in POSE_COLUMNS], axis=1) if has_pose
            else None)

    out: dict[Any, dict[str, list]] = {}
    for r in rows:
        if success[r] == 0:
            _skip(skipped, "success=0")
            continue
        if not confidence[r] >= min_confidence:
            _skip(skipped, f"confidence<{min_confidence:g}")
            continue
        if not np.all(np.isfinite(aus[r])) or np.any((aus[r] < 0) | (aus[r] > AU_INTENSITY_MAX)):
            _skip(skipped, "au_value_bad")
            continue
        if not np.all(np.isfinite(coords[r])) or (pose is not None and not np.all(np.isfinite(pose[r]))):
            _skip(skipped, "landmark_or_pose_nan")
            continue
        points = _to_face(coords[r].reshape(N_LANDMARKS, 2))
        if points is None:
            _skip(skipped, "degenerate_face")
            continue
        face = out.setdefault(int(faces[r]), {"points": [], "aus": [], "pose": [], "time": []})
        face["points"].append(points)
        face["aus"].append(aus[r] / AU_INTENSITY_MAX)
        face["pose"].append(pose[r] if pose is not None else np.zeros(len(POSE_COLUMNS)))
        face["time"].append(time[r])
    note = table.note.lstrip("; ")
    return {"faces": out, "has_pose": has_pose, "n_rows": len(rows), "note": note}


def read_manifest_rows(root: str | Path, skipped: dict[str, int]) -> dict[str, Any]:
    """A prepared output's train originals with `landmarks` (crop px) and `au_source` -> one face of rows.

    The manifest carries no head pose and no subject id: all rows are one group, in source_id order (so the
    frames of one video sequence, named in order, fall into the same held-out blocks).
    """
    from manifests.reader import read_manifest

    table = read_manifest(root)
    missing = [name for name in ("landmarks", "au_source") if name not in table.column_names]
    if missing:
        raise RejectError(STAGE, "landmark_columns_missing",
                          f"{root}: the manifest has no {' / '.join(missing)} column (prepared before landmarks were "
                          "stored; run `singanimation prepare` again, or give the OpenFace CSVs instead)")
    data = table.select(["source_id", "split", "stage", "landmarks", "au_source"]).to_pylist()
    data.sort(key=lambda row: str(row["source_id"]))
    face: dict[str, list] = {"points": [], "aus": [], "pose": [], "time": []}
    for k, row in enumerate(data):
        if row["stage"] != "original" or row["split"] != "train":
            _skip(skipped, "not_a_train_original")
            continue
        if row["landmarks"] is None or row["au_source"] is None:
            _skip(skipped, "no_landmarks" if row["landmarks"] is None else "no_aus")
            continue
        coords = np.asarray(row["landmarks"], np.float64)
        aus = np.asarray(row["au_source"], np.float64)
        if coords.shape != (2 * N_LANDMARKS,) or not np.all(np.isfinite(coords)):
            _skip(skipped, "landmark_or_pose_nan")
            continue
        if aus.shape != (N_AUS,) or not np.all(np.isfinite(aus)) or np.any((aus < 0) | (aus > 1)):
            _skip(skipped, "au_value_bad")
            continue
        points = _to_face(coords.reshape(N_LANDMARKS, 2))
        if points is None:
            _skip(skipped, "degenerate_face")
            continue
        face["points"].append(points)
        face["aus"].append(aus)
        face["pose"].append(np.zeros(len(POSE_COLUMNS)))
        face["time"].append(float(k))
    return {"faces": {0: face} if face["aus"] else {}, "has_pose": False, "n_rows": len(data), "note": ""}


def find_inputs(sources: list[str | Path]) -> list[tuple[str, Path]]:
    """[(kind, path)]: a prepared output root (has manifest/), a folder of CSVs, or CSV files."""
    found: list[tuple[str, Path]] = []
    for source in sources:
        path = Path(source)
        if not path.exists():
            raise FitInputError(f"{path}: no such file or folder")
        if path.is_dir() and (path / "manifest").is_dir():
            found.append(("manifest", path))
        elif path.is_dir():
            csvs = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() == ".csv")
            if not csvs:
                raise FitInputError(f"{path}: neither a prepared output (no manifest/ folder) nor a folder of "
                                    "OpenFace CSVs (no *.csv inside)")
            found += [("csv", p) for p in csvs]
        else:
            found.append(("csv", path))
    return found


def load_rows(sources: list[str | Path], config: FitConfig) -> ShapeRows:
    """Every usable row of every input; FitInputError when fewer than config.min_rows remain."""
    skipped: dict[str, int] = {}
    inputs, rejected = [], []
    parts: list[tuple[str, dict[str, list]]] = []
    all_pose = True
    for kind, path in find_inputs(sources):
        before = dict(skipped)
        try:
            read = (read_manifest_rows(path, skipped) if kind == "manifest"
                    else read_openface_rows(path, config.min_confidence, skipped))
        except RejectError as err:
            rejected.append(err.as_row(str(path)))
            continue
        used = sum(len(face["aus"]) for face in read["faces"].values())
        record = {"path": str(path), "kind": kind, "rows": read["n_rows"], "used": used,
                  "skipped": {k: v - before.get(k, 0) for k, v in skipped.items() if v != before.get(k, 0)}}
        if kind == "csv":
            record["sha256"] = _sha256(path)
        if read["note"]:
            record["note"] = read["note"]
        inputs.append(record)
        if not used:
            rejected.append({"source_id": str(path), "stage": STAGE, "reason": "no_usable_rows",
                             "detail": f"{path}: none of {read['n_rows']} rows usable ({record['skipped']})"})
            continue
        all_pose = all_pose and read["has_pose"]
        for key, face in sorted(read["faces"].items()):
            name = str(path) if len(read["faces"]) == 1 else f"{path}#face{key}"
            parts.append((name, face))
    n = sum(len(face["aus"]) for _, face in parts)
    if n < config.min_rows:
        why = "; ".join(f"{r['source_id']}: {r['reason']} ({r['detail']})" for r in rejected[:3])
        raise FitInputError(f"{n} usable row(s), need at least {config.min_rows}"
                            + (f"; skipped rows: {skipped}" if skipped else "") + (f"; {why}" if why else ""))
    parts = _subjects(parts, config)
    use_pose = config.pose == "linear" and all_pose
    return ShapeRows(
        points=np.concatenate([np.stack(face["points"]) for _, face in parts]),
        aus=np.concatenate([np.stack(face["aus"]) for _, face in parts]),
        pose=np.concatenate([np.stack(face["pose"]) for _, face in parts]) if use_pose else None,
        group=np.concatenate([np.full(len(face["aus"]), g) for g, (_, face) in enumerate(parts)]),
        time=np.concatenate([np.asarray(face["time"], np.float64) for _, face in parts]),
        groups=[name for name, _ in parts], inputs=inputs, skipped=skipped, rejected=rejected,
    )


def _subjects(parts: list[tuple[str, dict[str, list]]], config: FitConfig) -> list[tuple[str, dict[str, list]]]:
    """The groups that get their own neutral shape (see FitConfig.subjects); pooled rows are ordered by input."""
    if config.subjects == "file":
        return parts
    small = parts if config.subjects == "pooled" else [p for p in parts if len(p[1]["aus"]) < config.min_subject_rows]
    if len(small) <= 1:
        return parts
    kept = [p for p in parts if p not in small]
    pooled: dict[str, list] = {key: [x for _, face in small for x in face[key]] for key in ("points", "aus", "pose")}
    pooled["time"] = list(range(len(pooled["aus"])))
    return kept + [(f"pooled: {len(small)} inputs", pooled)]


# ---------------------------------------------------------------------------------------------
# The fit: per-subject neutral shape + AU basis + pose terms, ridge least squares
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fit:
    """basis [17, 68, 2]; pose_terms [P, 68, 2] per radian; neutral {group: [68, 2]} at zero AUs and pose."""

    basis: np.ndarray
    pose_terms: np.ndarray
    neutral: dict[int, np.ndarray]


def _design(aus: np.ndarray, pose: np.ndarray | None) -> np.ndarray:
    return aus if pose is None else np.concatenate([aus, pose], axis=1)   # [N, 17 + P]


def _group_means(values: np.ndarray, group: np.ndarray) -> dict[int, np.ndarray]:
    return {int(g): values[group == g].mean(axis=0) for g in np.unique(group)}


def fit_shape(points: np.ndarray, aus: np.ndarray, pose: np.ndarray | None, group: np.ndarray, ridge: float,
              prior: np.ndarray | None = None, support: np.ndarray | None = None) -> Fit:
    """Ridge least squares of points [N, 68, 2] = neutral[group] + aus @ basis + pose @ pose_terms + noise.

    The neutral shapes are free per group (fixed effects: everything is centred within its group first).
    `ridge` penalises the AU basis only, toward `prior` ([17, 68, 2], e.g. the FACS default) or toward 0;
    pose terms get a negligible penalty (numerical safety), so pose does not leak into the AU basis.
    support: [17, 68] bool, which points each AU may move (elsewhere its basis stays at the prior).
    """
    n = len(aus)
    X = _design(aus, pose)                                                    # [N, K]
    Y = points.reshape(n, -1)                                                 # [N, 136]
    x_mean, y_mean = _group_means(X, group), _group_means(Y, group)
    Xc = X - np.stack([x_mean[int(g)] for g in group])
    Yc = Y - np.stack([y_mean[int(g)] for g in group])
    b0 = np.zeros((N_AUS, Y.shape[1])) if prior is None else prior.reshape(N_AUS, -1)
    Yc = Yc - Xc[:, :N_AUS] @ b0                                              # fit what the prior leaves
    penalty = np.full(X.shape[1], 1e-6 * max(n, 1))
    penalty[:N_AUS] += ridge
    if support is None:
        W = np.linalg.solve(Xc.T @ Xc + np.diag(penalty), Xc.T @ Yc)           # [K, 136]
    else:
        W = np.zeros((X.shape[1], Y.shape[1]))
        for j in range(N_LANDMARKS):   # per point: its pose columns and the AUs allowed to move it
            cols = np.concatenate([np.flatnonzero(support[:, j]), np.arange(N_AUS, X.shape[1])])
            xj = Xc[:, cols]
            W[np.ix_(cols, [2 * j, 2 * j + 1])] = np.linalg.solve(xj.T @ xj + np.diag(penalty[cols]),
                                                                  xj.T @ Yc[:, 2 * j:2 * j + 2])
    W[:N_AUS] += b0
    neutral = {g: (y_mean[g] - x_mean[g] @ W).reshape(N_LANDMARKS, 2) for g in y_mean}
    return Fit(basis=W[:N_AUS].reshape(N_AUS, N_LANDMARKS, 2),
               pose_terms=W[N_AUS:].reshape(-1, N_LANDMARKS, 2), neutral=neutral)


def fit_scaled(points: np.ndarray, aus: np.ndarray, pose: np.ndarray | None, group: np.ndarray, ridge: float,
               prior: np.ndarray) -> Fit:
    """The same model with basis[a] = scale[a] * prior[a]: one size per AU, least squares jointly with the pose
    terms (pose partialled out first), `ridge` pulling each scale toward 1 with the units of fit_shape's penalty
    (ridge * |scale - 1|^2 * |prior[a]|^2 = ridge * |basis[a] - prior[a]|^2)."""
    n = len(aus)
    Y = points.reshape(n, -1)
    A = aus
    P = np.zeros((n, 0)) if pose is None else pose
    y_mean, a_mean, p_mean = _group_means(Y, group), _group_means(A, group), _group_means(P, group)
    Yc = Y - np.stack([y_mean[int(g)] for g in group])
    Ac = A - np.stack([a_mean[int(g)] for g in group])
    Pc = P - np.stack([p_mean[int(g)] for g in group])
    D = prior.reshape(N_AUS, -1)                                              # [17, 136]
    if Pc.shape[1]:                                                           # partial the pose out of both
        solve = np.linalg.solve(Pc.T @ Pc + 1e-6 * max(n, 1) * np.eye(Pc.shape[1]), Pc.T)
        Y_res, A_res = Yc - Pc @ (solve @ Yc), Ac - Pc @ (solve @ Ac)
    else:
        Y_res, A_res = Yc, Ac
    dd = D @ D.T                                                              # [17, 17] <d_a, d_b>
    gram = (A_res.T @ A_res) * dd + ridge * np.diag(np.diag(dd)) + 1e-9 * np.eye(N_AUS)
    rhs = np.einsum("ia,ij,aj->a", A_res, Y_res, D) + ridge * np.diag(dd)
    scale = np.linalg.solve(gram, rhs)                                        # [17]
    basis = scale[:, None] * D                                                # [17, 136]
    rest = Yc - Ac @ basis
    pose_w = (np.linalg.solve(Pc.T @ Pc + 1e-6 * max(n, 1) * np.eye(Pc.shape[1]), Pc.T @ rest) if Pc.shape[1]
              else np.zeros((0, Y.shape[1])))
    neutral = {g: (y_mean[g] - a_mean[g] @ basis - p_mean[g] @ pose_w).reshape(N_LANDMARKS, 2) for g in y_mean}
    return Fit(basis=basis.reshape(N_AUS, N_LANDMARKS, 2), pose_terms=pose_w.reshape(-1, N_LANDMARKS, 2),
               neutral=neutral)


def predict(fit: Fit, aus: np.ndarray, pose: np.ndarray | None, group: np.ndarray) -> np.ndarray:
    """[N, 68, 2] face units for rows of known groups."""
    out = np.stack([fit.neutral[int(g)] for g in group]) + np.tensordot(aus, fit.basis, axes=([1], [0]))
    if pose is not None and len(fit.pose_terms):
        out = out + np.tensordot(pose, fit.pose_terms, axes=([1], [0]))
    return out


def recentre(fit: Fit, points: np.ndarray, aus: np.ndarray, pose: np.ndarray | None, group: np.ndarray) -> Fit:
    """The same basis and pose terms with each group's neutral shape taken from these rows (a new subject)."""
    rest = points - predict(Fit(fit.basis, fit.pose_terms, {int(g): np.zeros((N_LANDMARKS, 2)) for g in group}),
                            aus, pose, group)
    return Fit(fit.basis, fit.pose_terms, {g: m for g, m in _group_means(rest, group).items()})


# ---------------------------------------------------------------------------------------------
# Held-out evaluation
# ---------------------------------------------------------------------------------------------
def time_rank(rows: ShapeRows) -> np.ndarray:
    """[N] position of each row in time within its group (0, 1, ...)."""
    rank = np.empty(len(rows), np.int64)
    for g in np.unique(rows.group):
        members = np.flatnonzero(rows.group == g)
        rank[members[np.argsort(rows.time[members], kind="stable")]] = np.arange(len(members))
    return rank


def holdout_folds(rows: ShapeRows, config: FitConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(train indices, test indices)]; see FitConfig.holdout. Each usable row is held out exactly once."""
    n = len(rows)
    if config.holdout == "files":
        groups = np.unique(rows.group)
        if len(groups) < 2:
            raise FitInputError(f"--holdout files needs at least 2 subjects/files, got {len(groups)} "
                                f"({', '.join(rows.groups)}); use --holdout blocks")
        return [(np.flatnonzero(rows.group != g), np.flatnonzero(rows.group == g)) for g in groups]
    rank = time_rank(rows)
    block = rank // config.block_frames
    fold = block % config.folds
    folds = []
    for k in range(config.folds):
        test = np.flatnonzero(fold == k)
        if not len(test):
            continue
        near = np.zeros(n, bool)
        for g in np.unique(rows.group[test]):
            test_ranks = rank[test[rows.group[test] == g]]
            members = np.flatnonzero(rows.group == g)
            dist = np.abs(rank[members][:, None] - test_ranks[None, :]).min(axis=1)
            near[members[dist <= config.gap_frames]] = True
        train = np.flatnonzero(~near)
        if len(train) and set(np.unique(rows.group[test])) <= set(np.unique(rows.group[train])):
            folds.append((train, test))
    if not folds:
        raise FitInputError(f"no held-out fold has training rows of the same subject: {n} rows are too few for "
                            f"{config.folds} folds of {config.block_frames}-row blocks")
    return folds


def point_errors(predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """[N, 68] Euclidean distance per point (face units)."""
    return np.linalg.norm(predicted - actual, axis=-1)


def summarise_errors(errors: np.ndarray, iod_px: float) -> dict[str, float]:
    """[N, 68] point errors -> mean over rows and points, overall and per region, in face units and px."""
    out = {"all": float(errors.mean()) if errors.size else float("nan")}
    for region, points in REGIONS.items():
        out[region] = float(errors[:, list(points)].mean()) if errors.size else float("nan")
    return {"face_units": out, "px": {k: v * iod_px for k, v in out.items()}, "rows": int(len(errors))}


def facs_support() -> np.ndarray:
    """[17, 68] bool: the points the FACS default moves for each AU."""
    return np.linalg.norm(default_au_shape_model().basis, axis=-1) > 0


def fit_mode(points: np.ndarray, aus: np.ndarray, pose: np.ndarray | None, group: np.ndarray, mode: str,
             ridge: float) -> Fit:
    """fit_shape (or fit_scaled) with the prior and support that `mode` (full / residual / local / scaled) names."""
    default = default_au_shape_model().basis
    if mode == "scaled":
        return fit_scaled(points, aus, pose, group, ridge, default)
    return fit_shape(points, aus, pose, group, ridge=ridge, prior=None if mode == "full" else default,
                     support=facs_support() if mode == "local" else None)


def _candidates(config: FitConfig) -> list[tuple[str, float]]:
    modes = ("full", "residual", "local", "scaled") if config.mode == "auto" else (config.mode,)
    ridges = RIDGE_GRID if config.ridge is None else (config.ridge,)
    return [(mode, ridge) for mode in modes for ridge in ridges]


def evaluate(rows: ShapeRows, config: FitConfig) -> dict[str, Any]:
    """Held-out point errors of the mean shape, the FACS default, the default + fitted pose terms, and each fit
    candidate (mode, ridge); the fit candidate with the lowest mean error is `chosen`."""
    default = default_au_shape_model().basis
    methods: dict[str, list[np.ndarray]] = {"mean_shape": [], "facs_default": [], "facs_default+pose": []}
    candidates = _candidates(config)
    for mode, ridge in candidates:
        methods[f"fit:{mode}:{ridge:g}"] = []
    expressive: list[np.ndarray] = []
    held: list[np.ndarray] = []
    zero_neutral = {int(g): np.zeros((N_LANDMARKS, 2)) for g in np.unique(rows.group)}
    for train, test in holdout_folds(rows, config):
        pose_tr = None if rows.pose is None else rows.pose[train]
        pose_te = None if rows.pose is None else rows.pose[test]
        g_te = rows.group[test]
        actual = rows.points[test]
        if config.holdout == "files":   # the held-out subject's own means stand in for its neutral shape
            ref_points, ref_aus, ref_group = rows.points[test], rows.aus[test], g_te
        else:
            ref_points, ref_aus, ref_group = rows.points[train], rows.aus[train], rows.group[train]
        mean_points, mean_aus = _group_means(ref_points, ref_group), _group_means(ref_aus, ref_group)
        mean_shape = np.stack([mean_points[int(g)] for g in g_te])
        delta_aus = rows.aus[test] - np.stack([mean_aus[int(g)] for g in g_te])
        expressive.append(np.abs(delta_aus).max(axis=1) >= EXPRESSIVE_AU_DELTA)
        held.append(test)
        methods["mean_shape"].append(point_errors(mean_shape, actual))
        methods["facs_default"].append(point_errors(mean_shape + np.tensordot(delta_aus, default, axes=([1], [0])),
                                                    actual))
        fits = {"facs_default+pose": fit_shape(rows.points[train], rows.aus[train], pose_tr, rows.group[train],
                                               ridge=1e12, prior=default)}
        for mode, ridge in candidates:
            fits[f"fit:{mode}:{ridge:g}"] = fit_mode(rows.points[train], rows.aus[train], pose_tr, rows.group[train],
                                                      mode, ridge)
        for name, fit in fits.items():
            if config.holdout == "files":
                fit = recentre(Fit(fit.basis, fit.pose_terms, zero_neutral), actual, rows.aus[test], pose_te, g_te)
            methods[name].append(point_errors(predict(fit, rows.aus[test], pose_te, g_te), actual))
    is_expressive = np.concatenate(expressive)
    table = {}
    for name, parts in methods.items():
        errors = np.concatenate(parts)
        table[name] = {"all_rows": summarise_errors(errors, config.iod_px),
                       "expressive_rows": summarise_errors(errors[is_expressive], config.iod_px)}
    # Per held-out block (subject, block of block_frames rows): the unit of the standard errors.
    held_rows = np.concatenate(held)
    block = rows.group[held_rows] * (len(rows) + 1) + time_rank(rows)[held_rows] // config.block_frames
    row_error = {name: np.concatenate(parts).mean(axis=1) for name, parts in methods.items()}
    for name in methods:   # per subject: one subject's jitter or pose range can dominate the pooled mean
        table[name]["per_subject"] = {rows.groups[int(g)]: float(row_error[name][rows.group[held_rows] == g].mean())
                                      for g in np.unique(rows.group[held_rows])}
    fit_names = [f"fit:{mode}:{ridge:g}" for mode, ridge in candidates]
    best = min(fit_names, key=lambda name: table[name]["all_rows"]["face_units"]["all"])
    standard_error = {name: _block_standard_error(row_error[name] - row_error[best], block) for name in fit_names}
    chosen = best
    if config.choose == "1se":
        order = {"scaled": 0, "local": 1, "residual": 2, "full": 3}
        conservative = sorted(fit_names, key=lambda name: (order[name.split(":")[1]], -float(name.split(":")[2])))
        chosen = next(name for name in conservative
                      if table[name]["all_rows"]["face_units"]["all"]
                      <= table[best]["all_rows"]["face_units"]["all"] + standard_error[name])
    for name in fit_names:
        table[name]["se_of_difference_to_best"] = standard_error[name]
    _, mode, ridge = chosen.split(":")
    return {"table": table, "chosen": {"name": chosen, "mode": mode, "ridge": float(ridge), "best": best,
                                       "rule": config.choose},
            "holdout": config.holdout, "folds": len(methods["mean_shape"]),
            "expressive_rows": int(is_expressive.sum()), "held_out_rows": int(len(is_expressive))}


def _block_standard_error(values: np.ndarray, block: np.ndarray) -> float:
    """Standard error of the mean of per-row values, treating held-out blocks (not rows) as independent."""
    means = np.array([values[block == b].mean() for b in np.unique(block)])
    return float(means.std(ddof=1) / np.sqrt(len(means))) if len(means) > 1 else 0.0


# ---------------------------------------------------------------------------------------------
# Per-AU signal and the final model
# ---------------------------------------------------------------------------------------------
def au_signal(rows: ShapeRows, basis: np.ndarray, ridge: float) -> list[dict[str, Any]]:
    """Per AU: how much the data show it (spread, active rows, centred sum of squares S and the share S/(S+ridge)
    the data get against the prior), how the fitted basis compares with the FACS default, and the size the data
    give the default's own pattern (an unpenalised "scaled" fit: 1 = the default's size is right)."""
    default = default_au_shape_model().basis
    support = facs_support()
    scaled = fit_scaled(rows.points, rows.aus, rows.pose, rows.group, 0.0, default).basis
    scale = [float(np.sum(scaled[a] * default[a]) / np.sum(default[a] ** 2)) for a in range(N_AUS)]
    centred = rows.aus - np.stack([_group_means(rows.aus, rows.group)[int(g)] for g in rows.group])
    out = []
    for a, name in enumerate(AU_NAMES):
        ss = float((centred[:, a] ** 2).sum())
        fitted, prior = basis[a].reshape(-1), default[a].reshape(-1)
        norms = np.linalg.norm(fitted) * np.linalg.norm(prior)
        out.append({
            "au": name, "std": float(rows.aus[:, a].std()), "max": float(rows.aus[:, a].max()),
            "active_share": float((rows.aus[:, a] >= EXPRESSIVE_AU_DELTA).mean()),
            "centred_ss": ss, "data_weight": ss / (ss + ridge) if ss + ridge > 0 else 0.0,
            "fitted_mean_shift": float(np.linalg.norm(basis[a], axis=-1).mean()),
            "default_mean_shift": float(np.linalg.norm(default[a], axis=-1).mean()),
            # What a full-intensity single-AU edit does to the points FACS does not name for this AU.
            "off_support_shift": float(np.linalg.norm(basis[a][~support[a]], axis=-1).mean()),
            "cosine_to_default": float(fitted @ prior / norms) if norms > 0 else float("nan"),
            "default_scale": scale[a],
        })
    return out


@dataclass(frozen=True)
class FitResult:
    model: AUShapeModel
    report: dict[str, Any]


def fit_au_shape(sources: list[str | Path], config: FitConfig = FitConfig()) -> FitResult:
    """Read, evaluate held out, then fit the chosen (mode, ridge) on every usable row; the model and a report."""
    rows = load_rows(sources, config)
    evaluation = evaluate(rows, config)
    mode, ridge = evaluation["chosen"]["mode"], evaluation["chosen"]["ridge"]
    fit = fit_mode(rows.points, rows.aus, rows.pose, rows.group, mode, ridge)
    fingerprint = hashlib.sha256(json.dumps({"inputs": rows.inputs, "config": asdict(config)}, sort_keys=True,
                                            default=str).encode()).hexdigest()[:12]
    report = {
        "config": asdict(config), "inputs": rows.inputs, "rejected_inputs": rows.rejected,
        "skipped_rows": rows.skipped, "rows": len(rows), "subjects": rows.groups,
        "pose_terms": rows.pose is not None, "evaluation": evaluation,
        "au_signal": au_signal(rows, fit.basis, ridge),
    }
    info = (("fit", {"mode": mode, "ridge": ridge, "rows": len(rows), "subjects": len(rows.groups),
                     "pose_terms": rows.pose is not None, "holdout": config.holdout}),
            ("inputs", [{k: v for k, v in item.items() if k in ("path", "sha256", "used")} for item in rows.inputs]),
            ("held_out_mean_error_iod", {name: v["all_rows"]["face_units"]["all"]
                                         for name, v in evaluation["table"].items()
                                         if not name.startswith("fit:") or name == evaluation["chosen"]["name"]}))
    return FitResult(model=AUShapeModel(basis=fit.basis, name=f"fit:{fingerprint}", info=info), report=report)


def save_au_shape(model: AUShapeModel, path: str | Path) -> Path:
    """The model's JSON, written atomically."""
    return atomic_write_text(json.dumps(model.to_json(), sort_keys=True, indent=1) + "\n", path)


# ---------------------------------------------------------------------------------------------
# The printed table
# ---------------------------------------------------------------------------------------------
_LABELS = {"mean_shape": "(a) mean shape", "facs_default": "(b) mean + FACS default",
           "facs_default+pose": "(b') mean + FACS default + pose terms"}


def format_report(report: dict[str, Any]) -> str:
    """Markdown: held-out errors (face units and px) per method and region, then the per-AU signal."""
    ev = report["evaluation"]
    iod_px = report["config"]["iod_px"]
    chosen = ev["chosen"]["name"]
    regions = ["all", *REGIONS]
    lines = [f"held-out ({ev['holdout']}, {ev['folds']} folds): {ev['held_out_rows']} rows of "
             f"{len(report['subjects'])} subject(s), {ev['expressive_rows']} expressive "
             f"(an AU >= {EXPRESSIVE_AU_DELTA:g} from the subject's mean); pose terms: "
             f"{'yes' if report['pose_terms'] else 'no'}; mean point error, face units (px at IOD {iod_px:g})", ""]
    for subset in ("all_rows", "expressive_rows"):
        lines += [f"| {subset.replace('_', ' ')} | " + " | ".join(regions) + " |",
                  "|---|" + "---:|" * len(regions)]
        for name, value in ev["table"].items():
            if name.startswith("fit:") and name != chosen:
                continue
            label = _LABELS.get(name, f"(c) fitted ({ev['chosen']['mode']}, ridge {ev['chosen']['ridge']:g})")
            errs = value[subset]
            cells = [f"{errs['face_units'][r]:.4f} ({errs['px'][r]:.2f})" for r in regions]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    subjects = list(ev["table"]["mean_shape"]["per_subject"])
    lines += ["| per subject, all rows | " + " | ".join(Path(name).name for name in subjects) + " |",
              "|---|" + "---:|" * len(subjects)]
    for name, value in ev["table"].items():
        if name.startswith("fit:") and name != chosen:
            continue
        label = _LABELS.get(name, f"(c) fitted ({ev['chosen']['mode']}, ridge {ev['chosen']['ridge']:g})")
        lines.append(f"| {label} | " + " | ".join(f"{value['per_subject'][k]:.4f} ({value['per_subject'][k] * iod_px:.2f})"
                                                   for k in subjects) + " |")
    lines.append("")
    others = [(name, v["all_rows"]["face_units"]["all"]) for name, v in ev["table"].items() if name.startswith("fit:")]
    lines.append("fit candidates (mode:ridge -> mean error, all rows, +- standard error of the difference to the "
                 "best over held-out blocks): "
                 + ", ".join(f"{name[4:]} {err:.4f} +-{ev['table'][name]['se_of_difference_to_best']:.4f}"
                             for name, err in others))
    rule = ("the most conservative within one standard error of the best" if ev["chosen"]["rule"] == "1se"
            else "the lowest error")
    lines.append(f"chosen: {chosen[4:]} ({rule}; lowest: {ev['chosen']['best'][4:]})")
    lines += ["", "per AU: spread in the data (0..1 units), centred sum of squares SS and the weight S/(S+ridge) the "
              "data get; mean point shift at full intensity (fitted, FACS default, fitted on points FACS does not "
              "name for the AU), cosine fitted vs default, and the size an unpenalised fit of the default's own pattern "
              "gets (1 = the default's size)", "",
              "| AU | std | max | share >= 0.2 | centred SS | data weight | fitted shift | default shift "
              "| fitted off-FACS shift | cos | size vs default |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in report["au_signal"]:
        lines.append(f"| {s['au']} | {s['std']:.3f} | {s['max']:.2f} | {s['active_share']:.2f} | {s['centred_ss']:.2f} "
                     f"| {s['data_weight']:.2f} | {s['fitted_mean_shift']:.3f} | {s['default_mean_shift']:.3f} "
                     f"| {s['off_support_shift']:.3f} | {s['cosine_to_default']:.2f} | {s['default_scale']:.2f} |")
    if report["skipped_rows"]:
        lines += ["", f"skipped rows: {report['skipped_rows']}"]
    for r in report["rejected_inputs"]:
        lines.append(f"rejected input: {r['source_id']}: {r['reason']}: {r['detail']}")
    return "\n".join(lines)
