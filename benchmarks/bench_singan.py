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
from tasks.tensors import tensor_to_uint8, uint8_to_tensor  # noqa: E402

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


def probe_iteration_seconds(images: torch.Tensor, config: SinGANConfig, device: torch.device, probe_iters: int,
                            clock=time.perf_counter) -> list[float]:
    """Seconds per training iteration at each trained scale (coarsest first), from `probe_iters` iterations
    per scale; the first two iterations of a scale (allocation, kernel selection) are not counted.
    clock: time.perf_counter (wall) or time.process_time (CPU seconds of this process, for a shared CPU)."""
    stamps: dict[int, list[float]] = {}

    def progress(scale: int, it: int, total: int) -> None:
        sync(device)
        stamps.setdefault(scale, []).append(clock())

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


# ---------------------------------------------------------------------------------------------------------
# diversity (issue 14): banks trained once per (config, face), saved under --div-dir, measured afterwards

DIVERSITY_CONFIGS = {
    # name: (preset, changes). "today" is the default before issue 14 (`fast_skip2`, then called `fast`).
    "today": ("fast_skip2", {}),
    "skip1_it100": ("fast_skip2", {"skip_coarse_scales": 1, "iters_per_scale": 100}),
    "skip0_it100": ("fast_skip2", {"skip_coarse_scales": 0, "iters_per_scale": 100}),
    # the first trained scale (N-1) trained at 4x more noise: the new `fast`
    "skip1_amp12_it100": ("fast_skip2", {"skip_coarse_scales": 1, "iters_per_scale": 100, "skip_noise_amp_factor": 12.0}),
}


def diversity_config(name: str) -> SinGANConfig:
    base, changes = DIVERSITY_CONFIGS[name]
    return dataclasses.replace(preset(base), **changes)


def _save_blob(path: Path, model, extra: dict) -> None:
    """A bank or prior as one torch file (tensors + meta with `extra`), written to a temp name and renamed."""
    from models.singan import bank_state

    tensors, meta = bank_state(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"tensors": tensors, "meta": {**meta, **extra}}, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").rename(path)


def train_saved_bank(image_uint8: np.ndarray, config: SinGANConfig, seed: int, path: Path) -> dict:
    """Train a one-member bank on one uint8 RGB image and save it (torch file: tensors + meta); CPU seconds
    of the training are returned and stored with it. An existing file is kept (resumable sweeps)."""
    if path.exists():
        return torch.load(path, weights_only=True)["meta"]
    cpu0 = time.process_time()
    bank = train_bank(uint8_to_tensor(image_uint8[None]), config, [seed])
    extra = {"cpu_s": time.process_time() - cpu0, "config": dataclasses.asdict(config), "seed": seed}
    _save_blob(path, bank, extra)
    return torch.load(path, weights_only=True)["meta"]


def load_saved_bank(path: Path):
    from models.singan import bank_from_state

    blob = torch.load(path, weights_only=True)
    cfg = blob["meta"]["config"]
    cfg["adam_betas"] = tuple(cfg["adam_betas"])
    return bank_from_state(SinGANConfig(**cfg), blob["tensors"], blob["meta"]), blob["meta"]


def section_diversity_train(div_dir: Path, faces: list[str], configs: list[str]) -> None:
    for name in configs:
        cfg = diversity_config(name)
        for i, face in enumerate(faces):
            image = np.load(div_dir / "faces" / f"{face}.npy")
            meta = train_saved_bank(image, cfg, 1000 + i, div_dir / "banks" / name / f"{face}.pt")
            print(f"  trained {name} on {face}: {meta['cpu_s']:.1f} CPU s", flush=True)


RAFDB_TRAIN_FACES = 12271


