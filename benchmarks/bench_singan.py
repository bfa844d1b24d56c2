"""SinGAN cost and quality: default vs official preset, bank vs single trainings, grouped conv vs vmap, curve."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.singan import (  # noqa: E402
    Critic,
    Generator,
    SinGANConfig,
    measure_quality,
    preset,
    pyramid_sizes,
    scale_channels,
    train_bank,
)

DEFAULT_PRESET = "fast"


# ---------------------------------------------------------------------------------------------------------
# inputs


def load_faces(paths: list[str], size_px: int) -> torch.Tensor:
    """Aligned faces [F, 3, S, S] in [-1, 1]: .npy files (uint8 RGB) if given, else astronaut + Grace Hopper
    aligned by tasks.align (needs the project's venv)."""
    if paths:
        arrays = [np.load(p) for p in paths]
    else:
        from tasks.align import AlignConfig, FaceAligner  # heavy (facenet, cv2): only when no files given

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from conftest import load_astronaut, load_grace_hopper

        aligned = FaceAligner(AlignConfig(image_size_px=size_px)).align([load_astronaut(), load_grace_hopper()])
        arrays = [a.crop for a in aligned]
    for a in arrays:
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise SystemExit(f"faces must be uint8 RGB [H, W, 3], got {a.dtype} {a.shape}")
    return torch.stack([torch.from_numpy(a).permute(2, 0, 1).float() / 127.5 - 1 for a in arrays])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------------
# timing


def probe_iteration_seconds(images: torch.Tensor, config: SinGANConfig, device: torch.device, probe_iters: int) -> list[float]:
    """Seconds per training iteration at each trained scale (coarsest first), from `probe_iters` iterations
    per scale; the first two iterations of a scale (allocation, kernel selection) are not counted."""
    stamps: dict[int, list[float]] = {}

    def progress(scale: int, it: int, total: int) -> None:
        sync(device)
        stamps.setdefault(scale, []).append(time.perf_counter())

    probe = dataclasses.replace(config, iters_per_scale=probe_iters)
    train_bank(images.to(device), probe, list(range(images.shape[0])), device=device, progress=progress)
    per_scale = []
    for scale in sorted(stamps, reverse=True):  # coarsest (largest s) first
        t = stamps[scale]
        per_scale.append(statistics.median(np.diff(t[1:]).tolist()) if len(t) > 2 else t[-1] - t[0])
    return per_scale


def training_seconds(per_iter: list[float], config: SinGANConfig) -> float:
    """Extrapolated training time from per-iteration times of the trained scales (coarsest first)."""
    return sum(per_iter) * config.iters_per_scale


def timed_training(images: torch.Tensor, config: SinGANConfig, device: torch.device, seeds: list[int]):
    sync(device)
    start = time.perf_counter()
    bank = train_bank(images.to(device), config, seeds, device=device)
    sync(device)
    return bank, time.perf_counter() - start


def print_scale_table(
    config_name: str, config: SinGANConfig, sizes, first: int, per_iter: list[float], measured: list[float] | None
) -> None:
    print(f"\n  per scale, {config_name}:")
    print("    scale  size  ch  iters   s/iter  s/scale(extrapolated)" + ("  s/scale(measured)" if measured else ""))
    for j, t_iter in enumerate(per_iter):
        index = first + j
        s, iters = len(sizes) - 1 - index, config.iters_per_scale
        line = (f"    {s:5d}  {sizes[index][0]:4d}  {scale_channels(index, config):3d}  {iters:5d}  {t_iter:7.4f}  "
                f"{t_iter * iters:10.1f}")
        if measured:
            line += f"             {measured[j]:10.1f}"
        print(line)


def section_cost(faces: torch.Tensor, device: torch.device, quick: bool, default_name: str) -> dict:
    face = faces[:1]
    probe_iters = 6 if quick else 20
    results = {}
    print(f"\n== per-face training time on {device} (one face {tuple(face.shape[-2:])} px, K=1) ==")
    for name in ("official", default_name):
        cfg = preset(name)
        sizes = pyramid_sizes(*face.shape[-2:], cfg)
        per_iter = probe_iteration_seconds(face, cfg, device, probe_iters)
        extrapolated = training_seconds(per_iter, cfg)
        results[name] = {"per_iter_s": per_iter, "extrapolated_s": extrapolated}
        measured = None
        if name != "official" and not quick:
            bank, seconds = timed_training(face, cfg, device, [0])
            measured = [entry["seconds"] for entry in bank.train_log]
            results[name]["measured_s"] = seconds
            results[name]["bank"] = bank
        print_scale_table(name, cfg, sizes, cfg.skip_coarse_scales, per_iter, measured)
        note = f"measured {results[name]['measured_s']:.1f} s" if "measured_s" in results[name] else "not run in full"
        print(f"  {name}: {extrapolated:.1f} s per face extrapolated from {probe_iters} iterations/scale ({note})")
    official_s = results["official"]["extrapolated_s"]
    default_s = results[default_name].get("measured_s", results[default_name]["extrapolated_s"])
    basis = "measured" if "measured_s" in results[default_name] else "extrapolated"
    print(f"  -> {default_name} ({basis}) is {official_s / default_s:.1f}x cheaper per face than official "
          f"(official extrapolated from {probe_iters} iterations per scale x {preset('official').iters_per_scale})")
    results["speedup"] = official_s / default_s
    return results


def section_bank(faces: torch.Tensor, device: torch.device, quick: bool, default_name: str) -> dict:
    cfg = preset(default_name)
    probe_iters = 5 if quick else 12
    sizes = [8, 32] if device.type == "cuda" else [8]
    print(f"\n== bank vs single trainings ({default_name} preset, per face, extrapolated from "
          f"{probe_iters} iterations/scale) ==")
    single = training_seconds(probe_iteration_seconds(faces[:1], cfg, device, probe_iters), cfg)
    print(f"  K=1: {single:8.1f} s per face")
    out = {"single_s_per_face": single}
    for k in sizes:
        images = faces[torch.arange(k) % faces.shape[0]]
        bank_s = training_seconds(probe_iteration_seconds(images, cfg, device, probe_iters), cfg)
        ratio = k * single / bank_s
        out[f"bank{k}_s_per_face"] = bank_s / k
        print(f"  K={k}: {bank_s / k:8.1f} s per face -> bank of {k} has "
              f"{ratio:.2f}x the per-face throughput of {k} single trainings")
    return out


def section_grouped_vs_vmap(device: torch.device, quick: bool) -> dict:
    """One generator + critic forward/backward for K=8 members at the finest 128 px scale: grouped convs
    (what the bank uses) vs torch.func.vmap over stacked single-member parameters."""
    from torch.func import functional_call, grad, replace_all_batch_norm_modules_, stack_module_state, vmap

    cfg, k, size, width = preset(DEFAULT_PRESET), 8, 128, 32
    gens = [torch.Generator(device=device).manual_seed(i) for i in range(k)]
    reps = 5 if quick else 20

    def build(members: int, seeds: list[torch.Generator]):
        g = Generator(members, width, cfg).to_empty(device=device)
        d = Critic(members, width, cfg).to_empty(device=device)
        g.init_weights(seeds)
        d.init_weights(seeds)
        return g.train(), d.train()

    z = torch.randn(1, 3 * k, size, size, device=device)
    prev = torch.randn(1, 3 * k, size, size, device=device).clamp(-1, 1)
    amp = torch.full((k,), 0.1, device=device)

    g_grp, d_grp = build(k, gens)

    def grouped_step() -> None:
        g_grp.zero_grad(set_to_none=True)
        d_grp.zero_grad(set_to_none=True)
        loss = -d_grp(g_grp(z, prev, amp)).mean() * k
        loss.backward()

    singles = [build(1, [g]) for g in gens]
    for g, d in singles:
        replace_all_batch_norm_modules_(g)  # vmap cannot update running stats in place
        replace_all_batch_norm_modules_(d)
    g_params, g_bufs = stack_module_state([s[0] for s in singles])
    d_params, d_bufs = stack_module_state([s[1] for s in singles])
    base_g, base_d = singles[0]
    zs, prevs = z.view(k, 1, 3, size, size), prev.view(k, 1, 3, size, size)

    def member_loss(gp, gb, dp, db, zi, pi):
        fake = functional_call(base_g, (gp, gb), (zi, pi, torch.full((1,), 0.1, device=device)))
        return -functional_call(base_d, (dp, db), (fake,)).mean()

    member_grads = vmap(grad(member_loss, argnums=(0, 2)))

    def vmap_step() -> None:
        member_grads(g_params, g_bufs, d_params, d_bufs, zs, prevs)

    def clock(step) -> float:
        for _ in range(2):
            step()
        sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            step()
        sync(device)
        return (time.perf_counter() - start) / reps

    grouped_s, vmap_s = clock(grouped_step), clock(vmap_step)
    print(f"\n== grouped conv vs torch.func.vmap (K={k}, {size} px, {width} ch, G+D forward/backward) ==")
    print(f"  grouped {grouped_s * 1e3:.1f} ms, vmap {vmap_s * 1e3:.1f} ms -> grouped is {vmap_s / grouped_s:.2f}x faster")
    return {"grouped_ms": grouped_s * 1e3, "vmap_ms": vmap_s * 1e3}


def section_cuda_options(faces: torch.Tensor, device: torch.device, quick: bool) -> dict:
    """channels_last and bf16 autocast, per-face per-iteration time of a K=8 bank of the default preset."""
    cfg = preset(DEFAULT_PRESET)
    images = faces[torch.arange(8) % faces.shape[0]]
    probe_iters = 5 if quick else 10
    print("\n== CUDA options (K=8 bank, per-iteration time summed over scales; cudnn.benchmark on) ==")
    out = {}
    torch.backends.cudnn.benchmark = False
    out["cudnn.benchmark off"] = sum(probe_iteration_seconds(images, cfg, device, probe_iters))
    torch.backends.cudnn.benchmark = True
    for name, changes in (("plain fp32", {}), ("channels_last", {"channels_last": True}),
                          ("bf16 autocast", {"bf16_autocast": True}),
                          ("both", {"channels_last": True, "bf16_autocast": True})):
        t = sum(probe_iteration_seconds(images, dataclasses.replace(cfg, **changes), device, probe_iters))
        out[name] = t
        print(f"  {name:14s} {t * 1e3:8.1f} ms/iteration ({t / out['plain fp32']:.2f}x plain)")
    print(f"  plain fp32 without cudnn.benchmark: {out['cudnn.benchmark off'] * 1e3:.1f} ms/iteration")
    return out


# ---------------------------------------------------------------------------------------------------------
# quality


def quality_row(bank, members: list[int], start_scales: list[int], num_samples: int, noise_gain: float = 1.0) -> dict[str, float]:
    rows = [measure_quality(bank, m, start_scales, num_samples, seed=m, noise_gain=noise_gain) for m in members]
    return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}


