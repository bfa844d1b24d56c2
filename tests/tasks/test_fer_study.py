"""The FER study: training-set specs, folds by person, standard augmentation, resumable runs, bookkeeping."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from manifests.dataset import encode_png_rgb
from manifests.schema import make_sample_id, sha256_bytes
from manifests.writer import Sample, commit_unit
from tasks import fer_study
from tasks.fer import FERConfig
from tasks.fer_study import (
    AugmentConfig,
    Part,
    StandardAugment,
    StudyConfig,
    assign_folds,
    load_study_data,
    paired,
    parse_training_set,
    plan_folds,
    run_study,
    summarise,
)
from tests.conftest import shared_data_dir
from tests.tasks.test_fer import IMAGE_PX, _sample, one_thread  # noqa: F401  (one torch thread, autouse)

PERSON = r"-(\d+)$"   # the test sources are "<split>-<label>-<person>": every person shows every label


def _edit_of(original: Sample, label: int, stage: str = "warp") -> Sample:
    """A generated sample derived from `original` (same source_id and source_sha256), relabelled."""
    rgb = cv2.imdecode(np.frombuffer(original.png, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    png = encode_png_rgb(np.ascontiguousarray(255 - rgb))
    row = {**original.row, "stage": stage, "label": label, "label_kind": "target", "edit_kind": "emotion",
           "sample_id": make_sample_id(original.row["source_sha256"], stage, edit={"label": label}, seed=0)}
    return Sample(png=png, row=row)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """A prepared root (7 labels x 6 people, all train) and an expanded root with one edit per original."""
    base = tmp_path_factory.mktemp("study")
    originals = [_sample("train", label, person) for label in range(1, 8) for person in range(6)]
    commit_unit(base / "prepared", split="train", run_name="prep", unit_id="train-00000", samples=originals)
    edits = [_edit_of(s, label=s.row["label"] % 7 + 1) for s in originals]
    commit_unit(base / "expanded", split="train", run_name="expand", unit_id="train-00000", samples=originals + edits)
    return base / "prepared", base / "expanded"


TINY = FERConfig(arch="small_cnn", width=8, image_size_px=IMAGE_PX, steps=3, batch_size=8, seed=0, device="cpu",
                 hflip=False)


def test_parse_training_set_reads_parts_stages_and_augmentation(tmp_path):
    s = parse_training_set("d=originals+runs/edits:warp,singan+aug")
    assert s.name == "d" and s.augment
    assert s.parts == (Part(None, ("original",)), Part("runs/edits", ("warp", "singan")))
    assert s.describe() == "originals+runs/edits:warp,singan+aug"
    assert parse_training_set(s.name + "=" + s.describe()) == s      # round trip (what the flow passes on)
    assert parse_training_set("all=runs/x").parts == (Part("runs/x", None),)
    for bad, message in (("noequals", "expected NAME=PART"), ("a=", "expected NAME=PART"),
                         ("a b=originals", "use letters"), ("a=originals++aug", "empty part"),
                         ("a=aug", "has no data"), ("a=runs/x:wrap", "unknown stage")):
        with pytest.raises(ValueError, match=message):
            parse_training_set(bad)


def test_assign_folds_puts_each_group_in_one_fold_near_equal_and_seeded():
    sizes = {f"S{i:03d}": 1 + (i * 7) % 9 for i in range(40)}
    folds = assign_folds(sizes, 5, seed=0)
    assert set(folds) == set(sizes) and set(folds.values()) == set(range(5))
    loads = [sum(n for g, n in sizes.items() if folds[g] == f) for f in range(5)]
    assert max(loads) - min(loads) <= max(sizes.values())            # greedy: within one group of each other
    assert assign_folds(sizes, 5, seed=0) == folds
    assert assign_folds(sizes, 5, seed=1) != folds
    with pytest.raises(ValueError, match="k >= 2"):
        assign_folds(sizes, 1, seed=0)
    with pytest.raises(ValueError, match="cannot fill"):
        assign_folds({"a": 1, "b": 2}, 3, seed=0)


def test_folds_keep_every_person_and_their_edits_out_of_their_own_training_set(roots):
    prepared, expanded = roots
    sets = [parse_training_set("a=originals"), parse_training_set(f"c=originals+{expanded}:warp")]
    data = load_study_data(prepared, sets, IMAGE_PX, PERSON, kfold=True)
    assert len(data.originals) == 42 and len(data.members["a"]) == 42 and len(data.members["c"]) == 84
    plans = plan_folds(data, 3, seed=0)
    assert sorted(i for p in plans for i in p.test) == sorted(data.originals)   # every original tested once
    for plan in plans:
        tested = {data.groups[i] for i in plan.test}
        assert len(tested) == 2                                                 # 6 people / 3 folds
        for name in ("a", "c"):
            trained = {data.groups[i] for i in plan.train[name]}
            assert not tested & trained
        assert len(plan.train["c"]) == 2 * len(plan.train["a"]) == 56          # an edit per training original
        assert {data.stages[i] for i in plan.train["c"]} == {"original", "warp"}


def test_a_generated_sample_of_a_tested_image_under_another_name_is_refused(roots, tmp_path):
    prepared, _ = roots
    original = _sample("train", 1, 0)                       # person 0's image ...
    leak = _edit_of(original, label=2)
    leak.row["source_id"] = "renamed-99"                    # ... filed under a person who is never tested with it
    commit_unit(tmp_path / "leaky", split="train", run_name="expand", unit_id="train-00000", samples=[leak])
    sets = [parse_training_set(f"x=originals+{tmp_path / 'leaky'}")]
    data = load_study_data(prepared, sets, IMAGE_PX, PERSON, kfold=True)
    with pytest.raises(ValueError, match="come from tested images"):
        plan_folds(data, 3, seed=0)


def test_split_mode_scores_the_test_split_and_trains_on_train(tmp_path):
    samples = {split: [_sample(split, label, i) for label in range(1, 8) for i in range(2)] for split in ("train", "test")}
    for split, rows in samples.items():
        commit_unit(tmp_path / "p", split=split, run_name="prep", unit_id=f"{split}-0", samples=rows)
    data = load_study_data(tmp_path / "p", [parse_training_set("a=originals")], IMAGE_PX, None, kfold=False)
    (plan,) = plan_folds(data, 0, seed=0)
    assert {data.splits[i] for i in plan.test} == {"test"} and {data.splits[i] for i in plan.train["a"]} == {"train"}


def test_standard_augment_is_seeded_in_range_and_identity_at_zero_strength():
    images = torch.rand(6, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    a = StandardAugment(AugmentConfig(), seed=5)(images)
    b = StandardAugment(AugmentConfig(), seed=5)(images)
    c = StandardAugment(AugmentConfig(), seed=6)(images)
    assert a.shape == images.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert (a - images).abs().mean() > 0.02                                  # it does change the images
    off = AugmentConfig(crop_scale=(1.0, 1.0), rotate_deg=0.0, brightness=0.0, contrast=0.0, hflip=False)
    assert torch.allclose(StandardAugment(off, seed=5)(images), images, atol=1e-5)
    flip_only = dataclasses.replace(off, hflip=True)
    flipped = StandardAugment(flip_only, seed=5)(images)
    for out, image in zip(flipped, images):                                  # each image: itself or its mirror
        assert torch.allclose(out, image, atol=1e-5) or torch.allclose(out, image.flip(-1), atol=1e-5)
    with pytest.raises(ValueError):
        AugmentConfig(crop_scale=(0.0, 1.0))


def test_study_writes_every_run_then_resumes_without_training(roots, tmp_path, monkeypatch):
    prepared, expanded = roots
    sets = [parse_training_set("a=originals"), parse_training_set(f"c=originals+{expanded}:warp+aug")]
    config = StudyConfig(folds=2, group_regex=PERSON, seeds=(0, 1), fer=TINY)
    out = run_study(prepared, sets, config, tmp_path / "study")
    assert len(list((tmp_path / "study" / "runs").glob("*.json"))) == 2 * 2 * 2
    payload = json.loads((tmp_path / "study" / "fer_study.json").read_text())
    assert len(payload["runs"]) == 8 and payload["settings"]["group_regex"] == PERSON
    assert {r["set"] for r in payload["runs"]} == {"a", "c"}
    assert out["summary"]["sets"]["c"]["runs"] == 4 and out["summary"]["sets"]["c"]["spec"].endswith("+aug")
    text = Path(out["report"]["markdown"]).read_text()
    assert "| a | c | accuracy |" in text and "2-fold by group" in text

    def must_not_train(*args, **kwargs):
        raise AssertionError("a saved run was trained again")

    monkeypatch.setattr(fer_study, "train_and_score", must_not_train)
    again = run_study(prepared, sets, config, tmp_path / "study")
    assert json.dumps(again["summary"]) == json.dumps(out["summary"])
    # Other settings are other runs: they are trained, not read back.
    with pytest.raises(AssertionError, match="trained again"):
        run_study(prepared, sets, dataclasses.replace(config, fer=dataclasses.replace(TINY, steps=4)), tmp_path / "study")


def test_paired_comparison_and_summary_bookkeeping():
    def run(fold, seed, name, acc):
        recall = [acc] * 6 + [None]
        return {"fold": fold, "seed": seed, "set": name, "accuracy": acc, "mean_recall": acc,
                "per_class_recall": recall, "n_train": 10}

    results = []
    for fold in range(3):
        for seed in range(2):
            base = 0.5 + 0.1 * fold
            results += [run(fold, seed, "a", base), run(fold, seed, "b", base + (0.1 if seed == 0 else -0.02))]
    c = paired(results, "a", "b", "accuracy")
    assert c["n"] == 6 and c["wins"] == 3 and c["losses"] == 3 and c["ties"] == 0
    assert c["mean"] == pytest.approx(0.04)
    assert c["fold_diffs"] == pytest.approx([0.04, 0.04, 0.04])
    assert c["p_value"] is None                                  # the fold means do not vary: no t-test
    summary = summarise(results, [parse_training_set("a=originals"), parse_training_set("b=originals+aug")], [("a", "b")])
    assert summary["sets"]["a"]["accuracy"]["mean"] == pytest.approx(0.6)
    assert summary["sets"]["a"]["per_fold"][2]["accuracy"] == pytest.approx(0.7)
    assert summary["sets"]["b"]["per_class_recall"][6] is None
    with pytest.raises(ValueError, match="no runs of both"):
        paired(results, "a", "z", "accuracy")


CK48 = shared_data_dir() / "ck48"


@pytest.mark.skipif(not CK48.is_dir(), reason=f"CK+48 not found at {CK48} (real data, not part of the product)")
def test_ck48_subjects_never_in_both_train_and_test(tmp_path):
    """Prepared-style rows from real CK+48 files (source_id = '<folder>/<file stem>', as prepare writes them)."""
    label_of = {"anger": 6, "disgust": 3, "fear": 2, "happy": 4, "sadness": 5, "surprise": 1}
    samples = []
    for folder, label in label_of.items():
        for path in sorted((CK48 / folder).glob("*.png"))[:12]:
            grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            png = encode_png_rgb(np.repeat(grey[..., None], 3, axis=-1))
            row = {**_sample("train", label, 0).row, "source_id": f"{folder}/{path.stem}", "label": label,
                   "source_sha256": sha256_bytes(png), "sample_id": make_sample_id(sha256_bytes(png), "original"),
                   "width": 48, "height": 48}
            samples.append(Sample(png=png, row=row))
    commit_unit(tmp_path / "ck", split="train", run_name="prep", unit_id="train-0", samples=samples)
    data = load_study_data(tmp_path / "ck", [parse_training_set("a=originals")], 48, "(S[0-9]+)_", kfold=True)
    assert all(re.fullmatch(r"S\d{3}", g) for g in data.groups)
    subjects = set(data.groups)
    assert len(subjects) >= 5
    plans = plan_folds(data, 5, seed=0)
    for plan in plans:
        tested = {data.groups[i] for i in plan.test}
        trained = {data.groups[i] for i in plan.train["a"]}
        assert tested and not tested & trained and tested | trained == subjects
    # Three frames of one sequence are near copies: a file-level split would put them on both sides.
    by_sequence = {}
    for i, _sid in enumerate(data.sample_ids):
        by_sequence.setdefault(data.groups[i], set()).add(next(p.fold for p in plans if i in p.test))
    assert all(len(folds) == 1 for folds in by_sequence.values())
