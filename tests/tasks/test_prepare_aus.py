"""Where prepare finds a source's AUs: the pickle cache (failed loads too) and same-named images."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

import tasks.prepare as prep
from tasks.errors import RejectError
from tasks.ingest import SourceRecord
from tasks.openface import OpenFaceRow, write_openface_csv
from tasks.prepare import AUConfig, read_source_aus


class _Face:
    landmarks5_src = None


def _record(source_id: str) -> SourceRecord:
    return SourceRecord(source_id, f"/data/{source_id}.png", "train", 4, "0" * 64)


def test_a_failed_pickle_load_is_cached_not_retried_per_image(tmp_path, monkeypatch):
    calls = []
    real = prep.load_ganimation_pkl
    monkeypatch.setattr(prep, "load_ganimation_pkl", lambda path: calls.append(path) or real(path))
    prep._pkl_aus.cache_clear()
    path = tmp_path / "aus_openface.pkl"
    path.write_bytes(pickle.dumps({"a": np.zeros(10_000)}, protocol=2))  # beyond the per-array bound
    for name in ("a", "b", "c"):
        with pytest.raises(RejectError) as err:
            read_source_aus(_record(name), _Face(), AUConfig(path=str(path)))
        assert err.value.reason == "au_pkl_forbidden_global"
    assert len(calls) == 1


def test_one_nan_entry_rejects_only_its_image(tmp_path):
    prep._pkl_aus.cache_clear()
    good = np.linspace(0, 5, 17)
    path = tmp_path / "aus_openface.pkl"
    path.write_bytes(pickle.dumps({"a": good, "b": np.where(np.arange(17) == 3, np.nan, good), "c": good}, protocol=2))
    config = AUConfig(path=str(path))
    assert read_source_aus(_record("a"), _Face(), config)[0] == pytest.approx(list(good / 5))
    with pytest.raises(RejectError) as err:
        read_source_aus(_record("b"), _Face(), config)
    assert err.value.reason == "au_value_nan" and "'b'" in err.value.detail
    assert read_source_aus(_record("c"), _Face(), config)[0] == pytest.approx(list(good / 5))


def test_same_stem_in_two_classes_matches_by_relative_path_or_is_ambiguous(tmp_path):
    aus = np.full(17, 1.0)
    write_openface_csv(tmp_path / "Happiness" / "face.csv", [OpenFaceRow(aus=aus * 2)], variant="aus_only_img")
    write_openface_csv(tmp_path / "face.csv", [OpenFaceRow(aus=aus)], variant="aus_only_img")
    config, shared = AUConfig(path=str(tmp_path)), frozenset({"face"})
    happy, _, _ = read_source_aus(_record("Happiness/face"), _Face(), config, shared)
    assert happy == pytest.approx([0.4] * 17)  # its own file, by relative path
    with pytest.raises(RejectError) as err:
        read_source_aus(_record("Sadness/face"), _Face(), config, shared)
    assert err.value.reason == "au_file_ambiguous"
    unshared, _, _ = read_source_aus(_record("Sadness/face"), _Face(), config, frozenset())
    assert unshared == pytest.approx([0.2] * 17)  # a unique stem still matches by name
