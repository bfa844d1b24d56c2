"""Checkpoint save/load round trips, refusal to overwrite, tamper detection."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from models.checkpoints import (
    CheckpointError,
    checkpoint_id,
    config_from_dict,
    config_hash,
    load_checkpoint,
    save_checkpoint,
)


@dataclasses.dataclass(frozen=True)
class TinyConfig:
    channels: int = 4
    sizes: tuple[int, ...] = (8, 16)


def test_round_trip_keeps_tensors_and_config(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {"w": torch.randn(3, 4, generator=g), "b": torch.arange(5, dtype=torch.int64)}
    cfg = TinyConfig(channels=7)
    out = save_checkpoint(tmp_path / "ck", tensors, kind="tiny", config=cfg, extra={"epoch": 3})
    loaded, card = load_checkpoint(out, kind="tiny")
    assert set(loaded) == {"w", "b"}
    assert torch.equal(loaded["w"], tensors["w"]) and torch.equal(loaded["b"], tensors["b"])
    assert config_from_dict(TinyConfig, card["config"]) == cfg
    assert card["config_hash"] == config_hash(cfg) and card["extra"] == {"epoch": 3}
    assert checkpoint_id(out).startswith("tiny:")


def test_never_overwrites(tmp_path):
    save_checkpoint(tmp_path / "ck", {"w": torch.zeros(1)}, kind="tiny", config=TinyConfig())
    with pytest.raises(FileExistsError):
        save_checkpoint(tmp_path / "ck", {"w": torch.ones(1)}, kind="tiny", config=TinyConfig())
    loaded, _ = load_checkpoint(tmp_path / "ck")
    assert loaded["w"].item() == 0.0


def test_wrong_kind_and_tampering_are_refused(tmp_path):
    out = save_checkpoint(tmp_path / "ck", {"w": torch.zeros(2)}, kind="tiny", config=TinyConfig())
    with pytest.raises(CheckpointError, match="expected 'other'"):
        load_checkpoint(out, kind="other")
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (out / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(out)


def test_unknown_config_fields_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="unknown config fields"):
        config_from_dict(TinyConfig, {"channels": 1, "bogus": 2})
    json.dumps(dataclasses.asdict(TinyConfig()))  # sanity: configs are JSON-able