def section_per_source(div_dir: Path, faces: list[str], edits: list[str], config: str, start: str, gain: float,
                       out_json: Path | None) -> dict:
    """One SinGAN per source with the edit injected vs one SinGAN trained on the edit itself: the same edit
    image injected at the same start scale and gain, 8 samples, metrics against the edit (SSIM to the edit,
    landmarks re-detected vs the edit's, blurred diversity, realism vs the edit)."""
    from benchmarks.landmarks_bench import landmark_shift_px

    rows = []
    offset = 0 if start == "N" else int(start[2:])
    for i, face in enumerate(faces):
        for edit in edits:
            edited = np.load(div_dir / "faces" / f"{face}_{edit}.npy")
            source = np.load(div_dir / "faces" / f"{face}.npy")
            edit_px = landmark_shift_px([edited], source)[0]  # how far the edit moved the landmarks
            per_edit_path = div_dir / "banks" / config / f"{face}_{edit}.pt"
            for mode, path in (("per_source", div_dir / "banks" / config / f"{face}.pt"), ("per_edit", per_edit_path)):
                if not path.exists():
                    continue
                bank, meta = load_saved_bank(path)
                samples = draw_samples(bank, edited, bank.coarsest_scale - offset, gain, seed=i)
                rows.append({"face": face, "edit": edit, "mode": mode, "train_cpu_s": meta["cpu_s"],
                             "edit_landmark_px": edit_px,
                             "landmark_px_to_source": float(np.mean(landmark_shift_px(list(samples), source))),
                             **sample_metrics(samples, edited)})
    print(f"\n== one SinGAN per source (edit injected) vs per edit ({config}, {start}, gain {gain:g}; "
          "metrics against the edit) ==")
    print("  face             edit      mode        blur-div   SSIM  realism  lmk px  <=2px  (edit moved / sample to source px)")
    for r in rows:
        print(f"  {r['face']:16s} {r['edit']:9s} {r['mode']:10s}  {r['blurred_diversity']:8.4f}  {r['ssim']:.3f}  "
              f"{r['realism']:7.3f}  {r['landmark_px']:6.2f}  {r['landmark_within_2px']:5.2f}  "
              f"({r['edit_landmark_px']:.2f} / {r['landmark_px_to_source']:.2f})")
    pairs = {(r["face"], r["edit"]) for r in rows if r["mode"] == "per_edit"}
    summary = {}
    for mode in ("per_source", "per_edit"):
        chosen = [r for r in rows if r["mode"] == mode and (r["face"], r["edit"]) in pairs]
        if chosen:
            summary[mode] = {k: float(np.mean([r[k] for r in chosen])) for k in
                             ("blurred_diversity", "ssim", "realism", "landmark_px", "landmark_within_2px",
                              "landmark_px_to_source", "edit_landmark_px")}
            print(f"  mean {mode:10s} over {len(chosen)} edits: " + ", ".join(f"{k} {v:.4f}" for k, v in summary[mode].items()))
    return write_result({"config": config, "start": start, "gain": gain, "rows": rows, "summary": summary}, out_json)


def section_expand_cost(div_dir: Path, sizes: list[int], new_config: SinGANConfig, probe_iters: int,
                        edits: int = 3, regenerations: int = 2) -> dict:
    """CPU seconds of SinGAN work per expanded source (N edits, M regenerations each), today's default (one
    `fast_skip2` SinGAN per edit) vs the new default (one SinGAN per source, edits injected), and the cost
    table against the official preset: per-iteration CPU time (time.process_time, one thread) of every
    trained scale probed for `probe_iters` iterations, times the iterations per scale (extrapolated)."""
    from models.singan import regenerate

    configs = {"official": preset("official"), "today (fast_skip2)": diversity_config("today"), "new": new_config,
               "new, all scales": dataclasses.replace(new_config, skip_coarse_scales=0)}
    out: dict = {"probe_iters": probe_iters, "edits": edits, "regenerations": regenerations, "sizes": {}}
    print(f"\n== CPU seconds per training (one thread, process time, {probe_iters} probe iterations per scale, "
          "extrapolated) ==")
    for size in sizes:
        face = torch.from_numpy(np.load(div_dir / "faces" / f"astronaut_{size}.npy")).permute(2, 0, 1).float()[None] / 127.5 - 1
        row = {}
        for name, cfg in configs.items():
            per_iter = probe_iteration_seconds(face, cfg, torch.device("cpu"), probe_iters, clock=time.process_time)
            row[name] = {"per_iter_cpu_s": per_iter, "train_cpu_s": training_seconds(per_iter, cfg),
                         "scales_trained": len(per_iter)}
        # a regeneration's CPU cost (the same in both plans), from a short trained bank of the new config
        bank = train_bank(face, dataclasses.replace(new_config, iters_per_scale=1), [0])
        n = bank.coarsest_scale
        cpu0 = time.process_time()
        for i in range(10):
            regenerate(bank, 0, face[0], n - 1, 1, [i], 1.0, residual=True)  # the default sampling: + its noise-free pass
        sample_s = (time.process_time() - cpu0) / 10
        today_s = edits * row["today (fast_skip2)"]["train_cpu_s"] + edits * regenerations * sample_s
        new_s = row["new"]["train_cpu_s"] + edits * regenerations * sample_s
        row["per_source"] = {"today_cpu_s": today_s, "new_cpu_s": new_s, "ratio": today_s / new_s,
                             "sample_cpu_s": sample_s}
        out["sizes"][str(size)] = row
        if size == 100:  # RAF-DB's aligned size: its train split, 3 edits and 2 regenerations per face
            faces = RAFDB_TRAIN_FACES
            out["rafdb_train"] = {
                "faces": faces, "today_trainings": faces * edits, "new_trainings": faces,
                "today_cpu_hours": faces * today_s / 3600, "new_cpu_hours": faces * new_s / 3600}
            print(f"  RAF-DB train split ({faces} faces, N={edits}, M={regenerations}) on one such thread: today "
                  f"{faces * today_s / 3600:.0f} CPU hours ({faces * edits} trainings), new {faces * new_s / 3600:.0f} "
                  f"CPU hours ({faces} trainings)")
        off = row["official"]["train_cpu_s"]
        for name in configs:
            t = row[name]["train_cpu_s"]
            print(f"  {size:4d} px  {name:20s} {row[name]['scales_trained']} scales  {t:9.1f} CPU s per training  "
                  f"({off / t:5.1f}x cheaper than official)")
        print(f"  {size:4d} px  per expanded source (N={edits}, M={regenerations}): today {today_s:.1f} CPU s, new "
              f"{new_s:.1f} CPU s -> {today_s / new_s:.1f}x less (a regeneration: {sample_s * 1e3:.1f} ms)")
    return out