def print_quality(name: str, q: dict[str, float], n: int) -> None:
    parts = [f"rec RMSE {q['rec_rmse']:.3f}"]
    for s in sorted({int(k.split("_")[1]) for k in q if k.startswith("ssim_")}, reverse=True):
        label = f"N-{n - s}" if s != n else "N"
        parts.append(f"{label}: SSIM {q[f'ssim_{s}']:.3f} div {q[f'diversity_{s}']:.3f} "
                     f"dist {q[f'distance_{s}']:.3f} patch {q[f'realism_{s}']:.3f}")
    print(f"  {name:10s} " + " | ".join(parts))


def print_trade_off(bank, members: list[int], gains=(1.0, 2.0, 4.0, 8.0), num_samples: int = 8) -> dict:
    """Structure vs diversity per start scale and start-scale noise gain, averaged over members."""
    n = bank.coarsest_scale
    starts = [s for s in (n, n - 1, n - 2) if s <= bank.max_start_scale]
    print("    start  gain   SSIM  diversity  dist  patch")
    table = {}
    for gain in gains:
        q = quality_row(bank, members, starts, num_samples, gain)
        for s in starts:
            table[(s, gain)] = q
            print(f"    {'N' if s == n else f'N-{n - s}':5s}  {gain:4g}  {q[f'ssim_{s}']:.3f}  {q[f'diversity_{s}']:9.3f}  "
                  f"{q[f'distance_{s}']:.3f}  {q[f'realism_{s}']:.3f}")
    return {f"{s}@{g:g}": v for (s, g), v in table.items()}


