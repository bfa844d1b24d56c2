"""The `singanimation` command line: help, dry-run plan, verify exit codes, inspect-au JSON, clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from flows.cli import build_parser, main
from manifests.dataset import encode_png_rgb
from manifests.schema import N_AUS
from manifests.writer import Sample, commit_unit
from tasks.openface import write_openface_csv
from tasks.sample_data import build_sample_dataset


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for command in ("prepare", "expand", "train-ganimation", "import-checkpoint", "verify", "inspect-au", "sifid",
                    "evaluate-fer", "demo"):
        assert command in text
    parser = build_parser()
    assert parser.parse_args(["prepare", "x", "--out", "y"]).func.__name__ == "cmd_prepare"
    args = parser.parse_args(["expand", "p", "--out", "o", "--plan", "none", "--singan-set", "iters_per_scale=60"])
    assert args.func.__name__ == "cmd_expand" and args.singan_set == ["iters_per_scale=60"]


def test_expand_settings_from_flags(tmp_path):
    from flows.cli import _expand_settings

    args = build_parser().parse_args(["expand", "p", "--out", "o", "--plan", "none", "-M", "3", "--singan-set",
                                      "iters_per_scale=60", "--singan-set", "bf16_autocast=true", "--min-ssim", "0.5"])
    settings = _expand_settings(args)
    assert settings.singan_overrides == {"iters_per_scale": 60, "bf16_autocast": True}
    assert settings.regenerations == 3 and settings.gate.min_ssim_to_source == 0.5 and settings.ganimation is None
    bad = build_parser().parse_args(["expand", "p", "--out", "o", "--plan", "none", "--singan-set", "no_such_field=1"])
    with pytest.raises(ValueError, match="no_such_field"):
        _expand_settings(bad)


def test_expand_study_flags_reach_the_settings():
    from flows.cli import UsageError, _expand_settings

    args = build_parser().parse_args(["expand", "p", "--out", "o", "--plan", "balance", "--group-regex", "(S[0-9]+)_",
                                      "--source-aus", "label", "--intensity", "0.6", "0.9", "-M", "0"])
    settings = _expand_settings(args)
    assert settings.source_aus == "label" and settings.plan.balance.group_regex == "(S[0-9]+)_"
    assert settings.plan.balance.intensity_range == (0.6, 0.9) and settings.job("r").source_aus_range == (0.6, 0.9)
    own = _expand_settings(build_parser().parse_args(["expand", "p", "--out", "o", "--plan", "interpolate",
                                                      "--interpolate-to", "own", "--intensity", "0.3", "0.9"]))
    assert own.plan.interpolate.target == "own" and own.plan.interpolate.intensity_range == (0.3, 0.9)
    filled = _expand_settings(build_parser().parse_args(["expand", "p", "--out", "o", "--plan", "balance",
                                                         "--fill-with", "own"]))
    assert filled.plan.balance.fill_with == "own"
    for flags, message in ((["--plan", "emotion", "--group-regex", "x"], "--plan balance"),
                           (["--plan", "emotion", "--fill-with", "own"], "--fill-with applies"),
                           (["--plan", "emotion", "--interpolate-to", "own"], "--plan interpolate"),
                           (["--plan", "single_au", "--intensity", "0.1", "0.2"], "--intensity applies")):
        with pytest.raises(UsageError, match=message):
            _expand_settings(build_parser().parse_args(["expand", "p", "--out", "o", *flags]))


def test_evaluate_fer_study_errors_exit_2_before_any_work(tmp_path, capsys):
    out = tmp_path / "study"
    for flags, message in ((["--train", "a=originals", "--train", "b=originals+aug", "--compare", "a-b"], "A:B"),
                           (["--train", "a=nope:wrap"], "unknown stage"),
                           (["--train", "a=originals", "--folds", "1"], "folds must be 0")):
        assert main(["evaluate-fer", "--original", str(tmp_path), "--out", str(out), *flags]) == 2
        assert message in capsys.readouterr().err
    assert main(["evaluate-fer", "--original", str(tmp_path), "--out", str(out)]) == 2
    assert "--expanded" in capsys.readouterr().err
    assert not out.exists()


def test_prepare_dry_run_prints_plan_and_writes_nothing(tmp_path, capsys):
    sample = build_sample_dataset(tmp_path / "sample")
    out = tmp_path / "out"
    assert main(["prepare", sample["images"], "--out", str(out), "--aus", sample["openface"], "--unit-size", "4",
                 "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["images_per_split_and_label"]["train"]["Happiness"] == 5
    assert plan["images_per_split_and_label"]["test"]["Neutral"] == 1
    assert plan["work_units"] == 5 and plan["settings"]["unit_size"] == 4  # hash buckets (tasks.units), per split
    assert not out.exists()


def test_verify_exit_codes(tmp_path, capsys):
    row = {"sample_id": "abc", "split": "train", "source_id": "s", "source_sha256": "0" * 64, "stage": "original",
           "edit_kind": "none", "label": 4, "label_kind": "original", "au_source": [0.0] * N_AUS, "width": 8,
           "height": 8, "landmarks": None, "landmark_source": "none", "model_versions": "t", "run_id": "r"}
    commit_unit(tmp_path, split="train", run_name="t", unit_id="u",
                samples=[Sample(encode_png_rgb(np.zeros((8, 8, 3), np.uint8)), row)])
    assert main(["verify", str(tmp_path)]) == 0
    assert "OK: 1 rows" in capsys.readouterr().out
    shard = tmp_path / "shards/train/t-u.tar"
    data = bytearray(shard.read_bytes())
    data[512 + 20] ^= 0xFF  # inside the only member's PNG bytes (its data starts after one header block)
    shard.write_bytes(bytes(data))
    assert main(["verify", str(tmp_path)]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_inspect_au_prints_values_or_reason(tmp_path, capsys):
    aus = np.linspace(0, 5, N_AUS)
    good = write_openface_csv(tmp_path / "good.csv", [{"aus": aus, "confidence": 0.95}], variant="aus_only", sep=",")
    assert main(["inspect-au", str(good)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] and np.allclose(result["values"], aus / 5, atol=1e-6)
    bad = write_openface_csv(tmp_path / "bad.csv", [{"aus": aus, "confidence": 0.2}], variant="aus_only")
    assert main(["inspect-au", str(bad)]) == 1
    result = json.loads(capsys.readouterr().out)
    assert not result["ok"] and result["reason"] == "au_no_trusted_row"


def test_dataset_errors_exit_2_with_a_message(tmp_path, capsys):
    (tmp_path / "EmoLabel").mkdir()
    (tmp_path / "Image" / "aligned").mkdir(parents=True)
    (tmp_path / "EmoLabel" / "list_patition_label.txt").write_text("train_00001.jpg 9\ntrain_00002.jpg 11\n")
    out = tmp_path.parent / f"{tmp_path.name}-o"  # not inside the dataset root, which is refused on its own
    assert main(["prepare", str(tmp_path), "--out", str(out), "--layout", "rafdb", "--dry-run"]) == 2
    assert "compound" in capsys.readouterr().err.lower()


def test_warp_teacher_and_warp_then_ganimation_flags(monkeypatch, capsys):
    import flows.train_ganimation as train_flow
    from flows.cli import _expand_settings

    seen = {}
    monkeypatch.setattr(train_flow, "train_ganimation_flow", lambda settings: seen.setdefault("settings", settings) and {})
    assert main(["train-ganimation", "p", "--out", "o", "--warp-teacher", "10"]) == 0
    assert seen["settings"].train.warp_teacher_weight == 10.0
    seen.clear()
    main(["train-ganimation", "p", "--out", "o"])
    assert seen["settings"].train.warp_teacher_weight == 0.0  # the published size: off unless asked
    assert "the published size: off" in capsys.readouterr().err
    seen.clear()
    main(["train-ganimation", "p", "--out", "o", "--conv-dim", "16", "--repeat-num", "3", "--image-size", "64"])
    assert seen["settings"].train.warp_teacher_weight == 100.0  # a CPU-sized model: taught by default
    assert "smaller than the published size: on" in capsys.readouterr().err
    seen.clear()
    main(["train-ganimation", "p", "--out", "o", "--conv-dim", "16", "--warp-teacher", "0"])
    assert seen["settings"].train.warp_teacher_weight == 0.0  # asked off
    args = build_parser().parse_args(["expand", "p", "--out", "o", "--editor", "warp+ganimation", "--ganimation", "ck"])
    settings = _expand_settings(args)
    assert settings.resolved_editor() == "warp+ganimation" and settings.job("r").ganimation == "ck"
    assert settings.edit_stage() == "ganimation"
