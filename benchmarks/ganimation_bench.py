"""Synthetic AU benchmark for GANimation: build data through the real ingest path, train, score edits with the oracle."""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch

from benchmarks.au_oracle import AUOracle
from benchmarks.oracle import (
    OracleTrainConfig,
    au_errors,
    load_oracle,
    save_oracle,
    small_oracle_config,
    train_oracle,
)
from manifests.reader import read_manifest
from manifests.schema import AU_INDEX, AU_NAMES, EMOTIONS, N_AUS, stable_hash
from models.ganimation import GANimationConfig, Generator, GeneratorOutput
from tasks.align import AlignConfig
from tasks.au_data import ManifestAUDataset, manifest_id
from tasks.ganimation import EditResult, apply_edits, load_ganimation
from tasks.ingest import IngestConfig, ingest_dataset
from tasks.prepare import AUConfig, plan_units, prepare_unit
from tasks.synthetic import (
    RENDERED_AUS,
    RenderConfig,
    au_mask,
    random_aus,
    random_identity,
    render_face,
    write_synthetic_dataset,
)
from tasks.targets import prototype_centre
from tasks.tensors import tensor_to_uint8, uint8_to_tensor
from tasks.train_ganimation import TrainGANimationConfig, latest_checkpoint, train_ganimation

RENDERED_COLUMNS = np.array([AU_INDEX[a] for a in RENDERED_AUS])  # [11] positions in the 17-AU vector
# An AU counts as edited when target and source differ by more than the OpenFace CSV's rounding.
EDITED_AU_TOLERANCE = 1e-3
# The tolerant pixel check forgives what a person would not call a wrong edit: softness (a Gaussian blur of
# this sigma on both images) and drawing a feature up to this many pixels off its true place.
TOLERANT_BLUR_SIGMA_PX = 1.0
TOLERANT_SHIFT_PX = 1


@dataclass(frozen=True)
class GANimationBenchConfig:
    """One benchmark run: synthetic data, the oracle that judges, the GANimation being trained, the evaluation.

    The renders, the oracle and the GANimation all use the oracle's render size. Training faces show
    random AUs (tasks.synthetic.random_aus, the same distribution as the evaluation targets) on
    identities disjoint from the held-out ones the edits are scored on.
    """

    name: str
    train: TrainGANimationConfig
    epochs: int
    oracle: OracleTrainConfig
    oracle_n_train: int
    n_identities: int                 # synthetic identities; test_fraction of them are held out
    per_identity: int                 # faces per identity
    test_fraction: float = 0.2
    au_mode: str = "random"           # training faces: "random" AUs or jittered "emotion" prototypes
    n_eval: int = 200                 # held-out faces edited (one random target each)
    eval_every_epochs: int = 1        # the ratio-over-training table gets a row this often
    seed: int = 0
    threads: int = 1                  # torch CPU threads; 1 is steadiest on a shared machine
    unit_size: int = 512              # prepare work-unit size (images per shard)

    def __post_init__(self) -> None:
        size = self.oracle.render.image_size_px
        if self.train.model.image_size_px != size:
            raise ValueError(f"{self.name}: GANimation image_size_px={self.train.model.image_size_px} must equal "
                             f"the oracle's render size {size}")
        for name in ("epochs", "oracle_n_train", "n_identities", "per_identity", "n_eval", "eval_every_epochs",
                     "threads", "unit_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{self.name}: {name}={getattr(self, name)} must be >= 1")
        if self.au_mode not in ("random", "emotion"):
            raise ValueError(f"{self.name}: au_mode={self.au_mode!r} must be 'random' or 'emotion'")

    @property
    def render(self) -> RenderConfig:
        return self.oracle.render

    @property
    def image_size_px(self) -> int:
        return self.oracle.render.image_size_px


# ---------------------------------------------------------------- the benchmark's named runs

# A small 64 px GANimation: the published trunk with conv_dim 8, three residual blocks with FiLM AU
# conditioning and resize-conv upsampling (transposed convs leave checkerboards at this size), a 4-layer
# critic, one critic step per generator step at a 3x higher critic learning rate, the lr decaying over
# the second half. CPU-sized, so taught by the landmark warp: an L1 term toward the warp's edit of each
# (face, target) pair at weight 100 for the first half of training, then down linearly to 10 at the end;
# the paper's losses all stay. 100 rather than 10: in 3-epoch runs (docs/ganimation-taught.md) weight 10
# left the term at ~4 % of the generator loss and scored worse on every judge.
BENCH_MODEL = GANimationConfig(image_size_px=64, conv_dim=8, repeat_num=3, critic_conv_dim=16, critic_layers=4,
                               upsample="resize_conv", au_film=True)