DIV_GAINS = (1.0, 2.0, 4.0, 6.0, 8.0)
DIV_SAMPLES = 8


def sample_metrics(samples_u8: np.ndarray, reference_u8: np.ndarray) -> dict[str, float]:
    """Issue 14's numbers for M uint8 samples [M, H, W, 3] of one reference [H, W, 3] (the injected image):
    blurred pairwise diversity (sigma = size/32), raw pairwise |difference|, SSIM to the reference, patch
    realism vs the reference, landmark shift (mean over the 68 points, px) per sample: mean, max, share <= 2 px."""
    from benchmarks.landmarks_bench import landmark_shift_px
    from models.metrics import blurred_diversity, patch_realism, ssim

    samples, ref = uint8_to_tensor(samples_u8), uint8_to_tensor(reference_u8[None])[0]
    shift = landmark_shift_px(list(samples_u8), reference_u8)
    return {
        "blurred_diversity": float(blurred_diversity(samples)),
        "raw_diversity": float(blurred_diversity(samples, sigma_px=0)),
        "ssim": float(ssim(samples, ref[None].expand_as(samples)).mean()),
        "realism": float(patch_realism(samples, ref).mean()),
        "landmark_px": float(np.mean(shift)), "landmark_px_max": float(np.max(shift)),
        "landmark_within_2px": float(np.mean(np.asarray(shift) <= 2.0)),
    }


def mean_metrics(rows: list[dict]) -> dict[str, float]:
    """The mean of every float field over rows; landmark_px_max is the max (the worst sample), when present."""
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if isinstance(rows[0][k], float)}
    if "landmark_px_max" in mean:
        mean["landmark_px_max"] = float(np.max([r["landmark_px_max"] for r in rows]))
    return mean


def write_result(result: dict, out_json: Path | None) -> dict:
    if out_json is not None:
        out_json.write_text(json.dumps(result, indent=1))
    return result


def draw_samples(bank, image_u8: np.ndarray, start_scale: int, gain: float, seed: int, num: int = DIV_SAMPLES,
                 residual: bool = False) -> np.ndarray:
    from models.singan import regenerate

    image = uint8_to_tensor(image_u8[None])[0]
    out = regenerate(bank, 0, image, start_scale, num, [seed * 100 + i for i in range(num)], gain, residual)
    return tensor_to_uint8(out)


