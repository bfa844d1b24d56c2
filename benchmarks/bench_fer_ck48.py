"""Does the expansion help a FER model on real faces? A subject-split study on CK+48, against standard augmentation.

    .venv/bin/python -m benchmarks.bench_fer_ck48          # 30 min to 1 h on 2 cores; resumes

Every step is the project's own CLI, run as a user would run it (the commands are printed and recorded):
1. prepare ../shared/data/ck48 (class folders; contempt dropped: not one of the 7 emotions; `happy` mapped to
   Happiness): --align none (the 48 px crops are already face crops at one scale: MTCNN needs margin around a
   face and would re-crop them differently), --image-size 96 (the warp moves points by fractions of a pixel at
   48 px; the classifier reads 48 px again), landmarks from the dlib detector, no AU files (--missing-aus keep).
2. expand with the landmark warp and the balance plan: Fear, Sadness, Anger, Disgust and Happiness are filled up
   to the size of Surprise; a person only gets emotions they do not show (--group-regex on the subject), at
   intensity 0.6-0.9 (CK+ frames are peak expressions). No AU files: the warp assumes each source shows the
   EMFACS prototype of its label (--source-aus label), so a surprised face edited to sadness loses its open jaw.
3. expand again on a seeded subset of 40 sources with 2 SinGAN regenerations per edit (one SinGAN per edit,
   the demo's reduced fast preset): SinGAN costs ~20 CPU s per edit, too much for all of them here.
4. expand once more filling each class with its own faces instead (--fill-with own): the same expression weaker
   or stronger, the label kept, so the class counts without the other-emotion edits' label noise.
5. evaluate-fer: 5 folds by subject x 3 seeds x 6 training sets, small CNN (width 16) at 48 px, 300 steps of 64,
   no flips except in the 'aug' sets; paired comparisons.
6. the control: augmentation with and without the own-face edits, both with class-balanced sampling (--balanced):
   do the edits add anything that resampling the originals does not?
Writes benchmarks/results/fer_ck48.{json,md}, fer_ck48_balanced.{json,md} and fer_ck48_sheet.png (sources, edits,
regenerations).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_warp_real import shared_data_dir  # noqa: E402

GROUP_REGEX = "(S[0-9]+)_"   # CK+ file names S<subject>_<sequence>_<frame>; the folder comes first in source_id
SINGAN_SOURCES = 40

PREPARE = ["prepare", "{ck48}", "--out", "{runs}/prep96", "--layout", "folders", "--class-map", "happy=4",
           "--unknown-class", "drop", "--align", "none", "--image-size", "96", "--landmarks", "detector",
           "--missing-aus", "keep"]
EDITS = ["expand", "{runs}/prep96", "--out", "{runs}/edits", "--plan", "balance", "--group-regex", GROUP_REGEX,
         "--source-aus", "label", "--intensity", "0.6", "0.9", "-M", "0"]
SINGAN = ["expand", "{runs}/prep96", "--out", "{runs}/singan", "--plan", "balance", "--group-regex", GROUP_REGEX,
          "--source-aus", "label", "--intensity", "0.6", "0.9", "-M", "2", "--limit-sources", str(SINGAN_SOURCES),
          "--unit-size", "8", "--singan-preset", "fast_skip2", "--singan-set", "iters_per_scale=40",
          "--singan-set", "base_channels=16", "--singan-start", "N-3", "--singan-noise-gain", "2",
          "--singan-train-on", "edit", "--test-split", "omit"]
OWN_EDITS = ["expand", "{runs}/prep96", "--out", "{runs}/edits_own", "--plan", "balance", "--fill-with", "own",
             "--source-aus", "label", "--intensity", "0.3", "0.9", "-M", "0"]
SETS = ["a=originals", "b=originals+aug", "c=originals+{runs}/edits:warp", "d=originals+{runs}/edits:warp+aug",
        "e=originals+{runs}/edits:warp+{runs}/singan:singan", "j=originals+{runs}/edits_own:warp+aug"]
COMPARE = ["a:b", "a:c", "b:d", "c:e", "a:d", "b:j"]   # b:d and b:j are the practitioner's questions
BALANCED_COMPARE = "b:j"   # the class-balanced control: these two of SETS, both with --balanced
BALANCED_SETS = [spec for spec in SETS if spec.split("=")[0] in BALANCED_COMPARE.split(":")]


def study_command(runs: str, folds: int, seeds: list[int], steps: int, workers: int, balanced: bool = False) -> list[str]:
    """The study (balanced=False: every set, OUT runs/study) or its class-balanced control (runs/study_balanced)."""
    cmd = ["evaluate-fer", "--original", f"{runs}/prep96", "--out", f"{runs}/study_balanced" if balanced else f"{runs}/study",
           "--folds", str(folds), "--group-regex", GROUP_REGEX, "--seeds", *map(str, seeds), "--arch", "small_cnn",
           "--width", "16", "--image-size", "48", "--steps", str(steps), "--batch-size", "64", "--no-hflip",
           "--workers", str(workers)] + (["--balanced"] if balanced else [])
    for spec in BALANCED_SETS if balanced else SETS:
        cmd += ["--train", spec.format(runs=runs)]
    for pair in [BALANCED_COMPARE] if balanced else COMPARE:
        cmd += ["--compare", pair]
    return cmd


def run_cli(args: list[str], log: list[dict]) -> None:
    cmd = [sys.executable, "-m", "flows.cli", *args]
    print("$ singanimation " + shlex.join(args), flush=True)
    start = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    log.append({"command": "singanimation " + shlex.join(args), "wall_s": round(time.time() - start, 1)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default="runs/ck48", help="working folder (prepared, expanded, study)")
    parser.add_argument("--results", default="benchmarks/results", help="where the summary files go")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    data = Path(os.environ["SINGANIMATION_SHARED_DATA"]) if os.environ.get("SINGANIMATION_SHARED_DATA") else shared_data_dir()
    ck48 = (data or Path("../shared/data")) / "ck48"
    if not ck48.is_dir():
        print(f"CK+48 not found at {ck48} (set SINGANIMATION_SHARED_DATA); nothing to do", file=sys.stderr)
        return 2
    log: list[dict] = []
    fill = {"ck48": str(ck48), "runs": args.runs}
    for template in (PREPARE, EDITS, SINGAN, OWN_EDITS):
        run_cli([a.format(**fill) for a in template], log)
    run_cli(study_command(args.runs, args.folds, args.seeds, args.steps, args.workers), log)
    run_cli(study_command(args.runs, args.folds, args.seeds, args.steps, args.workers, balanced=True), log)

    results = ROOT / args.results
    results.mkdir(parents=True, exist_ok=True)
    study = json.loads((ROOT / args.runs / "study" / "fer_study.json").read_text())
    study["commands"] = log
    (results / "fer_ck48.json").write_text(json.dumps(study, indent=1))
    shutil.copyfile(ROOT / args.runs / "study" / "fer_study.md", results / "fer_ck48.md")
    shutil.copyfile(ROOT / args.runs / "study_balanced" / "fer_study.json", results / "fer_ck48_balanced.json")
    shutil.copyfile(ROOT / args.runs / "study_balanced" / "fer_study.md", results / "fer_ck48_balanced.md")
    shutil.copyfile(ROOT / args.runs / "singan" / "contact_sheet.png", results / "fer_ck48_sheet.png")
    print(f"wrote {results / 'fer_ck48.md'}, {results / 'fer_ck48.json'}, {results / 'fer_ck48_balanced.md'}, "
          f"{results / 'fer_ck48_sheet.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
