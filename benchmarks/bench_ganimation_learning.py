"""Does GANimation learn? The synthetic AU benchmark: oracle quality, bounds, and the edit ratio over training time.

    .venv/bin/python benchmarks/bench_ganimation_learning.py --config LONG --out runs/gan_long   # ~35 min, 1 core
    .venv/bin/python benchmarks/bench_ganimation_learning.py --config LEARNING_TEST              # the slow test's run
    .venv/bin/python benchmarks/bench_ganimation_learning.py --config LONG --out runs/gan_long --sheet sheet.png

Builds the synthetic faces through ingest + prepare, trains the independent AU oracle, trains GANimation,
and every few epochs edits held-out identities towards random targets. ratio = oracle error of the
edits / oracle error of the unedited inputs (lower is better; the ceiling is a perfect re-render).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ganimation_bench import CONFIGS, format_report, run_benchmark, write_emotion_sheet  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="LONG")
    parser.add_argument("--out", default=None, help="run folder (default: a temporary folder, removed at the end)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sheet", default=None, help="also write an emotion-edit contact sheet PNG here")
    args = parser.parse_args()
    config = CONFIGS[args.config]

    def show(row: dict) -> None:
        print(f"epoch {row['epoch']:3d}  gen steps {row['generator_steps']:5d}  train {row['train_seconds']:6.0f} s  "
              f"ratio {row['ratio']:.3f}  pixel ratio {row['pixel_ratio']:.3f} (tolerant {row['pixel_ratio_tolerant']:.3f})  attention {row['attention_mean']:.3f}  "
              f"outside {row['outside_diff']:.4f}  inside {row['inside_diff']:.4f}", flush=True)

    with tempfile.TemporaryDirectory(prefix="ganimation-bench-") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        print(f"config {config.name}: {config}\nrun folder {out}", flush=True)
        report = run_benchmark(config, out, device=args.device, progress=False, on_eval=show)
        print("\n" + format_report(report))
        if args.sheet:
            print(f"emotion contact sheet: {write_emotion_sheet(out, config, args.sheet)}")


if __name__ == "__main__":
    main()
