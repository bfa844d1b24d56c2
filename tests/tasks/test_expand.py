"""tasks.expand helpers that need no model: reading a prepared dataset."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from manifests.dataset import encode_png_rgb
from manifests.schema import N_AUS, make_sample_id
from manifests.writer import Sample, commit_unit
from tasks.expand import load_original_rows


def test_prepared_data_from_before_the_landmark_columns_reads_as_no_landmarks(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    row = {"sample_id": make_sample_id("0" * 64, "original"), "split": "train", "source_id": "s",
           "source_sha256": "0" * 64,
           "stage": "original", "edit_kind": "none", "label": 4, "label_kind": "original", "au_source": [0.0] * N_AUS,
           "landmarks": None, "landmark_source": "none", "width": 8, "height": 8, "model_versions": "t", "run_id": "r"}
    commit_unit(tmp_path, split="train", run_name="t", unit_id="u", samples=[Sample(encode_png_rgb(rgb), row)])
    part = next((tmp_path / "manifest").glob("part-*.parquet"))
    old = pq.read_table(part).drop(["landmarks", "landmark_source"])  # the manifest as prepare wrote it before
    pq.write_table(old, part)
    (loaded,) = load_original_rows(tmp_path)
    assert loaded["landmarks"] is None and loaded["landmark_source"] == "none"
