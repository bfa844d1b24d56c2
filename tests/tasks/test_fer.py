"""FER evaluation: batch plans, metrics, learning on drawn shapes, and the originals-vs-expanded report."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from manifests.dataset import ManifestDataset, encode_png_rgb
from manifests.schema import N_AUS, make_sample_id, sha256_bytes, stable_hash
from manifests.writer import Sample, commit_unit
from tasks.fer import (
    CLASS_NAMES,
    REPORT_JSON,
    REPORT_MD,
    FERConfig,
    build_classifier,
    compare_runs,
    describe_data,
    evaluate_classifier,
    evaluation_dataset,
    plan_batches,
    train_classifier,
    train_dataset,
)

IMAGE_PX = 24
# One colour per class, so a tiny network learns the classes in a few dozen steps.
_CLASS_COLOURS = [(230, 40, 40), (40, 200, 40), (40, 40, 230), (230, 230, 40), (230, 40, 230), (40, 220, 220),
                  (250, 250, 250)]


def _seed(*parts) -> int:
    return int(stable_hash(parts, 8), 16)  # not hash(): str hashes change between processes


def _draw(label: int, seed: int) -> np.ndarray:
    """A noisy grey canvas with label's shape (circle, square, triangle, bars, cross, ring) in its colour."""
    rng = np.random.default_rng(seed)
    image = np.clip(rng.normal(90, 25, (IMAGE_PX, IMAGE_PX, 3)), 0, 255).astype(np.uint8)
    c = IMAGE_PX // 2 + rng.integers(-3, 4, 2)
    r = int(rng.integers(5, 8))
    colour = tuple(int(v * rng.uniform(0.7, 1.0)) for v in _CLASS_COLOURS[label - 1])
    x, y = int(c[0]), int(c[1])
    kind = label - 1
    if kind == 0:
        cv2.circle(image, (x, y), r, colour, -1)
    elif kind == 1:
        cv2.rectangle(image, (x - r, y - r), (x + r, y + r), colour, -1)
    elif kind == 2:
        cv2.fillPoly(image, [np.array([(x, y - r), (x - r, y + r), (x + r, y + r)], np.int32)], colour)
    elif kind == 3:
        cv2.rectangle(image, (x - r, y - 2), (x + r, y + 2), colour, -1)
    elif kind == 4:
        cv2.rectangle(image, (x - 2, y - r), (x + 2, y + r), colour, -1)
    elif kind == 5:
        cv2.line(image, (x - r, y - r), (x + r, y + r), colour, 2)
        cv2.line(image, (x - r, y + r), (x + r, y - r), colour, 2)
    else:
        cv2.circle(image, (x, y), r, colour, 2)
    return image


def _sample(split: str, label: int, index: int, stage: str = "original", source: np.ndarray | None = None) -> Sample:
    """A manifest sample as the pipeline writes one (all fields but the shard location)."""
    rgb = _draw(label, seed=_seed(split, label, index, stage)) if source is None else source
    png = encode_png_rgb(rgb)
    source_png = png if source is None else encode_png_rgb(source)
    generated = stage != "original"
    row = {
        "sample_id": make_sample_id(sha256_bytes(png), stage, seed=index), "split": split,
        "source_id": f"{split}-{label}-{index}", "source_sha256": sha256_bytes(source_png), "stage": stage,
        "edit_kind": "emotion" if generated else "none", "label": label,
        "label_kind": "target" if generated else "original", "au_source": [0.1] * N_AUS,
        "au_target": [0.5] * N_AUS if generated else None, "landmarks": None, "landmark_source": "none", "seed": index,
        "width": IMAGE_PX, "height": IMAGE_PX, "model_versions": "test", "run_id": "test-run",
    }
    return Sample(png=png, row=row)


def _write_original(root, n_train_per_class: int, n_test_per_class: int) -> None:
    for split, n in (("train", n_train_per_class), ("test", n_test_per_class)):
        samples = [_sample(split, label, i) for label in range(1, 8) for i in range(n)]
        commit_unit(root, split=split, run_name="prep", unit_id=f"{split}-00000", samples=samples)


