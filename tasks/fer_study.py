"""The FER study: several training sets (originals, standard augmentation, expansions) scored on the same
held-out originals, over folds split by person and several seeds, with paired comparisons.

A training set is written `NAME=PART+PART...`, each PART one of
    originals            the prepared root's originals (every split in k-fold mode, the train split otherwise)
    aug                  standard augmentation on for this set (flips, crops, small rotations, colour jitter)
    PATH[:stage,...]     the train rows of an expanded root, only these stages (default: all of them)
e.g. `d=originals+runs/edits:warp+aug`. Folds are built from groups: the first group of `group_regex` in each
source_id (CK+'s `S<subject>`), each source its own group without a pattern. A generated sample belongs to its
source's group, so a person's edits never train a fold in which that person is tested.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from manifests.atomic import atomic_write_text
from manifests.dataset import ManifestDataset, decode_png_rgb
from manifests.schema import EMOTIONS, STAGES, stable_hash
from tasks.fer import (
    CLASS_NAMES,
    N_CLASSES,
    FERConfig,
    _seeded_classifier,
    fit_classifier,
    plan_batches,
    score_batches,
)
from tasks.targets import source_group

ORIGINALS = "originals"
AUGMENT = "aug"
STUDY_JSON = "fer_study.json"
STUDY_MD = "fer_study.md"
RUNS_DIR = "runs"


# --- training sets ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """Rows of one root: root None = the prepared root's originals; stages None = every stage."""

    root: str | None
    stages: tuple[str, ...] | None = None

    def describe(self) -> str:
        if self.root is None:
            return ORIGINALS
        return self.root + (":" + ",".join(self.stages) if self.stages else "")


@dataclass(frozen=True)
class TrainingSet:
    name: str
    parts: tuple[Part, ...]
    augment: bool = False

    def describe(self) -> str:
        return "+".join([p.describe() for p in self.parts] + ([AUGMENT] if self.augment else []))


def parse_training_set(text: str) -> TrainingSet:
    """`NAME=PART+PART...` (see the module docstring) -> TrainingSet; ValueError says what is wrong."""
    name, sep, spec = text.partition("=")
    name = name.strip()
    if not sep or not name or not spec.strip():
        raise ValueError(f"training set {text!r}: expected NAME=PART[+PART...], e.g. b=originals+aug")
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"training set name {name!r}: use letters, digits, - and _")
    parts: list[Part] = []
    augment = False
    for token in (t.strip() for t in spec.split("+")):
        if token == ORIGINALS:
            parts.append(Part(None, ("original",)))
        elif token == AUGMENT:
            augment = True
        elif not token:
            raise ValueError(f"training set {text!r}: empty part between '+'")
        else:
            root, colon, stages = token.rpartition(":")
            wanted = tuple(s.strip() for s in stages.split(",")) if colon else ()
            if colon and wanted and all(s in STAGES for s in wanted):
                parts.append(Part(root, wanted))
            elif colon and stages and not any(s in STAGES for s in wanted) and "/" in stages:
                parts.append(Part(token, None))   # a colon inside the path itself
            elif colon:
                raise ValueError(f"training set {text!r}: unknown stage(s) in {stages!r}; stages are {list(STAGES)}")
            else:
                parts.append(Part(token, None))
    if not parts:
        raise ValueError(f"training set {text!r} has no data (only {AUGMENT!r})")
    return TrainingSet(name, tuple(parts), augment)


# --- standard augmentation ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AugmentConfig:
    """A practitioner's standard augmentation, per image, with the ranges of torchvision's
    RandomResizedCrop(scale, ratio 1), RandomRotation(rotate_deg), ColorJitter(brightness, contrast) and
    RandomHorizontalFlip, drawn from a seeded generator and applied to the whole batch at once (one affine
    resampling + two colour factors): torchvision's per-image transforms cost as much as a training step
    of the 48 px classifier on a CPU (measured 48 ms per batch of 64)."""

    crop_scale: tuple[float, float] = (0.8, 1.0)   # share of the area kept by the crop
    rotate_deg: float = 10.0
    brightness: float = 0.3
    contrast: float = 0.3
    hflip: bool = True

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
        if not 0.0 <= self.rotate_deg <= 180.0 or not 0.0 <= self.brightness < 1.0 or not 0.0 <= self.contrast < 1.0:
            raise ValueError("need 0 <= rotate_deg <= 180 and 0 <= brightness, contrast < 1")


