"""AU oracle: a small CNN that regresses AU intensities from a face, used to score edits (never the critic)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tasks.synthetic import RENDERED_AUS

CHECKPOINT_KIND = "au_oracle"

DEFAULT_AU_NAMES: tuple[str, ...] = RENDERED_AUS  # the synthetic renderer's AUs


@dataclass(frozen=True)
class AUOracleConfig:
    """image_size_px: input side; au_names: the outputs, in order; stem_width: channels of the stride-2
    stem; widths: channels of each later stage (each halves the resolution); hidden: head width."""

    image_size_px: int = 128
    au_names: tuple[str, ...] = DEFAULT_AU_NAMES
    stem_width: int = 24
    widths: tuple[int, ...] = (32, 48, 64, 96)
    hidden: int = 256

    def __post_init__(self) -> None:
        if not self.au_names:
            raise ValueError("AUOracleConfig.au_names is empty")
        if len(set(self.au_names)) != len(self.au_names):
            raise ValueError(f"AUOracleConfig.au_names repeats a name: {self.au_names}")
        if self.stem_width < 1 or not self.widths or any(w < 1 for w in self.widths):
            raise ValueError(f"AUOracleConfig: stem_width={self.stem_width}, widths={self.widths}: "
                             f"need positive widths and at least one stage")
        if self.hidden < 1:
            raise ValueError(f"AUOracleConfig.hidden={self.hidden}: must be >= 1")
        if self.image_size_px % self.downsample or self.image_size_px // self.downsample < 2:
            raise ValueError(f"AUOracleConfig: image_size_px={self.image_size_px} must be a multiple of "
                             f"{self.downsample} (stem + {len(self.widths)} stages, each /2) and leave >= 2 px")

    @property
    def n_aus(self) -> int:
        return len(self.au_names)

    @property
    def downsample(self) -> int:
        return 2 ** (1 + len(self.widths))


def _stage(c_in: int, c_out: int) -> nn.Sequential:
    # conv at the stage's resolution, then a stride-2 conv: keeps fine geometry (lid and brow positions).
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class AUOracle(nn.Module):
    """Images [B, 3, S, S] in [-1, 1] -> AU intensities [B, len(au_names)] in 0..1."""

    def __init__(self, config: AUOracleConfig = AUOracleConfig()):
        super().__init__()
        self.config = config
        channels = (config.stem_width,) + tuple(config.widths)
        # A stride-2 stem: full-resolution convolutions would cost most of the compute for little gain.
        stem = nn.Sequential(nn.Conv2d(3, config.stem_width, 3, stride=2, padding=1, bias=False),
                             nn.BatchNorm2d(config.stem_width), nn.ReLU(inplace=True))
        self.features = nn.Sequential(stem, *(_stage(a, b) for a, b in zip(channels[:-1], channels[1:])))
        final_px = config.image_size_px // config.downsample
        # Flatten rather than pool: where a feature is (brow height, mouth corner height) is the signal.
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(config.widths[-1] * final_px * final_px, config.hidden), nn.ReLU(inplace=True),
            nn.Linear(config.hidden, config.n_aus),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        s = self.config.image_size_px
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, s, s):
            raise ValueError(f"AUOracle expects images [B, 3, {s}, {s}] in [-1, 1], got {tuple(images.shape)}")
        return torch.sigmoid(self.head(self.features(images)))  # [B, K]
