"""Dataset ingest: read RAF-DB, class folders or a CSV list into validated, hashed SourceRecords."""
from __future__ import annotations

import csv
import dataclasses
import errno
import logging
import operator
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from PIL import Image

from manifests.schema import EMOTIONS, SPLITS, sha256_file, stable_hash
from tasks.errors import RejectError
from tasks.imageio import check_pixel_count

log = logging.getLogger(__name__)

STAGE = "ingest"

# Reject reason codes this stage can emit (stable strings; the run report groups by them).
REASONS: tuple[str, ...] = (
    "label_line_malformed",  # RAF-DB label line is not "<name> <int>"
    "csv_row_malformed",     # CSV row has the wrong number of fields or an empty path
    "bad_label",             # numeric label outside 1..7
    "bad_name",              # RAF-DB image name does not match train_NNNNN.jpg / test_NNNN.jpg
    "bad_split",             # CSV split value is not train/test (or an alias)
    "split_order",           # RAF-DB train line after the first test line
    "duplicate_entry",       # same image listed twice (conflicting labels reject every copy)
    "duplicate_image",       # byte-identical to another image (a test copy wins: no train/test leak)
    "file_missing",          # listed image not on disk
    "empty_file",            # zero-byte image
    "file_unreadable",       # the OS refused to read it
    "not_an_image",          # bytes are not an image format PIL recognises
    "image_too_large",       # PIL's decompression-bomb guard tripped
    "unknown_class",         # class folder / label name not in EMOTIONS, synonyms or class_map
    "not_an_image_ext",      # file in a class folder whose extension is not an image extension
    "no_class_folder",       # image directly in the root (or split folder), so it has no class
    "bad_file_name",         # a file or folder name that is not valid UTF-8 (stored escaped in the reject row)
    "symlink_loop",          # a link that points (through other links) back at itself
    "symlink_broken",        # a link whose target does not exist
    "symlink_into_tree",     # a folder link back into the dataset (e.g. loopdir -> .): not followed
    "not_a_regular_file",    # a FIFO, socket or device file inside a class folder
)

# .gif: an animated GIF is read as its first frame (tasks.imageio.load_image_rgb).
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})

# OS/archive clutter skipped silently in folder datasets, on top of every dot-file and dot-folder.
# __MACOSX holds AppleDouble "._x.jpg" files that look like images by extension but are not.
IGNORED_NAMES = frozenset({"__macosx", "thumbs.db", "desktop.ini"})

# Folder/CSV split names. Validation data maps to "test": the pipeline has two splits, and anything
# held out must never seed a generated sample. The source_id keeps the folder name as written.
SPLIT_ALIASES: dict[str, str] = {
    "train": "train", "training": "train",
    "test": "test", "testing": "test",
    "val": "test", "valid": "test", "validation": "test",
}

# Case-insensitive names (and common synonyms) for the fixed RAF-DB basic ids.
EMOTION_SYNONYMS: dict[str, int] = {
    "surprise": 1, "surprised": 1,
    "fear": 2, "fearful": 2, "afraid": 2,
    "disgust": 3, "disgusted": 3,
    "happiness": 4, "happy": 4,
    "sadness": 5, "sad": 5,
    "anger": 6, "angry": 6,
    "neutral": 7,
}

RAFDB_LABEL_FILE = "list_patition_label.txt"      # sic: the name RAF-DB ships
RAFDB_LABEL_FILE_FIXED = "list_partition_label.txt"  # accepted in case someone corrected the spelling
RAFDB_NAME_PATTERNS: dict[str, re.Pattern[str]] = {
    "train": re.compile(r"train_\d{5}\.jpg"),
    "test": re.compile(r"test_\d{4}\.jpg"),
}
# The compound release uses labels 1..11; 8..11 never occur in the basic release, and in the compound
# release they are 44% of the lines (1727 of 3954). A few stray 8s in a basic file are typos: those
# lines are rejected (bad_label); 8..11 on at least this share of the lines means the compound file.
COMPOUND_LABELS = range(8, 12)
COMPOUND_MIN_SHARE = 0.25


class DatasetError(ValueError):
    """The dataset as a whole cannot be read (wrong layout, missing label file, wrong release)."""


# Needed at import time: IngestConfig() is a default argument below.
def _is_ascii_int(text: str) -> bool:
    body = text[1:] if text[:1] in "+-" else text
    return body.isascii() and body.isdigit()


