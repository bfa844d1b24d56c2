"""Hash-bucket work units: membership stable under additions, in prepare's and expand's planners."""
from __future__ import annotations

import pytest

from tasks.expand import plan_expand_units
from tasks.ingest import SourceRecord
from tasks.prepare import plan_units
from tasks.units import hash_bucket_units


def _ids(n: int, start: int = 0) -> list[str]:
    return [f"Happiness/img_{i:05d}" for i in range(start, start + n)]


def test_buckets_cover_every_id_once_and_respect_the_size():
    buckets = hash_bucket_units(_ids(1000), 64)
    members = [i for _, ids in buckets for i in ids]
    assert sorted(members) == sorted(_ids(1000)) and len(members) == len(set(members))
    sizes = [len(ids) for _, ids in buckets]
    assert len(buckets) == 16 and 1000 / 16 <= 64 and min(sizes) >= 30 and max(sizes) <= 100
    assert len({name for name, _ in buckets}) == len(buckets)
    assert hash_bucket_units(list(reversed(_ids(1000))), 64) == buckets  # input order does not matter
    with pytest.raises(ValueError):
        hash_bucket_units(_ids(3), 0)


def test_the_bucket_count_changes_only_when_the_dataset_doubles():
    from tasks.units import bucket_bits

    assert [bucket_bits(n, 64) for n in (1, 64, 65, 128, 129, 256, 257)] == [0, 0, 1, 1, 2, 2, 3]


@pytest.mark.parametrize(("n_old", "unit_size"), [(100, 4), (1200, 64)])
def test_adding_ten_percent_only_changes_buckets_that_gain_an_id(n_old, unit_size):
    old, new = _ids(n_old), _ids(n_old // 10, start=n_old)
    before = {tuple(ids) for _, ids in hash_bucket_units(old, unit_size)}
    after = hash_bucket_units(old + new, unit_size)
    changed = [ids for _, ids in after if tuple(ids) not in before]
    assert all(set(ids) & set(new) for ids in changed)          # every changed bucket holds a new id
    untouched = [ids for _, ids in after if not set(ids) & set(new)]
    assert all(tuple(ids) in before for ids in untouched)       # every bucket without one is as it was
    assert untouched                                            # and their work is reused


def _records(ids, split="train", sha="0"):
    return [SourceRecord(i, f"/data/{i}.png", split, 4, sha + i) for i in ids]


def test_prepare_units_keep_their_ids_when_the_dataset_grows():
    old = _records(_ids(200))
    grown = old + _records(_ids(20, start=200))
    before = {u.unit_id: u for u in plan_units(old, 16, "cfg")}
    after = plan_units(grown, 16, "cfg")
    new_ids = set(_ids(20, start=200))
    for unit in after:
        holds_new = bool({r.source_id for r in unit.records} & new_ids)
        assert (unit.unit_id in before) == (not holds_new)
    # a changed image (same id, new bytes) changes exactly its unit's id
    edited = [SourceRecord(r.source_id, r.path, r.split, r.label, "edited") if r.source_id == old[0].source_id else r
              for r in old]
    changed = {u.unit_id for u in plan_units(edited, 16, "cfg")} - set(before)
    assert len(changed) == 1


def test_expand_units_keep_their_ids_when_the_prepared_dataset_grows():
    def rows(ids):
        return [{"source_id": i, "split": "train", "sample_id": "s" + i} for i in ids]

    before = {u.unit_id for u in plan_expand_units(rows(_ids(200)), 16, "cfg", include_test=False)}
    after = plan_expand_units(rows(_ids(220)), 16, "cfg", include_test=False)
    new_ids = set(_ids(20, start=200))
    assert all((u.unit_id in before) == (not set(u.source_ids) & new_ids) for u in after)
    assert any(u.unit_id in before for u in after)


def test_committed_units_are_kept_and_the_rest_resumes_into_the_original_buckets():
    from tasks.units import plan_split_units

    fingerprints = {i: [f"sha-{i}"] for i in _ids(60)}
    fresh = plan_split_units(fingerprints, 8, "train", "cfg")
    assert not any(u.kept for u in fresh)
    committed = {u.unit_id: u.membership for u in fresh[:len(fresh) // 3]}  # interrupted after a third of the units
    resumed = plan_split_units(fingerprints, 8, "train", "cfg", committed)
    assert sorted((u.unit_id, u.source_ids) for u in resumed) == sorted((u.unit_id, u.source_ids) for u in fresh)
    assert {u.unit_id for u in resumed if u.kept} == set(committed)
    # units committed out of order (parallel workers): still every source exactly once
    scattered = plan_split_units(fingerprints, 8, "train", "cfg", {u.unit_id: u.membership for u in fresh[::3]})
    assert sorted(i for u in scattered for i in u.source_ids) == sorted(fingerprints)

    # growth: every committed unit is kept (even across a doubling), new sources get new units
    everything = {u.unit_id: u.membership for u in fresh}
    grown = fingerprints | {i: [f"sha-{i}"] for i in _ids(100, start=60)}
    plan = plan_split_units(grown, 8, "train", "cfg", everything)
    assert {u.unit_id for u in plan if u.kept} == set(everything)
    assert sorted(i for u in plan if not u.kept for i in u.source_ids) == _ids(100, start=60)

    # an edited source makes its unit stale; its other sources are planned again with it
    edited = dict(fingerprints, **{_ids(1)[0]: ["changed"]})
    plan = plan_split_units(edited, 8, "train", "cfg", everything)
    stale = set(everything) - {u.unit_id for u in plan}
    assert len(stale) == 1
    (old,) = [u for u in fresh if u.unit_id in stale]
    assert sorted(i for u in plan if not u.kept for i in u.source_ids) == sorted(old.source_ids)
    # other settings never reuse a unit
    assert not any(u.kept for u in plan_split_units(fingerprints, 8, "train", "other", everything))
