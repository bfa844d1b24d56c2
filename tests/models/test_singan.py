"""SinGAN: pyramid sizes, block shapes, noise amplitudes, injection path, bank = alone, save/load, seeds."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.checkpoints import config_from_dict, config_to_dict
from models.singan import (
    PRESETS,
    Critic,
    Generator,
    SinGANConfig,
    bank_from_state,
    bank_state,
    default_start_scale,
    preset,
    pyramid_sizes,
    regenerate,
    scale_channels,
    train_bank,
)

# Small enough for seconds on a CPU: 20 px images, 3 scales (16, 18, 20 px) of 3-block nets with 4 and then
# 8 channels, 2 iterations of 2 critic + 2 generator steps.
TEST_CONFIG = dataclasses.replace(
    preset("tiny"), min_size_px=16, iters_per_scale=2, d_steps=2, g_steps=2, base_channels=4,
    channels_double_every=2, max_channels=8,
)
SEEDS = [11, 22, 33]


def _images(k: int, size_px: int = 20, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = F.avg_pool2d(torch.rand(k, 3, size_px, size_px, generator=g), 3, 1, 1)  # some spatial structure
    return x * 2 - 1


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """These nets are small: with 2 threads on a busy 2-core machine every op waits for the other thread's
    turn (measured 10-150x slower), so the SinGAN tests run single-threaded and restore the setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bank3() -> tuple:
    """A K=3 bank in float64, so that bank-vs-alone differences are rounding, not training noise."""
    images = _images(3)
    return train_bank(images, TEST_CONFIG, SEEDS, dtype=torch.float64), images


# --- configuration and pyramid ---------------------------------------------------------------------------


def test_official_preset_is_the_published_defaults():
    cfg = preset("official")
    assert (cfg.scale_factor, cfg.min_size_px, cfg.max_size_px) == (0.75, 25, 250)
    assert (cfg.num_blocks, cfg.kernel_px, cfg.base_channels, cfg.channels_double_every, cfg.max_channels) == (5, 3, 32, 4, 128)
    assert (cfg.lrelu_slope, cfg.gp_weight, cfg.rec_weight, cfg.noise_amp_factor) == (0.2, 0.1, 10.0, 0.1)
    assert (cfg.lr_g, cfg.lr_d, cfg.adam_betas, cfg.d_steps, cfg.g_steps) == (5e-4, 5e-4, (0.5, 0.999), 3, 3)
    assert cfg.iters_per_scale == 2000 and round(cfg.lr_decay_at * cfg.iters_per_scale) == 1600 and cfg.lr_decay_gamma == 0.1
    assert cfg.skip_coarse_scales == 0 and not cfg.bf16_autocast and not cfg.channels_last


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name):
    cfg = preset(name)
    assert config_from_dict(SinGANConfig, config_to_dict(cfg)) == cfg


def test_unknown_preset_and_bad_configs_are_refused():
    with pytest.raises(KeyError):
        preset("nope")
    with pytest.raises(ValueError):
        SinGANConfig(scale_factor=1.2)
    with pytest.raises(ValueError):
        SinGANConfig(min_size_px=10)  # 5 valid 3x3 convs eat 10 px: the critic would have no output


@pytest.mark.parametrize(
    "height, width, num_scales, coarsest, finest",
    [
        (128, 128, 8, (25, 25), (128, 128)),  # the 8 scales for a 128 px face
        (64, 64, 6, (25, 25), (64, 64)),
        (48, 48, 5, (25, 25), (48, 48)),
        (32, 32, 3, (25, 25), (32, 32)),
        (100, 80, 7, (32, 25), (100, 80)),
        (600, 512, 9, (30, 25), (250, 214)),  # longer side cut to max_size_px, as the official code does
    ],
)
def test_pyramid_sizes_follow_the_official_rule(height, width, num_scales, coarsest, finest):
    sizes = pyramid_sizes(height, width, preset("official"))
    assert len(sizes) == num_scales and sizes[0] == coarsest and sizes[-1] == finest
    ratios = [sizes[i][0] / sizes[i + 1][0] for i in range(len(sizes) - 1)]
    assert all(a < b for a, b in zip(sizes, sizes[1:]))  # strictly growing, coarsest first
    assert all(0.74 < r < 0.95 for r in ratios)  # re-fitted factor: never coarser steps than the nominal 0.75


