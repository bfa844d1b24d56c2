"""SinGAN stage: input checks, bank save/load, seeded regenerations, and (slow) quality on a real aligned face."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from models.checkpoints import CheckpointError, save_checkpoint
from models.metrics import diversity, patch_realism, rmse, ssim
from models.singan import SinGANConfig, preset, regenerate
from tasks.errors import RejectError
from tasks.singan import (
    BANK_KIND,
    PRIOR_KIND,
    SinGANSampleConfig,
    derive_seed,
    images_to_tensor,
    load_bank,
    load_prior,
    regenerate_faces,
    regenerate_faces_task,
    regenerate_images,
    regenerate_injected,
    sample_seeds,
    save_bank,
    ssim_to_source,
    train_singan_bank,
    train_singan_prior,
)
from tasks.tensors import tensor_to_uint8

TEST_CONFIG = dataclasses.replace(
    preset("tiny"), min_size_px=16, iters_per_scale=2, d_steps=2, g_steps=2, base_channels=4,
    channels_double_every=2, max_channels=8,
)


def _faces(k: int = 2, size_px: int = 20) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (size_px, size_px, 3), dtype=np.uint8) for _ in range(k)]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """These nets are small: with 2 threads on a busy 2-core machine every op waits for the other thread's
    turn (measured 10-150x slower), so the SinGAN tests run single-threaded and restore the setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_bank():
    faces = _faces()
    return train_singan_bank(faces, TEST_CONFIG, [3, 4], device="cpu"), faces


# --- inputs and conversions ---------------------------------------------------------------------------------


def test_images_round_trip_through_tensors_exactly():
    faces = _faces(3)
    x = images_to_tensor(faces, TEST_CONFIG)
    assert x.shape == (3, 3, 20, 20) and x.min() >= -1 and x.max() <= 1
    back = tensor_to_uint8(x)
    assert all(np.array_equal(a, b) for a, b in zip(back, faces))


def test_bad_inputs_are_rejected_with_specific_reasons(tmp_path):
    faces = _faces(2)
    with pytest.raises(RejectError) as e:
        images_to_tensor([faces[0], faces[1][:, :18]], TEST_CONFIG)
    assert e.value.reason == "size_mismatch" and "image 1" in e.value.detail
    with pytest.raises(RejectError) as e:
        images_to_tensor([faces[0].astype(np.float32)], TEST_CONFIG)
    assert e.value.reason == "bad_image"
    with pytest.raises(RejectError) as e:
        images_to_tensor([faces[0][:16, :16]], TEST_CONFIG)  # not larger than min_size_px
    assert e.value.reason == "image_too_small" and e.value.stage == "singan"
    path = tmp_path / "face.png"
    Image.fromarray(faces[0]).save(path)
    assert torch.equal(images_to_tensor([str(path)], TEST_CONFIG), images_to_tensor([faces[0]], TEST_CONFIG))


def test_seeds_are_stable_and_independent_of_how_many_are_drawn():
    a = sample_seeds(7, "img_001", 2, 4)
    assert a == sample_seeds(7, "img_001", 2, 4) and sample_seeds(7, "img_001", 2, 2) == a[:2]
    assert len(set(a)) == 4 and all(0 <= s < 2**63 for s in a)
    assert sample_seeds(7, "img_002", 2, 4) != a and sample_seeds(8, "img_001", 2, 4) != a
    assert derive_seed(1, "x") == derive_seed(1, "x") != derive_seed(1, "y")


def test_sample_config_resolves_the_start_scale(tiny_bank):
    bank, _ = tiny_bank
    assert SinGANSampleConfig().start_scale(bank) == bank.coarsest_scale - 1
    assert SinGANSampleConfig(start_offset=0).start_scale(bank) == bank.coarsest_scale
    assert SinGANSampleConfig(start_offset=99).start_scale(bank) == 0
    with pytest.raises(ValueError):
        SinGANSampleConfig(num_samples=0)


# --- bank: save/load and regenerations --------------------------------------------------------------------