def _normalise_class_map(class_map: Iterable[tuple[str, int]] | Mapping[str, int]) -> dict[str, int]:
    pairs = class_map.items() if isinstance(class_map, Mapping) else class_map
    mapping: dict[str, int] = {}
    for name, label in pairs:
        key = str(name).strip().lower()
        if _is_ascii_int(key):
            key = str(int(key))  # "07" and 7 name the same numeric folder
        if isinstance(label, bool) or not isinstance(label, int) or label not in EMOTIONS:
            raise ValueError(f"class_map[{name!r}] = {label!r}: must be an emotion id 1..7 ({EMOTIONS})")
        mapping[key] = label
    return mapping


def _check_choice(name: str, value: object, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"IngestConfig.{name}={value!r}: must be one of {allowed}")


@dataclass(frozen=True)
class IngestConfig:
    """How to read a source dataset.

    class_map: extra name -> id mappings, checked before the built-in names (so it can also remap
        numeric folders such as a 0-based scheme). A dict is accepted and stored as sorted pairs.
    unknown_class: "reject" gives one unknown_class reject row per image; "drop" leaves those images
        out without reject rows. Either way IngestResult.unknown_classes counts them and a warning is
        logged, so nothing disappears unreported.
    verify_images: open each image's header with PIL so non-images are rejected here, not mid-run.
    """

    layout: Literal["auto", "rafdb", "folders", "csv"] = "auto"
    image_dir: Literal["original", "aligned"] = "aligned"   # RAF-DB only
    default_split: Literal["train", "test"] = "train"       # folders without a split level, CSV without split
    class_map: tuple[tuple[str, int], ...] = ()
    unknown_class: Literal["reject", "drop"] = "reject"
    csv_path: str | None = None                             # layout csv; relative paths are under root
    verify_images: bool = True

    def __post_init__(self) -> None:
        _check_choice("layout", self.layout, ("auto", "rafdb", "folders", "csv"))
        _check_choice("image_dir", self.image_dir, ("original", "aligned"))
        _check_choice("default_split", self.default_split, SPLITS)
        _check_choice("unknown_class", self.unknown_class, ("reject", "drop"))
        object.__setattr__(self, "class_map", tuple(sorted(_normalise_class_map(self.class_map).items())))


@dataclass(frozen=True)
class SourceRecord:
    source_id: str
    path: str          # absolute path
    split: str         # "train" | "test"
    label: int         # 1..7
    sha256: str


@dataclass
class IngestResult:
    records: list[SourceRecord]
    rejects: list[dict]   # rows {source_id, stage="ingest", reason, detail}
    layout: str
    unknown_classes: dict[str, int] = field(default_factory=dict)  # unmapped class/label name -> images
    warnings: list[str] = field(default_factory=list)              # dataset-level notes for the run report

    def counts(self) -> dict[str, dict[int, int]]:
        """Images per split and label id, every split and label present (zeros included)."""
        table = {split: {label: 0 for label in EMOTIONS} for split in SPLITS}
        for record in self.records:
            table[record.split][record.label] += 1
        return table

    def reject_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(row["reason"] for row in self.rejects).items()))

    def summary(self) -> str:
        per_split = ", ".join(f"{sum(labels.values())} {split}" for split, labels in self.counts().items())
        rejects = ", ".join(f"{reason}: {n}" for reason, n in self.reject_counts().items()) or "none"
        return f"ingest [{self.layout}]: {per_split} images; rejects: {rejects}"


# ---------------------------------------------------------------- entry points


def ingest_dataset(root: str | os.PathLike, config: IngestConfig = IngestConfig()) -> IngestResult:
    """Read a dataset in any supported layout; layout "auto" picks CSV, RAF-DB or class folders."""
    root_path = Path(root).expanduser()
    layout = config.layout
    if layout == "auto":
        is_csv_file = root_path.is_file() and root_path.suffix.lower() == ".csv"
        layout = "csv" if config.csv_path or is_csv_file else detect_layout(root_path)
    if layout == "csv":
        result = read_csv_list(_csv_location(root_path, config.csv_path), config)
    elif layout == "rafdb":
        result = read_rafdb(root_path, config)
    else:
        result = read_class_folders(root_path, config)
    result = drop_duplicate_images(result)
    log.info(result.summary())
    for warning in result.warnings:
        log.warning(warning)
    return result


def inputs_fingerprint(records: Iterable[SourceRecord]) -> str:
    """Hash of what a run reads: every source id with its bytes' sha256, split and label, sorted."""
    return stable_hash(sorted([r.source_id, r.sha256, r.split, r.label] for r in records), 16)


