"""What every flow run does first: check its inputs, lock its output, record its settings (refusing to mix runs)."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Iterator

from pydantic import BaseModel

from manifests.atomic import atomic_write_text
from manifests.schema import stable_hash

RUN_CONFIG = "run_config.json"
LOCK_FILE = ".singanimation.lock"


class ConfigMismatch(RuntimeError):
    """The output root holds a run made with different settings."""


class StartError(ValueError):
    """The run cannot start: an input is missing or of the wrong kind. Raised before anything is written."""


class OutputLocked(RuntimeError):
    """Another live run holds the output root's lock."""


def require_dir(path: str | None, what: str, hint: str) -> Path:
    """`path` as an existing folder, or StartError saying which option is wrong and what to give."""
    if path is None:
        raise StartError(f"{what} is missing: {hint}")
    p = Path(path)
    if not p.exists():
        raise StartError(f"{what} {path} does not exist: {hint}")
    if not p.is_dir():
        raise StartError(f"{what} {path} is not a folder: {hint}")
    return p


def require_file_or_dir(path: str, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise StartError(f"{what} {path} does not exist: check the path")
    return p


def refuse_out_inside(out: str, root: str, what: str) -> None:
    """An output root inside an input tree would make its files part of that input."""
    out_r, root_r = Path(out).resolve(), Path(root).resolve()
    if out_r == root_r or root_r in out_r.parents:
        raise StartError(f"--out {out} is inside the {what} {root}: its shards and manifest would become part of "
                         f"the {what}; choose an --out outside it")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


@contextlib.contextmanager
def output_lock(out: str, flow_name: str) -> Iterator[Path]:
    """Hold OUT/.singanimation.lock for the run: a second run on the same output is refused, naming the holder.

    The lock file is created whole (written to a temp name, then hard-linked into place, which fails when
    it exists). A lock whose pid is dead on this host (a run killed with SIGKILL, a crashed machine) is stale:
    it is replaced. A lock from another host cannot be checked from here and is refused with its details.
    """
    out_path = Path(out)
    out_path.mkdir(parents=True, exist_ok=True)
    lock = out_path / LOCK_FILE
    host = socket.gethostname()
    holder = {"pid": os.getpid(), "host": host, "flow": flow_name,
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tmp = out_path / f".tmp-lock.{os.getpid()}"
    tmp.write_text(json.dumps(holder))
    try:
        for _ in range(3):
            try:
                os.link(tmp, lock)
                break
            except FileExistsError:
                try:
                    other = json.loads(lock.read_text())
                except FileNotFoundError:
                    continue  # released between our link and our read: try again
                except (OSError, ValueError):
                    other = {}
                pid, other_host = other.get("pid"), other.get("host")
                if isinstance(pid, int) and other_host == host and not _pid_alive(pid):
                    lock.unlink(missing_ok=True)  # stale: its run is gone
                    continue
                raise OutputLocked(
                    f"{out} is in use by another run ({other.get('flow', '?')} pid {pid} on host {other_host}, "
                    f"started {other.get('started', '?')}); wait for it to finish, or, if that run is gone, "
                    f"delete {lock} and re-run") from None
        else:
            raise OutputLocked(f"could not take the lock {lock} (it keeps changing); re-run")
    finally:
        tmp.unlink(missing_ok=True)
    try:
        yield lock
    finally:
        try:
            if json.loads(lock.read_text()).get("pid") == os.getpid():
                lock.unlink()
        except (OSError, ValueError):
            pass


def settings_hash(settings: BaseModel, exclude: set[str] | dict) -> str:
    """Hash of what decides the output; fields in `exclude` (device, paths) do not change it."""
    return stable_hash(settings.model_dump(mode="json", exclude=exclude), 16)


def write_run_config(out: str, flow_name: str, settings: BaseModel, config_hash: str) -> None:
    """Write OUT/run_config.json before any work; a re-run must bring the same config hash."""
    out_path = Path(out)
    out_path.mkdir(parents=True, exist_ok=True)
    path = out_path / RUN_CONFIG
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous.get("flow") != flow_name or previous.get("config_hash") != config_hash:
            raise ConfigMismatch(
                f"{out} was written by {previous.get('flow')!r} with other settings (config "
                f"{previous.get('config_hash')} vs {config_hash}); resuming needs the same settings: "
                "use another --out, or delete the folder to start over")
        return
    atomic_write_text(json.dumps({"flow": flow_name, "config_hash": config_hash,
                                  "settings": settings.model_dump(mode="json")}, indent=2), path)


def record_inputs(out: str, fingerprint: str, n_sources: int) -> str | None:
    """Store the inputs' fingerprint in OUT/run_config.json; return the one the previous run stored (or None).

    The fingerprint (tasks.ingest.inputs_fingerprint) is not part of the config hash: a dataset that grew or was
    edited is an incremental update of the same run (see tasks.prepare.plan_units), not other settings.
    """
    path = Path(out) / RUN_CONFIG
    config = json.loads(path.read_text())
    previous = (config.get("inputs") or {}).get("fingerprint")
    if previous != fingerprint:
        config["inputs"] = {"fingerprint": fingerprint, "sources": n_sources, "previous_fingerprint": previous}
        atomic_write_text(json.dumps(config, indent=2), path)
    return previous


def current_run_id() -> str:
    """The Prefect flow run id when inside a flow run, else a fresh uuid."""
    from prefect.runtime import flow_run

    return str(flow_run.id or uuid.uuid4())


def publish_report(markdown: str, key: str) -> None:
    """Attach a report to the flow run in the Prefect UI (best effort: a report never fails a run)."""
    from prefect import get_run_logger

    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(markdown=markdown, key=key, description=f"{key} run report")
    except Exception as exc:  # depends on the Prefect backend
        get_run_logger().warning(f"could not publish the {key} artifact: {exc}")