class StandardAugment:
    """Batch augmentation images [B, 3, S, S] 0..1 -> same shape; the seed fixes every draw."""

    def __init__(self, config: AugmentConfig, seed: int):
        self.config = config
        self.generator = torch.Generator().manual_seed(seed)

    def _uniform(self, n: int, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=self.generator, dtype=torch.float64)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        c = self.config
        b = images.shape[0]
        side = self._uniform(b, *c.crop_scale).sqrt()                    # crop side, share of the image side
        angle = self._uniform(b, -c.rotate_deg, c.rotate_deg) * math.pi / 180.0
        shift_x = self._uniform(b, -1.0, 1.0) * (1.0 - side)              # crop centre stays inside the image
        shift_y = self._uniform(b, -1.0, 1.0) * (1.0 - side)
        flip = torch.where(torch.rand(b, generator=self.generator) < 0.5, -1.0, 1.0).double() if c.hflip \
            else torch.ones(b, dtype=torch.float64)
        cos, sin = torch.cos(angle) * side, torch.sin(angle) * side
        theta = torch.stack([torch.stack([cos * flip, -sin, shift_x], 1),
                             torch.stack([sin * flip, cos, shift_y], 1)], 1).to(images.dtype)  # [B, 2, 3]
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        bright = self._uniform(b, 1.0 - c.brightness, 1.0 + c.brightness).to(images.dtype)[:, None, None, None]
        contrast = self._uniform(b, 1.0 - c.contrast, 1.0 + c.contrast).to(images.dtype)[:, None, None, None]
        out = (out * bright).clamp(0.0, 1.0)
        grey = out.mean(dim=(1, 2, 3), keepdim=True)
        return ((out - grey) * contrast + grey).clamp(0.0, 1.0)


# --- data ----------------------------------------------------------------------------------------------------


@dataclass
class StudyData:
    """Every image the study reads, decoded once at the classifier's size."""

    images: torch.Tensor                 # uint8 [N, 3, S, S]
    classes: torch.Tensor                # long [N], 0..6 (label id - 1)
    sample_ids: list[str]
    groups: list[str]
    source_sha: list[str]
    stages: list[str]
    splits: list[str]
    originals: list[int]                 # indices of the pool of held-out candidates (prepared originals)
    members: dict[str, list[int]]        # training-set name -> indices (before fold filtering)


def _resize(rgb: np.ndarray, size_px: int) -> torch.Tensor:
    image = torch.from_numpy(rgb).permute(2, 0, 1).float()
    if image.shape[-2:] != (size_px, size_px):
        image = F.interpolate(image[None], size=(size_px, size_px), mode="bilinear", align_corners=False,
                              antialias=True)[0]
    return image.round().clamp(0, 255).to(torch.uint8)


