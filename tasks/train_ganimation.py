"""GANimation training loop: one resumable function, numbered checkpoints, a sample grid per epoch."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from manifests.atomic import atomic_write_bytes, atomic_write_text
from manifests.dataset import encode_png_rgb
from models.checkpoints import config_from_dict, config_to_dict, load_checkpoint
from models.ganimation import Critic, GANimationConfig, Generator, GeneratorOutput, init_weights
from models.ganimation_losses import LossWeights, critic_loss, generator_loss, gradient_penalty, teacher_l1
from tasks.ganimation import CHECKPOINT_KIND, CRITIC_PREFIX, GENERATOR_PREFIX, TRAIN_STATE_PREFIX, save_ganimation
from tasks.tensors import tensor_to_uint8, uint8_to_tensor

log = logging.getLogger(__name__)

RUN_CONFIG_FILE = "train_config.json"
CHECKPOINTS_DIR, SAMPLES_DIR = "checkpoints", "samples"


@dataclasses.dataclass(frozen=True)
class TrainGANimationConfig:
    """Everything that decides a training run except the data, the epoch count, the seed and the device."""

    model: GANimationConfig = dataclasses.field(default_factory=GANimationConfig)
    losses: LossWeights = dataclasses.field(default_factory=LossWeights)
    batch_size: int = 25  # the official code's batch
    lr_generator: float = 1e-4
    lr_critic: float = 1e-4
    adam_betas: tuple[float, float] = (0.5, 0.999)
    critic_steps_per_generator_step: int = 5
    lr_decay_fraction: float = 1 / 3  # the lr falls linearly to 0 over this last fraction of the epochs
    # targets = another sample's AUs + U(-noise, noise), then clamped to [0, 1]. The clamp is a project choice,
    # not a published setting: the official code does not clamp sampled targets.
    target_noise: float = 0.1
    horizontal_flip: bool = True
    init_std: float = 0.02  # N(0, std) conv init, as the official code
    checkpoint_every_epochs: int = 1  # the last epoch is always checkpointed
    sample_grid_rows: int = 6
    # DiffAugment-style random translation (pixels, each way) of every image the critic sees, real and
    # edited, with independent shifts per image; 0 = off (the published setting). It stops the critic's
    # AU head from being read off exact pixel positions, which an editor can otherwise exploit with texture.
    critic_translate_px: int = 0
    # Instance noise: N(0, std) added to every image the critic sees (real and edited, fresh per image),
    # so neither its realness nor its AU head can key on pixel-exact texture; 0 = off (published).
    critic_noise_std: float = 0.0
    # Warp teacher (not in the paper; 0 = off, the published setting): on generator steps, an L1 term from
    # G(x, y_target) toward the landmark warp's edit of the same face toward the same target, made on the fly
    # from the face's 68 landmarks (the dataset's `landmarks` [N, 68, 2]; NaN rows = none). The paper's
    # adversarial, AU, cycle and attention terms stay. Faces without landmarks, or whose warp is rejected
    # (a fold), get no teacher term. Schedule over training progress p in [0, 1]: the full weight until
    # p = warp_teacher_hold_fraction, then linear down to warp_teacher_floor x weight at p = 1.
    warp_teacher_weight: float = 0.0
    warp_teacher_hold_fraction: float = 0.5
    warp_teacher_floor: float = 0.1
    warp_teacher_au_shape: str | None = None  # AU shape model JSON for the warp; None = the FACS-authored default

    def __post_init__(self) -> None:
        if self.warp_teacher_weight < 0 or not 0.0 <= self.warp_teacher_floor <= 1.0:
            raise ValueError(f"warp_teacher_weight must be >= 0 and warp_teacher_floor in [0, 1], got "
                             f"{self.warp_teacher_weight}, {self.warp_teacher_floor}")
        if not 0.0 <= self.warp_teacher_hold_fraction <= 1.0:
            raise ValueError(f"warp_teacher_hold_fraction must be in [0, 1], got {self.warp_teacher_hold_fraction}")
        if self.critic_noise_std < 0:
            raise ValueError(f"critic_noise_std must be >= 0, got {self.critic_noise_std}")
        if self.critic_translate_px < 0:
            raise ValueError(f"critic_translate_px must be >= 0, got {self.critic_translate_px}")
        if self.batch_size < 1 or self.critic_steps_per_generator_step < 1 or self.checkpoint_every_epochs < 1:
            raise ValueError("batch_size, critic_steps_per_generator_step and checkpoint_every_epochs must be >= 1")
        if not 0.0 <= self.lr_decay_fraction <= 1.0:
            raise ValueError(f"lr_decay_fraction must be in [0, 1], got {self.lr_decay_fraction}")


def train_config_from_dict(data: dict[str, Any]) -> TrainGANimationConfig:
    data = dict(data)
    model = config_from_dict(GANimationConfig, data.pop("model", {}))
    losses = config_from_dict(LossWeights, data.pop("losses", {}))
    return config_from_dict(TrainGANimationConfig, {**data, "model": model, "losses": losses})


class AUDataset(Protocol):
    """Item i: (image float [3, S, S] in [-1, 1], aus float [n_aus] in 0..1). An optional `aus`
    attribute ([N, n_aus]) saves reading every image once to collect the target pool; an optional
    `landmarks` attribute ([N, 68, 2] in the S px crop, NaN rows for faces without) feeds the warp teacher."""

    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]: ...


def train_ganimation(
    dataset: AUDataset,
    config: TrainGANimationConfig,
    out_dir: str | os.PathLike,
    epochs: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
    resume: bool = True,
    progress: bool = False,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    data_id: str | None = None,
) -> list[dict[str, float]]:
    """Train (or continue training) a GANimation generator + critic; return the per-epoch loss history.

    Writes out_dir/train_config.json first, then per epoch a sample grid (samples/epoch_NNNN.png:
    source | attention | colour | output) and numbered checkpoints (checkpoints/epoch_NNNN), never
    overwritten. With resume=True a run continues from its last checkpoint; everything random is
    drawn from (seed, epoch), so an interrupted and resumed run ends where an uninterrupted one does.
    data_id: e.g. the prepared manifest's hash, recorded in the config and every checkpoint.
    """
    # 1. Resolve the run: config file, data, teacher, models, optimizers.
    out_dir = Path(out_dir)
    teacher = WarpTeacher.create(config, dataset)
    run_config = {"train": config_to_dict(config), "seed": seed, "data_id": data_id}
    if teacher is not None:
        run_config["warp_teacher"] = teacher.describe(config)
    _write_or_check_run_config(out_dir, run_config)
    aus_table = _collect_aus(dataset, config.model)  # [N, n_aus]
    init = torch.Generator().manual_seed(seed)
    generator, critic = Generator(config.model), Critic(config.model)
    init_weights(generator, init, config.init_std)
    init_weights(critic, init, config.init_std)
    generator, critic = generator.to(device), critic.to(device)
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr_generator, betas=config.adam_betas)
    opt_d = torch.optim.Adam(critic.parameters(), lr=config.lr_critic, betas=config.adam_betas)

    # 2. Continue from the last checkpoint, if any.
    state = {"epoch": 0, "step": 0, "history": []}
    last = latest_checkpoint(out_dir)
    if last is not None:
        if not resume:
            raise FileExistsError(f"{out_dir} already holds checkpoints (last: {last.name}); pass resume=True")
        state = _restore(last, generator, critic, opt_g, opt_d, device)
        log.info("resuming from %s (epoch %d, step %d)", last, state["epoch"], state["step"])

    # 3. Train epoch by epoch; checkpoint and draw a sample grid after each.
    n = len(dataset)
    n_batches = math.ceil(n / config.batch_size)
    grid_images, grid_targets = _grid_batch(dataset, aus_table, config.sample_grid_rows, config.model)
    bar = _progress_bar(progress, epochs * n_batches, state["epoch"] * n_batches)
    history: list[dict[str, float]] = state["history"]
    try:
        for epoch in range(state["epoch"], epochs):
            started = time.perf_counter()
            sums, step = _train_epoch(dataset, aus_table, config, generator, critic, opt_g, opt_d,
                                      epoch, epochs, seed, state["step"], device, bar, teacher)
            state["step"] = step
            record = {"epoch": epoch + 1, "step": step, "seconds": time.perf_counter() - started, **sums}
            history.append(record)
            log.info("epoch %d/%d: %s", epoch + 1, epochs,
                     ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch"))
            _write_grid(out_dir / SAMPLES_DIR / f"epoch_{epoch + 1:04d}.png", generator, grid_images,
                        grid_targets, device)
            if (epoch + 1) % config.checkpoint_every_epochs == 0 or epoch + 1 == epochs:
                _save(out_dir, epoch + 1, step, history, run_config, generator, critic, opt_g, opt_d)
            if on_epoch is not None:
                on_epoch(record)
    finally:
        if bar is not None:
            bar.close()
    return history


def critic_step(
    generator: Generator, critic: Critic, opt_d: torch.optim.Optimizer, real: torch.Tensor,
    source_aus: torch.Tensor, target_aus: torch.Tensor, alpha: torch.Tensor, weights: LossWeights,
    fake: torch.Tensor | None = None, views: CriticViews | None = None,
) -> dict[str, float]:
    """One critic update: WGAN-GP on real vs edited images + AU regression on the real ones.

    The gradient penalty is part of the same loss and the same Adam step (as ganimation_replicate and
    standard WGAN-GP); the official code takes a separate Adam step for the penalty after this one.

    fake: G(real, target_aus) if the caller already has it (it is detached here).
    views: the critic's augmentation of this step (real: view 0, fake: view 1); the penalty is taken
        between the augmented images.
    """
    if fake is None:
        with torch.no_grad():
            fake = generator(real, target_aus).image
    fake = fake.detach()
    if views is not None:
        real, fake = views.apply(real, 0), views.apply(fake, 1)
    scores = critic(torch.cat([real, fake]))  # one pass over both; the critic has no batch-coupled layers
    batch = real.shape[0]
    penalty = gradient_penalty(lambda x: critic(x).realness, real, fake, alpha)
    total, terms = critic_loss(scores.realness[:batch], scores.realness[batch:], scores.aus[:batch],
                               source_aus, penalty, weights)
    opt_d.zero_grad(set_to_none=True)
    total.backward()
    opt_d.step()
    return {"d_total": total.item(), **{k: v.item() for k, v in terms.items()}}


def generator_step(
    generator: Generator, critic: Critic, opt_g: torch.optim.Optimizer, real: torch.Tensor,
    source_aus: torch.Tensor, target_aus: torch.Tensor, weights: LossWeights,
    edited: GeneratorOutput | None = None, views: CriticViews | None = None,
    teacher: TeacherBatch | None = None,
) -> dict[str, float]:
    """One generator update: fool the critic, hit the target AUs, cycle back to the source.

    edited: G(real, target_aus) with its autograd graph, if the caller already ran it.
    views: the critic's augmentation of this step; the critic sees the edit as view 2 (the cycle uses the
        edit as it is).
    teacher: the warp's edits of this batch; adds weight x L1(G(real, target), warp edit) as g_teacher.
    """
    critic.requires_grad_(False)  # gradients flow through the critic but its weights are not trained here
    try:
        edited = generator(real, target_aus) if edited is None else edited
        scores = critic(edited.image if views is None else views.apply(edited.image, 2))
        cycled = generator(edited.image, source_aus)
        total, terms = generator_loss(scores.realness, scores.aus, target_aus, cycled.image, real,
                                      (edited.attention, cycled.attention), weights, colour=edited.colour)
        if teacher is not None:
            terms["g_teacher"] = teacher_l1(edited.image, teacher.images.to(edited.image.device),
                                            teacher.has_teacher.to(edited.image.device))
            total = total + teacher.weight * terms["g_teacher"]
        opt_g.zero_grad(set_to_none=True)
        total.backward()
        opt_g.step()
    finally:
        critic.requires_grad_(True)
    return {"g_total": total.item(), **{k: v.item() for k, v in terms.items()},
            "attention_mean": edited.attention.mean().item()}


def translate(images: torch.Tensor, shifts: torch.Tensor, max_px: int) -> torch.Tensor:
    """Shift each image by its own (dy, dx) (ints in [-max_px, max_px]), filling with the edge pixels.

    images [B, C, H, W], shifts [B, 2]; differentiable in images. Output pixel (y, x) of image b is
    input pixel (y - dy, x - dx), clamped to the image.
    """
    if max_px == 0:
        return images
    b, _, h, w = images.shape
    padded = F.pad(images, (max_px, max_px, max_px, max_px), mode="replicate")
    shifts = shifts.to(images.device).long()
    rows = torch.arange(h, device=images.device)[None, :] + max_px - shifts[:, :1]  # [B, H]
    cols = torch.arange(w, device=images.device)[None, :] + max_px - shifts[:, 1:]  # [B, W]
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def random_shifts(n: int, max_px: int, rng: torch.Generator) -> torch.Tensor:
    """[n, 2] integer shifts, uniform in [-max_px, max_px]."""
    return torch.randint(-max_px, max_px + 1, (n, 2), generator=rng)


@dataclasses.dataclass(frozen=True)
class CriticViews:
    """The critic's augmentation for one training step, drawn up front: per view (0 the real batch and 1
    the edit in the critic step, 2 the edit in the generator step) a translation and/or instance noise."""

    translate_px: int
    shifts: list[torch.Tensor] | None  # 3 x [B, 2]
    noise: list[torch.Tensor] | None   # 3 x [B, 3, S, S]

    @classmethod
    def draw(cls, config: TrainGANimationConfig, n: int, rng: torch.Generator) -> CriticViews | None:
        """None when the config augments nothing (the published setting); draws nothing from rng then."""
        px, std = config.critic_translate_px, config.critic_noise_std
        if not px and not std:
            return None
        shifts = [random_shifts(n, px, rng) for _ in range(3)] if px else None
        size = config.model.image_size_px
        noise = [torch.randn(n, 3, size, size, generator=rng) * std for _ in range(3)] if std else None
        return cls(px, shifts, noise)

    def apply(self, images: torch.Tensor, view: int) -> torch.Tensor:
        if self.shifts is not None:
            images = translate(images, self.shifts[view], self.translate_px)
        if self.noise is not None:
            images = images + self.noise[view].to(images.device)
        return images


def sample_targets(
    aus_table: torch.Tensor, index: torch.Tensor, noise: float, rng: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets for samples `index`: the AUs of another training sample + U(-noise, noise), clamped to
    the valid 0..1 range (a project choice: the official code leaves them unclamped, so its targets can
    fall slightly outside 0..1). Returns (targets [B, n_aus], the partner indices [B])."""
    n, n_aus = aus_table.shape
    partner = (index + torch.randint(1, n, (len(index),), generator=rng)) % n  # never the sample itself
    jitter = (torch.rand(len(index), n_aus, generator=rng) * 2 - 1) * noise
    return (aus_table[partner] + jitter).clamp(0.0, 1.0), partner


