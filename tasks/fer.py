"""Downstream check: train one FER classifier on the originals and one on the expansion, same seed and budget."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from manifests.atomic import atomic_write_text
from manifests.dataset import ManifestDataset
from manifests.schema import EMOTIONS, STAGES

ARCHS = ("resnet18", "small_cnn")
N_CLASSES = len(EMOTIONS)  # 7: label id k (1..7) is class k - 1
CLASS_NAMES: tuple[str, ...] = tuple(EMOTIONS[k] for k in sorted(EMOTIONS))
RUNS = ("originals", "expanded")
REPORT_MD = "fer_report.md"
REPORT_JSON = "fer_report.json"
CONFIG_JSON = "fer_config.json"
# Up to this input size ResNet-18 gets a 3x3 stride-1 stem (its maxpool kept), so a 64 px face ends
# in 4x4 maps, as torchvision's own stem does for a 128 px one.
SMALL_INPUT_MAX_PX = 64


@dataclass(frozen=True)
class FERConfig:
    """One training recipe, used unchanged for both runs.

    The budget is `steps` optimisation steps of `batch_size` images, not epochs: the expanded set is
    larger, so equal epochs would give it more updates and mix "more data" with "more training".
    """

    arch: str = "resnet18"          # "resnet18" (from scratch) or "small_cnn" (fast on a CPU)
    width: int = 32                 # small_cnn: channels of its first block (then x2, x4, x8)
    image_size_px: int = 64         # images are resized to this square size
    steps: int = 3000               # optimisation steps per run
    batch_size: int = 64
    lr: float = 1e-3                # AdamW peak learning rate (linear warm-up, cosine decay to 0)
    weight_decay: float = 5e-4
    seed: int = 0                   # weights init, batch order, flips
    balanced: bool = False          # sample classes equally (with replacement) instead of shuffled epochs
    hflip: bool = True              # random horizontal flips (expressions are left-right symmetric)
    device: str | None = None       # "cuda" / "cpu"; None: CUDA when present
    num_workers: int = 0            # DataLoader decode workers (the batch order does not depend on it)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        for name in ("image_size_px", "steps", "batch_size", "width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size_px < 16:
            raise ValueError(f"image_size_px must be >= 16 (the networks pool 4-5 times), got {self.image_size_px}")
        if not self.lr > 0 or self.weight_decay < 0 or self.num_workers < 0:
            raise ValueError(f"need lr > 0, weight_decay >= 0, num_workers >= 0; got {self.lr}, "
                             f"{self.weight_decay}, {self.num_workers}")

    def resolved_device(self) -> str:
        return self.device or ("cuda" if torch.cuda.is_available() else "cpu")


# --- networks -----------------------------------------------------------------------------------------


def _small_cnn(width: int = 32) -> nn.Module:
    """Four conv-BN-ReLU-maxpool blocks (width..8 x width channels), global average pool, linear: ~0.4 M
    parameters at width 32, ~0.1 M at width 16 (4x fewer multiply-adds: suited to 48 px faces on a CPU)."""
    layers: list[nn.Module] = []
    channels_in = 3
    for channels in (width, 2 * width, 4 * width, 8 * width):
        layers += [nn.Conv2d(channels_in, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                   nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        channels_in = channels
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels_in, N_CLASSES))


def build_classifier(config: FERConfig) -> nn.Module:
    """A freshly initialised 7-way classifier (no pretrained weights: none exist offline)."""
    if config.arch == "small_cnn":
        return _small_cnn(config.width)
    import torchvision

    model = torchvision.models.resnet18(weights=None, num_classes=N_CLASSES)
    if config.image_size_px <= SMALL_INPUT_MAX_PX:
        # The 7x7 stride-2 stem plus maxpool would leave 2x2 maps of a 64 px input before layer4.
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


def _seeded_classifier(config: FERConfig) -> nn.Module:
    # Module init draws from the global RNG: fork it so the seed decides the weights and the
    # caller's RNG state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return build_classifier(config)


# --- data -----------------------------------------------------------------------------------------------


class ResizeCollate:
    """DataLoader collate: ManifestDataset samples -> (images [B, 3, S, S] in 0..1, classes [B] in 0..6)."""

    def __init__(self, image_size_px: int):
        self.image_size_px = image_size_px

    def __call__(self, batch):
        images, classes = [], []
        for image, label, _aus, row in batch:
            if label not in EMOTIONS:
                raise ValueError(f"sample {row.get('sample_id')!r}: label {label!r} is not an emotion id 1..7")
            if image.shape[-2:] != (self.image_size_px, self.image_size_px):
                image = F.interpolate(image[None], size=(self.image_size_px,) * 2, mode="bilinear",
                                      align_corners=False, antialias=True)[0]
            images.append(image)
            classes.append(label - 1)
        return torch.stack(images), torch.tensor(classes, dtype=torch.long)


def plan_batches(labels: list[int], steps: int, batch_size: int, seed: int, balanced: bool) -> list[list[int]]:
    """Dataset indices for every step, fixed by the seed: shuffled epochs, or class-balanced draws."""
    if not labels:
        raise ValueError("cannot plan batches for an empty training set")
    gen = torch.Generator().manual_seed(seed)
    total = steps * batch_size
    if balanced:
        counts = Counter(labels)
        weights = torch.tensor([1.0 / counts[label] for label in labels], dtype=torch.float64)
        order = torch.multinomial(weights, total, replacement=True, generator=gen)
    else:
        epochs = math.ceil(total / len(labels))
        order = torch.cat([torch.randperm(len(labels), generator=gen) for _ in range(epochs)])[:total]
    return order.view(steps, batch_size).tolist()


def _warmup_cosine(steps: int):
    warmup = max(1, min(100, steps // 10))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return factor


def train_classifier(dataset: ManifestDataset, config: FERConfig, desc: str = "train",
                     losses: list[float] | None = None) -> nn.Module:
    """Train a fresh classifier for exactly config.steps steps; per-step losses go to `losses` if given."""
    device = torch.device(config.resolved_device())
    model = _seeded_classifier(config).to(device)
    batches = plan_batches(dataset.labels(), config.steps, config.batch_size, config.seed, config.balanced)
    # The loader's own generator only seeds its workers; without it the loader would draw from the global RNG.
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=ResizeCollate(config.image_size_px),
                        num_workers=config.num_workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(config.seed))
    return fit_classifier(model, loader, config, desc=desc, losses=losses)


def fit_classifier(model: nn.Module, batches, config: FERConfig, desc: str = "train",
                   losses: list[float] | None = None, augment=None) -> nn.Module:
    """The training loop every FER run shares: config.steps batches of (images [B, 3, S, S] 0..1, classes [B]),
    optional flips (config.hflip) and an optional batch augmentation `augment(images) -> images`, AdamW with
    warm-up and cosine decay; returns the model in eval mode."""
    device = next(model.parameters()).device
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, _warmup_cosine(config.steps))
    flips = torch.Generator().manual_seed(config.seed + 1)  # CPU generator: the same flips on any device
    model.train()
    for images, classes in tqdm(batches, total=config.steps, desc=desc, mininterval=1.0, leave=False):
        if config.hflip:
            flip = torch.rand(images.shape[0], generator=flips) < 0.5  # [B]
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        if augment is not None:
            images = augment(images)
        images = images.to(device, non_blocking=True) * 2.0 - 1.0  # 0..1 -> -1..1
        loss = F.cross_entropy(model(images), classes.to(device))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if losses is not None:
            losses.append(float(loss.detach()))
    return model.eval()


@torch.no_grad()
def evaluate_classifier(model: nn.Module, dataset: ManifestDataset, config: FERConfig) -> dict[str, Any]:
    """Accuracy, per-class recall (None for a class with no test image), their mean, and the 7x7 confusion
    matrix (rows: true class, columns: predicted class; class k is label id k + 1)."""
    if len(dataset) == 0:
        raise ValueError("the test set is empty")
    device = torch.device(config.resolved_device())
    model = model.to(device).eval()
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=False,
                        collate_fn=ResizeCollate(config.image_size_px), num_workers=config.num_workers,
                        generator=torch.Generator().manual_seed(config.seed))
    return score_batches(model, loader, device)


@torch.no_grad()
def score_batches(model: nn.Module, batches, device: torch.device) -> dict[str, Any]:
    """Metrics of an eval-mode model (on `device`) over (images [B, 3, S, S] 0..1, classes [B] 0..6) batches."""
    confusion = torch.zeros(N_CLASSES, N_CLASSES, dtype=torch.long)
    for images, classes in batches:
        predicted = model(images.to(device) * 2.0 - 1.0).argmax(dim=1).cpu()  # [B]
        confusion += torch.bincount(classes * N_CLASSES + predicted, minlength=N_CLASSES ** 2).view(N_CLASSES, N_CLASSES)
    return metrics_from_confusion(confusion)


def metrics_from_confusion(confusion: torch.Tensor) -> dict[str, Any]:
    """Accuracy, per-class recall (None for an absent class), mean recall over present classes, support."""
    support = confusion.sum(dim=1)  # [7] test images per true class
    recall = [int(confusion[k, k]) / int(support[k]) if support[k] else None for k in range(N_CLASSES)]
    present = [r for r in recall if r is not None]
    return {
        "n_test": int(support.sum()),
        "accuracy": int(confusion.trace()) / int(support.sum()),
        "mean_recall": sum(present) / len(present),
        "per_class_recall": recall,
        "support": support.tolist(),
        "confusion": confusion.tolist(),
        "classes": list(CLASS_NAMES),
    }


# --- the comparison ------------------------------------------------------------------------------------


def train_dataset(root: str | os.PathLike, run: str) -> ManifestDataset:
    """What each run trains on: the originals of the train split, or every stage of the expanded train split."""
    if run not in RUNS:
        raise ValueError(f"run must be one of {RUNS}, got {run!r}")
    return ManifestDataset(root, split="train", stage="original" if run == "originals" else None)


def evaluation_dataset(original_root: str | os.PathLike) -> ManifestDataset:
    """Both runs are scored on the prepared (original) manifest's untouched test split."""
    return ManifestDataset(original_root, split="test", stage="original")


