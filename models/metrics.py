"""Image quality metrics in pure torch: SSIM, RMSE/PSNR, sample diversity and patch realism."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Images are [B, C, H, W] float tensors. The project's tensors live in [-1, 1], the default value_range
# everywhere here; pass value_range=(0.0, 1.0) for images in [0, 1] or (0.0, 255.0) for raw 8-bit values.
# SSIM's luminance term is not shift-invariant, so images are mapped to [0, 1] first: the same image gives
# the same SSIM whichever convention it arrives in, and the numbers match the usual [0, 1] SSIM.
Range = tuple[float, float]
DEFAULT_RANGE: Range = (-1.0, 1.0)


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.ndim != 4 or a.shape != b.shape:
        raise ValueError(f"expected two [B, C, H, W] tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def _gaussian_window(size_px: int, sigma_px: float, channels: int, device, dtype) -> torch.Tensor:
    coords = torch.arange(size_px, device=device, dtype=dtype) - (size_px - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma_px**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size_px, size_px).contiguous()  # [C, 1, k, k]


def ssim(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    value_range: Range = DEFAULT_RANGE,
    window_px: int = 11,
    sigma_px: float = 1.5,
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) per image: [B] in [-1, 1], 1 = identical.

    Gaussian window 11 px, sigma 1.5, K1=0.01, K2=0.03, statistics over 'valid' windows only, each channel
    separately then averaged: the same numbers as skimage's structural_similarity(gaussian_weights=True,
    use_sample_covariance=False, channel_axis=...) on the images mapped to [0, 1] with data_range=1.
    value_range: the images' (low, high), (-1, 1) by default, (0, 1) for [0, 1] images.
    """
    _check_pair(a, b)
    if min(a.shape[-2:]) < window_px:
        raise ValueError(f"images of {tuple(a.shape[-2:])} px are smaller than the {window_px} px SSIM window")
    lo, hi = value_range
    a, b = (a.float() - lo) / (hi - lo), (b.float() - lo) / (hi - lo)
    channels = a.shape[1]
    win = _gaussian_window(window_px, sigma_px, channels, a.device, a.dtype)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, win, groups=channels)

    c1, c2 = 0.01**2, 0.03**2  # K1, K2 for data_range 1
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map.mean(dim=(1, 2, 3))  # [B]


def rmse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Root mean squared difference per image: [B], in the images' own units."""
    _check_pair(a, b)
    return (a.float() - b.float()).pow(2).mean(dim=(1, 2, 3)).sqrt()


def psnr(a: torch.Tensor, b: torch.Tensor, *, value_range: Range = DEFAULT_RANGE) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image: [B] (inf for identical images)."""
    return 20 * torch.log10((value_range[1] - value_range[0]) / rmse(a, b))


def image_std(x: torch.Tensor) -> torch.Tensor:
    """An image's own variation: the std of all its values around its mean, [B]; the unit for diversity."""
    return x.float().flatten(1).std(dim=1, unbiased=False)


def mean_pairwise_rmse(samples: torch.Tensor) -> torch.Tensor:
    """Mean RMSE over all pairs i < j of M samples [M, C, H, W]: a scalar; 0 when all samples are copies."""
    m = samples.shape[0]
    if m < 2:
        raise ValueError("diversity needs at least two samples")
    flat = samples.float().flatten(1)
    dist = torch.cdist(flat, flat) / math.sqrt(flat.shape[1])  # [M, M] RMSE between samples
    iu = torch.triu_indices(m, m, offset=1)
    return dist[iu[0], iu[1]].mean()


def diversity(samples: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean pairwise RMSE between samples [M, C, H, W] relative to the reference image's [C, H, W] own std.

    0 means the samples are copies of each other; about 1.4 would be independent images with the
    reference's statistics (sqrt(2) std), so useful regenerations sit well between the two.
    """
    return mean_pairwise_rmse(samples) / image_std(reference[None])[0]


def patch_realism(samples: torch.Tensor, reference: torch.Tensor, *, patch_px: int = 7, stride_px: int = 2) -> torch.Tensor:
    """Mean distance from each sample patch to its nearest reference patch, relative to the reference std: [M].

    The single-image analogue of 'does it look like the training image': 0 when every patch of a sample
    also occurs in the reference (copies, and SinGAN's ideal), large for noise or blur.
    """
    if samples.ndim != 4 or reference.ndim != 3 or samples.shape[1:] != reference.shape:
        raise ValueError(f"expected samples [M, C, H, W] and reference [C, H, W] of one size, "
                         f"got {tuple(samples.shape)} and {tuple(reference.shape)}")
    ref_patches = F.unfold(reference[None].float(), patch_px, stride=stride_px)[0].T  # [P, C*k*k]
    out = []
    for sample in samples.float():
        patches = F.unfold(sample[None], patch_px, stride=stride_px)[0].T  # [P, C*k*k]
        nearest = torch.cdist(patches, ref_patches).min(dim=1).values  # [P]
        out.append(nearest.mean() / math.sqrt(patches.shape[1]))
    return torch.stack(out) / image_std(reference[None])[0]


def gaussian_blur(x: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable Gaussian blur of [B, C, H, W], window 2*ceil(3 sigma)+1, reflected borders; sigma 0 = copy."""
    if sigma_px < 0:
        raise ValueError(f"sigma_px must be >= 0, got {sigma_px}")
    if sigma_px == 0:
        return x.float()
    radius = math.ceil(3 * sigma_px)
    if radius >= min(x.shape[-2:]):
        raise ValueError(f"blur sigma {sigma_px} px is too wide for images of {tuple(x.shape[-2:])} px")
    coords = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    g = torch.exp(-(coords**2) / (2 * sigma_px**2))
    g = g / g.sum()
    c = x.shape[1]
    y = F.pad(x.float(), [radius] * 4, mode="reflect")
    y = F.conv2d(y, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)  # along width
    return F.conv2d(y, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)  # along height


def blurred_diversity(
    samples: torch.Tensor, *, value_range: Range = DEFAULT_RANGE, sigma_px: float | None = None
) -> torch.Tensor:
    """Mean absolute difference between samples [M, C, H, W] over all pairs i < j, in [0, 1] image units,
    after a Gaussian blur of sigma = short side / 32 px (2 px at 64 px) unless sigma_px is given: a scalar.

    The blur removes pixel grain (independent per-pixel noise averages out), so what is left is variation
    a person sees: shapes of eyes, nose, lips, brows and skin shading. sigma_px=0 gives the raw difference.
    """
    m = samples.shape[0]
    if samples.ndim != 4 or m < 2:
        raise ValueError(f"need [M >= 2, C, H, W] samples, got {tuple(samples.shape)}")
    lo, hi = value_range
    sigma = min(samples.shape[-2:]) / 32 if sigma_px is None else sigma_px
    flat = gaussian_blur((samples.float() - lo) / (hi - lo), sigma).flatten(1).double()  # [M, C*H*W]
    dist = torch.cdist(flat, flat, p=1) / flat.shape[1]  # [M, M] mean |difference| (float64: sums of 12k terms)
    iu = torch.triu_indices(m, m, offset=1)
    return dist[iu[0], iu[1]].mean().float()
