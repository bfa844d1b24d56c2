"""What do the benchmark's judges say about edits whose quality we know? A calibration table.

    .venv/bin/python benchmarks/calibrate_pixel_checks.py --out runs/calibration   # ~6 min on 1 core, reused after

Builds the LEARNING_TEST data and oracle (or reuses them from --out), then scores constructed edits of the
held-out faces with evaluate_edits: true re-renders part of the way to the target, the perfect edit drawn
one pixel off or blurred, and texture. Prints the oracle ratio, the strict pixel ratio and the tolerant one
for each, so the thresholds of the learning test can be read against edits a person would accept or not.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ganimation_bench import (  # noqa: E402
    LEARNING_TEST,
    ReplayEdits,
    build_benchmark_data,
    build_eval_set,
    evaluate_edits,
    load_split,
)
from benchmarks.oracle import load_oracle, save_oracle, train_oracle  # noqa: E402
from tasks.synthetic import random_identity, render_face  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/calibration", help="data + oracle folder (reused when present)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise cases")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config, out = LEARNING_TEST, Path(args.out)
    data = build_benchmark_data(out / "data", config)
    eval_set = build_eval_set(data, config)
    if not (out / "oracle").is_dir():
        oracle, report = train_oracle(config.oracle, config.oracle_n_train, seed=config.seed)
        save_oracle(oracle, out / "oracle", report, config.oracle.render)
    oracle = load_oracle(out / "oracle")

    test = load_split(data, config.image_size_px, "test")
    identities = [random_identity(data.identity_seed[s]) for s in test.source_ids[:len(eval_set.targets)]]
    source, target, masks = eval_set.source_aus, eval_set.targets, eval_set.edit_masks

    def render(fraction: float) -> np.ndarray:
        aus = np.clip(source + fraction * (target - source), 0, 1)
        return np.stack([render_face(i, a, config.render) for i, a in zip(identities, aus)])

    def inside(edit: np.ndarray) -> np.ndarray:
        """The input with the edited regions taken from `edit`."""
        out = eval_set.images.copy()
        out[masks] = edit[masks]
        return out

    rng = np.random.default_rng(args.seed)
    noise = rng.normal(0, 25, eval_set.images.shape) * masks[..., None]
    orange = np.array([255, 120, 0], np.float32)
    cases = {
        "no edit": eval_set.images,
        "a quarter of the way": render(0.25),
        "half way": render(0.5),
        "three quarters": render(0.75),
        "perfect re-render": eval_set.perfect,
        "perfect, 1.3x overshoot": render(1.3),
        "perfect, whole face 1 px right": np.roll(eval_set.perfect, 1, axis=2),
        "perfect, whole face 1 px diagonal": np.roll(eval_set.perfect, (1, 1), axis=(1, 2)),
        "perfect, blurred sigma 1 px": np.stack([cv2.GaussianBlur(p, (0, 0), 1.0) for p in eval_set.perfect]),
        "input + noise sd 25 in the regions": np.clip(eval_set.images + noise, 0, 255).astype(np.uint8),
        "input + 40% orange in the regions": inside((0.6 * eval_set.images + 0.4 * orange).astype(np.uint8)),
    }
    print(f"{len(eval_set.targets)} held-out faces of {config.name}, random targets")
    print(f"{'constructed edit':38s} {'oracle ratio':>12s} {'pixel ratio':>12s} {'tolerant':>9s}")
    for name, images in cases.items():
        r = evaluate_edits(ReplayEdits(config.train.model, images), oracle, eval_set)
        print(f"{name:38s} {r['ratio']:12.3f} {r['pixel_ratio']:12.3f} {r['pixel_ratio_tolerant']:9.3f}", flush=True)


if __name__ == "__main__":
    main()
