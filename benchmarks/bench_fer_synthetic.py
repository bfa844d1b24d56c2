"""Does the expansion help FER? A synthetic emotion set made imbalanced like RAF-DB, balanced by GANimation edits.

    .venv/bin/python benchmarks/bench_fer_synthetic.py --ganimation CHECKPOINT_DIR --out runs/fer_synthetic
    .venv/bin/python benchmarks/bench_fer_synthetic.py --ganimation CKPT --seeds 0 1 2 --steps 500   # 3 seeds, paired

Steps, all through the product's own flows (embedded Prefect):
1. Render a synthetic emotion set (tasks.synthetic, 64 px, jittered EMFACS prototypes, exact labels),
   then thin the train split's minority classes (Fear, Disgust, Anger kept at --minority-keep) the way
   RAF-DB is thin in them; the test split stays as rendered.
2. `prepare` it (alignment "none": the renders are aligned; AUs from the OpenFace CSVs).
3. `expand` with the balance plan (emotion edits assigned to sources of other classes until the train
   labels are uniform), M = 0 (GANimation edits only), the GANimation checkpoint given.
4. `evaluate-fer`: the same classifier, seed and step budget on originals vs the expanded set; test
   accuracy, mean per-class recall and confusion matrices (OUT/fer/fer_report.md).

The GANimation must work at the render size (e.g. the synthetic AU benchmark's checkpoint:
benchmarks/bench_ganimation_learning.py --out DIR writes DIR/ganimation/checkpoints/epoch_NNNN).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows._env import configure_environment  # noqa: E402

configure_environment()

from flows.evaluate_fer import evaluate_fer, evaluate_fer_study  # noqa: E402
from flows.expand import ExpandSettings, PlanSettings, expand  # noqa: E402
from flows.prepare import PrepareSettings, prepare  # noqa: E402
from tasks.align import AlignConfig  # noqa: E402
from tasks.fer import FERConfig  # noqa: E402
from tasks.fer_study import StudyConfig  # noqa: E402
from tasks.ingest import IngestConfig  # noqa: E402
from tasks.prepare import AUConfig  # noqa: E402
from tasks.synthetic import RenderConfig, write_synthetic_dataset  # noqa: E402
from tasks.targets import BalanceConfig  # noqa: E402

MINORITY = ("Fear", "Disgust", "Anger")  # RAF-DB's thinnest basic classes (train: 281, 717, 705 of 12271)


def thin_minorities(images_root: Path, keep: float, seed: int) -> dict[str, int]:
    """Delete all but a seeded `keep` fraction of each minority class's train images; return train counts."""
    rng = np.random.default_rng(seed)
    counts = {}
    for class_dir in sorted((images_root / "train").iterdir()):
        files = sorted(class_dir.glob("*.png"))
        if class_dir.name in MINORITY:
            n_keep = max(1, round(keep * len(files)))
            drop = set(rng.choice(len(files), len(files) - n_keep, replace=False).tolist())
            for i in sorted(drop):
                files[i].unlink()
            files = [f for i, f in enumerate(files) if i not in drop]
        counts[class_dir.name] = len(files)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ganimation", help="GANimation checkpoint dir (64 px); needed unless --editor warp")
    parser.add_argument("--editor", default="ganimation", choices=["ganimation", "warp", "warp+ganimation"])
    parser.add_argument("--seeds", type=int, nargs="+", help="a study over these FER seeds (e.g. 0 1 2) instead of "
                                                              "one originals-vs-expanded run with --seed")
    parser.add_argument("--out", default="runs/fer_synthetic")
    parser.add_argument("--identities", type=int, default=400, help="synthetic identities (25 %% held out for test)")
    parser.add_argument("--per-identity", type=int, default=4)
    parser.add_argument("--minority-keep", type=float, default=0.15)
    parser.add_argument("--cap-per-source", type=int, default=2, help="balance edits per source at most")
    parser.add_argument("--steps", type=int, default=1500, help="FER optimisation steps per run")
    parser.add_argument("--arch", default="small_cnn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    out = Path(args.out).resolve()

    # 1. Synthetic emotion faces, minority classes thinned in train.
    synthetic = out / "synthetic"
    if not (synthetic / "ground_truth.csv").is_file():
        write_synthetic_dataset(synthetic, args.identities, args.per_identity, seed=args.seed,
                                config=RenderConfig(64), test_fraction=0.25, au_mode="emotion")
        counts = thin_minorities(synthetic / "images", args.minority_keep, args.seed)
        (out / "train_counts.json").write_text(json.dumps(counts, indent=2))
    print("train counts after thinning:", json.loads((out / "train_counts.json").read_text()), flush=True)

    # 2. Prepare.
    prepare(PrepareSettings(dataset=str(synthetic / "images"), out=str(out / "prepared"), run_name="fer-synthetic",
                            ingest=IngestConfig(layout="folders"), align=AlignConfig(mode="none", image_size_px=64),
                            aus=AUConfig(path=str(synthetic / "openface")), unit_size=512, device=args.device))

    # 3. Balance with GANimation edits only.
    if args.editor != "warp" and not args.ganimation:
        parser.error(f"--editor {args.editor} needs --ganimation")
    expanded_root = out / ("expanded" if args.editor == "ganimation" else f"expanded-{args.editor.replace('+', '-')}")
    expanded = expand(ExpandSettings(
        prepared=str(out / "prepared"), out=str(expanded_root), run_name="fer-balance", editor=args.editor,
        ganimation=str(Path(args.ganimation).resolve()) if args.ganimation else None,
        plan=PlanSettings(kind="balance", per_source=None, balance=BalanceConfig(cap_per_source=args.cap_per_source)),
        regenerations=0, unit_size=256, seed=args.seed, device=args.device))
    print(f"expanded: {expanded['report']}", flush=True)

    # 4. FER on originals vs expanded: one seed, or a study over several (same test split, paired by seed).
    fer = FERConfig(arch=args.arch, steps=args.steps, seed=args.seed, device=args.device)
    if args.seeds:
        stage = "warp" if args.editor == "warp" else "ganimation"
        study = evaluate_fer_study(str(out / "prepared"), ["originals=originals", f"expanded=originals+{expanded_root}:{stage}"],
                                   str(out / f"fer-study-{args.editor.replace('+', '-')}"),
                                   StudyConfig(folds=0, seeds=tuple(args.seeds), fer=fer))
        print(Path(study["report"]["markdown"]).read_text())
        return
    result = evaluate_fer(str(out / "prepared"), str(expanded_root), str(out / "fer"), fer)
    for run, r in result["runs"].items():
        recalls = ", ".join(f"{name} {recall:.2f}" for name, recall in zip(r["classes"], r["per_class_recall"])
                            if recall is not None)
        print(f"{run}: accuracy {r['accuracy']:.3f}, mean recall {r['mean_recall']:.3f} ({recalls})")
    print(f"report: {result['report']}")


if __name__ == "__main__":
    main()