def _write_expanded(root, n_train_per_class: int, n_extra_per_class: int) -> None:
    """The originals carried over, plus 'ganimation' rows (fresh draws) and 'singan' rows (noised copies)."""
    originals = [_sample("train", label, i) for label in range(1, 8) for i in range(n_train_per_class)]
    edits = [_sample("train", label, 1000 + i, stage="ganimation") for label in range(1, 8) for i in range(n_extra_per_class)]
    rng = np.random.default_rng(0)
    regenerations = []
    for s in originals[:: max(1, n_train_per_class // n_extra_per_class)]:
        rgb = cv2.imdecode(np.frombuffer(s.png, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
        noisy = np.clip(rgb + rng.normal(0, 8, rgb.shape), 0, 255).astype(np.uint8)
        regen = _sample("train", s.row["label"], s.row["seed"], stage="singan", source=rgb)
        regen.png = encode_png_rgb(noisy)
        regen.row["sample_id"] = make_sample_id(s.row["source_sha256"], "singan", seed=s.row["seed"])
        regen.row.update(edit_kind="none", label_kind="inherited", au_target=None)
        regenerations.append(regen)
    commit_unit(root, split="train", run_name="expand", unit_id="train-00000", samples=originals + edits + regenerations)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The shared 2-core test machine is oversubscribed: there two intra-op threads make these tiny
    # steps ~20x slower than one. Results do not depend on it; only the wall time does.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("fer")
    _write_original(base / "prepared", n_train_per_class=12, n_test_per_class=6)
    _write_expanded(base / "expanded", n_train_per_class=12, n_extra_per_class=6)
    return base / "prepared", base / "expanded"


FAST = FERConfig(arch="small_cnn", image_size_px=IMAGE_PX, steps=60, batch_size=16, lr=3e-3, seed=0, device="cpu")


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="arch"):
        FERConfig(arch="vgg")
    with pytest.raises(ValueError, match="steps"):
        FERConfig(steps=0)
    with pytest.raises(ValueError, match="image_size_px"):
        FERConfig(image_size_px=8)


def test_plan_batches_is_seeded_and_covers_epochs():
    labels = [1] * 6 + [2] * 2 + [3] * 2  # 10 samples
    plan = plan_batches(labels, steps=5, batch_size=4, seed=0, balanced=False)
    assert plan == plan_batches(labels, steps=5, batch_size=4, seed=0, balanced=False)
    assert plan != plan_batches(labels, steps=5, batch_size=4, seed=1, balanced=False)
    flat = [i for batch in plan for i in batch]
    assert len(plan) == 5 and all(len(b) == 4 for b in plan)
    # Shuffled epochs: the first 10 draws are one permutation, the next 10 another.
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    balanced = [labels[i] for batch in plan_batches(labels, 300, 10, seed=0, balanced=True) for i in batch]
    shares = np.bincount(balanced, minlength=4)[1:] / len(balanced)
    assert np.allclose(shares, 1 / 3, atol=0.03)  # unbalanced the share of class 1 would be 0.6


def test_evaluate_builds_confusion_with_true_rows_and_predicted_columns(roots):
    prepared, _ = roots

    class AlwaysHappy(nn.Module):  # predicts class 3 (label 4, Happiness) for every image
        def forward(self, images):
            logits = torch.zeros(images.shape[0], 7)
            logits[:, 3] = 1.0
            return logits

    test = evaluation_dataset(prepared)
    metrics = evaluate_classifier(AlwaysHappy(), test, FAST)
    confusion = np.array(metrics["confusion"])
    assert confusion.sum() == len(test) == metrics["n_test"] == 42
    assert (confusion[:, 3] == 6).all() and confusion.sum(axis=0)[3] == 42
    assert metrics["per_class_recall"] == [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    assert metrics["accuracy"] == 6 / 42 and metrics["mean_recall"] == pytest.approx(1 / 7)
    assert metrics["classes"] == list(CLASS_NAMES)


def test_recall_is_none_for_a_class_without_test_images(roots):
    prepared, _ = roots
    no_anger = ManifestDataset(prepared, split="test", label=[1, 2, 3, 4, 5, 7])
    metrics = evaluate_classifier(build_classifier(FAST).eval(), no_anger, FAST)
    assert metrics["per_class_recall"][5] is None and metrics["support"][5] == 0
    present = [r for r in metrics["per_class_recall"] if r is not None]
    assert metrics["mean_recall"] == pytest.approx(sum(present) / 6)


def test_small_cnn_learns_the_drawn_classes(roots):
    prepared, _ = roots
    train, test = train_dataset(prepared, "originals"), evaluation_dataset(prepared)
    one_step = FERConfig(**{**FAST.__dict__, "steps": 1})
    baseline = evaluate_classifier(train_classifier(train, one_step), test, one_step)["accuracy"]
    accuracy = evaluate_classifier(train_classifier(train, FAST), test, FAST)["accuracy"]
    assert accuracy > 0.9 and accuracy > baseline + 0.2  # chance is 1/7


def test_training_is_deterministic_and_leaves_global_rng_alone(roots):
    prepared, _ = roots
    config = FERConfig(arch="small_cnn", image_size_px=16, steps=4, batch_size=8, seed=3, device="cpu")
    rng_before = torch.get_rng_state()
    losses_a, losses_b = [], []
    a = train_classifier(train_dataset(prepared, "originals"), config, losses=losses_a)
    b = train_classifier(train_dataset(prepared, "originals"), config, losses=losses_b)
    assert torch.equal(rng_before, torch.get_rng_state())
    assert losses_a == losses_b and len(losses_a) == 4
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name
    other = train_classifier(train_dataset(prepared, "originals"), FERConfig(**{**config.__dict__, "seed": 4}))
    assert not torch.equal(next(iter(other.parameters())), next(iter(a.parameters())))


@pytest.mark.parametrize("image_size_px", [32, 96])
def test_resnet18_adapts_to_the_input_size(image_size_px):
    config = FERConfig(arch="resnet18", image_size_px=image_size_px, device="cpu")
    model = build_classifier(config).eval()
    assert model.conv1.stride == ((1, 1) if image_size_px <= 64 else (2, 2))
    with torch.no_grad():
        assert model(torch.zeros(2, 3, image_size_px, image_size_px)).shape == (2, 7)


def test_compare_runs_reports_both_runs_side_by_side(roots, tmp_path):
    prepared, expanded = roots
    config = FERConfig(**{**FAST.__dict__, "steps": 30})
    result = compare_runs(prepared, expanded, config, tmp_path / "report")
    runs = result["runs"]
    assert runs["originals"]["n_train"] == 84
    assert runs["expanded"]["n_train"] == 84 + 42 + result["data"]["expanded"]["by_stage"]["singan"]
    assert result["data"]["expanded"]["by_stage"]["ganimation"] == 42
    assert result["data"]["expanded"]["by_stage"]["singan"] > 0
    # The same budget in steps: the larger set is seen for fewer epochs.
    assert runs["expanded"]["epochs"] < runs["originals"]["epochs"]
    assert runs["originals"]["epochs"] == pytest.approx(30 * 16 / 84)
    for run in runs.values():
        assert np.array(run["confusion"]).sum() == 42 and 0 <= run["accuracy"] <= 1

    saved = json.loads((tmp_path / "report" / REPORT_JSON).read_text())
    assert saved["runs"] == json.loads(json.dumps(runs))
    assert saved["config"]["steps"] == 30 and saved["config"]["device"] == "cpu"
    assert json.loads((tmp_path / "report" / "fer_config.json").read_text())["config"]["arch"] == "small_cnn"
    markdown = (tmp_path / "report" / REPORT_MD).read_text()
    assert "| test accuracy | " in markdown and "originals only | expanded" in markdown
    assert markdown.count("## Confusion matrix") == 2
    assert f"{runs['expanded']['accuracy']:.3f}" in markdown


def test_describe_data_refuses_test_leaks_and_empty_sets(roots, tmp_path):
    prepared, _ = roots
    leaky = tmp_path / "leaky"
    test_image = _draw(2, seed=_seed("test", 2, 0, "original"))  # the first Fear test image
    edit = _sample("train", 2, 0, stage="ganimation", source=test_image)
    edit.png = encode_png_rgb(_draw(2, seed=99))
    commit_unit(leaky, split="train", run_name="expand", unit_id="u0", samples=[edit])
    with pytest.raises(ValueError, match="1 test images seed generated training samples"):
        describe_data(prepared, leaky)
    with pytest.raises(ValueError, match="expanded set is empty"):
        describe_data(prepared, tmp_path / "nothing-here")


@pytest.mark.slow
def test_resnet18_learns_and_expansion_run_completes(roots, tmp_path):
    prepared, expanded = roots
    config = FERConfig(arch="resnet18", image_size_px=IMAGE_PX, steps=80, batch_size=32, lr=1e-3, device="cpu")
    result = compare_runs(prepared, expanded, config, tmp_path)
    assert result["runs"]["originals"]["accuracy"] > 0.6
    assert result["runs"]["expanded"]["accuracy"] > 0.6
