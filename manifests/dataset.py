"""The torch Dataset downstream FER training reads: random access to shard members by byte range."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable

import cv2
import numpy as np
import pyarrow.compute as pc
import torch
from torch.utils.data import Dataset

from manifests.reader import read_manifest
from manifests.schema import N_AUS


def decode_png_rgb(data: bytes) -> np.ndarray:
    """PNG bytes -> RGB uint8 [H, W, 3]."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("member is not a decodable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encode_png_rgb(rgb: np.ndarray) -> bytes:
    """RGB uint8 [H, W, 3] -> lossless PNG bytes (deterministic for the same pixels)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected uint8 [H, W, 3], got {rgb.dtype} {rgb.shape}")
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def _as_set(value) -> set | None:
    if value is None:
        return None
    if isinstance(value, (str, int)):
        return {value}
    return set(value)


class ManifestDataset(Dataset):
    """(image [3, H, W] float32 0..1, label int, AUs [17] float32 (NaN when unknown), row dict).

    Filters by split / stage / label. Files are opened per process, so DataLoader workers are safe.
    """

    def __init__(
        self,
        out_root: str | os.PathLike,
        split: str | Iterable[str] | None = None,
        stage: str | Iterable[str] | None = None,
        label: int | Iterable[int] | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.root = Path(out_root)
        expr = None
        for col, wanted in (("split", _as_set(split)), ("stage", _as_set(stage)), ("label", _as_set(label))):
            if wanted is not None:
                term = pc.field(col).isin(sorted(wanted))
                expr = term if expr is None else expr & term
        self.table = read_manifest(self.root, filter=expr)
        self.rows: list[dict[str, Any]] = self.table.to_pylist()
        self.transform = transform
        self._handles: dict[str, Any] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.rows)

    def labels(self) -> list[int]:
        return [r["label"] for r in self.rows]

    def read_bytes(self, index: int) -> bytes:
        row = self.rows[index]
        if os.getpid() != self._pid:  # forked worker: do not share file offsets with the parent
            self._handles, self._pid = {}, os.getpid()
        handle = self._handles.get(row["shard"])
        if handle is None:
            handle = self._handles[row["shard"]] = open(self.root / row["shard"], "rb")
        handle.seek(row["offset"])
        return handle.read(row["size"])

    def __getitem__(self, index: int):
        row = self.rows[index]
        rgb = decode_png_rgb(self.read_bytes(index))
        image = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)  # [3, H, W]
        if self.transform is not None:
            image = self.transform(image)
        aus = row["au_source"] if row["stage"] == "original" else row["au_target"]
        au_tensor = torch.tensor(aus, dtype=torch.float32) if aus is not None else torch.full((N_AUS,), float("nan"))
        return image, int(row["label"]), au_tensor, row

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    def close(self) -> None:
        for h in self._handles.values():
            h.close()
        self._handles = {}


def collate_samples(batch):
    """DataLoader collate that keeps rows as a list of dicts."""
    images, labels, aus, rows = zip(*batch)
    return torch.stack(images), torch.tensor(labels), torch.stack(aus), list(rows)
