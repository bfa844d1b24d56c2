"""Bad-input corpus, output/CLI side: CLI misuse, damaged outputs, bad checkpoints, bad expand inputs.

Every input is generated at test time. Each kind asserts the exact refusal message (one line on stderr,
exit code 2 for usage errors, 1 for a failed run) or the exact reject reason, and, where the run goes on,
that the good items are written and `verify` passes.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from flows._run import LOCK_FILE, RUN_CONFIG
from flows.cli import explain, main
from manifests.reader import read_manifest, read_rejects, verify

ROOT = Path(__file__).resolve().parents[2]
# --bank-size 1: a SinGAN bank's pixels depend (in the last bits) on which faces share it, so runs that drop a
# source compare equal only when no face shares a bank.
TINY = ["--plan", "none", "-M", "1", "--singan-preset", "tiny", "--singan-start", "N-1", "--unit-size", "1", "--bank-size", "1",
        "--seed", "5", "--device", "cpu"]


class Corpus:
    """What every case may use: a prepared dataset, a tiny checkpoint, a good expand run to copy and damage."""

    def __init__(self, root: Path, prepared: Path, checkpoint: str, expanded: Path):
        self.root, self.prepared, self.checkpoint, self.expanded = root, prepared, checkpoint, expanded
        self.count = 0

    def fresh(self, name: str) -> Path:
        self.count += 1
        return self.root / f"{self.count:03d}-{name}"

    def copy_expanded(self) -> Path:
        out = self.fresh("expanded-copy")
        shutil.copytree(self.expanded, out)
        return out

    def copy_prepared(self) -> Path:
        out = self.fresh("prepared-copy")
        shutil.copytree(self.prepared, out)
        return out


@pytest.fixture(scope="module")
def corpus(synthetic_prepared, tiny_ganimation, tmp_path_factory) -> Corpus:
    root = tmp_path_factory.mktemp("corpus")
    expanded = root / "expanded-good"
    assert main(["expand", str(synthetic_prepared), "--out", str(expanded), *TINY]) == 0
    assert verify(expanded).ok
    return Corpus(root, Path(synthetic_prepared), tiny_ganimation, expanded)


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _parse_error(capsys, argv: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err


def _refused(capsys, argv: list[str], message: str, code: int = 2) -> str:
    """The command exits with `code` and prints exactly one line, which contains `message`."""
    got, _, err = _run(capsys, argv)
    assert got == code, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert message in err, err
    assert "Traceback" not in err
    return err


def _unit_parts(out: Path) -> list[Path]:
    return sorted((out / "manifest").glob("part-*.parquet"))


def _comparable(out: Path) -> list[dict]:
    return sorted((dict(r, run_id=None) for r in read_manifest(out).to_pylist()), key=lambda r: r["sample_id"])


# ---------------------------------------------------------------------------------------------------------
# CLI misuse: refused at parse time, one line, exit code 2, nothing written.

PARSE_ERRORS = {
    "image_size_zero": (["prepare", "d", "--out", "o", "--image-size", "0"],
                        "singanimation prepare: error: argument --image-size: must be >= 1, got 0 "
                        "(see `singanimation prepare --help`)\n"),
    "class_map_unknown_id": (["prepare", "d", "--out", "o", "--class-map", "contempt=9"],
                             "singanimation prepare: error: argument --class-map: 'contempt=9': 9 is not an emotion id "
                             "(1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral) "
                             "(see `singanimation prepare --help`)\n"),
    "class_map_without_id": (["prepare", "d", "--out", "o", "--class-map", "contempt"],
                             "singanimation prepare: error: argument --class-map: expects NAME=ID (e.g. contempt=3), "
                             "got 'contempt' (see `singanimation prepare --help`)\n"),
    "unit_size_not_a_number": (["prepare", "d", "--out", "o", "--unit-size", "many"],
                               "singanimation prepare: error: argument --unit-size: expected a whole number >= 1, got "
                               "'many' (see `singanimation prepare --help`)\n"),
    "attention_range_reversed": (["expand", "p", "--out", "o", "--plan", "none", "--attention-range", "1", "0"],
                                 "singanimation expand: error: --attention-range LO HI needs LO <= HI, got 1 0\n"),
    "attention_range_above_one": (["expand", "p", "--out", "o", "--plan", "none", "--attention-range", "0", "1.5"],
                                  "singanimation expand: error: argument --attention-range: must be in [0, 1], got 1.5 "
                                  "(see `singanimation expand --help`)\n"),
    "min_ssim_two": (["expand", "p", "--out", "o", "--plan", "none", "--min-ssim", "2"],
                     "singanimation expand: error: argument --min-ssim: must be in [-1, 1], got 2 "
                     "(see `singanimation expand --help`)\n"),
    "min_ssim_nan": (["expand", "p", "--out", "o", "--plan", "none", "--min-ssim", "nan"],
                     "singanimation expand: error: argument --min-ssim: must be in [-1, 1], got nan "
                     "(see `singanimation expand --help`)\n"),
    "singan_start_malformed": (["expand", "p", "--out", "o", "--plan", "none", "--singan-start", "N+1"],
                               "singanimation expand: error: argument --singan-start: singan start scale must look like "
                               "'N', 'N-1' or 'N-2', got 'N+1' (see `singanimation expand --help`)\n"),
    "expand_unit_size_zero": (["expand", "p", "--out", "o", "--plan", "none", "--unit-size", "0"],
                              "singanimation expand: error: argument --unit-size: must be >= 1, got 0 "
                              "(see `singanimation expand --help`)\n"),
    "unknown_option": (["verify", "o", "--fast"],
                       "singanimation: error: unrecognized arguments: --fast (see `singanimation --help`)\n"),
}


@pytest.mark.parametrize("kind", sorted(PARSE_ERRORS))
def test_cli_misuse_is_refused_at_parse_time(kind, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv, message = PARSE_ERRORS[kind]
    code, err = _parse_error(capsys, argv)
    assert code == 2 and err == message
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------------------
# Refusals before the run starts: exit code 2, one line, and the --out folder is not touched (bug 4).

def case_singan_set_not_a_number(c: Corpus, capsys):
    out = c.fresh("out")
    _refused(capsys, ["expand", str(c.prepared), "--out", str(out), *TINY, "--singan-set", "iters_per_scale=lots"],
             "singanimation expand: error: invalid option value: --singan-set iters_per_scale=lots: 'lots' is not a "
             "number, true or false\n")
    assert not out.exists()


def case_singan_set_unknown_field(c: Corpus, capsys):
    out = c.fresh("out")
    err = _refused(capsys, ["expand", str(c.prepared), "--out", str(out), *TINY, "--singan-set", "no_such_field=1"],
                   "singanimation expand: error: invalid option value: ")
    assert "no_such_field" in err and not out.exists()


def case_edits_without_checkpoint(c: Corpus, capsys):
    out = c.fresh("out")
    _refused(capsys, ["expand", str(c.prepared), "--out", str(out), "--plan", "emotion", "--editor", "ganimation"],
             "editor 'ganimation' needs a GANimation checkpoint: give `ganimation`, or use the landmark editor")
    assert not out.exists()


def case_prepare_dataset_typo(c: Corpus, capsys):
    out = c.fresh("out")
    missing = c.root / "no-such-dataset"
    _refused(capsys, ["prepare", str(missing), "--out", str(out)],
             f"singanimation prepare: error: the dataset {missing} does not exist: give the dataset root (RAF-DB, "
             "class folders, or the CSV list's folder)\n")
    assert not out.exists()


def case_prepare_dataset_is_a_file(c: Corpus, capsys):
    out, file = c.fresh("out"), c.fresh("file.txt")
    file.write_text("not a dataset")
    _refused(capsys, ["prepare", str(file), "--out", str(out)], f"the dataset {file} is not a folder")
    assert not out.exists()


def case_prepare_aus_typo(c: Corpus, capsys):
    out, dataset = c.fresh("out"), c.fresh("dataset")
    (dataset / "Happiness").mkdir(parents=True)
    _refused(capsys, ["prepare", str(dataset), "--out", str(out), "--aus", str(c.root / "no-such-aus")],
             f"singanimation prepare: error: --aus {c.root / 'no-such-aus'} does not exist: check the path\n")
    assert not out.exists()


def case_expand_prepared_typo(c: Corpus, capsys):
    out, missing = c.fresh("out"), c.root / "no-such-prepared"
    _refused(capsys, ["expand", str(missing), "--out", str(out), *TINY],
             f"singanimation expand: error: the prepared dataset {missing} does not exist: give the --out folder of "
             "`singanimation prepare`\n")
    assert not out.exists()


def case_expand_prepared_is_not_an_output(c: Corpus, capsys):
    out, folder = c.fresh("out"), c.fresh("just-a-folder")
    folder.mkdir()
    _refused(capsys, ["expand", str(folder), "--out", str(out), *TINY],
             f"singanimation expand: error: {folder} is not a prepared output (no manifest/ folder): give the --out "
             "folder of `singanimation prepare`\n")
    assert not out.exists()


def case_expand_prepared_without_originals(c: Corpus, capsys):
    out, folder = c.fresh("out"), c.fresh("empty-prepared")
    (folder / "manifest").mkdir(parents=True)
    _refused(capsys, ["expand", str(folder), "--out", str(out), *TINY],
             f"singanimation expand: error: {folder} holds no prepared originals (run `singanimation prepare` first)\n")
    assert not out.exists()


def case_expand_ganimation_missing(c: Corpus, capsys):
    out, missing = c.fresh("out"), c.root / "no-such-checkpoint"
    _refused(capsys, ["expand", str(c.prepared), "--out", str(out), "--ganimation", str(missing), "--plan", "emotion",
                      "-M", "0", "--device", "cpu"],
             f"singanimation expand: error: --ganimation {missing} does not exist: give a checkpoint folder from "
             "train-ganimation or import-checkpoint\n")
    assert not out.exists()


def case_expand_ganimation_not_a_checkpoint(c: Corpus, capsys):
    out, folder = c.fresh("out"), c.fresh("not-a-checkpoint")
    folder.mkdir()
    _refused(capsys, ["expand", str(c.prepared), "--out", str(out), "--ganimation", str(folder), "--plan", "emotion",
                      "-M", "0", "--device", "cpu"],
             f"singanimation expand: error: --ganimation {folder} cannot be loaded ({folder} is not a checkpoint "
             "(needs config.json and model.safetensors)); give a checkpoint folder from train-ganimation or "
             "import-checkpoint\n")
    assert not out.exists()


def case_expand_ganimation_tensors_damaged(c: Corpus, capsys):
    out, folder = c.fresh("out"), c.fresh("damaged-checkpoint")
    shutil.copytree(c.checkpoint, folder)
    tensors = folder / "model.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:100])
    _refused(capsys, ["expand", str(c.prepared), "--out", str(out), "--ganimation", str(folder), "--plan", "emotion",
                      "-M", "0", "--device", "cpu"],
             "does not match the hash in its config.json (corrupt or edited)); give a checkpoint folder")
    assert not out.exists()


def case_expand_out_inside_prepared(c: Corpus, capsys):
    prepared = c.copy_prepared()
    out = prepared / "expanded"
    _refused(capsys, ["expand", str(prepared), "--out", str(out), *TINY],
             f"singanimation expand: error: --out {out} is inside the prepared dataset {prepared}: its shards and "
             "manifest would become part of the prepared dataset; choose an --out outside it\n")
    assert not out.exists() and verify(prepared).ok


def case_expand_singan_start_beyond_pyramid(c: Corpus, capsys):
    out = c.fresh("out")
    argv = ["expand", str(c.prepared), "--out", str(out), *TINY]
    argv[argv.index("N-1")] = "N-99"
    _refused(capsys, argv, "singanimation expand: error: --singan-start N-99: SinGAN preset 'tiny' at 32 px has scales N=")
    assert not out.exists()


def case_output_locked_by_a_live_run(c: Corpus, capsys):
    out = c.copy_expanded()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": holder.pid, "host": socket.gethostname(), "flow": "expand", "started": "2026-12-03T10:00:00Z"}
        (out / LOCK_FILE).write_text(json.dumps(lock))
        _refused(capsys, ["expand", str(c.prepared), "--out", str(out), *TINY],
                 f"singanimation expand: error: {out} is in use by another run (expand pid {holder.pid} on host "
                 f"{socket.gethostname()}, started 2026-12-03T10:00:00Z); wait for it to finish, or, if that run is "
                 f"gone, delete {out / LOCK_FILE} and re-run\n")
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == holder.pid  # the holder's lock is left alone
    finally:
        holder.kill()
        holder.wait()


def case_output_locked_on_another_host(c: Corpus, capsys):
    out = c.copy_expanded()
    (out / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "gpu-worker-7", "flow": "expand", "started": "x"}))
    _refused(capsys, ["expand", str(c.prepared), "--out", str(out), *TINY],
             "is in use by another run (expand pid 1 on host gpu-worker-7, started x)")


def case_stale_lock_of_a_killed_run_is_replaced(c: Corpus, capsys):
    out = c.copy_expanded()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "flow": "expand"}))
    code, _, err = _run(capsys, ["expand", str(c.prepared), "--out", str(out), *TINY])
    assert code == 0, err
    assert not (out / LOCK_FILE).exists() and verify(out).ok
    assert _comparable(out) == _comparable(c.expanded)


def case_other_settings_on_the_same_out(c: Corpus, capsys):
    out = c.copy_expanded()
    argv = ["expand", str(c.prepared), "--out", str(out), *TINY]
    argv[argv.index("5")] = "6"  # --seed
    err = _refused(capsys, argv, f"singanimation expand: error: {out} was written by 'expand' with other settings (config ")
    assert "resuming needs the same settings: use another --out, or delete the folder to start over" in err


def case_output_not_writable(c: Corpus, capsys):
    out = Path("/sys/singanimation-corpus-out")  # refused even to root
    _refused(capsys, ["expand", str(c.prepared), "--out", str(out), *TINY],
             f"singanimation expand: error: cannot write {out}: Operation not permitted; choose a writable --out "
             "(or fix the folder's permissions) and re-run (traceback in ", code=1)


# ---------------------------------------------------------------------------------------------------------
# Damaged outputs: verify reports FAILED naming the file (exit 1), never a traceback.

def _verify_failed(capsys, out: Path, message: str) -> str:
    code, stdout, err = _run(capsys, ["verify", str(out)])
    assert code == 1 and not err, err
    assert stdout.startswith("FAILED") and message in stdout, stdout
    return stdout


def case_verify_truncated_part(c: Corpus, capsys):
    out = c.copy_expanded()
    part = _unit_parts(out)[0]
    part.write_bytes(part.read_bytes()[:200])
    _verify_failed(capsys, out, f"error: manifest part manifest/{part.name} cannot be read as Parquet (ArrowInvalid: ")


def case_verify_stray_text_part(c: Corpus, capsys):
    out = c.copy_expanded()
    (out / "manifest" / "part-notes.parquet").write_text("my notes about this run\n")
    _verify_failed(capsys, out, "error: manifest part manifest/part-notes.parquet cannot be read as Parquet (ArrowInvalid: ")


def case_verify_part_missing_a_column(c: Corpus, capsys):
    out = c.copy_expanded()
    part = _unit_parts(out)[0]
    pq.write_table(pq.read_table(part).drop(["label"]), part)
    _verify_failed(capsys, out, f"error: manifest part manifest/{part.name} lacks the required column(s) ['label']; "
                                "delete it and re-run the flow to redo that unit")


def case_verify_part_column_of_another_type(c: Corpus, capsys):
    out = c.copy_expanded()
    part = _unit_parts(out)[0]
    table = pq.read_table(part)
    table = table.set_column(table.schema.get_field_index("label"), "label", table.column("label").cast("string"))
    pq.write_table(table, part)
    _verify_failed(capsys, out, f"manifest/{part.name} has columns of the wrong type: label is string, expected int8")


def _rewrite_sidecar(shard: Path, edit) -> str:
    """Change one `.json` member in place (same length, so the PNG offsets stay); return its sample id."""
    data = bytearray(shard.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".json"))
        start, size = member.offset_data, member.size
    blob = edit(bytes(data[start:start + size]))
    assert len(blob) == size
    data[start:start + size] = blob
    shard.write_bytes(bytes(data))
    return member.name.removesuffix(".json")


def case_verify_sidecar_label_flipped(c: Corpus, capsys):
    out = c.copy_expanded()
    shard = sorted((out / "shards" / "train").glob("*.tar"))[0]
    row = {}

    def flip(blob: bytes) -> bytes:
        meta = json.loads(blob)
        row.update(meta)
        return blob.replace(f'"label": {meta["label"]}'.encode(), f'"label": {meta["label"] % 7 + 1}'.encode())

    sid = _rewrite_sidecar(shard, flip)
    _verify_failed(capsys, out, f"{sid}.json says label={row['label'] % 7 + 1}, the manifest says {row['label']}")


def case_verify_sidecar_not_json(c: Corpus, capsys):
    out = c.copy_expanded()
    shard = sorted((out / "shards" / "train").glob("*.tar"))[0]
    sid = _rewrite_sidecar(shard, lambda blob: b"\xff" * len(blob))
    _verify_failed(capsys, out, f"{sid}.json is not JSON")


def case_verify_not_an_output_root(c: Corpus, capsys):
    folder = c.fresh("empty")
    folder.mkdir()
    _verify_failed(capsys, folder, f"error: {folder} has no manifest/ folder: not an output root")


# ---------------------------------------------------------------------------------------------------------
# Resume repairs: an unreadable part, or a part whose shard is missing, is uncommitted; the unit is redone.

def _resume_equals_good_run(c: Corpus, capsys, out: Path) -> None:
    code, _, err = _run(capsys, ["expand", str(c.prepared), "--out", str(out), *TINY])
    assert code == 0, err
    assert verify(out).ok, verify(out).summary()
    assert _comparable(out) == _comparable(c.expanded)


def case_resume_redoes_a_truncated_part(c: Corpus, capsys):
    out = c.copy_expanded()
    part = _unit_parts(out)[1]
    part.write_bytes(part.read_bytes()[:100])
    _resume_equals_good_run(c, capsys, out)


def case_resume_redoes_a_part_missing_a_column(c: Corpus, capsys):
    out = c.copy_expanded()
    part = _unit_parts(out)[0]
    pq.write_table(pq.read_table(part).drop(["sha256"]), part)
    _resume_equals_good_run(c, capsys, out)


def case_resume_redoes_a_unit_whose_shard_is_missing(c: Corpus, capsys):
    out = c.copy_expanded()
    shard = sorted((out / "shards" / "train").glob("*.tar"))[-1]
    shard.unlink()
    _resume_equals_good_run(c, capsys, out)


def case_resume_redoes_a_unit_whose_shard_is_truncated(c: Corpus, capsys):
    out = c.copy_expanded()
    shard = sorted((out / "shards" / "test").glob("*.tar"))[0]
    shard.write_bytes(shard.read_bytes()[:1024])
    _resume_equals_good_run(c, capsys, out)


def case_expand_from_a_prepared_dataset_with_a_damaged_part(c: Corpus, capsys):
    prepared, out = c.copy_prepared(), c.fresh("out")
    part = _unit_parts(prepared)[0]
    part.write_bytes(b"PAR1 not really")
    _refused(capsys, ["expand", str(prepared), "--out", str(out), *TINY],
             f"singanimation expand: error: 1 damaged manifest part(s): {part}: cannot be read as Parquet (ArrowInvalid: ",
             code=1)
    assert not out.exists()


PREPARE_TINY = ["--align", "none", "--image-size", "32", "--unit-size", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def prepared_good(corpus, tiny_folders_dataset):
    out = corpus.fresh("prepared-good")
    assert main(["prepare", str(tiny_folders_dataset), "--out", str(out), *PREPARE_TINY]) == 0
    return out


def _prepare_again_equals(c: Corpus, capsys, dataset: Path, out: Path, good: Path) -> None:
    code, _, err = _run(capsys, ["prepare", str(dataset), "--out", str(out), *PREPARE_TINY])
    assert code == 0, err
    assert verify(out).ok, verify(out).summary()
    assert _comparable(out) == _comparable(good)


def case_prepare_resume_redoes_a_truncated_part(c: Corpus, capsys, prepared_good, tiny_folders_dataset):
    out = c.fresh("prepared")
    shutil.copytree(prepared_good, out)
    part = _unit_parts(out)[0]
    part.write_bytes(part.read_bytes()[:64])
    _prepare_again_equals(c, capsys, tiny_folders_dataset, out, prepared_good)


def case_prepare_resume_redoes_a_unit_whose_shard_is_missing(c: Corpus, capsys, prepared_good, tiny_folders_dataset):
    out = c.fresh("prepared")
    shutil.copytree(prepared_good, out)
    next((out / "shards" / "train").glob("*.tar")).unlink()
    _prepare_again_equals(c, capsys, tiny_folders_dataset, out, prepared_good)


def case_prepare_after_a_refused_start_on_the_same_out(c: Corpus, capsys, prepared_good, tiny_folders_dataset):
    """Bug 4: a typo in the dataset path used to leave run_config.json behind and lock --out to the typo."""
    out = c.fresh("prepared")
    _refused(capsys, ["prepare", str(tiny_folders_dataset) + "-typo", "--out", str(out), *PREPARE_TINY], "does not exist")
    assert not out.exists()
    _prepare_again_equals(c, capsys, tiny_folders_dataset, out, prepared_good)


def case_prepare_locked_output(c: Corpus, capsys, prepared_good, tiny_folders_dataset):
    out = c.fresh("prepared")
    shutil.copytree(prepared_good, out)
    (out / LOCK_FILE).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "flow": "prepare",
                                             "started": "now"}))
    _refused(capsys, ["prepare", str(tiny_folders_dataset), "--out", str(out), *PREPARE_TINY],
             f"singanimation prepare: error: {out} is in use by another run (prepare pid {os.getpid()} on host "
             f"{socket.gethostname()}, started now)")


# ---------------------------------------------------------------------------------------------------------
# Bad expand inputs: a damaged prepared member is a reject naming its source; the run goes on.

def _member_of(prepared: Path, source_id: str) -> dict:
    return next(r for r in read_manifest(prepared).to_pylist() if r["source_id"] == source_id)


def _damage_prepared(prepared: Path) -> dict[str, tuple[str, str]]:
    """Three kinds of damage to three train members of one prepared copy; source id -> (reason, detail)."""
    import pyarrow as pa

    from manifests.schema import sha256_bytes

    expected = {}
    # train/1: bytes flipped inside its PNG (its manifest sha256 no longer matches)
    row = _member_of(prepared, "train/1")
    shard = prepared / row["shard"]
    data = bytearray(shard.read_bytes())
    for i in range(row["offset"] + 40, row["offset"] + 80):
        data[i] ^= 0x5A
    expected["train/1"] = ("prepared_member_corrupt", f"{row['shard']} at byte {row['offset']} ({row['size']} bytes): "
                                                      "bytes do not match the manifest's sha256")
    # train/2: zeros whose hash the manifest agrees with, but not an image (a prepared set written by other tools)
    row = _member_of(prepared, "train/2")
    data[row["offset"]:row["offset"] + row["size"]] = b"\x00" * row["size"]
    part = prepared / "manifest" / "part-train-00000.parquet"  # conftest.write_synthetic_prepared's train unit
    table = pq.read_table(part)
    digests = [sha256_bytes(b"\x00" * row["size"]) if sid == "train/2" else h
               for sid, h in zip(table.column("source_id").to_pylist(), table.column("sha256").to_pylist())]
    pq.write_table(table.set_column(table.schema.get_field_index("sha256"), "sha256", pa.array(digests)), part)
    expected["train/2"] = ("prepared_member_corrupt", "member is not a decodable image")
    # train/3 (the shard's last member): the shard cut short inside it
    last = _member_of(prepared, "train/3")
    assert last["offset"] == max(r["offset"] for r in read_manifest(prepared).to_pylist() if r["shard"] == last["shard"])
    shard.write_bytes(bytes(data[:last["offset"] + 10]))
    expected["train/3"] = ("prepared_member_unreadable",
                           f"wanted {last['size']} bytes at {last['offset']}, got 10 (truncated shard?)")
    return expected


@pytest.fixture(scope="module")
def damaged_prepared_run(corpus):
    """One expand run over a prepared set with three damaged members: (out, expected rejects, exit code)."""
    prepared, out = corpus.copy_prepared(), corpus.fresh("out-damaged")
    expected = _damage_prepared(prepared)
    code = main(["expand", str(prepared), "--out", str(out), *TINY])
    return out, expected, code


def _one_reject(c: Corpus, run, source_id: str) -> None:
    out, expected, code = run
    assert code == 0
    rejects = {r["source_id"]: r for r in read_rejects(out).to_pylist() if r["stage"] == "expand"}
    assert sorted(rejects) == sorted(expected)
    reason, detail = expected[source_id]
    assert rejects[source_id]["reason"] == reason and detail in rejects[source_id]["detail"], rejects[source_id]
    assert verify(out).ok, verify(out).summary()
    # Every good source's samples are written with the clean run's ids, labels, seeds and provenance (shard
    # names differ: unit ids hash the settings, and the prepared path is one of them; a unit holding fewer
    # sources puts members at other offsets, and SinGAN's CPU convolutions may round differently in the
    # last bits from one run to the next, so the regenerated pixels, their hashes and scores are not compared).
    pixels = ("shard", "offset", "size", "sha256", "quality")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in pixels} for r in rows]  # noqa: E731
    good = [r for r in _comparable(c.expanded) if r["source_id"] not in expected]
    assert good and strip(_comparable(out)) == strip(good)


def case_corrupt_prepared_member(c: Corpus, capsys, damaged_prepared_run):
    _one_reject(c, damaged_prepared_run, "train/1")


def case_prepared_member_not_a_png(c: Corpus, capsys, damaged_prepared_run):
    _one_reject(c, damaged_prepared_run, "train/2")


def case_prepared_shard_cut_short(c: Corpus, capsys, damaged_prepared_run):
    _one_reject(c, damaged_prepared_run, "train/3")


# ---------------------------------------------------------------------------------------------------------
# Bad checkpoints through import-checkpoint.

def _official_generator_state() -> dict[str, torch.Tensor]:
    from models.ganimation import GANimationConfig, Generator
    from models.legacy import expected_keys

    config = GANimationConfig(norm_layout="official")
    torch.manual_seed(0)
    ours = Generator(config).state_dict()
    return {published: ours[our].clone() for published, (our, _) in expected_keys("official", "generator", config).items()}


def case_import_empty_file(c: Corpus, capsys):
    path = c.fresh("G.pth")
    path.write_bytes(b"")
    _refused(capsys, ["import-checkpoint", "--format", "official", "--generator", str(path), "--out", str(c.fresh("ck"))],
             f"singanimation import-checkpoint: error: {path} is an empty file (0 bytes): download or copy it again "
             "(traceback in ", code=1)


def case_import_nan_weights(c: Corpus, capsys):
    state = _official_generator_state()
    state["main.0.weight"][0, 0, 0, 0] = float("nan")
    state["main.3.weight"][1, 1, 1, 1] = float("inf")
    path, out = c.fresh("G.pth"), c.fresh("ck")
    torch.save(state, path)
    err = _refused(capsys, ["import-checkpoint", "--format", "official", "--generator", str(path), "--out", str(out)],
                   "wrong shape (2): main.0.weight: 1 NaN/inf value(s); the weights are damaged; main.3.weight: 1 NaN/inf "
                   "value(s); the weights are damaged", code=1)
    assert err.startswith("singanimation import-checkpoint: error: official generator checkpoint")
    assert not out.exists()


def case_import_existing_out_checked_first(c: Corpus, capsys, monkeypatch):
    import models.legacy

    path, out = c.fresh("G.pth"), c.fresh("ck")
    path.write_bytes(b"never read")
    out.mkdir()
    monkeypatch.setattr(models.legacy, "load_published_state_dict", lambda *a: pytest.fail("converted before the --out check"))
    _refused(capsys, ["import-checkpoint", "--format", "official", "--generator", str(path), "--out", str(out)],
             f"singanimation import-checkpoint: error: --out {out} exists; checkpoints are never overwritten: "
             "choose a new folder\n")


def case_import_existing_out_plain_function(c: Corpus, capsys, monkeypatch):
    import models.legacy
    from tasks.ganimation import import_checkpoint

    out = c.fresh("ck")
    out.mkdir()
    monkeypatch.setattr(models.legacy, "load_published_state_dict", lambda *a: pytest.fail("converted before the --out check"))
    with pytest.raises(FileExistsError, match="checkpoints are never overwritten"):
        import_checkpoint("official", "unused.pth", None, out)


def case_import_pickled_code(c: Corpus, capsys):
    path = c.fresh("G.pth")
    torch.save({"main.0.weight": _Payload()}, path)
    err = _refused(capsys, ["import-checkpoint", "--format", "official", "--generator", str(path), "--out", str(c.fresh("ck"))],
                   f"singanimation import-checkpoint: error: cannot read {path} as a weights-only state_dict: the file holds "
                   f"Unsupported global: GLOBAL {__name__}._Payload, not only tensors; this project never unpickles code "
                   "from a checkpoint.", code=1)
    assert "weights_only" not in err and "will likely succeed" not in err


def case_import_generator_missing(c: Corpus, capsys):
    missing = c.root / "no-such-G.pth"
    _refused(capsys, ["import-checkpoint", "--format", "official", "--generator", str(missing), "--out", str(c.fresh("ck"))],
             f"singanimation import-checkpoint: error: --generator {missing} is not a file: check the path\n")


def case_import_junk_bytes(c: Corpus, capsys):
    path = c.fresh("G.pth")
    path.write_bytes(b"\x00junk" * 10)
    _refused(capsys, ["import-checkpoint", "--format", "official", "--generator", str(path), "--out", str(c.fresh("ck"))],
             f"singanimation import-checkpoint: error: cannot read {path} as a weights-only state_dict: ", code=1)


class _Payload:
    pass


# ---------------------------------------------------------------------------------------------------------
# Error mapping: the one-line messages of error types no generated input reaches cheaply.

def case_read_only_output_message(c: Corpus, capsys):
    exc = OSError(30, "Read-only file system")
    exc.filename = "/mnt/ro/out/run_config.json"
    assert explain(exc) == (1, "cannot write /mnt/ro/out/run_config.json: Read-only file system; choose a writable --out "
                               "(or fix the folder's permissions) and re-run")


def case_disk_full_message(c: Corpus, capsys):
    exc = OSError(28, "No space left on device")
    exc.filename = "/data/out/shards/train/.tmp-x.tar"
    assert explain(exc) == (1, "no space left writing /data/out/shards/train/.tmp-x.tar; free some space and re-run to resume")


def case_safetensors_error_message(c: Corpus, capsys):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = c.fresh("model.safetensors")
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad}")
    with pytest.raises(SafetensorError) as info:
        load_file(str(path))
    code, message = explain(info.value)
    assert code == 1 and message.startswith("a checkpoint's model.safetensors cannot be read (") and \
        message.endswith("): the file is damaged; re-create the checkpoint")


def case_arrow_error_message(c: Corpus, capsys):
    import pyarrow as pa

    path = c.fresh("x.parquet")
    path.write_text("nope")
    with pytest.raises(pa.ArrowInvalid) as info:
        pq.read_table(path)
    code, message = explain(info.value)
    assert code == 1 and message.startswith("a Parquet file cannot be read (ArrowInvalid: ")
    assert message.endswith("run `singanimation verify` on the output to find it")


CASES = {name.removeprefix("case_"): fn for name, fn in dict(globals()).items() if name.startswith("case_")}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_bad_input(kind, corpus, capsys, request):
    fn = CASES[kind]
    extra = fn.__code__.co_varnames[2:fn.__code__.co_argcount]  # fixtures a case asks for by name
    fn(corpus, capsys, *(request.getfixturevalue(name) for name in extra))


def test_corpus_has_at_least_25_kinds():
    assert len(CASES) + len(PARSE_ERRORS) >= 25


# ---------------------------------------------------------------------------------------------------------
# A failure inside a flow run: one line on stderr, no Prefect traceback; --debug prints the traceback.

def _rafdb_compound(root: Path) -> Path:
    (root / "EmoLabel").mkdir(parents=True)
    (root / "Image" / "aligned").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("train_00001.jpg 9\ntrain_00002.jpg 11\n")
    return root


@pytest.mark.parametrize("debug", [False, True])
def test_flow_failure_prints_one_line_and_no_prefect_traceback(debug, tmp_path):
    from prefect.settings import PREFECT_API_URL

    dataset, out = _rafdb_compound(tmp_path / "rafdb"), tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if PREFECT_API_URL.value():
        env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    argv = [sys.executable, "-m", "flows.cli", "prepare", str(dataset), "--out", str(out), "--layout", "rafdb",
            *(["--debug"] if debug else [])]
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("singanimation prepare: error: ")]
    assert len(errors) == 1 and "compound" in errors[0].lower(), result.stderr[-3000:]
    assert ("Traceback" in result.stderr) == debug, result.stderr[-3000:]
    assert not (out / RUN_CONFIG).exists()
