"""The 68-point detector on aligned real faces: face-box calibration, speed, and jitter.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_landmarks.py --ck48 ../shared/data/ck48 --n-ck48 40 \
        --out benchmarks/results/landmarks_detector_cpu128.json      # about 15 s

1. Aligns the package photos (astronaut, Grace Hopper) and one CK+48 face per subject (48 px grey,
   upsampled to 128 px, then aligned by MTCNN like any photo) to 128 px crops with tasks.align.
2. Box calibration: runs dlib's own HOG frontal face detector on each crop (enlarged 2x, at 6 sizes) and
   prints the median box as fractions of the crop side: tasks.landmarks.FACE_BOX_FRAC.
3. Speed: detect() per face (one thread): median and p90 wall time, and CPU time.
4. Jitter: the points on the crop vs. on the crop re-encoded as JPEG q90 or blurred (Gaussian
   sigma 0.5 px): median and max distance per point group.
5. Fixed box vs. detector box: how far the points move when the predictor gets dlib's box instead
   (each crop's calibrated box, and face_box="find" as used for align="none" crops), and the
   speed of "find".
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.align import AlignConfig, FaceAligner, template_landmarks5  # noqa: E402
from tasks.errors import RejectError  # noqa: E402
from tasks.landmarks import POINT_GROUPS, LandmarkDetector  # noqa: E402
from tasks.openface import landmarks5_from_68  # noqa: E402
from tests.conftest import load_astronaut, load_ck48_faces, load_grace_hopper  # noqa: E402


def aligned_crops(ck48: Path | None, n_ck48: int, size_px: int) -> list[tuple[str, np.ndarray]]:
    images = [("astronaut", load_astronaut()), ("grace_hopper", load_grace_hopper())]
    if ck48 is not None:
        images += load_ck48_faces(ck48, n_ck48)
    aligner = FaceAligner(AlignConfig(image_size_px=size_px), device="cpu")
    out = []
    for (name, _), face in zip(images, aligner.align([im for _, im in images])):
        if isinstance(face, RejectError):
            print(f"  {name}: not aligned ({face.reason})")
            continue
        out.append((name, face.crop))
    return out


def dlib_boxes(crops: list[tuple[str, np.ndarray]], upsample: int, n_scales: int = 6) -> dict[str, np.ndarray]:
    """name -> box (left, top, right, bottom) / side for crops where dlib's detector finds a face.

    dlib's HOG detector scans an image pyramid with steps of 6/5, so its box sizes are quantised to
    that ratio; the crop is resized to n_scales sizes spanning one step (after the 2**upsample
    enlargement) and the boxes, mapped back to the crop, are averaged.
    """
    import dlib

    detector = dlib.get_frontal_face_detector()
    out = {}
    for name, crop in crops:
        side = crop.shape[0]
        found = []
        for scale in (2 ** upsample) * (1.2 ** (np.arange(n_scales) / n_scales)):
            big_side = int(round(side * scale))
            big = cv2.resize(crop, (big_side, big_side), interpolation=cv2.INTER_LINEAR)
            faces = detector(big, 0)
            if len(faces):
                box = max(faces, key=lambda r: r.area())
                # dlib rectangles are inclusive pixel indices: right/bottom + 1 is the edge.
                found.append(np.array([box.left(), box.top(), box.right() + 1, box.bottom() + 1], np.float64) / big_side)
        if not found:
            print(f"  {name}: dlib's detector found no face")
            continue
        out[name] = np.mean(found, axis=0)
    return out


def jitter(detector: LandmarkDetector, crops: list[tuple[str, np.ndarray]]) -> dict:
    def jpeg(crop: np.ndarray) -> np.ndarray:
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    def blur(crop: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(crop, (0, 0), 0.5)

    def summary(distances: np.ndarray) -> dict:
        return {group: {"median_px": round(float(np.median(distances[:, s])), 3),
                        "mean_px": round(float(np.mean(distances[:, s])), 3),
                        "max_px": round(float(np.max(distances[:, s])), 3)}
                for group, s in {"all": slice(0, 68), **POINT_GROUPS}.items()}

    subsets = {"all faces": [True] * len(crops),
               "package photos": [not name.startswith("ck48/") for name, _ in crops],
               "ck48": [name.startswith("ck48/") for name, _ in crops]}
    results = {}
    for name, change in (("jpeg_q90", jpeg), ("blur_0.5px", blur)):
        distances = np.stack([np.linalg.norm(detector.detect(change(c)) - detector.detect(c), axis=1) for _, c in crops])
        results[name] = {subset: summary(distances[np.array(mask)]) for subset, mask in subsets.items() if any(mask)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ck48", type=Path, default=None, help="CK+48 folder (../shared/data/ck48)")
    parser.add_argument("--n-ck48", type=int, default=40, help="CK+48 subjects (one face each)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--dlib-upsample", type=int, default=1, help="crops enlarged 2**N before dlib detects")
    parser.add_argument("--upscale", type=int, default=None, help="LandmarkDetector upscale (default: its default)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    cv2.setNumThreads(1)

    crops = aligned_crops(args.ck48, args.n_ck48, args.size)
    print(f"{len(crops)} aligned {args.size} px crops")

    boxes = dlib_boxes(crops, args.dlib_upsample)
    stacked = np.stack(list(boxes.values()))
    box_median = np.median(stacked, axis=0)
    iqr = np.percentile(stacked, 75, axis=0) - np.percentile(stacked, 25, axis=0)
    print(f"dlib detector found {len(boxes)} of {len(crops)} faces")
    print(f"box median (l, t, r, b) / side: {np.round(box_median, 3).tolist()}  IQR {np.round(iqr, 3).tolist()}")
    for name in ("astronaut", "grace_hopper"):
        if name in boxes:
            print(f"  {name}: {np.round(boxes[name], 3).tolist()}")

    kwargs = {} if args.upscale is None else {"upscale": args.upscale}
    detector = LandmarkDetector(**kwargs)
    detector.detect(crops[0][1])  # load the model
    # The machine is shared: per-face wall times (median, p90) and the process's CPU time per face.
    wall_ms, cpu0 = [], time.process_time()
    for _ in range(5):
        for _, crop in crops:
            t0 = time.perf_counter()
            detector.detect(crop)
            wall_ms.append((time.perf_counter() - t0) * 1000)
    cpu_ms = (time.process_time() - cpu0) / len(wall_ms) * 1000
    per_face_ms = float(np.median(wall_ms))
    print(f"detect: median {per_face_ms:.2f} ms wall, p90 {np.percentile(wall_ms, 90):.2f} ms, {cpu_ms:.2f} ms CPU "
          f"per {args.size} px face (one thread, upscale {detector.upscale}, {len(wall_ms)} calls)")

    # face_box="find" (align none): dlib's HOG detector finds the box first.
    finder = LandmarkDetector(face_box="find", **kwargs)
    cpu0 = time.process_time()
    found = [finder.detect(c) for _, c in crops]
    find_cpu_ms = (time.process_time() - cpu0) / len(crops) * 1000
    find_vs_fixed = np.stack([np.linalg.norm(f - detector.detect(c), axis=1) for f, (_, c) in zip(found, crops)])
    print(f"detect with face_box='find': {find_cpu_ms:.2f} ms CPU per face; vs the fixed box: "
          f"median {np.median(find_vs_fixed):.2f} px, mean {find_vs_fixed.mean():.2f}, max {find_vs_fixed.max():.2f}")

    # Pre-aligned crops framed their own way (CK+48 as it comes, upsampled, not aligned by us):
    # the fixed box vs. the box dlib's detector finds, mean distance per face.
    raw_vs_find = []
    if args.ck48 is not None:
        for _, crop in load_ck48_faces(args.ck48, args.n_ck48):
            raw_vs_find.append(float(np.linalg.norm(detector.detect(crop) - finder.detect(crop), axis=1).mean()))
        print(f"unaligned CK+48 crops, fixed box vs found box, mean px per face: min {min(raw_vs_find):.2f}, "
              f"median {np.median(raw_vs_find):.2f}, max {max(raw_vs_find):.2f} ({len(raw_vs_find)} faces)")

    # Fixed box vs. dlib's own box on the same crop.
    own = []
    for name, crop in crops:
        if name in boxes:
            by_box = LandmarkDetector(box_frac=tuple(boxes[name]), **kwargs).detect(crop)
            own.append(np.linalg.norm(detector.detect(crop) - by_box, axis=1))
    own = np.stack(own)
    print(f"fixed box vs dlib's box: median {np.median(own):.2f} px, mean {own.mean():.2f}, max {own.max():.2f}")

    # Where the 68 points' 5-point summary lands vs. the aligner's template.
    template = template_landmarks5(args.size)
    five = np.stack([landmarks5_from_68(detector.detect(c)) for _, c in crops])  # [N, 5, 2]
    err5 = np.linalg.norm(five - template, axis=-1)  # [N, 5]
    print("68-point eyes/nose/mouth corners vs the 5-point template (px): median per point "
          f"{np.round(np.median(err5, axis=0), 2).tolist()}, max {np.round(err5.max(axis=0), 2).tolist()}")
    for name, e in zip([n for n, _ in crops], err5):
        if name in ("astronaut", "grace_hopper"):
            print(f"  {name}: {np.round(e, 2).tolist()}")

    jit = jitter(detector, crops)
    for change, subsets in jit.items():
        for subset, groups in subsets.items():
            print(f"jitter {change}, {subset}: " + "; ".join(
                f"{g} median {v['median_px']} mean {v['mean_px']} max {v['max_px']}" for g, v in groups.items()))
    if args.out:
        args.out.write_text(json.dumps({
            "n_faces": len(crops), "size_px": args.size, "dlib_found": len(boxes),
            "box_median": box_median.round(4).tolist(), "box_iqr": iqr.round(4).tolist(),
            "detect_ms_per_face_wall_median": round(per_face_ms, 3),
            "detect_ms_per_face_wall_p90": round(float(np.percentile(wall_ms, 90)), 3),
            "detect_ms_per_face_cpu": round(cpu_ms, 3), "upscale": detector.upscale,
            "find_box_ms_per_face_cpu": round(find_cpu_ms, 3),
            "unaligned_ck48_fixed_vs_found_box_mean_px_per_face": [round(v, 3) for v in raw_vs_find],
            "find_vs_fixed_box_px": {"median": round(float(np.median(find_vs_fixed)), 3),
                                     "mean": round(float(find_vs_fixed.mean()), 3), "max": round(float(find_vs_fixed.max()), 3)},
            "fixed_vs_dlib_box_px": {"median": round(float(np.median(own)), 3), "mean": round(float(own.mean()), 3),
                                     "max": round(float(own.max()), 3)},
            "template5_error_px_median": np.median(err5, axis=0).round(3).tolist(),
            "template5_error_px_max": err5.max(axis=0).round(3).tolist(),
            "jitter": jit,
        }, indent=2))


if __name__ == "__main__":
    main()
