"""The demo: bundled sample faces -> prepare (later issues add GANimation and SinGAN expansion)."""
from __future__ import annotations

from pathlib import Path

from flows.prepare import PrepareSettings, prepare
from tasks.align import AlignConfig
from tasks.ingest import IngestConfig
from tasks.prepare import AUConfig
from tasks.sample_data import build_sample_dataset


def run_demo(out: str, device: str | None = None) -> dict:
    """1. write the sample dataset; 2. prepare it; return where everything is."""
    out_path = Path(out).resolve()
    sample = build_sample_dataset(out_path / "sample-data")
    settings = PrepareSettings(
        dataset=sample["images"], out=str(out_path / "prepared"), run_name="demo",
        ingest=IngestConfig(layout="folders"), align=AlignConfig(mode="mtcnn", image_size_px=128),
        aus=AUConfig(path=sample["openface"]), unit_size=8, device=device,
    )
    summary = prepare(settings)
    summary["sample_data"] = str(out_path / "sample-data")
    print(f"\nDemo done. Report: {summary['report']}\nContact sheet: {summary['contact_sheet']}\n"
          f"Check it: singanimation verify {settings.out}")
    return summary
