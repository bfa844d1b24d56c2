"""Training views over a prepared manifest: (image in [-1, 1], AU vector) pairs for GANimation and the oracle."""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from manifests.dataset import ManifestDataset
from manifests.reader import read_manifest
from manifests.schema import stable_hash


class ManifestAUDataset(torch.utils.data.Dataset):
    """Train-split originals that carry AUs: item i is (image float [3, S, S] in [-1, 1], aus float [17] 0..1).

    `landmarks` [N, 68, 2] holds each face's 68 points in the (resized) S px crop, NaN for a face without them
    (an older prepared part, or no detection): the warp teacher of train_ganimation skips those faces.
    """

    def __init__(self, prepared: str | os.PathLike, image_size_px: int, split: str = "train"):
        self.base = ManifestDataset(prepared, split=split, stage="original")
        self.index = [i for i, r in enumerate(self.base.rows) if r["au_source"] is not None]
        if not self.index:
            raise ValueError(f"{prepared} has no {split} originals with AUs: GANimation needs AU-labelled faces")
        self.image_size_px = image_size_px
        self.aus = torch.tensor(np.array([self.base.rows[i]["au_source"] for i in self.index], np.float32))  # [N, 17]
        self.landmarks = torch.tensor(np.stack([_landmarks_at(self.base.rows[i], image_size_px)
                                                for i in self.index]))  # [N, 68, 2]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, _, _, _ = self.base[self.index[i]]  # [3, H, W] in 0..1
        if image.shape[-1] != self.image_size_px or image.shape[-2] != self.image_size_px:
            image = F.interpolate(image[None], size=(self.image_size_px,) * 2, mode="area")[0]
        return image * 2.0 - 1.0, self.aus[i]


def _landmarks_at(row: dict, image_size_px: int) -> np.ndarray:
    """A row's landmarks [68, 2] scaled from its crop (width px) to image_size_px; all NaN when it has none."""
    points = row.get("landmarks")
    if points is None or not row.get("width"):
        return np.full((68, 2), np.nan, np.float32)
    scale = image_size_px / float(row["width"])
    # Pixel-centre coordinates: the crop spans -0.5 .. width - 0.5 before and -0.5 .. S - 0.5 after.
    return ((np.asarray(points, np.float64).reshape(68, 2) + 0.5) * scale - 0.5).astype(np.float32)


def manifest_id(prepared: str | os.PathLike) -> str:
    """Content id of a prepared dataset: hash of its sorted sample ids and image hashes."""
    table = read_manifest(prepared, columns=["sample_id", "sha256"])
    pairs = sorted(zip(table.column("sample_id").to_pylist(), table.column("sha256").to_pylist()))
    return stable_hash(pairs, 16)
