"""SSIM against scikit-image, RMSE/PSNR, diversity and patch realism on known cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from models.metrics import (
    blurred_diversity,
    diversity,
    gaussian_blur,
    mean_pairwise_rmse,
    patch_realism,
    psnr,
    rmse,
    ssim,
)


def _images(seed: int, shape=(2, 3, 32, 40)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.avg_pool2d(torch.rand(shape, generator=g), 3, 1, 1)  # some structure
    return smooth * 2 - 1  # [-1, 1]


def test_ssim_matches_skimage_gaussian_ssim():
    a = _images(0)
    b = (a + 0.3 * _images(1)).clamp(-1, 1)
    ours = ssim(a, b)  # [-1, 1] images, mapped to [0, 1] inside
    for i in range(a.shape[0]):
        a01, b01 = (a[i] + 1) / 2, (b[i] + 1) / 2
        ref = structural_similarity(
            a01.permute(1, 2, 0).double().numpy(), b01.permute(1, 2, 0).double().numpy(),
            data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=2,
        )
        assert float(ours[i]) == pytest.approx(ref, abs=1e-4)


def test_ssim_is_range_convention_independent_and_ordered():
    a = _images(2)
    b = (a + 0.1 * _images(3)).clamp(-1, 1)
    c = (a + 0.8 * _images(4)).clamp(-1, 1)
    in_pm1 = ssim(a, b)  # default value_range (-1, 1)
    in_01 = ssim((a + 1) / 2, (b + 1) / 2, value_range=(0.0, 1.0))
    in_u8 = ssim((a + 1) * 127.5, (b + 1) * 127.5, value_range=(0.0, 255.0))
    torch.testing.assert_close(in_pm1, in_u8, atol=1e-5, rtol=0)
    torch.testing.assert_close(in_pm1, in_01, atol=1e-5, rtol=0)
    assert torch.allclose(ssim(a, a), torch.ones(2), atol=1e-6)
    assert (ssim(a, b) > ssim(a, c)).all()


def test_ssim_rejects_bad_shapes():
    with pytest.raises(ValueError):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))  # smaller than the window
    with pytest.raises(ValueError):
        ssim(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 17))


def test_rmse_and_psnr_known_values():
    a = torch.zeros(1, 3, 4, 4)
    b = torch.full((1, 3, 4, 4), 0.5)
    assert float(rmse(a, b)[0]) == pytest.approx(0.5)
    assert float(psnr(a, b)[0]) == pytest.approx(20 * np.log10(4.0))


def test_diversity_zero_for_copies_and_grows_with_spread():
    ref = _images(5, (1, 3, 24, 24))[0]
    copies = ref[None].repeat(4, 1, 1, 1)
    assert float(mean_pairwise_rmse(copies)) == pytest.approx(0.0, abs=1e-6)
    g = torch.Generator().manual_seed(0)
    small = copies + 0.02 * torch.randn(copies.shape, generator=g)
    large = copies + 0.2 * torch.randn(copies.shape, generator=g)
    assert 0 < float(diversity(small, ref)) < float(diversity(large, ref))
    # independent noise of std sigma: pairwise RMSE = sqrt(2) sigma
    assert float(mean_pairwise_rmse(large - copies)) == pytest.approx(0.2 * np.sqrt(2), rel=0.05)


def test_patch_realism_zero_for_the_image_and_large_for_noise():
    ref = _images(6, (1, 3, 24, 24))[0]
    g = torch.Generator().manual_seed(1)
    noise = torch.rand((2, 3, 24, 24), generator=g) * 2 - 1
    shifted = torch.roll(ref, shifts=3, dims=2)[None]  # same patches, moved: still 'real' away from the seam
    scores = patch_realism(torch.cat([ref[None], shifted, noise]), ref)
    assert float(scores[0]) == pytest.approx(0.0, abs=1e-3)
    assert float(scores[1]) < 0.5 * float(scores[2:].min())


def test_gaussian_blur_keeps_constants_and_mass_and_smooths_noise():
    flat = torch.full((1, 3, 20, 24), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, 2.0), flat)
    noise = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    blurred = gaussian_blur(noise, 2.0)
    assert blurred.std() < 0.2 * noise.std()  # per-pixel noise averages out (~1 / (2 sqrt(pi) sigma))
    assert float(blurred.mean()) == pytest.approx(float(noise.mean()), abs=0.02)
    torch.testing.assert_close(gaussian_blur(noise, 0), noise)
    with pytest.raises(ValueError):
        gaussian_blur(noise[..., :5, :5], 2.0)


def test_blurred_diversity_known_values_grain_vs_shapes():
    base = torch.zeros(1, 3, 64, 64)
    # Two samples differing by a constant 0.1 (in [0, 1] units) everywhere: blur changes nothing.
    pair = torch.cat([base, base + 0.1]) * 2 - 1  # [-1, 1] convention
    assert float(blurred_diversity(pair)) == pytest.approx(0.1, abs=1e-5)
    assert float(blurred_diversity((pair + 1) / 2, value_range=(0.0, 1.0))) == pytest.approx(0.1, abs=1e-5)
    # Three samples: mean over the three pairs of |a - b|.
    three = torch.cat([base, base + 0.1, base + 0.4])
    assert float(blurred_diversity(three, value_range=(0.0, 1.0))) == pytest.approx((0.1 + 0.4 + 0.3) / 3, abs=1e-5)
    # Pixel grain of the same raw size as a blob: the blur removes most of the grain, little of the blob.
    g = torch.Generator().manual_seed(1)
    grain = torch.stack([torch.rand(3, 64, 64, generator=g) * 0.2 for _ in range(4)])
    blob = torch.zeros(4, 3, 64, 64)
    for i in range(4):
        blob[i, :, 8 + 8 * i:24 + 8 * i, 20:40] = 0.5
    raw_grain, raw_blob = (blurred_diversity(x, value_range=(0.0, 1.0), sigma_px=0) for x in (grain, blob))
    assert float(blurred_diversity(grain, value_range=(0.0, 1.0))) < 0.25 * float(raw_grain)
    assert float(blurred_diversity(blob, value_range=(0.0, 1.0))) > 0.6 * float(raw_blob)
    assert float(blurred_diversity(torch.cat([base, base]))) == 0.0
    with pytest.raises(ValueError):
        blurred_diversity(base)
