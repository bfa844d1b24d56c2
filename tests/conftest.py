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
