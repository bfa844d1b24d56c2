"""Editors side by side on the synthetic AU benchmark: the landmark warp (no training) and GANimation trained from
scratch, scored on the same held-out faces and targets by the independent oracle and the pixel judges.

    .venv/bin/python benchmarks/bench_editors.py --config LEARNING_TEST --out runs/editors          # ~25 CPU min
    .venv/bin/python benchmarks/bench_editors.py --config LEARNING_TEST --no-ganimation            # warp only, ~8 min

Prints one table (editor | oracle ratio | strict pixel | tolerant pixel | outside change | training CPU minutes |
edits per CPU second) and writes OUT/report.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ganimation_bench import CONFIGS, run_benchmark, warp_editor_fn  # noqa: E402


def table(report: dict) -> str:
    lines = ["| editor | oracle ratio | strict pixel | tolerant pixel | outside change | training CPU min | edits / CPU s |",
             "|---|---|---|---|---|---|---|"]

    def line(name: str, row: dict, train_min: float) -> str:
        return (f"| {name} | {row['ratio']:.3f} | {row['pixel_ratio']:.2f} | {row['pixel_ratio_tolerant']:.2f} | "
                f"{row['outside_diff']:.4f} | {train_min:.1f} | {row['edits_per_cpu_s']:.0f} |")

    for name, row in report["editors"].items():
        lines.append(line(name, row, 0.0))
    if report["final"]:
        final = report["final"]
        lines.append(line(f"GANimation from scratch ({final['generator_steps']} generator steps)", final,
                          final["train_cpu_seconds"] / 60.0))
    bounds = report["final"] or next(iter(report["editors"].values()))
    lines.append(f"\nno edit: ratio 1, pixel ratios 1; perfect re-render: oracle ratio {bounds['ceiling_ratio']:.3f}, "
                 f"pixel ratios 0. Held-out faces: {report['n_eval']}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="LEARNING_TEST")
    parser.add_argument("--out", default=None, help="run folder (default: a temporary folder)")
    parser.add_argument("--au-shape", default=None, help="AU shape model JSON for the warp (default: FACS-authored)")
    parser.add_argument("--no-ganimation", action="store_true", help="score the warp only (no GANimation training)")
    args = parser.parse_args()
    config = CONFIGS[args.config]
    with tempfile.TemporaryDirectory(prefix="editors-bench-") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        report = run_benchmark(config, out, editors={"warp (landmark editor)": warp_editor_fn(args.au_shape)},
                               train_ganimation_too=not args.no_ganimation)
        print(table(report))
        print(json.dumps({"editors": report["editors"], "final": report["final"], "timings": report["timings"]},
                         indent=2, default=float))


if __name__ == "__main__":
    main()