BENCH_TRAIN = TrainGANimationConfig(model=BENCH_MODEL, batch_size=8, critic_steps_per_generator_step=1,
                                    lr_generator=3e-4, lr_critic=1e-3, lr_decay_fraction=0.5,
                                    warp_teacher_weight=100.0, warp_teacher_hold_fraction=0.5, warp_teacher_floor=0.1)
BENCH_TRAIN_SCRATCH = dataclasses.replace(BENCH_TRAIN, warp_teacher_weight=0.0)  # the paper's losses only
BENCH_ORACLE = OracleTrainConfig(model=small_oracle_config(64), render=RenderConfig(64), epochs=10)

# The slow test's run: 2000 identities x 2 faces (1600 identities train), 10 epochs (4000 generator steps),
# taught by the warp.
LEARNING_TEST = GANimationBenchConfig(name="LEARNING_TEST", train=BENCH_TRAIN, epochs=10, oracle=BENCH_ORACLE,
                                      oracle_n_train=6000, n_identities=2000, per_identity=2, eval_every_epochs=10)
# The same run from scratch (no teacher): the editors table's "GANimation from scratch" row, same faces and targets.
SCRATCH = dataclasses.replace(LEARNING_TEST, name="SCRATCH", train=BENCH_TRAIN_SCRATCH)
# The documented longer run: the same data and models, twice the schedule, scored every 2 epochs.
LONG = dataclasses.replace(LEARNING_TEST, name="LONG", epochs=20, eval_every_epochs=2)
# A smoke run of the same models and teacher on little data (minutes on one core): shows the command works end
# to end; its numbers say nothing about quality.
SMOKE = dataclasses.replace(LEARNING_TEST, name="SMOKE", epochs=2, eval_every_epochs=2, n_identities=60,
                            oracle=dataclasses.replace(BENCH_ORACLE, epochs=2), oracle_n_train=400, n_eval=24)
CONFIGS = {c.name: c for c in (LEARNING_TEST, SCRATCH, LONG, SMOKE)}


# ---------------------------------------------------------------- data through the real ingest path


@dataclass
class BenchData:
    """A prepared synthetic benchmark: the manifest root plus each source's rendering ground truth."""

    prepared: Path
    identity_seed: dict[str, int]     # source_id -> identity seed of the face
    true_aus: dict[str, np.ndarray]   # source_id -> the AUs it was rendered with [17]
    n_train: int
    n_test: int


def build_benchmark_data(root: str | os.PathLike, config: GANimationBenchConfig) -> BenchData:
    """Render the synthetic set, then ingest -> prepare (align "none", AUs and the renderer's exact 68 landmarks
    from OpenFace CSVs, never the detector: so the benchmark runs where dlib is not installed) into root/prepared.

    Reuses root when a previous call finished it (the prepared units are committed and skipped).
    """
    root = Path(root)
    synthetic = root / "synthetic"
    truth_csv = synthetic / "ground_truth.csv"
    if not truth_csv.is_file():
        write_synthetic_dataset(synthetic, config.n_identities, config.per_identity, config.seed, config.render,
                                layout="folders", test_fraction=config.test_fraction, au_mode=config.au_mode)
    ingested = ingest_dataset(synthetic / "images", IngestConfig(layout="folders"))
    # An identity drawn twice with no AU active renders the same bytes; ingest keeps one copy.
    unexpected = [r for r in ingested.rejects if r["reason"] != "duplicate_image"]
    if unexpected:
        raise RuntimeError(f"synthetic data was rejected at ingest: {unexpected[:3]}")
    records = ingested.records
    align = AlignConfig(mode="none", image_size_px=config.image_size_px)
    aus = AUConfig(path=str(synthetic / "openface"))
    prepared = root / "prepared"
    config_hash = stable_hash(["ganimation-bench", config.name, config.seed, dataclasses.asdict(align)], 16)
    for unit in plan_units(records, config.unit_size, config_hash):
        result = prepare_unit(unit, prepared, run_name=f"bench-{config.name}", run_id=f"bench-{config.seed}",
                              align=align, aus=aus, landmarks="openface")
        if result["rejected"]:
            raise RuntimeError(f"synthetic data was rejected at prepare: {result['rejected']}")
    written = read_manifest(prepared, columns=["source_id"]).column("source_id").to_pylist()
    if sorted(written) != sorted(r.source_id for r in records):
        raise RuntimeError(f"{prepared} holds other samples than this benchmark's {len(records)} faces "
                           f"({len(written)} rows): use an empty root")
    identity_seed, true_aus = _read_ground_truth(truth_csv, [r.source_id for r in records])
    n_train = sum(r.split == "train" for r in records)
    return BenchData(prepared, identity_seed, true_aus, n_train, len(records) - n_train)


