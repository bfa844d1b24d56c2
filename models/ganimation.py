"""GANimation generator and critic (Pumarola et al. 2018); sizes and norm layout come from one frozen config."""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

NORM_LAYOUTS = ("official", "replicate")
UPSAMPLE_MODES = ("transposed", "resize_conv")
N_DOWNSAMPLINGS = 2  # the generator halves the resolution twice, as published
LEAKY_SLOPE = 0.01  # critic LeakyReLU slope, as published


@dataclasses.dataclass(frozen=True)
class GANimationConfig:
    """Architecture of a GANimation generator + critic pair.

    norm_layout: "official" (albertpumarola/GANimation: InstanceNorm with affine parameters,
        trunk convs without bias) or "replicate" (donydchen/ganimation_replicate: InstanceNorm
        without parameters, trunk convs with bias). Both compute the same function family.
    upsample: "transposed" (published: 4x4 stride-2 transposed convs) or "resize_conv"
        (nearest x2 then 3x3 conv; avoids checkerboard artifacts; cannot load published weights).
    """

    image_size_px: int = 128
    n_aus: int = 17
    conv_dim: int = 64  # generator channels after the stem; doubled by each downsampling
    repeat_num: int = 6  # residual blocks in the bottleneck
    norm_layout: str = "official"
    upsample: str = "transposed"
    critic_conv_dim: int = 64  # channels of the first critic conv; doubled by each later one
    critic_layers: int = 6  # 4x4 stride-2 convs in the critic
    # Published: the AUs enter only as tiled input planes. Each plane is constant, so after the stem
    # conv its response is a per-channel constant away from the 3-pixel border, which the stem's
    # InstanceNorm subtracts: the target survives only through what the border band adds to each
    # channel's mean and variance, an indirect signal. au_film adds FiLM to every residual block
    # (per-channel scale and shift after each norm, linear in the AUs, zero at init, so training
    # starts from the published function). Cannot hold published weights (they have no FiLM layers).
    au_film: bool = False

    def __post_init__(self) -> None:
        if self.norm_layout not in NORM_LAYOUTS:
            raise ValueError(f"norm_layout must be one of {NORM_LAYOUTS}, got {self.norm_layout!r}")
        if self.upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {self.upsample!r}")
        for name in ("image_size_px", "n_aus", "conv_dim", "critic_conv_dim", "critic_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.repeat_num < 0:
            raise ValueError(f"repeat_num must be >= 0, got {self.repeat_num}")
        stride_px = 2 ** max(N_DOWNSAMPLINGS, self.critic_layers)
        if self.image_size_px % stride_px:
            raise ValueError(
                f"image_size_px {self.image_size_px} must be divisible by {stride_px} "
                f"(2 generator downsamplings and {self.critic_layers} critic layers)")

    @property
    def critic_au_kernel_px(self) -> int:
        """Kernel of the critic's AU head: the critic's final feature map is this many pixels wide."""
        return self.image_size_px // 2 ** self.critic_layers

    @property
    def critic_channels(self) -> int:
        return self.critic_conv_dim * 2 ** (self.critic_layers - 1)


class GeneratorOutput(NamedTuple):
    image: torch.Tensor  # [B, 3, S, S] in [-1, 1]: attention * input + (1 - attention) * colour
    attention: torch.Tensor  # [B, 1, S, S] in [0, 1]; 1 keeps the input pixel
    colour: torch.Tensor  # [B, 3, S, S] in [-1, 1]


class CriticOutput(NamedTuple):
    realness: torch.Tensor  # [B, 1, s, s] patch scores (WGAN, no sigmoid), s = S / 2**critic_layers
    aus: torch.Tensor  # [B, n_aus] AU regression


def compose(images: torch.Tensor, attention: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """GANimation's output: A multiplies the input, so A -> 1 keeps the source pixel."""
    return attention * images + (1.0 - attention) * colour


def _norm(channels: int, layout: str) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, affine=layout == "official", track_running_stats=False)


class ConvNormReLU(nn.Module):
    def __init__(self, conv: nn.Module, channels: int, layout: str):
        super().__init__()
        self.conv = conv
        self.norm = _norm(channels, layout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


class ResidualBlock(nn.Module):
    """Two 3x3 convs; no activation after the add (as published). With n_film_aus > 0, each norm's
    output is modulated by the AUs: h * (1 + gamma(aus)) + beta(aus), gamma and beta linear, zero at init."""

    def __init__(self, channels: int, layout: str, n_film_aus: int = 0):
        super().__init__()
        bias = layout == "replicate"
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=bias)
        self.norm1 = _norm(channels, layout)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=bias)
        self.norm2 = _norm(channels, layout)
        self.film = None
        if n_film_aus:
            self.film = nn.Linear(n_film_aus, 4 * channels)  # gamma1, beta1, gamma2, beta2
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, aus: torch.Tensor | None = None) -> torch.Tensor:
        if self.film is None:
            h = F.relu(self.norm1(self.conv1(x)))
            return x + self.norm2(self.conv2(h))
        gamma1, beta1, gamma2, beta2 = self.film(aus)[:, :, None, None].chunk(4, dim=1)  # each [B, C, 1, 1]
        h = F.relu(self.norm1(self.conv1(x)) * (1 + gamma1) + beta1)
        return x + self.norm2(self.conv2(h)) * (1 + gamma2) + beta2


