"""`singanimation`: the command line over the flows (prepare, verify, inspect-au, demo)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import flows  # noqa: F401  (sets safe Prefect defaults before Prefect is imported)


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
        unit_size=args.unit_size,
        device=args.device,
    )


def _parse_class_map(items: list[str]) -> list[tuple[str, int]]:
    pairs = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not value.isdigit():
            raise SystemExit(f"--class-map expects NAME=ID (e.g. contempt=3), got {item!r}")
        pairs.append((name, int(value)))
    return pairs


def cmd_prepare(args: argparse.Namespace) -> int:
    settings = _prepare_settings(args)
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


def cmd_demo(args: argparse.Namespace) -> int:
    from flows.demo import run_demo

    summary = run_demo(args.out, device=args.device)
    print(json.dumps(summary, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    p.add_argument("--class-map", action="append", default=[], metavar="NAME=ID", help="map an extra class name onto an emotion id")
    p.add_argument("--unknown-class", default="reject", choices=["reject", "drop"])
    p.add_argument("--align", default="mtcnn", choices=["mtcnn", "none"], help="'none' for pre-aligned images (resize + validate)")
    p.add_argument("--image-size", type=int, default=128, help="side of the square crops, px")
    p.add_argument("--face-policy", default="largest", choices=["largest", "most_confident"])
    p.add_argument("--min-face-prob", type=float, default=0.90)
    p.add_argument("--batch-size", type=int, default=16, help="images per MTCNN batch")
    p.add_argument("--aus", help="folder of OpenFace CSVs, or GANimation's aus_openface.pkl")
    p.add_argument("--missing-aus", default="reject", choices=["reject", "keep"], help="images without an AU file")
    p.add_argument("--min-au-confidence", type=float, default=None, help="OpenFace rows below this confidence are not trusted")
    p.add_argument("--unit-size", type=int, default=256, help="images per work unit / shard")
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

    p = sub.add_parser("demo", help="build the bundled sample dataset and run the pipeline on it",
                       description="Writes a small dataset from the real faces shipped in scikit-image and matplotlib "
                                   "(with DEMO AU values in OpenFace's CSV format, not OpenFace output) and runs prepare.")
    p.add_argument("--out", default="demo-out", help="where the sample data and the outputs go")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:
        from flows.prepare import ConfigMismatch
        from tasks.ingest import DatasetError

        if isinstance(exc, (ConfigMismatch, DatasetError, FileNotFoundError)):
            print(f"singanimation {args.command}: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