def drop_duplicate_images(result: IngestResult) -> IngestResult:
    """Keep one record per distinct image (sha256); reject the other copies.

    Byte-identical files would get the same sample ids downstream, and a copy in both splits would
    leak test images into training: the test copy is kept, then the first source id.
    """
    kept: dict[str, SourceRecord] = {}
    rejects = list(result.rejects)
    for record in sorted(result.records, key=lambda r: (r.split != "test", r.source_id)):
        first = kept.get(record.sha256)
        if first is None:
            kept[record.sha256] = record
            continue
        detail = f"{record.path} has the same bytes as {first.source_id} ({first.split}, label {first.label})"
        rejects.append(RejectError(STAGE, "duplicate_image", detail).as_row(record.source_id))
    if len(kept) == len(result.records):
        return result
    keep = {id(r) for r in kept.values()}
    return dataclasses.replace(result, records=[r for r in result.records if id(r) in keep], rejects=rejects)


def detect_layout(root: str | os.PathLike) -> Literal["rafdb", "folders"]:
    """"rafdb" if root holds EmoLabel/<label file>, "folders" if it holds sub-folders; else DatasetError."""
    root_path = _existing_dir(root)
    if _find_rafdb_label_file(root_path) is not None:
        return "rafdb"
    for release in ("basic", "compound"):
        if _find_rafdb_label_file(root_path / release) is not None:
            raise DatasetError(
                f"{root_path} holds the RAF-DB release folder '{release}/', not the dataset itself: "
                f"pass root={root_path / release} (SinGANimation reads the 'basic' release)."
            )
    if any(_visible_dirs(root_path)):
        return "folders"
    csv_files = sorted(p.name for p in root_path.glob("*.csv"))
    hint = f" For a CSV list use layout='csv', csv_path='{csv_files[0]}'." if csv_files else ""
    raise DatasetError(
        f"cannot tell the layout of {root_path}: no EmoLabel/{RAFDB_LABEL_FILE} (RAF-DB) and no class "
        f"sub-folders (root/<class>/<images> or root/<split>/<class>/<images>).{hint}"
    )


def parse_emotion(name_or_id: str | int, class_map: Iterable[tuple[str, int]] | Mapping[str, int] = ()) -> int | None:
    """Map a label (id 1..7, RAF-DB name, synonym, or class_map key; case-insensitive) to an id, else None."""
    mapping = _normalise_class_map(class_map)
    if isinstance(name_or_id, bool):  # True == 1 would silently become Surprise
        return None
    if not isinstance(name_or_id, str):
        try:
            number = operator.index(name_or_id)  # int and numpy integers, not floats
        except TypeError:
            return None
        return mapping.get(str(number), number if number in EMOTIONS else None)
    key = name_or_id.strip().lower()
    if key in mapping:
        return mapping[key]
    if key in EMOTION_SYNONYMS:
        return EMOTION_SYNONYMS[key]
    if _is_ascii_int(key):
        number = int(key)
        return mapping.get(str(number), number if number in EMOTIONS else None)
    return None


# ---------------------------------------------------------------- RAF-DB basic


@dataclass(frozen=True)
class _LabelLine:
    line_no: int
    name: str
    label: int


def read_rafdb(root: str | os.PathLike, config: IngestConfig = IngestConfig()) -> IngestResult:
    """Read RAF-DB basic: EmoLabel/list_patition_label.txt + Image/<original|aligned>/."""
    root_path = _existing_dir(root)
    label_path = _find_rafdb_label_file(root_path)
    if label_path is None:
        raise DatasetError(f"not a RAF-DB root: {root_path / 'EmoLabel' / RAFDB_LABEL_FILE} does not exist.")
    image_dir = _rafdb_image_dir(root_path, config.image_dir)
    lines, rejects = _parse_rafdb_lines(_read_text_lines(label_path))
    if not lines:
        raise DatasetError(f"{label_path} has no '<image name> <label>' lines; is it the RAF-DB label file?")
    _refuse_compound(root_path, label_path, lines)

    candidates: list[_Candidate] = []
    seen_test_line: int | None = None
    for line in lines:
        source_id = _rafdb_stem(line.name)
        where = f"{label_path.name} line {line.line_no}"
        if line.label not in EMOTIONS:
            reject = _reject("bad_label", f"{where}: label {line.label} is outside 1..7 (RAF-DB basic ids)")
            rejects.append(reject.as_row(source_id))
            continue
        split = _rafdb_split(line.name)
        if split is None:
            reject = _reject("bad_name", f"{where}: '{line.name}' is neither train_NNNNN.jpg (5 digits) "
                                         f"nor test_NNNN.jpg (4 digits)")
            rejects.append(reject.as_row(source_id))
            continue
        if split == "test" and seen_test_line is None:
            seen_test_line = line.line_no
        if split == "train" and seen_test_line is not None:
            reject = _reject("split_order", f"{where}: train line after the first test line "
                                            f"(line {seen_test_line}); RAF-DB lists all train lines first")
            rejects.append(reject.as_row(source_id))
            continue
        image_path = image_dir / _rafdb_image_name(line.name, config.image_dir)
        candidates.append(_Candidate(source_id, image_path, split, line.label, where))

    kept, duplicate_rejects = _resolve_duplicates(candidates)
    rejects += duplicate_rejects
    records, file_rejects = _hash_candidates(kept, config.verify_images)
    rejects += file_rejects
    warnings = _unlisted_images_warning(image_dir, {_rafdb_image_name(ln.name, config.image_dir) for ln in lines})
    return IngestResult(_sorted(records), rejects, "rafdb", warnings=warnings)