def _counts(dataset: ManifestDataset) -> dict[str, Any]:
    by_stage = Counter(r["stage"] for r in dataset.rows)
    by_label = Counter(r["label"] for r in dataset.rows)
    return {"n": len(dataset), "by_stage": {s: by_stage.get(s, 0) for s in STAGES},
            "by_label": {EMOTIONS[k]: by_label.get(k, 0) for k in sorted(EMOTIONS)}}


def describe_data(original_root: str | os.PathLike, expanded_root: str | os.PathLike) -> dict[str, Any]:
    """Counts per stage and label of both training sets and the test set; refuses empty sets and leaks."""
    sets = {"originals": train_dataset(original_root, "originals"),
            "expanded": train_dataset(expanded_root, "expanded"), "test": evaluation_dataset(original_root)}
    for name, dataset in sets.items():
        if len(dataset) == 0:
            raise ValueError(f"the {name} set is empty (roots: {original_root}, {expanded_root})")
    test_sources = {r["source_sha256"] for r in sets["test"].rows}
    leaked = sorted({r["source_id"] for r in sets["expanded"].rows
                     if r["stage"] != "original" and r["source_sha256"] in test_sources})
    if leaked:
        raise ValueError(f"{len(leaked)} test images seed generated training samples (e.g. {leaked[:3]}); "
                         "the comparison would be scored on images the expanded run has seen")
    return {name: _counts(dataset) for name, dataset in sets.items()}


