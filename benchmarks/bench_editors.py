"""Editors side by side on the synthetic AU benchmark: the landmark warp (no training), GANimation from scratch,
GANimation taught by the warp, and warp+GANimation, scored on the same held-out faces and targets by the
independent oracle and the pixel judges.

    .venv/bin/python benchmarks/bench_editors.py --config LEARNING_TEST --out runs/editors   # two LEARNING_TEST trainings
    .venv/bin/python benchmarks/bench_editors.py --config LEARNING_TEST --no-scratch         # taught + warp only
    .venv/bin/python benchmarks/bench_editors.py --config SMOKE --out runs/editors-smoke     # minutes: plumbing only
    .venv/bin/python benchmarks/bench_editors.py --config LEARNING_TEST --no-ganimation      # warp only, ~8 min

Prints one table (editor | oracle ratio | strict pixel | tolerant pixel | outside change | training CPU minutes |
edits per CPU second) and writes OUT/report.json (OUT/taught and OUT/scratch hold the two benchmark runs).
The from-scratch run is the same config (seed, faces, targets, models, schedule) with the teacher's weight at 0.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ganimation_bench import CONFIGS, run_benchmark, warp_editor_fn, warp_ganimation_editor_fn  # noqa: E402


def _minutes(cpu_seconds: float | None) -> str:
    return "n/a (resumed)" if cpu_seconds is None else f"{cpu_seconds / 60.0:.1f}"


def table(report: dict) -> str:
    """report: {"rows": {editor name: scores}, "n_eval", "ceiling_ratio"}."""
    lines = ["| editor | oracle ratio | strict pixel | tolerant pixel | outside change | training CPU min | edits / CPU s |",
             "|---|---|---|---|---|---|---|"]
    for name, row in report["rows"].items():
        lines.append(f"| {name} | {row['ratio']:.3f} | {row['pixel_ratio']:.2f} | {row['pixel_ratio_tolerant']:.2f} | "
                     f"{row['outside_diff']:.4f} | {_minutes(row.get('train_cpu_seconds', 0.0))} | "
                     f"{row['edits_per_cpu_s']:.0f} |")
    lines.append(f"\nno edit: ratio 1, pixel ratios 1; perfect re-render: oracle ratio {report['ceiling_ratio']:.3f}, "
                 f"pixel ratios 0. Held-out faces: {report['n_eval']}.")
    return "\n".join(lines)


def run_editors(config_name: str, out: Path, au_shape: str | None = None, scratch: bool = True,
                ganimation: bool = True) -> dict:
    """Every editor on one config's held-out faces; returns {"rows", "n_eval", "ceiling_ratio", "runs"}."""
    config = CONFIGS[config_name]
    taught = run_benchmark(config, out / "taught", editors={"warp (landmark editor)": warp_editor_fn(au_shape)},
                           train_ganimation_too=ganimation,
                           trained_editors={"warp+GANimation (taught)": lambda ckpt: warp_ganimation_editor_fn(ckpt, au_shape)})
    rows = {"warp (landmark editor)": taught["editors"]["warp (landmark editor)"]}
    runs = {"taught": taught}
    taught_name = "GANimation taught" if config.train.warp_teacher_weight > 0 else "GANimation from scratch"
    if ganimation and scratch and config.train.warp_teacher_weight > 0:
        plain = dataclasses.replace(config, name=f"{config.name}-scratch",
                                    train=dataclasses.replace(config.train, warp_teacher_weight=0.0))
        runs["scratch"] = run_benchmark(plain, out / "scratch")
        final = runs["scratch"]["final"]
        rows[f"GANimation from scratch ({final['generator_steps']} generator steps)"] = final
    if ganimation:
        final = taught["final"]
        rows[f"{taught_name} ({final['generator_steps']} generator steps)"] = final
        rows.update({k: v for k, v in taught["editors"].items() if k not in rows})
    bounds = taught["final"] or next(iter(rows.values()))
    return {"rows": rows, "n_eval": taught["n_eval"], "ceiling_ratio": bounds["ceiling_ratio"], "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="LEARNING_TEST")
    parser.add_argument("--out", default=None, help="run folder (default: a temporary folder)")
    parser.add_argument("--au-shape", default=None, help="AU shape model JSON for the warp (default: FACS-authored)")
    parser.add_argument("--no-ganimation", action="store_true", help="score the warp only (no GANimation training)")
    parser.add_argument("--no-scratch", action="store_true", help="skip the from-scratch GANimation training")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="editors-bench-") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        report = run_editors(args.config, out, args.au_shape, scratch=not args.no_scratch,
                             ganimation=not args.no_ganimation)
        print(table(report))
        summary = {"rows": report["rows"], "timings": {k: r["timings"] for k, r in report["runs"].items()}}
        (out / "editors_report.json").write_text(json.dumps(summary, indent=2, default=float))
        print(json.dumps(summary, indent=2, default=float))


if __name__ == "__main__":
    main()
