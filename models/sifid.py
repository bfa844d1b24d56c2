"""SIFID: the Fréchet distance between per-location Inception-v3 early-layer features of two single images."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

# Inception-v3 stem in torchvision's module names, in forward order. The feature maps SIFID can use:
# "Conv2d_4a_3x3" (192 channels, the conv output just before the second max-pool: the layer the SinGAN
# paper and its SIFID script use, dims=192) and "Conv2d_2b_3x3" (64 channels, just before the first).
STEM: tuple[str, ...] = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
                         "Conv2d_4a_3x3")
FEATURE_CHANNELS: dict[str, int] = {"Conv2d_2b_3x3": 64, "Conv2d_4a_3x3": 192}
# (kernel, stride, padding) of every stem module: used to say in advance how small an image may be.
_GEOMETRY: dict[str, tuple[int, int, int]] = {
    "Conv2d_1a_3x3": (3, 2, 0), "Conv2d_2a_3x3": (3, 1, 0), "Conv2d_2b_3x3": (3, 1, 1),
    "maxpool1": (3, 2, 0), "Conv2d_3b_1x1": (1, 1, 0), "Conv2d_4a_3x3": (3, 1, 0),
}
_OPTIONAL_BUFFERS = ("num_batches_tracked",)  # a BatchNorm counter that eval-mode inference never reads
_DATA_PARALLEL_PREFIX = "module."


@dataclasses.dataclass(frozen=True)
class SIFIDConfig:
    """Which Inception-v3 feature map SIFID compares."""

    feature_layer: str = "Conv2d_4a_3x3"

    def __post_init__(self) -> None:
        if self.feature_layer not in FEATURE_CHANNELS:
            raise ValueError(f"feature_layer must be one of {sorted(FEATURE_CHANNELS)}, got {self.feature_layer!r}")

    @property
    def modules(self) -> tuple[str, ...]:
        return STEM[: STEM.index(self.feature_layer) + 1]


class InceptionWeightsError(ValueError):
    """A weights file that does not hold the Inception-v3 layers SIFID needs; names the offending keys."""


def feature_side_px(image_side_px: int, config: SIFIDConfig = SIFIDConfig()) -> int:
    """Side of the feature map for an image side (0 when the image is too small to reach the layer)."""
    side = image_side_px
    for name in config.modules:
        kernel, stride, padding = _GEOMETRY[name]
        side = (side + 2 * padding - kernel) // stride + 1
        if side < 1:
            return 0
    return side


def min_image_side_px(config: SIFIDConfig = SIFIDConfig()) -> int:
    """Smallest square image that gives at least 2x2 feature locations (a covariance needs >= 2 samples)."""
    side = 1
    while feature_side_px(side, config) < 2:
        side += 1
    return side


class InceptionFeatures(nn.Module):
    """torchvision Inception-v3 stem up to `config.feature_layer`; images in 0..1 -> feature map."""

    def __init__(self, config: SIFIDConfig = SIFIDConfig()):
        super().__init__()
        import torchvision  # pure PyTorch; imported here so importing this module stays light

        self.config = config
        # Built on the meta device: allocates nothing and leaves the global RNG untouched; the real
        # tensors arrive with load_weights (assign=True).
        with torch.device("meta"):
            full = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
        self.stem = nn.Sequential(*[getattr(full, name) for name in config.modules])
        self.eval()

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """State-dict key (torchvision naming, e.g. 'Conv2d_1a_3x3.conv.weight') -> shape."""
        shapes = {}
        for key, tensor in self.stem.state_dict(keep_vars=True).items():
            index, rest = key.split(".", 1)
            shapes[f"{self.config.modules[int(index)]}.{rest}"] = tuple(tensor.shape)
        return shapes

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> "InceptionFeatures":
        """Take the stem's tensors out of a full Inception-v3 state dict; every needed key is checked."""
        own = _select_stem(state_dict, self.expected_shapes())
        positions = {name: i for i, name in enumerate(self.config.modules)}
        renamed = {}
        for key, tensor in own.items():
            module, rest = key.split(".", 1)
            renamed[f"{positions[module]}.{rest}"] = tensor
        self.stem.load_state_dict(renamed, strict=True, assign=True)
        self.stem.requires_grad_(False)
        return self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] float in 0..1 -> features [B, C, h, w]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
        if self.stem[0].conv.weight.is_meta:
            raise RuntimeError("InceptionFeatures has no weights yet: call load_weights (or tasks.sifid.load_inception)")
        # Inception-v3 weights (torchvision's and pytorch-fid's) expect inputs in -1..1.
        return self.stem(images * 2.0 - 1.0)


