"""Checkpoint files: tensors in safetensors + a JSON card (class, version, config); never overwritten."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1
TENSORS_FILE = "model.safetensors"
CARD_FILE = "config.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, or not of the expected kind."""


def config_to_dict(config: Any) -> dict[str, Any]:
    """A frozen config dataclass as JSON-able dict (tuples become lists)."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"expected a config dataclass, got {type(config).__name__}")
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a config dataclass, refusing unknown fields and turning lists back into tuples."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise CheckpointError(f"{cls.__name__}: unknown config fields {unknown}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**kwargs)


def config_hash(config: Any) -> str:
    text = json.dumps(config_to_dict(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    directory: str | os.PathLike,
    tensors: dict[str, torch.Tensor],
    *,
    kind: str,
    config: Any,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write `directory` atomically (temp dir + rename). Refuses to overwrite an existing checkpoint."""
    directory = Path(directory)
    if directory.exists():
        raise FileExistsError(f"checkpoint {directory} exists; checkpoints are never overwritten")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    save_file(cpu, str(tmp / TENSORS_FILE))
    card = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "config_class": type(config).__name__,
        "config": config_to_dict(config),
        "config_hash": config_hash(config),
        "tensors_sha256": _file_sha256(tmp / TENSORS_FILE),
        "extra": extra or {},
    }
    with open(tmp / CARD_FILE, "w") as f:
        json.dump(card, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    for name in (TENSORS_FILE,):
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())
    os.rename(tmp, directory)
    _fsync_dir(directory.parent)
    return directory


def load_checkpoint(directory: str | os.PathLike, *, kind: str | None = None, map_location: str = "cpu"):
    """Return (tensors, card). Checks the kind and the tensors' hash; never unpickles anything."""
    directory = Path(directory)
    card_path, tensors_path = directory / CARD_FILE, directory / TENSORS_FILE
    if not card_path.is_file() or not tensors_path.is_file():
        raise CheckpointError(f"{directory} is not a checkpoint (needs {CARD_FILE} and {TENSORS_FILE})")
    card = json.loads(card_path.read_text())
    if kind is not None and card.get("kind") != kind:
        raise CheckpointError(f"{directory} holds a {card.get('kind')!r} checkpoint, expected {kind!r}")
    digest = _file_sha256(tensors_path)
    if card.get("tensors_sha256") != digest:
        raise CheckpointError(f"{tensors_path} does not match the hash in its {CARD_FILE} (corrupt or edited)")
    return load_file(str(tensors_path), device=map_location), card


def read_card(directory: str | os.PathLike) -> dict:
    """A checkpoint's JSON card alone (kind, config, extra), without loading or checking its tensors."""
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a checkpoint (no {CARD_FILE})")
    return json.loads(path.read_text())


def checkpoint_id(directory: str | os.PathLike) -> str:
    """Short content id of a checkpoint (the tensors' hash), recorded in manifests as model version."""
    card = read_card(directory)
    return f"{card['kind']}:{card['tensors_sha256'][:12]}"


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