def _find_rafdb_label_file(root: Path) -> Path | None:
    for name in (RAFDB_LABEL_FILE, RAFDB_LABEL_FILE_FIXED):
        path = root / "EmoLabel" / name
        if path.is_file():
            return path
    return None


def _rafdb_image_dir(root: Path, image_dir: str) -> Path:
    path = root / "Image" / image_dir
    if path.is_dir():
        return path
    other = "original" if image_dir == "aligned" else "aligned"
    hint = f" Image/{other}/ exists: pass image_dir='{other}'." if (root / "Image" / other).is_dir() else ""
    raise DatasetError(f"RAF-DB image folder {path} does not exist (image_dir='{image_dir}').{hint}")


def _parse_rafdb_lines(lines: list[str]) -> tuple[list[_LabelLine], list[dict]]:
    """Split label lines into well-formed (name, int label) lines and label_line_malformed rejects."""
    parsed: list[_LabelLine] = []
    rejects: list[dict] = []
    for line_no, text in enumerate(lines, start=1):
        tokens = text.split()
        if not tokens:
            continue  # blank lines (e.g. a trailing newline) carry nothing
        if len(tokens) == 2 and _is_ascii_int(tokens[1]):
            parsed.append(_LabelLine(line_no, tokens[0], int(tokens[1])))
            continue
        reject = _reject("label_line_malformed",
                         f"line {line_no}: {text.strip()!r} is not '<image name> <integer label>'")
        names_image = PurePosixPath(tokens[0]).suffix.lower() in IMAGE_EXTS
        rejects.append(reject.as_row(_rafdb_stem(tokens[0]) if names_image else f"line_{line_no}"))
    return parsed, rejects


def _refuse_compound(root: Path, label_path: Path, lines: list[_LabelLine]) -> None:
    """The compound release shares the label file name but has 11 classes: refuse it by name or labels."""
    compound_lines = [line for line in lines if line.label in COMPOUND_LABELS]
    named_compound = "compound" in root.resolve().name.lower()
    if not named_compound and (len(compound_lines) < 2 or len(compound_lines) < COMPOUND_MIN_SHARE * len(lines)):
        return
    if compound_lines:
        first = compound_lines[0]
        evidence = (f"{len(compound_lines)} of {len(lines)} lines carry labels 8..11 "
                    f"(e.g. line {first.line_no}: {first.name} {first.label})")
    else:
        evidence = f"the dataset folder is named '{root.resolve().name}'"
    raise DatasetError(
        f"{label_path} looks like the RAF-DB compound release (11 compound emotions, labels 1..11): {evidence}. "
        f"SinGANimation reads only RAF-DB basic (7 emotions, labels 1..7): point root at RAF-DB/basic. "
        f"If this is the basic release, fix the out-of-range labels in the label file."
    )


def _rafdb_stem(name: str) -> str:
    stem = PurePosixPath(name).stem
    return stem.removesuffix("_aligned")


def _rafdb_image_name(listed_name: str, image_dir: str) -> str:
    """The label file lists train_00001.jpg; the aligned folder holds train_00001_aligned.jpg."""
    return f"{_rafdb_stem(listed_name)}_aligned.jpg" if image_dir == "aligned" else listed_name


def _rafdb_split(name: str) -> str | None:
    for split, pattern in RAFDB_NAME_PATTERNS.items():
        if pattern.fullmatch(name):
            return split
    return None


def _unlisted_images_warning(image_dir: Path, listed_names: set[str]) -> list[str]:
    unlisted = [p.name for p in image_dir.iterdir() if p.is_file() and p.name not in listed_names
                and p.suffix.lower() in IMAGE_EXTS]
    if not unlisted:
        return []
    return [f"{len(unlisted)} image(s) in {image_dir} are not in the label file and were not ingested "
            f"(e.g. {sorted(unlisted)[0]})"]


# ---------------------------------------------------------------- class folders


