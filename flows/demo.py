"""The demo, the README's main job: sample faces -> prepare -> landmark-warp edits of real photos and a small
GANimation on synthetic faces -> SinGAN regenerations -> reports."""
from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger

from flows.expand import ExpandSettings, PlanSettings, expand
from flows.prepare import PrepareSettings, prepare
from flows.train_ganimation import TrainGANimationSettings, train_ganimation_flow
from models.ganimation import GANimationConfig
from tasks.align import AlignConfig
from tasks.ingest import IngestConfig
from tasks.prepare import AUConfig
from tasks.sample_data import build_sample_dataset
from tasks.synthetic import RenderConfig, write_synthetic_dataset
from tasks.targets import EmotionConfig
from tasks.train_ganimation import TrainGANimationConfig, default_warp_teacher_weight

DEMO_SIZE_PX = 64             # small faces keep the whole demo within minutes on 2 CPU cores
SYNTHETIC_IDENTITIES = 300    # x 2 faces each; 20 % of the identities are held out as the test split
SYNTHETIC_PER_IDENTITY = 2
EXPANDED_SOURCES = 3          # train faces the demo expands (a seeded choice): 9 edits, 18 regenerations
REAL_SIZE_PX = 96             # the photos: big enough to see the warp's edits, small enough to train a SinGAN per edit
REAL_SOURCES = 2              # photos the demo edits (a seeded choice among the train photos)
# The photos get the six non-neutral emotions each, from the landmark warp (no training), at a clearly
# visible intensity; their own label is not skipped, so every photo shows all six.
REAL_EMOTIONS = EmotionConfig(emotions=(1, 2, 3, 4, 5, 6), skip_source_label=False, intensity_range=(0.6, 0.9))
# A small GANimation (resize-conv upsampling: no checkerboard at this size) and a short schedule, taught by the
# landmark warp (the synthetic faces carry their exact 68 points), as every CPU-sized model is by default.
_DEMO_MODEL = GANimationConfig(image_size_px=DEMO_SIZE_PX, conv_dim=16, repeat_num=3, critic_conv_dim=16,
                               critic_layers=4, upsample="resize_conv")
DEMO_GANIMATION = TrainGANimationConfig(model=_DEMO_MODEL, batch_size=16, lr_generator=3e-4, lr_critic=1e-3,
                                        warp_teacher_weight=default_warp_teacher_weight(_DEMO_MODEL))
DEMO_GANIMATION_EPOCHS = 8
# SinGAN on a demo budget: 40 iterations per scale and narrow nets. The default `fast` preset's noisy N-1
# start needs its full 100 iterations (undertrained, it paints a patchwork), so the demo uses `fast_skip2`
# at gain 2. Both parts train one SinGAN per source face with its edits injected (the default), with
# residual sampling (the default): plain samples of a source's SinGAN pulled the photos' large edits back
# toward the source's expression (looked at: a surprised mouth closing into the source's smile).
DEMO_SINGAN = {"preset": "fast_skip2", "overrides": {"iters_per_scale": 40, "base_channels": 16},
               "start": "N-2", "noise_gain": 2.0}
REAL_SINGAN_START = "N-3"
REAL_SEED = 3                 # its seeded choice of REAL_SOURCES photos holds one of each person


