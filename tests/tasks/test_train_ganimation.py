"""GANimation training loop: steps lower the loss, seeds reproduce, resume continues exactly, files written."""
from __future__ import annotations

import dataclasses
import json

import cv2
import pytest
import torch

from manifests.schema import AU_INDEX
from models.checkpoints import load_checkpoint
from models.ganimation import Critic, GANimationConfig, Generator, init_weights
from models.ganimation_losses import LossWeights, teacher_l1
from tasks.ganimation import load_ganimation
from tasks.train_ganimation import (
    TrainGANimationConfig,
    WarpTeacher,
    critic_step,
    generator_step,
    latest_checkpoint,
    lr_factor,
    random_shifts,
    sample_targets,
    teacher_weight,
    train_config_from_dict,
    train_ganimation,
    translate,
)

MODEL = GANimationConfig(image_size_px=16, conv_dim=8, repeat_num=1, critic_conv_dim=8, critic_layers=2)
CONFIG = TrainGANimationConfig(model=MODEL, batch_size=4, critic_steps_per_generator_step=2, sample_grid_rows=3)


def _dataset(n: int = 10, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(3, 16, 16, generator=g) * 2 - 1, torch.rand(17, generator=g)) for _ in range(n)]


def _fixed_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    real = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
    return real, torch.rand(4, 17, generator=g), torch.rand(4, 17, generator=g), torch.rand(4, generator=g)


def _models(seed: int = 0) -> tuple[Generator, Critic]:
    g = torch.Generator().manual_seed(seed)
    generator, critic = Generator(MODEL), Critic(MODEL)
    init_weights(generator, g)
    init_weights(critic, g)
    return generator, critic


def test_critic_steps_lower_its_loss_on_a_fixed_batch():
    generator, critic = _models()
    opt = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.5, 0.999))
    real, source, target, alpha = _fixed_batch()
    losses = [critic_step(generator, critic, opt, real, source, target, alpha, LossWeights()) for _ in range(25)]
    assert losses[-1]["d_total"] < 0.5 * losses[0]["d_total"]
    assert losses[-1]["d_au"] < 0.5 * losses[0]["d_au"]


def test_generator_steps_lower_its_loss_against_a_fixed_critic():
    generator, critic = _models()
    critic_before = {k: v.clone() for k, v in critic.state_dict().items()}
    opt = torch.optim.Adam(generator.parameters(), lr=1e-3, betas=(0.5, 0.999))
    real, source, target, _ = _fixed_batch()
    losses = [generator_step(generator, critic, opt, real, source, target, LossWeights()) for _ in range(25)]
    # The untrained critic's AU head barely reacts to its input, so the AU term stays flat; the terms
    # the generator controls alone must fall.
    assert losses[-1]["g_total"] < losses[0]["g_total"] - 1.0
    assert losses[-1]["g_cycle"] < 0.5 * losses[0]["g_cycle"]
    assert losses[-1]["g_tv"] < 0.5 * losses[0]["g_tv"]
    assert all(torch.equal(v, critic_before[k]) for k, v in critic.state_dict().items())  # critic untouched
    assert all(p.requires_grad for p in critic.parameters())


def test_sharing_the_edit_between_critic_and_generator_steps_changes_nothing():
    real, source, target, alpha = _fixed_batch()
    results = []
    for share in (False, True):
        generator, critic = _models(seed=4)
        opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.5, 0.999))
        edited = generator(real, target) if share else None
        critic_step(generator, critic, opt_d, real, source, target, alpha, LossWeights(),
                    fake=edited.image if share else None)
        generator_step(generator, critic, opt_g, real, source, target, LossWeights(), edited=edited)
        results.append({**generator.state_dict(), **{f"c.{k}": v for k, v in critic.state_dict().items()}})
    for key in results[0]:
        torch.testing.assert_close(results[1][key], results[0][key], rtol=1e-5, atol=1e-6, msg=key)


def test_translate_shifts_each_image_by_its_own_offset_with_edge_fill():
    images = torch.rand(3, 2, 6, 7, generator=torch.Generator().manual_seed(0), requires_grad=True)
    shifts = torch.tensor([[0, 0], [2, -1], [-3, 3]])
    out = translate(images, shifts, 3)
    assert out.shape == images.shape
    torch.testing.assert_close(out[0], images[0])
    # Image 1 moved 2 down and 1 left: output (y, x) is input (y - 2, x + 1); the top rows repeat row 0.
    torch.testing.assert_close(out[1, :, 2:, :-1], images[1, :, :-2, 1:])
    torch.testing.assert_close(out[1, :, 0, :-1], images[1, :, 0, 1:])
    torch.testing.assert_close(out[1, :, 2:, -1], images[1, :, :-2, -1])
    torch.testing.assert_close(out[2, :, :-3, 3:], images[2, :, 3:, :-3])
    out.sum().backward()  # differentiable: every output pixel came from one input pixel
    assert images.grad.sum().item() == pytest.approx(out.numel())
    assert translate(images, shifts, 0) is images
    s = random_shifts(500, 2, torch.Generator().manual_seed(1))
    assert s.shape == (500, 2) and set(s.flatten().tolist()) == {-2, -1, 0, 1, 2}