def test_save_load_round_trip_gives_the_same_regenerations(tiny_bank, tmp_path):
    bank, faces = tiny_bank
    saved = save_bank(bank, tmp_path / "bank", extra={"source_ids": ["a", "b"]})
    loaded = load_bank(saved, device="cpu")
    assert loaded.config == bank.config and loaded.sizes == bank.sizes and loaded.num_members == 2
    s = bank.coarsest_scale - 2
    for member in range(2):
        ours = regenerate_images(bank, member, faces[member], s, 3, [1, 2, 3])
        theirs = regenerate_images(loaded, member, faces[member], s, 3, [1, 2, 3])
        assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))
        assert ours[0].shape == (20, 20, 3) and ours[0].dtype == np.uint8
    with pytest.raises(FileExistsError):
        save_bank(bank, saved)  # never overwritten


def test_load_refuses_other_checkpoints(tmp_path):
    other = save_checkpoint(tmp_path / "other", {"w": torch.zeros(1)}, kind="ganimation", config=SinGANConfig())
    with pytest.raises(CheckpointError, match=BANK_KIND):
        load_bank(other)


def test_a_face_prior_saves_loads_and_warm_starts_banks(tmp_path):
    """The prior is its own checkpoint kind (a bank loader refuses it and back); loaded, it warm-starts a bank
    exactly as the prior in memory does."""
    config = dataclasses.replace(TEST_CONFIG, skip_coarse_scales=1, skip_noise_amp_factor=2.0)
    prior = train_singan_prior(_faces(4), config, seed=3, batch_size=2, device="cpu")
    saved = save_bank(prior, tmp_path / "prior", extra={"face_sample_ids": ["a", "b", "c", "d"]})
    with pytest.raises(CheckpointError, match=BANK_KIND):
        load_bank(saved)
    loaded = load_prior(saved, device="cpu")
    assert loaded.num_faces == 4 and len(loaded.critics) == len(loaded.generators)
    faces = _faces(2, 20)
    sample = SinGANSampleConfig(num_samples=2, start_offset=1)
    ours = regenerate_injected(faces, config, [1, 2], sample, [[(faces[0], [5, 6])], [(faces[1], [7, 8])]],
                               device="cpu", prior=prior)
    theirs = regenerate_injected(faces, config, [1, 2], sample, [[(faces[0], [5, 6])], [(faces[1], [7, 8])]],
                                 device="cpu", prior=loaded)
    cold = regenerate_injected(faces, config, [1, 2], sample, [[(faces[0], [5, 6])], [(faces[1], [7, 8])]],
                               device="cpu")
    assert all(np.array_equal(a, b) for a, b in zip(ours[1][0][0], theirs[1][0][0]))
    assert not np.array_equal(ours[1][0][0][0], cold[1][0][0][0])  # the warm start changed the model
    bank = train_singan_bank(faces, config, [1, 2], device="cpu")
    with pytest.raises(CheckpointError, match=PRIOR_KIND):
        load_prior(save_bank(bank, tmp_path / "bank"))


def test_regenerations_are_deterministic_per_seed(tiny_bank):
    bank, faces = tiny_bank
    s = bank.coarsest_scale - 2
    a = regenerate_images(bank, 0, faces[0], s, 2, [5, 6])
    b = regenerate_images(bank, 0, faces[0], s, 2, [5, 6])
    c = regenerate_images(bank, 0, faces[0], s, 2, [7, 6])
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0]) and np.array_equal(a[1], c[1])  # sample 1 keeps its own seed


def test_regenerate_faces_end_to_end():
    faces = _faces(2)
    start, samples = regenerate_faces(
        faces, TEST_CONFIG, [1, 2], SinGANSampleConfig(num_samples=2), [[10, 11], [12, 13]], device="cpu")
    assert start == 1  # 3 scales (16, 18, 20 px): N = 2, so the default N - 1 is scale 1
    assert len(samples) == 2 and all(len(s) == 2 and s[0].shape == (20, 20, 3) for s in samples)
    skipping = dataclasses.replace(TEST_CONFIG, skip_coarse_scales=1)
    with pytest.raises(ValueError, match="skip"):
        regenerate_faces(faces, skipping, [1, 2], SinGANSampleConfig(start_offset=0, num_samples=1), [[1], [2]], device="cpu")


