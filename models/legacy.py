"""The one converter for published GANimation checkpoints (official code and ganimation_replicate)."""
from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch

from models.ganimation import N_DOWNSAMPLINGS, Critic, GANimationConfig, Generator

FORMATS = ("official", "replicate")
PARTS = ("generator", "critic")
_DATA_PARALLEL_PREFIX = "module."
# PyTorch 0.3 InstanceNorm kept running statistics even though they are never used in training mode.
_STALE_NORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


class LegacyCheckpointError(ValueError):
    """A published checkpoint that does not match the expected layout; names every offending key."""

    def __init__(self, message: str, missing: list[str] = (), unexpected: list[str] = (),
                 wrong_shape: list[str] = ()):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.wrong_shape = list(wrong_shape)


def _generator_module_map(fmt: str, repeat_num: int) -> tuple[dict[str, str], list[str]]:
    """Our module path -> published module path for every conv and norm; plus published norm paths."""
    ours: dict[str, str] = {}
    trunk = "main" if fmt == "official" else "model"
    index = 0  # position in the published nn.Sequential: each conv/norm/ReLU triple takes 3 slots

    def triple(our_prefix: str) -> None:
        nonlocal index
        ours[f"{our_prefix}.conv"] = f"{trunk}.{index}"
        ours[f"{our_prefix}.norm"] = f"{trunk}.{index + 1}"
        index += 3

    triple("stem")
    for i in range(N_DOWNSAMPLINGS):
        triple(f"down.{i}")
    for k in range(repeat_num):
        block = f"{trunk}.{index}.main" if fmt == "official" else f"{trunk}.{index}.conv_block"
        # Inside a block: conv, norm, ReLU, conv, norm (zero padding, no dropout in either version).
        for our_name, slot in (("conv1", 0), ("norm1", 1), ("conv2", 3), ("norm2", 4)):
            ours[f"blocks.{k}.{our_name}"] = f"{block}.{slot}"
        index += 1
    for i in range(N_DOWNSAMPLINGS):
        triple(f"up.{i}")
    if fmt == "official":
        ours["colour_head"], ours["attention_head"] = "img_reg.0", "attetion_reg.0"  # (sic) as published
    else:
        ours["colour_head"], ours["attention_head"] = "color_top.0", "au_top.0"
    norms = [published for our, published in ours.items() if our.rsplit(".", 1)[-1].startswith("norm")]
    return ours, norms


def _critic_module_map(fmt: str, critic_layers: int) -> tuple[dict[str, str], list[str]]:
    trunk = "main" if fmt == "official" else "model"
    # Each conv is followed by a LeakyReLU, so convs sit at even positions of the Sequential.
    ours = {f"layers.{i}": f"{trunk}.{2 * i}" for i in range(critic_layers)}
    if fmt == "official":
        ours["realness_head"], ours["au_head"] = "conv1", "conv2"
    else:
        ours["realness_head"], ours["au_head"] = "dis_top", "aus_top"
    return ours, []


