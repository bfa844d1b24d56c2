"""SinGAN (Shaham et al., ICCV 2019) as a bank of K independent single-image GANs trained in one pass."""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.metrics import diversity, patch_realism, rmse, ssim

# Scales are named as in the paper: s = N is the coarsest, s = 0 the finest (the full image).
# Lists inside this module are ordered coarsest first, so list index i holds scale s = N - i.
DEFAULT_START_OFFSET = 1  # regenerate from N - 1 unless told otherwise (issue 14: N - 2 gave near-copies)


@dataclass(frozen=True)
class SinGANConfig:
    """Everything that decides what a SinGAN learns; the `official` preset holds tamarott/SinGAN's defaults."""

    # image pyramid
    scale_factor: float = 0.75  # nominal ratio between neighbouring scales (adjusted so the coarsest hits min_size_px)
    min_size_px: int = 25  # shorter side of the coarsest scale
    max_size_px: int = 250  # longer side of the finest scale; larger images are resized down first
    # networks (generator and critic share the layout)
    num_blocks: int = 5  # conv layers per net: (num_blocks - 1) x [conv, BatchNorm, LeakyReLU] + a conv tail
    kernel_px: int = 3
    base_channels: int = 32  # channels at the coarsest scale
    channels_double_every: int = 4  # scales (counted from the coarsest) between channel doublings
    max_channels: int = 128
    lrelu_slope: float = 0.2
    init_from_coarser: bool = True  # start a scale from the coarser scale's weights when the widths match
    # losses
    rec_weight: float = 10.0  # alpha: weight of the reconstruction loss
    gp_weight: float = 0.1  # WGAN-GP gradient-penalty weight
    noise_amp_factor: float = 0.1  # noise amplitude of a scale = factor x RMSE(real, upsampled coarser reconstruction)
    # optimisation (per scale)
    iters_per_scale: int = 2000
    d_steps: int = 3
    g_steps: int = 3
    lr_g: float = 5e-4
    lr_d: float = 5e-4
    adam_betas: tuple[float, float] = (0.5, 0.999)
    lr_decay_at: float = 0.8  # fraction of iters_per_scale after which lr is multiplied by lr_decay_gamma
    lr_decay_gamma: float = 0.1
    # cost levers (all off in `official`)
    skip_coarse_scales: int = 0  # coarsest scales left untrained; regeneration can then start at N - skip at most
    skip_noise_amp_factor: float = 0.0  # >0: noise amplitude factor of the first trained scale when skipping
    #                                     (it stands in for the coarser scales' randomness); 0: noise_amp_factor
    channels_last: bool = False  # CUDA only: NHWC memory layout
    bf16_autocast: bool = False  # CUDA only: bf16 autocast for the forward passes

    def __post_init__(self) -> None:
        if not 0 < self.scale_factor < 1:
            raise ValueError(f"scale_factor must be in (0, 1), got {self.scale_factor}")
        if self.num_blocks < 2 or self.kernel_px % 2 == 0:
            raise ValueError("need num_blocks >= 2 and an odd kernel_px")
        if self.iters_per_scale < 0 or self.d_steps < 1 or self.g_steps < 1:
            raise ValueError("need iters_per_scale >= 0 (0: a warm start used as it is), d_steps and g_steps >= 1")
        if self.skip_coarse_scales < 0:
            raise ValueError("skip_coarse_scales must be >= 0")
        if self.min_size_px <= 2 * self.pad_px:
            raise ValueError(f"min_size_px={self.min_size_px} leaves the critic no output: its "
                             f"{self.num_blocks} valid convs of {self.kernel_px} px eat {2 * self.pad_px} px")

    @property
    def pad_px(self) -> int:
        """Zero padding added around a generator's input so its valid convs return the input size."""
        return (self.kernel_px - 1) // 2 * self.num_blocks


PRESETS: dict[str, SinGANConfig] = {
    # tamarott/SinGAN's published defaults (config.py + training.py), for honest cost comparisons.
    "official": SinGANConfig(),
    # Default for the pipeline, chosen from the diversity curve of issue 14 (docs/singan-diversity.md): a
    # twentieth of the official iterations, no channel doubling, only the coarsest scale left untrained, so
    # regeneration can start at N-1 (the face injected at the coarsest scale's size). N-1, the first trained
    # scale, learns on that injected face at 120x the usual noise amplitude (it stands in for the randomness
    # of the skipped scale; 12 gave twice the visible diversity of 3 at the same cost). One expanded source
    # (3 edits, 2 regenerations each) costs 5x less CPU than with `fast_skip2`, the default before it, with
    # one SinGAN per source instead of per edit.
    "fast": SinGANConfig(iters_per_scale=100, channels_double_every=1000, skip_coarse_scales=1,
                         skip_noise_amp_factor=12.0),
    # The default before issue 14: two coarsest scales untrained, 200 iterations; its samples from N-2 are
    # near-copies (blurred pairwise difference 0.002). Kept to reproduce earlier runs.
    "fast_skip2": SinGANConfig(iters_per_scale=200, channels_double_every=1000, skip_coarse_scales=2,
                               skip_noise_amp_factor=3.0),
    # A few minutes on one CPU core for a 48 px face (5 scales, all trained, so N and N-1 can be sampled):
    # the slow quality tests' model.
    "reduced": SinGANConfig(iters_per_scale=300, channels_double_every=1000),
    # Seconds on a CPU for 32-48 px images: unit tests only, learns nothing useful.
    "tiny": SinGANConfig(
        min_size_px=16, num_blocks=3, base_channels=4, channels_double_every=2, max_channels=8,
        iters_per_scale=3, d_steps=2, g_steps=2,
    ),
}