def test_regenerate_injected_draws_other_images_through_each_member():
    faces = _faces(3)
    sample = SinGANSampleConfig(num_samples=2, start_offset=1)
    injections = [[(faces[0], [10, 11]), (faces[2], [12, 13])], []]
    start, out = regenerate_injected(faces[:2], TEST_CONFIG, [1, 2], sample, injections, device="cpu")
    assert len(out) == 2 and len(out[0]) == 2 and out[1] == [] and len(out[0][1]) == 2
    bank = train_singan_bank(faces[:2], TEST_CONFIG, [1, 2], device="cpu")  # the same bank, trained again
    expect = regenerate_images(bank, 0, faces[2], start, 2, [12, 13], sample.noise_gain)
    assert all(np.array_equal(a, b) for a, b in zip(out[0][1], expect))
    own = regenerate_images(bank, 0, faces[0], start, 2, [12, 13], sample.noise_gain)
    assert not np.array_equal(own[0], out[0][1][0])  # the injected image, not the training image, is drawn
    # regenerate_faces is the special case "each member regenerates its own training image"
    _, same = regenerate_faces(faces[:2], TEST_CONFIG, [1, 2], sample, [[10, 11], [20, 21]], device="cpu")
    assert all(np.array_equal(a, b) for a, b in zip(same[0], out[0][0]))
    with pytest.raises(ValueError, match="injection lists"):
        regenerate_injected(faces[:2], TEST_CONFIG, [1, 2], sample, injections[:1], device="cpu")


def test_ssim_to_source_is_one_for_the_source_itself():
    face, other = _faces(2, 32)
    scores = ssim_to_source([face, other], face)
    assert scores[0] == pytest.approx(1.0, abs=1e-6) and abs(scores[1]) < 0.1  # independent noise images


def test_prefect_task_wraps_the_plain_function():
    task = regenerate_faces_task()
    assert task.fn is regenerate_faces and task.retries == 1 and "gpu" in task.tags


# --- quality on a real aligned face (slow) -----------------------------------------------------------------

QUALITY_SIZE_PX = 48


@pytest.fixture(scope="module")
def astronaut_face(astronaut_rgb) -> np.ndarray:
    """The astronaut aligned by the project's aligner to 48 px (5 scales: 25..48 px)."""
    from tasks.align import AlignConfig, FaceAligner

    face = FaceAligner(AlignConfig(image_size_px=QUALITY_SIZE_PX)).align([astronaut_rgb])[0]
    assert not isinstance(face, RejectError), face
    return face.crop


@pytest.fixture(scope="module")
def astronaut_bank(astronaut_face):
    """The 'reduced' preset, every scale trained (so samples can start at N, N-1 and N-2)."""
    bank = train_singan_bank([astronaut_face], "reduced", [0], device="cpu")
    return bank, images_to_tensor([astronaut_face], bank.config)[0]


def _reduced_with_the_design_of(name: str, face: np.ndarray) -> tuple:
    """The 'reduced' budget with a preset's skipped coarse scales and raised first-scale noise amplitude."""
    design = preset(name)
    cfg = dataclasses.replace(preset("reduced"), skip_coarse_scales=design.skip_coarse_scales,
                              skip_noise_amp_factor=design.skip_noise_amp_factor)
    bank = train_singan_bank([face], cfg, [0], device="cpu")
    return bank, images_to_tensor([face], bank.config)[0]


@pytest.fixture(scope="module")
def astronaut_skip_bank(astronaut_face):
    """The same budget with the default preset's design (`fast`: the coarsest scale untrained)."""
    return _reduced_with_the_design_of("fast", astronaut_face)


@pytest.fixture(scope="module")
def astronaut_skip2_bank(astronaut_face):
    """The same budget with `fast_skip2`'s design (two coarsest scales untrained, sampled from N-2)."""
    return _reduced_with_the_design_of("fast_skip2", astronaut_face)