def read_class_folders(root: str | os.PathLike, config: IngestConfig = IngestConfig()) -> IngestResult:
    """Read root/<class>/<images> or root/<split>/<class>/<images>.

    Dot-files, dot-folders and OS clutter (__MACOSX, Thumbs.db, desktop.ini) are skipped silently;
    other files in a class folder without an image extension are rejected (not_an_image_ext); non-image
    files directly in the root or a split folder (README, licence) are ignored, images there are rejected
    (no_class_folder). Class folders are searched recursively.
    """
    root_path = _existing_dir(root)
    class_map = dict(config.class_map)
    groups = _split_groups(root_path, config.default_split)
    candidates: list[_Candidate] = []
    rejects: list[dict] = []
    unknown: Counter[str] = Counter()
    for folder in dict.fromkeys([root_path] + [base for _, base in groups]):
        rejects += _loose_image_rejects(folder, root_path)
    for split, base in groups:
        class_dirs = list(_visible_dirs(base))
        _refuse_zero_based(class_dirs, class_map, base)
        for class_dir in class_dirs:
            label = parse_emotion(class_dir.name, class_map)
            skip = _link_skip(class_dir, root_path, frozenset())
            if skip is not None:
                rejects.append(skip.as_row(_relative_id(class_dir, root_path)))
                continue
            for path in _walk_files(class_dir, root_path, rejects):
                source_id = _relative_id(path, root_path)
                if not _is_utf8(source_id):
                    reject = _reject("bad_file_name", f"{_printable(path)}: the name is not valid UTF-8 (shown escaped); "
                                                      f"source ids and the manifest are UTF-8: rename the file")
                    rejects.append(reject.as_row(_printable(source_id)))
                elif path.suffix.lower() not in IMAGE_EXTS:
                    reject = _reject("not_an_image_ext", f"{path}: '{path.suffix}' is not one of "
                                                         f"{' '.join(sorted(IMAGE_EXTS))}")
                    rejects.append(reject.as_row(source_id))
                elif label is None:
                    unknown[class_dir.name] += 1
                    if config.unknown_class == "reject":
                        rejects.append(_unknown_class_reject(class_dir.name, str(path)).as_row(source_id))
                else:
                    candidates.append(_Candidate(source_id, path, split, label, str(path)))
    if not candidates and not rejects and not unknown:
        raise DatasetError(f"no images found under {root_path} (expected root/<class>/<images>)")
    kept, duplicate_rejects = _resolve_duplicates(candidates)
    records, file_rejects = _hash_candidates(kept, config.verify_images)
    return IngestResult(_sorted(records), rejects + duplicate_rejects + file_rejects, "folders",
                        unknown_classes=dict(sorted(unknown.items())),
                        warnings=_unknown_class_warnings(unknown, config.unknown_class))


def _loose_image_rejects(folder: Path, root: Path) -> list[dict]:
    """Images lying next to the class folders have no class; other loose files (README, licence) are ignored."""
    rows = []
    for path in _visible_files(folder):
        if path.suffix.lower() in IMAGE_EXTS:
            reject = _reject("no_class_folder", f"{_printable(path)} is not inside a class folder, so it has no label")
            rows.append(reject.as_row(_printable(_relative_id(path, root))))
    return rows


def _split_groups(root: Path, default_split: str) -> list[tuple[str, Path]]:
    """[(split, folder holding class folders)]: the split folders if root has them, else root itself."""
    top_dirs = list(_visible_dirs(root))
    if not top_dirs:
        raise DatasetError(f"{root} has no sub-folders; expected root/<class>/<images> "
                           f"or root/<split>/<class>/<images>")
    split_dirs = [d for d in top_dirs if d.name.lower() in SPLIT_ALIASES]
    if not split_dirs:
        return [(default_split, root)]
    if len(split_dirs) != len(top_dirs):
        others = sorted(d.name for d in top_dirs if d not in split_dirs)
        raise DatasetError(
            f"{root} mixes split folders ({', '.join(sorted(d.name for d in split_dirs))}) with other folders "
            f"({', '.join(others)}): use either root/<class>/ or root/<split>/<class>/, not both."
        )
    return [(SPLIT_ALIASES[d.name.lower()], d) for d in split_dirs]


def _refuse_zero_based(class_dirs: list[Path], class_map: dict[str, int], base: Path) -> None:
    """A numeric folder 0 means a 0-based scheme (e.g. FER2013): reading 1..6 as RAF-DB ids would mislabel."""
    if any(_is_zero_label(d.name, class_map) for d in class_dirs):
        raise DatasetError(
            f"{base} has a class folder '0': numeric folders are read as RAF-DB ids 1..7, so this looks like a "
            f"0-based scheme whose ids would be silently mislabelled. Rename the folders to emotion names, or map "
            f"every numeric folder with class_map (e.g. class_map={{'0': 6, '1': 3, ...}})."
        )


