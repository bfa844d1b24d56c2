"""Train and evaluate the AU oracle on synthetic renders: the independent judge of GANimation edits."""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.au_oracle import CHECKPOINT_KIND, AUOracle, AUOracleConfig
from manifests.schema import AU_INDEX, N_AUS, stable_hash
from models.checkpoints import config_from_dict, load_checkpoint, save_checkpoint
from tasks.synthetic import RENDERED_AUS, Identity, RenderConfig, random_aus, random_identity, render_face
from tasks.tensors import uint8_to_tensor


@dataclass(frozen=True)
class OracleTrainConfig:
    """How the oracle is trained. The render size must equal the model's input size."""

    model: AUOracleConfig = field(default_factory=AUOracleConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    faces_per_identity: int = 2      # training renders share an identity in pairs: many identities generalise
    n_heldout: int = 400             # held-out identities (one face each) for the report
    n_edit_pairs: int = 200          # held-out (source, target) pairs for the identity/ceiling errors
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    augment: bool = True             # flips, brightness/contrast, blur, noise: geometry must carry the answer

    def __post_init__(self) -> None:
        if self.model.image_size_px != self.render.image_size_px:
            raise ValueError(f"OracleTrainConfig: model.image_size_px={self.model.image_size_px} != "
                             f"render.image_size_px={self.render.image_size_px}")
        unknown = [a for a in self.model.au_names if a not in RENDERED_AUS]
        if unknown:
            raise ValueError(f"OracleTrainConfig: the renderer does not move {unknown}; rendered: {RENDERED_AUS}")
        for name in ("faces_per_identity", "n_heldout", "n_edit_pairs", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"OracleTrainConfig.{name}={getattr(self, name)}: must be >= 1")
        if not (self.learning_rate > 0 and self.weight_decay >= 0):
            raise ValueError("OracleTrainConfig: learning_rate must be > 0 and weight_decay >= 0")


def small_oracle_config(image_size_px: int) -> AUOracleConfig:
    """The default oracle architecture for another render size: stem + one stage per halving, down to 4 px."""
    widths = (32, 48, 64, 96, 128, 160)
    n_stages = int(round(math.log2(max(image_size_px, 1) / 8)))
    if not 1 <= n_stages <= len(widths) or image_size_px != 8 * 2 ** n_stages:
        raise ValueError(f"image_size_px={image_size_px}: must be 8 * a power of two, 16..512")
    return AUOracleConfig(image_size_px=image_size_px, widths=widths[:n_stages])


# ---------------------------------------------------------------- data


def _seed(*parts: Any) -> int:
    return int(stable_hash(list(parts), 15), 16)


def heldout_identity_seed(seed: int, index: int) -> int:
    """Identities for evaluation: a different hash tag from training identities, so the two never meet."""
    return _seed("oracle-heldout-identity", int(seed), int(index))


def train_identity_seed(seed: int, index: int) -> int:
    return _seed("oracle-train-identity", int(seed), int(index))


def render_batch(identities: list[Identity], aus: np.ndarray, config: RenderConfig) -> np.ndarray:
    """Renders [N, S, S, 3] uint8 of identities[i] showing aus[i] ([N, 17])."""
    return np.stack([render_face(identity, a, config) for identity, a in zip(identities, aus)])


def render_training_set(n: int, seed: int, config: OracleTrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(images [n, S, S, 3] uint8, AUs [n, 17]) on training identities; AUs from random_aus."""
    rng = np.random.default_rng(_seed("oracle-train-aus", int(seed)))
    aus = np.stack([random_aus(rng, au_names=config.model.au_names) for _ in range(n)])
    identities = [random_identity(train_identity_seed(seed, i // config.faces_per_identity)) for i in range(n)]
    return render_batch(identities, aus, config.render), aus


def render_heldout_set(n: int, seed: int, config: OracleTrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(images, AUs) on held-out identities, one face each."""
    rng = np.random.default_rng(_seed("oracle-heldout-aus", int(seed)))
    aus = np.stack([random_aus(rng, au_names=config.model.au_names) for _ in range(n)])
    identities = [random_identity(heldout_identity_seed(seed, i)) for i in range(n)]
    return render_batch(identities, aus, config.render), aus


# ---------------------------------------------------------------- evaluation


def images_to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 RGB [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1]; float tensors [N, 3, H, W] pass through checked."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"numpy images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
        return uint8_to_tensor(images)
    if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(f"tensor images must be float [N, 3, H, W] in [-1, 1], got {images.dtype} {tuple(images.shape)}")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1.0 - 1e-3 or hi > 1.0 + 1e-3:
        raise ValueError(f"tensor images must lie in [-1, 1], got values in [{lo:.3f}, {hi:.3f}]")
    return images


@torch.inference_mode()
def predict_aus(oracle: AUOracle, images: np.ndarray | torch.Tensor, batch_size: int = 128) -> np.ndarray:
    """Oracle AUs [N, 17] in AU_NAMES order; AUs the oracle does not predict are NaN."""
    x = images_to_tensor(images)
    device = next(oracle.parameters()).device
    was_training = oracle.training
    oracle.eval()
    parts = [oracle(x[i:i + batch_size].to(device, torch.float32)).float().cpu() for i in range(0, len(x), batch_size)]
    oracle.train(was_training)
    out = np.full((len(x), N_AUS), np.nan, np.float64)
    out[:, _columns(oracle)] = torch.cat(parts).numpy() if parts else np.zeros((0, oracle.config.n_aus))
    return out


def _columns(oracle: AUOracle) -> list[int]:
    return [AU_INDEX[name] for name in oracle.config.au_names]


def _targets(targets: np.ndarray | torch.Tensor, n: int) -> np.ndarray:
    t = targets.detach().cpu().numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
    t = t.astype(np.float64)
    if t.shape != (n, N_AUS):
        raise ValueError(f"targets must be [N, {N_AUS}] in AU_NAMES order with N = {n} images, got {t.shape}")
    return t


def au_errors(oracle: AUOracle, images: np.ndarray | torch.Tensor, targets: np.ndarray | torch.Tensor) -> np.ndarray:
    """Per-image mean |oracle(image) - target| over the oracle's AUs: [N]."""
    predicted = predict_aus(oracle, images)
    cols = _columns(oracle)
    return np.abs(predicted[:, cols] - _targets(targets, len(predicted))[:, cols]).mean(axis=1)


def au_error(oracle: AUOracle, images: np.ndarray | torch.Tensor, targets: np.ndarray | torch.Tensor) -> float:
    """Mean |oracle(image) - target| over images and the oracle's AUs (targets [N, 17], AU_NAMES order)."""
    return float(au_errors(oracle, images, targets).mean())


def constant_predictor_errors(train_aus: np.ndarray, test_aus: np.ndarray, au_names: tuple[str, ...]) -> dict[str, float]:
    """MAE of predicting the training mean / median for every test face (the trivial baselines)."""
    cols = [AU_INDEX[a] for a in au_names]
    train, test = np.asarray(train_aus)[:, cols], np.asarray(test_aus)[:, cols]
    return {
        "mean_predictor_mae": float(np.abs(test - train.mean(axis=0)).mean()),
        "median_predictor_mae": float(np.abs(test - np.median(train, axis=0)).mean()),
    }


def edit_bounds(oracle: AUOracle, n_pairs: int, seed: int, render_config: RenderConfig) -> dict[str, float]:
    """What an edit benchmark can show with this oracle, on held-out identities with random source/target AUs.

    identity_error: oracle error of the unedited source against the target (the do-nothing baseline);
    ceiling_error: oracle error of a perfect edit (the target re-rendered on the same identity);
    ceiling_ratio: their ratio, the best edited/identity ratio any editor can reach.
    """
    rng = np.random.default_rng(_seed("oracle-edit-pairs", int(seed)))
    au_names = oracle.config.au_names
    source = np.stack([random_aus(rng, au_names=au_names) for _ in range(n_pairs)])
    target = np.stack([random_aus(rng, au_names=au_names) for _ in range(n_pairs)])
    identities = [random_identity(heldout_identity_seed(seed, 1_000_000 + i)) for i in range(n_pairs)]
    identity_error = au_error(oracle, render_batch(identities, source, render_config), target)
    ceiling_error = au_error(oracle, render_batch(identities, target, render_config), target)
    return {"identity_error": identity_error, "ceiling_error": ceiling_error,
            "ceiling_ratio": ceiling_error / max(identity_error, 1e-12)}


# ---------------------------------------------------------------- training


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Photometric noise and flips [B, 3, S, S]: none of them changes the AUs (the renderer is symmetric)."""
    b = x.shape[0]

    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=generator)

    flip = torch.rand(b, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    x = x * u(0.9, 1.1, b, 1, 1, 1) + u(-0.08, 0.08, b, 1, 1, 1)
    # A light blur on some images, like a generator's softer output.
    blur = torch.rand(b, generator=generator) < 0.3
    kernel = torch.tensor([0.25, 0.5, 0.25])
    kernel2d = (kernel[:, None] * kernel[None, :]).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel2d, groups=3)
    x = torch.where(blur[:, None, None, None], blurred, x)
    x = x + torch.randn(x.shape, generator=generator) * u(0.0, 0.03, b, 1, 1, 1)
    return x.clamp(-1.0, 1.0)


def train_oracle(config: OracleTrainConfig, n_train: int, seed: int, device: str = "cpu",
                 progress: bool = False) -> tuple[AUOracle, dict[str, Any]]:
    """Render n_train faces, train the oracle, and report held-out error against trivial baselines.

    Everything (identities, AUs, init, batches, augmentation) derives from `seed`.
    """
    if n_train < config.batch_size:
        raise ValueError(f"n_train={n_train} is smaller than batch_size={config.batch_size}")
    t0 = time.perf_counter()
    train_images, train_aus = render_training_set(n_train, seed, config)
    render_s = time.perf_counter() - t0

    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
        torch.manual_seed(_seed("oracle-init", int(seed)) % 2 ** 63)
        oracle = AUOracle(config.model).to(device)
    generator = torch.Generator().manual_seed(_seed("oracle-batches", int(seed)) % 2 ** 63)
    x_all = torch.from_numpy(train_images).permute(0, 3, 1, 2).contiguous()              # [N, 3, S, S] uint8
    cols = torch.tensor([AU_INDEX[a] for a in config.model.au_names])
    y_all = torch.from_numpy(train_aus).float()[:, cols]                                # [N, K]
    steps_per_epoch = n_train // config.batch_size
    total_steps = steps_per_epoch * config.epochs
    optimizer = torch.optim.AdamW(oracle.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.learning_rate, total_steps=total_steps,
                                                   pct_start=0.15)
    epoch_losses: list[float] = []
    oracle.train()
    t1 = time.perf_counter()
    for epoch in range(config.epochs):
        order = torch.randperm(n_train, generator=generator)
        losses = []
        for step in range(steps_per_epoch):
            idx = order[step * config.batch_size:(step + 1) * config.batch_size]
            x = x_all[idx].float().div(127.5).sub(1.0)
            if config.augment:
                x = _augment(x, generator)
            predicted = oracle(x.to(device))
            loss = F.mse_loss(predicted, y_all[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        epoch_losses.append(float(np.mean(losses)))
        if progress:
            print(f"oracle epoch {epoch + 1}/{config.epochs}: mse {epoch_losses[-1]:.4f} "
                  f"({time.perf_counter() - t1:.0f} s)", flush=True)
    train_s = time.perf_counter() - t1
    oracle.eval()
    return oracle, evaluate_oracle(oracle, config, seed, train_aus) | {
        "n_train": n_train, "seed": seed, "steps": total_steps, "epoch_mse": epoch_losses,
        "render_seconds": render_s, "train_seconds": train_s, "device": str(device),
    }


def evaluate_oracle(oracle: AUOracle, config: OracleTrainConfig, seed: int, train_aus: np.ndarray) -> dict[str, Any]:
    """Held-out MAE (overall and per AU), the constant baselines, and the edit identity/ceiling errors."""
    images, aus = render_heldout_set(config.n_heldout, seed, config)
    predicted = predict_aus(oracle, images)
    cols = _columns(oracle)
    per_au = np.abs(predicted[:, cols] - aus[:, cols]).mean(axis=0)
    return {
        "heldout_mae": float(per_au.mean()),
        "heldout_mae_per_au": {name: float(v) for name, v in zip(oracle.config.au_names, per_au)},
        **constant_predictor_errors(train_aus, aus, oracle.config.au_names),
        **edit_bounds(oracle, config.n_edit_pairs, seed, config.render),
    }


# ---------------------------------------------------------------- checkpoints


def save_oracle(oracle: AUOracle, directory: str | os.PathLike, report: dict[str, Any] | None = None,
                render: RenderConfig | None = None) -> os.PathLike:
    """Write the oracle as a project checkpoint (safetensors + JSON card with its config and report)."""
    extra = {"report": report or {}}
    if render is not None:
        extra["render"] = {k: getattr(render, k) for k in ("image_size_px", "supersample", "face_scale_frac", "eye_y_frac")}
    return save_checkpoint(directory, oracle.state_dict(), kind=CHECKPOINT_KIND, config=oracle.config, extra=extra)


def load_oracle(directory: str | os.PathLike, device: str = "cpu") -> AUOracle:
    """Load an oracle written by save_oracle (weights only, every key and shape checked), in eval mode."""
    tensors, card = load_checkpoint(directory, kind=CHECKPOINT_KIND)
    oracle = AUOracle(config_from_dict(AUOracleConfig, card["config"]))
    oracle.load_state_dict(tensors, strict=True)
    return oracle.to(device).eval()