def _shrunk_and_regrown(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    small = torch.nn.functional.interpolate(image[None], size=size, mode="bicubic", antialias=True)
    return torch.nn.functional.interpolate(small, size=image.shape[-2:], mode="bicubic").clamp(-1, 1)


@pytest.mark.slow
def test_reconstruction_reproduces_the_face(astronaut_bank, astronaut_skip_bank):
    # default kind (coarse scales skipped): the path starts from the image shrunk to scale N-1, so the trained
    # scales must add back the detail that shrinking removed
    bank, image = astronaut_skip_bank
    rec_rmse = float(rmse(bank.reconstruct(), image[None])[0])
    start_rmse = float(rmse(_shrunk_and_regrown(image, bank.sizes[bank.first_index - 1]), image[None])[0])
    # every scale trained: the path starts from the fixed noise map z* alone
    full, _ = astronaut_bank
    full_rmse = float(rmse(full.reconstruct(), image[None])[0])
    flat_rmse = float(rmse(image.mean(dim=(1, 2), keepdim=True).expand_as(image)[None], image[None])[0])
    print(f"\nreconstruction RMSE: coarse-skipping bank {rec_rmse:.4f} "
          f"(its input, the image via the finest skipped scale: {start_rmse:.4f}); "
          f"all-scales bank from z* {full_rmse:.4f} (flat mean colour: {flat_rmse:.4f})")
    assert rec_rmse < 0.6 * start_rmse
    assert full_rmse < 0.5 * flat_rmse


@pytest.mark.slow
def test_structure_and_diversity_trade_off_over_start_scales(astronaut_bank):
    bank, image = astronaut_bank
    n, m = bank.coarsest_scale, 8
    stats = {}
    for s in (n, n - 1, n - 2):
        samples = regenerate(bank, 0, image, s, m, list(range(100, 100 + m)))
        ref = image[None].expand_as(samples)
        stats[s] = (float(ssim(samples, ref).mean()), float(diversity(samples, image)), float(rmse(samples, ref).mean()))
        print(f"\nstart N-{n - s}: SSIM to input {stats[s][0]:.3f}, diversity {stats[s][1]:.3f}, RMSE to input {stats[s][2]:.3f}")
    # structure: injecting finer keeps more of the face
    assert stats[n - 2][0] > stats[n - 1][0] > stats[n][0]
    # diversity: samples differ from each other and from the input (not copies), most so from noise at N
    assert all(stats[s][1] > 0.005 and stats[s][2] > 0.01 for s in stats)
    assert stats[n][1] > stats[n - 1][1] > stats[n - 2][1]


@pytest.mark.slow
def test_skipping_coarse_scales_does_not_hurt_samples_from_n_minus_2(astronaut_bank, astronaut_skip2_bank):
    (full, image), (skip, _) = astronaut_bank, astronaut_skip2_bank
    s, m = full.coarsest_scale - 2, 8
    seeds = list(range(200, 200 + m))
    quality = {}
    for name, bank in (("all scales", full), ("skip 2", skip)):
        samples = regenerate(bank, 0, image, s, m, seeds)
        quality[name] = (float(ssim(samples, image[None].expand_as(samples)).mean()),
                         float(patch_realism(samples, image).mean()), float(diversity(samples, image)))
        print(f"\n{name}: SSIM {quality[name][0]:.3f}, patch distance {quality[name][1]:.3f}, diversity {quality[name][2]:.3f}")
    assert quality["skip 2"][0] >= quality["all scales"][0] - 0.02  # as close to the face
    assert quality["skip 2"][1] <= quality["all scales"][1] * 1.1  # as realistic patches
    assert quality["skip 2"][2] > 0.005  # still not copies


@pytest.mark.slow
def test_same_seed_same_samples_other_seed_other_samples(astronaut_bank):
    bank, image = astronaut_bank
    s = bank.coarsest_scale - 2
    a = regenerate(bank, 0, image, s, 2, [1, 2])
    assert torch.equal(a, regenerate(bank, 0, image, s, 2, [1, 2]))
    assert (a - regenerate(bank, 0, image, s, 2, [3, 4])).abs().mean() > 1e-3