def load_study_data(original_root: str | os.PathLike, sets: Sequence[TrainingSet], image_size_px: int,
                    group_regex: str | None, kfold: bool) -> StudyData:
    """Read the prepared originals and every part of every set (train split of expanded roots)."""
    images: list[torch.Tensor] = []
    rows_out: list[dict] = []
    index: dict[tuple[str, str], int] = {}

    def add(dataset: ManifestDataset, key_root: str) -> list[int]:
        found = []
        for i, row in enumerate(dataset.rows):
            key = (key_root, row["sample_id"])
            if key not in index:
                if row["label"] not in EMOTIONS:
                    raise ValueError(f"{dataset.root}: sample {row['sample_id']} has label {row['label']!r}, "
                                     "not an emotion id 1..7")
                index[key] = len(rows_out)
                images.append(_resize(decode_png_rgb(dataset.read_bytes(i)), image_size_px))
                rows_out.append(row)
            found.append(index[key])
        dataset.close()
        return found

    original = ManifestDataset(original_root, stage="original")
    pool_all = add(original, "<originals>")
    pool = pool_all if kfold else [i for i in pool_all if rows_out[i]["split"] == "test"]
    if not pool:
        raise ValueError(f"{original_root}: no {'original' if kfold else 'test-split original'} images to score on")
    members: dict[str, list[int]] = {}
    for training_set in sets:
        chosen: list[int] = []
        for part in training_set.parts:
            if part.root is None:
                chosen += pool_all if kfold else [i for i in pool_all if rows_out[i]["split"] == "train"]
                continue
            if not Path(part.root).is_dir():
                raise ValueError(f"training set {training_set.name!r}: {part.root} is not a folder")
            got = add(ManifestDataset(part.root, split="train", stage=part.stages), part.root)
            if not got:
                raise ValueError(f"training set {training_set.name!r}: {part.describe()} has no train rows")
            chosen += got
        # One copy of each sample (an expanded root repeats the originals under the same sample_id).
        seen: dict[str, int] = {}
        for i in chosen:
            seen.setdefault(rows_out[i]["sample_id"], i)
        members[training_set.name] = sorted(seen.values())
    return StudyData(
        images=torch.stack(images), classes=torch.tensor([r["label"] - 1 for r in rows_out], dtype=torch.long),
        sample_ids=[r["sample_id"] for r in rows_out],
        groups=[source_group(r["source_id"], group_regex) for r in rows_out],
        source_sha=[r["source_sha256"] for r in rows_out], stages=[r["stage"] for r in rows_out],
        splits=[r["split"] for r in rows_out], originals=pool, members=members)


# --- folds ---------------------------------------------------------------------------------------------------


def assign_folds(group_sizes: Mapping[str, int], k: int, seed: int) -> dict[str, int]:
    """Groups -> fold 0..k-1, every group in one fold: largest groups first (ties in a seeded order), each to the
    fold holding the fewest images so far, so folds are near equal in size."""
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    if len(group_sizes) < k:
        raise ValueError(f"{len(group_sizes)} groups cannot fill {k} folds; lower --folds or check --group-regex")
    order = sorted(group_sizes, key=lambda g: (-group_sizes[g], stable_hash([seed, "fold", g])))
    loads = [0] * k
    folds: dict[str, int] = {}
    for group in order:
        fold = min(range(k), key=lambda f: (loads[f], f))
        folds[group] = fold
        loads[fold] += group_sizes[group]
    return folds


@dataclass(frozen=True)
class FoldPlan:
    """Test indices and, per set, train indices of one fold (or of the split column when folds == 0)."""

    fold: int
    test: tuple[int, ...]
    train: Mapping[str, tuple[int, ...]]
    test_groups: tuple[str, ...]


def plan_folds(data: StudyData, folds: int, seed: int) -> list[FoldPlan]:
    """k folds by group (folds >= 2), or one 'fold' from the prepared split column (folds == 0). Training rows
    of a tested group are left out; a generated sample whose source image is tested is an error (a leak)."""
    if folds == 0:
        tests = [tuple(data.originals)]
    else:
        sizes = Counter(data.groups[i] for i in data.originals)
        assignment = assign_folds(sizes, folds, seed)
        tests = [tuple(i for i in data.originals if assignment[data.groups[i]] == f) for f in range(folds)]
    plans = []
    for f, test in enumerate(tests):
        test_groups = {data.groups[i] for i in test}
        test_sha = {data.source_sha[i] for i in test}
        train = {}
        for name, members in data.members.items():
            kept = tuple(i for i in members if data.groups[i] not in test_groups)
            leaked = sorted({data.sample_ids[i] for i in kept if data.source_sha[i] in test_sha})
            if leaked:
                raise ValueError(f"fold {f}, set {name!r}: {len(leaked)} training samples come from tested images "
                                 f"under another group name (e.g. {leaked[:3]}); check --group-regex")
            if not kept:
                raise ValueError(f"fold {f}, set {name!r}: no training images left")
            train[name] = kept
        plans.append(FoldPlan(f, test, train, tuple(sorted(test_groups))))
    return plans