def preset(name: str) -> SinGANConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown SinGAN preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]


def _ceil_px(x: float) -> int:
    # The tiny tolerance keeps float noise (25.000000001) from adding a pixel at the coarsest scale.
    return int(math.ceil(x - 1e-6))


def pyramid_sizes(height_px: int, width_px: int, config: SinGANConfig) -> list[tuple[int, int]]:
    """(height, width) of every scale, coarsest (s = N) first, finest (s = 0) last.

    As tamarott/SinGAN's adjust_scales2image: N = ceil(log_sf(min_size / short side)) (+1 scale count rule,
    minus the scales cut by max_size), then the factor is re-fitted so the coarsest short side is min_size.
    """
    short, long = min(height_px, width_px), max(height_px, width_px)
    if short <= config.min_size_px:
        raise ValueError(f"image {height_px}x{width_px} px: the short side must exceed min_size_px={config.min_size_px}")
    log_sf = math.log(config.scale_factor)
    num_scales = math.ceil(math.log(config.min_size_px / short) / log_sf) + 1
    scales_cut = math.ceil(math.log(min(config.max_size_px, long) / long) / log_sf)
    n = num_scales - scales_cut  # index of the finest scale = N
    resize = min(config.max_size_px / long, 1.0)
    fine_h, fine_w = _ceil_px(height_px * resize), _ceil_px(width_px * resize)
    factor = (config.min_size_px / min(fine_h, fine_w)) ** (1.0 / n)
    return [(_ceil_px(fine_h * factor ** (n - i)), _ceil_px(fine_w * factor ** (n - i))) for i in range(n + 1)]


