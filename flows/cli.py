"""`singanimation`: the command line over the flows (prepare, verify, inspect-au, fit-au-shape, demo)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import traceback
from pathlib import Path

import flows  # noqa: F401  (sets safe Prefect defaults before Prefect is imported)

# Exit codes: 0 done; 1 the run failed (damaged data, a write error, a failed verify, a bug); 2 the command
# line or its inputs are wrong (nothing was written: fix the option and re-run).
EXIT_FAILED, EXIT_USAGE = 1, 2


class UsageError(ValueError):
    """A bad option value or input path found before any work; the CLI prints it on one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: what is wrong and where to look, no usage dump."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _float_in(lo: float, hi: float):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in [{lo:g}, {hi:g}], got {text!r}") from None
        if not lo <= value <= hi:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be in [{lo:g}, {hi:g}], got {text}")
        return value
    parse.__name__ = f"number in [{lo:g}, {hi:g}]"
    return parse


def _singan_start(text: str) -> str:
    from tasks.expand import parse_start_offset

    try:
        parse_start_offset(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.replace(" ", "")


def _class_map_item(text: str) -> str:
    from manifests.schema import EMOTIONS

    name, sep, value = text.partition("=")
    if not sep or not name or not value.isdigit():
        raise argparse.ArgumentTypeError(f"expects NAME=ID (e.g. contempt=3), got {text!r}")
    if int(value) not in EMOTIONS:
        ids = ", ".join(f"{i} {n}" for i, n in EMOTIONS.items())
        raise argparse.ArgumentTypeError(f"{text!r}: {value} is not an emotion id ({ids})")
    return text


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Checks that need two options at once."""
    attention = getattr(args, "attention_range", None)
    if attention and attention[0] > attention[1]:
        parser.exit(EXIT_USAGE, f"{parser.prog} {args.command}: error: --attention-range LO HI needs LO <= HI, got "
                                f"{attention[0]:g} {attention[1]:g}\n")


def _prepare_settings(args: argparse.Namespace):
    from flows.prepare import PrepareSettings
    from tasks.align import AlignConfig
    from tasks.ingest import IngestConfig
    from tasks.openface import OpenFaceConfig
    from tasks.prepare import AUConfig

    openface = OpenFaceConfig(**({"min_confidence": args.min_au_confidence} if args.min_au_confidence is not None else {}))
    return PrepareSettings(
        dataset=args.dataset,
        out=args.out,
        run_name=args.run_name,
        ingest=IngestConfig(layout=args.layout, image_dir=args.rafdb_images, csv_path=args.csv,
                            default_split=args.default_split,
                            class_map=tuple(_parse_class_map(args.class_map)), unknown_class=args.unknown_class),
        align=AlignConfig(mode=args.align, image_size_px=args.image_size, face_policy=args.face_policy,
                          min_face_prob=args.min_face_prob, batch_size=args.batch_size),
        aus=AUConfig(path=args.aus, missing=args.missing_aus, openface=openface),
        landmarks=args.landmarks,
        unit_size=args.unit_size,
        device=args.device,
    )


def _parse_class_map(items: list[str]) -> list[tuple[str, int]]:
    pairs = []
    for item in items:
        name, _, value = _class_map_item(item).partition("=")
        pairs.append((name, int(value)))
    return pairs


def _settings(build, args: argparse.Namespace):
    """Build a flow's settings from the flags; a value the settings refuse is a UsageError (one line, exit 2)."""
    from pydantic import ValidationError

    try:
        return build(args)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors())
        raise UsageError(f"invalid option value: {problems}") from exc
    except (ValueError, TypeError) as exc:
        raise UsageError(f"invalid option value: {exc}") from exc


def cmd_prepare(args: argparse.Namespace) -> int:
    from flows.prepare import check_prepare_inputs

    settings = _settings(_prepare_settings, args)
    check_prepare_inputs(settings)
    if args.dry_run:
        return _prepare_dry_run(settings)
    from flows.prepare import prepare

    summary = prepare(settings)
    print(json.dumps(summary, indent=2))
    return 0


