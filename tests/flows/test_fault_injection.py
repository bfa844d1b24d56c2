"""kill -9 at seeded random write steps of `prepare` and `expand`, resume, and get the uninterrupted output.

The kill comes from the documented test hook manifests.atomic.FAULT_ENV: the CLI process SIGKILLs itself
at the Nth write step (a shard member added, a temp file written, a file renamed into place), counted
across processes. The runs are chained on one output folder: each killed run is resumed by the next,
which is killed at a later step, until a last run completes. Subprocesses talk to the session's Prefect
test server (no server start per process).
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from manifests.atomic import FAULT_ENV
from manifests.reader import read_manifest, read_rejects, verify

ROOT = Path(__file__).resolve().parents[2]
KILLS = 10


def _env(kill_at: int, counter: Path) -> dict:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, FAULT_ENV: f"{kill_at}:{counter}", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if PREFECT_API_URL.value():
        env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    return env


def _run(args: list[str], kill_at: int, counter: Path) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=_env(kill_at, counter),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything the killed CLI left behind
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _comparable(out: Path) -> list[dict]:
    return sorted((dict(r, run_id=None) for r in read_manifest(out).to_pylist()), key=lambda r: r["sample_id"])


def _shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "shards").rglob("*.tar"))}


def _kill_and_resume(args_for, tmp_path: Path, seed: int, monkeypatch) -> tuple[list[str], Path, Path]:
    """An uninterrupted run (in this process, counting its write steps), then KILLS chained killed runs and a
    last one that completes, all on one output folder."""
    from flows.cli import main

    clean, killed = tmp_path / "clean", tmp_path / "killed"
    counter = tmp_path / "count-clean"
    import torch

    threads = torch.get_num_threads()
    with monkeypatch.context() as patch:
        patch.setenv(FAULT_ENV, f"0:{counter}")  # step 0 never comes: count only
        torch.set_num_threads(1)  # as the killed runs (OMP_NUM_THREADS=1): CPU convolutions round per thread count
        try:
            assert main(args_for(clean)) == 0
        finally:
            torch.set_num_threads(threads)
    steps = int(counter.read_text())
    assert steps >= KILLS + 2
    rng = random.Random(seed)
    points = sorted(rng.sample(range(1, steps + 1), KILLS))
    counter = tmp_path / "count-killed"
    for point in points:
        result = _run(args_for(killed), point, counter)
        assert result.returncode == -signal.SIGKILL, (point, result.returncode, result.stderr[-3000:])
        assert not verify(killed).errors or not (killed / "manifest").is_dir(), verify(killed).summary()
    final = _run(args_for(killed), 0, counter)
    assert final.returncode == 0, final.stderr[-3000:]
    names = [line.split(" ", 1)[1] for line in Path(f"{counter}.killed").read_text().splitlines()]
    assert len(names) == KILLS
    return names, clean, killed


def _assert_same_output(clean: Path, killed: Path) -> None:
    report = verify(killed)
    assert report.ok, report.summary()
    assert _comparable(killed) == _comparable(clean)
    assert _shard_bytes(killed) == _shard_bytes(clean)
    strip = lambda t: sorted(tuple(r.values()) for r in t.to_pylist())  # noqa: E731
    assert strip(read_rejects(killed)) == strip(read_rejects(clean))
    assert not (killed / ".singanimation.lock").exists()


def _between_shard_and_part(name: str) -> bool:
    """Steps after a shard is renamed into place and before its unit's manifest part is."""
    return name.startswith(("renamed train/", "renamed test/", "written rejects/", "renamed rejects/", "written manifest/"))


def test_prepare_killed_at_random_write_steps_resumes_to_the_uninterrupted_output(tiny_folders_dataset, tmp_path, monkeypatch):
    dataset = tiny_folders_dataset
    args_for = lambda out: ["prepare", str(dataset), "--out", str(out), "--align", "none", "--image-size", "32",  # noqa: E731
                            "--unit-size", "2", "--device", "cpu"]
    names, clean, killed = _kill_and_resume(args_for, tmp_path, seed=20261203, monkeypatch=monkeypatch)
    assert any(n.startswith("member ") for n in names), names          # inside a shard write
    assert any(_between_shard_and_part(n) for n in names), names      # between shard rename and manifest part
    _assert_same_output(clean, killed)
    assert read_manifest(killed).num_rows == 12 and "corrupt_image" in str(read_rejects(killed).to_pylist())


def test_expand_killed_at_random_write_steps_resumes_to_the_uninterrupted_output(synthetic_prepared, tmp_path, monkeypatch):
    prepared = tmp_path / "prepared"
    shutil.copytree(synthetic_prepared, prepared)
    args_for = lambda out: ["expand", str(prepared), "--out", str(out), "--plan", "none", "-M", "1",  # noqa: E731
                            "--singan-preset", "tiny", "--singan-start", "N-1", "--unit-size", "1", "--seed", "5",
                            "--device", "cpu"]
    names, clean, killed = _kill_and_resume(args_for, tmp_path, seed=20261204, monkeypatch=monkeypatch)
    assert any(n.startswith("member ") for n in names), names
    assert any(_between_shard_and_part(n) for n in names), names
    _assert_same_output(clean, killed)
