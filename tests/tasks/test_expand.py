"""tasks.expand helpers that need no model: reading a prepared dataset."""
from __future__ import annotations

import json

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


def test_assumed_source_aus_measured_first_then_neutral_or_the_label_prototype():
    import pytest

    from tasks.errors import RejectError
    from tasks.expand import assumed_source_aus
    from tasks.targets import prototype_centre

    measured = {"au_source": [0.2] * N_AUS, "label": 4}
    assert assumed_source_aus(measured, "label") == [0.2] * N_AUS          # measured AUs always win
    bare = {"au_source": None, "label": 4}                                   # Happiness, no AU file
    assert assumed_source_aus(bare, "neutral") is None                      # the editor reads None as all zero
    happy = np.asarray(assumed_source_aus(bare, "label", (0.6, 0.9)))
    assert np.allclose(happy, prototype_centre(4, (0.6, 0.9))) and happy.max() == 0.75
    with pytest.raises(RejectError, match="no measured AUs and label"):
        assumed_source_aus({"au_source": None, "label": None}, "label")


def test_label_prototype_undoes_the_source_expression_before_the_target():
    """A smiling face edited to Happiness does not move with 'label' (it already shows it); with 'neutral' the
    smile is added on top of itself."""
    from models.au_shape import default_au_shape_model
    from tasks.expand import assumed_source_aus
    from tasks.targets import prototype_centre

    model = default_au_shape_model()
    rng = np.random.default_rng(0)
    points = np.stack([rng.uniform(20, 76, 68), rng.uniform(20, 76, 68)], 1)
    points[36:42] = [[30, 40]] * 6 + rng.normal(0, 1, (6, 2))                # eyes level, 36 px apart
    points[42:48] = [[66, 40]] * 6 + rng.normal(0, 1, (6, 2))
    target = prototype_centre(4, (0.6, 0.9))
    row = {"au_source": None, "label": 4}
    same = model.target_landmarks(points, np.asarray(assumed_source_aus(row, "label", (0.6, 0.9))), target)
    stacked = model.target_landmarks(points, np.zeros(N_AUS), target)
    assert np.abs(same - points).max() < 1e-3 < np.abs(stacked - points).max()


def test_a_prior_retrained_at_the_same_path_is_loaded_afresh(tmp_path):
    """A long-lived worker caches the loaded face prior; when the prior is removed and trained again at the
    same path, the next unit gets the new one (the cache is keyed by its content id, not its path)."""
    import dataclasses
    import shutil

    import torch

    from models.singan import preset
    from tasks.expand import _prior
    from tasks.singan import save_bank, train_singan_prior

    config = dataclasses.replace(preset("tiny"), min_size_px=16, iters_per_scale=1, skip_coarse_scales=1)
    faces = [np.random.default_rng(i).integers(0, 256, (20, 20, 3), dtype=np.uint8) for i in range(3)]
    path = tmp_path / "singan_prior"
    save_bank(train_singan_prior(faces, config, seed=1, batch_size=2, device="cpu"), path)
    first, first_id = _prior(str(path), "cpu")
    assert _prior(str(path), "cpu")[0] is first  # cached
    shutil.rmtree(path)
    save_bank(train_singan_prior(faces, config, seed=2, batch_size=2, device="cpu"), path)
    second, second_id = _prior(str(path), "cpu")
    assert second_id != first_id and second is not first
    key = "generators.0.net.0.weight"
    assert not torch.equal(second.state_dict()[key], first.state_dict()[key])


def test_a_ganimation_checkpoint_or_au_shape_file_recreated_at_the_same_path_is_loaded_afresh(tmp_path):
    """A long-lived worker caches the GANimation checkpoint and the warp's AU shape model; when either is
    re-created at the same path (a checkpoint removed and trained again, a model re-fitted into the same file),
    the next unit gets the new one: the caches are keyed by content, not by path."""
    import shutil

    import torch

    from models.au_shape import default_au_shape_model
    from models.ganimation import GANimationConfig, Generator
    from tasks.expand import _ganimation, _warp_editor
    from tasks.ganimation import save_ganimation

    config = GANimationConfig(image_size_px=16, conv_dim=4, repeat_num=1, critic_layers=2)
    path = tmp_path / "ganimation"
    torch.manual_seed(0)
    save_ganimation(path, Generator(config), None)
    first = _ganimation(str(path), "cpu")
    assert _ganimation(str(path), "cpu") is first  # cached
    shutil.rmtree(path)
    torch.manual_seed(1)
    save_ganimation(path, Generator(config), None)
    second = _ganimation(str(path), "cpu")
    assert second is not first and second.checkpoint_id != first.checkpoint_id

    shape_file = tmp_path / "au_shape.json"
    model = default_au_shape_model()
    shape_file.write_text(json.dumps(model.to_json()))
    editor = _warp_editor(str(shape_file))
    assert _warp_editor(str(shape_file)) is editor  # cached
    scaled = model.to_json()
    scaled["basis"] = (np.asarray(scaled["basis"]) * 0.5).tolist()
    shape_file.write_text(json.dumps(scaled))
    assert _warp_editor(str(shape_file)).shape_model.version != editor.shape_model.version
