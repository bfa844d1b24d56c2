"""The CK+48 study script: every command it runs parses with the real CLI, and its training sets parse."""
from __future__ import annotations

from benchmarks.bench_fer_ck48 import EDITS, OWN_EDITS, PREPARE, SETS, SINGAN, study_command
from flows.cli import _expand_settings, build_parser
from tasks.fer_study import parse_training_set


def test_every_command_of_the_study_parses_with_the_cli():
    parser = build_parser()
    fill = {"ck48": "/data/ck48", "runs": "runs/ck48"}
    prepare = parser.parse_args([a.format(**fill) for a in PREPARE])
    assert prepare.align == "none" and prepare.landmarks == "detector" and prepare.unknown_class == "drop"
    for template in (EDITS, SINGAN):
        settings = _expand_settings(parser.parse_args([a.format(**fill) for a in template]))
        assert settings.source_aus == "label" and settings.plan.balance.group_regex == "(S[0-9]+)_"
        assert settings.plan.balance.intensity_range == (0.6, 0.9)
    own = _expand_settings(parser.parse_args([a.format(**fill) for a in OWN_EDITS]))
    assert own.plan.balance.fill_with == "own" and own.plan.balance.group_regex is None
    study = parser.parse_args(study_command("runs/ck48", 5, [0, 1, 2], 300, 2))
    assert study.folds == 5 and study.seeds == [0, 1, 2] and not study.hflip and len(study.train) == 6
    assert not study.balanced and study.out == "runs/ck48/study"
    control = parser.parse_args(study_command("runs/ck48", 5, [0, 1, 2], 300, 2, balanced=True))
    assert control.balanced and control.out == "runs/ck48/study_balanced" and control.compare == ["b:j"]
    assert [t.split("=")[0] for t in control.train] == ["b", "j"]
    sets = [parse_training_set(spec.format(runs="runs/ck48")) for spec in SETS]
    assert [s.augment for s in sets] == [False, True, False, True, False, True]