def test_pyramid_refuses_images_at_or_below_the_minimum_size():
    with pytest.raises(ValueError, match="short side"):
        pyramid_sizes(25, 40, preset("official"))


def test_channels_double_every_four_scales_up_to_the_cap():
    cfg = preset("official")
    assert [scale_channels(i, cfg) for i in range(8)] == [32] * 4 + [64] * 4
    assert scale_channels(20, cfg) == 128
    assert {scale_channels(i, preset("fast")) for i in range(8)} == {32}


# --- networks ----------------------------------------------------------------------------------------------


def _plain_stack(grouped: nn.Module, member: int, members: int) -> nn.Sequential:
    """The published single-model layout (plain Conv2d / BatchNorm2d / LeakyReLU) holding one member's weights."""
    layers = []
    for m in grouped.net:
        if isinstance(m, nn.Conv2d):
            w = m.weight.view(members, -1, *m.weight.shape[1:])[member]
            conv = nn.Conv2d(w.shape[1], w.shape[0], w.shape[-1])
            conv.weight.data.copy_(w)
            conv.bias.data.copy_(m.bias.view(members, -1)[member])
            layers.append(conv)
        elif isinstance(m, nn.BatchNorm2d):
            bn = nn.BatchNorm2d(m.num_features // members)
            bn.weight.data.copy_(m.weight.view(members, -1)[member])
            bn.bias.data.copy_(m.bias.view(members, -1)[member])
            layers.append(bn)
        else:
            layers.append(m)
    return nn.Sequential(*layers)


def test_generator_and_critic_shapes_and_member_independence():
    cfg, k, width = preset("official"), 3, 32
    gens = [torch.Generator().manual_seed(i) for i in range(k)]
    gen = Generator(k, width, cfg).to_empty(device="cpu")
    critic = Critic(k, width, cfg).to_empty(device="cpu")
    gen.init_weights(gens)
    critic.init_weights(gens)
    convs = [m for m in gen.net if isinstance(m, nn.Conv2d)]
    assert len(convs) == 5 and all(c.kernel_size == (3, 3) and c.groups == k for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in critic.net) == 4 and isinstance(gen.net[-1], nn.Tanh)
    z, prev = torch.randn(2, 3 * k, 25, 25), torch.rand(2, 3 * k, 25, 25) * 2 - 1
    out = gen(z, prev, torch.full((k,), 0.1))
    assert out.shape == prev.shape  # residual: padded input, valid convs, + prev
    assert critic(prev).shape == (2, k, 15, 15)  # patch scores, 5 valid 3x3 convs
    # each member is exactly the published single-model net, and changing member 0's input leaves 1, 2 alone
    for member in range(k):
        plain = _plain_stack(gen, member, k)
        x = F.pad(0.1 * z[:, 3 * member : 3 * member + 3] + prev[:, 3 * member : 3 * member + 3], [5] * 4)
        expected = prev[:, 3 * member : 3 * member + 3] + plain(x)
        torch.testing.assert_close(out[:, 3 * member : 3 * member + 3], expected, atol=1e-5, rtol=1e-5)
    z2 = z.clone()
    z2[:, :3] += 1
    out2 = gen(z2, prev, torch.full((k,), 0.1))
    assert not torch.allclose(out2[:, :3], out[:, :3]) and torch.equal(out2[:, 3:], out[:, 3:])


def test_weight_init_matches_the_official_statistics():
    cfg = preset("official")
    gen = Generator(1, 64, cfg).to_empty(device="cpu")
    gen.init_weights([torch.Generator().manual_seed(0)])
    w = torch.cat([m.weight.detach().flatten() for m in gen.net if isinstance(m, nn.Conv2d)])
    bn = torch.cat([m.weight.detach() for m in gen.net if isinstance(m, nn.BatchNorm2d)])
    assert abs(float(w.std()) - 0.02) < 0.002 and abs(float(w.mean())) < 0.002
    assert abs(float(bn.mean()) - 1.0) < 0.01 and abs(float(bn.std()) - 0.02) < 0.01


# --- training: noise amplitudes, bank = alone ----------------------------------------------------------------


def test_noise_amplitudes_follow_the_coarser_reconstruction(bank3):
    bank, _ = bank3
    pyramid = [p.view(3, 3, *p.shape[-2:]) for p in bank.image_pyramid()]  # [K, 3, h, w] per scale
    assert torch.equal(bank.noise_amps[0], torch.ones(3, dtype=torch.float64))  # the coarsest scale is pure noise
    with torch.no_grad():  # walk the fixed-noise path by hand: rec noise at the coarsest, zeros after
        prev = torch.zeros(1, 9, *bank.sizes[0])
        for i in range(1, len(bank.sizes)):
            z = bank.rec_noise.reshape(1, 9, *bank.sizes[0]) if i == 1 else torch.zeros_like(prev)
            out = bank.generator(i - 1)(z, prev, bank.noise_amps[i - 1])
            prev = F.interpolate(out, size=bank.sizes[i], mode="bicubic", align_corners=False).clamp(-1, 1)
            expected = 0.1 * (pyramid[i] - prev.view(3, 3, *bank.sizes[i])).pow(2).mean(dim=(1, 2, 3)).sqrt()
            torch.testing.assert_close(bank.noise_amps[i], expected, atol=1e-5, rtol=1e-4)
    # the paper's z*: one grey (single-channel) fixed noise map per member, at the coarsest scale
    assert torch.equal(bank.rec_noise[:, 0], bank.rec_noise[:, 1]) and bank.rec_noise.std() > 0.5


def test_skipped_coarse_scales_start_from_the_upsampled_image():
    cfg = dataclasses.replace(TEST_CONFIG, skip_coarse_scales=2, skip_noise_amp_factor=0.5)
    images = _images(1)
    bank = train_bank(images, cfg, [5])
    assert bank.first_index == 2 and len(bank.generators) == len(bank.sizes) - 2
    assert bank.max_start_scale == bank.coarsest_scale - 2
    pyr = bank.image_pyramid()
    up = F.interpolate(pyr[1], size=bank.sizes[2], mode="bicubic", align_corners=False).clamp(-1, 1)
    expected = 0.5 * (pyr[2] - up).pow(2).mean().sqrt()  # skip_noise_amp_factor at the first trained scale
    torch.testing.assert_close(bank.noise_amps[2, 0], expected, atol=1e-6, rtol=1e-5)
    assert not bank.noise_amps[:2].any() and torch.equal(bank.rec_noise, torch.zeros_like(bank.rec_noise))
    with pytest.raises(ValueError, match="start_scale"):
        regenerate(bank, 0, images[0], bank.coarsest_scale, 2, [0, 1])  # its coarsest scales were never trained
    assert regenerate(bank, 0, images[0], bank.max_start_scale, 2, [0, 1]).shape == (2, 3, 20, 20)


def test_a_model_trained_in_a_bank_is_the_model_trained_alone(bank3):
    """The K=3 bank vs three K=1 trainings with the same seeds and images: every parameter, buffer, noise map
    and amplitude agrees. Float64, and a tolerance of 1e-6 because a conv bias in front of BatchNorm has an
    exactly-zero true gradient, so Adam turns the rounding differences of grouped vs plain convs into ~1e-8 steps."""
    bank, images = bank3
    for k in range(3):
        alone = train_bank(images[k : k + 1], TEST_CONFIG, [SEEDS[k]], dtype=torch.float64)
        member = bank.member(k).state_dict()
        assert member.keys() == alone.state_dict().keys()
        for key, value in alone.state_dict().items():
            torch.testing.assert_close(member[key], value, atol=1e-6, rtol=1e-6, msg=key)
    # the members really did train differently from each other
    w = bank.generator(len(bank.sizes) - 1).net[0].weight.view(3, -1)
    assert not torch.allclose(w[0], w[1])


def test_training_input_is_validated():
    with pytest.raises(ValueError, match="seeds"):
        train_bank(_images(2), TEST_CONFIG, [1])
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        train_bank(_images(1) * 3, TEST_CONFIG, [1])
    with pytest.raises(ValueError, match="K, 3, H, W"):
        train_bank(torch.zeros(3, 24, 24), TEST_CONFIG, [1])


# --- regeneration -------------------------------------------------------------------------------------------


def test_injection_runs_the_generators_from_the_shrunk_and_regrown_image(bank3):
    bank, images = bank3
    single = bank.member(1)
    s = default_start_scale(bank)
    assert s == bank.coarsest_scale - 1  # N-1 by default (issue 14: N-2 gave near-copies)
    first = bank.coarsest_scale - s
    seeds = [4, 5]
    # by hand: image -> size of scale s+1 -> size of scale s, then scale by scale with per-sample noise
    img = images[1][None].double()
    small = F.interpolate(img, size=bank.sizes[first - 1], mode="bicubic", align_corners=False, antialias=True).clamp(-1, 1)
    prev = F.interpolate(small, size=bank.sizes[first], mode="bicubic", align_corners=False).clamp(-1, 1).expand(2, -1, -1, -1)
    gens = [torch.Generator().manual_seed(x) for x in seeds]
    with torch.no_grad():
        for i in range(first, len(bank.sizes)):
            z = torch.cat([torch.randn((1, 3, *bank.sizes[i]), generator=g, dtype=torch.float64) for g in gens])
            out = single.generator(i)(z, prev, single.noise_amps[i])
            if i + 1 < len(bank.sizes):
                prev = F.interpolate(out, size=bank.sizes[i + 1], mode="bicubic", align_corners=False).clamp(-1, 1)
    got = regenerate(bank, 1, images[1], s, 2, seeds)
    torch.testing.assert_close(got, out.clamp(-1, 1), atol=1e-5, rtol=1e-5)
    # the injected image matters at s < N and is not used at N
    other = regenerate(bank, 1, -images[1], s, 2, seeds)
    assert (other - got).abs().mean() > 0.05
    n = bank.coarsest_scale
    torch.testing.assert_close(regenerate(bank, 1, images[1], n, 2, seeds), regenerate(bank, 1, None, n, 2, seeds))


def test_regeneration_is_seeded_per_sample(bank3):
    bank, images = bank3
    s = default_start_scale(bank)
    a = regenerate(bank, 0, images[0], s, 3, [10, 11, 12])
    assert torch.equal(a, regenerate(bank, 0, images[0], s, 3, [10, 11, 12]))  # same seeds, same samples
    torch.testing.assert_close(regenerate(bank, 0, images[0], s, 1, [11])[0], a[1], atol=1e-6, rtol=1e-5)  # not batch-dependent
    b = regenerate(bank, 0, images[0], s, 1, [99])
    assert (b[0] - a[0]).abs().max() > 1e-4  # another seed, another sample
    assert a.min() >= -1 and a.max() <= 1


def test_regenerate_checks_its_arguments(bank3):
    bank, images = bank3
    with pytest.raises(ValueError, match="one seed per sample"):
        regenerate(bank, 0, images[0], 0, 2, [1])
    with pytest.raises(ValueError, match="start_scale"):
        regenerate(bank, 0, images[0], bank.coarsest_scale + 1, 1, [1])
    with pytest.raises(ValueError, match="image must be"):
        regenerate(bank, 0, images[0][:, :16], 1, 1, [1])
    with pytest.raises(IndexError):
        regenerate(bank, 3, images[0], 1, 1, [1])


def test_state_round_trip_gives_the_same_samples(bank3):
    bank, images = bank3
    tensors, meta = bank_state(bank)
    loaded = bank_from_state(bank.config, {k: v.clone() for k, v in tensors.items()}, meta)
    s = default_start_scale(bank)
    for member in range(3):
        torch.testing.assert_close(regenerate(loaded, member, images[member], s, 2, [1, 2]),
                                   regenerate(bank, member, images[member], s, 2, [1, 2]))
    torch.testing.assert_close(loaded.reconstruct(), bank.reconstruct())
    assert loaded.train_log == bank.train_log
    meta_bad = dict(meta, num_trained=meta["num_trained"] - 1)
    with pytest.raises(RuntimeError):  # strict loading: an unexpected scale's tensors are refused
        bank_from_state(bank.config, tensors, meta_bad)


# --- face prior and warm starts (issue 14) -------------------------------------------------------------------

PRIOR_CONFIG = dataclasses.replace(TEST_CONFIG, skip_coarse_scales=1, skip_noise_amp_factor=2.0)


@pytest.fixture(scope="module")
def prior6():
    """A prior on six faces, three per iteration, float64 (so warm-started bank vs alone is rounding only)."""
    from models.singan import train_prior

    faces = _images(6, seed=5)
    return train_prior(faces, PRIOR_CONFIG, seed=9, batch_size=3, dtype=torch.float64), faces


def test_a_prior_learns_every_trained_scale_from_many_faces(prior6):
    from models.singan import SinGANPrior

    prior, faces = prior6
    assert isinstance(prior, SinGANPrior) and prior.num_faces == 6 and prior.num_members == 1
    assert prior.first_index == 1 and len(prior.generators) == len(prior.critics) == len(prior.sizes) - 1
    assert [log["iterations"] for log in prior.train_log] == [PRIOR_CONFIG.iters_per_scale] * 2
    # the noise amplitude of the first trained scale: factor x RMS over all six faces of (face - injected face)
    pyr = [F.interpolate(faces.double(), size=s, mode="bicubic", align_corners=False, antialias=True).clamp(-1, 1)
           if tuple(s) != tuple(faces.shape[-2:]) else faces.double() for s in prior.sizes]
    up = F.interpolate(pyr[0], size=prior.sizes[1], mode="bicubic", align_corners=False).clamp(-1, 1)
    torch.testing.assert_close(prior.noise_amps[1, 0], 2.0 * (pyr[1] - up).pow(2).mean().sqrt(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(prior.images[0], faces.double().mean(0))
    # seeded: the same seed retrains the same prior, another seed another one
    from models.singan import train_prior

    again = train_prior(faces, PRIOR_CONFIG, seed=9, batch_size=3, dtype=torch.float64)
    other = train_prior(faces, PRIOR_CONFIG, seed=10, batch_size=3, dtype=torch.float64)
    key = "generators.1.net.0.weight"
    assert torch.equal(again.state_dict()[key], prior.state_dict()[key])
    assert not torch.allclose(other.state_dict()[key], prior.state_dict()[key])


def test_a_warm_start_begins_at_the_prior_and_measures_each_members_own_noise(prior6):
    prior, _ = prior6
    images = _images(2, seed=8).double()
    bank = train_bank(images, dataclasses.replace(PRIOR_CONFIG, iters_per_scale=0), [1, 2], dtype=torch.float64,
                      prior=prior)
    for index in range(prior.first_index, len(prior.sizes)):
        for key, value in prior.generator(index).state_dict().items():
            packed = bank.generator(index).state_dict()[key]
            expected = value if value.ndim == 0 else torch.cat([value, value])
            torch.testing.assert_close(packed, expected, msg=key)
    assert bank.train_log[0]["warm_start"] and bank.train_log[0]["iterations"] == 0
    # amplitudes are the bank's own (measured on its images), not the prior's
    assert not torch.allclose(bank.noise_amps[1], prior.noise_amps[1].expand(2))
    assert bank.noise_amps[1, 0] != bank.noise_amps[1, 1]


def test_a_warm_started_bank_is_its_members_warm_started_alone(prior6):
    prior, _ = prior6
    images = _images(2, seed=8).double()
    bank = train_bank(images, PRIOR_CONFIG, [1, 2], dtype=torch.float64, prior=prior)
    for k in range(2):
        alone = train_bank(images[k:k + 1], PRIOR_CONFIG, [k + 1], dtype=torch.float64, prior=prior)
        member = bank.member(k).state_dict()
        for key, value in alone.state_dict().items():
            torch.testing.assert_close(member[key], value, atol=1e-6, rtol=1e-6, msg=key)
    # fine-tuning moved the weights away from the prior's
    key = "generators.1.net.0.weight"
    assert not torch.allclose(bank.member(0).state_dict()[key], prior.state_dict()[key])


def test_priors_that_do_not_fit_are_refused(prior6):
    from models.singan import train_prior

    prior, faces = prior6
    images = _images(1).double()
    with pytest.raises(ValueError, match="num_blocks"):
        train_bank(images, dataclasses.replace(PRIOR_CONFIG, num_blocks=4), [1], dtype=torch.float64, prior=prior)
    with pytest.raises(ValueError, match="pyramid"):
        train_bank(_images(1, size_px=24).double(), PRIOR_CONFIG, [1], dtype=torch.float64, prior=prior)
    with pytest.raises(ValueError, match="needs a prior"):
        train_bank(images, dataclasses.replace(PRIOR_CONFIG, iters_per_scale=0), [1])
    with pytest.raises(ValueError, match="skip_coarse_scales >= 1"):
        train_prior(faces, TEST_CONFIG, seed=1)


def test_prior_state_round_trip_keeps_its_critics(prior6):
    from models.singan import SinGANPrior

    prior, faces = prior6
    tensors, meta = bank_state(prior)
    assert any(k.startswith("critics.") for k in tensors) and meta["num_faces"] == 6
    loaded = bank_from_state(prior.config, {k: v.clone() for k, v in tensors.items()}, meta)
    assert isinstance(loaded, SinGANPrior) and loaded.num_faces == 6
    for key, value in prior.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, msg=key)
    s = prior.max_start_scale
    torch.testing.assert_close(regenerate(loaded, 0, faces[0].double(), s, 2, [1, 2]),
                               regenerate(prior, 0, faces[0].double(), s, 2, [1, 2]))


# --- residual sampling ---------------------------------------------------------------------------------------


def test_residual_samples_are_the_image_plus_the_variation_the_noise_draws(bank3):
    bank, images = bank3
    s = default_start_scale(bank)
    other = images[2]  # injected into member 0, which was trained on images[0]
    plain = regenerate(bank, 0, other, s, 3, [1, 2, 3], 2.0)
    res = regenerate(bank, 0, other, s, 3, [1, 2, 3], 2.0, residual=True)
    # the same noise draws: samples differ from each other exactly as the plain ones do (away from clipping)
    inside = (plain.abs() < 0.99).all(0) & (res.abs() < 0.99).all(0)
    torch.testing.assert_close((res[0] - res[1])[inside], (plain[0] - plain[1])[inside])
    # and they sit on the injected image, not on what member 0 learned to paint
    assert (res - other).abs().mean() < 0.5 * (plain - other).abs().mean()
    assert not torch.equal(res[0], res[1])
    with pytest.raises(ValueError, match="residual"):
        regenerate(bank, 0, other, bank.coarsest_scale, 1, [1], residual=True)
