"""The train-ganimation flow: a prepared manifest (train split, AU-labelled originals) -> GANimation checkpoints."""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field

from flows._run import publish_report
from tasks.au_data import ManifestAUDataset, manifest_id
from tasks.report import markdown_table
from tasks.train_ganimation import TrainGANimationConfig, latest_checkpoint, train_ganimation


class TrainGANimationSettings(BaseModel):
    """A GANimation training run; the run folder records its config and refuses a different one on resume."""

    model_config = ConfigDict(extra="forbid")

    prepared: str = Field(description="output root of `singanimation prepare` (train split, with AUs)")
    out: str = Field(description="run folder: train_config.json, checkpoints/epoch_NNNN, samples/epoch_NNNN.png")
    epochs: int = Field(30, ge=1)
    seed: int = 0
    train: TrainGANimationConfig = TrainGANimationConfig()
    device: str | None = Field(None, description="cuda / cpu; default: CUDA when present")
    progress: bool = Field(True, description="tqdm progress bar")


@flow(name="train-ganimation", log_prints=True)
def train_ganimation_flow(settings: TrainGANimationSettings) -> dict:
    """Train (or resume training) GANimation on a prepared dataset; return the last checkpoint's path."""
    import torch

    logger = get_run_logger()
    device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")

    # 1. The data: AU-labelled train originals, at the model's size.
    data = ManifestAUDataset(settings.prepared, settings.train.model.image_size_px)
    logger.info(f"{len(data)} AU-labelled training faces from {settings.prepared}")

    # 2. Train (resumes from the run folder's last checkpoint).
    history = train_ganimation(data, settings.train, settings.out, settings.epochs, seed=settings.seed, device=device,
                               resume=True, progress=settings.progress, data_id=manifest_id(settings.prepared))

    # 3. Report: losses per epoch and where the checkpoint and sample grids are.
    checkpoint = latest_checkpoint(settings.out)
    keys = [k for k in (history[-1] if history else {}) if k not in ("epoch", "step")]
    table = markdown_table(["epoch", *keys], [[h["epoch"], *(f"{h[k]:.4g}" for k in keys)] for h in history])
    grids = sorted((Path(settings.out) / "samples").glob("epoch_*.png"))
    report = (f"# GANimation training\n\nCheckpoint: `{checkpoint}`\n\nLatest sample grid: `{grids[-1] if grids else None}`"
              f" (source | attention | colour | output)\n\n{table}\n")
    (Path(settings.out) / "report.md").write_text(report)
    publish_report(report, key="train-ganimation-report")
    return {"checkpoint": str(checkpoint), "epochs": len(history), "report": str(Path(settings.out) / "report.md")}