def section_diversity_measure(div_dir: Path, faces: list[str], configs: list[str], out_json: Path | None) -> dict:
    """Per config, start scale (N, N-1, N-2 where trained) and start-scale noise gain: the sample metrics,
    averaged over faces (each face: 8 samples from its own bank, injected with the face itself)."""
    rows = []
    for name in configs:
        for i, face in enumerate(faces):
            path = div_dir / "banks" / name / f"{face}.pt"
            if not path.exists():
                print(f"  {name}/{face}: not trained, skipped")
                continue
            bank, meta = load_saved_bank(path)
            image = np.load(div_dir / "faces" / f"{face}.npy")
            n = bank.coarsest_scale
            for offset in (0, 1, 2):
                if n - offset > bank.max_start_scale:
                    continue
                for gain in DIV_GAINS:
                    m = sample_metrics(draw_samples(bank, image, n - offset, gain, seed=i), image)
                    rows.append({"config": name, "face": face, "start": "N" if offset == 0 else f"N-{offset}",
                                 "gain": gain, "train_cpu_s": meta["cpu_s"], **m})
    table = {}
    for r in rows:
        table.setdefault((r["config"], r["start"], r["gain"]), []).append(r)
    print("\n== diversity per start scale and noise gain (mean over faces; 8 samples each; blurred div = mean "
          "pairwise |diff| after sigma=size/32 blur, images 0..1) ==")
    print("  config        start gain  faces  blur-div  raw-div   SSIM  realism  lmk px (max)  <=2px  train CPU s")
    summary = []
    for (name, start, gain), rs in table.items():
        mean = mean_metrics(rs)
        summary.append({"config": name, "start": start, "gain": gain, "faces": len(rs), **mean})
        print(f"  {name:13s} {start:5s} {gain:4g}  {len(rs):5d}  {mean['blurred_diversity']:8.4f}  {mean['raw_diversity']:7.4f}  "
              f"{mean['ssim']:.3f}  {mean['realism']:7.3f}  {mean['landmark_px']:5.2f} ({mean['landmark_px_max']:4.2f})  "
              f"{mean['landmark_within_2px']:5.2f}  {mean['train_cpu_s']:8.1f}")
    return write_result({"rows": rows, "summary": summary, "faces": faces}, out_json)


def write_sample_grid(div_dir: Path, faces: list[str], config: str, start: str, gain: float, path: Path,
                      injected: dict[str, np.ndarray] | None = None, num: int = 6, zoom: int = 1) -> None:
    """PNG grid: one row per face: the injected image, then `num` samples, enlarged `zoom`x (nearest)."""
    from manifests.dataset import encode_png_rgb

    rows = []
    for i, face in enumerate(faces):
        bank, _ = load_saved_bank(div_dir / "banks" / config / f"{face}.pt")
        image = injected[face] if injected else np.load(div_dir / "faces" / f"{face}.npy")
        offset = 0 if start == "N" else int(start[2:])
        samples = draw_samples(bank, image, bank.coarsest_scale - offset, gain, seed=i, num=num)
        gap = np.full((image.shape[0], 2, 3), 255, np.uint8)
        rows.append(np.concatenate([image, gap, gap] + [x for s in samples for x in (s, gap)], axis=1))
    grid = np.concatenate(rows, axis=0).repeat(zoom, axis=0).repeat(zoom, axis=1)
    path.write_bytes(encode_png_rgb(np.ascontiguousarray(grid)))


# ---------------------------------------------------------------------------------------------------------
# warm starts from a face prior (issue 14): quality against fine-tuning iterations, with and without it


def warm_faces(ws_dir: Path, ck48_root: Path, prior_faces: int, held_out_ck: int, size_px: int) -> tuple[np.ndarray, dict]:
    """(prior faces [P, S, S, 3] uint8, held-out faces {name: [S, S, 3]}), cached under ws_dir/faces.npz.
    CK+48: one face per subject (tests/conftest.load_ck48_faces), the first `prior_faces` subjects train the
    prior and the next `held_out_ck` are held out; astronaut and Grace Hopper (aligned by tasks.align) are
    held out too: colour photos the grey CK+48 prior never saw."""
    cache = ws_dir / "faces.npz"
    if cache.exists():
        blob = np.load(cache)
        return blob["prior"], {k[5:]: blob[k] for k in blob.files if k.startswith("held_")}
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import load_ck48_faces

    ck = load_ck48_faces(ck48_root, prior_faces + held_out_ck, size_px)
    if len(ck) < prior_faces + held_out_ck:
        raise SystemExit(f"{ck48_root}: {len(ck)} subjects, need {prior_faces + held_out_ck}")
    prior = np.stack([image for _, image in ck[:prior_faces]])
    held = {f"ck_{name.split('/')[-1][:4]}": image for name, image in ck[prior_faces:]}
    photos = load_faces([], size_px)  # astronaut, Grace Hopper, aligned
    for name, face in zip(("astronaut", "grace_hopper"), photos):
        held[name] = tensor_to_uint8(face[None])[0]
    ws_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache, prior=prior, **{f"held_{k}": v for k, v in held.items()})
    return prior, held


