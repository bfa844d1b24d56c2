"""Run reports a person reads at a glance: counts per stage/split/label, rejects by reason, timings, contact sheet."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from manifests.atomic import atomic_open, atomic_write_bytes, atomic_write_text
from manifests.dataset import decode_png_rgb, encode_png_rgb
from manifests.reader import read_manifest, read_rejects
from manifests.schema import EMOTIONS
from manifests.shards import read_member

REPORT_MD = "report.md"
CONTACT_SHEET = "contact_sheet.png"

Tile = tuple[np.ndarray, str]  # RGB uint8 image, caption


def contact_sheet(rows: Sequence[Sequence[Tile]], tile_px: int = 128, caption_px: int = 16) -> np.ndarray:
    """A grid image: one row per sequence of (image, caption) tiles; short rows are padded white."""
    if not rows:
        rows = [[(np.full((tile_px, tile_px, 3), 255, np.uint8), "(no samples)")]]
    n_cols = max(len(r) for r in rows)
    cell_h = tile_px + caption_px
    sheet = np.full((cell_h * len(rows), tile_px * n_cols, 3), 255, np.uint8)
    scale = caption_px / 30.0
    for i, row in enumerate(rows):
        for j, (image, caption) in enumerate(row):
            tile = cv2.resize(image, (tile_px, tile_px), interpolation=cv2.INTER_AREA)
            y, x = i * cell_h, j * tile_px
            sheet[y:y + tile_px, x:x + tile_px] = tile
            # Shrink long captions to fit their tile rather than spill into the next one.
            (text_w, _), _ = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
            fit = min(scale, scale * (tile_px - 4) / max(text_w, 1))
            cv2.putText(sheet, caption, (x + 2, y + tile_px + caption_px - 4), cv2.FONT_HERSHEY_SIMPLEX,
                        fit, (0, 0, 0), 1, cv2.LINE_AA)
    return sheet


def write_png(rgb: np.ndarray, path: str | os.PathLike) -> Path:
    return atomic_write_bytes(encode_png_rgb(rgb), path)


def sample_tiles_per_label(out_root: str | os.PathLike, per_label: int = 6, stage: str = "original") -> list[list[Tile]]:
    """Contact-sheet rows: up to per_label images of each label, train split first."""
    out_root = Path(out_root)
    rows_by_label: dict[int, list[Tile]] = {}
    for row in read_manifest(out_root).to_pylist():
        if row["stage"] != stage:
            continue
        tiles = rows_by_label.setdefault(row["label"], [])
        if len(tiles) < per_label:
            rgb = decode_png_rgb(read_member(out_root / row["shard"], row["offset"], row["size"]))
            tiles.append((rgb, f"{EMOTIONS[row['label']]} {row['split']}"))
    return [rows_by_label[label] for label in sorted(rows_by_label)]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def counts_by(out_root: str | os.PathLike) -> dict[tuple[str, str, int], int]:
    """(split, stage, label) -> number of rows in the manifest."""
    table = read_manifest(out_root, columns=["split", "stage", "label"])
    return dict(Counter(zip(*(table.column(c).to_pylist() for c in ("split", "stage", "label")))))


def write_report(
    out_root: str | os.PathLike,
    title: str,
    timings_s: dict[str, float],
    notes: Sequence[str] = (),
    tiles: list[list[Tile]] | None = None,
) -> tuple[Path, Path]:
    """Write report.md and contact_sheet.png into out_root; return their paths."""
    out_root = Path(out_root)
    counts = counts_by(out_root)
    splits = sorted({k[0] for k in counts})
    stages = sorted({k[1] for k in counts})
    count_rows = []
    for split in splits:
        for stage in stages:
            per_label = [counts.get((split, stage, label), 0) for label in EMOTIONS]
            if sum(per_label):
                count_rows.append([split, stage, *per_label, sum(per_label)])
    rejects = read_rejects(out_root).to_pylist()
    by_reason = Counter((r["stage"], r["reason"]) for r in rejects)
    examples = {}
    for r in rejects:
        examples.setdefault((r["stage"], r["reason"]), f"{r['source_id']}: {r['detail']}")
    sheet_path = write_png(contact_sheet(tiles if tiles is not None else sample_tiles_per_label(out_root)),
                           out_root / CONTACT_SHEET)

    parts = [f"# {title}", "", f"Output root: `{out_root}`", ""]
    parts += ["## Samples per split, stage and label", "",
              markdown_table(["split", "stage", *EMOTIONS.values(), "total"], count_rows) if count_rows else "(none)", ""]
    parts += [f"## Rejects ({len(rejects)})", ""]
    parts += [markdown_table(["stage", "reason", "count", "example"],
                             [[s, r, n, examples[(s, r)][:120].replace("|", "/")] for (s, r), n in sorted(by_reason.items())])
              if rejects else "none", ""]
    parts += ["## Timings", "", markdown_table(["step", "seconds"], [[k, f"{v:.1f}"] for k, v in timings_s.items()]), ""]
    if notes:
        parts += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    parts += ["## Contact sheet", "", f"![contact sheet]({CONTACT_SHEET})", ""]
    md_path = atomic_write_text("\n".join(parts), out_root / REPORT_MD)
    return md_path, sheet_path


def expand_tiles(out_root: str | os.PathLike, max_sources: int = 8) -> list[list[Tile]]:
    """Contact-sheet rows for an expand run: source, then each edit followed by its SinGAN regenerations."""
    out_root = Path(out_root)
    rows = [r for r in read_manifest(out_root).to_pylist() if r["split"] == "train"]
    by_source: dict[str, list[dict]] = {}
    for r in rows:
        by_source.setdefault(r["source_id"], []).append(r)
    # Sources with the most generated samples first, so the sheet shows the pipeline at work.
    chosen = sorted(by_source, key=lambda sid: (-len(by_source[sid]), sid))[:max_sources]

    def tile(r: dict, caption: str) -> Tile:
        return decode_png_rgb(read_member(out_root / r["shard"], r["offset"], r["size"])), caption

    def parent_key(r: dict):
        return (r["edit_kind"], tuple(r["au_target"] or ()), r["alpha"], r["label"])

    sheet = []
    for sid in sorted(chosen):
        group = by_source[sid]
        originals = [r for r in group if r["stage"] == "original"]
        edits = sorted((r for r in group if r["stage"] in ("warp", "ganimation")), key=lambda r: (r["label"], r["sample_id"]))
        regens = sorted((r for r in group if r["stage"] == "singan"), key=lambda r: (r["singan_sample"], r["sample_id"]))
        line = [tile(r, f"src {EMOTIONS[r['label']]}") for r in originals]
        if edits:
            for e in edits:
                line.append(tile(e, f"edit {EMOTIONS[e['label']]}"))
                line += [tile(g, f"  SinGAN {g['singan_sample']}") for g in regens if parent_key(g) == parent_key(e)]
        else:
            line += [tile(g, f"SinGAN {g['singan_sample']}") for g in regens]
        sheet.append(line)
    return sheet


def label_histogram_png(out_root: str | os.PathLike, before: dict[int, int], name: str = "label_histogram.png") -> Path:
    """Bar chart of train samples per label: the source dataset before, the expanded manifest after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_root = Path(out_root)
    after = Counter(read_manifest(out_root, columns=["split", "label"]).to_pandas().query("split == 'train'")["label"])
    labels = list(EMOTIONS)
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    ax.bar(x - 0.2, [before.get(k, 0) for k in labels], 0.4, label="before (originals)")
    ax.bar(x + 0.2, [after.get(k, 0) for k in labels], 0.4, label="after (expanded)")
    ax.set_xticks(x, [EMOTIONS[k] for k in labels], fontsize=8)
    ax.set_ylabel("train samples")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_root / name
    try:
        with atomic_open(path) as f:
            fig.savefig(f, format="png")
    finally:
        plt.close(fig)
    return path