@pytest.mark.parametrize("augment", [{"critic_translate_px": 2}, {"critic_noise_std": 0.1}])
def test_critic_augmentation_is_seeded_and_changes_training(tmp_path, augment):
    augmented = dataclasses.replace(CONFIG, **augment)
    weights = {}
    for name, config in (("a", augmented), ("b", augmented), ("plain", CONFIG)):
        train_ganimation(_dataset(), config, tmp_path / name, epochs=1, seed=5)
        weights[name], _ = load_checkpoint(latest_checkpoint(tmp_path / name))
    assert all(torch.equal(weights["a"][k], weights["b"][k]) for k in weights["a"])
    assert not torch.equal(weights["a"]["critic.au_head.weight"], weights["plain"]["critic.au_head.weight"])
    with pytest.raises(ValueError, match="critic_translate_px"):
        TrainGANimationConfig(critic_translate_px=-1)
    with pytest.raises(ValueError, match="critic_noise_std"):
        TrainGANimationConfig(critic_noise_std=-0.1)


def test_targets_come_from_other_samples_plus_bounded_noise():
    table = torch.rand(6, 17, generator=torch.Generator().manual_seed(0))
    index = torch.arange(6).repeat(20)
    targets, partner = sample_targets(table, index, 0.1, torch.Generator().manual_seed(1))
    assert (partner != index).all() and set(partner.tolist()) == set(range(6))
    unclamped = (targets > 0) & (targets < 1)
    diff = (targets - table[partner])[unclamped]
    assert diff.abs().max() <= 0.1 and diff.abs().max() > 0.05 and diff.std() > 0.02
    assert targets.min() >= 0 and targets.max() <= 1


def test_lr_decays_linearly_over_the_last_third():
    assert [lr_factor(p, 6, 1 / 3) for p in (0, 3.9, 4.0, 5.0, 5.5, 6.0)] == pytest.approx([1, 1, 1, 0.5, 0.25, 0])
    assert lr_factor(5.9, 6, 0.0) == 1.0


def test_training_writes_config_grids_and_numbered_checkpoints(tmp_path):
    history = train_ganimation(_dataset(), CONFIG, tmp_path, epochs=2, seed=3, data_id="manifest-abc")
    assert [r["epoch"] for r in history] == [1, 2] and history[-1]["step"] == 6  # 3 batches per epoch
    assert {"d_wasserstein", "d_gp", "d_au", "g_adversarial", "g_au", "g_cycle", "g_attention", "g_tv",
            "attention_mean"} <= set(history[0])
    run_config = json.loads((tmp_path / "train_config.json").read_text())
    assert train_config_from_dict(run_config["train"]) == CONFIG and run_config["data_id"] == "manifest-abc"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch_0001", "epoch_0002"]
    grid = cv2.imread(str(tmp_path / "samples" / "epoch_0002.png"))
    assert grid.shape == (3 * 16, 4 * 16, 3)  # rows: samples; columns: source, attention, colour, output
    _, card = load_checkpoint(latest_checkpoint(tmp_path))
    assert card["extra"]["run_config"]["train"]["losses"]["au_regression"] == 160.0
    assert card["extra"]["epoch"] == 2 and len(card["extra"]["history"]) == 2
    loaded = load_ganimation(latest_checkpoint(tmp_path))  # training checkpoints load for inference
    assert loaded.config == MODEL and loaded.critic is not None


def test_same_seed_same_weights_and_different_seed_differs(tmp_path):
    runs = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        train_ganimation(_dataset(), CONFIG, tmp_path / name, epochs=1, seed=seed)
        runs[name], _ = load_checkpoint(latest_checkpoint(tmp_path / name))
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    assert not torch.equal(runs["a"]["generator.stem.norm.weight"], runs["c"]["generator.stem.norm.weight"])


class _Interrupted(Exception):
    pass


