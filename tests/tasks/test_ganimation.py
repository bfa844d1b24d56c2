"""GANimation stage: checkpoint import/save/load round trips and batched AU edits."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from models.ganimation import Critic, GANimationConfig, Generator, init_weights
from models.legacy import LegacyCheckpointError, expected_keys
from tasks.errors import RejectError
from tasks.ganimation import apply_edits, au_fidelity, estimate_aus, import_checkpoint, load_ganimation, save_ganimation

TINY = dict(image_size_px=16, conv_dim=8, repeat_num=2, critic_conv_dim=8, critic_layers=2)


def _models(seed: int = 0, **overrides) -> tuple[Generator, Critic]:
    config = GANimationConfig(**{**TINY, **overrides})
    g = torch.Generator().manual_seed(seed)
    generator, critic = Generator(config), Critic(config)
    init_weights(generator, g, std=0.2)  # larger than training's 0.02 so outputs vary visibly
    init_weights(critic, g, std=0.2)
    return generator.eval(), critic.eval()


def _published_state(module: torch.nn.Module, fmt: str, part: str) -> dict[str, torch.Tensor]:
    """Our weights under the published key names (the exact published layouts are tested in test_legacy)."""
    ours = module.state_dict()
    return {published: ours[our_key].clone()
            for published, (our_key, _) in expected_keys(fmt, part, module.config).items()}


def _faces(astronaut_rgb, grace_hopper_rgb, n: int = 5) -> list[np.ndarray]:
    """Real photos shrunk to the tiny model's size, plus flips to get n distinct images."""
    faces = [cv2.resize(im, (16, 16), interpolation=cv2.INTER_AREA) for im in (astronaut_rgb, grace_hopper_rgb)]
    faces += [f[:, ::-1].copy() for f in faces] + [f[::-1].copy() for f in faces]
    return faces[:n]


def _targets(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, size=(n, 17)).astype(np.float32)


@pytest.mark.parametrize("fmt", ["official", "replicate"])
def test_import_then_load_gives_the_same_model(fmt, tmp_path):
    generator, critic = _models(norm_layout=fmt)
    torch.save(_published_state(generator, fmt, "generator"), tmp_path / "G.pth")
    torch.save(_published_state(critic, fmt, "critic"), tmp_path / "D.pth")
    out = import_checkpoint(fmt, tmp_path / "G.pth", tmp_path / "D.pth", tmp_path / "ck", config=generator.config)
    loaded = load_ganimation(out)
    assert loaded.config == generator.config and loaded.checkpoint_id.startswith("ganimation:")
    images, aus = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 17)
    with torch.no_grad():
        assert torch.equal(loaded.generator(images, aus).image, generator(images, aus).image)
        assert torch.equal(loaded.critic(images).aus, critic(images).aus)
    card = json.loads((out / "config.json").read_text())
    assert card["extra"]["imported_from"] == fmt
    assert len(card["extra"]["sources"]["critic"]["sha256"]) == 64


def test_import_without_critic_and_refusals(tmp_path):
    generator, _ = _models()
    state = _published_state(generator, "official", "generator")
    torch.save(state, tmp_path / "G.pth")
    out = import_checkpoint("official", tmp_path / "G.pth", None, tmp_path / "ck", config=generator.config)
    assert load_ganimation(out).critic is None
    with pytest.raises(FileExistsError):  # checkpoints are never overwritten
        import_checkpoint("official", tmp_path / "G.pth", None, tmp_path / "ck", config=generator.config)
    del state["main.0.weight"]
    torch.save(state, tmp_path / "bad_G.pth")
    with pytest.raises(LegacyCheckpointError, match="main.0.weight"):
        import_checkpoint("official", tmp_path / "bad_G.pth", None, tmp_path / "ck2", config=generator.config)
    assert not (tmp_path / "ck2").exists()


def test_save_load_round_trip_gives_identical_outputs(tmp_path, astronaut_rgb, grace_hopper_rgb):
    generator, critic = _models(seed=3, upsample="resize_conv")
    out = save_ganimation(tmp_path / "ck", generator, critic, extra={"note": "test"})
    loaded = load_ganimation(out)
    faces, targets = _faces(astronaut_rgb, grace_hopper_rgb), _targets(5)
    a = apply_edits(generator, faces, targets, batch_size=5)
    b = apply_edits(loaded.generator, faces, targets, batch_size=5)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.attention_mean, b.attention_mean)
    np.testing.assert_array_equal(au_fidelity(critic, faces, targets), au_fidelity(loaded.critic, faces, targets))


