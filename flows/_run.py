"""What every flow run does first: record its settings (refusing to mix runs), and name itself."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

from pydantic import BaseModel

from manifests.schema import stable_hash
from manifests.atomic import atomic_write_text

RUN_CONFIG = "run_config.json"


class ConfigMismatch(RuntimeError):
    """The output root holds a run made with different settings."""


def settings_hash(settings: BaseModel, exclude: set[str]) -> str:
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