def train_and_evaluate(run: str, train_root: str | os.PathLike, original_root: str | os.PathLike,
                       config: FERConfig) -> dict[str, Any]:
    """One run: train on its data, score on the original test split; small values only."""
    train = train_dataset(train_root, run)
    losses: list[float] = []
    model = train_classifier(train, config, desc=f"FER {run}", losses=losses)
    metrics = evaluate_classifier(model, evaluation_dataset(original_root), config)
    tail = losses[-max(1, len(losses) // 10):]
    metrics.update(n_train=len(train), epochs=config.steps * config.batch_size / len(train),
                   final_loss=sum(tail) / len(tail))
    return metrics


def write_config(out_dir: str | os.PathLike, original_root: str | os.PathLike, expanded_root: str | os.PathLike,
                 config: FERConfig) -> Path:
    """The resolved config, written before any training starts."""
    resolved = {**dataclasses.asdict(config), "device": config.resolved_device()}
    payload = {"original_root": str(original_root), "expanded_root": str(expanded_root), "config": resolved}
    return atomic_write_text(json.dumps(payload, indent=2), Path(out_dir) / CONFIG_JSON)


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def _confusion_table(confusion: list[list[int]]) -> list[str]:
    short = [name[:4] for name in CLASS_NAMES]
    lines = ["| true \\ predicted | " + " | ".join(short) + " |", "|---" * (N_CLASSES + 1) + "|"]
    lines += [f"| {CLASS_NAMES[k]} | " + " | ".join(str(v) for v in row) + " |" for k, row in enumerate(confusion)]
    return lines


def render_report(config: FERConfig, data: dict[str, Any], results: dict[str, dict[str, Any]],
                  original_root: str, expanded_root: str) -> str:
    """Markdown: headline numbers, per-class recall and confusion matrices side by side, the data used."""
    a, b = results["originals"], results["expanded"]
    lines = [
        "# FER evaluation: originals only vs expanded",
        "",
        f"Both runs: `{config.arch}` from scratch at {config.image_size_px} px, seed {config.seed}, "
        f"{config.steps} steps of {config.batch_size} images (the same budget in updates, not epochs), "
        f"AdamW lr {config.lr:g}, weight decay {config.weight_decay:g}, "
        f"{'class-balanced sampling' if config.balanced else 'shuffled epochs'}"
        f"{', horizontal flips' if config.hflip else ''}, device {config.resolved_device()}.",
        f"Originals: `{original_root}` (train, stage original). Expanded: `{expanded_root}` (train, all stages). "
        f"Test: the originals' test split, {a['n_test']} images.",
        "",
        "| | originals only | expanded | change |",
        "|---|---|---|---|",
        f"| training images | {a['n_train']} | {b['n_train']} | |",
        f"| epochs seen | {a['epochs']:.1f} | {b['epochs']:.1f} | |",
        f"| final training loss | {_fmt(a['final_loss'])} | {_fmt(b['final_loss'])} | |",
        f"| test accuracy | {_fmt(a['accuracy'])} | {_fmt(b['accuracy'])} | {_fmt(b['accuracy'] - a['accuracy'], True)} |",
        f"| mean per-class recall | {_fmt(a['mean_recall'])} | {_fmt(b['mean_recall'])} | "
        f"{_fmt(b['mean_recall'] - a['mean_recall'], True)} |",
        "",
        "## Per-class recall",
        "",
        "| class | test images | originals only | expanded | change |",
        "|---|---|---|---|---|",
    ]
    for k, name in enumerate(CLASS_NAMES):
        ra, rb = a["per_class_recall"][k], b["per_class_recall"][k]
        lines.append(f"| {name} | {a['support'][k]} | {_fmt(ra)} | {_fmt(rb)} | {_fmt(_delta(ra, rb), True)} |")
    for run, title in (("originals", "originals only"), ("expanded", "expanded")):
        lines += ["", f"## Confusion matrix: {title} (rows: true, columns: predicted)", ""]
        lines += _confusion_table(results[run]["confusion"])
    lines += ["", "## Data", "", "| set | images | " + " | ".join(STAGES) + " | " + " | ".join(CLASS_NAMES) + " |",
              "|---" * (2 + len(STAGES) + N_CLASSES) + "|"]
    for name, counts in data.items():
        cells = [str(counts["by_stage"][s]) for s in STAGES] + [str(counts["by_label"][c]) for c in CLASS_NAMES]
        lines.append(f"| {name} | {counts['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | os.PathLike, config: FERConfig, data: dict[str, Any],
                 results: dict[str, dict[str, Any]], original_root: str | os.PathLike,
                 expanded_root: str | os.PathLike) -> dict[str, str]:
    """fer_report.md and fer_report.json in out_dir; returns their paths."""
    out_dir = Path(out_dir)
    payload = {"original_root": str(original_root), "expanded_root": str(expanded_root),
               "config": {**dataclasses.asdict(config), "device": config.resolved_device()},
               "data": data, "runs": results}
    json_path = atomic_write_text(json.dumps(payload, indent=2), out_dir / REPORT_JSON)
    md_path = atomic_write_text(render_report(config, data, results, str(original_root), str(expanded_root)),
                                out_dir / REPORT_MD)
    return {"markdown": str(md_path), "json": str(json_path)}


def compare_runs(original_root: str | os.PathLike, expanded_root: str | os.PathLike, config: FERConfig,
                 out_dir: str | os.PathLike) -> dict[str, Any]:
    """Train on the originals, then on the expansion (same seed, steps, batch size); score both on the
    original test split; write fer_report.md + fer_report.json. Returns the JSON payload plus the paths."""
    write_config(out_dir, original_root, expanded_root, config)
    data = describe_data(original_root, expanded_root)
    results = {run: train_and_evaluate(run, original_root if run == "originals" else expanded_root,
                                       original_root, config) for run in RUNS}
    paths = write_report(out_dir, config, data, results, original_root, expanded_root)
    return {"data": data, "runs": results, "report": paths}