def _prepare_dry_run(settings) -> int:
    from tasks.ingest import ingest_dataset
    from tasks.prepare import plan_units

    ingested = ingest_dataset(settings.dataset, settings.ingest)
    units = plan_units(ingested.records, settings.unit_size, settings.config_hash())
    from manifests.schema import EMOTIONS

    counts = {split: {EMOTIONS[label]: n for label, n in per_label.items()} for split, per_label in ingested.counts().items()}
    plan = {"settings": settings.model_dump(mode="json"), "config_hash": settings.config_hash(),
            "images_per_split_and_label": counts, "ingest_rejects": ingested.reject_counts(),
            "work_units": len(units), "warnings": ingested.warnings}
    print(json.dumps(plan, indent=2))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from manifests.reader import verify

    report = verify(args.out)
    print(report.summary())
    return 0 if report.ok else 1


def cmd_inspect_au(args: argparse.Namespace) -> int:
    from tasks.openface import OpenFaceConfig, inspect_au

    config = OpenFaceConfig(**({"min_confidence": args.min_au_confidence} if args.min_au_confidence is not None else {}))
    result = inspect_au(args.file, config)
    print(json.dumps(result, indent=2))
    return 0 if result.get("ok") else 1


def _expand_settings(args: argparse.Namespace):
    from flows.expand import ExpandSettings, PlanSettings
    from tasks.expand import QualityGate

    plan = {"kind": args.plan, "per_source": args.per_source}
    if args.emotions:
        plan["emotion"] = {"emotions": tuple(args.emotions)}
    if args.intensity is not None:
        if args.plan not in ("emotion", "balance", "interpolate"):
            raise UsageError("--intensity applies to the emotion, balance and interpolate plans")
        plan.setdefault(args.plan, {})["intensity_range"] = tuple(args.intensity)
    if args.interpolate_to is not None:
        if args.plan != "interpolate":
            raise UsageError("--interpolate-to applies to --plan interpolate")
        plan.setdefault("interpolate", {})["target"] = args.interpolate_to
    if args.group_regex is not None:
        if args.plan != "balance":
            raise UsageError("--group-regex applies to --plan balance")
        plan.setdefault("balance", {})["group_regex"] = args.group_regex
    if args.fill_with is not None:
        if args.plan != "balance":
            raise UsageError("--fill-with applies to --plan balance")
        plan.setdefault("balance", {})["fill_with"] = args.fill_with
    gate = QualityGate(min_ssim_to_source=args.min_ssim, max_au_fidelity=args.max_au_fidelity,
                       attention_range=tuple(args.attention_range) if args.attention_range else None)
    return ExpandSettings(
        prepared=args.prepared, out=args.out, run_name=args.run_name, ganimation=args.ganimation,
        editor=args.editor, au_shape=args.au_shape, source_aus=args.source_aus,
        plan=PlanSettings(**plan), regenerations=args.regenerations, singan_preset=args.singan_preset,
        singan_start=args.singan_start, singan_noise_gain=args.singan_noise_gain,
        singan_train_on=args.singan_train_on, singan_residual=args.singan_sampling == "residual",
        bank_size=args.bank_size, unit_size=args.unit_size, seed=args.seed,
        singan_prior_faces=args.singan_prior_faces, singan_prior_iters=args.singan_prior_iters,
        singan_prior_batch=args.singan_prior_batch, singan_finetune_iters=args.singan_finetune_iters,
        limit_sources=args.limit_sources, singan_overrides=dict(_parse_overrides(args.singan_set)),
        test_split=args.test_split, gate=gate, sifid_weights=args.sifid_weights, device=args.device,
        fanout=args.fanout)


def _parse_overrides(items: list[str]) -> list[tuple[str, float | int | bool]]:
    pairs = []
    for item in items:
        name, sep, text = item.partition("=")
        if not sep:
            raise UsageError(f"--singan-set expects FIELD=VALUE (e.g. iters_per_scale=200), got {item!r}")
        try:
            value = json.loads(text.lower()) if text.lower() in ("true", "false") else (float(text) if "." in text else int(text))
        except ValueError:
            raise UsageError(f"--singan-set {item}: {text!r} is not a number, true or false") from None
        pairs.append((name, value))
    return pairs


def cmd_expand(args: argparse.Namespace) -> int:
    from flows.expand import check_expand_inputs

    settings = _settings(_expand_settings, args)
    check_expand_inputs(settings)
    if args.dry_run:
        from flows.expand import describe_plan

        print(json.dumps({"settings": settings.model_dump(mode="json"), **describe_plan(settings)}, indent=2))
        return 0
    from flows.expand import expand

    print(json.dumps(expand(settings), indent=2))
    return 0


