"""Face alignment: MTCNN five-point detection, similarity warp onto a fixed template, square RGB crops."""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from tasks.errors import RejectError
from tasks.imageio import load_image_rgb

__all__ = [
    "AlignConfig", "AlignedFace", "FaceAligner", "load_image_rgb", "select_face", "template_landmarks5",
]

STAGE = "align"

# ArcFace / InsightFace 112x112 reference points (pixel centres), in MTCNN's order: eye on the
# image's left, eye on the image's right, nose tip, mouth corner left, mouth corner right.
_ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)  # [5, 2]
_ARCFACE_SIDE_PX = 112.0

# The ArcFace box cuts the chin and the top of the forehead; a 0.15 border on every side (the
# ArcFace box spans 1/1.3 of the crop) keeps brows, chin and jaw inside, a tight-but-complete face
# like GANimation's training crops.
DEFAULT_MARGIN = 0.15

# Letterbox: detection canvases are padded (bottom/right, black) to multiples of this, so images of
# similar size share one MTCNN batch; MTCNN itself pads out-of-image crops with black too.
_CANVAS_MULTIPLE_PX = 64
# Pre-aligned inputs may be this far from square and are centre-cropped; beyond it they are rejected.
_MAX_ASPECT_FOR_CENTER_CROP = 1.05
# Out-of-frame share of a crop: a face cut by the frame edge (or an already tight crop through MTCNN) fills
# the rest by edge smear. Above the warning share it is logged; above the default maximum it is rejected:
# at 40% the smear reaches the eyes or mouth of a centred face, and the crop no longer shows the face.
OUT_OF_FRAME_WARN = 0.10
MAX_OUT_OF_FRAME = 0.40
# Warps that shrink more than this are preceded by an area resize, so the crop does not alias.
_MIN_DIRECT_WARP_SCALE = 0.75


