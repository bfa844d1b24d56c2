"""Fan expand work units out to two Prefect process workers (one per "GPU") and check the result.

Starts a local Prefect server on 127.0.0.1, a `gpu-local` process work pool with two workers
(CUDA_VISIBLE_DEVICES=0 and 1), registers the per-unit deployment from this checkout, runs the expand
flow with fanout="deployment", and compares its manifest with a single-process run of the same settings:
same rows, nothing lost, nothing duplicated. Everything stays on this machine.

    .venv/bin/python scripts/fanout_two_workers.py [--workdir /tmp/fanout] [--port 4299]

Exit code 0 when the two manifests match and `verify` passes on both.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POOL = "gpu-local"


def _wait_for(url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s")


def _start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/singanimation-fanout")
    parser.add_argument("--port", type=int, default=4299)
    args = parser.parse_args()

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    (work / "logs").mkdir(parents=True)
    api = f"http://127.0.0.1:{args.port}/api"
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(work / "prefect-home"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONPATH": str(ROOT)}
    prefect = str(Path(sys.executable).with_name("prefect"))
    procs: list[subprocess.Popen] = []
    try:
        # 1. A local Prefect server and a process work pool with two workers, one per GPU.
        procs.append(_start([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(args.port)], env,
                            work / "logs" / "server.log"))
        _wait_for(f"{api}/health")
        subprocess.run([prefect, "work-pool", "create", POOL, "--type", "process"], env=env, check=True, cwd=ROOT,
                       capture_output=True)
        subprocess.run([prefect, "global-concurrency-limit", "create", "gpu", "--limit", "2"], env=env, check=True,
                       cwd=ROOT, capture_output=True)
        for gpu in (0, 1):
            procs.append(_start([prefect, "worker", "start", "--pool", POOL, "--type", "process", "--name", f"gpu{gpu}",
                                 "--limit", "1"],
                                {**env, "CUDA_VISIBLE_DEVICES": str(gpu)}, work / "logs" / f"worker{gpu}.log"))

        # 2. Data and the per-unit deployment, then the fanned-out run and a single-process run.
        code = f"""
import json, sys
sys.path.insert(0, {str(ROOT)!r})
from pathlib import Path
from prefect import flow
from flows.expand import ExpandSettings, PlanSettings, expand
from manifests.reader import read_manifest, verify
sys.path.insert(0, {str(ROOT / "tests" / "flows")!r})
from conftest import write_synthetic_prepared, write_tiny_ganimation

work = Path({str(work)!r})
prepared = write_synthetic_prepared(work / "prepared", train_labels=(4, 4, 7, 5, 1, 6), test_labels=(4, 7))
ganimation = write_tiny_ganimation(work / "ganimation")
flow.from_source(source={str(ROOT)!r}, entrypoint="flows/expand.py:expand_unit_flow").deploy(
    name="expand-unit", work_pool_name={POOL!r}, ignore_warnings=True)
common = dict(prepared=str(prepared), ganimation=ganimation, plan=PlanSettings(kind="emotion", per_source=2),
              regenerations=2, singan_preset="tiny", singan_start="N-1", bank_size=2, unit_size=1, seed=5, device="cpu")
fanned = expand(ExpandSettings(out=str(work / "fanned"), fanout="deployment", **common))
single = expand(ExpandSettings(out=str(work / "single"), **common))
strip = lambda t: sorted(({{k: v for k, v in r.items() if k != "run_id"}} for r in t.to_pylist()), key=lambda r: r["sample_id"])
a, b = strip(read_manifest(work / "fanned")), strip(read_manifest(work / "single"))
ids = [r["sample_id"] for r in a]
print(json.dumps({{"fanned_rows": len(a), "single_rows": len(b), "identical": a == b,
                  "duplicates": len(ids) - len(set(ids)), "verify_fanned": verify(work / "fanned").ok,
                  "verify_single": verify(work / "single").ok}}))
"""
        result = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
        print(result.stdout.strip().splitlines()[-1])
        if result.returncode != 0:
            print(result.stderr[-5000:], file=sys.stderr)
            return 1
        workers = Counter()
        for gpu in (0, 1):
            text = (work / "logs" / f"worker{gpu}.log").read_text()
            workers[f"gpu{gpu}"] = sum("Flow run" in line and "Finished in state Completed" in line
                                       for line in text.splitlines())
        print(f"unit flow runs completed per worker: {dict(workers)}")
        summary = result.stdout.strip().splitlines()[-1]
        ok = '"identical": true' in summary and '"duplicates": 0' in summary and '"verify_fanned": true' in summary
        return 0 if ok else 1
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
