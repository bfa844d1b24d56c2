"""Does GANimation learn? The synthetic AU benchmark: oracle quality, bounds, and the edit ratio over training time.

    .venv/bin/python benchmarks/bench_ganimation_learning.py --config LONG --out runs/gan_long   # ~35 min, 1 core
    .venv/bin/python benchmarks/bench_ganimation_learning.py --config LEARNING_TEST              # the slow test's run
    .venv/bin/python benchmarks/bench_ganimation_learning.py --config LONG --out runs/gan_long --sheet sheet.png
    .venv/bin/python benchmarks/bench_ganimation_learning.py --config PUBLISHED --out runs/gan_pub  # on CUDA when present
    .venv/bin/python benchmarks/bench_ganimation_learning.py --config PUBLISHED --fit-minutes 5 --out runs/gan_pub

Builds the synthetic faces through ingest + prepare, trains the independent AU oracle, trains GANimation,
and every few epochs edits held-out identities towards random targets. ratio = oracle error of the
edits / oracle error of the unedited inputs (lower is better; the ceiling is a perfect re-render).

PUBLISHED is the paper's size: 128 px, conv_dim 64, 6 residual blocks, batch 25, 5 critic steps per generator
step, Adam 1e-4 (the defaults of TrainGANimationConfig), without the warp teacher unless --warp-teacher is given.
It is meant for a GPU: --device defaults to cuda when one is present.

--fit-minutes M sets the epoch count so that training takes about M minutes on this machine: after the data is
built, two short trainings of the same model on the same faces (a few and three times as many batches, after a
warm-up one) give the seconds per batch and per epoch; the count is printed and written to OUT/fit_epochs.json.
The estimate is cautious: the probes save a checkpoint every epoch, a run only every eval_every_epochs (on an
H200 the published config was estimated at 8.5 s an epoch and ran at 4.6).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ganimation_bench import (  # noqa: E402
    BENCH_ORACLE,
    CONFIGS,
    GANimationBenchConfig,
    InMemoryAUDataset,
    build_benchmark_data,
    format_report,
    load_split,
    run_benchmark,
    warp_editor_fn,
    warp_ganimation_editor_fn,
    write_emotion_sheet,
)
from benchmarks.oracle import small_oracle_config  # noqa: E402
from models.ganimation import GANimationConfig  # noqa: E402
from tasks.synthetic import RenderConfig  # noqa: E402
from tasks.train_ganimation import TrainGANimationConfig, train_ganimation  # noqa: E402


def published_config(image_size_px: int = 128, conv_dim: int = 64, repeat_num: int = 6, critic_conv_dim: int = 64,
                     critic_layers: int = 6, batch_size: int = 25, critic_steps: int = 5, epochs: int = 30,
                     n_identities: int = 4000, per_identity: int = 2, oracle_n_train: int = 8000,
                     oracle_epochs: int = 10, n_eval: int = 200, eval_every_epochs: int = 3,
                     warp_teacher_weight: float = 0.0, threads: int = 1) -> GANimationBenchConfig:
    """The published-size GANimation on the synthetic benchmark (defaults: the paper's model and schedule); the
    arguments exist so a test can run the same code path a few steps on CPU at a tiny size."""
    model = GANimationConfig(image_size_px=image_size_px, conv_dim=conv_dim, repeat_num=repeat_num,
                             critic_conv_dim=critic_conv_dim, critic_layers=critic_layers)
    train = TrainGANimationConfig(model=model, batch_size=batch_size, critic_steps_per_generator_step=critic_steps,
                                  warp_teacher_weight=warp_teacher_weight)
    oracle = dataclasses.replace(BENCH_ORACLE, model=small_oracle_config(image_size_px),
                                 render=RenderConfig(image_size_px), epochs=oracle_epochs)
    return GANimationBenchConfig(name="PUBLISHED", train=train, epochs=epochs, oracle=oracle,
                                 oracle_n_train=oracle_n_train, n_identities=n_identities, per_identity=per_identity,
                                 n_eval=n_eval, eval_every_epochs=eval_every_epochs, threads=threads)


PUBLISHED = published_config()


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _head(dataset: InMemoryAUDataset, n: int) -> InMemoryAUDataset:
    """The first n faces of an in-memory training split (shares its tensors)."""
    part = copy.copy(dataset)
    part.images, part.aus, part.landmarks = dataset.images[:n], dataset.aus[:n], dataset.landmarks[:n]
    part.source_ids = dataset.source_ids[:n]
    return part


def epoch_cost(config: GANimationBenchConfig, train_set: InMemoryAUDataset, device: str,
               probe_batches: int | None = None) -> dict[str, float]:
    """Seconds per batch and the fixed seconds per epoch (sample grid, checkpoint) of config's training on
    `device`, from two timed one-epoch trainings of probe_batches and 3 x probe_batches batches (default: two
    generator steps' worth) after an untimed warm-up, each in a scratch folder."""
    batch, critic = config.train.batch_size, config.train.critic_steps_per_generator_step
    probe_batches = probe_batches or 2 * critic
    seconds = []
    with tempfile.TemporaryDirectory(prefix="ganimation-probe-") as tmp:
        for i, n_batches in enumerate((probe_batches, probe_batches, 3 * probe_batches)):
            part = _head(train_set, min(len(train_set), n_batches * batch))
            started = time.perf_counter()
            train_ganimation(part, config.train, Path(tmp) / str(i), epochs=1, seed=config.seed, device=device)
            seconds.append(time.perf_counter() - started)
    per_batch = max((seconds[2] - seconds[1]) / (2 * probe_batches), 1e-6)
    fixed = max(seconds[1] - probe_batches * per_batch, 0.0)
    n_batches = math.ceil(len(train_set) / batch)
    return {"seconds_per_batch": per_batch, "seconds_fixed": fixed, "batches_per_epoch": n_batches,
            "seconds_per_epoch": n_batches * per_batch + fixed, "probe_seconds": seconds}


def fit_epochs(config: GANimationBenchConfig, out: Path, minutes: float, device: str) -> GANimationBenchConfig:
    """config with the epoch count whose training fits in `minutes` on this machine (at least 1), scored about
    eight times along the way."""
    data = build_benchmark_data(out / "data", config)  # run_benchmark reuses it
    cost = epoch_cost(config, load_split(data, config.image_size_px, "train"), device)
    epochs = max(1, int(minutes * 60 // cost["seconds_per_epoch"]))
    out.mkdir(parents=True, exist_ok=True)
    (out / "fit_epochs.json").write_text(json.dumps(cost | {"minutes": minutes, "device": device, "epochs": epochs},
                                                    indent=2))
    print(f"--fit-minutes {minutes:g}: {cost['seconds_per_batch']:.3f} s per batch, {cost['seconds_per_epoch']:.1f} s "
          f"per epoch of {cost['batches_per_epoch']} batches on {device} -> {epochs} epochs", flush=True)
    return dataclasses.replace(config, epochs=epochs, eval_every_epochs=max(1, math.ceil(epochs / 8)))


def show(row: dict) -> None:
    print(f"epoch {row['epoch']:3d}  gen steps {row['generator_steps']:5d}  train {row['train_seconds']:6.0f} s  "
          f"ratio {row['ratio']:.3f}  pixel ratio {row['pixel_ratio']:.3f} (tolerant {row['pixel_ratio_tolerant']:.3f})  "
          f"attention {row['attention_mean']:.3f}  outside {row['outside_diff']:.4f}  inside {row['inside_diff']:.4f}",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted([*CONFIGS, "PUBLISHED"]), default="LONG")
    parser.add_argument("--out", default=None, help="run folder (default: a temporary folder, removed at the end)")
    parser.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    parser.add_argument("--epochs", type=int, default=None, help="override the config's epochs")
    parser.add_argument("--warp-teacher", type=float, default=None, metavar="WEIGHT",
                        help="override the config's warp-teacher weight (PUBLISHED: 0, off)")
    parser.add_argument("--identities", type=int, default=None, metavar="N",
                        help="override the config's number of synthetic identities (20%% of them held out)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: the config's, 1; more speeds the CPU-side scoring up)")
    parser.add_argument("--fit-minutes", type=float, default=None, metavar="M",
                        help="choose the epoch count so that training takes about M minutes here (overrides --epochs)")
    parser.add_argument("--editors", action="store_true",
                        help="also score the landmark warp and warp+GANimation (the trained checkpoint) on the same "
                             "held-out faces")
    parser.add_argument("--no-ganimation", action="store_true",
                        help="with --editors: score the warp only, train no GANimation (minutes on a CPU)")
    parser.add_argument("--sheet", default=None, help="also write an emotion-edit contact sheet PNG here")
    args = parser.parse_args()
    if args.no_ganimation and (not args.editors or args.sheet or args.fit_minutes is not None):
        parser.error("--no-ganimation needs --editors, and takes no --sheet or --fit-minutes")
    config = PUBLISHED if args.config == "PUBLISHED" else CONFIGS[args.config]
    if args.epochs is not None:
        config = dataclasses.replace(config, epochs=args.epochs, eval_every_epochs=min(config.eval_every_epochs, args.epochs))
    if args.threads is not None:
        config = dataclasses.replace(config, threads=args.threads)
    if args.identities is not None:
        config = dataclasses.replace(config, n_identities=args.identities)
    if args.warp_teacher is not None:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, warp_teacher_weight=args.warp_teacher))
    device = args.device or default_device()
    if device.startswith("cuda"):
        import torch

        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels

    with tempfile.TemporaryDirectory(prefix="ganimation-bench-") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        if args.fit_minutes is not None:
            config = fit_epochs(config, out, args.fit_minutes, device)
        print(f"config {config.name} on {device}: {config}\nrun folder {out}", flush=True)
        editors, trained = {}, {}
        if args.editors:
            editors = {"warp (landmark editor)": warp_editor_fn()}
            trained = {"warp+GANimation": lambda checkpoint: warp_ganimation_editor_fn(checkpoint, device=device)}
        report = run_benchmark(config, out, device=device, progress=False, on_eval=show, editors=editors,
                               trained_editors=trained, train_ganimation_too=not args.no_ganimation)
        print("\n" + format_report(report))
        for name, row in report["editors"].items():
            print(f"{name}: oracle ratio {row['ratio']:.3f}, pixel ratio {row['pixel_ratio']:.2f} (tolerant "
                  f"{row['pixel_ratio_tolerant']:.2f}), outside {row['outside_diff']:.4f}")
        if args.sheet:
            print(f"emotion contact sheet: {write_emotion_sheet(out, config, args.sheet)}")


if __name__ == "__main__":
    main()