def expected_keys(fmt: str, part: str, config: GANimationConfig) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Published key -> (our key, expected shape) for one part of one published format."""
    _check_format(fmt, part, config)
    with torch.device("meta"):  # shapes only; allocates nothing
        module = Generator(config) if part == "generator" else Critic(config)
    module_map, _ = (_generator_module_map(fmt, config.repeat_num) if part == "generator"
                     else _critic_module_map(fmt, config.critic_layers))
    mapping = {}
    for our_key, tensor in module.state_dict().items():
        our_module, leaf = our_key.rsplit(".", 1)
        mapping[f"{module_map[our_module]}.{leaf}"] = (our_key, tuple(tensor.shape))
    return mapping


def convert_state_dict(
    state_dict: Mapping[str, object], *, fmt: str, part: str, config: GANimationConfig, source: str = "state_dict",
) -> dict[str, torch.Tensor]:
    """Map a published state_dict onto our module's keys, checking every key and shape.

    Strips DataParallel `module.` prefixes and drops PyTorch-0.3 InstanceNorm running buffers;
    anything else that does not match raises one LegacyCheckpointError naming every missing,
    unexpected and wrong-shaped key. Tensors come back as float32 on the CPU.
    """
    expected = expected_keys(fmt, part, config)
    module_map, norm_paths = (_generator_module_map(fmt, config.repeat_num) if part == "generator"
                              else _critic_module_map(fmt, config.critic_layers))
    stale = {f"{path}.{leaf}" for path in norm_paths for leaf in _STALE_NORM_BUFFERS}
    present: dict[str, object] = {}
    for key, value in state_dict.items():
        key = key[len(_DATA_PARALLEL_PREFIX):] if key.startswith(_DATA_PARALLEL_PREFIX) else key
        if key not in stale:
            present[key] = value
    missing = [key for key in expected if key not in present]  # in the published layer order
    unexpected = sorted(set(present) - set(expected), key=_natural)
    wrong_shape = []
    for key in (k for k in expected if k in present):
        value, want = present[key], expected[key][1]
        if not isinstance(value, torch.Tensor):
            wrong_shape.append(f"{key}: not a tensor ({type(value).__name__}), expected shape {want}")
        elif tuple(value.shape) != want:
            wrong_shape.append(f"{key}: shape {tuple(value.shape)}, expected {want}")
        elif not value.is_floating_point():
            wrong_shape.append(f"{key}: dtype {value.dtype}, expected a floating-point tensor")
        elif not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            wrong_shape.append(f"{key}: {bad} NaN/inf value(s); the weights are damaged")
    if missing or unexpected or wrong_shape:
        lines = [f"{fmt} {part} checkpoint {source} does not match {config}:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + "; ".join(items))
        raise LegacyCheckpointError("\n".join(lines), missing, unexpected, wrong_shape)
    return {our_key: present[key].detach().to("cpu", torch.float32).clone() for key, (our_key, _) in expected.items()}


def load_published_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a published .pth file without unpickling arbitrary objects."""
    if os.path.getsize(path) == 0:
        raise LegacyCheckpointError(f"{path} is an empty file (0 bytes): download or copy it again")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, or one that holds more than tensors
        raise LegacyCheckpointError(f"cannot read {path} as a weights-only state_dict: {_load_reason(exc)}") from exc
    if not isinstance(data, Mapping) or not all(isinstance(k, str) for k in data):
        raise LegacyCheckpointError(f"{path} does not hold a state_dict (got {type(data).__name__})")
    return dict(data)


def _load_reason(exc: Exception) -> str:
    """torch's reason, without its advice to re-load with weights_only=False (which would run code from the file)."""
    text = str(exc)
    if "Weights only load failed" in text:
        found = re.search(r"(Unsupported global: GLOBAL \S+|Unsupported operand \S+|[A-Za-z]+ \S* ?is not supported)", text)
        what = found.group(1) if found else "objects other than tensors"
        return (f"the file holds {what}, not only tensors; this project never unpickles code from a checkpoint. "
                "Save the weights as a plain state_dict of tensors (torch.save(model.state_dict(), path)) "
                "where you trust the code, and import that file")
    return f"{type(exc).__name__}: {text}" if text else f"{type(exc).__name__} (truncated or not a torch file)"


def convert_checkpoint_file(
    path: str | os.PathLike, *, fmt: str, part: str, config: GANimationConfig,
) -> dict[str, torch.Tensor]:
    return convert_state_dict(load_published_state_dict(path), fmt=fmt, part=part, config=config, source=str(path))


def _check_format(fmt: str, part: str, config: GANimationConfig) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    if config.norm_layout != fmt:
        raise ValueError(f"{fmt} checkpoints need norm_layout={fmt!r}, config has {config.norm_layout!r}")
    if config.upsample != "transposed":
        raise ValueError("published checkpoints use transposed-conv upsampling; config has upsample="
                         f"{config.upsample!r}")


def _natural(key: str) -> tuple:
    """Sort main.10 after main.9."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in key.split("."))