# --- one run -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyConfig:
    folds: int = 5                       # k >= 2: k-fold by group; 0: the prepared split column
    group_regex: str | None = None       # first group in source_id names the person; None: each source alone
    seeds: tuple[int, ...] = (0, 1, 2)
    fold_seed: int = 0
    fer: FERConfig = FERConfig()
    augment: AugmentConfig = AugmentConfig()

    def __post_init__(self) -> None:
        if self.folds == 1 or self.folds < 0:
            raise ValueError(f"folds must be 0 (use the split column) or >= 2, got {self.folds}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and non-empty, got {self.seeds}")


def run_key(config: StudyConfig, training_set: TrainingSet, plan: FoldPlan, seed: int, data: StudyData) -> str:
    """What decides one run's result: settings, its exact train and test samples, seed."""
    digest = hashlib.sha256()
    for i in plan.train[training_set.name]:
        digest.update(data.sample_ids[i].encode())
    digest.update(b"|test|")
    for i in plan.test:
        digest.update(data.sample_ids[i].encode())
    settings = {"fer": dataclasses.asdict(dataclasses.replace(config.fer, device=None, num_workers=0)),
                "augment": dataclasses.asdict(config.augment) if training_set.augment else None, "seed": seed}
    return stable_hash([settings, digest.hexdigest()], 16)


def _batches(data: StudyData, indices: Sequence[int], config: FERConfig):
    labels = [int(data.classes[i]) for i in indices]
    idx = torch.tensor(indices, dtype=torch.long)
    for batch in plan_batches(labels, config.steps, config.batch_size, config.seed, config.balanced):
        chosen = idx[torch.tensor(batch, dtype=torch.long)]
        yield data.images[chosen].float().div_(255.0), data.classes[chosen]


def score(model: torch.nn.Module, data: StudyData, indices: Sequence[int], config: FERConfig) -> dict[str, Any]:
    idx = torch.tensor(indices, dtype=torch.long)
    chunks = (idx[start:start + config.batch_size] for start in range(0, len(idx), config.batch_size))
    return score_batches(model, ((data.images[c].float().div_(255.0), data.classes[c]) for c in chunks),
                         torch.device(config.resolved_device()))