def _read_ground_truth(truth_csv: Path, source_ids: list[str]) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """Map ingest source ids (relative paths without suffix) to the renderer's identity seed and AUs."""
    by_stem: dict[str, dict[str, str]] = {}
    with open(truth_csv, newline="") as f:
        for row in csv.DictReader(f):
            by_stem[row["name"]] = row
    seeds, aus = {}, {}
    for source_id in source_ids:
        row = by_stem[Path(source_id).name]
        seeds[source_id] = int(row["identity_seed"])
        aus[source_id] = np.array([float(row[name]) for name in AU_NAMES], np.float64)
    return seeds, aus


class InMemoryAUDataset(torch.utils.data.Dataset):
    """A ManifestAUDataset decoded once into memory: the training loop then never decodes a PNG twice."""

    def __init__(self, source: ManifestAUDataset):
        items = [source[i] for i in range(len(source))]
        self.images = torch.stack([image for image, _ in items])        # [N, 3, S, S] in [-1, 1]
        self.aus = torch.stack([aus for _, aus in items]).float()       # [N, 17] in 0..1
        self.landmarks = source.landmarks                               # [N, 68, 2], NaN where a face has none
        self.source_ids = [source.base.rows[i]["source_id"] for i in source.index]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.aus[i]


def load_split(data: BenchData, image_size_px: int, split: str) -> InMemoryAUDataset:
    return InMemoryAUDataset(ManifestAUDataset(data.prepared, image_size_px, split=split))


# ---------------------------------------------------------------- evaluation


@dataclass
class EvalSet:
    """Held-out faces, each with one random target, its identity, and the regions its edit may touch."""

    images: np.ndarray        # uint8 [N, S, S, 3], as read from the prepared manifest
    source_aus: np.ndarray    # [N, 17] from the manifest (OpenFace CSVs)
    targets: np.ndarray       # [N, 17] random_aus, zero outside RENDERED_AUS
    perfect: np.ndarray       # uint8 [N, S, S, 3]: each identity re-rendered with its target (the ceiling)
    edit_masks: np.ndarray    # bool [N, S, S]: pixels the AUs that differ between source and target can change
    source_ids: tuple[str, ...] = ()  # the held-out faces' ids in the prepared manifest


def build_eval_set(data: BenchData, config: GANimationBenchConfig) -> EvalSet:
    """The first n_eval held-out faces (sorted by source id) and seeded random targets."""
    test = load_split(data, config.image_size_px, "test")
    n = min(config.n_eval, len(test))
    images = tensor_to_uint8(test.images[:n])
    source_aus = test.aus[:n].double().numpy()
    rng = np.random.default_rng(int(stable_hash(["ganimation-bench-targets", config.seed], 15), 16))
    targets = np.stack([random_aus(rng) for _ in range(n)])
    perfect, masks = [], []
    for source_id, source, target in zip(test.source_ids[:n], source_aus, targets):
        identity = random_identity(data.identity_seed[source_id])
        perfect.append(render_face(identity, target, config.render))
        edited = [a for a, i in zip(RENDERED_AUS, RENDERED_COLUMNS) if abs(target[i] - source[i]) > EDITED_AU_TOLERANCE]
        masks.append(au_mask(edited, identity, config.render))
    return EvalSet(images, source_aus, targets, np.stack(perfect), np.stack(masks), tuple(test.source_ids[:n]))


class ReplayEdits(torch.nn.Module):
    """A stand-in generator that serves given edited images in order (None: returns its inputs).

    Scores edits of known quality with evaluate_edits; attention is 1 where the output equals the input.
    """

    def __init__(self, config: GANimationConfig, outputs: np.ndarray | None):
        super().__init__()
        self.config = config
        self.outputs = None if outputs is None else uint8_to_tensor(outputs)
        self.served = 0

    def forward(self, images: torch.Tensor, aus: torch.Tensor) -> GeneratorOutput:
        if self.outputs is None:
            out = images
        else:
            out = self.outputs[self.served:self.served + len(images)]
            self.served += len(images)
        attention = (out == images).all(dim=1, keepdim=True).float()  # [B, 1, S, S]
        return GeneratorOutput(out, attention, torch.zeros_like(images))