def _unknown_class_reject(name: str, where: str) -> RejectError:
    known = ", ".join(EMOTIONS.values())
    return _reject("unknown_class", f"{where}: class '{name}' is not one of {known} (or a synonym / 1..7); "
                                    f"map it with class_map={{'{name.lower()}': <1..7>}} or set unknown_class='drop'")


def _unknown_class_warnings(unknown: Counter[str], policy: str) -> list[str]:
    if not unknown:
        return []
    listed = ", ".join(f"'{name}' ({n} images)" for name, n in sorted(unknown.items()))
    action = "rejected (reason unknown_class)" if policy == "reject" else "dropped (unknown_class='drop')"
    return [f"unknown classes {listed} were {action}; map them with class_map to keep them"]


# ---------------------------------------------------------------- CSV list


def read_csv_list(csv_path: str | os.PathLike, config: IngestConfig = IngestConfig()) -> IngestResult:
    """Read a CSV with columns path, label and optional split (paths relative to the CSV's folder or absolute)."""
    csv_file = Path(csv_path).expanduser()
    if not csv_file.is_file():
        raise DatasetError(f"CSV list {csv_file} does not exist")
    base = csv_file.resolve().parent
    class_map = dict(config.class_map)
    candidates: list[_Candidate] = []
    rejects: list[dict] = []
    unknown: Counter[str] = Counter()
    header, rows = _read_csv_rows(csv_file)
    columns = _csv_columns(header, csv_file)
    if not rows:
        raise DatasetError(f"CSV list {csv_file} has a header but no rows")
    _refuse_zero_based_labels(rows, columns, class_map, csv_file)
    for line_no, row in rows:
        where = f"{csv_file.name} line {line_no}"
        outcome = _csv_row_candidate(row, columns, len(header), base, config, class_map, where)
        if isinstance(outcome, _Candidate):
            candidates.append(outcome)
            continue
        source_id, reject = outcome
        if reject.reason == "unknown_class":
            unknown[row[columns["label"]].strip()] += 1
            if config.unknown_class == "drop":
                continue
        rejects.append(reject.as_row(source_id))
    kept, duplicate_rejects = _resolve_duplicates(candidates)
    # The same file can hide behind two spellings (relative and absolute): one image, one record.
    kept, same_file_rejects = _resolve_duplicates(kept, key=lambda c: str(c.path))
    records, file_rejects = _hash_candidates(kept, config.verify_images)
    return IngestResult(_sorted(records), rejects + duplicate_rejects + same_file_rejects + file_rejects, "csv",
                        unknown_classes=dict(sorted(unknown.items())),
                        warnings=_unknown_class_warnings(unknown, config.unknown_class))


