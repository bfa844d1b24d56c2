"""Shared fixtures: real faces that ship inside installed packages, and an isolated Prefect home."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Prefect must never phone home or write into the user's home during tests.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prefect-home-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import numpy as np
import pytest


def load_astronaut() -> np.ndarray:
    """RGB uint8 [512, 512, 3] portrait from scikit-image."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def load_grace_hopper() -> np.ndarray:
    """RGB uint8 [600, 512, 3] portrait from matplotlib's sample data."""
    import matplotlib
    from PIL import Image

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).copy()


def shared_data_dir() -> Path:
    """../shared/data next to the repository: real data for development, absent from a user's clone.
    SINGANIMATION_SHARED_DATA points elsewhere (a git worktree sits away from ../shared)."""
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return Path(os.environ.get("SINGANIMATION_SHARED_DATA", default))


def load_ck48_faces(root: Path, n: int, size_px: int = 128) -> list[tuple[str, np.ndarray]]:
    """(name, RGB uint8 [size, size, 3]) of the first image of the first n CK+48 subjects (by file name):
    48 px grey upsampled (cubic) and repeated to RGB. One face per subject, so no person repeats."""
    import cv2

    by_subject: dict[str, Path] = {}
    for path in sorted(Path(root).glob("*/*.png"), key=lambda p: p.name):
        by_subject.setdefault(path.name.split("_")[0], path)
    out = []
    for subject in sorted(by_subject)[:n]:
        path = by_subject[subject]
        grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        big = cv2.resize(grey, (size_px, size_px), interpolation=cv2.INTER_CUBIC)
        out.append((f"ck48/{path.parent.name}/{path.name}", cv2.cvtColor(big, cv2.COLOR_GRAY2RGB)))
    return out


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real data folder; tests that need it skip with the reason when it is absent."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"{path} is absent (real data for development, not part of a clone; "
                    "set SINGANIMATION_SHARED_DATA to use another copy)")
    return path


@pytest.fixture(scope="session")
def astronaut_rgb() -> np.ndarray:
    return load_astronaut()


@pytest.fixture(scope="session")
def grace_hopper_rgb() -> np.ndarray:
    return load_grace_hopper()


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: tiny models gain nothing from threads, and on a crowded machine
    thread hand-offs cost far more than the maths. Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
