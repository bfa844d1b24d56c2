"""The demo's sample dataset: real faces shipped inside installed packages, plus OpenFace-format CSVs of DEMO values."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from manifests.schema import AU_INDEX, AU_NAMES
from tasks.openface import write_openface_csv

# Demo AU intensities (OpenFace 0..5 scale) per class. These are NOT OpenFace output: no OpenFace
# binary is available offline, so the demo writes plausible values in OpenFace's file format.
_DEMO_AUS = {
    "happy": {"AU06": 2.5, "AU12": 3.0, "AU25": 1.5},
    "neutral": {},
    "surprise": {"AU01": 2.5, "AU02": 2.0, "AU05": 2.0, "AU26": 2.5},
}


def astronaut_rgb() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def grace_hopper_rgb() -> np.ndarray:
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).copy()


def _rotate(rgb: np.ndarray, degrees: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(rgb, m, (w, h), borderMode=cv2.BORDER_REFLECT)


def _small_on_canvas(rgb: np.ndarray, scale: float, canvas_px: int) -> np.ndarray:
    small = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    canvas = np.full((canvas_px, canvas_px, 3), 90, np.uint8)
    y, x = (canvas_px - small.shape[0]) // 3, (canvas_px - small.shape[1]) // 2
    canvas[y:y + small.shape[0], x:x + small.shape[1]] = small
    return canvas


def _demo_aus(label_dir: str, rng: np.random.Generator) -> np.ndarray:
    values = np.zeros(len(AU_NAMES), np.float32)
    for name, value in _DEMO_AUS[label_dir].items():
        values[AU_INDEX[name]] = value
    jitter = rng.uniform(0.0, 0.4, size=values.shape).astype(np.float32)
    return np.clip(values + jitter, 0.0, 5.0)


def _source_landmarks68(images: list[np.ndarray]) -> list[np.ndarray]:
    """68 points [68, 2] in each photo's own pixels, as OpenFace would write them: MTCNN aligns the face,
    the landmark detector runs on the 128 px crop, and the points are mapped back to the photo."""
    from tasks.align import AlignConfig, FaceAligner
    from tasks.landmarks import LandmarkDetector, landmarks_to_source

    detector = LandmarkDetector()
    out = []
    for _image, face in zip(images, FaceAligner(AlignConfig(image_size_px=128), device="cpu").align(images)):
        if isinstance(face, Exception):
            raise RuntimeError(f"sample photo not aligned: {face}")  # the package photos all have a clear face
        out.append(landmarks_to_source(detector.detect(face.crop), face.transform))
    return out


def build_sample_dataset(root: str | os.PathLike, seed: int = 0) -> dict:
    """Write <root>/images/<split>/<class>/*.png and <root>/openface/<stem>.csv; return what was written.

    Includes, on purpose, inputs the pipeline must reject: an image without a face, a truncated
    file, and an image without an AU CSV. The CSVs carry demo AU values; those with landmark columns
    (every layout but aus_only) carry the photo's 68 points found by the landmark detector.
    """
    root = Path(root)
    images, csv_dir = root / "images", root / "openface"
    csv_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    astro, grace = astronaut_rgb(), grace_hopper_rgb()
    faces = {
        ("train", "happy", "astronaut"): astro,
        ("train", "happy", "astronaut_flip"): astro[:, ::-1],
        ("train", "happy", "astronaut_rot15"): _rotate(astro, 15),
        ("train", "happy", "astronaut_small"): _small_on_canvas(astro, 0.4, 640),
        ("train", "neutral", "grace_hopper"): grace,
        ("train", "neutral", "grace_hopper_flip"): grace[:, ::-1],
        ("train", "neutral", "grace_hopper_rot-12"): _rotate(grace, -12),
        ("train", "surprise", "grace_hopper_gray"): np.repeat(cv2.cvtColor(grace, cv2.COLOR_RGB2GRAY)[..., None], 3, 2),
        ("train", "surprise", "astronaut_bright"): np.clip(astro.astype(np.int16) + 40, 0, 255).astype(np.uint8),
        ("test", "happy", "astronaut_rot-8"): _rotate(astro, -8),
        ("test", "neutral", "grace_hopper_small"): _small_on_canvas(grace, 0.5, 512),
    }
    variants = [("feature_extraction", ", "), ("feature_extraction", ","), ("aus_only", ", "), ("landmark_img", ",")]
    items = sorted(faces.items())
    landmarks = _source_landmarks68([rgb for _, rgb in items])
    written = []
    for index, ((split, label_dir, stem), rgb) in enumerate(items):
        path = images / split / label_dir / f"{stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(rgb)).save(path)
        variant, sep = variants[index % len(variants)]
        aus = _demo_aus(label_dir, rng)
        row = {"aus": aus, "confidence": 0.98, "success": 1, "landmarks68": landmarks[index]}
        write_openface_csv(csv_dir / f"{stem}.csv", [row], variant=variant, sep=sep)
        written.append(str(path))

    # Inputs that must land in rejects, each for its own reason.
    no_face = np.tile(np.linspace(40, 220, 256, dtype=np.uint8)[None, :, None], (256, 1, 3))
    (images / "train" / "neutral").mkdir(parents=True, exist_ok=True)
    Image.fromarray(no_face).save(images / "train" / "neutral" / "gradient_no_face.png")
    write_openface_csv(csv_dir / "gradient_no_face.csv", [{"aus": np.zeros(17), "confidence": 0.98, "success": 1}])
    good = (images / "train" / "happy" / "astronaut.png").read_bytes()
    (images / "train" / "happy" / "truncated.png").write_bytes(good[: len(good) // 3])
    Image.fromarray(_rotate(grace, 5)).save(images / "train" / "surprise" / "grace_hopper_no_csv.png")
    return {"images": str(images), "openface": str(csv_dir), "faces": len(written), "expected_rejects": 3}
