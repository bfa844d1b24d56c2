"""SinGAN stage: train banks of single-image GANs on aligned faces, save/load them, draw seeded regenerations."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from manifests.schema import stable_hash
from models.checkpoints import checkpoint_id, config_from_dict, config_hash, load_checkpoint, save_checkpoint
from models.metrics import ssim
from models.singan import (
    DEFAULT_START_OFFSET,
    ProgressFn,
    SinGANBank,
    SinGANConfig,
    SinGANPrior,
    bank_from_state,
    bank_state,
    preset,
    pyramid_sizes,
    regenerate,
    train_bank,
    train_prior,
)
from tasks.errors import RejectError
from tasks.tensors import tensor_to_uint8, uint8_to_tensor

STAGE = "singan"
BANK_KIND = "singan_bank"
PRIOR_KIND = "singan_prior"
ImageLike = np.ndarray | str | os.PathLike


@dataclass(frozen=True)
class SinGANSampleConfig:
    """How regenerations are drawn from a trained bank (the training side is models.singan.SinGANConfig).

    start_offset: start at scale N - start_offset, counted from the coarsest N; 1 (N-1, default) keeps the
        face's layout and expression and changes visible detail, 2 (N-2) gives near-copies, 0 is SinGAN's
        plain random sample. Recorded per sample as singan_start_scale.
    noise_gain: multiplies the noise amplitude at the start scale only (1 = as trained). 3 with the `fast`
        preset from N-1: blurred pairwise difference 0.011, SSIM to the input 0.935, patch realism 0.115 on
        five held-out real 64 px faces (4: 0.0145 / 0.906 / 0.142; measured curve in docs/singan-diversity.md).
    residual: each sample is the injected image plus the variation the noise draws (the sample minus the
        noise-free pass of the same injection: models.singan.regenerate). Needed when a SinGAN trained on a
        source face regenerates its edits; about the plain sample when it regenerates its own image.
    """

    start_offset: int = DEFAULT_START_OFFSET
    num_samples: int = 4
    noise_gain: float = 3.0
    residual: bool = False

    def __post_init__(self) -> None:
        if self.start_offset < 0 or self.num_samples < 1 or self.noise_gain < 0:
            raise ValueError(f"invalid SinGAN sample config {self}")

    def start_scale(self, bank: SinGANBank) -> int:
        return max(bank.coarsest_scale - self.start_offset, 0)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """CUDA when present unless told otherwise; cuDNN may then pick kernels per shape (fixed per scale)."""
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device


def resolve_config(config: str | SinGANConfig) -> SinGANConfig:
    return preset(config) if isinstance(config, str) else config


def _as_rgb_uint8(image: ImageLike, index: int) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        from tasks.imageio import load_image_rgb  # cv2/PIL only when paths are given

        return load_image_rgb(image, min_side_px=1)  # the pyramid check below says what is too small
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise RejectError(STAGE, "bad_image", f"image {index}: expected uint8 RGB [H, W, 3], got {image.dtype} {image.shape}")
    return image


def images_to_tensor(images: Sequence[ImageLike], config: SinGANConfig) -> torch.Tensor:
    """uint8 RGB images (or paths) of one size -> [K, 3, H, W] float32 in [-1, 1]. Refuses mixed sizes
    and images too small for the pyramid, naming the offending image."""
    if len(images) == 0:
        raise ValueError("no images given")
    arrays = [_as_rgb_uint8(image, i) for i, image in enumerate(images)]
    size = arrays[0].shape
    for i, a in enumerate(arrays):
        if a.shape != size:
            raise RejectError(STAGE, "size_mismatch", f"image {i} is {a.shape[:2]}, image 0 is {size[:2]}: "
                              "a bank trains same-size (aligned) faces")
    try:
        pyramid_sizes(size[0], size[1], config)
    except ValueError as e:
        raise RejectError(STAGE, "image_too_small", str(e)) from None
    return uint8_to_tensor(np.stack(arrays))  # [K, 3, H, W]


def train_singan_bank(
    images_rgb_uint8: Sequence[ImageLike],
    config: str | SinGANConfig,
    seeds: Sequence[int],
    device: str | torch.device | None = None,
    progress: ProgressFn | None = None,
    prior: SinGANPrior | None = None,
) -> SinGANBank:
    """Train one SinGAN per image, all in one bank (member k = images[k], seeded by seeds[k]); with a prior,
    every member is fine-tuned from it for config.iters_per_scale iterations per scale."""
    config = resolve_config(config)
    if len(seeds) != len(images_rgb_uint8):
        raise ValueError(f"{len(images_rgb_uint8)} images but {len(seeds)} seeds")
    images = images_to_tensor(images_rgb_uint8, config)
    return train_bank(images, config, [int(s) for s in seeds], device=resolve_device(device), progress=progress,
                      prior=prior)


def train_singan_prior(
    images_rgb_uint8: Sequence[ImageLike],
    config: str | SinGANConfig,
    seed: int,
    batch_size: int = 4,
    device: str | torch.device | None = None,
    progress: ProgressFn | None = None,
) -> SinGANPrior:
    """A face prior (models.singan.train_prior) on same-size aligned faces: config.iters_per_scale
    iterations per scale, each on batch_size faces."""
    config = resolve_config(config)
    images = images_to_tensor(images_rgb_uint8, config)
    return train_prior(images, config, int(seed), batch_size=batch_size, device=resolve_device(device), progress=progress)


def save_bank(bank: SinGANBank, directory: str | os.PathLike, extra: dict | None = None) -> Path:
    """safetensors + JSON card (config, sizes, train log); refuses to overwrite an existing bank."""
    tensors, meta = bank_state(bank)
    kind = PRIOR_KIND if isinstance(bank, SinGANPrior) else BANK_KIND
    return save_checkpoint(directory, tensors, kind=kind, config=bank.config, extra={**meta, **(extra or {})})


def load_bank(directory: str | os.PathLike, device: str | torch.device | None = None) -> SinGANBank:
    tensors, card = load_checkpoint(directory, kind=BANK_KIND)
    config = config_from_dict(SinGANConfig, card["config"])
    return bank_from_state(config, tensors, card["extra"], device=resolve_device(device))


def load_prior(directory: str | os.PathLike, device: str | torch.device | None = None) -> SinGANPrior:
    """A face prior saved by save_bank (kind singan_prior; the tensors' hash is checked on load)."""
    tensors, card = load_checkpoint(directory, kind=PRIOR_KIND)
    config = config_from_dict(SinGANConfig, card["config"])
    prior = bank_from_state(config, tensors, card["extra"], device=resolve_device(device))
    assert isinstance(prior, SinGANPrior)
    return prior


def bank_version(directory: str | os.PathLike) -> str:
    """What the manifest's model_versions records for a saved bank: its content id."""
    return checkpoint_id(directory)


def regenerate_images(
    bank: SinGANBank,
    member: int,
    image_rgb_uint8: ImageLike | None,
    start_scale: int,
    num_samples: int,
    seeds: Sequence[int],
    noise_gain: float = 1.0,
    residual: bool = False,
) -> list[np.ndarray]:
    """M uint8 RGB variations of an image by bank member `member` (see models.singan.regenerate)."""
    image = None
    if image_rgb_uint8 is not None:
        image = images_to_tensor([image_rgb_uint8], bank.config)[0]
    out = regenerate(bank, member, image, start_scale, num_samples, [int(s) for s in seeds], noise_gain, residual)
    return list(tensor_to_uint8(out))


def ssim_to_source(samples_rgb_uint8: Sequence[np.ndarray], source_rgb_uint8: np.ndarray) -> list[float]:
    """The manifest's quality.ssim_to_source for each sample."""
    samples = torch.from_numpy(np.stack(samples_rgb_uint8)).permute(0, 3, 1, 2).float()
    source = torch.from_numpy(source_rgb_uint8).permute(2, 0, 1).float()[None].expand_as(samples)
    return [float(v) for v in ssim(samples, source, value_range=(0.0, 255.0))]


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any JSON-able parts (run seed, source id, edit index, sample index, ...): the same
    parts give the same seed on every machine, whatever the batch or worker split."""
    return int(stable_hash(list(parts), 16), 16) >> 1


def sample_seeds(run_seed: int, source_id: str, edit_index: int, num_samples: int) -> list[int]:
    return [derive_seed(run_seed, source_id, edit_index, "singan_sample", i) for i in range(num_samples)]


def train_seed(run_seed: int, source_id: str, edit_index: int) -> int:
    return derive_seed(run_seed, source_id, edit_index, "singan_train")


def singan_version(config: SinGANConfig) -> str:
    """The SinGAN part of a manifest row's model_versions."""
    return f"singan:{config_hash(config)}"


def regenerate_faces(
    images_rgb_uint8: Sequence[np.ndarray],
    config: str | SinGANConfig,
    train_seeds: Sequence[int],
    sample: SinGANSampleConfig,
    sample_seeds_per_image: Sequence[Sequence[int]],
    device: str | torch.device | None = None,
    progress: ProgressFn | None = None,
) -> tuple[int, list[list[np.ndarray]]]:
    """Train a bank on the images and draw `sample.num_samples` regenerations of each from its own member.

    Returns (start_scale, samples[k][i]); start_scale is the absolute scale recorded in the manifest."""
    injections = [[(image, seeds)] for image, seeds in zip(images_rgb_uint8, sample_seeds_per_image)]
    start, out = regenerate_injected(images_rgb_uint8, config, train_seeds, sample, injections, device, progress)
    return start, [per_member[0] for per_member in out]


def regenerate_injected(
    train_images_rgb_uint8: Sequence[np.ndarray],
    config: str | SinGANConfig,
    train_seeds: Sequence[int],
    sample: SinGANSampleConfig,
    injections: Sequence[Sequence[tuple[np.ndarray, Sequence[int]]]],
    device: str | torch.device | None = None,
    progress: ProgressFn | None = None,
    prior: SinGANPrior | None = None,
) -> tuple[int, list[list[list[np.ndarray]]]]:
    """Train a bank on the train images, then regenerate other images through each member.

    injections[k]: the (image, sample seeds) pairs member k regenerates, each image injected at the start
    scale (one SinGAN per source face, its edits injected into it: issue 14). Returns (start_scale,
    samples[k][e][i]) for member k, injected image e, sample i. prior: warm-start every member from it."""
    if len(injections) != len(train_images_rgb_uint8):
        raise ValueError(f"{len(train_images_rgb_uint8)} train images but {len(injections)} injection lists")
    bank = train_singan_bank(train_images_rgb_uint8, config, train_seeds, device, progress, prior)
    start = sample.start_scale(bank)
    if start > bank.max_start_scale:
        raise ValueError(f"start scale {start} needs scales this preset skips (max {bank.max_start_scale}); "
                         f"lower skip_coarse_scales or raise start_offset")
    out = [
        [regenerate_images(bank, k, image, start, sample.num_samples, seeds, sample.noise_gain, sample.residual)
         for image, seeds in pairs]
        for k, pairs in enumerate(injections)
    ]
    return start, out


# --- Prefect wrapper: retries and a GPU tag only; the logic above is tested without Prefect -----------------


@functools.cache
def regenerate_faces_task():
    """regenerate_faces as a Prefect task (built on first use, so importing this module stays light)."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    return task(regenerate_faces, name="singan-regenerate-faces", retries=1, retry_delay_seconds=10,
                cache_policy=NO_CACHE, tags=["gpu"])