@flow(name="demo", log_prints=True)
def demo(out: str = "demo-out", device: str | None = None) -> dict:
    """Everything a new user needs to see the pipeline work, on data that ships inside installed packages."""
    logger = get_run_logger()
    root = Path(out).resolve()
    t0 = time.perf_counter()

    # 1. Sample data: synthetic AU faces (exact AUs) and real faces from scikit-image / matplotlib (demo AUs).
    synthetic_dir = root / "sample-data" / "synthetic"
    if not (synthetic_dir / "images").is_dir():
        write_synthetic_dataset(synthetic_dir, SYNTHETIC_IDENTITIES, SYNTHETIC_PER_IDENTITY, seed=0,
                                config=RenderConfig(DEMO_SIZE_PX), test_fraction=0.2)
    real = build_sample_dataset(root / "sample-data" / "real")

    # 2. Prepare both: the synthetic faces are already aligned, the photos go through MTCNN.
    prepare(PrepareSettings(dataset=str(synthetic_dir / "images"), out=str(root / "prepared-synthetic"),
                            run_name="demo-synthetic", ingest=IngestConfig(layout="folders"),
                            align=AlignConfig(mode="none", image_size_px=DEMO_SIZE_PX),
                            aus=AUConfig(path=str(synthetic_dir / "openface")), unit_size=256, device=device))
    prepare(PrepareSettings(dataset=real["images"], out=str(root / "prepared-real"), run_name="demo-real",
                            ingest=IngestConfig(layout="folders"), align=AlignConfig(image_size_px=REAL_SIZE_PX),
                            aus=AUConfig(path=real["openface"]), landmarks="detector", unit_size=16, device=device))

    # 3. A small GANimation trained on the synthetic faces (reused when a previous demo trained it).
    trained = train_ganimation_flow(TrainGANimationSettings(
        prepared=str(root / "prepared-synthetic"), out=str(root / "ganimation"), epochs=DEMO_GANIMATION_EPOCHS,
        seed=0, train=DEMO_GANIMATION, device=device, progress=True))

    # 4. Expand the synthetic faces: 3 emotion edits per face (the warp, then the taught GANimation from the
    #    warped face toward the same target), 2 SinGAN regenerations per edit.
    synthetic = expand(ExpandSettings(
        prepared=str(root / "prepared-synthetic"), out=str(root / "expanded-synthetic"), run_name="demo",
        editor="warp+ganimation", ganimation=trained["checkpoint"],
        plan=PlanSettings(kind="emotion", per_source=3, emotion=EmotionConfig()),
        regenerations=2, singan_preset=DEMO_SINGAN["preset"], singan_overrides=DEMO_SINGAN["overrides"],
        singan_start=DEMO_SINGAN["start"], singan_noise_gain=DEMO_SINGAN["noise_gain"], bank_size=16, unit_size=16, seed=0,
        limit_sources=EXPANDED_SOURCES, device=device))

    # 5. The photos: landmark-warp edits to the six non-neutral emotions, 2 SinGAN regenerations per edit.
    photos = expand(ExpandSettings(
        prepared=str(root / "prepared-real"), out=str(root / "expanded-real"), run_name="demo", editor="warp",
        plan=PlanSettings(kind="emotion", per_source=None, emotion=REAL_EMOTIONS), regenerations=2,
        singan_preset=DEMO_SINGAN["preset"], singan_overrides=DEMO_SINGAN["overrides"], singan_start=REAL_SINGAN_START,
        singan_noise_gain=DEMO_SINGAN["noise_gain"], bank_size=16, unit_size=16, seed=REAL_SEED,
        limit_sources=REAL_SOURCES, device=device))

    minutes = (time.perf_counter() - t0) / 60
    logger.info(f"demo finished in {minutes:.1f} min")
    return {"minutes": round(minutes, 2), "synthetic_report": synthetic["report"],
            "synthetic_contact_sheet": synthetic["contact_sheet"], "real_report": photos["report"],
            "real_contact_sheet": photos["contact_sheet"], "ganimation_checkpoint": trained["checkpoint"]}


def run_demo(out: str, device: str | None = None) -> dict:
    summary = demo(out, device)
    print(f"\nDemo done in {summary['minutes']} min.\n"
          f"  Synthetic faces (edits + regenerations): {summary['synthetic_report']}\n"
          f"      contact sheet: {summary['synthetic_contact_sheet']}\n"
          f"  Photos (warp edits + regenerations):      {summary['real_report']}\n"
          f"      contact sheet: {summary['real_contact_sheet']}\n"
          f"  Check an output: singanimation verify {Path(summary['synthetic_report']).parent}")
    return summary