def cmd_train_ganimation(args: argparse.Namespace) -> int:
    from flows.train_ganimation import TrainGANimationSettings, train_ganimation_flow
    from models.ganimation import GANimationConfig
    from tasks.train_ganimation import TrainGANimationConfig, default_warp_teacher_weight

    model = GANimationConfig(image_size_px=args.image_size, conv_dim=args.conv_dim, repeat_num=args.repeat_num,
                             upsample=args.upsample)
    teacher = args.warp_teacher
    if teacher is None:
        teacher = default_warp_teacher_weight(model)
        print(f"--warp-teacher not given: {teacher:g} for this model size "
              f"({'the published size: off' if teacher == 0 else 'smaller than the published size: on'})",
              file=sys.stderr)
    train = TrainGANimationConfig(model=model, batch_size=args.batch_size, warp_teacher_weight=teacher,
                                  warp_teacher_au_shape=args.warp_teacher_au_shape)
    settings = TrainGANimationSettings(prepared=args.prepared, out=args.out, epochs=args.epochs, seed=args.seed,
                                       train=train, device=args.device)
    print(json.dumps(train_ganimation_flow(settings), indent=2))
    return 0


def cmd_import_checkpoint(args: argparse.Namespace) -> int:
    from tasks.ganimation import import_checkpoint

    if os.path.exists(args.out):
        raise UsageError(f"--out {args.out} exists; checkpoints are never overwritten: choose a new folder")
    for option, path in (("--generator", args.generator), ("--critic", args.critic)):
        if path is not None and not os.path.isfile(path):
            raise UsageError(f"{option} {path} is not a file: check the path")
    out = import_checkpoint(args.format, args.generator, args.critic, args.out)  # errors: one line, see explain()
    print(json.dumps({"checkpoint": str(out)}, indent=2))
    return 0


def cmd_sifid(args: argparse.Namespace) -> int:
    from tasks.sifid import sifid_command

    value = sifid_command(args.real, args.fake, args.inception, device=args.device, feature_layer=args.layer)
    print(json.dumps({"sifid": value, "real": args.real, "fake": args.fake, "layer": args.layer}, indent=2))
    return 0


def cmd_evaluate_fer(args: argparse.Namespace) -> int:
    from tasks.fer import FERConfig

    config = FERConfig(arch=args.arch, width=args.width, image_size_px=args.image_size, steps=args.steps,
                       batch_size=args.batch_size, lr=args.lr, seed=args.seed, balanced=args.balanced,
                       hflip=args.hflip, device=args.device)
    if not (args.train or args.folds or args.seeds):
        if args.expanded is None:
            raise UsageError("give --expanded (originals vs expanded), or --train sets for a study")
        from flows.evaluate_fer import evaluate_fer

        print(json.dumps(evaluate_fer(args.original, args.expanded, args.out, config), indent=2, default=str))
        return 0
    from flows.evaluate_fer import evaluate_fer_study
    from tasks.fer_study import StudyConfig, parse_training_set

    specs = list(args.train) or ["originals=originals"] + ([f"expanded={args.expanded}"] if args.expanded else [])
    try:
        sets = [parse_training_set(t) for t in specs]
        comparisons = [tuple(c.split(":", 1)) for c in args.compare] or None
        if comparisons and any(len(c) != 2 for c in comparisons):
            raise ValueError(f"--compare expects A:B, got {args.compare}")
        study = StudyConfig(folds=args.folds, group_regex=args.group_regex, seeds=tuple(args.seeds or [args.seed]),
                            fold_seed=args.fold_seed, fer=config)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    result = evaluate_fer_study(args.original, [f"{s.name}={s.describe()}" for s in sets], args.out, study,
                                comparisons, args.workers)
    print(json.dumps({"report": result["report"], "folds": result["folds"]}, indent=2))
    return 0