def train_and_score(data: StudyData, plan: FoldPlan, training_set: TrainingSet, seed: int,
                    config: StudyConfig) -> dict[str, Any]:
    """Train a fresh classifier on the set's rows of this fold, score it on the fold's held-out originals."""
    fer = dataclasses.replace(config.fer, seed=seed)
    train = plan.train[training_set.name]
    model = _seeded_classifier(fer).to(torch.device(fer.resolved_device()))
    augment = StandardAugment(config.augment, seed + 2) if training_set.augment else None
    losses: list[float] = []
    fit_classifier(model, _batches(data, train, fer), fer, desc=f"fold {plan.fold} seed {seed} {training_set.name}",
                   losses=losses, augment=augment)
    metrics = score(model, data, plan.test, fer)
    tail = losses[-max(1, len(losses) // 10):]
    stages = Counter(data.stages[i] for i in train)
    return {**metrics, "fold": plan.fold, "seed": seed, "set": training_set.name, "n_train": len(train),
            "train_by_stage": {s: stages.get(s, 0) for s in STAGES}, "final_loss": sum(tail) / len(tail)}


def _run_path(out_dir: str | os.PathLike, fold: int, seed: int, name: str) -> Path:
    return Path(out_dir) / RUNS_DIR / f"fold{fold}_seed{seed}_{name}.json"


def _saved(path: Path, key: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None   # a damaged file is redone
    return saved.get("result") if saved.get("key") == key else None


def _run_one(data: StudyData, plan: FoldPlan, training_set: TrainingSet, seed: int, config: StudyConfig,
             out_dir: str | os.PathLike) -> dict[str, Any]:
    key = run_key(config, training_set, plan, seed, data)
    path = _run_path(out_dir, plan.fold, seed, training_set.name)
    result = _saved(path, key)
    if result is None:
        result = train_and_score(data, plan, training_set, seed, config)
        atomic_write_text(json.dumps({"key": key, "result": result}, indent=1), path)
    return result


def _worker(args: tuple) -> list[dict[str, Any]]:
    """One process's share of the runs (spawned: loads the data itself, one torch thread)."""
    original_root, sets, config, out_dir, jobs, threads = args
    torch.set_num_threads(threads)
    data = load_study_data(original_root, sets, config.fer.image_size_px, config.group_regex, config.folds >= 2)
    plans = {p.fold: p for p in plan_folds(data, config.folds, config.fold_seed)}
    by_name = {s.name: s for s in sets}
    return [_run_one(data, plans[fold], by_name[name], seed, config, out_dir) for fold, seed, name in jobs]


def run_all(data: StudyData, plans: Sequence[FoldPlan], sets: Sequence[TrainingSet], config: StudyConfig,
            out_dir: str | os.PathLike, on_result=None, workers: int = 1,
            original_root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Every (fold, seed, set) run, in that order. Each result is saved under out/runs/ as soon as it exists and
    a re-run with the same settings and samples reads it back instead of training again. workers > 1 trains
    in that many spawned processes of one torch thread each (needs original_root to reload the data there)."""
    jobs = [(plan.fold, seed, s.name) for plan in plans for seed in config.seeds for s in sets]
    by_fold = {p.fold: p for p in plans}
    by_name = {s.name: s for s in sets}
    if workers <= 1:
        results = []
        for fold, seed, name in jobs:
            results.append(_run_one(data, by_fold[fold], by_name[name], seed, config, out_dir))
            if on_result is not None:
                on_result(results[-1])
        return results
    if original_root is None:
        raise ValueError("workers > 1 needs original_root")
    import concurrent.futures
    import multiprocessing

    todo = [j for j in jobs if _saved(_run_path(out_dir, j[0], j[1], j[2]),
                                      run_key(config, by_name[j[2]], by_fold[j[0]], j[1], data)) is None]
    shares = [todo[w::workers] for w in range(workers)]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(_worker, (str(original_root), list(sets), config, str(out_dir), share, 1))
                   for share in shares if share]
        for future in concurrent.futures.as_completed(futures):
            for result in future.result():
                if on_result is not None:
                    on_result(result)
    # Every run is on disk now: read them back in order.
    return [_run_one(data, by_fold[f], by_name[n], seed, config, out_dir) for f, seed, n in jobs]


# --- summary -------------------------------------------------------------------------------------------------


def _mean_sd(values: Sequence[float]) -> dict[str, float]:
    values = list(values)
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def paired(results: Sequence[Mapping[str, Any]], a: str, b: str, metric: str) -> dict[str, Any]:
    """b - a over the runs that share (fold, seed): mean, sd, wins/ties/losses, and a paired t-test over the
    fold means (the seeds of one fold share its test faces, so the folds are the independent units)."""
    by = {(r["fold"], r["seed"], r["set"]): r[metric] for r in results}
    pairs = sorted((f, s) for (f, s, name) in by if name == a and (f, s, b) in by)
    if not pairs:
        raise ValueError(f"no runs of both {a!r} and {b!r}")
    diffs = [by[(f, s, b)] - by[(f, s, a)] for f, s in pairs]
    folds = sorted({f for f, _ in pairs})
    fold_diffs = [statistics.fmean(by[(f, s, b)] - by[(f, s, a)] for g, s in pairs if g == f) for f in folds]
    out: dict[str, Any] = {"a": a, "b": b, "metric": metric, **_mean_sd(diffs),
                           "wins": sum(d > 0 for d in diffs), "ties": sum(d == 0 for d in diffs),
                           "losses": sum(d < 0 for d in diffs), "fold_diffs": fold_diffs, "p_value": None}
    if len(fold_diffs) >= 2 and statistics.stdev(fold_diffs) > 0:
        from scipy import stats

        out["p_value"] = float(stats.ttest_1samp(fold_diffs, 0.0).pvalue)
    return out


def summarise(results: Sequence[Mapping[str, Any]], sets: Sequence[TrainingSet],
              comparisons: Sequence[tuple[str, str]]) -> dict[str, Any]:
    table = {}
    for training_set in sets:
        runs = [r for r in results if r["set"] == training_set.name]
        recalls = []
        for k in range(N_CLASSES):
            values = [r["per_class_recall"][k] for r in runs if r["per_class_recall"][k] is not None]
            recalls.append(statistics.fmean(values) if values else None)
        folds = sorted({r["fold"] for r in runs})
        table[training_set.name] = {
            "spec": training_set.describe(), "runs": len(runs),
            "n_train_mean": statistics.fmean(r["n_train"] for r in runs),
            "accuracy": _mean_sd(r["accuracy"] for r in runs),
            "mean_recall": _mean_sd(r["mean_recall"] for r in runs),
            "per_class_recall": recalls,
            "per_fold": {f: {"accuracy": statistics.fmean(r["accuracy"] for r in runs if r["fold"] == f),
                             "mean_recall": statistics.fmean(r["mean_recall"] for r in runs if r["fold"] == f)}
                         for f in folds},
        }
    compared = [paired(results, a, b, metric) for a, b in comparisons for metric in ("accuracy", "mean_recall")]
    return {"sets": table, "comparisons": compared, "classes": list(CLASS_NAMES)}


def _pm(stat: Mapping[str, float]) -> str:
    return f"{stat['mean']:.3f} ± {stat['sd']:.3f}"


def render_study(summary: Mapping[str, Any], info: Mapping[str, Any]) -> str:
    sets = summary["sets"]
    short = [c[:4] for c in CLASS_NAMES]
    lines = ["# FER study", "", info.get("headline", ""), "",
             "| set | training data | train images (mean) | accuracy | mean recall | " + " | ".join(short) + " |",
             "|---" * (5 + N_CLASSES) + "|"]
    for name, row in sets.items():
        recall = " | ".join("n/a" if r is None else f"{r:.2f}" for r in row["per_class_recall"])
        lines.append(f"| {name} | `{row['spec']}` | {row['n_train_mean']:.0f} | {_pm(row['accuracy'])} | "
                     f"{_pm(row['mean_recall'])} | {recall} |")
    lines += ["", "Mean ± standard deviation over folds x seeds; per-class recall is the mean over runs.", "",
              "## Per fold (mean over seeds): accuracy / mean recall", "",
              "| set | " + " | ".join(f"fold {f}" for f in next(iter(sets.values()))["per_fold"]) + " |",
              "|---" * (1 + len(next(iter(sets.values()))["per_fold"])) + "|"]
    for name, row in sets.items():
        lines.append(f"| {name} | " + " | ".join(f"{v['accuracy']:.3f} / {v['mean_recall']:.3f}"
                                                 for v in row["per_fold"].values()) + " |")
    if summary["comparisons"]:
        lines += ["", "## Paired comparisons: second set minus first, runs of the same fold and seed", "",
                  "| first | second | metric | mean diff | sd | wins / ties / losses | p (t-test over fold means) |",
                  "|---|---|---|---|---|---|---|"]
        for c in summary["comparisons"]:
            p = "n/a" if c["p_value"] is None else f"{c['p_value']:.3f}"
            lines.append(f"| {c['a']} | {c['b']} | {c['metric']} | {c['mean']:+.3f} | {c['sd']:.3f} | "
                         f"{c['wins']} / {c['ties']} / {c['losses']} | {p} |")
    lines += ["", "## Settings", "", "```json", json.dumps(info.get("settings", {}), indent=2), "```"]
    return "\n".join(lines) + "\n"


def write_study(out_dir: str | os.PathLike, summary: Mapping[str, Any], results: Sequence[Mapping[str, Any]],
                info: Mapping[str, Any]) -> dict[str, str]:
    out = Path(out_dir)
    payload = {**info, "summary": summary, "runs": list(results)}
    json_path = atomic_write_text(json.dumps(payload, indent=1), out / STUDY_JSON)
    md_path = atomic_write_text(render_study(summary, info), out / STUDY_MD)
    return {"markdown": str(md_path), "json": str(json_path)}


def describe_folds(data: StudyData, plans: Sequence[FoldPlan]) -> list[dict[str, Any]]:
    out = []
    for plan in plans:
        labels = Counter(CLASS_NAMES[int(data.classes[i])] for i in plan.test)
        out.append({"fold": plan.fold, "test_images": len(plan.test), "test_groups": len(plan.test_groups),
                    "test_by_class": dict(sorted(labels.items())),
                    "train_images": {name: len(ix) for name, ix in plan.train.items()}})
    return out


def study_settings(original_root: str, sets: Sequence[TrainingSet], config: StudyConfig,
                   comparisons: Sequence[tuple[str, str]]) -> dict[str, Any]:
    return {"original_root": str(original_root), "sets": {s.name: s.describe() for s in sets},
            "folds": config.folds, "group_regex": config.group_regex, "seeds": list(config.seeds),
            "fold_seed": config.fold_seed,
            "fer": {**dataclasses.asdict(config.fer), "device": config.fer.resolved_device()},
            "augment": dataclasses.asdict(config.augment), "comparisons": [list(c) for c in comparisons]}


def default_comparisons(sets: Sequence[TrainingSet]) -> list[tuple[str, str]]:
    """Every set against the first one."""
    return [(sets[0].name, s.name) for s in sets[1:]]


def run_study(original_root: str | os.PathLike, sets: Sequence[TrainingSet], config: StudyConfig,
              out_dir: str | os.PathLike, comparisons: Sequence[tuple[str, str]] | None = None,
              on_result=None, workers: int = 1) -> dict[str, Any]:
    """Load, fold, train every (fold, seed, set), summarise; writes fer_study.md/.json (and runs/ as it goes)."""
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise ValueError(f"training set names repeat: {names}")
    comparisons = list(comparisons) if comparisons is not None else default_comparisons(sets)
    for a, b in comparisons:
        if a not in names or b not in names:
            raise ValueError(f"comparison {a}:{b} names a set that is not given ({names})")
    data = load_study_data(original_root, sets, config.fer.image_size_px, config.group_regex, config.folds >= 2)
    plans = plan_folds(data, config.folds, config.fold_seed)
    settings = study_settings(str(original_root), sets, config, comparisons)
    atomic_write_text(json.dumps(settings, indent=2), Path(out_dir) / "fer_study_config.json")
    results = run_all(data, plans, sets, config, out_dir, on_result, workers=workers, original_root=original_root)
    summary = summarise(results, sets, comparisons)
    mode = f"{config.folds}-fold by group" if config.folds else "the prepared train/test split"
    info = {"headline": f"{len(sets)} training sets x {len(plans)} fold(s) ({mode}) x {len(config.seeds)} seeds; "
                        f"`{config.fer.arch}` at {config.fer.image_size_px} px, {config.fer.steps} steps of "
                        f"{config.fer.batch_size}; scored on held-out originals only.",
            "settings": settings, "folds": describe_folds(data, plans)}
    paths = write_study(out_dir, summary, results, info)
    return {"summary": summary, "folds": info["folds"], "report": paths}


__all__ = ["AugmentConfig", "describe_folds", "FoldPlan", "Part", "StandardAugment", "StudyConfig", "StudyData", "TrainingSet",
           "assign_folds", "default_comparisons", "load_study_data", "paired", "parse_training_set",
           "plan_folds", "run_all", "run_study", "summarise", "train_and_score"]