def _select_stem(state_dict: Mapping[str, torch.Tensor],
                 expected: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """The stem's tensors from a state dict, or InceptionWeightsError naming what is missing or misshapen."""
    if not isinstance(state_dict, Mapping):
        raise InceptionWeightsError(f"expected a state dict (a mapping of names to tensors), got {type(state_dict).__name__}")
    if isinstance(state_dict.get("state_dict"), Mapping):  # checkpoints that wrap the state dict
        state_dict = state_dict["state_dict"]
    keys = list(state_dict)
    if keys and all(isinstance(k, str) and k.startswith(_DATA_PARALLEL_PREFIX) for k in keys):
        state_dict = {k[len(_DATA_PARALLEL_PREFIX):]: v for k, v in state_dict.items()}
    selected, missing, wrong_shape = {}, [], []
    for key, shape in expected.items():
        tensor = state_dict.get(key)
        if tensor is None:
            if key.rsplit(".", 1)[-1] in _OPTIONAL_BUFFERS:
                selected[key] = torch.zeros((), dtype=torch.long)
            else:
                missing.append(key)
            continue
        if not isinstance(tensor, torch.Tensor):
            wrong_shape.append(f"{key}: not a tensor ({type(tensor).__name__})")
        elif tuple(tensor.shape) != shape:
            wrong_shape.append(f"{key}: {tuple(tensor.shape)} != {shape}")
        else:
            # Half-precision files still run: the stem computes in float32 like the rest of models/.
            selected[key] = tensor.float() if tensor.is_floating_point() else tensor
    if missing or wrong_shape:
        found = ", ".join(str(k) for k in keys[:4]) + (", ..." if len(keys) > 4 else "")
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if wrong_shape:
            problems.append(f"{len(wrong_shape)} with the wrong shape ({'; '.join(wrong_shape[:3])})")
        raise InceptionWeightsError(
            "not Inception-v3 weights: " + " and ".join(problems) + f"; the file has {len(keys)} keys ({found}). "
            "Expected a torchvision inception_v3 state_dict or pytorch-fid's FID-Inception weights "
            "(pt_inception-2015-12-05), whose keys look like 'Conv2d_1a_3x3.conv.weight'.")
    return selected


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """features [C, h, w] of one image -> (mean [C], covariance [C, C]) over its h*w locations, float64.

    Every spatial location is one sample; the covariance is unbiased (divides by n - 1).
    """
    if features.ndim != 3:
        raise ValueError(f"expected one image's features [C, h, w], got {tuple(features.shape)}")
    samples = features.detach().to(torch.float64).flatten(1).T  # [h*w, C]
    n = samples.shape[0]
    if n < 2:
        raise ValueError(f"a covariance needs at least 2 feature locations, got {n}")
    mu = samples.mean(dim=0)
    centred = samples - mu
    sigma = centred.T @ centred / (n - 1)
    return mu, sigma


def _as_float64(value, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    array = np.asarray(value, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} has non-finite values")
    return array


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    # Round-off makes zero eigenvalues of a rank-deficient covariance come out slightly negative.
    roots = np.sqrt(np.clip(eigenvalues, 0.0, None))
    return (eigenvectors * roots) @ eigenvectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians (tensors or arrays), in float64.

    Tr((S1 S2)^(1/2)) is computed as Tr((A S2 A)^(1/2)) with A = S1^(1/2): the same eigenvalues, but
    A S2 A is symmetric, so a symmetric eigendecomposition gives it stably even when S1 or S2 is
    singular (e.g. fewer feature locations than channels), with no epsilon added to the diagonal.
    The matrices are at most a few hundred wide, so this runs in NumPy on the CPU: torch's multithreaded
    eigh stalls for seconds on an oversubscribed CPU where NumPy's takes milliseconds.
    """
    mu1, mu2 = _as_float64(mu1, "mu1"), _as_float64(mu2, "mu2")
    sigma1, sigma2 = _as_float64(sigma1, "sigma1"), _as_float64(sigma2, "sigma2")
    dim = mu1.shape[0] if mu1.ndim == 1 else -1
    if mu1.ndim != 1 or mu2.shape != mu1.shape or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(f"expected mu [D] and sigma [D, D] for both, got {mu1.shape}, {sigma1.shape}, "
                         f"{mu2.shape}, {sigma2.shape}")
    for name, sigma in (("sigma1", sigma1), ("sigma2", sigma2)):
        scale = max(float(np.abs(sigma).max()), 1e-300)
        if np.abs(sigma - sigma.T).max() > 1e-6 * scale:
            raise ValueError(f"{name} is not symmetric: not a covariance matrix")
    root1 = _psd_sqrt((sigma1 + sigma1.T) / 2)
    middle = root1 @ sigma2 @ root1
    middle = (middle + middle.T) / 2  # remove round-off asymmetry before eigvalsh
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(middle), 0.0, None)).sum()
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
    # The exact value is >= 0; round-off can leave a tiny negative number for identical inputs.
    return max(float(distance), 0.0)


@torch.no_grad()
def sifid(extractor: InceptionFeatures, real: torch.Tensor, fake: torch.Tensor) -> float:
    """SIFID of two single images [3, H, W] (0..1; sizes may differ) under one feature extractor."""
    device = next(extractor.parameters()).device
    feats_real = extractor(real.unsqueeze(0).to(device))[0]  # [C, h, w]
    feats_fake = extractor(fake.unsqueeze(0).to(device))[0]
    return frechet_distance(*feature_statistics(feats_real), *feature_statistics(feats_fake))