def tolerant_pixel_distance(images: np.ndarray, reference: np.ndarray, blur_sigma_px: float = TOLERANT_BLUR_SIGMA_PX,
                            shift_px: int = TOLERANT_SHIFT_PX) -> np.ndarray:
    """Per-pixel distance of images to reference that does not punish softness or a small misplacement.

    Both uint8 [N, S, S, 3] stacks are blurred (Gaussian, blur_sigma_px); each pixel of the reference is then
    compared with the best-matching pixel of the image within shift_px (Chebyshev), borders replicated.
    Returns [N, S, S] mean absolute channel differences on a 0..1 scale.
    """
    def blur(stack: np.ndarray) -> np.ndarray:
        stack = stack.astype(np.float32) / 255.0
        if blur_sigma_px <= 0:
            return stack
        return np.stack([cv2.GaussianBlur(im, (0, 0), blur_sigma_px, borderType=cv2.BORDER_REPLICATE) for im in stack])

    a, ref = blur(images), blur(reference)
    r, size = shift_px, a.shape[1]
    padded = np.pad(a, ((0, 0), (r, r), (r, r), (0, 0)), mode="edge")
    best = None
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            d = np.abs(padded[:, dy:dy + size, dx:dx + a.shape[2]] - ref).mean(axis=-1)
            best = d if best is None else np.minimum(best, d)
    return best


def evaluate_edits(generator: Generator, oracle: AUOracle, eval_set: EvalSet, batch_size: int = 32,
                   device: str = "cpu", edited: EditResult | None = None) -> dict[str, float]:
    """Oracle AU error of edited held-out faces against their targets, next to doing nothing and a perfect edit.

    ratio = edited_error / identity_error (lower is better; ceiling_ratio is the best any editor scores).
    outside_diff / inside_diff: mean |edited - input| (0..1 scale) over pixels the edited AUs cannot /
    can change; a good editor leaves the outside alone.
    pixel_ratio: inside those regions, mean |edited - true re-render of the target| over mean |input -
    true re-render| (1 = no closer than doing nothing, 0 = the re-render). Texture that fools the oracle
    without drawing the expression raises it above 1. It is strict: the perfect edit moved by one pixel, or
    blurred with sigma 1 px, scores about 1.
    pixel_ratio_tolerant: the same with tolerant_pixel_distance (blur 1 px, shift 1 px), which forgives
    that and still scores texture well above 1.
    device: where the generator runs (fp16 autocast on CUDA, see apply_edits); the oracle stays on the CPU.
    edited: the generator's edits of eval_set already made (apply_edits), so a caller that timed them does not
    make them twice.
    """
    result = edited if edited is not None else apply_edits(generator, eval_set.images, eval_set.targets,
                                                           batch_size=batch_size, device=device)
    edited_error = float(au_errors(oracle, result.images, eval_set.targets).mean())
    identity_error = float(au_errors(oracle, eval_set.images, eval_set.targets).mean())
    ceiling_error = float(au_errors(oracle, eval_set.perfect, eval_set.targets).mean())
    diff = np.abs(result.images.astype(np.float32) - eval_set.images.astype(np.float32)).mean(axis=-1) / 255.0  # [N, S, S]
    inside, outside = eval_set.edit_masks, ~eval_set.edit_masks
    has_edit = inside.any(axis=(1, 2))
    # Pixel check that an oracle cannot be fooled on: inside the edited regions, how far the edit is from
    # the true re-render of the target, relative to how far the unedited input is from it.
    n_inside = max(inside[has_edit].sum(), 1)

    def region_error(images: np.ndarray, blur_sigma_px: float, shift_px: int) -> float:
        distance = tolerant_pixel_distance(images[has_edit], eval_set.perfect[has_edit], blur_sigma_px, shift_px)
        return float((distance * inside[has_edit]).sum() / n_inside)

    pixel_edit, pixel_input = region_error(result.images, 0.0, 0), region_error(eval_set.images, 0.0, 0)
    tolerant_edit = region_error(result.images, TOLERANT_BLUR_SIGMA_PX, TOLERANT_SHIFT_PX)
    tolerant_input = region_error(eval_set.images, TOLERANT_BLUR_SIGMA_PX, TOLERANT_SHIFT_PX)
    return {
        "edited_error": edited_error,
        "identity_error": identity_error,
        "ceiling_error": ceiling_error,
        "ratio": edited_error / max(identity_error, 1e-12),
        "ceiling_ratio": ceiling_error / max(identity_error, 1e-12),
        "attention_mean": float(result.attention_mean.mean()),
        "outside_diff": float((diff * outside).sum() / max(outside.sum(), 1)),
        "inside_diff": float((diff[has_edit] * inside[has_edit]).sum() / max(inside[has_edit].sum(), 1)),
        "pixel_error": pixel_edit,
        "pixel_ratio": pixel_edit / max(pixel_input, 1e-12),
        "pixel_ratio_tolerant": tolerant_edit / max(tolerant_input, 1e-12),
    }


