"""SIFID of a generated image against its source, with Inception-v3 weights the user supplies (never downloaded)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from models.sifid import InceptionFeatures, InceptionWeightsError, SIFIDConfig, min_image_side_px, sifid
from tasks.errors import RejectError
from tasks.imageio import load_image_rgb

STAGE = "quality"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_inception(path: str | os.PathLike, device: str | torch.device | None = None,
                   config: SIFIDConfig = SIFIDConfig()) -> InceptionFeatures:
    """Inception-v3 stem from a weights file: a torchvision inception_v3 state_dict or pytorch-fid's
    FID-Inception weights (both name the stem layers alike; any later layers and the classifier are ignored).

    Raises FileNotFoundError for a missing path and InceptionWeightsError for a file that is not one of those.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Inception-v3 weights not found: {path} (nothing is downloaded; give a local file)")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a non-torch file, or a pickle that holds more than tensors
        raise InceptionWeightsError(
            f"{path}: cannot be read as a weights-only torch file ({type(exc).__name__}: {str(exc)[:200]})") from exc
    try:
        extractor = InceptionFeatures(config).load_weights(state_dict)
    except InceptionWeightsError as exc:
        raise InceptionWeightsError(f"{path}: {exc}") from exc
    return extractor.to(device or default_device())


def _image_tensor(rgb: np.ndarray, name: str, min_side_px: int) -> torch.Tensor:
    """RGB uint8 [H, W, 3] -> float [3, H, W] in 0..1, or RejectError saying what is wrong with it."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        shape = getattr(rgb, "shape", None)
        raise RejectError(STAGE, "sifid_bad_image",
                          f"{name}: expected RGB uint8 [H, W, 3], got {getattr(rgb, 'dtype', type(rgb).__name__)} {shape}")
    if min(rgb.shape[:2]) < min_side_px:
        raise RejectError(STAGE, "image_too_small",
                          f"{name}: {rgb.shape[1]}x{rgb.shape[0]} px; SIFID at this layer needs >= {min_side_px} px a side")
    return torch.tensor(rgb).permute(2, 0, 1).float().div_(255.0)  # [3, H, W] (a copy: inputs may be read-only)


def sifid_images(real_rgb_uint8: np.ndarray, fake_rgb_uint8: np.ndarray, extractor: InceptionFeatures) -> float:
    """SIFID between a real image and a generated one (RGB uint8 [H, W, 3]; sizes may differ). 0 = same statistics."""
    min_side_px = min_image_side_px(extractor.config)
    real = _image_tensor(real_rgb_uint8, "real image", min_side_px)
    fake = _image_tensor(fake_rgb_uint8, "generated image", min_side_px)
    return sifid(extractor, real, fake)


def sifid_command(real_path: str | os.PathLike, fake_path: str | os.PathLike, weights_path: str | os.PathLike,
                  device: str | None = None, feature_layer: str = SIFIDConfig.feature_layer) -> float:
    """`singanimation sifid REAL FAKE --inception WEIGHTS`: the SIFID of two image files."""
    extractor = load_inception(weights_path, device, SIFIDConfig(feature_layer=feature_layer))
    real = load_image_rgb(real_path, min_side_px=1)  # the size check with the layer's own minimum is below
    fake = load_image_rgb(fake_path, min_side_px=1)
    return sifid_images(real, fake, extractor)