@dataclass(frozen=True)
class AlignConfig:
    """How faces are found and cropped.

    mode:               "mtcnn" detects and warps; "none" is for pre-aligned datasets (resize + validate).
    image_size_px:      side of the square output crop.
    face_policy:        which face to keep when several count: "largest" box area, or "most_confident".
    min_face_prob:      MTCNN probability below which a detection does not count as a face.
    batch_size:         images per MTCNN call (grouped by letterboxed canvas size).
    min_image_side_px:  shorter input side below which an image is rejected (image_too_small).
    margin:             template border on each side, as a fraction of the ArcFace box (0: ArcFace crop).
    min_face_size_px:   smallest face MTCNN searches for, in detection-canvas pixels.
    detect_max_side_px: images with a longer side are downscaled for detection only (the warp reads
                        the full-resolution source).
    max_out_of_frame:   share of the crop whose pixels come from outside the source image (filled by
                        edge smear), above which the face is rejected (face_out_of_frame); the share is
                        recorded as quality.out_of_frame, and a warning is logged above OUT_OF_FRAME_WARN.
    """

    mode: Literal["mtcnn", "none"] = "mtcnn"
    image_size_px: int = 128
    face_policy: Literal["largest", "most_confident"] = "largest"
    min_face_prob: float = 0.90
    batch_size: int = 16
    min_image_side_px: int = 32
    margin: float = DEFAULT_MARGIN
    min_face_size_px: int = 20
    detect_max_side_px: int = 1024
    max_out_of_frame: float = MAX_OUT_OF_FRAME

    def __post_init__(self) -> None:
        if self.mode not in ("mtcnn", "none"):
            raise ValueError(f"mode must be 'mtcnn' or 'none', got {self.mode!r}")
        if self.face_policy not in ("largest", "most_confident"):
            raise ValueError(f"face_policy must be 'largest' or 'most_confident', got {self.face_policy!r}")
        if self.image_size_px < 16:
            raise ValueError(f"image_size_px must be >= 16, got {self.image_size_px}")
        if not 0.0 <= self.min_face_prob <= 1.0:
            raise ValueError(f"min_face_prob must be in [0, 1], got {self.min_face_prob}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.min_image_side_px < 1:
            raise ValueError(f"min_image_side_px must be >= 1, got {self.min_image_side_px}")
        if not -0.25 < self.margin <= 2.0:
            raise ValueError(f"margin must be in (-0.25, 2], got {self.margin}")
        if self.min_face_size_px < 12:
            raise ValueError(f"min_face_size_px must be >= 12 (MTCNN's window), got {self.min_face_size_px}")
        if not 0.0 <= self.max_out_of_frame <= 1.0:
            raise ValueError(f"max_out_of_frame must be in [0, 1], got {self.max_out_of_frame}")
        if self.detect_max_side_px < max(self.min_face_size_px, _CANVAS_MULTIPLE_PX):
            raise ValueError(f"detect_max_side_px too small: {self.detect_max_side_px}")


@dataclass
class AlignedFace:
    crop: np.ndarray                    # uint8 [S, S, 3] RGB
    landmarks5_src: np.ndarray | None   # float32 [5, 2] in source pixels (None in mode "none")
    landmarks5_crop: np.ndarray | None  # float32 [5, 2] where they land in the crop
    box: np.ndarray | None              # float32 [4] x1, y1, x2, y2 in source pixels
    prob: float | None                  # MTCNN probability of the chosen face
    faces_found: int                    # detections with prob >= min_face_prob (mode "none": 1, assumed)
    transform: np.ndarray | None        # float32 [2, 3] source pixels -> crop pixels
    out_of_frame: float = 0.0           # share of crop pixels whose source lies outside the image (0..1)


def template_landmarks5(image_size_px: int, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """The five target points in a crop of side image_size_px: float32 [5, 2] (x, y), pixel centres."""
    unit = (_ARCFACE_112 + 0.5) / _ARCFACE_SIDE_PX        # [5, 2] in 0..1 of the ArcFace box
    unit = 0.5 + (unit - 0.5) / (1.0 + 2.0 * margin)      # shrink the box about the crop centre
    return (unit * image_size_px - 0.5).astype(np.float32)


def select_face(
    boxes: np.ndarray, probs: np.ndarray, policy: str, min_prob: float
) -> tuple[int | None, int]:
    """Index of the face to keep (None if none reaches min_prob) and how many reach it.

    boxes: [N, 4] x1, y1, x2, y2; probs: [N]. "largest" keeps the biggest box area (the subject
    of a portrait is usually the nearest face), "most_confident" the highest probability.
    """
    counted = np.flatnonzero(probs >= min_prob)
    if counted.size == 0:
        return None, 0
    if policy == "largest":
        areas = (boxes[counted, 2] - boxes[counted, 0]) * (boxes[counted, 3] - boxes[counted, 1])
        return int(counted[np.argmax(areas)]), int(counted.size)
    if policy == "most_confident":
        return int(counted[np.argmax(probs[counted])]), int(counted.size)
    raise ValueError(f"unknown face policy {policy!r}")


class FaceAligner:
    """Builds MTCNN once; align() detects in batches and warps each face onto the template.

    Batching: MTCNN needs one image size per batch, so each image is letterboxed: downscaled if its
    longer side exceeds detect_max_side_px, then padded bottom/right with black to multiples of
    64 px. Images with the same padded canvas share a batch; detections are mapped back to source
    pixels exactly (the padding does not move them; the downscale is undone).
    """

    def __init__(self, config: AlignConfig = AlignConfig(), device: str | None = None):
        self.config = config
        self.template = template_landmarks5(config.image_size_px, config.margin)  # [5, 2]
        self._mtcnn = None
        if config.mode == "mtcnn":
            import torch
            from facenet_pytorch import MTCNN  # weights ship inside the package: nothing downloads

            if device is None:
                device = "cuda" if torch.cuda.is_available() else "cpu"
            self.device = torch.device(device)
            install_per_image_nms()
            self._mtcnn = MTCNN(min_face_size=config.min_face_size_px, keep_all=True, device=self.device).eval()
        else:
            self.device = None

    def align(self, images: list[np.ndarray]) -> list[AlignedFace | RejectError]:
        """One result per image, in input order: an AlignedFace or the RejectError explaining why not."""
        for i, image in enumerate(images):
            _check_rgb_uint8(image, i)
        results: list[AlignedFace | RejectError | None] = [None] * len(images)
        todo: list[int] = []
        for i, image in enumerate(images):
            if min(image.shape[:2]) < self.config.min_image_side_px:
                results[i] = RejectError(
                    STAGE, "image_too_small",
                    f"{image.shape[1]}x{image.shape[0]} px, shorter side < {self.config.min_image_side_px} px",
                )
            else:
                todo.append(i)

        if self.config.mode == "none":
            for i in todo:
                results[i] = _capture(functools.partial(self._resize_pre_aligned, images[i]))
            return results  # type: ignore[return-value]

        for batch in self._plan_batches(images, todo):
            for i, detection in zip(batch, self._detect(images, batch)):
                results[i] = _capture(functools.partial(self._align_one, images[i], *detection))
        return results  # type: ignore[return-value]

    # -- detection -------------------------------------------------------------------------------

    def _plan_batches(self, images: list[np.ndarray], indices: list[int]) -> list[list[int]]:
        """Group image indices by letterboxed canvas shape, then cut groups into batch_size chunks."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i in indices:
            groups.setdefault(self._canvas_shape(images[i]), []).append(i)
        size = self.config.batch_size
        return [group[k:k + size] for group in groups.values() for k in range(0, len(group), size)]

    def _detect_scale(self, image: np.ndarray) -> float:
        return min(1.0, self.config.detect_max_side_px / max(image.shape[:2]))

    def _canvas_shape(self, image: np.ndarray) -> tuple[int, int]:
        scale = self._detect_scale(image)
        height_px, width_px = (round(side * scale) for side in image.shape[:2])
        return _round_up(height_px, _CANVAS_MULTIPLE_PX), _round_up(width_px, _CANVAS_MULTIPLE_PX)

    def _detect(
        self, images: list[np.ndarray], batch: list[int]
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Run MTCNN on one same-canvas batch; per image: boxes [N, 4], probs [N], points [N, 5, 2]
        in source pixels (N = 0 when nothing was found)."""
        import torch

        canvas_h, canvas_w = self._canvas_shape(images[batch[0]])
        canvases = np.zeros((len(batch), canvas_h, canvas_w, 3), dtype=np.uint8)  # [B, H, W, 3]
        scales = []  # per image (x, y): the exact ratio the rounded resize applied
        for b, i in enumerate(batch):
            scale = self._detect_scale(images[i])
            small = images[i] if scale == 1.0 else _resize_area(images[i], scale)
            canvases[b, :small.shape[0], :small.shape[1]] = small
            scales.append(np.array([small.shape[1] / images[i].shape[1], small.shape[0] / images[i].shape[0]]))
        batch_boxes, batch_probs, batch_points = self._mtcnn.detect(
            torch.from_numpy(canvases).to(self.device), landmarks=True
        )

        out = []
        for boxes, probs, points, scale in zip(batch_boxes, batch_probs, batch_points, scales):
            if boxes is None:
                out.append((np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)))
                continue
            out.append((
                _canvas_to_source_px(np.asarray(boxes, dtype=np.float64).reshape(-1, 2, 2), scale).reshape(-1, 4),
                np.asarray(probs, dtype=np.float32).reshape(-1),
                _canvas_to_source_px(np.asarray(points, dtype=np.float64).reshape(-1, 5, 2), scale),
            ))
        return out

    # -- per image -------------------------------------------------------------------------------

    def _align_one(
        self, image: np.ndarray, boxes: np.ndarray, probs: np.ndarray, points: np.ndarray
    ) -> AlignedFace:
        height_px, width_px = image.shape[:2]
        if len(probs) == 0:
            raise RejectError(STAGE, "no_face", f"MTCNN found no face in the {width_px}x{height_px} px image")
        chosen, faces_found = select_face(boxes, probs, self.config.face_policy, self.config.min_face_prob)
        if chosen is None:
            raise RejectError(
                STAGE, "low_face_confidence",
                f"{len(probs)} detection(s), best prob {float(probs.max()):.3f} < min_face_prob "
                f"{self.config.min_face_prob}",
            )
        landmarks_src = points[chosen]  # [5, 2]
        transform = self._fit_similarity(landmarks_src)  # [2, 3]
        crop = _warp(image, transform, self.config.image_size_px)
        landmarks_crop = landmarks_src @ transform[:, :2].T + transform[:, 2]  # [5, 2]
        outside = out_of_frame_share(transform, (height_px, width_px), self.config.image_size_px)
        if outside > self.config.max_out_of_frame:
            raise RejectError(
                STAGE, "face_out_of_frame",
                f"{outside:.0%} of the {self.config.image_size_px} px crop lies outside the {width_px}x{height_px} px "
                f"image (limit {self.config.max_out_of_frame:.0%}): the face is cut by the frame or already cropped "
                f"tight; use --align none for pre-cropped faces",
            )
        return AlignedFace(
            crop=crop,
            landmarks5_src=landmarks_src.astype(np.float32),
            landmarks5_crop=landmarks_crop.astype(np.float32),
            box=boxes[chosen].astype(np.float32),
            prob=float(probs[chosen]),
            faces_found=faces_found,
            transform=transform.astype(np.float32),
            out_of_frame=outside,
        )

    def _fit_similarity(self, landmarks_src: np.ndarray) -> np.ndarray:
        """Rotation + uniform scale + translation taking the five landmarks onto the template."""
        transform = fit_similarity(landmarks_src, self.template)
        if not np.all(np.isfinite(transform)) or np.hypot(transform[0, 0], transform[1, 0]) == 0.0:
            raise RejectError(STAGE, "bad_landmarks", f"no similarity fits landmarks {landmarks_src.tolist()}")
        return transform  # [2, 3]

    def _resize_pre_aligned(self, image: np.ndarray) -> AlignedFace:
        """Mode "none": near-square inputs are centre-cropped square and resized; others rejected,
        since cropping a pre-aligned face would cut it and padding would change its framing."""
        height_px, width_px = image.shape[:2]
        short, long = min(height_px, width_px), max(height_px, width_px)
        if long / short > _MAX_ASPECT_FOR_CENTER_CROP:
            raise RejectError(
                STAGE, "not_square",
                f"pre-aligned image is {width_px}x{height_px} px; aspect {long / short:.3f} > "
                f"{_MAX_ASPECT_FOR_CENTER_CROP}",
            )
        top, left = (height_px - short) // 2, (width_px - short) // 2
        square = image[top:top + short, left:left + short]
        size = self.config.image_size_px
        interpolation = cv2.INTER_AREA if short > size else cv2.INTER_CUBIC
        crop = cv2.resize(square, (size, size), interpolation=interpolation)
        scale = size / short
        # cv2.resize maps pixel centres: dst = (src - offset + 0.5) * scale - 0.5
        transform = np.array(
            [[scale, 0.0, (0.5 - left) * scale - 0.5], [0.0, scale, (0.5 - top) * scale - 0.5]], dtype=np.float32
        )
        return AlignedFace(
            crop=np.ascontiguousarray(crop), landmarks5_src=None, landmarks5_crop=None, box=None, prob=None,
            faces_found=1, transform=transform,
        )


def out_of_frame_share(transform: np.ndarray, image_shape_hw: tuple[int, int], size_px: int) -> float:
    """Share of the [size, size] crop whose pixel centres map back outside the source image.

    transform: [2, 3] source -> crop pixels; its inverse sends each crop pixel centre to the source.
    """
    full = np.vstack([np.asarray(transform, dtype=np.float64), [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(full)[:2]                                       # [2, 3] crop -> source
    ys, xs = np.mgrid[0:size_px, 0:size_px]
    points = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)]).astype(np.float64)  # [3, S*S]
    sx, sy = inverse @ points                                               # [S*S] each
    height_px, width_px = image_shape_hw
    inside = (sx >= -0.5) & (sx <= width_px - 0.5) & (sy >= -0.5) & (sy <= height_px - 0.5)
    return float(1.0 - inside.mean())


def install_per_image_nms() -> None:
    """Make facenet-pytorch 2.5.3's batched MTCNN suppress boxes within each image only.

    Its detect_face keeps images apart in non-maximum suppression by adding image_index *
    (max coordinate + 1) to every box, which assumes coordinates are never negative. Boxes of
    faces at the frame edge reach below zero (-72 px seen on real photos), so a box of image i+1
    landed on a box of image i near the batch's largest coordinate and one suppressed the other:
    a face's crop depended on its batch-mates. Both of its batched NMS helpers are replaced (in
    that module only; idempotent) by a loop that runs the same NMS on each image's boxes alone,
    so a batched run equals one image at a time.
    """
    from facenet_pytorch.models.utils import detect_face

    if getattr(detect_face.batched_nms, "_per_image", False):
        return
    torch_nms, numpy_nms = detect_face.batched_nms, detect_face.batched_nms_numpy

    def batched_nms(boxes, scores, idxs, threshold):
        return _nms_each_image(torch_nms, boxes, scores, idxs, threshold)

    def batched_nms_numpy(boxes, scores, idxs, threshold, method):
        return _nms_each_image(numpy_nms, boxes, scores, idxs, threshold, method)

    batched_nms._per_image = batched_nms_numpy._per_image = True
    detect_face.batched_nms, detect_face.batched_nms_numpy = batched_nms, batched_nms_numpy


def _nms_each_image(nms, boxes, scores, idxs, *args):
    """Indices kept by `nms` run on each image's boxes separately (boxes [N, 4], scores [N], idxs [N])."""
    import torch

    kept = []
    for image_index in torch.unique(idxs):  # sorted: images keep their batch order
        members = torch.nonzero(idxs == image_index).flatten()  # [n_i]
        picked = nms(boxes[members], scores[members], torch.zeros_like(members), *args)
        kept.append(members[picked.to(members.device)])
    if not kept:
        return torch.empty((0,), dtype=torch.long, device=boxes.device)
    return torch.cat(kept)


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity [2, 3] mapping points src [N, 2] onto dst [N, 2] (closed form).

    Plain least squares over all five points, not a robust (LMEDS/RANSAC) fit: with five points a
    robust fit switches between "eyes + nose exactly" and "all five" depending on the face, and
    that switch changes the crop scale between near-identical inputs; least squares is stable.
    """
    src, dst = src.astype(np.float64), dst.astype(np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - src_mean, dst - dst_mean  # [N, 2] centred
    denom = float((s**2).sum())
    if denom == 0.0:  # all points coincide: no scale or rotation is defined
        return np.full((2, 3), np.nan)
    a = float((s * d).sum()) / denom                                  # scale * cos(angle)
    b = float((s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum()) / denom  # scale * sin(angle)
    linear = np.array([[a, -b], [b, a]])
    return np.hstack([linear, (dst_mean - linear @ src_mean)[:, None]])


def _warp(image: np.ndarray, transform: np.ndarray, size_px: int) -> np.ndarray:
    """Warp source -> [size, size, 3] crop; strong shrinks go through an area resize first so that
    fine texture (hair, skin) does not alias. Border: replicate (reflection would mirror facial
    features into the crop when the face touches the image edge)."""
    scale = float(np.hypot(transform[0, 0], transform[1, 0]))
    source, warp = image, transform.astype(np.float64)
    if scale < _MIN_DIRECT_WARP_SCALE:
        source = _resize_area(image, scale)
        fy, fx = source.shape[0] / image.shape[0], source.shape[1] / image.shape[1]
        # resized pixel centre x' came from source x = (x' + 0.5) / f - 0.5
        undo = np.array([[1 / fx, 0, 0.5 / fx - 0.5], [0, 1 / fy, 0.5 / fy - 0.5], [0, 0, 1]])
        warp = warp @ undo
    crop = cv2.warpAffine(
        source, warp, (size_px, size_px), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return np.ascontiguousarray(crop)


def _resize_area(image: np.ndarray, scale: float) -> np.ndarray:
    height_px, width_px = image.shape[:2]
    size = (max(1, round(width_px * scale)), max(1, round(height_px * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _canvas_to_source_px(coords: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Undo the detection downscale of (..., 2) x, y points, scale = (x, y) ratios
    (cv2.resize's pixel-centre convention: dst = (src + 0.5) * scale - 0.5)."""
    return ((coords + 0.5) / scale - 0.5).astype(np.float32)


def _round_up(value: int, multiple: int) -> int:
    return max(multiple, -(-value // multiple) * multiple)


def _check_rgb_uint8(image: np.ndarray, index: int) -> None:
    """Arrays come from load_image_rgb; anything else is a caller bug, not bad data."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"images[{index}] must be uint8 [H, W, 3] RGB (use load_image_rgb), got {desc}")


def _capture(make: Callable[[], AlignedFace]) -> AlignedFace | RejectError:
    """Return the RejectError instead of raising it, so one bad image never stops its batch."""
    try:
        return make()
    except RejectError as exc:
        return exc