# ---------------------------------------------------------------- editors that need no training

EditorFn = Callable[[EvalSet, "BenchData"], tuple[np.ndarray, dict[str, float]]]


def prepared_landmarks(data: BenchData) -> dict[str, np.ndarray]:
    """source_id -> the prepared original's 68 landmarks [68, 2] (the renderer's exact points, via OpenFace CSVs)."""
    table = read_manifest(data.prepared, columns=["source_id", "stage", "landmarks"]).to_pylist()
    return {r["source_id"]: np.asarray(r["landmarks"], np.float64).reshape(68, 2)
            for r in table if r["stage"] == "original"}


def warp_editor_fn(au_shape_path: str | None = None) -> EditorFn:
    """The landmark warp as a benchmark editor: each held-out face's prepared landmarks (the renderer's exact
    68 points, read through the OpenFace CSV) and AUs -> its edit toward the target. A rejected edit counts as
    no edit; the count is reported."""
    from tasks.au_shape import load_au_shape
    from tasks.errors import RejectError
    from tasks.warp import WarpEditor

    editor = WarpEditor(load_au_shape(au_shape_path))

    def run(eval_set: EvalSet, data: BenchData) -> tuple[np.ndarray, dict[str, float]]:
        landmarks = prepared_landmarks(data)
        outputs, fractions, rejected = [], [], 0
        started = time.process_time()
        for sid, image, source, target in zip(eval_set.source_ids, eval_set.images, eval_set.source_aus, eval_set.targets):
            try:
                result = editor.edit(image, landmarks.get(sid), source, target)
            except RejectError:
                outputs.append(image)
                rejected += 1
                continue
            outputs.append(result.image)
            fractions.append(result.fraction)
        seconds = time.process_time() - started
        return np.stack(outputs), {"edits_per_cpu_s": len(outputs) / max(seconds, 1e-9), "rejected": float(rejected),
                                   "fraction_mean": float(np.mean(fractions)) if fractions else 0.0}

    return run


def warp_ganimation_editor_fn(checkpoint: str | os.PathLike, au_shape_path: str | None = None,
                              device: str = "cpu") -> EditorFn:
    """warp+GANimation as a benchmark editor: the landmark warp's edit of each held-out face, then the GANimation
    checkpoint (on `device`) from the warped face toward the same target (as `expand --editor warp+ganimation`).
    A face the warp rejects goes to GANimation unwarped. edits_per_cpu_s counts both steps (CPU seconds: on
    CUDA it leaves out the GPU's time); edits_per_s is wall clock."""
    warp = warp_editor_fn(au_shape_path)
    generator = load_ganimation(checkpoint).generator

    def run(eval_set: EvalSet, data: BenchData) -> tuple[np.ndarray, dict[str, float]]:
        started, wall = time.process_time(), time.perf_counter()
        warped, extra = warp(eval_set, data)
        images = apply_edits(generator, warped, eval_set.targets, batch_size=32, device=device).images
        seconds = time.process_time() - started
        return images, extra | {"edits_per_cpu_s": len(images) / max(seconds, 1e-9),
                                "edits_per_s": len(images) / max(time.perf_counter() - wall, 1e-9)}

    return run


def evaluate_editor(editor: EditorFn, oracle: AUOracle, eval_set: EvalSet, data: BenchData) -> dict[str, float]:
    """evaluate_edits for an editor that returns finished images (served through ReplayEdits)."""
    images, extra = editor(eval_set, data)
    # Only the image size matters to ReplayEdits; a 2-layer critic lets sizes below 64 px through the config check.
    config = GANimationConfig(image_size_px=int(images.shape[1]), critic_layers=2)
    return evaluate_edits(ReplayEdits(config, images), oracle, eval_set) | extra


# ---------------------------------------------------------------- the whole benchmark