def scale_channels(index: int, config: SinGANConfig) -> int:
    """Width of the nets at list index `index` (0 = coarsest): doubles every few scales up to the cap."""
    return min(config.base_channels * 2 ** (index // config.channels_double_every), config.max_channels)


def default_start_scale(bank: "SinGANBank") -> int:
    return max(bank.coarsest_scale - DEFAULT_START_OFFSET, 0)


# ---------------------------------------------------------------------------------------------------------
# Networks: K members side by side in the channel dimension, convs with groups=K so members never mix.
# BatchNorm is per channel, hence per member. Tensors are "packed": [B, K * C, H, W], member k owns
# channels k*C:(k+1)*C.


class _GroupedNet(nn.Module):
    """K independent conv stacks: (num_blocks - 1) x [conv, BatchNorm, LeakyReLU] + conv tail (+ tanh)."""

    def __init__(self, members: int, in_ch: int, width: int, out_ch: int, config: SinGANConfig, tanh: bool):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_ch
        for _ in range(config.num_blocks - 1):
            layers += [
                nn.Conv2d(members * c, members * width, config.kernel_px, groups=members, device="meta"),
                nn.BatchNorm2d(members * width, device="meta"),
                nn.LeakyReLU(config.lrelu_slope),
            ]
            c = width
        layers.append(nn.Conv2d(members * c, members * out_ch, config.kernel_px, groups=members, device="meta"))
        if tanh:
            layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)
        self.members = members

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @torch.no_grad()
    def init_weights(self, generators: list[torch.Generator]) -> None:
        """Per member, from its own generator: conv weights N(0, 0.02), conv bias torch's default
        U(+-1/sqrt(fan_in)), BatchNorm weight N(1, 0.02) and bias 0 (the official weights_init)."""
        for module in self.net:
            if isinstance(module, nn.Conv2d):
                w = module.weight.view(self.members, -1, *module.weight.shape[1:])  # [K, Cout, Cin, k, k]
                b = module.bias.view(self.members, -1)
                bound = 1.0 / math.sqrt(module.weight[0].numel())
                for k, g in enumerate(generators):
                    w[k].copy_(_randn(w[k].shape, g, w.dtype) * 0.02)
                    b[k].copy_((_rand(b[k].shape, g, b.dtype) * 2 - 1) * bound)
            elif isinstance(module, nn.BatchNorm2d):
                w = module.weight.view(self.members, -1)
                for k, g in enumerate(generators):
                    w[k].copy_(1 + _randn(w[k].shape, g, w.dtype) * 0.02)
                module.bias.zero_()
                module.reset_running_stats()


class Generator(_GroupedNet):
    """Residual generator of one scale: out = prev + net(zero_pad(amp * z + prev))."""

    def __init__(self, members: int, width: int, config: SinGANConfig):
        super().__init__(members, 3, width, 3, config, tanh=True)
        self.pad_px = config.pad_px

    def forward(self, z: torch.Tensor, prev: torch.Tensor, amp: torch.Tensor) -> torch.Tensor:
        # z, prev: [B, K*3, H, W]; amp: [K] noise amplitude per member
        amp = amp.to(prev.dtype).repeat_interleave(3).view(1, -1, 1, 1)
        x = F.pad(amp * z + prev, [self.pad_px] * 4)
        return prev + self.net(x)


class Critic(_GroupedNet):
    """Markovian patch critic of one scale (WGAN): [B, K*3, H, W] -> scores [B, K, H - 2p, W - 2p]."""

    def __init__(self, members: int, width: int, config: SinGANConfig):
        super().__init__(members, 3, width, 1, config, tanh=False)


def _randn(shape, g: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(shape, generator=g, device=g.device, dtype=dtype)


def _rand(shape, g: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    return torch.rand(shape, generator=g, device=g.device, dtype=dtype)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize (antialiased when shrinking, like the official imresize), clamped to the image range."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=shrink).clamp(-1, 1)


def _pack(x: torch.Tensor) -> torch.Tensor:
    b, k, c, h, w = x.shape  # [B, K, C, H, W] -> [B, K*C, H, W]
    return x.reshape(b, k * c, h, w)


def _per_member(x: torch.Tensor, members: int) -> torch.Tensor:
    """Mean of a packed tensor per member: [B, K*C, H, W] -> [K]."""
    return x.reshape(x.shape[0], members, -1).mean(dim=(0, 2))


# ---------------------------------------------------------------------------------------------------------


class SinGANBank(nn.Module):
    """K independent SinGANs over same-size images: one frozen generator per trained scale, packed by member.

    Buffers: images [K, 3, H, W] (the training images, in [-1, 1]), noise_amps [S, K] (S = N + 1 scales,
    0 where untrained), rec_noise [K, 3, h, w] (the fixed reconstruction noise at the coarsest trained scale;
    zeros unless that is the true coarsest, as in the paper).
    """

    def __init__(self, config: SinGANConfig, num_members: int, sizes: list[tuple[int, int]], first_index: int):
        super().__init__()
        if not 0 <= first_index < len(sizes):
            raise ValueError(f"first trained index {first_index} outside the {len(sizes)} scales")
        self.config = config
        self.num_members = num_members
        self.sizes = [tuple(s) for s in sizes]
        self.first_index = first_index  # list index of the coarsest trained scale
        self.generators = nn.ModuleList()  # generators[j] is list index first_index + j
        self.train_log: list[dict] = []
        h, w = self.sizes[-1]
        self.register_buffer("images", torch.zeros(num_members, 3, h, w))
        self.register_buffer("noise_amps", torch.zeros(len(sizes), num_members))
        self.register_buffer("rec_noise", torch.zeros(num_members, 3, *self.sizes[first_index]))

    @property
    def coarsest_scale(self) -> int:
        """N: the coarsest scale's number (the finest is 0)."""
        return len(self.sizes) - 1

    @property
    def max_start_scale(self) -> int:
        """The coarsest scale regeneration can start from (N unless coarse scales were skipped)."""
        return self.coarsest_scale - self.first_index

    @property
    def is_complete(self) -> bool:
        return self.first_index + len(self.generators) == len(self.sizes)

    def generator(self, index: int) -> Generator:
        return self.generators[index - self.first_index]

    def add_generator(self) -> Generator:
        index = self.first_index + len(self.generators)
        g = Generator(self.num_members, scale_channels(index, self.config), self.config)
        g.to_empty(device=self.images.device).to(self.images.dtype)
        self.generators.append(g)
        return g

    def start_prev(self, images: torch.Tensor, index: int) -> torch.Tensor:
        """What the coarser scales would hand scale `index`: zeros at the coarsest, else the images
        shrunk to the coarser neighbour's size and upsampled back (the official paint2image injection)."""
        if index == 0:
            return torch.zeros(images.shape[0], images.shape[1], *self.sizes[0], device=images.device, dtype=images.dtype)
        return _resize(_resize(images, self.sizes[index - 1]), self.sizes[index])

    @torch.no_grad()
    def member(self, k: int) -> "SinGANBank":
        """A one-member bank holding a copy of member k (the same model it would be if trained alone)."""
        if not 0 <= k < self.num_members:
            raise IndexError(f"member {k} not in a bank of {self.num_members}")
        single = SinGANBank(self.config, 1, self.sizes, self.first_index).to(self.images)
        for _ in self.generators:
            single.add_generator()
        state = {}
        for key, value in self.state_dict().items():
            if key == "noise_amps":
                state[key] = value[:, k : k + 1]
            elif value.ndim == 0:  # BatchNorm's num_batches_tracked: shared, identical for all members
                state[key] = value
            else:
                state[key] = value.view(self.num_members, -1, *value.shape[1:])[k].reshape(-1, *value.shape[1:])
        single.load_state_dict(state)
        single.train_log = list(self.train_log)
        return single.eval()

    @torch.no_grad()
    def reconstruct(self) -> torch.Tensor:
        """The fixed-noise path through every trained scale: [K, 3, H, W], should reproduce `images`."""
        finest = len(self.sizes) - 1
        prev = _reconstruct_prev(self, self.image_pyramid(), finest)
        return _rec_step(self, finest, prev).view(self.num_members, 3, *self.sizes[-1])

    def image_pyramid(self) -> list[torch.Tensor]:
        """The training images at every scale, packed [1, K*3, h, w], coarsest first."""
        packed = _pack(self.images[None])
        return [_resize(packed, size) for size in self.sizes]


def _rec_step(bank: SinGANBank, index: int, prev: torch.Tensor) -> torch.Tensor:
    """One scale on the fixed-noise path: the rec noise at the first trained scale, zero noise after it."""
    z = _pack(bank.rec_noise[None]) if index == bank.first_index else torch.zeros_like(prev)
    return bank.generator(index)(z, prev, bank.noise_amps[index])


def _reconstruct_prev(bank: SinGANBank, pyramid: list[torch.Tensor], index: int) -> torch.Tensor:
    """Input `prev` of scale `index` on the fixed-noise path, packed [1, K*3, h, w]."""
    prev = bank.start_prev(pyramid[-1], bank.first_index)
    for i in range(bank.first_index, index):
        prev = _resize(_rec_step(bank, i, prev), bank.sizes[i + 1])
    return prev


def _member_noise(gens: list[torch.Generator], batch: int, size: tuple[int, int], single_channel: bool, dtype) -> torch.Tensor:
    """Fresh noise for every member from its own generator: [batch, K*3, h, w].

    At the coarsest scale the official code draws one channel and repeats it over RGB (grey noise)."""
    c = 1 if single_channel else 3
    noise = [_randn((batch, c, *size), g, dtype).expand(batch, 3, *size) for g in gens]
    return torch.cat(noise, dim=1)


def _random_prev(
    bank: SinGANBank, images: torch.Tensor, index: int, gens: list[torch.Generator], repeats: int
) -> torch.Tensor:
    """`repeats` inputs `prev` of scale `index` for each of the images (finest size, packed [b, K*3, H, W])
    from the trained coarser scales run on fresh noise (random samples), packed [repeats * b, K*3, h, w],
    repeat-major. The coarser generators are frozen in eval mode, so drawing all of an iteration's samples
    in one batch gives each the same distribution as drawing them one by one."""
    prev = bank.start_prev(images, bank.first_index).repeat(repeats, 1, 1, 1)
    for i in range(bank.first_index, index):
        z = _member_noise(gens, prev.shape[0], bank.sizes[i], i == 0, prev.dtype)
        prev = _resize(bank.generator(i)(z, prev, bank.noise_amps[i]), bank.sizes[i + 1])
    return prev


def _autocast(config: SinGANConfig, device: torch.device):
    if config.bf16_autocast and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _gradient_penalty(critic: Critic, real: torch.Tensor, fake: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
    """WGAN-GP per member [K]: one interpolation weight per member; the gradient norm is taken over each
    member's 3 channels at every pixel, as the official calc_gradient_penalty does."""
    k = len(gens)
    eps = torch.cat([_rand((1,), g, real.dtype) for g in gens]).repeat_interleave(3).view(1, -1, 1, 1)
    mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mix).sum(), mix, create_graph=True)
    norm = grad.float().reshape(grad.shape[0], k, 3, *grad.shape[-2:]).norm(dim=2)  # [B, K, H, W]
    return ((norm - 1) ** 2).mean(dim=(0, 2, 3))


ProgressFn = Callable[[int, int, int], None]  # (scale s, iteration, iterations per scale)


def _replicate(state: dict[str, torch.Tensor], members: int) -> dict[str, torch.Tensor]:
    """A one-member net's state for a K-member net: every member starts from the same weights (the inverse
    of SinGANBank.member); BatchNorm's shared step counter stays a scalar."""
    return {key: value if value.ndim == 0 else value.repeat(members, *([1] * (value.ndim - 1)))
            for key, value in state.items()}


def _train_scale(
    bank: SinGANBank,
    index: int,
    pyramid: list[torch.Tensor],
    gens: list[torch.Generator],
    coarser: tuple[Generator, Critic] | None,
    progress: ProgressFn | None,
    init: tuple[Generator, Critic] | None = None,
    batch: int | None = None,
) -> tuple[Generator, Critic]:
    """Train scale `index` (list index, coarsest 0) of every member at once; freezes and keeps its generator.

    pyramid[i]: [P, K*3, h, w]; P = 1 for a bank (member k's image), P faces for a face prior (K = 1), which
    then trains on `batch` of them per iteration, drawn from gens[0]. init: one-member (generator, critic)
    every member starts from (a warm start from a prior) instead of fresh or coarser-scale weights."""
    cfg, k = bank.config, bank.num_members
    device, dtype = bank.images.device, bank.images.dtype
    width = scale_channels(index, cfg)
    gen = bank.add_generator()
    critic = Critic(k, width, cfg).to_empty(device=device).to(dtype)
    if init is not None:
        gen.load_state_dict(_replicate(init[0].state_dict(), k))
        critic.load_state_dict(_replicate(init[1].state_dict(), k))
    elif cfg.init_from_coarser and coarser is not None and scale_channels(index - 1, cfg) == width:
        gen.load_state_dict(coarser[0].state_dict())
        critic.load_state_dict(coarser[1].state_dict())
    else:
        gen.init_weights(gens)
        critic.init_weights(gens)
    memory = torch.channels_last if cfg.channels_last and device.type == "cuda" else torch.preserve_format
    gen.to(memory_format=memory).train()
    critic.to(memory_format=memory).train()

    real_all = pyramid[index].contiguous(memory_format=memory)  # [P, K*3, h, w]
    first = index == bank.first_index
    with torch.no_grad():
        prev_rec_all = _reconstruct_prev(bank, pyramid, index)
        if index == 0:
            amp = torch.ones(k, device=device, dtype=dtype)  # the coarsest scale is pure noise
        else:
            skip_start = first and cfg.skip_noise_amp_factor > 0
            factor = cfg.skip_noise_amp_factor if skip_start else cfg.noise_amp_factor
            amp = factor * _per_member((real_all - prev_rec_all) ** 2, k).sqrt()
        bank.noise_amps[index] = amp
        rec_z = _pack(bank.rec_noise[None]) if first else torch.zeros_like(real_all[:1])
    # fused: one kernel per step instead of ~15 per parameter; it is elementwise, so one Adam over the
    # packed parameters is still K independent Adams.
    opt_d = torch.optim.Adam(critic.parameters(), lr=cfg.lr_d, betas=cfg.adam_betas, fused=True)
    opt_g = torch.optim.Adam(gen.parameters(), lr=cfg.lr_g, betas=cfg.adam_betas, fused=True)
    iters = cfg.iters_per_scale
    decay_iter = int(round(cfg.lr_decay_at * iters))
    scale_s = bank.coarsest_scale - index
    autocast = _autocast(cfg, device)
    start = time.perf_counter()
    real, prev_rec = real_all, prev_rec_all
    for it in range(iters):
        if it == decay_iter:
            for opt, lr in ((opt_d, cfg.lr_d), (opt_g, cfg.lr_g)):
                for group in opt.param_groups:
                    group["lr"] = lr * cfg.lr_decay_gamma
        if batch is not None:
            pick = torch.randperm(real_all.shape[0], generator=gens[0], device=gens[0].device)[:batch].to(device)
            real, prev_rec = real_all[pick], prev_rec_all[pick]
            faces = pyramid[-1][pick]
        else:
            faces = pyramid[-1]
        b = real.shape[0]
        z = _member_noise(gens, b, bank.sizes[index], index == 0, dtype)
        with torch.no_grad():  # a fresh random sample of the coarser scales for every critic step
            prevs = prev_rec if first else _random_prev(bank, faces, index, gens, cfg.d_steps)
        # (1) critic: maximise D(real) - D(G(z)), with gradient penalty
        for step in range(cfg.d_steps):
            prev = prev_rec if first else prevs[step * b:(step + 1) * b]
            opt_d.zero_grad(set_to_none=True)
            with autocast:
                with torch.no_grad():
                    fake = gen(z, prev, amp)
                loss_real = -_per_member(critic(real).float(), k)
                loss_fake = _per_member(critic(fake).float(), k)
                gp = cfg.gp_weight * _gradient_penalty(critic, real, fake, gens)
            (loss_real + loss_fake + gp).sum().backward()  # a sum of per-member losses: members stay independent
            opt_d.step()
        # (2) generator: fool the critic and reproduce the image on the fixed-noise path. The fake is
        # recomputed every step; the official code reuses a stale graph here (its in-place autograd error).
        for _ in range(cfg.g_steps):
            opt_g.zero_grad(set_to_none=True)
            with autocast:
                loss_adv = -_per_member(critic(gen(z, prev, amp)).float(), k)
                loss_rec = _per_member((gen(rec_z, prev_rec, amp).float() - real) ** 2, k)
            (loss_adv + cfg.rec_weight * loss_rec).sum().backward()
            opt_g.step()
        if progress is not None:
            progress(scale_s, it + 1, iters)
    if iters == 0:  # a warm start used as it is: log the prior's reconstruction error on these images
        with torch.no_grad():
            gen.eval()
            loss_rec = _per_member((gen(rec_z, prev_rec_all, amp).float() - real_all) ** 2, k)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    gen.requires_grad_(False).eval().to(memory_format=torch.contiguous_format)
    bank.train_log.append({
        "scale": scale_s, "size_px": list(bank.sizes[index]), "channels": width,
        "iterations": iters, "seconds": time.perf_counter() - start, "warm_start": init is not None,
        "loss_rec": [float(x) for x in loss_rec.detach()], "noise_amp": [float(x) for x in amp],
    })
    return gen, critic


# Fields that decide the pyramid and the nets' shapes: a prior warm-starts only banks that agree on all of them.
PRIOR_SHAPE_FIELDS = ("scale_factor", "min_size_px", "max_size_px", "num_blocks", "kernel_px", "base_channels",
                      "channels_double_every", "max_channels", "skip_coarse_scales")


class SinGANPrior(SinGANBank):
    """A face prior (issue 14's warm start): one SinGAN pyramid trained on many faces at once, each scale
    learning to finish any face handed down from the coarser scale. Banks are fine-tuned from it.

    It is a one-member bank (its generators, noise_amps averaged over its faces) that also keeps every
    scale's critic, since a fine-tuned bank starts both nets from the prior. `images` holds the mean face."""

    def __init__(self, config: SinGANConfig, sizes: list[tuple[int, int]], first_index: int, num_faces: int):
        super().__init__(config, 1, sizes, first_index)
        self.num_faces = num_faces
        self.critics = nn.ModuleList()  # critics[j] is list index first_index + j

    def critic(self, index: int) -> Critic:
        return self.critics[index - self.first_index]

    def add_critic(self) -> Critic:
        index = self.first_index + len(self.critics)
        c = Critic(1, scale_channels(index, self.config), self.config)
        c.to_empty(device=self.images.device).to(self.images.dtype)
        self.critics.append(c)
        return c


def check_prior(prior: SinGANPrior, config: SinGANConfig, sizes: list[tuple[int, int]]) -> None:
    """Refuse a prior whose pyramid or nets differ from what the bank would train."""
    differ = [f for f in PRIOR_SHAPE_FIELDS if getattr(prior.config, f) != getattr(config, f)]
    if differ:
        raise ValueError("the SinGAN prior was trained with other " + ", ".join(
            f"{f} ({getattr(prior.config, f)} vs {getattr(config, f)})" for f in differ))
    if [tuple(x) for x in prior.sizes] != [tuple(x) for x in sizes]:
        raise ValueError(f"the SinGAN prior's pyramid {prior.sizes} does not fit these images' {sizes}")
    if not prior.is_complete or len(prior.critics) != len(prior.generators):
        raise ValueError("the SinGAN prior is not fully trained")


def _checked_pyramid(images: torch.Tensor, config: SinGANConfig, count: str) -> list[tuple[int, int]]:
    """The pyramid sizes of training images [count, 3, H, W] in [-1, 1]; refuses other shapes and ranges and a
    config that would leave no scale to train."""
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] < 1:
        raise ValueError(f"expected images [{count}, 3, H, W], got {tuple(images.shape)}")
    if images.min() < -1 or images.max() > 1:
        raise ValueError("images must be in [-1, 1]")
    sizes = pyramid_sizes(images.shape[2], images.shape[3], config)
    if config.skip_coarse_scales >= len(sizes):
        raise ValueError(f"skip_coarse_scales={config.skip_coarse_scales} leaves none of the {len(sizes)} scales")
    return sizes


def train_prior(
    images: torch.Tensor,
    config: SinGANConfig,
    seed: int,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: ProgressFn | None = None,
) -> SinGANPrior:
    """Train a face prior on images [P, 3, H, W] in [-1, 1] (aligned faces of one size): per scale,
    config.iters_per_scale iterations, each on `batch_size` faces drawn from torch.Generator(seed).

    The coarsest scale must be injected (skip_coarse_scales >= 1): its fixed-noise reconstruction cannot
    reproduce many faces from one noise map."""
    if config.skip_coarse_scales < 1:
        raise ValueError("a face prior needs skip_coarse_scales >= 1 (every face injected at the coarsest scale)")
    if config.iters_per_scale < 1 or batch_size < 1:
        raise ValueError("a face prior needs iters_per_scale >= 1 and batch_size >= 1")
    sizes = _checked_pyramid(images, config, "P")
    device = torch.device(device)
    prior = SinGANPrior(config, sizes, config.skip_coarse_scales, images.shape[0]).to(device=device, dtype=dtype)
    faces = _resize(images.to(device=device, dtype=dtype), sizes[-1]).contiguous()
    with torch.no_grad():
        prior.images.copy_(faces.mean(dim=0, keepdim=True))
    gens = [torch.Generator(device=device).manual_seed(int(seed))]
    pyramid = [_resize(faces, size) for size in sizes]  # [P, 3, h, w]: P faces of the one member
    coarser = None
    for index in range(prior.first_index, len(sizes)):
        coarser = _train_scale(prior, index, pyramid, gens, coarser, progress, batch=min(batch_size, len(faces)))
        prior.critics.append(coarser[1].requires_grad_(False).eval())
    return prior.eval()


def train_bank(
    images: torch.Tensor,
    config: SinGANConfig,
    seeds: list[int],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: ProgressFn | None = None,
    stop_after_scales: int | None = None,
    prior: SinGANPrior | None = None,
) -> SinGANBank:
    """Train K independent SinGANs, one per image, in one pass.

    images: [K, 3, H, W] in [-1, 1], all one size. seeds: one per member; member k's weights, noise maps and
    penalty weights come only from its own torch.Generator(seed_k), so it is the same model it would be if
    trained alone. stop_after_scales: train only that many scales (benchmarks; the bank is then incomplete).
    prior: warm start: every scale's generator and critic start from the prior's (same pyramid and nets,
    checked), then train config.iters_per_scale iterations (0: the prior as it is, noise amplitudes still
    measured on each member's own image).
    """
    sizes = _checked_pyramid(images, config, "K")
    if len(seeds) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(seeds)} seeds")
    if config.iters_per_scale == 0 and prior is None:
        raise ValueError("iters_per_scale=0 trains nothing: it needs a prior to start from")
    device = torch.device(device)
    if prior is not None:
        check_prior(prior, config, sizes)
        prior = prior.to(device=device, dtype=dtype)
    # 1. the bank and each member's random stream
    bank = SinGANBank(config, images.shape[0], sizes, config.skip_coarse_scales).to(device=device, dtype=dtype)
    with torch.no_grad():
        bank.images.copy_(_resize(images.to(device=device, dtype=dtype), sizes[-1]))
    gens = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    if bank.first_index == 0:  # the paper's fixed reconstruction noise z*: grey noise, like every coarsest draw
        with torch.no_grad():
            bank.rec_noise.copy_(_member_noise(gens, 1, sizes[0], True, dtype).view_as(bank.rec_noise))
    # 2. scales coarse to fine, each frozen once trained
    pyramid = bank.image_pyramid()
    coarser = None
    last = len(sizes) if stop_after_scales is None else min(len(sizes), bank.first_index + stop_after_scales)
    for index in range(bank.first_index, last):
        init = None if prior is None else (prior.generator(index), prior.critic(index))
        coarser = _train_scale(bank, index, pyramid, gens, coarser, progress, init=init)
    return bank.eval()