def test_resume_continues_from_the_last_checkpoint_exactly(tmp_path):
    data = _dataset()
    straight = train_ganimation(data, CONFIG, tmp_path / "straight", epochs=3, seed=2)

    def crash_after_first_epoch(record):
        if record["epoch"] == 1:
            raise _Interrupted

    with pytest.raises(_Interrupted):
        train_ganimation(data, CONFIG, tmp_path / "resumed", epochs=3, seed=2, on_epoch=crash_after_first_epoch)
    first = (tmp_path / "resumed" / "checkpoints" / "epoch_0001" / "model.safetensors").read_bytes()
    resumed = train_ganimation(data, CONFIG, tmp_path / "resumed", epochs=3, seed=2)

    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    assert (tmp_path / "resumed" / "checkpoints" / "epoch_0001" / "model.safetensors").read_bytes() == first
    a, _ = load_checkpoint(latest_checkpoint(tmp_path / "straight"))
    b, _ = load_checkpoint(latest_checkpoint(tmp_path / "resumed"))
    assert set(a) == set(b) and any(k.startswith("train.opt_d.") for k in a)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-6, atol=1e-7, msg=key)
    for x, y in zip(straight, resumed):
        assert x["d_total"] == pytest.approx(y["d_total"], rel=1e-5)
    # A finished run resumed again has nothing left to do and returns its history.
    assert len(train_ganimation(data, CONFIG, tmp_path / "resumed", epochs=3, seed=2)) == 3


def test_existing_runs_are_not_clobbered(tmp_path):
    data = _dataset()
    train_ganimation(data, CONFIG, tmp_path, epochs=1, seed=0)
    with pytest.raises(FileExistsError):
        train_ganimation(data, CONFIG, tmp_path, epochs=2, seed=0, resume=False)
    with pytest.raises(ValueError, match="different training config"):
        train_ganimation(data, TrainGANimationConfig(model=MODEL, batch_size=2), tmp_path, epochs=2, seed=0)
    with pytest.raises(ValueError, match="different training config"):
        train_ganimation(data, CONFIG, tmp_path, epochs=2, seed=1)


def test_data_that_does_not_fit_the_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="dataset items"):
        train_ganimation(_dataset()[:3] + [(torch.zeros(3, 8, 8), torch.zeros(17))], CONFIG, tmp_path / "a", 1)
    with pytest.raises(ValueError, match="dataset items"):
        train_ganimation([(torch.zeros(3, 32, 32), torch.zeros(17))] * 3, CONFIG, tmp_path / "b", 1)
    with pytest.raises(ValueError, match="at least 2"):
        train_ganimation(_dataset()[:1], CONFIG, tmp_path / "c", 1)


# ---------------------------------------------------------------- the warp teacher

class _LandmarkFaces(torch.utils.data.Dataset):
    """Synthetic faces at 32 px with the renderer's own 68 landmarks; face 1 has none (NaN)."""

    def __init__(self, n: int = 6):
        import numpy as np

        from tasks.synthetic import RenderConfig, random_aus, random_identity, render_face, render_landmarks68
        from tasks.tensors import uint8_to_tensor

        render, rng = RenderConfig(image_size_px=32, supersample=2), np.random.default_rng(0)
        faces, aus, points = [], [], []
        for i in range(n):
            identity, au = random_identity(100 + i), random_aus(rng)
            faces.append(render_face(identity, au, render))
            aus.append(au)
            points.append(render_landmarks68(identity, au, render))
        self.images = uint8_to_tensor(np.stack(faces))
        self.aus = torch.tensor(np.stack(aus), dtype=torch.float32)
        self.landmarks = torch.tensor(np.stack(points), dtype=torch.float32)
        self.landmarks[1] = float("nan")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.aus[i]


TEACHER_MODEL = dataclasses.replace(MODEL, image_size_px=32)
TAUGHT = TrainGANimationConfig(model=TEACHER_MODEL, batch_size=3, critic_steps_per_generator_step=1, sample_grid_rows=2,
                               warp_teacher_weight=10.0, warp_teacher_hold_fraction=0.5, warp_teacher_floor=0.2)


def test_the_teacher_is_on_by_default_below_the_published_size_only():
    from tasks.train_ganimation import default_warp_teacher_weight, is_published_size

    published = GANimationConfig()
    assert is_published_size(published) and default_warp_teacher_weight(published) == 0.0
    for small in (dataclasses.replace(published, conv_dim=32), dataclasses.replace(published, repeat_num=3),
                  dataclasses.replace(published, image_size_px=64)):
        assert not is_published_size(small) and default_warp_teacher_weight(small) == 100.0
    assert TrainGANimationConfig().warp_teacher_weight == 0.0   # the config itself keeps the paper's setting