def run_benchmark(
    config: GANimationBenchConfig,
    out_dir: str | os.PathLike,
    device: str = "cpu",
    progress: bool = False,
    on_eval: Callable[[dict[str, float]], None] | None = None,
    editors: dict[str, EditorFn] | None = None,
    train_ganimation_too: bool = True,
    trained_editors: dict[str, Callable[[Path], EditorFn]] | None = None,
) -> dict[str, Any]:
    """Build data -> train the oracle -> score the untrained editors (e.g. the warp) -> train GANimation, scoring
    its edits every eval_every_epochs -> score the editors built on the trained checkpoint (trained_editors: name
    -> a function of the last checkpoint, e.g. warp_ganimation_editor_fn) -> report. All on the same held-out faces
    and targets.

    Writes out_dir/bench_config.json first and out_dir/report.json at the end. Everything derives from
    config.seed; the GANimation run folder is out_dir/ganimation (resumed if it already holds checkpoints), the
    oracle is kept in out_dir/oracle and reused by a re-run with the same oracle settings (see benchmark_oracle).
    GANimation trains and is scored on `device` (edits_per_s: wall clock there; on the CPU also edits_per_cpu_s).
    """
    out_dir = _start(config, out_dir)
    with _threads(config.threads):
        timings: dict[str, float] = {}
        started = time.perf_counter()

        # 1. Synthetic faces -> ingest -> prepare; held-out faces with random targets.
        data = build_benchmark_data(out_dir / "data", config)
        eval_set = build_eval_set(data, config)
        timings["data_s"] = time.perf_counter() - started

        # 2. The independent judge: an AU oracle trained on its own renders.
        t = time.perf_counter()
        oracle, oracle_report = benchmark_oracle(config, out_dir / "oracle", device, progress)
        timings["oracle_s"] = time.perf_counter() - t

        # 3. Editors that need no training, on the same held-out faces.
        scored = {name: evaluate_editor(fn, oracle, eval_set, data) for name, fn in (editors or {}).items()}
        if scored:  # written at once: GANimation's training may take many minutes more
            (out_dir / "editors.json").write_text(json.dumps(scored, indent=2, sort_keys=True, default=float))

        # 4. Train GANimation; score the latest checkpoint every eval_every_epochs.
        history: list[dict[str, float]] = []
        run_dir = out_dir / "ganimation"

        def evaluate(row: dict[str, float]) -> None:
            generator = load_ganimation(latest_checkpoint(run_dir)).generator
            apply_edits(generator, eval_set.images[:2], eval_set.targets[:2], device=device)  # warm-up (CUDA)
            cpu, wall = time.process_time(), time.perf_counter()
            edited = apply_edits(generator, eval_set.images, eval_set.targets, batch_size=32, device=device)
            n = len(eval_set.images)
            speed = {"edits_per_s": n / max(time.perf_counter() - wall, 1e-9), "eval_device": str(device)}
            if str(device) == "cpu":
                speed["edits_per_cpu_s"] = n / max(time.process_time() - cpu, 1e-9)
            history.append(row | evaluate_edits(generator, oracle, eval_set, device=device, edited=edited) | speed)
            if on_eval is not None:
                on_eval(history[-1])

        t = time.perf_counter()
        if train_ganimation_too:
            _train(config, data, run_dir, device, progress, evaluate)
            if not history:  # the run folder held a finished training: score its last checkpoint once
                evaluate(resumed_training_row(latest_checkpoint(run_dir), config))
        timings["ganimation_s"] = time.perf_counter() - t

        # 5. Editors built on the trained GANimation (e.g. warp+GANimation), on the same faces.
        if train_ganimation_too:
            scored_after = {name: evaluate_editor(make(latest_checkpoint(run_dir)), oracle, eval_set, data)
                            for name, make in (trained_editors or {}).items()}
            for row in scored_after.values():  # their training is GANimation's
                row["train_cpu_seconds"] = history[-1]["train_cpu_seconds"] if history else 0.0
            scored |= scored_after
        timings["total_s"] = time.perf_counter() - started

    report = {
        "name": config.name, "threads": config.threads, "n_train_faces": data.n_train, "n_eval": len(eval_set.targets),
        "oracle": {k: v for k, v in oracle_report.items() if k != "epoch_mse"},
        "history": history, "final": history[-1] if history else {}, "timings": timings, "editors": scored,
        "checkpoint": str(latest_checkpoint(run_dir)) if train_ganimation_too else None,
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=float))
    return report


