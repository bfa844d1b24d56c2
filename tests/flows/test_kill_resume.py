"""Kill the expand process at random points (SIGKILL, whole process group), then resume: nothing lost or duplicated."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from flows.expand import ExpandSettings, PlanSettings, expand
from manifests.reader import read_manifest, verify

ROOT = Path(__file__).resolve().parents[2]


def _cli(prepared, ganimation, out) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "expand", str(prepared), "--out", str(out), "--ganimation", ganimation,
            "--plan", "emotion", "--per-source", "2", "-M", "2", "--singan-preset", "tiny", "--singan-start", "N-1",
            "--bank-size", "2", "--unit-size", "1", "--seed", "3", "--device", "cpu"]


def _parts(out: Path) -> int:
    return len(list((out / "manifest").glob("part-*.parquet"))) if (out / "manifest").is_dir() else 0


def _kill_after_parts(cmd, out: Path, parts: int, extra_s: float, deadline_s: float = 240.0) -> bool:
    """Start the CLI; once `parts` units are committed, wait extra_s and SIGKILL its process group.

    Returns False when the run finished before it could be killed.
    """
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    start = time.monotonic()
    try:
        while _parts(out) < parts and proc.poll() is None and time.monotonic() - start < deadline_s:
            time.sleep(0.05)
        time.sleep(extra_s)
        if proc.poll() is not None:
            return False
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        return True
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_killed_runs_resume_to_the_uninterrupted_manifest(synthetic_prepared, tiny_ganimation, tmp_path):
    out = tmp_path / "killed"
    cmd = _cli(synthetic_prepared, tiny_ganimation, out)
    rng = random.Random(20261125)
    committed: dict[str, dict] = {}
    kills = 0
    for target_parts in (1, 3, 4):  # 6 units in all (4 train + 2 test sources, one per unit)
        if not _kill_after_parts(cmd, out, target_parts, extra_s=rng.uniform(0.0, 1.5)):
            break
        kills += 1
        rows = {r["sample_id"]: r for r in read_manifest(out).to_pylist()}
        report = verify(out)
        assert not report.errors, report.summary()  # orphans/leftovers of the killed unit are allowed here
        assert set(committed) <= set(rows), "a committed sample disappeared after a kill"
        committed = rows
    assert kills >= 2
    finished = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    report = verify(out)
    assert report.ok, report.summary()
    final = read_manifest(out).to_pylist()
    ids = [r["sample_id"] for r in final]
    assert len(ids) == len(set(ids)) and set(committed) <= set(ids)

    clean = tmp_path / "clean"
    expand(ExpandSettings(prepared=str(synthetic_prepared), out=str(clean), ganimation=tiny_ganimation,
                          plan=PlanSettings(kind="emotion", per_source=2), regenerations=2, singan_preset="tiny",
                          singan_start="N-1", bank_size=2, unit_size=1, seed=3, device="cpu"))
    strip = lambda rows: sorted((({k: v for k, v in r.items() if k != "run_id"}) for r in rows), key=lambda r: r["sample_id"])
    assert strip(final) == strip(read_manifest(clean).to_pylist())