# The teacher's weight where the user does not choose one: on for CPU-sized models, off at the paper's size.
# 100 is the weight measured on the synthetic AU benchmark (docs/ganimation-taught.md): with it the LEARNING_TEST
# GANimation's tolerant pixel ratio fell from 6.35 (from scratch) to 1.79, the same oracle ratio.
CPU_SIZED_WARP_TEACHER_WEIGHT = 100.0


def is_published_size(model: GANimationConfig) -> bool:
    """The paper's generator size or larger (128 px, conv_dim 64, 6 residual blocks): meant for a GPU."""
    return model.image_size_px >= 128 and model.conv_dim >= 64 and model.repeat_num >= 6


def default_warp_teacher_weight(model: GANimationConfig) -> float:
    """The warp teacher's default weight for a model: CPU_SIZED_WARP_TEACHER_WEIGHT for anything smaller than the
    published size (a CPU-sized model, which unsupervised learns smudges that fool the AU critic), 0 (off, the
    published setting) at the published size."""
    return 0.0 if is_published_size(model) else CPU_SIZED_WARP_TEACHER_WEIGHT


def teacher_weight(progress: float, config: TrainGANimationConfig) -> float:
    """The warp teacher's weight at training progress p (0 = start, 1 = end): constant until the hold
    fraction, then linear down to floor x weight at the end."""
    w, hold, floor = config.warp_teacher_weight, config.warp_teacher_hold_fraction, config.warp_teacher_floor
    if w == 0 or progress <= hold:
        return w
    decayed = min(1.0, (progress - hold) / max(1.0 - hold, 1e-12))
    return w * (1.0 - (1.0 - floor) * decayed)


