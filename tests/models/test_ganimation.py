"""GANimation networks: shapes, compositing, published size, norm layouts, seeded init."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from models.ganimation import (
    Critic,
    GANimationConfig,
    Generator,
    _resize_conv,
    compose,
    count_parameters,
    init_weights,
)

TINY = dict(image_size_px=16, conv_dim=8, repeat_num=2, critic_conv_dim=8, critic_layers=2)


def _inputs(batch: int = 3, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=g) * 2 - 1, torch.rand(batch, 17, generator=g)


@pytest.mark.parametrize("layout", ["official", "replicate"])
@pytest.mark.parametrize("upsample", ["transposed", "resize_conv"])
def test_generator_shapes_and_ranges(layout, upsample):
    torch.manual_seed(0)
    gen = Generator(GANimationConfig(**TINY, norm_layout=layout, upsample=upsample))
    images, aus = _inputs()
    out = gen(images, aus)
    assert out.image.shape == (3, 3, 16, 16)
    assert out.attention.shape == (3, 1, 16, 16)
    assert out.colour.shape == (3, 3, 16, 16)
    assert 0 <= out.attention.min() and out.attention.max() <= 1
    assert -1 <= out.colour.min() and out.colour.max() <= 1
    # The output is exactly the published compositing of input, attention and colour.
    torch.testing.assert_close(out.image, out.attention * images + (1 - out.attention) * out.colour,
                               rtol=0, atol=0)


def test_compose_matches_hand_computation():
    images = torch.tensor([[[[0.5, -1.0]]]]).expand(1, 3, 1, 2)
    colour = torch.tensor([[[[-0.5, 1.0]]]]).expand(1, 3, 1, 2)
    attention = torch.tensor([[[[1.0, 0.25]]]])
    # Pixel 0: A = 1 keeps the input (0.5). Pixel 1: 0.25 * -1 + 0.75 * 1 = 0.5.
    out = compose(images, attention, colour)
    assert torch.equal(out, torch.tensor([[[[0.5, 0.5]]]]).expand(1, 3, 1, 2))


def test_aus_condition_the_output():
    torch.manual_seed(0)
    gen = Generator(GANimationConfig(**TINY))
    images, aus = _inputs()
    assert not torch.allclose(gen(images, aus).image, gen(images, 1 - aus).image)


def test_au_film_starts_as_the_published_generator_and_conditions_every_block():
    plain = Generator(GANimationConfig(**TINY))
    film = Generator(GANimationConfig(**TINY, au_film=True))
    init_weights(plain, torch.Generator().manual_seed(3))
    init_weights(film, torch.Generator().manual_seed(3))
    extra = set(film.state_dict()) - set(plain.state_dict())
    assert extra == {f"blocks.{i}.film.{p}" for i in range(TINY["repeat_num"]) for p in ("weight", "bias")}
    film.load_state_dict(plain.state_dict(), strict=False)
    images, aus = _inputs()
    torch.testing.assert_close(film(images, aus).image, plain(images, aus).image, rtol=0, atol=0)  # zero FiLM
    # A FiLM shift moves the bottleneck of every pixel with the AUs; the published block ignores them.
    with torch.no_grad():
        film.blocks[0].film.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(4))
    h = torch.randn(2, 32, 4, 4, generator=torch.Generator().manual_seed(5))
    a, b = torch.zeros(2, 17), torch.ones(2, 17)
    assert (film.blocks[0](h, a) - film.blocks[0](h, b)).abs().amin() > 0
    torch.testing.assert_close(plain.blocks[0](h, a), plain.blocks[0](h, b), rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["official", "replicate"])
def test_critic_shapes(layout):
    torch.manual_seed(0)
    critic = Critic(GANimationConfig(**TINY, norm_layout=layout))
    out = critic(_inputs(batch=2)[0])
    assert out.realness.shape == (2, 1, 4, 4)  # 16 px / 2**2
    assert out.aus.shape == (2, 17)
    with pytest.raises(ValueError, match="critic input"):
        critic(torch.zeros(2, 3, 32, 32))


def test_published_sizes_by_counting():
    with torch.device("meta"):  # shapes only; nothing is allocated
        official = Generator(GANimationConfig())
        replicate = Generator(GANimationConfig(norm_layout="replicate"))
        critic = Critic(GANimationConfig())
    # Official by hand: convs 20*64*49 + 64*128*16 + 128*256*16 + 6*2*256*256*9 + 256*128*16
    # + 128*64*16 + 64*3*49 + 64*49, plus affine norms 2*(64+128+256+6*2*256+128+64).
    convs = (20 * 64 * 49 + 64 * 128 * 16 + 128 * 256 * 16 + 12 * 256 * 256 * 9 + 256 * 128 * 16
             + 128 * 64 * 16 + 64 * 3 * 49 + 64 * 49)
    assert count_parameters(official) == convs + 2 * (64 + 128 + 256 + 12 * 256 + 128 + 64) == 8_471_296
    # Replicate: same convs, biases instead of affine norms.
    assert count_parameters(replicate) == convs + (64 + 128 + 256 + 12 * 256 + 128 + 64)
    assert round(count_parameters(official) / 1e6, 2) == 8.47
    assert round(count_parameters(replicate) / 1e6, 2) == 8.47
    out = critic(torch.empty(1, 3, 128, 128, device="meta"))
    assert out.realness.shape == (1, 1, 2, 2) and out.aus.shape == (1, 17)
    assert critic.au_head.weight.shape == (17, 2048, 2, 2)


def test_norm_layouts_differ_as_published():
    official = Generator(GANimationConfig(**TINY))
    replicate = Generator(GANimationConfig(**TINY, norm_layout="replicate"))
    assert official.stem.conv.bias is None and official.stem.norm.weight is not None
    assert replicate.stem.conv.bias is not None and replicate.stem.norm.weight is None
    for gen in (official, replicate):  # heads are bias-free in both
        assert gen.colour_head.bias is None and gen.attention_head.bias is None
    assert not any(isinstance(m, nn.ConvTranspose2d)
                   for m in Generator(GANimationConfig(**TINY, upsample="resize_conv")).modules())


@pytest.mark.parametrize("bad", [
    dict(norm_layout="batch"), dict(upsample="pixelshuffle"), dict(image_size_px=18),
    dict(image_size_px=64, critic_layers=7), dict(conv_dim=0),
])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        GANimationConfig(**{**TINY, **bad})


def test_input_checks():
    gen = Generator(GANimationConfig(**TINY))
    images, aus = _inputs()
    with pytest.raises(ValueError, match="aus must be"):
        gen(images, aus[:, :5])
    with pytest.raises(ValueError, match="images must be"):
        gen(images[:, :1], aus)


def test_seeded_init_gives_identical_outputs():
    config = GANimationConfig(**TINY)
    outputs = []
    for seed in (7, 7, 8):
        gen = Generator(config)
        init_weights(gen, torch.Generator().manual_seed(seed))
        outputs.append(gen(*_inputs()).image)
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.equal(outputs[0], outputs[2])


@pytest.mark.parametrize("size_px", [16, 32])
def test_stem_without_tiling_equals_the_tiled_convolution(size_px):
    config = GANimationConfig(**{**TINY, "image_size_px": size_px}, norm_layout="replicate")
    gen = Generator(config)
    init_weights(gen, torch.Generator().manual_seed(1), std=0.1)
    nn.init.normal_(gen.stem.conv.bias, generator=torch.Generator().manual_seed(2))
    images, aus = _inputs(size=size_px)
    tiled = aus[:, :, None, None].expand(-1, -1, size_px, size_px)
    reference = gen.stem.conv(torch.cat([images, tiled], dim=1))  # the published formulation
    torch.testing.assert_close(gen._stem_conv(images, aus), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias", [False, True])
def test_resize_conv_equals_nearest_upsampling_then_conv(bias):
    conv = nn.Conv2d(6, 5, 3, padding=1, bias=bias)
    x = torch.randn(2, 6, 5, 7, generator=torch.Generator().manual_seed(3))  # odd, non-square on purpose
    reference = conv(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))
    torch.testing.assert_close(_resize_conv(x, conv), reference, rtol=1e-5, atol=1e-5)
