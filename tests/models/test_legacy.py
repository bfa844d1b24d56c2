"""Published-checkpoint converter: exact key layouts of both published codes, round trips, precise errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from models.ganimation import Critic, GANimationConfig, Generator
from models.legacy import (
    LegacyCheckpointError,
    convert_checkpoint_file,
    convert_state_dict,
    expected_keys,
    load_published_state_dict,
)

TINY = dict(image_size_px=16, conv_dim=8, repeat_num=2, critic_conv_dim=8, critic_layers=2)


# Reference networks with the published attribute names, written from the published architecture,
# so their state_dicts have exactly the published keys and their forward passes are the ground truth.

class _PublishedGenerator(nn.Module):
    def forward(self, images, aus):
        tiled = aus[:, :, None, None].expand(-1, -1, *images.shape[2:])
        features = self.trunk()(torch.cat([images, tiled], 1))
        colour, attention = self.heads()
        colour, attention = colour(features), attention(features)
        return attention * images + (1 - attention) * colour


class OfficialGenerator(_PublishedGenerator):
    """albertpumarola/GANimation: InstanceNorm(affine), convs without bias; heads img_reg / attetion_reg."""

    class ResidualBlock(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.main = nn.Sequential(
                nn.Conv2d(dim, dim, 3, 1, 1, bias=False), nn.InstanceNorm2d(dim, affine=True), nn.ReLU(),
                nn.Conv2d(dim, dim, 3, 1, 1, bias=False), nn.InstanceNorm2d(dim, affine=True))

        def forward(self, x):
            return x + self.main(x)

    def __init__(self, c: GANimationConfig):
        super().__init__()
        d = c.conv_dim
        layers = [nn.Conv2d(3 + c.n_aus, d, 7, 1, 3, bias=False), nn.InstanceNorm2d(d, affine=True), nn.ReLU()]
        for _ in range(2):
            layers += [nn.Conv2d(d, 2 * d, 4, 2, 1, bias=False), nn.InstanceNorm2d(2 * d, affine=True), nn.ReLU()]
            d *= 2
        layers += [self.ResidualBlock(d) for _ in range(c.repeat_num)]
        for _ in range(2):
            layers += [nn.ConvTranspose2d(d, d // 2, 4, 2, 1, bias=False), nn.InstanceNorm2d(d // 2, affine=True),
                       nn.ReLU()]
            d //= 2
        self.main = nn.Sequential(*layers)
        self.img_reg = nn.Sequential(nn.Conv2d(d, 3, 7, 1, 3, bias=False), nn.Tanh())
        self.attetion_reg = nn.Sequential(nn.Conv2d(d, 1, 7, 1, 3, bias=False), nn.Sigmoid())

    def trunk(self):
        return self.main

    def heads(self):
        return self.img_reg, self.attetion_reg


class ReplicateGenerator(_PublishedGenerator):
    """donydchen/ganimation_replicate: InstanceNorm without parameters, trunk convs with bias."""

    class ResnetBlock(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.conv_block = nn.Sequential(
                nn.Conv2d(dim, dim, 3, 1, 1), nn.InstanceNorm2d(dim), nn.ReLU(),
                nn.Conv2d(dim, dim, 3, 1, 1), nn.InstanceNorm2d(dim))

        def forward(self, x):
            return x + self.conv_block(x)

    def __init__(self, c: GANimationConfig):
        super().__init__()
        d = c.conv_dim
        layers = [nn.Conv2d(3 + c.n_aus, d, 7, 1, 3), nn.InstanceNorm2d(d), nn.ReLU()]
        for _ in range(2):
            layers += [nn.Conv2d(d, 2 * d, 4, 2, 1), nn.InstanceNorm2d(2 * d), nn.ReLU()]
            d *= 2
        layers += [self.ResnetBlock(d) for _ in range(c.repeat_num)]
        for _ in range(2):
            layers += [nn.ConvTranspose2d(d, d // 2, 4, 2, 1), nn.InstanceNorm2d(d // 2), nn.ReLU()]
            d //= 2
        self.model = nn.Sequential(*layers)
        self.color_top = nn.Sequential(nn.Conv2d(d, 3, 7, 1, 3, bias=False), nn.Tanh())
        self.au_top = nn.Sequential(nn.Conv2d(d, 1, 7, 1, 3, bias=False), nn.Sigmoid())

    def trunk(self):
        return self.model

    def heads(self):
        return self.color_top, self.au_top


class PublishedCritic(nn.Module):
    def __init__(self, c: GANimationConfig, fmt: str):
        super().__init__()
        layers, ch = [], 3
        for i in range(c.critic_layers):
            layers += [nn.Conv2d(ch, c.critic_conv_dim * 2 ** i, 4, 2, 1), nn.LeakyReLU(0.01)]
            ch = c.critic_conv_dim * 2 ** i
        trunk = nn.Sequential(*layers)
        real = nn.Conv2d(ch, 1, 3, 1, 1, bias=False)
        aus = nn.Conv2d(ch, c.n_aus, c.image_size_px // 2 ** c.critic_layers, bias=False)
        if fmt == "official":
            self.main, self.conv1, self.conv2 = trunk, real, aus
        else:
            self.model, self.dis_top, self.aus_top = trunk, real, aus
        self._parts = (trunk, real, aus)

    def forward(self, x):
        trunk, real, aus = self._parts
        h = trunk(x)
        return real(h), aus(h).flatten(1)


def published_generator(fmt: str, config: GANimationConfig) -> nn.Module:
    return OfficialGenerator(config) if fmt == "official" else ReplicateGenerator(config)


def _randomised(module: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():  # non-trivial values everywhere, norm scales included
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.ndim == 1 else 0.0) * 0.5)
    return module


def _issue_keys(fmt: str, part: str) -> set[str]:
    """The key lists exactly as issue 4 spells them out for the published 128 px models."""
    if (fmt, part) == ("official", "generator"):
        keys = {"main.0.weight", "main.3.weight", "main.6.weight", "main.15.weight", "main.18.weight",
                "img_reg.0.weight", "attetion_reg.0.weight"}
        keys |= {f"main.{i}.{p}" for i in (1, 4, 7, 16, 19) for p in ("weight", "bias")}
        for k in range(9, 15):
            keys |= {f"main.{k}.main.{j}.weight" for j in (0, 1, 3, 4)} | {f"main.{k}.main.{j}.bias" for j in (1, 4)}
        return keys
    if (fmt, part) == ("replicate", "generator"):
        keys = {f"model.{i}.{p}" for i in (0, 3, 6, 15, 18) for p in ("weight", "bias")}
        keys |= {f"model.{k}.conv_block.{j}.{p}" for k in range(9, 15) for j in (0, 3) for p in ("weight", "bias")}
        return keys | {"color_top.0.weight", "au_top.0.weight"}
    trunk, heads = ("main", ("conv1.weight", "conv2.weight")) if fmt == "official" else (
        "model", ("dis_top.weight", "aus_top.weight"))
    return {f"{trunk}.{i}.{p}" for i in (0, 2, 4, 6, 8, 10) for p in ("weight", "bias")} | set(heads)


@pytest.mark.parametrize("fmt", ["official", "replicate"])
@pytest.mark.parametrize("part", ["generator", "critic"])
def test_published_key_lists_and_shapes(fmt, part):
    config = GANimationConfig(norm_layout=fmt)
    with torch.device("meta"):
        reference = published_generator(fmt, config) if part == "generator" else PublishedCritic(config, fmt)
    ref_shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert set(ref_shapes) == _issue_keys(fmt, part)
    expected = expected_keys(fmt, part, config)
    assert {k: shape for k, (_, shape) in expected.items()} == ref_shapes


def test_published_shapes_named_in_the_issue():
    og = expected_keys("official", "generator", GANimationConfig())
    oc = expected_keys("official", "critic", GANimationConfig())
    assert og["main.0.weight"][1] == (64, 20, 7, 7)
    assert og["main.15.weight"][1] == (256, 128, 4, 4)
    assert og["img_reg.0.weight"][1] == (3, 64, 7, 7)
    assert og["attetion_reg.0.weight"][1] == (1, 64, 7, 7)
    assert oc["conv1.weight"][1] == (1, 2048, 3, 3)
    assert oc["conv2.weight"][1] == (17, 2048, 2, 2)


@pytest.mark.parametrize("fmt", ["official", "replicate"])
def test_generator_round_trip_through_a_file_matches_the_reference(fmt, tmp_path):
    config = GANimationConfig(**TINY, norm_layout=fmt)
    reference = _randomised(published_generator(fmt, config), seed=1)
    path = tmp_path / ("net_epoch_30_id_G.pth" if fmt == "official" else "30_net_gen.pth")
    torch.save(reference.state_dict(), path)
    ours = Generator(config)
    ours.load_state_dict(convert_checkpoint_file(path, fmt=fmt, part="generator", config=config), strict=True)
    g = torch.Generator().manual_seed(2)
    images, aus = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1, torch.rand(3, 17, generator=g)
    with torch.no_grad():
        # Not bitwise: our stem sums the constant AU planes in another order (see Generator._stem_conv).
        torch.testing.assert_close(ours(images, aus).image, reference(images, aus), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fmt", ["official", "replicate"])
def test_critic_round_trip_through_a_file_matches_the_reference(fmt, tmp_path):
    config = GANimationConfig(**TINY, norm_layout=fmt)
    reference = _randomised(PublishedCritic(config, fmt), seed=3)
    path = tmp_path / ("net_epoch_30_id_D.pth" if fmt == "official" else "30_net_dis.pth")
    torch.save(reference.state_dict(), path)
    ours = Critic(config)
    ours.load_state_dict(convert_checkpoint_file(path, fmt=fmt, part="critic", config=config), strict=True)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        ref_real, ref_aus = reference(images)
        out = ours(images)
    torch.testing.assert_close(out.realness, ref_real)
    torch.testing.assert_close(out.aus, ref_aus)


def test_full_size_official_generator_converts(tmp_path):
    config = GANimationConfig()
    reference = OfficialGenerator(config)
    converted = convert_state_dict(reference.state_dict(), fmt="official", part="generator", config=config)
    ours = Generator(config)
    ours.load_state_dict(converted, strict=True)
    assert torch.equal(ours.blocks[5].conv2.weight, reference.main[14].main[3].weight)
    assert torch.equal(ours.attention_head.weight, reference.attetion_reg[0].weight)


def test_data_parallel_prefix_and_pytorch_03_buffers_are_accepted():
    config = GANimationConfig(**TINY)
    reference = _randomised(OfficialGenerator(config), seed=5)
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    # PyTorch 0.3 saved InstanceNorm running statistics for every norm layer.
    for name, m in reference.named_modules():
        if isinstance(m, nn.InstanceNorm2d):
            state[f"module.{name}.running_mean"] = torch.zeros(m.num_features)
            state[f"module.{name}.running_var"] = torch.ones(m.num_features)
    converted = convert_state_dict(state, fmt="official", part="generator", config=config)
    assert torch.equal(converted["stem.conv.weight"], reference.main[0].weight)
    assert not any("running" in k for k in converted)


def test_every_mismatch_is_named_in_one_error():
    config = GANimationConfig(**TINY)
    state = dict(_randomised(OfficialGenerator(config), seed=6).state_dict())
    del state["main.4.bias"]
    del state["attetion_reg.0.weight"]
    state["attention_reg.0.weight"] = torch.zeros(1, 8, 7, 7)  # the sic spelling "fixed": unexpected
    state["main.3.weight"] = torch.zeros(16, 8, 3, 3)
    state["conv1.running_mean"] = torch.zeros(3)  # running stats of a non-norm layer are not stale buffers
    with pytest.raises(LegacyCheckpointError) as info:
        convert_state_dict(state, fmt="official", part="generator", config=config, source="G.pth")
    err = info.value
    assert err.missing == ["main.4.bias", "attetion_reg.0.weight"]
    assert err.unexpected == ["attention_reg.0.weight", "conv1.running_mean"]
    assert len(err.wrong_shape) == 1 and err.wrong_shape[0].startswith("main.3.weight")
    text = str(err)
    for key in ("main.4.bias", "attetion_reg.0.weight", "attention_reg.0.weight", "conv1.running_mean",
                "(16, 8, 3, 3)", "(16, 8, 4, 4)", "G.pth"):
        assert key in text


def test_wrong_format_is_reported_key_by_key():
    config = GANimationConfig(**TINY)  # official layout expected, replicate weights given
    state = ReplicateGenerator(GANimationConfig(**TINY, norm_layout="replicate")).state_dict()
    with pytest.raises(LegacyCheckpointError) as info:
        convert_state_dict(state, fmt="official", part="generator", config=config)
    assert "main.0.weight" in info.value.missing and "model.0.weight" in info.value.unexpected


def test_configs_that_cannot_hold_published_weights_are_refused():
    with pytest.raises(ValueError, match="transposed"):
        expected_keys("official", "generator", GANimationConfig(**TINY, upsample="resize_conv"))
    with pytest.raises(ValueError, match="norm_layout"):
        expected_keys("replicate", "generator", GANimationConfig(**TINY))
    with pytest.raises(ValueError, match="format"):
        expected_keys("stargan", "generator", GANimationConfig(**TINY))


class _NotATensor:
    pass


def test_files_that_are_not_weight_only_state_dicts_are_refused(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(LegacyCheckpointError, match="does not hold a state_dict"):
        load_published_state_dict(tmp_path / "list.pth")
    torch.save({"main.0.weight": _NotATensor()}, tmp_path / "pickle.pth")
    with pytest.raises(LegacyCheckpointError, match="weights-only"):
        load_published_state_dict(tmp_path / "pickle.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(LegacyCheckpointError, match="junk.pth"):
        load_published_state_dict(tmp_path / "junk.pth")