@dataclasses.dataclass
class TeacherBatch:
    """The warp's edits of one batch: images [B, 3, S, S] in [-1, 1] (the input where there is none),
    has_teacher [B] bool, and the term's weight at this step."""

    images: torch.Tensor
    has_teacher: torch.Tensor
    weight: float


class WarpTeacher:
    """Makes the landmark warp's edit of each (training face, sampled target) pair, on the fly."""

    def __init__(self, landmarks: torch.Tensor, au_shape: str | None):
        from tasks.au_shape import load_au_shape
        from tasks.warp import WarpEditor

        self.editor = WarpEditor(load_au_shape(au_shape))
        self.landmarks = landmarks.double().numpy()  # [N, 68, 2], NaN rows = no landmarks
        self.has_landmarks = np.isfinite(self.landmarks).all(axis=(1, 2))  # [N]

    @classmethod
    def create(cls, config: TrainGANimationConfig, dataset) -> WarpTeacher | None:
        """None when the config has no teacher; a teacher whose every face is skipped (logged) when the
        dataset carries no landmarks."""
        if config.warp_teacher_weight == 0:
            return None
        landmarks = getattr(dataset, "landmarks", None)
        if landmarks is None:
            log.warning("warp teacher: the dataset has no landmarks; the teacher term is skipped for every face")
            landmarks = torch.full((len(dataset), 68, 2), float("nan"))
        landmarks = torch.as_tensor(landmarks, dtype=torch.float32)
        if landmarks.shape != (len(dataset), 68, 2):
            raise ValueError(f"dataset.landmarks must be [{len(dataset)}, 68, 2], got {tuple(landmarks.shape)}")
        teacher = cls(landmarks, config.warp_teacher_au_shape)
        missing = int((~teacher.has_landmarks).sum())
        if missing:
            log.warning("warp teacher: %d of %d training faces have no landmarks; they get no teacher term",
                        missing, len(dataset))
        return teacher

    def describe(self, config: TrainGANimationConfig) -> dict[str, Any]:
        """What the run config and checkpoint card record about the teacher."""
        return {"editor": self.editor.version, "weight": config.warp_teacher_weight,
                "schedule": f"constant {config.warp_teacher_weight:g} until {config.warp_teacher_hold_fraction:g} "
                            f"of training, then linear to {config.warp_teacher_floor:g} x that at the end",
                "faces_with_landmarks": int(self.has_landmarks.sum()), "faces": len(self.has_landmarks)}

    def batch(self, real: torch.Tensor, index: torch.Tensor, source_aus: torch.Tensor, target_aus: torch.Tensor,
              weight: float) -> TeacherBatch:
        """The warp's edit of real[i] (float [B, 3, S, S] in [-1, 1], as loaded) toward target_aus[i]."""
        from tasks.errors import RejectError

        images = tensor_to_uint8(real)  # [B, S, S, 3]
        out, has = real.clone(), torch.zeros(len(index), dtype=torch.bool)
        for k, i in enumerate(index.tolist()):
            if not self.has_landmarks[i]:
                continue
            try:
                result = self.editor.edit(images[k], self.landmarks[i], source_aus[k].double().numpy(),
                                          target_aus[k].double().numpy())
            except RejectError:
                continue
            out[k] = uint8_to_tensor(result.image[None])[0]
            has[k] = True
        return TeacherBatch(out, has, weight)


