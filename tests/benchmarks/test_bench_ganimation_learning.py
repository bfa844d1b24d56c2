"""The published-size GANimation benchmark configuration: its numbers, and its code path run a few steps on CPU."""
from __future__ import annotations

import dataclasses

import pytest

from benchmarks.bench_ganimation_learning import PUBLISHED, default_device, published_config
from benchmarks.ganimation_bench import run_benchmark

pytestmark = pytest.mark.usefixtures("one_thread")


def test_published_configuration_is_the_papers_size_without_the_teacher():
    model, train = PUBLISHED.train.model, PUBLISHED.train
    assert (model.image_size_px, model.conv_dim, model.repeat_num) == (128, 64, 6)
    assert (train.batch_size, train.critic_steps_per_generator_step) == (25, 5)
    assert model.upsample == "transposed" and not model.au_film and train.lr_generator == train.lr_critic == 1e-4
    assert train.warp_teacher_weight == 0.0  # off unless asked (--warp-teacher)
    assert PUBLISHED.oracle.render.image_size_px == 128
    assert default_device() in ("cpu", "cuda")


def test_published_code_path_runs_a_few_steps_on_cpu_at_a_tiny_size(tmp_path):
    config = published_config(image_size_px=32, conv_dim=8, repeat_num=1, critic_conv_dim=8, critic_layers=2,
                              batch_size=4, critic_steps=5, epochs=1, n_identities=8, per_identity=3,
                              oracle_n_train=48, oracle_epochs=1, n_eval=4, eval_every_epochs=1,
                              warp_teacher_weight=10.0)
    config = dataclasses.replace(config, oracle=dataclasses.replace(config.oracle, n_heldout=16, n_edit_pairs=8,
                                                                    batch_size=16))
    report = run_benchmark(config, tmp_path, device="cpu")
    final = report["final"]
    # 5 critic steps per generator step: one epoch of >= 5 batches gives at least one generator step.
    assert final["generator_steps"] >= 1 and final["epoch"] == 1
    assert 0.0 <= final["outside_diff"] <= 1.0 and final["identity_error"] > 0


def test_fit_minutes_measures_an_epoch_and_chooses_the_epochs_that_fit(tmp_path):
    """--fit-minutes: two timed probe trainings of the real model on the real faces give seconds per batch and
    per epoch; the epoch count is the budget over that (at least one), scored about eight times, recorded."""
    import json

    from benchmarks.bench_ganimation_learning import fit_epochs

    config = published_config(image_size_px=32, conv_dim=8, repeat_num=1, critic_conv_dim=8, critic_layers=2,
                              batch_size=4, critic_steps=2, epochs=1, n_identities=20, per_identity=2)
    fitted = fit_epochs(config, tmp_path, minutes=0.5, device="cpu")
    cost = json.loads((tmp_path / "fit_epochs.json").read_text())
    assert cost["seconds_per_batch"] > 0 and cost["batches_per_epoch"] == 8  # 16 training identities x 2 faces / batch 4
    assert cost["seconds_per_epoch"] >= cost["batches_per_epoch"] * cost["seconds_per_batch"]
    assert fitted.epochs == max(1, int(30 // cost["seconds_per_epoch"])) == cost["epochs"]
    assert fitted.eval_every_epochs == max(1, -(-fitted.epochs // 8))
    assert (tmp_path / "data" / "prepared").is_dir()  # built once, reused by run_benchmark
    assert not any(p.name.startswith("ganimation") for p in tmp_path.iterdir())  # the probes left nothing behind


@pytest.mark.parametrize("flags", [["--no-ganimation"], ["--no-ganimation", "--editors", "--sheet", "s.png"],
                                   ["--no-ganimation", "--editors", "--fit-minutes", "1"]])
def test_no_ganimation_needs_editors_and_nothing_that_needs_a_checkpoint(flags, monkeypatch, capsys):
    import sys

    from benchmarks.bench_ganimation_learning import main

    monkeypatch.setattr(sys, "argv", ["bench_ganimation_learning.py", "--config", "SMOKE", *flags])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2 and "--no-ganimation needs --editors" in capsys.readouterr().err