def _read_csv_rows(csv_file: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line number, fields)]) with blank rows left out; DatasetError if it is not a readable CSV."""
    try:
        with open(csv_file, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except (csv.Error, UnicodeDecodeError) as error:
        raise DatasetError(f"CSV list {csv_file} is not a readable UTF-8 CSV: {error}") from error
    if header is None:
        raise DatasetError(f"CSV list {csv_file} is empty; expected a header row 'path,label[,split]'")
    return header, rows


def _csv_columns(header: list[str], csv_file: Path) -> dict[str, int]:
    """Column name -> index for path, label and (optional) split; DatasetError if the header is unusable."""
    names = [cell.strip().lower() for cell in header]
    duplicated = sorted({n for n in names if names.count(n) > 1 and n in ("path", "label", "split")})
    if duplicated:
        raise DatasetError(f"CSV list {csv_file} repeats column(s) {', '.join(duplicated)}")
    missing = [name for name in ("path", "label") if name not in names]
    if missing:
        hint = ""
        if len(header) == 1 and any(sep in header[0] for sep in ";\t|"):
            hint = " The header looks like it uses another delimiter; the CSV must be comma-separated."
        raise DatasetError(f"CSV list {csv_file} lacks column(s) {', '.join(missing)}: found header "
                           f"{header!r}, expected 'path,label' and optionally 'split'.{hint}")
    return {name: names.index(name) for name in ("path", "label", "split") if name in names}


def _refuse_zero_based_labels(rows: list[tuple[int, list[str]]], columns: dict[str, int],
                              class_map: dict[str, int], csv_file: Path) -> None:
    label_index = columns["label"]
    zero_lines = [n for n, row in rows if len(row) > label_index and _is_zero_label(row[label_index], class_map)]
    if zero_lines:
        raise DatasetError(
            f"CSV list {csv_file} uses label 0 (line {zero_lines[0]}{' and others' if len(zero_lines) > 1 else ''}): "
            f"numeric labels are read as RAF-DB ids 1..7, so this looks like a 0-based scheme whose labels would be "
            f"silently shifted. Write labels as emotion names or RAF-DB ids, or map every id with class_map."
        )


def _csv_row_candidate(row: list[str], columns: dict[str, int], n_header: int, base: Path, config: IngestConfig,
                       class_map: dict[str, int], where: str) -> _Candidate | tuple[str, RejectError]:
    """One CSV row -> a candidate, or (source_id, reject) saying why it cannot be used."""
    path_text = row[columns["path"]].strip().replace("\\", "/") if len(row) > columns["path"] else ""
    source_id = _csv_source_id(path_text) if path_text else where.replace(" ", "_")
    # Extra fields usually mean an unquoted comma inside a path: the columns after it are shifted.
    shifted = len(row) > n_header and any(cell.strip() for cell in row[n_header:])
    if len(row) < n_header or shifted or not path_text:
        return source_id, _reject("csv_row_malformed", f"{where}: {row!r} does not have one non-empty value per "
                                                       f"header column ({n_header}); quote paths that contain commas")
    label_text = row[columns["label"]].strip()
    label = parse_emotion(label_text, class_map)
    if label is None:
        if _looks_numeric(label_text) or not label_text:
            detail = f"{where}: label {label_text!r} is not an id 1..7 or an emotion name"
            return source_id, _reject("bad_label", detail)
        return source_id, _unknown_class_reject(label_text, where)
    split_text = row[columns["split"]].strip().lower() if "split" in columns else ""
    split = SPLIT_ALIASES.get(split_text) if split_text else config.default_split
    if split is None:
        return source_id, _reject("bad_split", f"{where}: split {split_text!r} is not one of "
                                               f"{', '.join(SPLIT_ALIASES)}")
    path = Path(path_text).expanduser()
    path = (path if path.is_absolute() else base / path).resolve()
    if path.suffix.lower() not in IMAGE_EXTS:
        return source_id, _reject("not_an_image_ext", f"{where}: '{path_text}' does not end in an image extension")
    return _Candidate(source_id, path, split, label, where)


def _csv_source_id(path_text: str) -> str:
    """The path as written, without './' and without its extension: stable while the CSV is."""
    while path_text.startswith("./"):
        path_text = path_text[2:]
    suffix = PurePosixPath(path_text).suffix
    return path_text[: -len(suffix)] if suffix else path_text


def _csv_location(root: Path, csv_path: str | None) -> Path:
    if csv_path is None:
        if root.is_file():
            return root
        raise DatasetError(f"layout 'csv' needs csv_path (or root pointing at the CSV file); root is {root}")
    path = Path(csv_path).expanduser()
    return path if path.is_absolute() or root.is_file() else root / path


# ---------------------------------------------------------------- shared: duplicates, files, hashing


@dataclass(frozen=True)
class _Candidate:
    """An entry that passed the label/name checks; the file itself is not yet checked."""

    source_id: str
    path: Path
    split: str
    label: int
    where: str  # "label file line 3", "labels.csv line 4" or the file path, for messages


def _resolve_duplicates(candidates: list[_Candidate], key=lambda c: c.source_id) -> tuple[list[_Candidate], list[dict]]:
    """Keep the first of repeated identical entries; reject every copy when they disagree on label or split."""
    groups: dict[str, list[_Candidate]] = {}
    for candidate in candidates:
        groups.setdefault(key(candidate), []).append(candidate)
    kept: list[_Candidate] = []
    rejects: list[dict] = []
    for group in groups.values():
        first, repeats = group[0], group[1:]
        if not repeats:
            kept.append(first)
            continue
        if all((c.label, c.split) == (first.label, first.split) for c in repeats):
            kept.append(first)
            for c in repeats:
                detail = f"{c.where}: repeats {first.source_id} (first listed at {first.where}); kept the first"
                rejects.append(_reject("duplicate_entry", detail).as_row(c.source_id))
            continue
        listed = "; ".join(f"{c.where}: label {c.label} ({EMOTIONS[c.label]}), {c.split}" for c in group)
        for c in group:  # which copy is right is unknowable: never guess
            detail = f"{c.source_id} is listed with conflicting labels/splits ({listed}); all copies rejected"
            rejects.append(_reject("duplicate_entry", detail).as_row(c.source_id))
    return kept, rejects


def _hash_candidates(candidates: list[_Candidate], verify_images: bool) -> tuple[list[SourceRecord], list[dict]]:
    records: list[SourceRecord] = []
    rejects: list[dict] = []
    for c in candidates:
        try:
            digest = _check_and_hash(c.path, verify_images)
        except RejectError as error:
            rejects.append(error.as_row(c.source_id))
            continue
        records.append(SourceRecord(c.source_id, str(c.path.resolve()), c.split, c.label, digest))
    return records, rejects


def _check_and_hash(path: Path, verify_images: bool) -> str:
    """sha256 of the file's bytes after checking it exists, is non-empty and (optionally) is an image."""
    if not path.is_file():
        raise _reject("file_missing", f"{path} does not exist")
    try:
        if path.stat().st_size == 0:
            raise _reject("empty_file", f"{path} is 0 bytes")
        digest = sha256_file(path)
    except OSError as error:
        raise _reject("file_unreadable", f"{path}: {error}") from error
    if verify_images:
        _check_image_header(path)
    return digest