def lr_factor(epoch_progress: float, epochs: int, decay_fraction: float) -> float:
    """1 until the last `decay_fraction` of training, then linear down to 0 at the end."""
    decay_epochs = epochs * decay_fraction
    if decay_epochs <= 0:
        return 1.0
    return max(0.0, min(1.0, (epochs - epoch_progress) / decay_epochs))


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    root = Path(out_dir) / CHECKPOINTS_DIR
    done = sorted(p for p in root.glob("epoch_[0-9]*") if p.is_dir() and not p.name.startswith("."))
    return done[-1] if done else None


def _train_epoch(dataset, aus_table, config, generator, critic, opt_g, opt_d, epoch, epochs, seed, step,
                 device, bar, teacher: WarpTeacher | None = None) -> tuple[dict[str, float], int]:
    n = aus_table.shape[0]
    rng = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
    order = torch.randperm(n, generator=rng)
    sums, counts = defaultdict(float), defaultdict(int)
    n_batches = math.ceil(n / config.batch_size)
    for b in range(n_batches):
        index = order[b * config.batch_size:(b + 1) * config.batch_size]
        # Draw everything random up front, in a fixed order, whether or not the generator steps.
        flip = torch.rand(len(index), generator=rng) < 0.5
        target_aus, _ = sample_targets(aus_table, index, config.target_noise, rng)
        alpha = torch.rand(len(index), generator=rng)
        views = CriticViews.draw(config, len(index), rng)
        real, source_aus = _load_batch(dataset, index, config.model)
        generator_turn = (step + 1) % config.critic_steps_per_generator_step == 0
        weight = teacher_weight((epoch + b / n_batches) / epochs, config)
        taught = None
        if teacher is not None and generator_turn and weight > 0:
            taught = teacher.batch(real, index, source_aus, target_aus, weight)  # from the unflipped faces
        if config.horizontal_flip:
            real = torch.where(flip[:, None, None, None], real.flip(-1), real)
            if taught is not None:  # the AUs are bilateral: the warp of a flipped face is the flipped warp
                taught.images = torch.where(flip[:, None, None, None], taught.images.flip(-1), taught.images)
        real, source_aus, target_aus = real.to(device), source_aus.to(device), target_aus.to(device)
        factor = lr_factor(epoch + b / n_batches, epochs, config.lr_decay_fraction)
        _set_lr(opt_d, config.lr_critic * factor)
        _set_lr(opt_g, config.lr_generator * factor)
        step += 1
        # On a generator step the edit is run once, with its graph, and shared with the critic step
        # before it (the generator does not change in between).
        edited = generator(real, target_aus) if step % config.critic_steps_per_generator_step == 0 else None
        terms = critic_step(generator, critic, opt_d, real, source_aus, target_aus, alpha.to(device),
                            config.losses, fake=None if edited is None else edited.image, views=views)
        if edited is not None:
            terms.update(generator_step(generator, critic, opt_g, real, source_aus, target_aus, config.losses,
                                        edited=edited, views=views, teacher=taught))
            if taught is not None:
                terms["teacher_weight"] = taught.weight
                terms["teacher_coverage"] = taught.has_teacher.float().mean().item()
        for k, v in terms.items():
            sums[k] += v
            counts[k] += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix({k: f"{v:.3g}" for k, v in terms.items() if k in ("d_total", "g_total")})
    record = {k: sums[k] / counts[k] for k in sorted(sums)}
    record["lr_factor"] = lr_factor(epoch + 1, epochs, config.lr_decay_fraction)
    return record, step