class UpBlock(ConvNormReLU):
    """x2 upsampling: a transposed conv (published) or nearest resize then a 3x3 conv."""

    def __init__(self, in_channels: int, out_channels: int, layout: str, mode: str):
        bias = layout == "replicate"
        if mode == "transposed":
            conv = nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, bias=bias)
        else:
            conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)
        super().__init__(conv, out_channels, layout)
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "resize_conv":
            return F.relu(self.norm(_resize_conv(x, self.conv)))
        return super().forward(x)


# Row taps of nearest-x2-then-3x3-conv, per output phase: an even output row 2i reads input rows
# (i-1, i) with kernel rows (0, 1+2); an odd row 2i+1 reads (i, i+1) with kernel rows (0+1, 2).
_PHASE_TAPS = (((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)),
               ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0)))  # [phase, tap, kernel row]


def _resize_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Nearest x2 upsampling then a 3x3 zero-padded conv, computed at the input resolution.

    Each of the 4 output phases is a 2x2 conv of the input with summed kernel taps, so the
    upsampled tensor is never built and the work falls from 36 to 16 taps per input pixel.
    """
    weight = conv.weight  # [O, I, 3, 3]
    out_ch, in_ch = weight.shape[:2]
    taps = weight.new_tensor(_PHASE_TAPS)
    phase_kernels = torch.einsum("pua,qvb,oiab->opqiuv", taps, taps, weight)  # [O, 2, 2, I, 2, 2]
    y = F.conv2d(F.pad(x, (1, 1, 1, 1)), phase_kernels.reshape(out_ch * 4, in_ch, 2, 2))  # [B, 4*O, H+1, W+1]
    batch, _, height, width = x.shape
    y = y.view(batch, out_ch, 2, 2, height + 1, width + 1)
    # Phase (p, q) of output pixel (2i + p, 2j + q) sits at y[:, :, p, q, i + p, j + q].
    rows = [torch.stack([y[:, :, p, q, p:p + height, q:q + width] for q in (0, 1)], dim=-1) for p in (0, 1)]
    out = torch.stack(rows, dim=-3).reshape(batch, out_ch, 2 * height, 2 * width)  # [B, O, 2H, 2W]
    return out if conv.bias is None else out + conv.bias[:, None, None]


class Generator(nn.Module):
    """Image + target AUs -> (composited image, attention A, colour C)."""

    def __init__(self, config: GANimationConfig):
        super().__init__()
        self.config = config
        layout, bias = config.norm_layout, config.norm_layout == "replicate"
        dim = config.conv_dim
        self.stem = ConvNormReLU(nn.Conv2d(3 + config.n_aus, dim, 7, padding=3, bias=bias), dim, layout)
        down = []
        for _ in range(N_DOWNSAMPLINGS):
            down.append(ConvNormReLU(nn.Conv2d(dim, dim * 2, 4, stride=2, padding=1, bias=bias), dim * 2, layout))
            dim *= 2
        self.down = nn.ModuleList(down)
        film = config.n_aus if config.au_film else 0
        self.blocks = nn.ModuleList(ResidualBlock(dim, layout, film) for _ in range(config.repeat_num))
        up = []
        for _ in range(N_DOWNSAMPLINGS):
            up.append(UpBlock(dim, dim // 2, layout, config.upsample))
            dim //= 2
        self.up = nn.ModuleList(up)
        # Both heads are bias-free in both published layouts.
        self.colour_head = nn.Conv2d(dim, 3, 7, padding=3, bias=False)
        self.attention_head = nn.Conv2d(dim, 1, 7, padding=3, bias=False)

    def forward(self, images: torch.Tensor, aus: torch.Tensor) -> GeneratorOutput:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        batch, _, height, width = images.shape
        if aus.shape != (batch, self.config.n_aus):
            raise ValueError(f"aus must be [{batch}, {self.config.n_aus}], got {tuple(aus.shape)}")
        if height % 4 or width % 4:
            raise ValueError(f"image height and width must be divisible by 4, got {height}x{width}")
        aus = aus.to(images.dtype)
        h = F.relu(self.stem.norm(self._stem_conv(images, aus)))  # [B, conv_dim, H, W]
        for layer in self.down:
            h = layer(h)
        for block in self.blocks:
            h = block(h, aus)
        for layer in self.up:
            h = layer(h)  # back to [B, conv_dim, H, W]
        colour = torch.tanh(self.colour_head(h))
        attention = torch.sigmoid(self.attention_head(h))
        return GeneratorOutput(compose(images, attention, colour), attention, colour)

    def _stem_conv(self, images: torch.Tensor, aus: torch.Tensor) -> torch.Tensor:
        """The published 7x7 conv over [image, AUs tiled over H x W], computed without tiling.

        Each AU plane is constant, so its response at a pixel is the AU value times the sum of the
        kernel taps that fall inside the image (zero padding): a separable row x column mask. This
        gives the same result as convolving the 20-channel input, at a fraction of the cost.
        """
        conv = self.stem.conv
        kernel, (height, width) = conv.weight.shape[-1], images.shape[-2:]
        out = F.conv2d(images, conv.weight[:, :3], conv.bias, padding=conv.padding)  # [B, D, H, W]
        per_tap = torch.einsum("bc,ocij->boij", aus, conv.weight[:, 3:])  # [B, D, k, k]
        rows = _taps_inside(height, kernel, images)  # [H, k]
        cols = _taps_inside(width, kernel, images)  # [W, k]
        per_row = torch.einsum("boij,yi->boyj", per_tap, rows)  # [B, D, H, k]
        return out + torch.einsum("boyj,xj->boyx", per_row, cols)


def _taps_inside(size: int, kernel: int, like: torch.Tensor) -> torch.Tensor:
    """[size, kernel] mask: 1 where tap j of a centred kernel at position y reads inside [0, size)."""
    offsets = torch.arange(kernel, device=like.device) - kernel // 2
    read = torch.arange(size, device=like.device)[:, None] + offsets[None, :]
    return ((read >= 0) & (read < size)).to(like.dtype)


class Critic(nn.Module):
    """PatchGAN-style WGAN critic with an AU regression head; no normalisation (needed for WGAN-GP)."""

    def __init__(self, config: GANimationConfig):
        super().__init__()
        self.config = config
        layers, channels = [], 3
        for i in range(config.critic_layers):
            out_channels = config.critic_conv_dim * 2 ** i
            layers.append(nn.Conv2d(channels, out_channels, 4, stride=2, padding=1, bias=True))
            channels = out_channels
        self.layers = nn.ModuleList(layers)
        self.realness_head = nn.Conv2d(channels, 1, 3, padding=1, bias=False)
        self.au_head = nn.Conv2d(channels, config.n_aus, config.critic_au_kernel_px, bias=False)

    def forward(self, images: torch.Tensor) -> CriticOutput:
        size = self.config.image_size_px
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"critic input must be [B, 3, {size}, {size}], got {tuple(images.shape)}")
        h = images
        for layer in self.layers:
            h = F.leaky_relu(layer(h), LEAKY_SLOPE)
        return CriticOutput(self.realness_head(h), self.au_head(h).flatten(1))


def init_weights(module: nn.Module, generator: torch.Generator | None = None, std: float = 0.02) -> None:
    """Seeded init: conv weights N(0, std) and biases 0 as the official code; norm scale 1 / shift 0.

    The norm scales differ from what the official code got: it ran on PyTorch 0.3, whose affine norm
    layers initialised their scales U(0, 1) (shifts 0); scale 1 is today's PyTorch default. Imported
    official weights are unaffected (they carry their trained scales).
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std, generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.InstanceNorm2d) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
