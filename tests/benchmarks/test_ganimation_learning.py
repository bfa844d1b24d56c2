"""Synthetic AU benchmark for GANimation: the plumbing (fast) and the proof that it learns (slow)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from benchmarks.au_oracle import AUOracleConfig
from benchmarks.ganimation_bench import (
    LEARNING_TEST,
    GANimationBenchConfig,
    ReplayEdits,
    build_benchmark_data,
    build_eval_set,
    emotion_sheet,
    evaluate_edits,
    format_report,
    load_split,
    run_benchmark,
    tolerant_pixel_distance,
)
from benchmarks.oracle import OracleTrainConfig, train_oracle
from manifests.reader import read_manifest
from models.ganimation import GANimationConfig
from tasks.synthetic import RenderConfig
from tasks.train_ganimation import TrainGANimationConfig

TINY = GANimationBenchConfig(
    name="tiny",
    train=TrainGANimationConfig(
        model=GANimationConfig(image_size_px=32, conv_dim=8, repeat_num=1, critic_conv_dim=8, critic_layers=2,
                               upsample="resize_conv"),
        batch_size=4, critic_steps_per_generator_step=1, sample_grid_rows=2),
    epochs=2,
    oracle=OracleTrainConfig(model=AUOracleConfig(image_size_px=32, stem_width=8, widths=(16, 16), hidden=32),
                             render=RenderConfig(image_size_px=32, supersample=2), n_heldout=16, n_edit_pairs=8,
                             epochs=2, batch_size=16),
    oracle_n_train=48,
    n_identities=6,
    per_identity=3,
    test_fraction=0.34,
    n_eval=6,
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return build_benchmark_data(tmp_path_factory.mktemp("bench") / "data", TINY)


@pytest.fixture(scope="module")
def tiny_oracle():
    oracle, _ = train_oracle(TINY.oracle, TINY.oracle_n_train, seed=0)
    return oracle


def test_data_goes_through_ingest_and_prepare_with_held_out_identities(tiny_data):
    table = read_manifest(tiny_data.prepared).to_pylist()
    assert len(table) == tiny_data.n_train + tiny_data.n_test and tiny_data.n_test > 0
    assert {r["stage"] for r in table} == {"original"}
    assert all(r["au_source"] is not None and len(r["au_source"]) == 17 for r in table)
    ids = {split: {tiny_data.identity_seed[r["source_id"]] for r in table if r["split"] == split}
           for split in ("train", "test")}
    assert ids["train"] and ids["test"] and not ids["train"] & ids["test"]
    # The manifest's AUs are the rendered ones, read back from the OpenFace CSVs.
    for r in table:
        np.testing.assert_allclose(r["au_source"], tiny_data.true_aus[r["source_id"]], atol=1e-3)
    # The training view carries each face's 68 landmarks (the warp teacher's input), in its own crop.
    train = load_split(tiny_data, TINY.image_size_px, "train")
    assert train.landmarks.shape == (len(train), 68, 2) and bool(np.isfinite(train.landmarks.numpy()).all())
    assert 0 <= float(train.landmarks.min()) and float(train.landmarks.max()) < TINY.image_size_px


def test_eval_set_is_seeded_and_its_masks_cover_what_the_target_changes(tiny_data):
    a, b = build_eval_set(tiny_data, TINY), build_eval_set(tiny_data, TINY)
    assert np.array_equal(a.targets, b.targets) and np.array_equal(a.perfect, b.perfect)
    assert a.images.shape == (TINY.n_eval, 32, 32, 3) and a.images.dtype == np.uint8
    other = build_eval_set(tiny_data, dataclasses.replace(TINY, seed=1))
    assert not np.array_equal(a.targets, other.targets)
    # A perfect re-render differs from the source only inside the mask of the AUs that changed.
    outside = ~a.edit_masks
    assert np.array_equal(a.perfect[outside], a.images[outside])


def test_doing_nothing_scores_ratio_one_and_a_perfect_edit_scores_the_ceiling(tiny_data, tiny_oracle):
    eval_set = build_eval_set(tiny_data, TINY)
    nothing = evaluate_edits(ReplayEdits(TINY.train.model, None), tiny_oracle, eval_set)
    assert nothing["ratio"] == pytest.approx(1.0)
    assert nothing["attention_mean"] == 1.0 and nothing["outside_diff"] == 0.0 and nothing["inside_diff"] == 0.0
    perfect = evaluate_edits(ReplayEdits(TINY.train.model, eval_set.perfect), tiny_oracle, eval_set)
    assert perfect["ratio"] == pytest.approx(perfect["ceiling_ratio"])
    assert perfect["edited_error"] == pytest.approx(perfect["ceiling_error"])
    assert perfect["outside_diff"] == 0.0 and perfect["inside_diff"] > 0.0
    assert nothing["pixel_ratio"] == pytest.approx(1.0) and perfect["pixel_ratio"] == 0.0
    # Texture that changes the edited regions without drawing the target scores worse than no edit.
    rng = np.random.default_rng(0)
    smudged = eval_set.images.copy()
    noise = rng.integers(0, 256, smudged.shape, dtype=np.uint8)
    smudged[eval_set.edit_masks] = noise[eval_set.edit_masks]
    smudge = evaluate_edits(ReplayEdits(TINY.train.model, smudged), tiny_oracle, eval_set)
    assert smudge["pixel_ratio"] > 1.0
    assert nothing["pixel_ratio_tolerant"] == pytest.approx(1.0) and perfect["pixel_ratio_tolerant"] == 0.0
    assert smudge["pixel_ratio_tolerant"] > 1.0
    # The perfect edit drawn one pixel off: the strict check calls it no better than no edit, the
    # tolerant one calls it nearly perfect.
    moved = np.roll(eval_set.perfect, 1, axis=2)
    off = evaluate_edits(ReplayEdits(TINY.train.model, moved), tiny_oracle, eval_set)
    assert off["pixel_ratio"] > 0.5 and off["pixel_ratio_tolerant"] < 0.25


def test_tolerant_pixel_distance_forgives_blur_and_one_pixel_but_not_more_or_texture():
    rng = np.random.default_rng(0)
    reference = np.zeros((2, 24, 24, 3), np.uint8)
    reference[:, 8:16, 6:18] = 200                      # a bright bar, like a brow
    inner = (slice(None), slice(3, -3), slice(3, -3))   # away from the replicated border
    assert tolerant_pixel_distance(reference, reference).max() == 0.0
    one_off = np.roll(reference, 1, axis=1)
    assert tolerant_pixel_distance(one_off, reference)[inner].max() < 1e-6
    assert tolerant_pixel_distance(one_off, reference, shift_px=0)[inner].max() > 0.1
    three_off = np.roll(reference, 3, axis=1)
    assert tolerant_pixel_distance(three_off, reference)[inner].max() > 0.1
    noise = rng.integers(0, 256, reference.shape, dtype=np.uint8)
    assert tolerant_pixel_distance(noise, reference).mean() > 0.1
    # Without blur and shift it is the plain mean absolute difference.
    plain = np.abs(noise.astype(np.float32) - reference.astype(np.float32)).mean(-1) / 255
    np.testing.assert_allclose(tolerant_pixel_distance(noise, reference, blur_sigma_px=0, shift_px=0), plain, atol=1e-6)


def test_tiny_benchmark_runs_end_to_end(tmp_path):
    rows = []
    report = run_benchmark(TINY, tmp_path, on_eval=rows.append)
    assert [r["epoch"] for r in report["history"]] == [1, 2] and rows == report["history"]
    steps = [r["generator_steps"] for r in report["history"]]
    assert steps[0] > 0 and steps[1] == 2 * steps[0]
    final = report["final"]
    for key in ("edited_error", "identity_error", "ceiling_error", "attention_mean", "outside_diff", "inside_diff"):
        assert 0.0 <= final[key] <= 1.0, key
    assert final["ratio"] == pytest.approx(final["edited_error"] / final["identity_error"])
    assert (tmp_path / "report.json").is_file() and (tmp_path / "bench_config.json").is_file()
    text = format_report(report)
    assert "ceiling" in text and "mean predictor" in text and len(text.splitlines()) >= 7


def test_a_rerun_reuses_the_saved_oracle_and_refuses_one_trained_otherwise(tmp_path, monkeypatch):
    """The judge is trained once per run folder (out/oracle) and reused by a re-run with the same settings, so a
    benchmark can be resumed or its oracle trained ahead (e.g. on a CPU before a short GPU lease); an oracle
    with other settings would make the numbers incomparable, so it is refused, not replaced."""
    import benchmarks.ganimation_bench as bench

    first = run_benchmark(TINY, tmp_path)
    assert (tmp_path / "oracle" / "config.json").is_file() and "reused_from" not in first["oracle"]

    def no_training(*args, **kwargs):
        raise AssertionError("the saved oracle should have been reused")

    monkeypatch.setattr(bench, "train_oracle", no_training)
    again = run_benchmark(TINY, tmp_path)
    assert again["oracle"]["reused_from"] == str(tmp_path / "oracle")
    assert again["oracle"]["heldout_mae"] == first["oracle"]["heldout_mae"]
    assert again["final"]["ratio"] == pytest.approx(first["final"]["ratio"])  # the same judge, the same checkpoint
    other = dataclasses.replace(TINY, oracle=dataclasses.replace(TINY.oracle, epochs=3))
    with pytest.raises(ValueError, match="oracle trained with other settings"):
        run_benchmark(other, tmp_path)


def test_editors_table_scores_warp_scratch_taught_and_warp_then_ganimation_on_the_same_faces(tmp_path, monkeypatch):
    from benchmarks import bench_editors

    taught = dataclasses.replace(TINY, name="tiny-taught", epochs=1, eval_every_epochs=1,
                                 train=dataclasses.replace(TINY.train, warp_teacher_weight=10.0))
    monkeypatch.setitem(bench_editors.CONFIGS, "tiny-taught", taught)
    report = bench_editors.run_editors("tiny-taught", tmp_path)
    names = list(report["rows"])
    assert names[0] == "warp (landmark editor)" and names[1].startswith("GANimation from scratch")
    assert names[2].startswith("GANimation taught") and names[3] == "warp+GANimation (taught)"
    taught_run, scratch_run = report["runs"]["taught"], report["runs"]["scratch"]
    assert taught_run["history"][-1]["generator_steps"] == scratch_run["history"][-1]["generator_steps"] > 0
    # The two trainings differ only by the teacher: the taught run recorded it, the scratch run did not.
    run_config = json.loads((tmp_path / "taught" / "ganimation" / "train_config.json").read_text())
    assert run_config["warp_teacher"]["faces_with_landmarks"] == taught_run["n_train_faces"]
    assert "warp_teacher" not in json.loads((tmp_path / "scratch" / "ganimation" / "train_config.json").read_text())
    for row in report["rows"].values():
        assert 0.0 <= row["outside_diff"] <= 1.0 and row["edits_per_cpu_s"] > 0 and row["identity_error"] > 0
    # Every editor was judged on the same held-out faces (same unedited error).
    assert len({round(row["identity_error"], 9) for row in report["rows"].values()}) == 1
    assert report["rows"]["warp+GANimation (taught)"]["train_cpu_seconds"] > 0
    text = bench_editors.table(report)
    assert text.count("\n| ") == 4 and "warp+GANimation" in text


def test_emotion_sheet_shows_a_source_and_seven_edits_per_face(tiny_data):
    eval_set = build_eval_set(tiny_data, TINY)
    sheet = emotion_sheet(ReplayEdits(TINY.train.model, None), eval_set.images[:2], None, TINY.render, tile_px=32)
    assert sheet.dtype == np.uint8 and sheet.shape[1] == 8 * 32
    with_truth = emotion_sheet(ReplayEdits(TINY.train.model, None), eval_set.images[:2], [1, 2], TINY.render, tile_px=32)
    assert with_truth.shape[0] == 2 * sheet.shape[0]


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="open work (issue 13): taught by the warp, GANimation's edits are still "
                   "smudges that fool the oracle: measured 2026-12-03 (warp revision 4) oracle ratio 0.590, "
                   "tolerant pixel ratio 1.79, attention mean 0.965 after 19.5 training CPU minutes on a shared "
                   "machine (bar: <= 0.5, < 0.6, < 0.95); the warp alone: 0.595 / 0.75. "
                   "See docs/ganimation-taught.md.")
def test_ganimation_learns_au_edits_on_held_out_identities(tmp_path):
    """GANimation taught by the warp (LEARNING_TEST), within 30 CPU minutes of training on one thread. From
    scratch it did not learn (tolerant pixel ratio 3.5-4.1, docs/ganimation-experiments.md)."""
    assert LEARNING_TEST.train.warp_teacher_weight > 0
    report = run_benchmark(LEARNING_TEST, tmp_path)
    print(format_report(report))
    oracle, final = report["oracle"], report["final"]
    assert final["train_cpu_seconds"] <= 30 * 60
    # The judge is independent and good: far better than predicting the mean AUs.
    assert oracle["heldout_mae"] < 0.5 * oracle["mean_predictor_mae"]
    # A perfect edit must score far better than no edit, or the benchmark cannot tell edits apart.
    assert final["ceiling_ratio"] < 0.5
    # The edits reach the random targets: at most half the error of leaving the face unedited.
    assert final["ratio"] <= 0.5
    assert 0.05 < final["attention_mean"] < 0.95
    # Regions the edited AUs cannot move stay close to the input, and change far less than the edited regions.
    assert final["outside_diff"] < 0.005
    assert final["outside_diff"] < 0.25 * final["inside_diff"]
    # ... and draw the expression: inside the edited regions the edit is closer to the true re-render of
    # the target than the unedited input is (texture that only fools the oracle fails here). The tolerant
    # check forgives softness and one-pixel misplacement; calibrated on the perfect edit
    # (docs/ganimation-experiments.md): half way scores 0.48, the perfect edit blurred (sigma 1 px) 0.59, a quarter
    # of the way 0.73, noise 2.8.
    assert final["pixel_ratio_tolerant"] < 0.6


def test_a_finished_training_found_on_resume_is_scored_from_its_card(tmp_path):
    """A benchmark re-run over a finished GANimation run scores its last checkpoint once (it used to end with
    no history and a KeyError); the card gives steps and wall seconds, the CPU seconds are unknown."""
    import json

    from benchmarks.ganimation_bench import resumed_training_row

    card = {"extra": {"epoch": 10, "step": 4000, "history": [{"seconds": 90.5}, {"seconds": 91.0}]}}
    (tmp_path / "config.json").write_text(json.dumps(card))
    row = resumed_training_row(tmp_path, TINY)
    assert row == {"epoch": 10, "generator_steps": 4000 // TINY.train.critic_steps_per_generator_step,
                   "train_seconds": 181.5, "train_cpu_seconds": None}