def warm_prior(ws_dir: Path, prior_u8: np.ndarray, config: SinGANConfig, iters: int, batch: int, seed: int = 7):
    """Train (or load) the face prior; its CPU seconds are stored with it."""
    from models.singan import train_prior

    path = ws_dir / f"prior_it{iters}_b{batch}_p{len(prior_u8)}.pt"
    if not path.exists():
        images = uint8_to_tensor(prior_u8)
        cpu0 = time.process_time()
        prior = train_prior(images, dataclasses.replace(config, iters_per_scale=iters), seed, batch_size=batch)
        _save_blob(path, prior, {"cpu_s": time.process_time() - cpu0, "config": dataclasses.asdict(prior.config)})
        print(f"  prior: {len(prior_u8)} faces, {iters} it/scale, batch {batch}: "
              f"{time.process_time() - cpu0:.0f} CPU s", flush=True)
    return load_saved_bank(path)


def warm_bank(ws_dir: Path, held: dict, config: SinGANConfig, iters: int, prior=None, prior_name: str = "",
              tag: str = "") -> tuple:
    """Train (or load) one bank over all held-out faces, `iters` per scale, cold or from the prior; `tag`
    names a config other than the default preset."""
    name = f"{'warm_' + prior_name if prior is not None else 'cold'}{tag}_it{iters}"
    path = ws_dir / "banks" / f"{name}.pt"
    if not path.exists():
        images = uint8_to_tensor(np.stack(list(held.values())))
        cpu0 = time.process_time()
        bank = train_bank(images, dataclasses.replace(config, iters_per_scale=iters),
                          [2000 + i for i in range(len(held))], prior=prior)
        cpu_s = time.process_time() - cpu0
        _save_blob(path, bank, {"cpu_s": cpu_s, "config": dataclasses.asdict(bank.config), "faces": list(held)})
        print(f"  {name}: {cpu_s:.0f} CPU s for {len(held)} faces", flush=True)
    return (name, *load_saved_bank(path))


def section_warm_start(ws_dir: Path, ck48_root: Path, part: str, config: SinGANConfig, prior_faces: int,
                       prior_iters: int, prior_batch: int, warm_iters: list[int], cold_iters: list[int],
                       gains: list[float], size_px: int, out_json: Path | None, tag: str = "",
                       offsets: tuple[int, ...] = (1,)) -> dict | None:
    """part 'prior' (prior, then warm banks), 'cold' (cold banks) or 'measure' (all saved banks: samples
    from each start N-offset at each gain, issue 14's metrics per face against the face). tag: banks of a
    config other than the default preset (cold only)."""
    prior_u8, held = warm_faces(ws_dir, ck48_root, prior_faces, 3, size_px)
    prior_name = f"p{len(prior_u8)}_it{prior_iters}_b{prior_batch}"
    if part == "prior":
        prior, meta = warm_prior(ws_dir, prior_u8, config, prior_iters, prior_batch)
        for iters in warm_iters:
            warm_bank(ws_dir, held, config, iters, prior, prior_name)
        return None
    if part == "cold":
        for iters in cold_iters:
            warm_bank(ws_dir, held, config, iters, tag=tag)
        return None
    prior_path = ws_dir / f"prior_it{prior_iters}_b{prior_batch}_p{len(prior_u8)}.pt"
    prior_meta = torch.load(prior_path, weights_only=True)["meta"]
    rows = []
    banks = [("warm", i, ws_dir / "banks" / f"warm_{prior_name}_it{i}.pt") for i in warm_iters]
    banks += [("cold" + tag, i, ws_dir / "banks" / f"cold{tag}_it{i}.pt") for i in cold_iters]
    for mode, iters, path in banks:
        if not path.exists():
            print(f"  {path.name}: not trained, skipped")
            continue
        bank, meta = load_saved_bank(path)
        for k, face in enumerate(meta["faces"]):
            single = bank.member(k)
            for offset, gain in [(o, g) for o in offsets for g in gains]:
                if single.coarsest_scale - offset > single.max_start_scale:
                    continue
                samples = draw_samples(single, held[face], single.coarsest_scale - offset, gain, seed=k)
                rows.append({"mode": mode, "iters": iters, "face": face, "gain": gain,
                             "start": "N" if offset == 0 else f"N-{offset}",
                             "train_cpu_s_per_face": meta["cpu_s"] / len(meta["faces"]),
                             **sample_metrics(samples, held[face])})
    print(f"\n== warm start from a face prior ({prior_name}: {prior_meta['cpu_s']:.0f} CPU s once) vs cold, "
          f"N-1, {DIV_SAMPLES} samples per face; metrics vs the face ==")
    print("  mode   it/scale start gain  group   faces  blur-div   SSIM  realism  lmk px (max)  train CPU s/face")
    summary = []
    groups = {"ck48": lambda f: f.startswith("ck_"), "photos": lambda f: not f.startswith("ck_"), "all": lambda f: True}
    starts = ["N" if o == 0 else f"N-{o}" for o in offsets]
    for mode, iters, _ in banks:
        for start, gain in [(st, g) for st in starts for g in gains]:
            for group, keep in groups.items():
                rs = [r for r in rows if r["mode"] == mode and r["iters"] == iters and r["gain"] == gain
                      and r["start"] == start and keep(r["face"])]
                if not rs:
                    continue
                mean = mean_metrics(rs)
                summary.append({"mode": mode, "iters": iters, "start": start, "gain": gain, "group": group,
                                "faces": len(rs), **mean})
                print(f"  {mode:6s} {iters:6d} {start:5s} {gain:4g}  {group:7s} {len(rs):5d}  {mean['blurred_diversity']:8.4f}  "
                      f"{mean['ssim']:.3f}  {mean['realism']:7.3f}  {mean['landmark_px']:5.2f} ({mean['landmark_px_max']:4.2f})  "
                      f"{mean['train_cpu_s_per_face']:8.1f}")
    result = {"prior": {"name": prior_name, "faces": len(prior_u8), "iters_per_scale": prior_iters,
                        "batch": prior_batch, "cpu_s": prior_meta["cpu_s"]},
              "held_out": list(held), "size_px": size_px, "rows": rows, "summary": summary}
    return write_result(result, out_json)