def _check_image_header(path: Path) -> None:
    """Parse only the header: cheap, and catches text files or truncated downloads named .jpg."""
    try:
        with Image.open(path) as image:
            image_format = image.format
            check_pixel_count(image, path)
    except RejectError as error:
        raise _reject(error.reason, error.detail) from error
    except Image.DecompressionBombError as error:
        raise _reject("image_too_large", f"{path}: {error}") from error
    except (OSError, SyntaxError, ValueError) as error:  # UnidentifiedImageError is an OSError
        raise _reject("not_an_image", f"{path}: not a readable image ({error})") from error
    if image_format is None:
        raise _reject("not_an_image", f"{path}: PIL could not tell the image format")


# ---------------------------------------------------------------- small helpers


def _reject(reason: str, detail: str) -> RejectError:
    return RejectError(STAGE, reason, detail)


def _sorted(records: list[SourceRecord]) -> list[SourceRecord]:
    return sorted(records, key=lambda r: (SPLITS.index(r.split), r.source_id))


def _existing_dir(root: str | os.PathLike) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(f"dataset root {path} is not a directory")
    return path.resolve()


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name.lower() in IGNORED_NAMES


def _visible_dirs(folder: Path) -> Iterator[Path]:
    return (p for p in sorted(folder.iterdir()) if p.is_dir() and not _is_hidden(p))


def _visible_files(folder: Path) -> Iterator[Path]:
    return (p for p in sorted(folder.iterdir()) if p.is_file() and not _is_hidden(p))


def _walk_files(folder: Path, root: Path, rejects: list[dict], seen: frozenset[Path] = frozenset()) -> Iterator[Path]:
    """Every visible regular file under folder, sorted, skipping hidden folders entirely.

    Links are followed unless they loop, dangle or lead back into the dataset (root or a folder being
    walked): each skipped entry, and each FIFO/socket/device, becomes a reject row in `rejects`.
    """
    seen = seen | {folder.resolve()}
    subdirs = []
    for path in sorted(p for p in folder.iterdir() if not _is_hidden(p)):
        skip = _link_skip(path, root, seen)
        if skip is not None:
            rejects.append(skip.as_row(_printable(_relative_id(path, root))))
        elif path.is_dir():
            subdirs.append(path)
        elif path.is_file():
            yield path
        else:
            reject = _reject("not_a_regular_file", f"{_printable(path)} is not a regular file (FIFO, socket or device)")
            rejects.append(reject.as_row(_printable(_relative_id(path, root))))
    for sub in subdirs:
        yield from _walk_files(sub, root, rejects, seen)


def _link_skip(path: Path, root: Path, seen: frozenset[Path]) -> RejectError | None:
    """Why a link must not be followed (loop, dangling, folder link back into the tree), or None."""
    if not path.is_symlink():
        return None
    where = f"{_printable(path)} -> {_printable(os.readlink(path))}"
    try:
        target = path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 signals a loop this way
        return _reject("symlink_loop", f"{where}: the link points back at itself")
    except OSError as err:
        if err.errno == errno.ELOOP:
            return _reject("symlink_loop", f"{where}: the link points back at itself")
        return _reject("symlink_broken", f"{where}: the target does not exist")
    if target.is_dir() and (target == root or root in target.parents or target in seen):
        return _reject("symlink_into_tree", f"{where}: a folder link back into the dataset would read its images "
                                            f"twice (or forever); not followed")
    return None


def _relative_id(path: Path, root: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # os.listdir gives undecodable bytes as lone surrogates
        return False
    return True


def _printable(text: str | os.PathLike) -> str:
    """A name as valid UTF-8: undecodable bytes shown as \\xNN escapes (lossless for display)."""
    return os.fsencode(text).decode("utf-8", "backslashreplace")


def _read_text_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path} is not a UTF-8 text file ({error}); is it the RAF-DB label file?") from error


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_zero_label(text: str, class_map: dict[str, int]) -> bool:
    text = text.strip()
    return _is_ascii_int(text) and int(text) == 0 and str(int(text)) not in class_map
