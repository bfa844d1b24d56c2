"""Tests for tasks/imageio.py: every pixel format becomes upright uint8 RGB; bad files get specific reasons."""
from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from tasks.errors import RejectError
from tasks.imageio import BACKGROUND_RGB, load_image_rgb

GREY = BACKGROUND_RGB


def _corners(height_px: int = 40, width_px: int = 60) -> np.ndarray:
    """An image whose every flip/rotation is distinguishable: a gradient plus one red corner."""
    y, x = np.mgrid[0:height_px, 0:width_px]
    rgb = np.stack([x * 4, y * 6, (x + y) * 2], axis=2).astype(np.uint8)
    rgb[:8, :8] = (255, 0, 0)
    return rgb


def _reason(path: Path, **kwargs) -> str:
    with pytest.raises(RejectError) as info:
        load_image_rgb(path, **kwargs)
    assert info.value.stage == "load"
    assert str(path) in info.value.detail
    return info.value.reason


def test_rgb_png_is_returned_exactly(tmp_path: Path) -> None:
    rgb = _corners()
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = load_image_rgb(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (40, 60, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)


def test_8bit_modes(tmp_path: Path) -> None:
    grey = np.array([[0, 50], [200, 255]] * 20, dtype=np.uint8).reshape(40, 2).repeat(20, axis=1)  # [40, 40]
    Image.fromarray(grey, mode="L").save(tmp_path / "l.png")
    np.testing.assert_array_equal(load_image_rgb(tmp_path / "l.png"), np.dstack([grey] * 3))

    bits = Image.fromarray(grey > 100).convert("1")
    bits.save(tmp_path / "1.png")
    np.testing.assert_array_equal(load_image_rgb(tmp_path / "1.png")[..., 0], np.where(grey > 100, 255, 0))

    la = np.dstack([grey, np.where(np.arange(40)[None, :] < 20, 0, 255).repeat(40, 0).astype(np.uint8)])
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    out = load_image_rgb(tmp_path / "la.png")
    assert np.all(out[:, :20] == GREY)                      # fully transparent -> background
    np.testing.assert_array_equal(out[:, 20:, 0], grey[:, 20:])  # opaque -> the grey value


def test_rgba_composites_onto_grey_with_rounding(tmp_path: Path) -> None:
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:, :10, 3] = 0
    rgba[:, 10:20, 3] = 128
    rgba[:, 20:, 3] = 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    out = load_image_rgb(tmp_path / "rgba.png")
    assert np.all(out[:, :10] == (128, 128, 128))
    assert np.all(out[:, 10:20] == (192, 64, 64))  # (255*128 + 128*127) / 255 = 191.7; 128*127/255 = 63.7
    assert np.all(out[:, 20:] == (255, 0, 0))


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    index = np.zeros((32, 32), dtype=np.uint8)
    index[:, 16:] = 1
    palette = [10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6)
    im = Image.fromarray(index, mode="P")
    im.putpalette(palette)
    im.save(tmp_path / "p.png")
    out = load_image_rgb(tmp_path / "p.png")
    assert np.all(out[:, :16] == (10, 20, 30)) and np.all(out[:, 16:] == (200, 100, 50))

    im.save(tmp_path / "p_transparent.png", transparency=1)
    out = load_image_rgb(tmp_path / "p_transparent.png")
    assert np.all(out[:, :16] == (10, 20, 30)) and np.all(out[:, 16:] == GREY)


def test_cmyk(tmp_path: Path) -> None:
    cmyk = np.zeros((32, 32, 4), dtype=np.uint8)
    cmyk[:, :16, 0] = 255  # pure cyan
    cmyk[:, 16:, 3] = 255  # pure black
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "cmyk.tif")
    out = load_image_rgb(tmp_path / "cmyk.tif")
    assert np.all(out[:, :16] == (0, 255, 255)) and np.all(out[:, 16:] == (0, 0, 0))


def test_16bit_grey_png_and_tiff_are_rescaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([0, 257, 1000, 32768, 65535], dtype=np.uint16)
    expected = np.array([0, 1, 4, 128, 255], dtype=np.uint8)  # v * 255 / 65535, rounded
    grey16 = np.tile(values.repeat(8), (40, 1))  # [40, 40]
    for name in ("g16.png", "g16.tif"):
        assert cv2.imwrite(str(tmp_path / name), grey16)
        out = load_image_rgb(tmp_path / name)
        np.testing.assert_array_equal(out[0, ::8, 0], expected, err_msg=name)
        assert np.all(out[..., 0] == out[..., 2])