def _load_batch(dataset, index: torch.Tensor, model: GANimationConfig) -> tuple[torch.Tensor, torch.Tensor]:
    size = model.image_size_px
    images, aus = [], []
    for i in index.tolist():
        image, au = (torch.as_tensor(x, dtype=torch.float32) for x in dataset[i])
        if tuple(image.shape) != (3, size, size) or tuple(au.shape) != (model.n_aus,):
            raise ValueError(f"dataset items must be (image [3, {size}, {size}], aus [{model.n_aus}]); item {i} "
                             f"is ({tuple(image.shape)}, {tuple(au.shape)})")
        images.append(image)
        aus.append(au)
    return torch.stack(images), torch.stack(aus)  # [B, 3, S, S], [B, n_aus]


def _collect_aus(dataset, model: GANimationConfig) -> torch.Tensor:
    """The pool target AUs are drawn from, [N, n_aus]; also checks the data matches the model."""
    n = len(dataset)
    if n < 2:
        raise ValueError(f"need at least 2 training samples (targets come from other samples), got {n}")
    _load_batch(dataset, torch.tensor([0]), model)  # fail early on data that does not fit the model
    table = getattr(dataset, "aus", None)
    if table is None:
        table = torch.stack([torch.as_tensor(dataset[i][1], dtype=torch.float32) for i in range(n)])
    table = torch.as_tensor(table, dtype=torch.float32)
    if table.shape != (n, model.n_aus) or not torch.isfinite(table).all():
        raise ValueError(f"AU table must be finite [{n}, {model.n_aus}], got {tuple(table.shape)}")
    return table


