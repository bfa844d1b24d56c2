"""SIFID: Fréchet distance against closed forms, the Inception stem loader, and SIFID on seeded random weights."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from models.sifid import (
    FEATURE_CHANNELS,
    STEM,
    InceptionFeatures,
    InceptionWeightsError,
    SIFIDConfig,
    feature_side_px,
    feature_statistics,
    frechet_distance,
    min_image_side_px,
)
from tasks.errors import RejectError
from tasks.sifid import load_inception, sifid_command, sifid_images


def _random_spd(dim: int, gen: torch.Generator, rank: int | None = None) -> torch.Tensor:
    factor = torch.randn(dim, rank or dim, generator=gen, dtype=torch.float64)
    return factor @ factor.T / dim


def _orthogonal(dim: int, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    return q


def test_frechet_matches_closed_form_for_diagonal_covariances():
    gen = torch.Generator().manual_seed(0)
    mu1, mu2 = torch.randn(6, generator=gen, dtype=torch.float64), torch.randn(6, generator=gen, dtype=torch.float64)
    s1 = torch.rand(6, generator=gen, dtype=torch.float64) + 0.1
    s2 = torch.rand(6, generator=gen, dtype=torch.float64) + 0.1
    by_hand = float(((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * (s1 * s2).sqrt()).sum())
    assert frechet_distance(mu1, torch.diag(s1), mu2, torch.diag(s2)) == pytest.approx(by_hand, rel=1e-10)
    # One dimension by hand: (1 - 3)^2 + 4 + 1 - 2 * sqrt(4 * 1) = 5.
    assert frechet_distance(torch.tensor([1.0]), torch.tensor([[4.0]]), torch.tensor([3.0]),
                            torch.tensor([[1.0]])) == pytest.approx(5.0, rel=1e-12)


def test_frechet_matches_closed_form_for_commuting_full_covariances():
    # S1 = Q diag(a) Q^T and S2 = Q diag(b) Q^T commute, so Tr((S1 S2)^1/2) = sum sqrt(a b).
    gen = torch.Generator().manual_seed(1)
    q = _orthogonal(8, gen)
    a, b = torch.rand(8, generator=gen, dtype=torch.float64) * 3, torch.rand(8, generator=gen, dtype=torch.float64)
    s1, s2 = q @ torch.diag(a) @ q.T, q @ torch.diag(b) @ q.T
    mu = torch.zeros(8, dtype=torch.float64)
    by_hand = float((a + b - 2 * (a * b).sqrt()).sum())
    assert frechet_distance(mu, s1, mu, s2) == pytest.approx(by_hand, rel=1e-9)


def test_frechet_is_zero_for_identical_and_symmetric_otherwise():
    gen = torch.Generator().manual_seed(2)
    mu1, mu2 = torch.randn(10, generator=gen), torch.randn(10, generator=gen)
    s1, s2 = _random_spd(10, gen), _random_spd(10, gen)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    d12, d21 = frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1)
    assert d12 > 0.1
    assert d12 == pytest.approx(d21, rel=1e-9)


def test_frechet_is_stable_for_singular_covariances():
    # Rank 3 covariances in 12 dimensions: what few feature locations and many channels give.
    gen = torch.Generator().manual_seed(3)
    s1, s2 = _random_spd(12, gen, rank=3), _random_spd(12, gen, rank=3)
    mu = torch.zeros(12)
    assert frechet_distance(mu, s1, mu, s1) == pytest.approx(0.0, abs=1e-9)
    d = frechet_distance(mu, s1, mu, s2)
    assert np.isfinite(d) and d > 0
    # A zero-variance dimension: diag(0, 4) vs diag(1, 1) -> (0 + 1 - 0) + (4 + 1 - 4) = 2.
    assert frechet_distance(torch.zeros(2), torch.diag(torch.tensor([0.0, 4.0])), torch.zeros(2),
                            torch.eye(2)) == pytest.approx(2.0, rel=1e-9)


def test_frechet_refuses_mismatched_or_non_covariance_inputs():
    eye = torch.eye(3)
    with pytest.raises(ValueError, match="mu"):
        frechet_distance(torch.zeros(3), eye, torch.zeros(4), torch.eye(4))
    with pytest.raises(ValueError, match="not symmetric"):
        frechet_distance(torch.zeros(3), torch.triu(torch.ones(3, 3)), torch.zeros(3), eye)
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(torch.tensor([0.0, float("nan"), 0.0]), eye, torch.zeros(3), eye)


def test_feature_statistics_match_numpy():
    gen = torch.Generator().manual_seed(4)
    features = torch.randn(5, 4, 6, generator=gen)  # [C, h, w]
    mu, sigma = feature_statistics(features)
    samples = features.numpy().reshape(5, -1).T  # [h*w, C]
    np.testing.assert_allclose(mu.numpy(), samples.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(sigma.numpy(), np.cov(samples, rowvar=False), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(torch.zeros(5, 1, 1))


# --- the Inception stem on seeded random weights ------------------------------------------------------


def _random_inception_state_dict(seed: int, layout: str = "torchvision") -> dict[str, torch.Tensor]:
    """Every key of a real file (no download): the stem SIFID reads gets seeded He-scaled weights of the
    real shapes; the later layers, which the loader never reads, hold 1-element placeholders to keep it small."""
    import torchvision

    with torch.device("meta"):
        model = torchvision.models.inception_v3(weights=None, aux_logits=(layout == "torchvision"),
                                                init_weights=False, num_classes=1000 if layout == "torchvision" else 1008)
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, meta in model.state_dict().items():
        leaf = key.rsplit(".", 1)[-1]
        if not key.startswith(STEM):
            state[key] = torch.zeros(1, dtype=meta.dtype)
        elif leaf == "num_batches_tracked":
            if layout == "torchvision":  # the FID-Inception file was converted from TF and has no counters
                state[key] = torch.zeros((), dtype=torch.long)
        elif leaf == "running_var":
            state[key] = 0.5 + torch.rand(meta.shape, generator=gen)
        elif leaf == "running_mean" or (leaf == "bias" and meta.ndim == 1):
            state[key] = 0.1 * torch.randn(meta.shape, generator=gen)
        elif meta.ndim == 1:  # BatchNorm scale
            state[key] = 1.0 + 0.1 * torch.randn(meta.shape, generator=gen)
        else:
            fan_in = int(np.prod(meta.shape[1:]))
            state[key] = torch.randn(meta.shape, generator=gen) * (2.0 / fan_in) ** 0.5
    return state


@pytest.fixture(scope="module")
def weights_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "inception_v3_random.pth"
    torch.save(_random_inception_state_dict(seed=0), path)
    return path


def _face(seed: int = 0, side_px: int = 64) -> np.ndarray:
    """A smooth structured test image: gradients plus a few filled shapes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side_px, 0:side_px] / side_px
    rgb = np.stack([x, y, 0.5 * (x + y)], axis=-1) * 200
    image = np.ascontiguousarray(rgb.astype(np.uint8))
    for _ in range(4):
        centre = tuple(int(c) for c in rng.integers(8, side_px - 8, 2))
        cv2.circle(image, centre, int(rng.integers(4, 12)), tuple(int(c) for c in rng.integers(0, 256, 3)), -1)
    return image


