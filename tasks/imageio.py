"""Read any image file into upright 8-bit RGB, or reject it with a specific reason."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from tasks.errors import RejectError

STAGE = "load"

# Transparent pixels are composited onto mid-grey: it biases neither the face detector (no
# black/white edges to fire on) nor colour statistics towards either extreme.
BACKGROUND_RGB: tuple[int, int, int] = (128, 128, 128)

EXIF_ORIENTATION_TAG = 0x0112
# EXIF orientation -> PIL transpose that makes the image upright (same table as ImageOps.exif_transpose).
_ORIENTATION_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# Pixel cap, checked from the header before decoding: a 64-megapixel photo (8000 x 8000) decodes to
# ~200 MB of RGB; Pillow's own guard only trips at ~179 MP (a 169 MP image took 1.8 GB RSS).
MAX_IMAGE_PIXELS = 64_000_000

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TIFF_BITS_PER_SAMPLE_TAG = 258
_UINT16_TO_UINT8 = 255.0 / 65535.0  # full-range rescale: 65535 -> 255, 257*k -> k (never a clip)


def load_image_rgb(path: str | os.PathLike, min_side_px: int = 32) -> np.ndarray:
    """Decode `path` fully and return it upright as uint8 RGB [H, W, 3].

    Normalises: EXIF orientation; 1-bit, L, P (incl. transparency), LA, RGBA, CMYK, YCbCr;
    16-bit PNG/TIFF (grey, RGB, RGBA, read with OpenCV because PIL drops colour 16-bit to
    8 bits without saying so) and PIL's 16-bit integer modes, all rescaled 0..65535 -> 0..255.
    Alpha is composited onto BACKGROUND_RGB. Multi-frame files (animated GIF, multi-page TIFF) use
    frame 0 (ingest accepts .gif for that reason). ICC profiles are not applied.

    Raises RejectError(stage="load") with reason file_missing, empty_file, corrupt_image
    (not an image, truncated, undecodable), image_too_large (more than MAX_IMAGE_PIXELS, checked
    from the header before decoding, or PIL's decompression-bomb guard),
    unsupported_mode (e.g. float or LAB pixels) or image_too_small (min side < min_side_px).
    """
    path = Path(path)
    if not path.is_file():
        raise RejectError(STAGE, "file_missing", f"{path}: no such file")
    if path.stat().st_size == 0:
        raise RejectError(STAGE, "empty_file", f"{path}: file is 0 bytes")

    try:
        with Image.open(path) as im:
            check_pixel_count(im, path)
            im.load()  # decode every byte now, so a truncated file fails here and not downstream
            orientation = int(im.getexif().get(EXIF_ORIENTATION_TAG, 1))
            rgb = _load_16bit_rgb(path) if _is_16bit_file(im, path) else _pil_to_rgb(im, path)
    except RejectError:
        raise
    except Image.DecompressionBombError as exc:
        raise RejectError(STAGE, "image_too_large", f"{path}: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError, ValueError) as exc:
        # PIL signals bad bytes with any of these (ValueError: e.g. a header with an impossible size).
        raise RejectError(STAGE, "corrupt_image", f"{path}: {type(exc).__name__}: {exc}") from exc

    rgb = apply_exif_orientation(rgb, orientation)
    height_px, width_px = rgb.shape[:2]
    if min(height_px, width_px) < min_side_px:
        raise RejectError(
            STAGE, "image_too_small", f"{path}: {width_px}x{height_px} px, shorter side < {min_side_px} px"
        )
    return np.ascontiguousarray(rgb)


def check_pixel_count(im: Image.Image, path: str | os.PathLike) -> None:
    """RejectError image_too_large when an opened (not yet decoded) image has more than MAX_IMAGE_PIXELS."""
    width_px, height_px = im.size
    if width_px * height_px > MAX_IMAGE_PIXELS:
        raise RejectError(STAGE, "image_too_large",
                          f"{path}: {width_px}x{height_px} px = {width_px * height_px / 1e6:.1f} MP, more than the "
                          f"{MAX_IMAGE_PIXELS / 1e6:.0f} MP cap (MAX_IMAGE_PIXELS); downscale it first")


def apply_exif_orientation(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """Rotate/flip a decoded [H, W, 3] image as its EXIF orientation tag says (1 or unknown: as is)."""
    method = _ORIENTATION_TRANSPOSE.get(orientation)
    if method is None:
        return rgb
    return np.asarray(Image.fromarray(rgb).transpose(method))


def composite_on_background(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] colour + uint8 [H, W] alpha -> uint8 [H, W, 3] over BACKGROUND_RGB, rounded."""
    a = alpha.astype(np.uint32)[..., None]  # [H, W, 1]
    background = np.array(BACKGROUND_RGB, dtype=np.uint32)
    mixed = rgb.astype(np.uint32) * a + background * (255 - a)
    return ((mixed + 127) // 255).astype(np.uint8)


def _pil_to_rgb(im: Image.Image, path: Path) -> np.ndarray:
    """Any 8-bit (or PIL 16-bit integer) mode -> uint8 [H, W, 3]."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im)
    if mode in ("L", "1"):
        grey = np.asarray(im.convert("L"))
        return np.repeat(grey[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"))
        return composite_on_background(rgba[..., :3], rgba[..., 3])
    if mode in ("P", "CMYK", "YCbCr"):
        return np.asarray(im.convert("RGB"))
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(im).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise RejectError(
                STAGE, "unsupported_mode",
                f"{path}: integer pixels span {values.min()}..{values.max()}, not a 16-bit range",
            )
        grey = _uint16_to_uint8(values)
        return np.repeat(grey[..., None], 3, axis=2)
    raise RejectError(STAGE, "unsupported_mode", f"{path}: PIL mode {mode!r} has no defined 8-bit RGB rendering")


def _is_16bit_file(im: Image.Image, path: Path) -> bool:
    """True for 16-bit-per-sample PNG and TIFF, the files PIL would silently truncate to 8 bits."""
    if im.format == "PNG":
        with open(path, "rb") as fh:
            header = fh.read(26)  # signature(8) + length(4) + "IHDR"(4) + w(4) + h(4) + depth(1) + type(1)
        return header[:8] == _PNG_SIGNATURE and header[12:16] == b"IHDR" and header[24] == 16
    if im.format == "TIFF":
        bits = im.tag_v2.get(_TIFF_BITS_PER_SAMPLE_TAG, 8)
        bits = bits if isinstance(bits, tuple) else (bits,)
        return 16 in bits
    return False


def _load_16bit_rgb(path: Path) -> np.ndarray:
    """16-bit grey / BGR / BGRA via OpenCV -> uint8 RGB [H, W, 3] (OpenCV widens grey+alpha PNG to BGRA)."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # uint16, no orientation applied
    if raw is None:
        raise RejectError(STAGE, "corrupt_image", f"{path}: OpenCV could not decode the 16-bit image")
    if raw.dtype != np.uint16:  # e.g. a multi-sample TIFF OpenCV widened differently
        raise RejectError(STAGE, "unsupported_mode", f"{path}: expected uint16 samples, OpenCV gave {raw.dtype}")
    if raw.ndim == 2:
        raw = raw[..., None]
    channels = raw.shape[2]
    if channels == 1:
        colour = np.repeat(raw[..., :1], 3, axis=2)
    elif channels in (3, 4):
        colour = raw[..., 2::-1]  # BGR -> RGB
    else:
        raise RejectError(STAGE, "unsupported_mode", f"{path}: {channels} channels of 16-bit samples")
    rgb = _uint16_to_uint8(colour)
    if channels == 4:
        return composite_on_background(rgb, _uint16_to_uint8(raw[..., -1]))
    return rgb


def _uint16_to_uint8(values: np.ndarray) -> np.ndarray:
    """0..65535 integers -> 0..255 uint8, rounded to nearest."""
    return np.rint(values.astype(np.float64) * _UINT16_TO_UINT8).astype(np.uint8)