def cmd_fit_au_shape(args: argparse.Namespace) -> int:
    from tasks.au_shape_fit import FitConfig, FitInputError, fit_au_shape, format_report, save_au_shape

    try:
        config = FitConfig(ridge=args.ridge, mode=args.mode, pose=args.pose, holdout=args.holdout,
                           block_frames=args.block_frames, gap_frames=args.gap_frames, folds=args.folds,
                           min_rows=args.min_rows, choose=args.choose, subjects=args.subjects,
                           **({"min_confidence": args.min_au_confidence} if args.min_au_confidence is not None else {}))
        result = fit_au_shape(args.inputs, config)
    except (FitInputError, ValueError) as exc:
        print(f"singanimation fit-au-shape: error: {exc}", file=sys.stderr)
        return 2
    path = save_au_shape(result.model, args.out)
    if args.report:
        from manifests.atomic import atomic_write_text

        atomic_write_text(json.dumps(result.report, indent=1, sort_keys=True) + "\n", args.report)
    print(format_report(result.report))
    print(f"\nwrote {path} (model {result.model.version}, {result.report['rows']} rows, "
          f"{result.report['evaluation']['chosen']['mode']} fit, ridge {result.report['evaluation']['chosen']['ridge']:g})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from flows.demo import run_demo

    summary = run_demo(args.out, device=args.device)
    print(json.dumps(summary, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="singanimation",
        description="Expand facial-expression datasets: align faces, read OpenFace AUs, write a Parquet manifest + tar shards.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("prepare", help="dataset -> aligned, AU-labelled shards + manifest + rejects + report",
                       description="Ingest a dataset (RAF-DB, class folders or a CSV list), align faces with MTCNN, "
                                   "read OpenFace AUs, and write shards + a Parquet manifest. Re-running on the same "
                                   "--out resumes and never duplicates.")
    p.add_argument("dataset", help="dataset root")
    p.add_argument("--out", required=True, help="output root")
    p.add_argument("--layout", default="auto", choices=["auto", "rafdb", "folders", "csv"])
    p.add_argument("--rafdb-images", default="aligned", choices=["original", "aligned"], help="RAF-DB image folder to read")
    p.add_argument("--csv", help="CSV list (path,label[,split]) for --layout csv")
    p.add_argument("--default-split", default="train", choices=["train", "test"], help="split of images without one")
    p.add_argument("--class-map", action="append", default=[], metavar="NAME=ID", type=_class_map_item,
                   help="map an extra class name onto an emotion id (1..7)")
    p.add_argument("--unknown-class", default="reject", choices=["reject", "drop"])
    p.add_argument("--align", default="mtcnn", choices=["mtcnn", "none"],
                   help="'none' for pre-aligned images (resize + validate)")
    p.add_argument("--image-size", type=_positive_int, default=128, help="side of the square crops, px")
    p.add_argument("--face-policy", default="largest", choices=["largest", "most_confident"])
    p.add_argument("--min-face-prob", type=_float_in(0.0, 1.0), default=0.90)
    p.add_argument("--batch-size", type=_positive_int, default=16, help="images per MTCNN batch")
    p.add_argument("--aus", help="folder of OpenFace CSVs, or GANimation's aus_openface.pkl")
    p.add_argument("--missing-aus", default="reject", choices=["reject", "keep"], help="images without an AU file")
    p.add_argument("--min-au-confidence", type=float, default=None, help="OpenFace rows below this confidence are not trusted")
    p.add_argument("--landmarks", default="auto", choices=["auto", "openface", "detector", "none"],
                   help="68 landmarks from: auto = the OpenFace CSV's (same row as the AUs) when it has them, else the "
                        "dlib detector on the aligned crop; openface; detector; none")
    p.add_argument("--unit-size", type=_positive_int, default=256, help="images per work unit / shard")
    p.add_argument("--run-name", default="prepare", help="shard file name prefix")
    p.add_argument("--device", default=None, help="cuda or cpu (default: CUDA when present)")
    p.add_argument("--dry-run", action="store_true", help="print the settings and the work plan, write nothing")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("verify", help="check that every manifest row matches its shard bytes",
                       description="Exit 0 when every row's member exists with its sha256, no sample_id repeats and "
                                   "every shard has its manifest part; exit 1 and list the problems otherwise.")
    p.add_argument("out", help="output root")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("inspect-au", help="print, as JSON, the 17 AUs the pipeline would use for an OpenFace CSV",
                       description="Show the AU values (0..1, fixed order), which row was chosen and why, or the reject reason.")
    p.add_argument("file", help="an OpenFace CSV or GANimation aus_openface.pkl")
    p.add_argument("--min-au-confidence", type=float, default=None)
    p.set_defaults(func=cmd_inspect_au)

    p = sub.add_parser("expand", help="prepared dataset -> AU edits + SinGAN regenerations -> expanded dataset",
                       description="Apply N AU targets per train image with the landmark warp or GANimation, "
                                   "train SinGAN on each result and draw M regenerations injected at a finer scale; "
                                   "write shards + manifest + report. "
                                   "Re-running on the same --out resumes and never duplicates.")
    p.add_argument("prepared", help="output root of `singanimation prepare`")
    p.add_argument("--out", required=True, help="output root of the expanded dataset")
    p.add_argument("--editor", choices=["warp", "ganimation", "warp+ganimation"], default=None,
                   help="who edits: the landmark warp (no training), GANimation, or warp+ganimation (the warp, then "
                        "GANimation from the warped face toward the same target; stage 'ganimation'); default: "
                        "ganimation when --ganimation is given, else warp")
    p.add_argument("--ganimation", help="GANimation checkpoint dir (trained or imported), for --editor ganimation "
                                        "or warp+ganimation")
    p.add_argument("--au-shape", help="AU shape model JSON for the warp (from fit-au-shape); default: FACS-authored")
    p.add_argument("--plan", default="emotion", choices=["none", "single_au", "interpolate", "emotion", "balance"],
                   help="AU targets per source; 'none' = no edits, SinGAN regenerations of the originals only")
    p.add_argument("--interpolate-to", choices=["emotion", "source", "own"],
                   help="interpolate plan: toward another emotion's prototype (default), another train image's AUs, or "
                        "the source's own emotion at another intensity (own: label-preserving, weaker or stronger)")
    p.add_argument("--source-aus", default="neutral", choices=["neutral", "label"],
                   help="AUs the warp assumes for a source without measured AUs: neutral (all zero) or label (the "
                        "EMFACS prototype of its emotion label; for peak-expression data without AU files, e.g. CK+)")
    p.add_argument("--intensity", type=_float_in(0.0, 1.0), nargs=2, metavar=("LO", "HI"),
                   help="emotion/balance/interpolate plans: AU intensity range of the targets (0..1; default 0.3 0.6)")
    p.add_argument("--group-regex", help="balance plan: regex whose first group in source_id names a person (e.g. "
                                         "'^(S[0-9]+)_' for CK+); a person only gets emotions they do not show")
    p.add_argument("--fill-with", choices=["other", "own"],
                   help="balance plan: fill a class with edits of other classes' faces toward it (other, default) or "
                        "of its own faces at another intensity (own: label-preserving, no other expression showing "
                        "through)")
    p.add_argument("--per-source", type=_positive_int, default=3, help="N: edits kept per source (seeded choice)")
    p.add_argument("--emotions", type=int, nargs="+", help="emotion ids the emotion plan may target (default all)")
    p.add_argument("--regenerations", "-M", type=int, default=2, help="M SinGAN regenerations per edit (0: edits only)")
    p.add_argument("--singan-preset", default="fast", help="SinGAN preset (fast, official, reduced, tiny, ...)")
    p.add_argument("--singan-set", action="append", default=[], metavar="FIELD=VALUE",
                   help="change one SinGANConfig field of the preset, e.g. iters_per_scale=200 (repeatable)")
    p.add_argument("--singan-start", default="N-1", type=_singan_start,
                   help="scale the image is injected at: N-1 (default) or N-2; N needs a preset that trains every scale")
    p.add_argument("--singan-noise-gain", type=float, default=3.0, help="noise multiplier at the start scale (default 3)")
    p.add_argument("--singan-train-on", default="source", choices=["source", "edit"],
                   help="one SinGAN per source face with its edits injected (default), or one per edit")
    p.add_argument("--singan-sampling", default="residual", choices=["residual", "plain"],
                   help="residual (default): each regeneration is the injected image plus the variation the noise "
                        "draws; plain: SinGAN's own output (a per-source SinGAN then paints the source's mouth back "
                        "into large edits)")
    p.add_argument("--bank-size", type=_positive_int, default=16, help="faces trained together in one SinGAN bank")
    p.add_argument("--singan-prior-faces", type=int, default=0, metavar="P",
                   help="warm starts: train a SinGAN face prior once on P train faces (written to OUT/singan_prior, "
                        "reused on resume and by every unit) and fine-tune each bank from it; 0 = from scratch")
    p.add_argument("--singan-prior-iters", type=_positive_int, default=200, help="face prior: iterations per scale")
    p.add_argument("--singan-prior-batch", type=_positive_int, default=4, help="face prior: faces per iteration")
    p.add_argument("--singan-finetune-iters", type=int, default=None,
                   help="iterations per scale of each bank fine-tuned from the prior (default: the preset's)")
    p.add_argument("--unit-size", type=_positive_int, default=64, help="source images per work unit / shard")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit-sources", type=int, help="expand only this many train sources (seeded choice), to try settings")
    p.add_argument("--test-split", default="copy", choices=["copy", "omit"],
                   help="copy test originals through, or leave them out")
    p.add_argument("--min-ssim", type=_float_in(-1.0, 1.0),
                   help="quality gate: reject samples with SSIM to their source below this")
    p.add_argument("--max-au-fidelity", type=float, help="quality gate: reject edits whose critic AU error exceeds this")
    p.add_argument("--attention-range", type=_float_in(0.0, 1.0), nargs=2, metavar=("LO", "HI"),
                   help="quality gate on mean attention")
    p.add_argument("--sifid-weights", help="Inception-v3 weights (.pth) to score SIFID per SinGAN sample")
    p.add_argument("--fanout", default="local", choices=["local", "deployment"],
                   help="run units here, or as runs of the expand-unit deployment on the gpu pool")
    p.add_argument("--run-name", default="expand", help="shard file name prefix")
    p.add_argument("--device", default=None, help="cuda or cpu (default: CUDA when present)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (counts per stage, kind, label; units; compute) and exit")
    p.set_defaults(func=cmd_expand)

    p = sub.add_parser("train-ganimation", help="train GANimation on a prepared dataset's AU-labelled train faces",
                       description="Resumable: re-running with the same --out continues from the last checkpoint. "
                                   "Writes checkpoints/epoch_NNNN (never overwritten) and samples/epoch_NNNN.png.")
    p.add_argument("prepared", help="output root of `singanimation prepare`")
    p.add_argument("--out", required=True, help="training run folder")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--conv-dim", type=int, default=64)
    p.add_argument("--repeat-num", type=int, default=6)
    p.add_argument("--upsample", default="transposed", choices=["transposed", "resize_conv"])
    p.add_argument("--batch-size", type=int, default=25)
    p.add_argument("--warp-teacher", type=float, default=None, metavar="WEIGHT",
                   help="weight of the L1 term toward the landmark warp's edit of each (face, target) pair, held for "
                        "the first half of training, then down to 0.1x; 0 = off. Default: 100 for a model smaller "
                        "than the published size (128 px, conv-dim 64, 6 blocks), 0 at that size (the published "
                        "setting). Faces without landmarks get no term")
    p.add_argument("--warp-teacher-au-shape", default=None, help="AU shape model JSON for the teacher's warp")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_train_ganimation)

    p = sub.add_parser("import-checkpoint", help="convert published GANimation weights into a project checkpoint",
                       description="Reads the official (net_epoch_N_id_G.pth / _D.pth) or ganimation_replicate "
                                   "(N_net_gen.pth / N_net_dis.pth) files with weights_only loading, checks every key "
                                   "and shape, and writes a safetensors checkpoint to --out; exits 1 naming every "
                                   "missing, unexpected or wrong-shaped key.")
    p.add_argument("--format", required=True, choices=["official", "replicate"])
    p.add_argument("--generator", required=True, help="generator .pth")
    p.add_argument("--critic", help="critic (discriminator) .pth; needed for AU-fidelity scores and AU estimation")
    p.add_argument("--out", required=True, help="new checkpoint folder (never overwritten)")
    p.set_defaults(func=cmd_import_checkpoint)

    p = sub.add_parser("sifid", help="single-image FID between a real and a generated image (needs Inception-v3 weights)",
                       description="SinGAN's SIFID: Frechet distance between the per-location Inception-v3 features "
                                   "of two images. Weights are not downloaded: give a torchvision inception_v3 or "
                                   "pytorch-fid FID-Inception state_dict.")
    p.add_argument("real")
    p.add_argument("fake")
    p.add_argument("--inception", required=True, help="Inception-v3 weights (.pth)")
    p.add_argument("--layer", default="Conv2d_4a_3x3", choices=["Conv2d_4a_3x3", "Conv2d_2b_3x3"])
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_sifid)

    p = sub.add_parser("evaluate-fer", help="train the same FER classifier on originals vs expanded data and compare",
                       description="Two runs with the same seed and step budget, evaluated on the original test split: "
                                   "accuracy, mean per-class recall and confusion matrices side by side. With --train "
                                   "sets, --folds or --seeds: a study of several training sets over k folds by person "
                                   "and several seeds, with paired comparisons (fer_study.md).")
    p.add_argument("--original", required=True, help="prepared output root (originals; its test split is the benchmark)")
    p.add_argument("--expanded", help="expanded output root (the two-run comparison)")
    p.add_argument("--out", required=True, help="folder for fer_report.md / .json")
    p.add_argument("--arch", default="resnet18", choices=["resnet18", "small_cnn"])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--balanced", action="store_true", help="class-balanced sampling")
    p.add_argument("--width", type=_positive_int, default=32, help="small_cnn: channels of the first block")
    p.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=True,
                   help="random horizontal flips for every set (a study's 'aug' sets flip anyway)")
    p.add_argument("--train", action="append", default=[], metavar="NAME=PART[+PART...]",
                   help="a training set of a study (repeatable); PART: originals, aug, or PATH[:stage,...], "
                        "e.g. d=originals+runs/edits:warp+aug")
    p.add_argument("--folds", type=int, default=0, help="k >= 2: k-fold split by --group-regex (0: the split column)")
    p.add_argument("--group-regex", help="first group in source_id names a person, e.g. '(S[0-9]+)_' for CK+")
    p.add_argument("--seeds", type=int, nargs="+", help="one run per seed per set per fold (default: --seed)")
    p.add_argument("--fold-seed", type=int, default=0, help="seed of the fold assignment")
    p.add_argument("--compare", action="append", default=[], metavar="A:B",
                   help="paired comparison of set B against set A (repeatable; default: every set vs the first)")
    p.add_argument("--workers", type=_positive_int, default=1, help="training processes (one torch thread each)")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_evaluate_fer)

    p = sub.add_parser("fit-au-shape", help="fit how each AU moves the 68 landmarks from OpenFace CSVs or a prepared output",
                       description="Fits the linear AU -> landmark displacement model (neutral shape per subject + AU "
                                   "basis + head-pose terms, ridge least squares) from OpenFace output with landmarks, "
                                   "prints held-out errors of the mean shape, the FACS default and the fit, and writes "
                                   "the model JSON (for expand --au-shape). Exit 2 when the input cannot give a fit.")
    p.add_argument("inputs", nargs="+", metavar="PREPARED_OR_CSV_DIR",
                   help="prepared output root (manifest with landmarks), folder of OpenFace CSVs, or CSV files")
    p.add_argument("--out", required=True, help="model JSON to write (atomically)")
    p.add_argument("--report", help="also write the full held-out report (every candidate, per AU) as JSON here")
    p.add_argument("--ridge", type=float, default=None, help="penalty on the AU basis (default: chosen by held-out error)")
    p.add_argument("--mode", default="auto", choices=["auto", "full", "residual", "local", "scaled"],
                   help="full: basis from data; residual: shrink toward the FACS default; local: residual on the "
                        "points FACS names per AU only; scaled: the default's pattern, one fitted size per AU; "
                        "auto: all four, chosen held out")
    p.add_argument("--choose", default="1se", choices=["1se", "best"],
                   help="1se: the most conservative candidate within one standard error of the lowest held-out "
                        "error; best: the lowest")
    p.add_argument("--pose", default="linear", choices=["linear", "none"], help="head-pose covariates")
    p.add_argument("--holdout", default="blocks", choices=["blocks", "files"],
                   help="blocks: contiguous time blocks per subject; files: leave one subject/file out")
    p.add_argument("--subjects", default="auto", choices=["auto", "file", "pooled"],
                   help="own neutral shape per CSV/face (file), one for all (pooled), or per CSV with >= 10 rows "
                        "and one shared by the smaller (auto: videos vs single-image CSVs)")
    p.add_argument("--block-frames", type=int, default=25, help="rows per held-out block (time order)")
    p.add_argument("--gap-frames", type=int, default=3, help="rows dropped from training each side of a held-out block")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--min-rows", type=int, default=40, help="fewer usable rows than this: exit 2")
    p.add_argument("--min-au-confidence", type=float, default=None, help="OpenFace rows below this confidence are skipped")
    p.set_defaults(func=cmd_fit_au_shape)

    p = sub.add_parser("demo", help="build the bundled sample dataset and run the pipeline on it",
                       description="Writes a small dataset from the real faces shipped in scikit-image and matplotlib "
                                   "(with DEMO AU values in OpenFace's CSV format, not OpenFace output) and runs prepare.")
    p.add_argument("--out", default="demo-out", help="where the sample data and the outputs go")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_demo)

    parser.add_argument("--debug", action="store_true", help="print the full traceback of an error")
    for command in sub.choices.values():  # also accepted after the command name
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="print the full traceback of an error")
    return parser