@torch.no_grad()
def regenerate(
    bank: SinGANBank,
    member: int,
    image: torch.Tensor | None,
    start_scale: int,
    num_samples: int,
    seeds: list[int],
    noise_gain: float = 1.0,
    residual: bool = False,
) -> torch.Tensor:
    """M variations of `image` [3, H, W] (in [-1, 1], the bank's size) by member `member`: [M, 3, H, W].

    start_scale = N is a plain random SinGAN sample (the image is not used); s < N injects the image shrunk
    to scale s + 1 and upsampled to scale s (exactly what the coarser scales hand over in training), adds
    noise at scale s's amplitude times noise_gain and runs the generators s..0 (finer scales at their own
    amplitude). Sample i depends only on seeds[i].

    residual: return image + (sample - the noise-free pass of the same injection), i.e. only the variation
    the noise draws, added to the image itself. For a member trained on the image this is almost the plain
    sample (its noise-free pass reproduces the image); for a member trained on another image (a source face,
    with its edit injected) it keeps the injected image's own detail, which the member's finer scales would
    otherwise repaint from their training image (an edited, opened mouth regrowing the source's teeth).
    """
    if len(seeds) != num_samples:
        raise ValueError(f"need one seed per sample: {num_samples} samples, {len(seeds)} seeds")
    if not 0 <= start_scale <= bank.max_start_scale:
        raise ValueError(f"start_scale {start_scale} not in 0..{bank.max_start_scale} (this bank's N is "
                         f"{bank.coarsest_scale}, coarse scales skipped in training: {bank.first_index})")
    if not bank.is_complete:
        raise ValueError("bank is not fully trained")
    if not 0 <= member < bank.num_members:
        raise IndexError(f"member {member} not in a bank of {bank.num_members}")
    single = bank if bank.num_members == 1 else bank.member(member)
    device, dtype = single.images.device, single.images.dtype
    first = single.coarsest_scale - start_scale
    if first > 0:
        if image is None or tuple(image.shape) != (3, *single.sizes[-1]):
            raise ValueError(f"image must be [3, {single.sizes[-1][0]}, {single.sizes[-1][1]}], got "
                             f"{None if image is None else tuple(image.shape)}")
        prev = single.start_prev(image.to(device=device, dtype=dtype)[None], first).expand(num_samples, -1, -1, -1)
    else:
        prev = torch.zeros(num_samples, 3, *single.sizes[0], device=device, dtype=dtype)
    if residual and first == 0:
        raise ValueError("residual sampling needs an injected image: start below the coarsest scale")
    gens = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    out = _run_scales(single, prev, first, lambda i, shape: torch.cat(
        [_randn((1, 1 if i == 0 else 3, *shape), g, dtype).expand(1, 3, *shape) for g in gens]), noise_gain)
    if residual:
        base = _run_scales(single, prev[:1], first,
                           lambda i, shape: torch.zeros(1, 3, *shape, device=device, dtype=dtype), noise_gain)
        out = image.to(device=device, dtype=dtype)[None] + (out.clamp(-1, 1) - base.clamp(-1, 1))
    return out.clamp(-1, 1)