def test_teacher_schedule_holds_then_decays_linearly_to_the_floor():
    assert [teacher_weight(p, TAUGHT) for p in (0.0, 0.5, 0.75, 1.0)] == pytest.approx([10, 10, 6, 2])
    assert teacher_weight(0.3, CONFIG) == 0.0  # off by default (the published setting)
    with pytest.raises(ValueError):
        TrainGANimationConfig(warp_teacher_floor=1.5)


def test_teacher_batch_is_the_warp_edit_and_skips_faces_without_landmarks():
    import numpy as np

    from tasks.au_shape import load_au_shape
    from tasks.tensors import tensor_to_uint8
    from tasks.warp import WarpEditor

    data = _LandmarkFaces()
    teacher = WarpTeacher.create(TAUGHT, data)
    index = torch.tensor([0, 1, 2])
    targets = torch.zeros(3, 17)
    targets[:, AU_INDEX["AU25"]] = 1.0  # lips part
    batch = teacher.batch(data.images[index], index, data.aus[index], targets, 7.0)
    assert batch.has_teacher.tolist() == [True, False, True] and batch.weight == 7.0
    assert torch.equal(batch.images[1], data.images[1])  # no landmarks: the input, and no term
    expected = WarpEditor(load_au_shape(None)).edit(tensor_to_uint8(data.images[:1])[0], data.landmarks[0].numpy(),
                                                    data.aus[0].double().numpy(), targets[0].double().numpy()).image
    assert np.array_equal(tensor_to_uint8(batch.images[:1])[0], expected)
    assert not torch.equal(batch.images[0], data.images[0])  # the warp did move something


def test_teacher_l1_covers_only_faces_with_a_teacher():
    edited, teacher = torch.zeros(3, 3, 4, 4), torch.ones(3, 3, 4, 4)
    teacher[1] = 5.0
    assert teacher_l1(edited, teacher, torch.tensor([True, False, True])).item() == pytest.approx(1.0)
    assert teacher_l1(edited, teacher, torch.tensor([False, False, False])).item() == 0.0


def test_training_with_the_teacher_records_it_and_changes_the_weights(tmp_path):
    data = _LandmarkFaces()
    history = train_ganimation(data, TAUGHT, tmp_path / "taught", epochs=2, seed=0)
    assert all(0 < r["g_teacher"] for r in history)
    assert history[0]["teacher_weight"] == pytest.approx(10.0) and history[1]["teacher_weight"] < 10.0
    assert 0 < history[0]["teacher_coverage"] < 1  # face 1 has no landmarks
    _, card = load_checkpoint(latest_checkpoint(tmp_path / "taught"))
    recorded = card["extra"]["run_config"]
    assert recorded["train"]["warp_teacher_weight"] == 10.0 and recorded["warp_teacher"]["editor"].startswith("warp:")
    assert "linear to 0.2" in recorded["warp_teacher"]["schedule"] and recorded["warp_teacher"]["faces_with_landmarks"] == 5
    train_ganimation(data, dataclasses.replace(TAUGHT, warp_teacher_weight=0.0), tmp_path / "plain", epochs=2, seed=0)
    taught, _ = load_checkpoint(latest_checkpoint(tmp_path / "taught"))
    plain, _ = load_checkpoint(latest_checkpoint(tmp_path / "plain"))
    assert not torch.equal(taught["generator.stem.norm.weight"], plain["generator.stem.norm.weight"])
    assert "g_teacher" not in train_ganimation(data, dataclasses.replace(TAUGHT, warp_teacher_weight=0.0),
                                               tmp_path / "plain", epochs=2, seed=0)[0]


def test_a_dataset_without_landmarks_trains_with_the_term_skipped(tmp_path, caplog):
    with caplog.at_level("WARNING"):
        history = train_ganimation(_dataset(), dataclasses.replace(CONFIG, warp_teacher_weight=5.0), tmp_path, epochs=1)
    assert "no landmarks" in caplog.text
    assert history[0]["teacher_coverage"] == 0.0 and history[0]["g_teacher"] == 0.0


def test_a_run_written_before_the_teacher_fields_still_resumes(tmp_path):
    train_ganimation(_dataset(), CONFIG, tmp_path, epochs=1, seed=0)
    path = tmp_path / "train_config.json"
    old = json.loads(path.read_text())
    for key in [k for k in old["train"] if k.startswith("warp_teacher")]:
        del old["train"][key]
    path.write_text(json.dumps(old))
    assert [r["epoch"] for r in train_ganimation(_dataset(), CONFIG, tmp_path, epochs=2, seed=0)] == [1, 2]
    with pytest.raises(ValueError, match="different training config"):  # a real change is still refused
        train_ganimation(_dataset(), dataclasses.replace(CONFIG, warp_teacher_weight=1.0), tmp_path, epochs=3, seed=0)
