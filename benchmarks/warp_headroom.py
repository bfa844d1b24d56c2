"""How far could the landmark warp get on the synthetic AU benchmark, and what stops it? Scores, on the same held-out
faces, targets, oracle and pixel judges as bench_editors.py:

- the warp as it is (the FACS-authored shape model moves the points);
- the warp fed the renderer's true target landmarks (a perfect shape model: what is left is the warp itself);
- each of those plus the renderer's own expression lines (forehead, brow, nose, cheek and eye lines: the render with
  minus without wrinkle_depth, target minus source), which a warp cannot draw.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/warp_headroom.py --config LEARNING_TEST --out runs/ed64/taught

--out is a benchmark run folder (run_benchmark's out_dir, e.g. bench_editors.py's OUT/taught): its data and oracle
are reused when present, else built there. Prints a table and writes OUT/warp_headroom.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ganimation_bench import (  # noqa: E402
    CONFIGS,
    BenchData,
    EvalSet,
    GANimationBenchConfig,
    ReplayEdits,
    benchmark_oracle,
    build_benchmark_data,
    build_eval_set,
    evaluate_edits,
    prepared_landmarks,
    warp_editor_fn,
)
from models.ganimation import GANimationConfig  # noqa: E402
from tasks.errors import RejectError  # noqa: E402
from tasks.synthetic import Identity, RenderConfig, random_identity, render_face, render_landmarks68  # noqa: E402
from tasks.warp import warp_to_landmarks  # noqa: E402

SCORES = ("ratio", "pixel_ratio", "pixel_ratio_tolerant", "outside_diff")


def expression_lines(identity: Identity, source: np.ndarray, target: np.ndarray, render: RenderConfig) -> np.ndarray:
    """float [S, S, 3]: what the renderer's expression lines add to the target render minus what they add to the
    source render (each: the render minus the same render with wrinkle_depth 0)."""
    flat = dataclasses.replace(identity, wrinkle_depth=0.0)

    def lines(aus: np.ndarray) -> np.ndarray:
        return render_face(identity, aus, render).astype(np.float64) - render_face(flat, aus, render)

    return lines(target) - lines(source)


def true_landmark_edits(eval_set: EvalSet, data: BenchData, render: RenderConfig) -> tuple[np.ndarray, int]:
    """The warp of each held-out face from its prepared landmarks to the renderer's true landmarks of its target
    (uint8 [N, S, S, 3]) and how many it refused (kept unedited)."""
    landmarks = prepared_landmarks(data)
    out, refused = [], 0
    for sid, image, target in zip(eval_set.source_ids, eval_set.images, eval_set.targets):
        goal = render_landmarks68(random_identity(data.identity_seed[sid]), target, render)
        try:
            out.append(warp_to_landmarks(image, landmarks[sid], goal).image)
        except RejectError:
            out.append(image)
            refused += 1
    return np.stack(out), refused


def add_expression_lines(edits: np.ndarray, eval_set: EvalSet, data: BenchData, render: RenderConfig) -> np.ndarray:
    """edits [N, S, S, 3] uint8 with each face's expression_lines added (clipped to 0..255)."""
    out = [np.clip(edit + expression_lines(random_identity(data.identity_seed[sid]), source, target, render), 0, 255)
           for sid, edit, source, target in zip(eval_set.source_ids, edits, eval_set.source_aus, eval_set.targets)]
    return np.round(np.stack(out)).astype(np.uint8)


def run(config: GANimationBenchConfig, out: Path) -> dict:
    """Every row on config's held-out faces; returns {"rows": {name: scores}, "n_eval"}."""
    data = build_benchmark_data(out / "data", config)
    eval_set = build_eval_set(data, config)
    oracle, _ = benchmark_oracle(config, out / "oracle", "cpu", progress=False)
    warped, _ = warp_editor_fn()(eval_set, data)
    true_warped, refused = true_landmark_edits(eval_set, data, config.render)
    candidates = {
        "warp (FACS shape model)": warped,
        "warp, true target landmarks": true_warped,
        "warp + true expression lines": add_expression_lines(warped, eval_set, data, config.render),
        "warp, true landmarks + true expression lines": add_expression_lines(true_warped, eval_set, data,
                                                                             config.render),
    }
    generator_config = GANimationConfig(image_size_px=config.image_size_px, critic_layers=2)
    rows = {name: {k: evaluate_edits(ReplayEdits(generator_config, images), oracle, eval_set)[k] for k in SCORES}
            for name, images in candidates.items()}
    return {"rows": rows, "n_eval": len(eval_set.images), "true_landmark_refused": refused}


def table(report: dict) -> str:
    lines = ["| edits | oracle ratio | strict pixel | tolerant pixel | outside change |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {r['ratio']:.3f} | {r['pixel_ratio']:.3f} | {r['pixel_ratio_tolerant']:.3f} | "
              f"{r['outside_diff']:.4f} |" for name, r in report["rows"].items()]
    return "\n".join(lines) + f"\n\nHeld-out faces: {report['n_eval']}."


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="LEARNING_TEST")
    parser.add_argument("--out", required=True, help="benchmark run folder (data and oracle reused when present)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    report = run(CONFIGS[args.config], out)
    print(table(report))
    (out / "warp_headroom.json").write_text(json.dumps(report | {"config": args.config}, indent=2, default=float))


if __name__ == "__main__":
    main()