def section_quality(faces: torch.Tensor, device: torch.device, quick: bool, default_name: str) -> dict:
    print("\n== quality (mean over faces; SSIM to the input, div = mean pairwise RMSE of 8 samples / input std, "
          "dist = RMSE to input / input std, patch = nearest-real-patch distance / input std, 0 = copies) ==")
    out = {}
    for name in ("official", default_name):
        cfg = preset(name)
        if quick:  # both presets at 1/20 of their iterations: a smoke test of the numbers, not a verdict
            cfg = dataclasses.replace(cfg, iters_per_scale=max(cfg.iters_per_scale // 20, 10))
        bank, seconds = timed_training(faces, cfg, device, list(range(faces.shape[0])))
        label = name + (f"@{cfg.iters_per_scale}it" if quick else "")
        print(f"  {label}: trained {faces.shape[0]} faces as one bank in {seconds:.1f} s; "
              f"rec RMSE {float(np.mean([measure_quality(bank, m, [], 1)['rec_rmse'] for m in range(faces.shape[0])])):.4f}")
        out[label] = print_trade_off(bank, list(range(faces.shape[0])))
    return out


CURVE = {
    # name: changes to the default preset; iterations vary, and two points change one other lever each.
    "it25": {"iters_per_scale": 25},
    "it50": {"iters_per_scale": 50},
    "it100": {"iters_per_scale": 100},
    "it200": {"iters_per_scale": 200},
    "it400": {"iters_per_scale": 400},
    "it800": {"iters_per_scale": 800},
    "it200_all_scales": {"iters_per_scale": 200, "skip_coarse_scales": 0},
    "it200_wide": {"iters_per_scale": 200, "channels_double_every": 4},
}
CURVE_GAINS = (2.0, 4.0, 8.0)  # extra noise at the start scale, tried at N-1 and N-2


def curve_worker(name: str, face_paths: list[str], seeds_per_face: int, device: torch.device, out_dir: Path,
                 base_preset: str = DEFAULT_PRESET) -> None:
    """Train one curve point as a bank of faces x seeds; write its quality to out_dir/<name>.json."""
    faces = load_faces(face_paths, 128)
    cfg = dataclasses.replace(preset(base_preset), **CURVE[name])
    images = faces.repeat_interleave(seeds_per_face, dim=0)
    bank, seconds = timed_training(images, cfg, device, list(range(images.shape[0])))
    n, members = bank.coarsest_scale, list(range(images.shape[0]))
    starts = [s for s in (n, n - 1, n - 2) if s <= bank.max_start_scale]
    result = {"name": name, "n": n, "seconds": seconds, "preset": base_preset, "config": CURVE[name],
              "size_px": list(faces.shape[-2:]), "gain1": quality_row(bank, members, starts, 8)}
    for gain in CURVE_GAINS:
        rows = [measure_quality(bank, m, starts[-2:], 8, seed=m, noise_gain=gain) for m in members]
        result[f"gain{gain:g}"] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    (out_dir / f"{name}.json").write_text(json.dumps(result))


def section_curve(face_paths: list[str], device: torch.device, seeds_per_face: int, out_dir: Path,
                  points: list[str], base_preset: str) -> dict:
    """On CUDA every curve point runs in its own process, all at once (their wall times overlap, so they
    are no cost measure: cost is iterations x scales, timed solo in the sections above); on CPU one by one."""
    print(f"\n== quality vs iterations ({base_preset} preset + changes; banks of {seeds_per_face} seed(s) x each "
          f"face; {'concurrent processes' if device.type == 'cuda' else 'one after another'}) ==")
    out_dir.mkdir(parents=True, exist_ok=True)
    if device.type == "cuda":
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--device", str(device), "--curve-worker", name, "--curve-dir", str(out_dir),
                 "--threads", "1",
                 "--curve-preset", base_preset, "--seeds-per-face", str(seeds_per_face), "--faces", *face_paths],
                env={**os.environ, "OMP_NUM_THREADS": "1"})
            for name in points
        ]
        for proc in procs:
            proc.wait()
    else:
        for name in points:
            curve_worker(name, face_paths, seeds_per_face, device, out_dir, base_preset)
    results = {}
    for name in points:
        path = out_dir / f"{name}.json"
        if not path.exists():
            print(f"  {name}: failed")
            continue
        results[name] = json.loads(path.read_text())
        print_quality(name, results[name]["gain1"], results[name]["n"])
        for gain in CURVE_GAINS:
            print_quality(f"  gain {gain:g}", results[name][f"gain{gain:g}"], results[name]["n"])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="few probe iterations; quality from short trainings")
    parser.add_argument("--faces", nargs="*", default=[], help="aligned faces as uint8 RGB .npy files")
    parser.add_argument("--size-px", type=int, default=128)
    parser.add_argument("--sections", default="cost,bank,vmap,quality",
                        help="comma list of cost, bank, vmap, cuda, quality, curve")
    parser.add_argument("--seeds-per-face", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 is far faster on a busy machine: "
                        "these small ops otherwise wait for each other's threads)")
    parser.add_argument("--json", help="write all numbers here")
    parser.add_argument("--curve-dir", default="runs/singan_curve", help="where curve points write their JSON")
    parser.add_argument("--curve-points", default=",".join(CURVE), help="comma list of curve points to run")
    parser.add_argument("--curve-preset", default=DEFAULT_PRESET, help="preset the curve points change")
    parser.add_argument("--curve-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes per scale: let cuDNN pick its fastest kernels
    if args.curve_worker:
        curve_worker(args.curve_worker, args.faces, args.seeds_per_face, device, Path(args.curve_dir), args.curve_preset)
        return
    faces = load_faces(args.faces, args.size_px)
    sections = set(args.sections.split(","))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"SinGAN benchmark on {name}, torch {torch.__version__}, {faces.shape[0]} faces of "
          f"{tuple(faces.shape[-2:])} px, default preset '{DEFAULT_PRESET}'{' (quick)' if args.quick else ''}")
    results: dict = {"device": name}
    if "cost" in sections:
        results["cost"] = section_cost(faces, device, args.quick, DEFAULT_PRESET)
    if "bank" in sections:
        results["bank"] = section_bank(faces, device, args.quick, DEFAULT_PRESET)
    if "vmap" in sections:
        results["vmap"] = section_grouped_vs_vmap(device, args.quick)
    if "cuda" in sections and device.type == "cuda":
        results["cuda"] = section_cuda_options(faces, device, args.quick)
    if "quality" in sections:
        results["quality"] = section_quality(faces, device, args.quick, DEFAULT_PRESET)
    if "curve" in sections:
        if not args.faces:
            raise SystemExit("--sections curve needs --faces (its worker processes load them)")
        results["curve"] = section_curve(args.faces, device, args.seeds_per_face, Path(args.curve_dir),
                                         args.curve_points.split(","), args.curve_preset)
    if args.json:
        for part in results.get("cost", {}).values():
            if isinstance(part, dict):
                part.pop("bank", None)
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
