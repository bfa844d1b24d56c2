"""The expand flow end to end with tiny models: counts per stage and label, provenance, determinism, resume."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from flows.expand import ExpandSettings, PlanSettings, describe_plan, expand
from manifests.dataset import ManifestDataset
from manifests.reader import read_manifest, read_rejects, verify
from manifests.schema import MANIFEST_SCHEMA, N_AUS
from tasks.targets import EmotionConfig

SIZE_PX = 32


@pytest.fixture(scope="module")
def prepared(synthetic_prepared):
    return synthetic_prepared


@pytest.fixture(scope="module")
def checkpoint(tiny_ganimation):
    return tiny_ganimation


def _settings(prepared, checkpoint, out, **kw) -> ExpandSettings:
    base = dict(prepared=str(prepared), out=str(out), ganimation=checkpoint,
                plan=PlanSettings(kind="emotion", per_source=2, emotion=EmotionConfig()),
                regenerations=2, singan_preset="tiny", singan_start="N-1", bank_size=3, unit_size=3, seed=7, device="cpu")
    base.update(kw)
    return ExpandSettings(**base)


def _comparable(out):
    return read_manifest(out).drop(["run_id"]).to_pylist()


@pytest.fixture(scope="module")
def expanded(prepared, checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("expanded")
    return out, expand(_settings(prepared, checkpoint, out))


def test_expand_counts_provenance_and_read_back(expanded):
    out, summary = expanded
    assert summary["verify_ok"] and verify(out).ok
    table = read_manifest(out)
    assert table.schema.equals(MANIFEST_SCHEMA)
    rows = table.to_pylist()
    by = lambda split, stage: [r for r in rows if r["split"] == split and r["stage"] == stage]  # noqa: E731
    assert len(by("train", "original")) == 4 and len(by("test", "original")) == 2
    edits, regens = by("train", "ganimation"), by("train", "singan")
    assert len(edits) == 4 * 2 and len(regens) == 4 * 2 * 2
    assert not by("test", "ganimation") and not by("test", "singan")
    for e in edits:
        assert e["edit_kind"] == "emotion" and e["label_kind"] == "target" and len(e["au_target"]) == N_AUS
        assert e["label"] != [r for r in by("train", "original") if r["source_id"] == e["source_id"]][0]["label"]
        assert 0.0 <= e["quality"]["attention_mean"] <= 1.0 and e["quality"]["au_fidelity"] is not None
        assert e["seed"] is not None and "ganimation:" in e["model_versions"]
    for g in regens:
        assert g["singan_start_scale"] is not None and g["singan_sample"] in (0, 1) and g["seed"] is not None
        assert g["quality"]["ssim_to_source"] is not None
        parents = [e for e in edits if e["source_id"] == g["source_id"] and e["au_target"] == g["au_target"]]
        assert len(parents) == 1 and parents[0]["label"] == g["label"]
    assert len({r["sample_id"] for r in rows}) == len(rows)
    # GANimation does not say where it moved the features: its edits (and their regenerations) carry no points.
    source_points = {r["source_id"]: (r["landmarks"], r["landmark_source"]) for r in by("train", "original")}
    assert all(len(points) == 136 and kind == "openface" for points, kind in source_points.values())
    for r in edits + regens:
        assert r["landmarks"] is None and r["landmark_source"] == "none"
    data = ManifestDataset(out, split="train", stage="singan")
    image, label, aus, row = data[0]
    assert image.shape == (3, SIZE_PX, SIZE_PX) and label == row["label"] and torch.isfinite(aus).all()
    assert (out / "report.md").is_file() and (out / "contact_sheet.png").is_file() and (out / "label_histogram.png").is_file()


def test_same_config_gives_the_same_manifest_and_rerun_resumes(expanded, prepared, checkpoint, tmp_path):
    out, _ = expanded
    expand(_settings(prepared, checkpoint, tmp_path))
    assert _comparable(tmp_path) == _comparable(out)
    first = {p.name: p.read_bytes() for p in (out / "shards" / "train").glob("*.tar")}
    second = {p.name: p.read_bytes() for p in (tmp_path / "shards" / "train").glob("*.tar")}
    assert first == second
    again = expand(_settings(prepared, checkpoint, tmp_path))
    assert again["skipped_units"] == again["units"] and _comparable(tmp_path) == _comparable(out)


def test_another_seed_gives_other_samples(expanded, prepared, checkpoint, tmp_path):
    out, _ = expanded
    expand(_settings(prepared, checkpoint, tmp_path, seed=8, test_split="omit"))
    ids = {r["sample_id"] for r in read_manifest(tmp_path).to_pylist() if r["stage"] == "singan"}
    assert ids.isdisjoint({r["sample_id"] for r in read_manifest(out).to_pylist() if r["stage"] == "singan"})
    assert "test" not in set(read_manifest(tmp_path).column("split").to_pylist())


def test_singan_only_and_ganimation_only(prepared, checkpoint, tmp_path):
    expand(_settings(prepared, None, tmp_path / "s", plan=PlanSettings(kind="none")))
    stages = read_manifest(tmp_path / "s").column("stage").to_pylist()
    assert stages.count("ganimation") == 0 and stages.count("singan") == 4 * 2
    singan_rows = [r for r in read_manifest(tmp_path / "s").to_pylist() if r["stage"] == "singan"]
    assert all(r["label_kind"] == "inherited" and r["edit_kind"] == "none" for r in singan_rows)
    # regenerations of originals record this run's SinGAN, not the prepare run's versions they inherited
    assert all("singan:tiny-" in r["model_versions"] and "singan_train_on:source" in r["model_versions"]
               and "singan_sampling:residual" in r["model_versions"] for r in singan_rows)
    expand(_settings(prepared, checkpoint, tmp_path / "g", regenerations=0))
    stages = read_manifest(tmp_path / "g").column("stage").to_pylist()
    assert stages.count("singan") == 0 and stages.count("ganimation") == 8


def test_one_singan_per_source_by_default_per_edit_as_option(expanded, prepared, checkpoint, tmp_path):
    out, _ = expanded
    rows = read_manifest(out).to_pylist()
    regens = [r for r in rows if r["stage"] == "singan"]
    # per source (default): every regeneration of a source's edits carries that source's one training seed;
    # residual sampling (default) is recorded
    for sid in {r["source_id"] for r in regens}:
        assert len({r["seed"] for r in regens if r["source_id"] == sid}) == 1
    assert all("singan_train_on:source;singan_sampling:residual" in r["model_versions"] for r in regens)
    # grouping does not change a sample: bank_size 1 gives the same ids and seeds as bank_size 3
    expand(_settings(prepared, checkpoint, tmp_path / "k1", bank_size=1))
    k1 = [r for r in read_manifest(tmp_path / "k1").to_pylist() if r["stage"] == "singan"]
    assert sorted((r["sample_id"], r["seed"]) for r in k1) == sorted((r["sample_id"], r["seed"]) for r in regens)
    # per edit (option): one training seed per edit, other sample ids, the choice in model_versions
    expand(_settings(prepared, checkpoint, tmp_path / "pe", singan_train_on="edit"))
    per_edit = [r for r in read_manifest(tmp_path / "pe").to_pylist() if r["stage"] == "singan"]
    assert len(per_edit) == len(regens) and len({r["seed"] for r in per_edit}) == len(per_edit) // 2
    assert all("singan_train_on:edit" in r["model_versions"] for r in per_edit)
    assert {r["sample_id"] for r in per_edit}.isdisjoint({r["sample_id"] for r in regens})
    # plain sampling (option): other pixels and ids, no residual in model_versions
    expand(_settings(prepared, checkpoint, tmp_path / "pl", singan_residual=False))
    plain = [r for r in read_manifest(tmp_path / "pl").to_pylist() if r["stage"] == "singan"]
    assert len(plain) == len(regens) and not any("singan_sampling" in r["model_versions"] for r in plain)
    assert {r["sample_id"] for r in plain}.isdisjoint({r["sample_id"] for r in regens})
    assert {r["sha256"] for r in plain}.isdisjoint({r["sha256"] for r in regens})


def test_quality_gate_moves_samples_to_rejects(prepared, checkpoint, tmp_path):
    from tasks.expand import QualityGate

    expand(_settings(prepared, checkpoint, tmp_path, gate=QualityGate(min_ssim_to_source=0.999)))
    rejects = read_rejects(tmp_path).to_pylist()
    assert rejects and all(r["stage"] == "quality" and r["reason"] == "below_quality_gate" for r in rejects)
    assert "ssim_to_source" in rejects[0]["detail"]


def test_dry_run_plan_and_validation(prepared, checkpoint, tmp_path):
    plan = describe_plan(_settings(prepared, checkpoint, tmp_path))
    assert plan["samples_per_stage"] == {"original": 6, "ganimation": 8, "singan": 16}
    compute = plan["compute"]
    assert plan["work_units"] == 3 and compute["singan_train_on"] == "source" and compute["singan_trainings"] == 4
    assert 0 < compute["singan_cost_per_training_vs_official"] < 1 and compute["singan_cpu_s_estimate"] > 0
    per_edit = describe_plan(_settings(prepared, checkpoint, tmp_path, singan_train_on="edit"))["compute"]
    assert per_edit["singan_trainings"] == 8  # 4 sources x 2 edits: twice the trainings, twice the estimate
    assert per_edit["singan_cpu_s_estimate"] == pytest.approx(2 * compute["singan_cpu_s_estimate"], abs=1)
    assert not (tmp_path / "manifest").exists()
    with pytest.raises(ValueError, match="needs a GANimation checkpoint"):
        _settings(prepared, None, tmp_path, editor="ganimation")
    # without a checkpoint the landmark warp edits (no training needed)
    warp = _settings(prepared, None, tmp_path)
    assert warp.resolved_editor() == "warp" and warp.job("r").editor == "warp"
    assert _settings(prepared, checkpoint, tmp_path).resolved_editor() == "ganimation"
    assert _settings(prepared, None, tmp_path, plan=PlanSettings(kind="none")).resolved_editor() is None


def test_warp_editor_end_to_end(prepared, tmp_path):
    """No GANimation checkpoint: the landmark warp edits, its rows carry the moved points, SinGAN regenerates them."""
    import numpy as np

    from models.au_shape import default_au_shape_model

    summary = expand(_settings(prepared, None, tmp_path, regenerations=1))
    assert summary["verify_ok"]
    rows = read_manifest(tmp_path).to_pylist()
    originals = {r["source_id"]: r for r in rows if r["stage"] == "original" and r["split"] == "train"}
    warps = [r for r in rows if r["stage"] == "warp"]
    regens = [r for r in rows if r["stage"] == "singan"]
    assert len(warps) == 4 * 2 and len(regens) == 4 * 2 and not [r for r in rows if r["stage"] == "ganimation"]
    model = default_au_shape_model()
    for w in warps:
        source = originals[w["source_id"]]
        assert f"editor:warp:{model.version}" in w["model_versions"] and w["quality"]["warp_fraction"] > 0.5
        assert w["landmark_source"] == "openface" and w["landmarks"] != source["landmarks"]
        planned = model.target_landmarks(np.reshape(source["landmarks"], (68, 2)), np.asarray(source["au_source"]),
                                         np.asarray(w["au_target"]))
        if w["quality"]["warp_fraction"] == 1.0:
            np.testing.assert_allclose(np.reshape(w["landmarks"], (68, 2)), planned, atol=1e-3)
        assert w["label"] != source["label"] and w["label_kind"] == "target"
    for g in regens:
        parent = [w for w in warps if w["source_id"] == g["source_id"] and w["au_target"] == g["au_target"]]
        assert len(parent) == 1 and g["landmarks"] == parent[0]["landmarks"]
    # resume: a second run skips every unit and the manifest is unchanged
    again = expand(_settings(prepared, None, tmp_path, regenerations=1))
    assert again["skipped_units"] == again["units"]
    assert _comparable(tmp_path) == [{k: v for k, v in r.items() if k != "run_id"} for r in rows]


def test_warp_then_ganimation_editor(prepared, checkpoint, tmp_path):
    """editor warp+ganimation: the warp first, then GANimation from the warped face toward the same target; the rows
    are stage ganimation and record both models; the result is GANimation's edit of the warp's output."""
    import numpy as np

    from tasks.expand import _ganimation, _warp_editor, read_prepared_image
    from tasks.ganimation import apply_edits

    settings = _settings(prepared, checkpoint, tmp_path, editor="warp+ganimation", regenerations=0)
    plan = describe_plan(settings)
    assert plan["samples_per_stage"]["ganimation"] == 8 and plan["compute"]["warp_edits"] == 8
    assert plan["compute"]["ganimation_forwards"] == 8
    assert expand(settings)["verify_ok"]
    rows = read_manifest(tmp_path).to_pylist()
    edits = [r for r in rows if r["stage"] == "ganimation"]
    assert len(edits) == 4 * 2 and not [r for r in rows if r["stage"] == "warp"]
    originals = {r["source_id"]: r for r in rows if r["stage"] == "original" and r["split"] == "train"}
    warp, model = _warp_editor(None), _ganimation(checkpoint, "cpu")
    for e in edits:
        assert f"editor:{warp.version}" in e["model_versions"] and f"ganimation:{model.checkpoint_id}" in e["model_versions"]
        assert 0.5 < e["quality"]["warp_fraction"] <= 1.0 and 0.0 <= e["quality"]["attention_mean"] <= 1.0
    # One edit recomputed by hand: warp the source, then GANimation on the warped face.
    e = edits[0]
    source = originals[e["source_id"]]
    image = read_prepared_image(tmp_path, e)  # any manifest row: its shard member, checked against its sha256
    source_image = read_prepared_image(tmp_path, source)  # the original, re-written into the expanded shards
    warped = warp.edit(source_image, source["landmarks"], source["au_source"], e["au_target"]).image
    expected = apply_edits(model.generator, [warped], np.asarray([e["au_target"]], np.float32)).images[0]
    assert np.abs(image.astype(int) - expected.astype(int)).max() <= 1
    # The same sources edited by GANimation alone give other pixels and other sample ids.
    alone = _settings(prepared, checkpoint, tmp_path / "g", editor="ganimation", regenerations=0)
    expand(alone)
    other = {r["sample_id"] for r in read_manifest(tmp_path / "g").to_pylist() if r["stage"] == "ganimation"}
    assert other.isdisjoint({r["sample_id"] for r in edits})
    with pytest.raises(ValueError, match="needs a GANimation checkpoint"):
        _settings(prepared, None, tmp_path, editor="warp+ganimation")


def test_settings_added_later_leave_the_config_hash_of_older_runs_alone():
    """source_aus, balance.group_regex / fill_with and the SinGAN prior settings at their defaults hash as before they
    existed (old outputs resume); set, they change the hash."""
    from manifests.schema import stable_hash

    settings = ExpandSettings(prepared="p", out="o")
    dump = settings.model_dump(mode="json", exclude={"device", "out", "fanout", "unit_deployment", "ganimation_batch",
                                                     "source_aus", "singan_prior_faces", "singan_prior_iters",
                                                     "singan_prior_batch", "singan_finetune_iters"})
    del dump["plan"]["balance"]["group_regex"], dump["plan"]["balance"]["fill_with"]
    assert settings.config_hash() == stable_hash(dump, 16)
    label = ExpandSettings(prepared="p", out="o", source_aus="label")
    grouped = ExpandSettings(prepared="p", out="o", plan=PlanSettings(kind="balance", balance={"group_regex": "(S[0-9]+)_"}))
    plain = ExpandSettings(prepared="p", out="o", plan=PlanSettings(kind="balance"))
    prior = ExpandSettings(prepared="p", out="o", singan_prior_faces=8)
    own = ExpandSettings(prepared="p", out="o", plan=PlanSettings(kind="balance", balance={"fill_with": "own"}))
    assert len({settings.config_hash(), label.config_hash(), grouped.config_hash(), plain.config_hash(),
                prior.config_hash(), own.config_hash()}) == 6
    assert ExpandSettings(prepared="p", out="o", singan_prior_iters=50).config_hash() == settings.config_hash()
    plain = ExpandSettings(prepared="p", out="o", singan_residual=False)  # hashes as before the option existed
    assert plain.config_hash() == stable_hash({k: v for k, v in dump.items() if k != "singan_residual"}, 16)
    assert label.job("r").source_aus == "label" and label.job("r").source_aus_range == (0.3, 0.6)


def test_with_source_aus_label_planners_start_from_the_assumed_aus_of_faces_without_measured_ones():
    """CK+ has no AU files: the interpolate plan needs a start, and with --source-aus label it is the one the warp
    assumes (the label's prototype centre); measured AUs still win; with neutral such faces are rejected."""
    from flows.expand import plan_edits
    from tasks.targets import prototype_centre

    rows = [{"source_id": f"s{i}", "split": "train", "label": label, "au_source": None} for i, label in
            enumerate((4, 5, 6))]
    rows.append({"source_id": "measured", "split": "train", "label": 4, "au_source": [0.1] * N_AUS})
    plan = PlanSettings(kind="interpolate", per_source=None, interpolate={"target": "own", "alphas": (1.0,)})
    label = plan_edits(ExpandSettings(prepared="p", out="o", source_aus="label", plan=plan), rows)
    assert not label.rejects and {e.source_id for e in label.edits} == {r["source_id"] for r in rows}
    neutral = plan_edits(ExpandSettings(prepared="p", out="o", plan=plan), rows)
    assert sorted(r["source_id"] for r in neutral.rejects) == ["s0", "s1", "s2"]
    assert {r["reason"] for r in neutral.rejects} == {"missing_au_source"}
    half = plan_edits(ExpandSettings(prepared="p", out="o", source_aus="label",
                                     plan=PlanSettings(kind="interpolate", per_source=None,
                                                       interpolate={"target": "own", "alphas": (0.5,)})), rows)
    full = {e.source_id: np.asarray(e.au_target) for e in label.edits}
    for edit in half.edits:   # alpha 0.5: halfway from the assumed (or measured) start to the goal
        start = (np.full(N_AUS, 0.1) if edit.source_id == "measured"
                 else prototype_centre(dict((r["source_id"], r["label"]) for r in rows)[edit.source_id], (0.3, 0.6)))
        np.testing.assert_allclose(edit.au_target, 0.5 * start + 0.5 * full[edit.source_id], atol=1e-6)


PRIOR = dict(singan_overrides={"skip_coarse_scales": 1}, singan_prior_faces=3, singan_prior_iters=2,
             singan_prior_batch=2, singan_finetune_iters=1)


def test_face_prior_is_trained_once_shared_by_every_bank_and_resumed(prepared, checkpoint, tmp_path):
    from models.checkpoints import checkpoint_id, read_card
    from tasks.expand import ensure_singan_prior, load_original_rows, singan_config

    out = tmp_path / "prior"
    settings = _settings(prepared, checkpoint, out, **PRIOR)
    expand(settings)
    prior_dir = out / "singan_prior"
    card = read_card(prior_dir)
    train_ids = {r["sample_id"] for r in load_original_rows(prepared) if r["split"] == "train"}
    assert card["kind"] == "singan_prior" and len(card["extra"]["face_sample_ids"]) == 3
    assert set(card["extra"]["face_sample_ids"]) <= train_ids and card["extra"]["iters_per_scale"] == 2
    rows = read_manifest(out).to_pylist()
    regens = [r for r in rows if r["stage"] == "singan"]
    assert len(regens) == 16 and verify(out).ok
    assert all(f"singan_prior:{checkpoint_id(prior_dir)}" in r["model_versions"] for r in regens)
    import dataclasses

    warm_job = dataclasses.replace(settings.job("r"), singan_prior=str(prior_dir))
    assert singan_config(warm_job).iters_per_scale == 1  # banks fine-tune for the given iterations
    # without the prior the same plan gives other samples (other ids): the prior is part of what made them
    cold = _settings(prepared, checkpoint, tmp_path / "cold", singan_overrides={"skip_coarse_scales": 1})
    expand(cold)
    cold_ids = {r["sample_id"] for r in read_manifest(tmp_path / "cold").to_pylist() if r["stage"] == "singan"}
    assert cold_ids.isdisjoint({r["sample_id"] for r in regens})
    # a re-run resumes: the prior is reused as it is, nothing is duplicated
    stamp = {p.name: p.stat().st_mtime_ns for p in prior_dir.iterdir()}
    before = _comparable(out)
    expand(settings)
    assert {p.name: p.stat().st_mtime_ns for p in prior_dir.iterdir()} == stamp and _comparable(out) == before
    # a prior from other settings in that output is refused, not mixed in
    with pytest.raises(RuntimeError, match="other settings.*iters_per_scale"):
        ensure_singan_prior(prepared, out, load_original_rows(prepared), singan_config(settings.job("r")), 3, 5, 2, 7)
    # a damaged prior stops the run with what to do, instead of failing inside a unit
    tensors = next(p for p in prior_dir.iterdir() if p.suffix == ".safetensors")
    data = bytearray(tensors.read_bytes())
    data[-100] ^= 0xFF
    tensors.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="damaged.*remove it"):
        ensure_singan_prior(prepared, out, load_original_rows(prepared), singan_config(settings.job("r")), 3, 2, 2, 7)
    # the dry run counts the prior's one training
    compute = describe_plan(settings)["compute"]
    assert compute["singan_prior_faces"] == 3 and compute["singan_prior_cpu_s_estimate"] > 0
    with pytest.raises(ValueError, match="skip_coarse_scales"):
        _settings(prepared, checkpoint, out, singan_prior_faces=3)  # tiny trains its coarsest scale