def _noised(rgb: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, sigma, rgb.shape)
    return np.clip(rgb.astype(np.float64) + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("layer", sorted(FEATURE_CHANNELS))
def test_sifid_is_zero_for_identical_images_and_grows_with_noise(weights_path, layer):
    extractor = load_inception(weights_path, "cpu", SIFIDConfig(feature_layer=layer))
    real = _face(0)
    assert sifid_images(real, real.copy(), extractor) == pytest.approx(0.0, abs=1e-6)
    slight = sifid_images(real, _noised(real, 4.0, seed=1), extractor)
    heavy = sifid_images(real, _noised(real, 40.0, seed=1), extractor)
    assert 0 < slight < heavy
    # Symmetric in its two images.
    assert sifid_images(_noised(real, 40.0, seed=1), real, extractor) == pytest.approx(heavy, rel=1e-6)


def test_feature_map_shape_follows_the_layer_geometry(weights_path):
    for layer, channels in FEATURE_CHANNELS.items():
        extractor = load_inception(weights_path, "cpu", SIFIDConfig(feature_layer=layer))
        features = extractor(torch.rand(2, 3, 64, 48))
        assert features.shape == (2, channels, feature_side_px(64, extractor.config), feature_side_px(48, extractor.config))
        smallest = min_image_side_px(extractor.config)
        assert extractor(torch.rand(1, 3, smallest, smallest)).shape[-2:] == (2, 2)
        assert feature_side_px(smallest - 1, extractor.config) < 2


def test_images_too_small_or_malformed_are_rejected(weights_path):
    extractor = load_inception(weights_path, "cpu")
    side = min_image_side_px(extractor.config)
    tiny = np.zeros((side - 1, side - 1, 3), np.uint8)
    with pytest.raises(RejectError) as info:
        sifid_images(tiny, tiny, extractor)
    assert info.value.reason == "image_too_small"
    with pytest.raises(RejectError) as info:
        sifid_images(_face(0).astype(np.float32), _face(0), extractor)
    assert info.value.reason == "sifid_bad_image"


def test_loader_accepts_fid_inception_layout_and_data_parallel_prefix(tmp_path):
    # pytorch-fid's layout (1008 classes, no AuxLogits, no BN counters) shares the stem's names with
    # torchvision's, so the same stem tensors must give the same features.
    torchvision_state = _random_inception_state_dict(seed=5)
    fid_state = _random_inception_state_dict(seed=5, layout="fid")
    assert "fc.weight" in fid_state and not any(k.startswith("AuxLogits") for k in fid_state)
    wrapped = {"module." + k: v for k, v in fid_state.items()}
    torch.save(torchvision_state, tmp_path / "tv.pth")
    torch.save({"state_dict": wrapped}, tmp_path / "fid.pth")
    images = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    a = load_inception(tmp_path / "tv.pth", "cpu")(images)
    b = load_inception(tmp_path / "fid.pth", "cpu")(images)
    assert torch.equal(a, b)


def test_loader_refuses_wrong_keys_with_a_clear_message(tmp_path):
    import torchvision

    resnet = torchvision.models.resnet18(weights=None, num_classes=7)
    torch.save(resnet.state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(InceptionWeightsError, match=r"not Inception-v3 weights: \d+ missing .*Conv2d_1a_3x3\.conv\.weight"):
        load_inception(tmp_path / "resnet.pth", "cpu")
    state = _random_inception_state_dict(seed=0)
    state["Conv2d_2a_3x3.conv.weight"] = torch.zeros(32, 32, 5, 5)
    torch.save(state, tmp_path / "reshaped.pth")
    with pytest.raises(InceptionWeightsError, match=r"wrong shape .*Conv2d_2a_3x3\.conv\.weight"):
        load_inception(tmp_path / "reshaped.pth", "cpu")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(InceptionWeightsError, match="weights-only torch file"):
        load_inception(tmp_path / "text.pth", "cpu")
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_inception(tmp_path / "absent.pth", "cpu")


def test_unloaded_extractor_refuses_to_run():
    with pytest.raises(RuntimeError, match="no weights yet"):
        InceptionFeatures()(torch.zeros(1, 3, 64, 64))


def test_loading_leaves_global_rng_untouched(weights_path):
    before = torch.get_rng_state()
    load_inception(weights_path, "cpu")
    assert torch.equal(before, torch.get_rng_state())


def test_sifid_command_reads_files(tmp_path, weights_path):
    real, fake = _face(0, side_px=72), _noised(_face(0, side_px=72), 20.0, seed=3)
    for name, rgb in (("real.png", real), ("fake.png", fake)):
        cv2.imwrite(str(tmp_path / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    value = sifid_command(tmp_path / "real.png", tmp_path / "fake.png", weights_path, device="cpu")
    assert value == pytest.approx(sifid_images(real, fake, load_inception(weights_path, "cpu")), rel=1e-9)
    assert value > 0
