"""AU target planners: counts, labels, seeds, the untouched test split, balance math and prototypes."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from manifests.schema import AU_INDEX, AU_NAMES, EMOTION_IDS, EMOTIONS, N_AUS
from tasks.targets import (
    DEFAULT_SWEEP_AUS,
    EMOTION_PROTOTYPES,
    BalanceConfig,
    EmotionConfig,
    InterpolateConfig,
    SingleAUConfig,
    balance_targets,
    edit_seed,
    format_plan_summary,
    nearest_emotion,
    plan_balance,
    plan_emotion,
    plan_interpolate,
    plan_single_au,
    plan_summary,
    prototype_vector,
    source_group,
)

# RAF-DB basic train split counts per label id.
RAFDB_TRAIN = {1: 1290, 2: 281, 3: 717, 4: 4772, 5: 1982, 6: 705, 7: 2524}


def _sources(n_train: int = 14, n_test: int = 7, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_train + n_test):
        rows.append({
            "source_id": f"img{i:03d}", "split": "train" if i < n_train else "test",
            "label": i % 7 + 1, "au_source": rng.uniform(0, 0.6, N_AUS).round(3).tolist(),
        })
    return rows


def _rafdb_like() -> list[dict]:
    rows = [{"source_id": f"train_{label}_{k:05d}", "split": "train", "label": label, "au_source": None}
            for label, n in RAFDB_TRAIN.items() for k in range(n)]
    rows += [{"source_id": f"test_{k:04d}", "split": "test", "label": k % 7 + 1, "au_source": None} for k in range(300)]
    return rows


def test_prototypes_are_the_emfacs_sets():
    by_name = {EMOTIONS[e]: set(aus) for e, aus in EMOTION_PROTOTYPES.items()}
    assert by_name == {
        "Happiness": {"AU06", "AU12"},
        "Sadness": {"AU01", "AU04", "AU15"},
        "Surprise": {"AU01", "AU02", "AU05", "AU26"},
        "Fear": {"AU01", "AU02", "AU04", "AU05", "AU07", "AU20", "AU26"},
        "Anger": {"AU04", "AU05", "AU07", "AU23"},
        "Disgust": {"AU09", "AU15", "AU10", "AU17"},
        "Neutral": set(),
    }
    assert all(a in AU_NAMES for aus in by_name.values() for a in aus)


@pytest.mark.parametrize("emotion", sorted(EMOTIONS))
def test_prototype_vector_range_support_and_seed(emotion):
    values = prototype_vector(emotion, np.random.default_rng(3))
    on = {AU_NAMES[i] for i in np.nonzero(values)[0]}
    assert on == set(EMOTION_PROTOTYPES[emotion])
    assert np.all((values[values > 0] >= 0.3) & (values[values > 0] <= 0.6))
    assert np.array_equal(values, prototype_vector(emotion, np.random.default_rng(3)))
    restricted = prototype_vector(emotion, np.random.default_rng(3), au_names=("AU01", "AU12"))
    assert np.array_equal(restricted[[AU_INDEX["AU01"], AU_INDEX["AU12"]]], values[[AU_INDEX["AU01"], AU_INDEX["AU12"]]])
    assert np.count_nonzero(restricted) <= 2


def test_nearest_emotion_recovers_prototypes():
    rng = np.random.default_rng(0)
    for emotion in EMOTIONS:
        assert nearest_emotion(prototype_vector(emotion, rng)) == emotion
    assert nearest_emotion(np.zeros(N_AUS)) == EMOTION_IDS["neutral"]


def test_single_au_counts_labels_and_targets():
    sources = _sources()
    plan = plan_single_au(sources, run_seed=1)
    n_train = sum(s["split"] == "train" for s in sources)
    assert len(plan.edits) == n_train * len(DEFAULT_SWEEP_AUS) * 4
    by_source = {s["source_id"]: s for s in sources}
    for edit in plan.edits:
        source = by_source[edit.source_id]
        assert source["split"] == "train"
        assert edit.edit_kind == "single_au" and edit.label_kind == "inherited" and edit.alpha is None
        assert edit.label == source["label"]
        name, value = edit.target.split("=")
        changed = [i for i in range(N_AUS) if abs(edit.au_target[i] - source["au_source"][i]) > 1e-12]
        assert set(changed) <= {AU_INDEX[name]}
        assert edit.au_target[AU_INDEX[name]] == pytest.approx(float(value))
    config = SingleAUConfig(au_names=("AU12",), intensities=(0.5,))
    assert len(plan_single_au(sources, config).edits) == n_train


def test_seeds_are_stable_distinct_and_order_free():
    sources = _sources()
    plans = [plan_single_au(sources, run_seed=5), plan_interpolate(sources, run_seed=5),
             plan_emotion(sources, run_seed=5), plan_balance(sources, run_seed=5)]
    seeds = [e.seed for p in plans for e in p.edits]
    assert len(seeds) == len(set(seeds))
    assert all(0 <= s < 2 ** 63 for s in seeds)
    shuffled = list(reversed(sources))
    again = [plan_single_au(shuffled, run_seed=5), plan_interpolate(shuffled, run_seed=5),
             plan_emotion(shuffled, run_seed=5), plan_balance(shuffled, run_seed=5)]
    for p, q in zip(plans, again):
        key = lambda e: (e.source_id, e.edit_index)  # noqa: E731
        assert sorted(p.edits, key=key) == sorted(q.edits, key=key)
    other = plan_emotion(sources, run_seed=6)
    assert {e.seed for e in other.edits}.isdisjoint({e.seed for e in plans[2].edits})
    assert plans[2].edits[0].seed == edit_seed(5, plans[2].edits[0].source_id, "emotion", 0)


def test_no_planner_touches_the_test_split():
    sources = _sources()
    test_ids = {s["source_id"] for s in sources if s["split"] == "test"}
    for plan in (plan_single_au(sources), plan_emotion(sources), plan_balance(sources),
                 plan_interpolate(sources), plan_interpolate(sources, InterpolateConfig(target="source", n_targets=3))):
        assert not {e.source_id for e in plan.edits} & test_ids
        assert not any(e.target.removeprefix("source:") in test_ids for e in plan.edits)


def test_emotion_planner_labels_and_intensities():
    sources = _sources()
    plan = plan_emotion(sources, EmotionConfig(emotions=(2, 3, 4)), run_seed=2)
    by_source = {s["source_id"]: s for s in sources}
    for edit in plan.edits:
        assert edit.edit_kind == "emotion" and edit.label_kind == "target" and edit.label != by_source[edit.source_id]["label"]
        target = np.array(edit.au_target)
        assert {AU_NAMES[i] for i in np.nonzero(target)[0]} == set(EMOTION_PROTOTYPES[edit.label])
        assert np.all((target[target > 0] >= 0.3) & (target[target > 0] <= 0.6))
    n_train = 14
    own_in_set = sum(1 for s in sources if s["split"] == "train" and s["label"] in (2, 3, 4))
    assert len(plan.edits) == 3 * n_train - own_in_set


def test_interpolate_alphas_and_label_threshold():
    sources = _sources()
    config = InterpolateConfig(alphas=(0.2, 0.4, 0.6, 1.0), label_threshold=0.5, n_targets=2)
    plan = plan_interpolate(sources, config, run_seed=3)
    by_source = {s["source_id"]: s for s in sources}
    assert len(plan.edits) == 14 * 2 * 4
    for edit in plan.edits:
        source = by_source[edit.source_id]
        assert edit.edit_kind == "interpolate"
        if edit.alpha < 0.5:
            assert edit.label == source["label"] and edit.label_kind == "inherited"
        else:
            assert edit.label == EMOTION_IDS[edit.target.removeprefix("emotion:").lower()] and edit.label_kind == "target"
            assert edit.label != source["label"]
    # alpha = 1 lands on the target; lower alphas are on the straight line to it.
    first = [e for e in plan.edits if e.source_id == "img000"][:4]
    start = np.array(by_source["img000"]["au_source"])
    goal = np.array(first[-1].au_target)
    for edit in first:
        np.testing.assert_allclose(edit.au_target, (1 - edit.alpha) * start + edit.alpha * goal, atol=1e-12)


def test_interpolate_to_other_images():
    sources = _sources()
    plan = plan_interpolate(sources, InterpolateConfig(target="source", alphas=(0.5, 1.0)), run_seed=0)
    by_source = {s["source_id"]: s for s in sources}
    for edit in plan.edits:
        other = by_source[edit.target.removeprefix("source:")]
        assert other["split"] == "train" and other["source_id"] != edit.source_id
        if edit.alpha == 1.0:
            np.testing.assert_allclose(edit.au_target, other["au_source"])
            assert edit.label == other["label"]


def test_interpolate_to_the_own_emotion_keeps_the_label_and_changes_only_its_intensity():
    """target="own": label-preserving edits toward the source's own prototype at another intensity (a weaker or a
    stronger smile stays Happiness); a Neutral face has nothing to scale and is a bad_label reject."""
    sources = _sources()
    sources[0]["label"] = EMOTION_IDS["neutral"]
    config = InterpolateConfig(target="own", alphas=(0.5, 1.0), n_targets=2, intensity_range=(0.2, 0.9))
    plan = plan_interpolate(sources, config, run_seed=1)
    by_source = {s["source_id"]: s for s in sources}
    neutral = [s["source_id"] for s in sources if s["split"] == "train" and s["label"] == EMOTION_IDS["neutral"]]
    assert len(neutral) == 3 and [(r["source_id"], r["reason"]) for r in plan.rejects] == [(n, "bad_label") for n in neutral]
    assert len(plan.edits) == (14 - 3) * 2 * 2
    for edit in plan.edits:
        source = by_source[edit.source_id]
        assert edit.label == source["label"] and edit.label_kind == "inherited"
        assert edit.target == f"own:{EMOTIONS[source['label']]}"
        if edit.alpha == 1.0:   # the goal: the own prototype's AUs only, within the intensity range
            own = [AU_INDEX[a] for a in EMOTION_PROTOTYPES[source["label"]]]
            assert np.all(np.asarray(edit.au_target)[np.setdiff1d(np.arange(N_AUS), own)] == 0)
            assert np.all((np.asarray(edit.au_target)[own] >= 0.2) & (np.asarray(edit.au_target)[own] <= 0.9))
    again = plan_interpolate(sources, config, run_seed=1)
    assert [e.au_target for e in again.edits] == [e.au_target for e in plan.edits]   # seeded


def test_balance_targets_math():
    assert balance_targets(RAFDB_TRAIN) == {label: 4772 for label in RAFDB_TRAIN}
    wanted = {2: 2.0, 4: 1.0}
    # Fear must reach twice Happiness: 9544; the others keep their counts.
    assert balance_targets(RAFDB_TRAIN, wanted) == {**RAFDB_TRAIN, 2: 9544}


def test_balance_fills_rafdb_minorities():
    sources = _rafdb_like()
    plan = plan_balance(sources, BalanceConfig(cap_per_source=2), run_seed=0)
    summary = plan_summary(plan, sources)
    assert summary["labels_after"] == {EMOTIONS[label]: 4772 for label in RAFDB_TRAIN}
    assert summary["labels_added"]["Fear"] == 4772 - 281
    assert summary["labels_added"]["Happiness"] == 0
    per_source: dict[str, int] = {}
    for edit in plan.edits:
        assert edit.planner == "balance" and edit.edit_kind == "emotion" and edit.label_kind == "target"
        assert not edit.source_id.startswith(f"train_{edit.label}_")  # donors are of other classes
        assert not edit.source_id.startswith("test_")
        per_source[edit.source_id] = per_source.get(edit.source_id, 0) + 1
    assert max(per_source.values()) <= 2
    assert {e.seed for e in plan.edits} == {e.seed for e in plan_balance(sources, BalanceConfig(cap_per_source=2)).edits}


def test_balance_filled_with_own_faces_keeps_every_label():
    """fill_with="own": a class is filled with its own faces at other intensities (no other expression under its
    label), at most cap_per_source each; Neutral has no prototype to move along and stays unfilled."""
    sources = _rafdb_like()
    plan = plan_balance(sources, BalanceConfig(cap_per_source=2, fill_with="own", intensity_range=(0.3, 0.9)), run_seed=0)
    added = plan_summary(plan, sources)["labels_added"]
    assert added == {"Surprise": 2 * 1290, "Fear": 2 * 281, "Disgust": 2 * 717, "Happiness": 0,
                     "Sadness": 4772 - 1982, "Anger": 2 * 705, "Neutral": 0}
    per_source: dict[str, int] = {}
    for edit in plan.edits:
        assert edit.source_id.startswith(f"train_{edit.label}_")                     # the face's own class
        assert edit.label_kind == "inherited" and edit.target == f"own:{EMOTIONS[edit.label]}"
        own = [AU_INDEX[a] for a in EMOTION_PROTOTYPES[edit.label]]
        values = np.asarray(edit.au_target)
        assert np.all(values[np.setdiff1d(np.arange(N_AUS), own)] == 0) and np.all(values[own] > 0.2)
        per_source[edit.source_id] = per_source.get(edit.source_id, 0) + 1
    assert max(per_source.values()) == 2
    assert any("Neutral" in note and "unfilled 2248" in note for note in plan.notes)
    again = plan_balance(sources, BalanceConfig(cap_per_source=2, fill_with="own", intensity_range=(0.3, 0.9)))
    assert [(e.source_id, e.au_target, e.seed) for e in again.edits] == [(e.source_id, e.au_target, e.seed)
                                                                         for e in plan.edits]
    with pytest.raises(ValueError, match="fill_with"):
        BalanceConfig(fill_with="mine")


def test_balance_cap_limits_and_reports_unfilled():
    sources = _rafdb_like()
    plan = plan_balance(sources, BalanceConfig(cap_per_source=1, max_edits=5000), run_seed=0)
    assert len(plan.edits) == 5000
    added = plan_summary(plan, sources)["labels_added"]
    # Water-filling: the neediest classes are filled in step down to one level; classes already below
    # it (Neutral needs 2248) get nothing yet.
    remaining = {name: 4772 - RAFDB_TRAIN[EMOTION_IDS[name.lower()]] - added[name] for name in added}
    level = max(remaining.values())
    assert all(level - remaining[name] <= 1 for name in added if added[name] > 0)
    assert added["Neutral"] == 0 and remaining["Neutral"] < level
    assert remaining["Happiness"] == 0 and added["Fear"] > 0
    assert any("unfilled" in note and "Fear" in note for note in plan.notes)


def test_dataframe_input_and_rejects():
    sources = _sources()
    sources[0]["au_source"] = [0.1] * 16
    sources[1]["au_source"] = None
    sources[2]["label"] = 9
    sources[3]["au_source"] = [2.0] * N_AUS
    frame = pd.DataFrame(sources)
    plan = plan_single_au(frame)
    reasons = {r["source_id"]: r["reason"] for r in plan.rejects}
    assert reasons == {"img000": "bad_au_source", "img001": "missing_au_source", "img002": "bad_label",
                       "img003": "bad_au_source"}
    assert all(r["stage"] == "targets" for r in plan.rejects)
    assert not {e.source_id for e in plan.edits} & set(reasons)
    # Emotion edits do not need the source's AUs.
    assert "img001" in {e.source_id for e in plan_emotion(frame).edits}
    with pytest.raises(ValueError, match="lacks column"):
        plan_emotion([{"source_id": "a", "split": "train", "label": 1}])
    with pytest.raises(ValueError, match="twice"):
        plan_emotion([sources[5], sources[5]])


def test_config_validation_errors():
    with pytest.raises(ValueError, match="AU99"):
        SingleAUConfig(au_names=("AU12", "AU99"))
    with pytest.raises(ValueError, match="outside 0..1"):
        SingleAUConfig(intensities=(0.0, 1.2))
    with pytest.raises(ValueError, match="unknown emotion"):
        EmotionConfig(emotions=(1, 8))
    with pytest.raises(ValueError, match="intensity_range"):
        EmotionConfig(intensity_range=(0.6, 0.3))
    with pytest.raises(ValueError, match="alphas"):
        InterpolateConfig(alphas=(0.5, 0.25))
    with pytest.raises(ValueError, match="cap_per_source"):
        BalanceConfig(cap_per_source=0)
    with pytest.raises(ValueError, match="weights"):
        BalanceConfig(wanted={2: -1.0})


@pytest.mark.parametrize("config", [
    SingleAUConfig(au_names=("AU12",), intensities=(0.5, 1.0)),
    EmotionConfig(emotions=(2, 3), jitter=0.1),
    InterpolateConfig(target="source", n_targets=2),
    BalanceConfig(wanted={2: 2.0, 4: 1.0}, cap_per_source=3),
])
def test_configs_round_trip_through_json(config):
    import json

    from models.checkpoints import config_from_dict, config_to_dict

    data = json.loads(json.dumps(config_to_dict(config)))
    assert config_from_dict(type(config), data) == config


def test_summary_and_dry_run_text():
    sources = _sources()
    plan = plan_emotion(sources, EmotionConfig(emotions=(2,)))
    summary = plan_summary(plan, sources)
    assert summary["edits_per_kind"] == {"emotion": len(plan.edits)}
    assert summary["labels_before"]["Fear"] == 2 and summary["labels_after"]["Fear"] == 2 + len(plan.edits)
    assert summary["test_sources"] == 7
    text = format_plan_summary(summary)
    assert "Fear" in text and "7 test sources untouched" in text
    combined = plan.extend(plan_single_au(sources))
    assert plan_summary(combined, sources)["edits_per_planner"] == {"emotion": len(plan.edits), "single_au": 14 * 36}


def test_balance_with_group_regex_gives_people_only_emotions_they_lack():
    # CK+-style ids: three people; S001 already shows Fear, so none of S001's faces may be edited to Fear.
    shows = {"S001": [1, 2, 1, 1], "S002": [1, 1, 4, 4], "S003": [1, 6, 6, 1]}
    sources = [{"source_id": f"{'x' * label}/{person}_00{i}_0001", "split": "train", "label": label, "au_source": None}
               for person, labels in shows.items() for i, label in enumerate(labels)]
    config = BalanceConfig(group_regex="(S[0-9]+)_", cap_per_source=3)
    plan = plan_balance(sources, config, run_seed=0)
    assert plan.edits
    for edit in plan.edits:
        person = source_group(edit.source_id, config.group_regex)
        assert edit.label not in shows[person], (edit.source_id, edit.label)
    # Without the pattern each source is its own group: S001's surprise faces do get Fear edits.
    loose = plan_balance(sources, BalanceConfig(cap_per_source=3), run_seed=0)
    assert any(source_group(e.source_id, "(S[0-9]+)_") == "S001" and e.label == 2 for e in loose.edits)


def test_source_group_takes_the_first_group_else_the_match_else_the_id():
    assert source_group("fear/S011_003_00000014", "(S[0-9]+)_") == "S011"
    assert source_group("fear/S011_003_00000014", "S[0-9]+") == "S011"
    assert source_group("train_0001", "(S[0-9]+)_") == "train_0001"
    assert source_group("train_0001", None) == "train_0001"
    with pytest.raises(ValueError, match="group_regex"):
        BalanceConfig(group_regex="(unclosed")