def _run_scales(bank: SinGANBank, prev: torch.Tensor, first: int, noise, noise_gain: float) -> torch.Tensor:
    """The generators from list index `first` to the finest on `prev`; noise(i, (h, w)) gives scale i's
    noise maps, scaled by its amplitude (times noise_gain at the first scale)."""
    out = prev
    for i in range(first, len(bank.sizes)):
        amp = bank.noise_amps[i] * (noise_gain if i == first else 1.0)
        out = bank.generator(i)(noise(i, bank.sizes[i]), prev, amp)
        if i + 1 < len(bank.sizes):
            prev = _resize(out, bank.sizes[i + 1])
    return out


@torch.no_grad()
def measure_quality(
    bank: SinGANBank,
    member: int,
    start_scales: list[int],
    num_samples: int = 8,
    seed: int = 0,
    noise_gain: float = 1.0,
) -> dict[str, float]:
    """Quality numbers of one member on its own training image, for tests, benchmarks and the manifest.

    rec_rmse: fixed-noise reconstruction vs the image ([-1, 1] units). Per start scale s:
    ssim_s (mean SSIM of samples to the image), diversity_s (mean pairwise RMSE / image std),
    distance_s (mean RMSE to the image / image std), realism_s (nearest-patch distance, 0 = only real patches).
    """
    single = bank.member(member)
    image = single.images[0]
    out = {"rec_rmse": float(rmse(single.reconstruct(), image[None])[0])}
    for s in start_scales:
        seeds = [seed * 1000 + i for i in range(num_samples)]
        samples = regenerate(single, 0, image, s, num_samples, seeds, noise_gain)
        ref = image[None].expand_as(samples)
        out[f"ssim_{s}"] = float(ssim(samples, ref).mean())
        out[f"diversity_{s}"] = float(diversity(samples, image))
        out[f"distance_{s}"] = float(rmse(samples, ref).mean() / image.float().std(unbiased=False))
        out[f"realism_{s}"] = float(patch_realism(samples, image).mean())
    return out