# Commands that never start Prefect (no flow runs, so no Prefect log output to quieten).
_NO_PREFECT = {"verify", "inspect-au", "import-checkpoint", "sifid"}


def _log_path() -> Path:
    return Path(tempfile.gettempdir()) / f"singanimation-{os.getpid()}.log"


def _append_log(text: str) -> Path:
    path = _log_path()
    try:
        with open(path, "a") as f:
            f.write(text.rstrip("\n") + "\n")
    except OSError:
        pass
    return path


class _TracebackToLog(logging.Filter):
    """Keep Prefect's exception tracebacks off the terminal: they go to the log file; the CLI prints one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.levelno >= logging.ERROR:
            _append_log(logging.Formatter("%(asctime)s %(name)s %(message)s").format(record))
            return False
        return True


def _quiet_prefect_tracebacks() -> None:
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _TracebackToLog) for f in logger.filters):
            logger.addFilter(_TracebackToLog())


def explain(exc: BaseException) -> tuple[int, str]:
    """(exit code, one-line message saying what is wrong and what to do) for an error that ended a command."""
    from pydantic import ValidationError

    from flows._run import ConfigMismatch, OutputLocked, StartError
    from manifests.writer import ManifestError
    from tasks.ingest import DatasetError
    from tasks.prepare import AUSourceError

    name = type(exc).__name__
    if isinstance(exc, (UsageError, StartError, ConfigMismatch, DatasetError, OutputLocked, AUSourceError)):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, ValidationError):
        return EXIT_USAGE, "invalid value: " + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    if isinstance(exc, FileNotFoundError):
        return EXIT_USAGE, f"{exc.filename or exc}: no such file or folder; check the path" if exc.filename else str(exc)
    if isinstance(exc, ManifestError):
        return EXIT_FAILED, str(exc)
    if isinstance(exc, PermissionError) or (isinstance(exc, OSError) and exc.errno in (13, 30)):
        return EXIT_FAILED, (f"cannot write {exc.filename or 'the output'}: {exc.strerror}; choose a writable --out "
                             "(or fix the folder's permissions) and re-run")
    if isinstance(exc, OSError) and exc.errno == 28:
        return EXIT_FAILED, f"no space left writing {exc.filename or 'the output'}; free some space and re-run to resume"
    if isinstance(exc, OSError):
        return EXIT_FAILED, f"{exc.filename or 'I/O'}: {exc.strerror or exc}; check the path and re-run"
    if name == "SafetensorError":
        return EXIT_FAILED, (f"a checkpoint's model.safetensors cannot be read ({exc}): "
                             "the file is damaged; re-create the checkpoint")
    if name.startswith("Arrow") or type(exc).__module__.startswith("pyarrow"):
        return EXIT_FAILED, f"a Parquet file cannot be read ({name}: {exc}); run `singanimation verify` on the output to find it"
    if type(exc).__name__ in ("LegacyCheckpointError", "CheckpointError"):
        return EXIT_FAILED, str(exc)
    if isinstance(exc, RuntimeError) and str(exc).startswith("output failed verification"):
        return EXIT_FAILED, "the output failed verification; run `singanimation verify OUT` for the list of problems"
    return EXIT_FAILED, f"unexpected {name}: {exc}"


def _one_line(text: str) -> str:
    return " | ".join(line.strip() for line in str(text).splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    debug = bool(getattr(args, "debug", False))
    if not debug and args.command not in _NO_PREFECT:
        _quiet_prefect_tracebacks()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"singanimation {args.command}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        code, message = explain(exc)
        message = _one_line(message)
        if debug:
            traceback.print_exc()
        else:
            log = _append_log(traceback.format_exc())
            if code == EXIT_FAILED:
                message += f" (traceback in {log}; --debug prints it)"
        print(f"singanimation {args.command}: error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