def test_apply_edits_matches_a_direct_forward(astronaut_rgb, grace_hopper_rgb):
    generator, _ = _models(seed=4)
    faces, targets = _faces(astronaut_rgb, grace_hopper_rgb), _targets(5)
    result = apply_edits(generator, faces, targets, batch_size=2)
    assert result.images.dtype == np.uint8 and result.images.shape == (5, 16, 16, 3)
    x = torch.from_numpy(np.stack(faces)).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        direct = generator(x, torch.from_numpy(targets))
    expected = ((direct.image + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    assert np.abs(result.images.astype(int) - expected.astype(int)).max() <= 1
    np.testing.assert_allclose(result.attention_mean, direct.attention.mean(dim=(1, 2, 3)).numpy(), rtol=1e-5)
    assert not np.array_equal(result.images, np.stack(faces))  # the edit changed something


def test_apply_edits_does_not_depend_on_batch_size():
    generator, _ = _models(seed=5)
    images = torch.rand(7, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    targets = torch.from_numpy(_targets(7))
    one = apply_edits(generator, images, targets, batch_size=1)
    four = apply_edits(generator, images, targets, batch_size=4)
    assert isinstance(one.images, torch.Tensor) and one.images.shape == (7, 3, 16, 16)
    torch.testing.assert_close(one.images, four.images, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(one.attention_mean, four.attention_mean, rtol=1e-5, atol=1e-6)


class _OutOfMemoryAboveTwo(torch.nn.Module):
    """Wraps a generator and fails like CUDA does when a batch is larger than 2."""

    def __init__(self, generator: Generator):
        super().__init__()
        self.inner, self.config, self.sizes = generator, generator.config, []

    def forward(self, images, aus):
        self.sizes.append(images.shape[0])
        if images.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.inner(images, aus)


def test_out_of_memory_halves_the_batch():
    generator, _ = _models(seed=6)
    images = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    targets = _targets(5)
    flaky = _OutOfMemoryAboveTwo(generator)
    result = apply_edits(flaky, images, targets, batch_size=8)
    assert result.batch_size_used == 2 and flaky.sizes[:3] == [5, 4, 2]
    torch.testing.assert_close(result.images, apply_edits(generator, images, targets, batch_size=1).images,
                               rtol=1e-5, atol=1e-5)


class _AlwaysOOM(torch.nn.Module):
    def __init__(self, generator):
        super().__init__()
        self.config = generator.config

    def forward(self, images, aus):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")


def test_out_of_memory_at_batch_one_is_raised():
    """Halving stops at 1: a single image that does not fit is a real error, not an endless retry."""
    generator, _ = _models(seed=6)
    with pytest.raises(torch.OutOfMemoryError):
        apply_edits(_AlwaysOOM(generator), torch.zeros(3, 3, 16, 16), _targets(3), batch_size=4)


def test_bad_inputs_are_rejected_with_reasons(astronaut_rgb):
    generator, _ = _models()
    with pytest.raises(RejectError) as info:
        apply_edits(generator, [astronaut_rgb], _targets(1))  # 512 px into a 16 px model
    assert info.value.reason == "wrong_size" and "image 0" in info.value.detail
    with pytest.raises(RejectError) as info:
        apply_edits(generator, torch.full((1, 3, 16, 16), 2.0), _targets(1))
    assert info.value.reason == "bad_image"
    bad = _targets(1)
    bad[0, 3] = np.nan
    with pytest.raises(RejectError) as info:
        apply_edits(generator, torch.zeros(1, 3, 16, 16), bad)
    assert info.value.reason == "bad_au_target"
    with pytest.raises(ValueError, match="au_targets"):
        apply_edits(generator, torch.zeros(2, 3, 16, 16), _targets(3))


def test_au_fidelity_and_estimates_use_the_critic_head(astronaut_rgb, grace_hopper_rgb):
    _, critic = _models(seed=7)
    faces, targets = _faces(astronaut_rgb, grace_hopper_rgb, n=4), _targets(4)
    x = torch.from_numpy(np.stack(faces)).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        head = critic(x).aus.numpy()  # [4, 17]
    np.testing.assert_allclose(au_fidelity(critic, faces, targets, batch_size=3),
                               np.abs(head - targets).mean(axis=1), rtol=1e-5, atol=1e-6)
    estimated = estimate_aus(critic, faces, batch_size=3)
    assert estimated.shape == (4, 17) and estimated.dtype == np.float32
    np.testing.assert_allclose(estimated, np.clip(head, 0, 1), rtol=1e-5, atol=1e-6)