def test_16bit_colour_png_keeps_channel_order_and_full_precision(tmp_path: Path) -> None:
    bgr16 = np.zeros((32, 32, 3), dtype=np.uint16)
    bgr16[..., 0] = 1000        # blue: 3.9 -> 4 (PIL alone would truncate 1000 >> 8 = 3)
    bgr16[..., 1] = 257 * 100   # green -> 100
    bgr16[..., 2] = 65535       # red -> 255
    for name in ("c16.png", "c16.tif"):
        assert cv2.imwrite(str(tmp_path / name), bgr16)
        assert np.all(load_image_rgb(tmp_path / name) == (255, 100, 4)), name


def test_16bit_rgba_png_composites(tmp_path: Path) -> None:
    bgra16 = np.zeros((32, 32, 4), dtype=np.uint16)
    bgra16[..., 2] = 65535
    bgra16[:, 16:, 3] = 65535
    assert cv2.imwrite(str(tmp_path / "rgba16.png"), bgra16)
    out = load_image_rgb(tmp_path / "rgba16.png")
    assert np.all(out[:, :16] == GREY) and np.all(out[:, 16:] == (255, 0, 0))


def test_32bit_integer_image_in_16bit_range_is_rescaled_outside_rejected(tmp_path: Path) -> None:
    ints = np.full((32, 32), 65535, dtype=np.int32)
    Image.fromarray(ints, mode="I").save(tmp_path / "i.tif")
    assert np.all(load_image_rgb(tmp_path / "i.tif") == 255)
    ints[0, 0] = -5
    Image.fromarray(ints, mode="I").save(tmp_path / "i_neg.tif")
    assert _reason(tmp_path / "i_neg.tif") == "unsupported_mode"


def test_float_image_is_unsupported(tmp_path: Path) -> None:
    Image.fromarray(np.full((32, 32), 0.5, dtype=np.float32), mode="F").save(tmp_path / "f.tif")
    assert _reason(tmp_path / "f.tif") == "unsupported_mode"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil_exif_transpose(tmp_path: Path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(_corners()).save(tmp_path / "o.png", exif=exif)  # lossless, so exact comparison
    with Image.open(tmp_path / "o.png") as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    out = load_image_rgb(tmp_path / "o.png")
    np.testing.assert_array_equal(out, expected)
    assert out.shape == ((40, 60, 3) if orientation <= 4 else (60, 40, 3))


def test_exif_orientation_6_jpeg_comes_back_upright(tmp_path: Path) -> None:
    upright = _corners(64, 96)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(np.ascontiguousarray(np.rot90(upright))).save(tmp_path / "r.jpg", quality=98, exif=exif)
    out = load_image_rgb(tmp_path / "r.jpg")
    assert out.shape == upright.shape
    assert np.abs(out.astype(int) - upright).mean() < 4.0   # JPEG loss only
    assert np.all(out[1:6, 1:6, 0] > 200)                    # the red corner is top-left again


def test_missing_empty_and_not_an_image(tmp_path: Path) -> None:
    assert _reason(tmp_path / "nope.jpg") == "file_missing"
    (tmp_path / "empty.png").write_bytes(b"")
    assert _reason(tmp_path / "empty.png") == "empty_file"
    (tmp_path / "text.jpg").write_text("this is not a JPEG\n" * 20)
    assert _reason(tmp_path / "text.jpg") == "corrupt_image"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_are_corrupt(tmp_path: Path, astronaut_rgb: np.ndarray, fmt: str) -> None:
    buffer = io.BytesIO()
    Image.fromarray(astronaut_rgb).save(buffer, format=fmt)
    data = buffer.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    assert _reason(path) == "corrupt_image"


def test_too_small_uses_the_configured_minimum(tmp_path: Path) -> None:
    Image.fromarray(_corners(20, 60)).save(tmp_path / "small.png")
    assert _reason(tmp_path / "small.png") == "image_too_small"
    assert load_image_rgb(tmp_path / "small.png", min_side_px=16).shape == (20, 60, 3)