def write_warm_grid(ws_dir: Path, bank_names: list[str], gain: float, path: Path, num: int = 5) -> None:
    """PNG: per held-out face, one row per bank: the face, then `num` samples from N-1 (same seeds)."""
    from manifests.dataset import encode_png_rgb

    rows = []
    banks = [load_saved_bank(ws_dir / "banks" / f"{n}.pt") for n in bank_names]
    held = dict(np.load(ws_dir / "faces.npz"))
    for k, face in enumerate(banks[0][1]["faces"]):
        image = held[f"held_{face}"]
        for bank, _ in banks:
            single = bank.member(k)
            samples = draw_samples(single, image, single.coarsest_scale - 1, gain, seed=k, num=num)
            gap = np.full((image.shape[0], 2, 3), 255, np.uint8)
            rows.append(np.concatenate([image, gap, gap] + [x for s in samples for x in (s, gap)], axis=1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    path.write_bytes(encode_png_rgb(np.ascontiguousarray(np.concatenate(rows, axis=0))))



WS_EDITS = {"surprise": 1, "happy": 4}  # large geometric edits: an open mouth and brows up; a smile


def warm_edits(ws_dir: Path, held: dict) -> dict:
    """Landmark-warp edits of every held-out face toward surprise and happiness (EMFACS prototypes at 0.6-0.9,
    from a neutral start), cached in ws_dir/edits.npz as {face/edit: image}. Landmarks: tasks.landmarks with
    the face box found by dlib (the CK+48 crops were not made by the project's aligner)."""
    cache = ws_dir / "edits.npz"
    if cache.exists():
        return dict(np.load(cache))
    from tasks.au_shape import load_au_shape
    from tasks.landmarks import LandmarkDetector
    from tasks.targets import prototype_centre
    from tasks.warp import WarpEditor

    detector, editor = LandmarkDetector(face_box="find"), WarpEditor(load_au_shape(None))
    out = {}
    for face, image in held.items():
        points = detector.detect(image)
        for edit, emotion in WS_EDITS.items():
            result = editor.edit(image, points, None, prototype_centre(emotion, (0.6, 0.9)))
            out[f"{face}/{edit}"] = result.image
    np.savez(cache, **out)
    return out


def section_edits_per_source(ws_dir: Path, held: dict, part: str, config: SinGANConfig, prior_name: str,
                             warm_iters: int, gain: float, out_json: Path | None) -> dict | None:
    """Real landmark-warp edits (an open-mouthed surprise, a smile) through one SinGAN per source (cold, and
    warm-started from the prior) vs one SinGAN trained on the edit itself: 8 samples from N-1 at `gain`,
    metrics against the edit, and the landmarks' distance to the unedited source."""
    from benchmarks.landmarks_bench import landmark_shift_px

    edits = warm_edits(ws_dir, held)
    names = sorted(edits)
    if part == "per_edit":
        path = ws_dir / "banks" / "per_edit_it100.pt"
        if not path.exists():
            images = uint8_to_tensor(np.stack([edits[n] for n in names]))
            cpu0 = time.process_time()
            bank = train_bank(images, dataclasses.replace(config, iters_per_scale=100),
                              [3000 + i for i in range(len(names))])
            _save_blob(path, bank, {"cpu_s": time.process_time() - cpu0, "config": dataclasses.asdict(bank.config),
                                    "faces": names})
        return None
    modes = {"per source, cold": ws_dir / "banks" / "cold_it100.pt",
             "per source, residual": ws_dir / "banks" / "cold_it100.pt",
             f"per source, prior + {warm_iters} it": ws_dir / "banks" / f"warm_{prior_name}_it{warm_iters}.pt",
             "per edit, cold": ws_dir / "banks" / "per_edit_it100.pt",
             "per edit, residual": ws_dir / "banks" / "per_edit_it100.pt"}
    rows = []
    for mode, path in modes.items():
        if not path.exists():
            print(f"  {path.name}: not trained, skipped")
            continue
        bank, meta = load_saved_bank(path)
        for name in names:
            face, edit = name.split("/")
            k = meta["faces"].index(name if mode.startswith("per edit") else face)
            single = bank.member(k)
            samples = draw_samples(single, edits[name], single.coarsest_scale - 1, gain, seed=k,
                                   residual=mode.endswith("residual"))
            rows.append({"mode": mode, "face": face, "edit": edit,
                         "edit_landmark_px": landmark_shift_px([edits[name]], held[face])[0],
                         "landmark_px_to_source": float(np.mean(landmark_shift_px(list(samples), held[face]))),
                         **sample_metrics(samples, edits[name])})
    print(f"\n== real warp edits: one SinGAN per source (edit injected) vs per edit, N-1, gain {gain:g}; metrics vs the edit ==")
    print("  mode                          edit      faces  blur-div   SSIM  realism  lmk px to edit  to source  (edit moved)")
    summary = []
    for mode in modes:
        for edit in [*WS_EDITS, "all"]:
            rs = [r for r in rows if r["mode"] == mode and (edit == "all" or r["edit"] == edit)]
            if not rs:
                continue
            mean = mean_metrics(rs)
            summary.append({"mode": mode, "edit": edit, "faces": len(rs), **mean})
            print(f"  {mode:29s} {edit:9s} {len(rs):5d}  {mean['blurred_diversity']:8.4f}  {mean['ssim']:.3f}  "
                  f"{mean['realism']:7.3f}  {mean['landmark_px']:14.2f}  {mean['landmark_px_to_source']:9.2f}  "
                  f"({mean['edit_landmark_px']:.2f})")
    return write_result({"gain": gain, "rows": rows, "summary": summary}, out_json)


def write_edit_grid(ws_dir: Path, bank_names: list[str], gain: float, path: Path, num: int = 4) -> None:
    """PNG: per face and edit: the source, the edit, then `num` samples of each bank (per-edit banks draw the
    edit through the edit's own member; a name ending in ':residual' draws residual samples)."""
    from manifests.dataset import encode_png_rgb

    edits = dict(np.load(ws_dir / "edits.npz"))
    held = dict(np.load(ws_dir / "faces.npz"))
    banks = [(*load_saved_bank(ws_dir / "banks" / f"{n.split(':')[0]}.pt"), n.endswith(":residual")) for n in bank_names]
    rows = []
    for name in sorted(edits):
        face = name.split("/")[0]
        gap = np.full((edits[name].shape[0], 4, 3), 255, np.uint8)
        tiles = [held[f"held_{face}"], gap, edits[name], gap]
        for bank, meta, residual in banks:
            k = meta["faces"].index(name if name in meta["faces"] else face)
            single = bank.member(k)
            tiles += [*draw_samples(single, edits[name], single.coarsest_scale - 1, gain, seed=k, num=num,
                                    residual=residual), gap]
        rows.append(np.concatenate(tiles, axis=1))
    path.write_bytes(encode_png_rgb(np.ascontiguousarray(np.concatenate(rows, axis=0))))


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
    parser.add_argument("--div-dir", default="runs/singan_diversity", help="faces/ (uint8 .npy) and saved banks")
    parser.add_argument("--div-faces", default="astronaut_64,grace_hopper_64,ck_happy_64,ck_surprise_64")
    parser.add_argument("--expand-cost", help="comma list of sizes (px): CPU seconds per expanded source, then exit")
    parser.add_argument("--expand-cost-config", default="fast", help="the new default (a preset or DIVERSITY_CONFIGS name)")
    parser.add_argument("--probe-iters", type=int, default=5, help="iterations per scale the cost probes time")
    parser.add_argument("--per-source", help="CONFIG,START,GAIN: one SinGAN per source vs per edit, then exit")
    parser.add_argument("--div-measure", help="comma list of trained DIVERSITY_CONFIGS to measure, then exit")
    parser.add_argument("--div-train", help="comma list of DIVERSITY_CONFIGS to train on --div-faces, then exit")
    parser.add_argument("--warm-start", choices=["prior", "cold", "measure"],
                        help="face-prior warm starts vs cold trainings (issue 14): one part, then exit")
    parser.add_argument("--ws-dir", default="runs/singan_warm", help="warm-start faces, prior and banks")
    parser.add_argument("--ws-ck48", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "ck48"))
    parser.add_argument("--ws-config", default="fast", help="preset the prior and the banks share")
    parser.add_argument("--ws-prior-faces", type=int, default=32)
    parser.add_argument("--ws-prior-iters", type=int, default=200)
    parser.add_argument("--ws-prior-batch", type=int, default=4)
    parser.add_argument("--ws-iters", default="0,10,25,50,100", help="fine-tuning iterations per scale from the prior")
    parser.add_argument("--ws-cold-iters", default="25,50,100", help="iterations per scale without the prior")
    parser.add_argument("--ws-gains", default="2,4,6")
    parser.add_argument("--ws-size", type=int, default=64)
    parser.add_argument("--ws-starts", default="1", help="start offsets from the coarsest scale to measure (0 = N)")
    parser.add_argument("--ws-edits", choices=["per_edit", "measure"],
                        help="real warp edits per source (cold, warm) vs per edit: train the per-edit banks or measure")
    parser.add_argument("--ws-edit-warm-iters", type=int, default=25, help="the warm bank the edit section uses")
    parser.add_argument("--ws-edit-grid", help="comma list of bank names: edit sample grid at the first gain, then exit")
    parser.add_argument("--ws-grid", help="comma list of bank names: write a sample grid at the first gain, then exit")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes per scale: let cuDNN pick its fastest kernels
    if args.ws_edits:
        prior_u8, held = warm_faces(Path(args.ws_dir), Path(args.ws_ck48), args.ws_prior_faces, 3, args.ws_size)
        prior_name = f"p{len(prior_u8)}_it{args.ws_prior_iters}_b{args.ws_prior_batch}"
        section_edits_per_source(Path(args.ws_dir), held, args.ws_edits, preset(args.ws_config), prior_name,
                                 args.ws_edit_warm_iters, float(args.ws_gains.split(",")[0]),
                                 Path(args.json) if args.json else None)
        return
    if args.ws_edit_grid:
        write_edit_grid(Path(args.ws_dir), args.ws_edit_grid.split(","), float(args.ws_gains.split(",")[0]), Path(args.json))
        return
    if args.ws_grid:
        write_warm_grid(Path(args.ws_dir), args.ws_grid.split(","), float(args.ws_gains.split(",")[0]), Path(args.json))
        return
    if args.warm_start:
        ints = lambda text: [int(x) for x in text.split(",") if x]  # noqa: E731
        named = args.ws_config in DIVERSITY_CONFIGS
        section_warm_start(Path(args.ws_dir), Path(args.ws_ck48), args.warm_start,
                           diversity_config(args.ws_config) if named else preset(args.ws_config),
                           args.ws_prior_faces, args.ws_prior_iters, args.ws_prior_batch, ints(args.ws_iters),
                           ints(args.ws_cold_iters), [float(x) for x in args.ws_gains.split(",")], args.ws_size,
                           Path(args.json) if args.json else None, tag="" if args.ws_config == "fast" else "_" + args.ws_config,
                           offsets=tuple(ints(args.ws_starts)))
        return
    if args.div_train:
        section_diversity_train(Path(args.div_dir), args.div_faces.split(","), args.div_train.split(","))
        return
    if args.expand_cost:
        new = (diversity_config(args.expand_cost_config) if args.expand_cost_config in DIVERSITY_CONFIGS
               else preset(args.expand_cost_config))
        result = section_expand_cost(Path(args.div_dir), [int(x) for x in args.expand_cost.split(",")], new,
                                     args.probe_iters)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
        return
    if args.per_source:
        config, start, gain = args.per_source.split(",")
        section_per_source(Path(args.div_dir), args.div_faces.split(","), ["smile", "brows_up"], config, start,
                           float(gain), Path(args.json) if args.json else None)
        return
    if args.div_measure:
        section_diversity_measure(Path(args.div_dir), args.div_faces.split(","), args.div_measure.split(","),
                                  Path(args.json) if args.json else None)
        return
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
