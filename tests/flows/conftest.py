"""One Prefect test harness (a temporary local backend) for every flow test in the session."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def prefect_backend():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def write_synthetic_prepared(root, train_labels=(4, 4, 7, 5), test_labels=(4, 7), size_px: int = 32):
    """A prepared output root made of synthetic faces with known AUs and exact landmarks (no MTCNN needed)."""
    import numpy as np

    from manifests.dataset import encode_png_rgb
    from manifests.schema import make_sample_id, sha256_bytes
    from manifests.writer import Sample, commit_unit
    from tasks.landmarks import flatten_landmarks
    from tasks.synthetic import RenderConfig, random_aus, random_identity, render_face, render_landmarks68

    rng = np.random.default_rng(0)
    for split, labels in (("train", train_labels), ("test", test_labels)):
        samples = []
        for i, label in enumerate(labels):
            aus = random_aus(rng)
            identity, config = random_identity(100 * (split == "test") + i), RenderConfig(image_size_px=size_px)
            rgb = render_face(identity, aus, config)
            png = encode_png_rgb(rgb)
            sha = sha256_bytes(png)
            row = {"sample_id": make_sample_id(sha, "original"), "split": split, "source_id": f"{split}/{i}",
                   "source_sha256": sha, "stage": "original", "edit_kind": "none", "label": label,
                   "label_kind": "original", "au_source": [float(a) for a in aus],
                   # The renderer's exact points, as prepare reads them from the OpenFace CSVs it writes.
                   "landmarks": flatten_landmarks(render_landmarks68(identity, aus, config)), "landmark_source": "openface",
                   "width": size_px, "height": size_px, "model_versions": "test", "run_id": "prep"}
            samples.append(Sample(png, row))
        commit_unit(root, split=split, run_name="prepare", unit_id=f"{split}-00000", samples=samples)
    return root


def write_tiny_ganimation(directory, size_px: int = 32) -> str:
    """A randomly initialised tiny GANimation checkpoint (seeded)."""
    import torch

    from models.ganimation import Critic, GANimationConfig, Generator
    from tasks.ganimation import save_ganimation

    torch.manual_seed(0)
    config = GANimationConfig(image_size_px=size_px, conv_dim=8, repeat_num=1, critic_conv_dim=8, critic_layers=3)
    return str(save_ganimation(directory, Generator(config), Critic(config)))


@pytest.fixture(scope="session")
def synthetic_prepared(tmp_path_factory):
    return write_synthetic_prepared(tmp_path_factory.mktemp("synthetic-prepared"))


@pytest.fixture(scope="session")
def tiny_ganimation(tmp_path_factory):
    return write_tiny_ganimation(tmp_path_factory.mktemp("tiny-ganimation") / "g")


@pytest.fixture(scope="session")
def tiny_folders_dataset(tmp_path_factory):
    """Class folders of 12 small random PNGs (use --align none) and one truncated file, which prepare rejects."""
    import numpy as np

    from manifests.dataset import encode_png_rgb

    root = tmp_path_factory.mktemp("tiny-folders")
    rng = np.random.default_rng(0)
    for i, name in enumerate(["Happiness", "Sadness", "Neutral", "Anger"] * 3):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"face{i:02d}.png").write_bytes(encode_png_rgb(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)))
    (root / "Happiness" / "broken.png").write_bytes(encode_png_rgb(np.zeros((40, 40, 3), np.uint8))[:60])
    return root