def train_synthetic(config: GANimationBenchConfig, out_dir: str | os.PathLike, device: str = "cpu",
                    progress: bool = False) -> Path:
    """Build the synthetic data and train GANimation on it, without the oracle (the demo's path).

    Returns the last checkpoint (out_dir/ganimation/checkpoints/epoch_NNNN)."""
    out_dir = _start(config, out_dir)
    with _threads(config.threads):
        data = build_benchmark_data(out_dir / "data", config)
        _train(config, data, out_dir / "ganimation", device, progress, None)
    return latest_checkpoint(out_dir / "ganimation")


def benchmark_oracle(config: GANimationBenchConfig, directory: Path, device: str,
                     progress: bool) -> tuple[AUOracle, dict]:
    """The benchmark's judge, on the CPU: the oracle saved in `directory` (run_benchmark: out_dir/oracle) when it
    was trained with this run's oracle settings, render, number of renders and seed (its card says so); else a
    new one, trained on `device` and saved there. A saved oracle with other settings is an error, not silently
    replaced: the numbers of two runs are comparable only under the same judge. Train one ahead with
    benchmark_oracle(config, Path(RUN) / "oracle", "cpu", True), e.g. before a short GPU lease."""
    wanted = {"train_config": dataclasses.asdict(config.oracle), "n_train": config.oracle_n_train, "seed": config.seed}
    if directory.exists():
        card = json.loads((directory / "config.json").read_text())
        report = card["extra"]["report"]
        found = {k: report.get(k) for k in wanted}
        if json.loads(json.dumps(found)) != json.loads(json.dumps(wanted)):
            raise ValueError(f"{directory} holds an oracle trained with other settings ({found}); this run needs "
                             f"{wanted}: use another run folder or remove it")
        return load_oracle(directory), report | {"reused_from": str(directory)}
    oracle, report = train_oracle(config.oracle, config.oracle_n_train, seed=config.seed, device=device,
                                  progress=progress)
    oracle = oracle.cpu().eval()
    report = report | {"train_config": wanted["train_config"]}
    save_oracle(oracle, directory, report=report, render=config.render)
    return oracle, report


def _start(config: GANimationBenchConfig, out_dir: str | os.PathLike) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench_config.json").write_text(json.dumps(config_to_json(config), indent=2, sort_keys=True))
    return out_dir


@contextlib.contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(config: GANimationBenchConfig, data: BenchData, run_dir: Path, device: str, progress: bool,
           on_checkpoint: Callable[[dict[str, float]], None] | None) -> None:
    """train_ganimation on the prepared train split; on_checkpoint gets {epoch, generator_steps, train
    seconds (wall and CPU)} after each checkpoint (every eval_every_epochs and the last epoch)."""
    train_set = load_split(data, config.image_size_px, "train")
    train_config = dataclasses.replace(config.train, checkpoint_every_epochs=config.eval_every_epochs)
    clock = {"wall": 0.0, "cpu": 0.0, "cpu_mark": time.process_time()}

    def on_epoch(record: dict[str, float]) -> None:
        clock["wall"] += record["seconds"]
        clock["cpu"] += time.process_time() - clock["cpu_mark"]
        if on_checkpoint is not None and (record["epoch"] % config.eval_every_epochs == 0
                                          or record["epoch"] == config.epochs):
            on_checkpoint({"epoch": record["epoch"],
                           "generator_steps": record["step"] // config.train.critic_steps_per_generator_step,
                           "train_seconds": clock["wall"], "train_cpu_seconds": clock["cpu"]})
        clock["cpu_mark"] = time.process_time()  # evaluation time is not training time

    train_ganimation(train_set, train_config, run_dir, config.epochs, seed=config.seed, device=device,
                     progress=progress, on_epoch=on_epoch, data_id=manifest_id(data.prepared))


def resumed_training_row(checkpoint: Path, config: GANimationBenchConfig) -> dict[str, Any]:
    """{epoch, generator_steps, train_seconds, train_cpu_seconds} of a training finished by an earlier process,
    from its checkpoint card: the wall seconds its epochs logged; the CPU seconds are unknown (None)."""
    extra = json.loads((checkpoint / "config.json").read_text())["extra"]
    return {"epoch": extra["epoch"], "generator_steps": extra["step"] // config.train.critic_steps_per_generator_step,
            "train_seconds": float(sum(h["seconds"] for h in extra["history"])), "train_cpu_seconds": None}