def bank_state(bank: SinGANBank) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and the JSON-able facts needed to rebuild a bank or a prior (save with models.checkpoints)."""
    meta = {
        "num_members": bank.num_members, "sizes": [list(s) for s in bank.sizes],
        "first_index": bank.first_index, "num_trained": len(bank.generators), "train_log": bank.train_log,
    }
    if isinstance(bank, SinGANPrior):
        meta["num_faces"] = bank.num_faces
    return {k: v.detach() for k, v in bank.state_dict().items()}, meta


def bank_from_state(
    config: SinGANConfig, tensors: dict[str, torch.Tensor], meta: dict, device: str | torch.device = "cpu"
) -> SinGANBank:
    """Rebuild a bank (or a prior, when meta names its faces); load_state_dict(strict) refuses missing,
    unexpected or misshapen tensors."""
    dtype = tensors["images"].dtype
    sizes = [tuple(s) for s in meta["sizes"]]
    if "num_faces" in meta:
        bank: SinGANBank = SinGANPrior(config, sizes, int(meta["first_index"]), int(meta["num_faces"]))
    else:
        bank = SinGANBank(config, int(meta["num_members"]), sizes, int(meta["first_index"]))
    bank.to(device=device, dtype=dtype)
    for _ in range(int(meta["num_trained"])):
        bank.add_generator()
        if isinstance(bank, SinGANPrior):
            bank.add_critic()
    bank.load_state_dict(tensors, strict=True)
    bank.train_log = list(meta.get("train_log", []))
    return bank.requires_grad_(False).eval()