def _grid_batch(dataset, aus_table: torch.Tensor, rows: int, model: GANimationConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed grid inputs: the first samples, each edited towards the next sample's AUs."""
    rows = min(rows, len(dataset))
    images, _ = _load_batch(dataset, torch.arange(rows), model)
    targets = aus_table[(torch.arange(rows) + 1) % len(dataset)]
    return images, targets


def _write_grid(path: Path, generator: Generator, images: torch.Tensor, targets: torch.Tensor, device) -> None:
    with torch.no_grad():
        out = generator(images.to(device), targets.to(device))
    attention = out.attention.expand(-1, 3, -1, -1) * 2 - 1  # shown as grey, same [-1, 1] scale
    columns = [images, attention.cpu(), out.colour.cpu(), out.image.cpu()]  # each [R, 3, S, S]
    grid = torch.cat([torch.cat(list(col), dim=1) for col in columns], dim=2)  # [3, R*S, 4*S]
    atomic_write_bytes(encode_png_rgb(tensor_to_uint8(grid[None])[0]), path)


def _write_or_check_run_config(out_dir: Path, run_config: dict[str, Any]) -> None:
    """The resolved config is written before any work; a resumed run must use the same one."""
    path = out_dir / RUN_CONFIG_FILE
    if path.exists():
        existing = json.loads(path.read_text())
        # A run written before a config field existed recorded no value for it: read it with the field's
        # default (e.g. warp_teacher_weight 0), so it still resumes.
        if isinstance(existing.get("train"), dict):
            existing["train"] = config_to_dict(train_config_from_dict(existing["train"]))
        if existing != run_config:
            raise ValueError(f"{path} holds a different training config; use a new out_dir\n"
                             f"existing: {existing}\nthis run: {run_config}")
        return
    atomic_write_text(json.dumps(run_config, indent=2, sort_keys=True), path)


def _save(out_dir, epoch, step, history, run_config, generator, critic, opt_g, opt_d) -> Path:
    train_state, groups = {}, {}
    for name, opt in (("opt_g", opt_g), ("opt_d", opt_d)):
        sd = opt.state_dict()
        groups[name] = sd["param_groups"]
        for param_id, param_state in sd["state"].items():
            for key, value in param_state.items():
                train_state[f"{name}.{param_id}.{key}"] = value
    extra = {"epoch": epoch, "step": step, "history": history, "run_config": run_config,
             "optimizer_param_groups": groups, "package_version": _package_version()}
    return save_ganimation(out_dir / CHECKPOINTS_DIR / f"epoch_{epoch:04d}", generator, critic,
                           extra=extra, train_state=train_state)


def _restore(path: Path, generator, critic, opt_g, opt_d, device) -> dict[str, Any]:
    tensors, card = load_checkpoint(path, kind=CHECKPOINT_KIND)
    parts: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for key, value in tensors.items():
        for prefix in (GENERATOR_PREFIX, CRITIC_PREFIX, TRAIN_STATE_PREFIX):
            if key.startswith(prefix):
                parts[prefix][key[len(prefix):]] = value
    generator.load_state_dict(parts[GENERATOR_PREFIX], strict=True)
    critic.load_state_dict(parts[CRITIC_PREFIX], strict=True)
    extra = card["extra"]
    for name, opt in (("opt_g", opt_g), ("opt_d", opt_d)):
        state: dict[int, dict[str, torch.Tensor]] = defaultdict(dict)
        for key, value in parts[TRAIN_STATE_PREFIX].items():
            opt_name, param_id, field = key.split(".", 2)
            if opt_name == name:
                state[int(param_id)][field] = value
        opt.load_state_dict({"state": dict(state), "param_groups": extra["optimizer_param_groups"][name]})
    return {"epoch": extra["epoch"], "step": extra["step"], "history": list(extra["history"])}


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def _epoch_seed(seed: int, epoch: int) -> int:
    digest = hashlib.sha256(f"train_ganimation:{seed}:{epoch}".encode()).hexdigest()
    return int(digest[:15], 16)


def _progress_bar(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="batch", desc="train GANimation")


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("singanimation")
    except PackageNotFoundError:
        return "unknown"