def config_to_json(config: GANimationBenchConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def format_report(report: dict[str, Any]) -> str:
    """A plain-text summary: the oracle's quality, the bounds, and the edit ratio over training."""
    o = report["oracle"]
    lines = [
        f"GANimation synthetic AU benchmark: {report['name']} ({report['threads']} torch thread(s), "
        f"{report['n_train_faces']} training faces, {report['n_eval']} held-out edits)",
        f"oracle held-out MAE {o['heldout_mae']:.4f} vs mean predictor {o['mean_predictor_mae']:.4f} "
        f"(median {o['median_predictor_mae']:.4f}); oracle trained {o['train_seconds']:.0f} s on {o['n_train']} renders",
    ]
    if report["history"]:
        f = report["final"]
        lines.append(f"identity (no edit) error {f['identity_error']:.4f}, ceiling (perfect re-render) "
                     f"{f['ceiling_error']:.4f} -> ceiling ratio {f['ceiling_ratio']:.3f}")
    header = ["epoch", "gen steps", "train s", "edited err", "ratio", "pixel ratio", "tolerant", "attn mean",
              "outside diff", "inside diff"]
    lines += ["", " | ".join(header), " | ".join("---" for _ in header)]
    for row in report["history"]:
        lines.append(" | ".join([
            str(row["epoch"]), str(row["generator_steps"]), f"{row['train_seconds']:.0f}", f"{row['edited_error']:.4f}",
            f"{row['ratio']:.3f}", f"{row['pixel_ratio']:.3f}", f"{row['pixel_ratio_tolerant']:.3f}",
            f"{row['attention_mean']:.3f}", f"{row['outside_diff']:.4f}",
            f"{row['inside_diff']:.4f}",
        ]))
    t = report["timings"]
    lines.append(f"\nwall: data {t['data_s']:.0f} s, oracle {t['oracle_s']:.0f} s, GANimation {t['ganimation_s']:.0f} s, "
                 f"total {t['total_s']:.0f} s")
    return "\n".join(lines)


# ---------------------------------------------------------------- emotion contact sheet


def emotion_targets(intensity: float) -> dict[int, np.ndarray]:
    """Emotion id -> its prototype [17] at one intensity, restricted to the AUs the renderer draws
    (the model never saw the others move in synthetic training data)."""
    targets = {}
    for emotion in EMOTIONS:
        target = np.zeros(N_AUS, np.float64)
        target[RENDERED_COLUMNS] = prototype_centre(emotion, (intensity, intensity))[RENDERED_COLUMNS]
        targets[emotion] = target
    return targets


def emotion_sheet(generator: Generator, faces: np.ndarray, identity_seeds: list[int] | None,
                  render_config: RenderConfig, intensity: float = 0.6, tile_px: int = 128) -> np.ndarray:
    """Contact sheet (RGB uint8): per face a row [source, its edit towards each emotion]; with identity
    seeds, a second row under it shows the true re-render of each emotion for comparison."""
    from tasks.report import contact_sheet

    targets = emotion_targets(intensity)
    n = len(faces)
    edits = apply_edits(generator, np.repeat(faces, len(targets), axis=0), np.tile(np.stack(list(targets.values())), (n, 1)),
                        batch_size=32).images.reshape(n, len(targets), *faces.shape[1:])  # [n, 7, S, S, 3]
    rows = []
    for i in range(n):
        rows.append([(faces[i], "source")] + [(edits[i, k], f"{EMOTIONS[e]} edit") for k, e in enumerate(targets)])
        if identity_seeds is not None:
            identity = random_identity(identity_seeds[i])
            rows.append([(faces[i], "source")] + [(render_face(identity, t, render_config), f"{EMOTIONS[e]} true")
                                                  for e, t in targets.items()])
    return contact_sheet(rows, tile_px=tile_px)


def write_emotion_sheet(out_dir: str | os.PathLike, config: GANimationBenchConfig, png_path: str | os.PathLike,
                        split: str = "test", n_faces: int = 4, intensity: float = 0.6) -> Path:
    """The emotion sheet of a finished run_benchmark/train_synthetic folder: its last checkpoint on its own faces."""
    import cv2

    out_dir = Path(out_dir)
    data = build_benchmark_data(out_dir / "data", config)
    faces = load_split(data, config.image_size_px, split)
    # One face per identity, evenly spread over the split, so the sheet shows different people.
    picks = np.linspace(0, len(faces) - 1, n_faces).round().astype(int)
    images = tensor_to_uint8(faces.images[picks])
    seeds = [data.identity_seed[faces.source_ids[i]] for i in picks]
    generator = load_ganimation(latest_checkpoint(out_dir / "ganimation")).generator
    sheet = emotion_sheet(generator, images, seeds, config.render, intensity)
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(png_path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {png_path}")
    return png_path
