"""GANimation apply throughput: the full task (tasks.ganimation.apply_edits, uint8 in and out) vs a bare generator forward.

    .venv/bin/python benchmarks/bench_ganimation.py                      # published 128 px generator, CPU
    .venv/bin/python benchmarks/bench_ganimation.py --model small --threads 1
    .venv/bin/python benchmarks/bench_ganimation.py --device cuda --n-images 512

Both paths see the same images, targets and batch size; the ratio bare/task is the task's overhead
(1.0 = none). Seeded random weights: throughput does not depend on what the weights learned.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.ganimation import GANimationConfig, Generator, init_weights  # noqa: E402
from tasks.ganimation import apply_edits  # noqa: E402

MODELS = {
    "published": GANimationConfig(),  # 128 px, conv_dim 64, 6 residual blocks, transposed convs
    "small": GANimationConfig(image_size_px=64, conv_dim=16, repeat_num=3, critic_conv_dim=16, critic_layers=4,
                              upsample="resize_conv"),
}


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_task(generator: Generator, images: np.ndarray, targets: np.ndarray, batch_size: int, device: str,
              amp: bool) -> float:
    """Seconds for apply_edits over all images: uint8 -> float, batches, generator, float -> uint8 on the CPU."""
    _sync(device)
    started = time.perf_counter()
    apply_edits(generator, images, targets, batch_size=batch_size, device=device, amp=amp)
    _sync(device)
    return time.perf_counter() - started


def time_bare(generator: Generator, pixels: torch.Tensor, targets: torch.Tensor, batch_size: int, device: str,
              amp: bool) -> float:
    """Seconds for the generator alone over the same batches, inputs already float on the device."""
    on_cuda = torch.device(device).type == "cuda"
    # The same autocast as apply_edits uses on CUDA, so the comparison is like for like.
    autocast = torch.autocast("cuda", dtype=torch.float16) if amp and on_cuda else contextlib.nullcontext()
    _sync(device)
    started = time.perf_counter()
    with torch.inference_mode(), autocast:
        for start in range(0, len(pixels), batch_size):
            generator(pixels[start:start + batch_size], targets[start:start + batch_size])
    _sync(device)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="published")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--n-images", type=int, default=64, help="images per timed pass")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per path; the median is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-amp", action="store_true", help="fp32 on CUDA too")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = MODELS[args.model]
    amp = not args.no_amp

    generator = Generator(config)
    init_weights(generator, torch.Generator().manual_seed(args.seed))
    generator = generator.to(args.device).eval()
    rng = np.random.default_rng(args.seed)
    size = config.image_size_px
    images = rng.integers(0, 256, (args.n_images, size, size, 3), dtype=np.uint8)  # [N, S, S, 3]
    targets = rng.uniform(0, 1, (args.n_images, config.n_aus)).astype(np.float32)  # [N, 17]
    pixels = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0).to(args.device)  # [N, 3, S, S]
    targets_dev = torch.from_numpy(targets).to(args.device)

    print(f"GANimation apply throughput: model {args.model} ({size} px), device {args.device}, "
          f"threads {torch.get_num_threads()}, {args.n_images} images per pass, median of {args.repeats}")
    print("batch | task img/s | bare img/s | bare/task (overhead)")
    print("---|---|---|---")
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        # One untimed pass of each warms caches, cuDNN autotuning and the allocator.
        time_task(generator, images[:batch_size], targets[:batch_size], batch_size, args.device, amp)
        time_bare(generator, pixels[:batch_size], targets_dev[:batch_size], batch_size, args.device, amp)
        task_s, bare_s = [], []
        for _ in range(args.repeats):  # interleaved, so a load spike on a shared machine hits both paths
            task_s.append(time_task(generator, images, targets, batch_size, args.device, amp))
            bare_s.append(time_bare(generator, pixels, targets_dev, batch_size, args.device, amp))
        task_rate = args.n_images / statistics.median(task_s)
        bare_rate = args.n_images / statistics.median(bare_s)
        print(f"{batch_size} | {task_rate:.2f} | {bare_rate:.2f} | {bare_rate / task_rate:.3f}", flush=True)


if __name__ == "__main__":
    main()
