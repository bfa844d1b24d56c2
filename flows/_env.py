"""Safe defaults for running Prefect on an air-gapped machine, applied before Prefect is imported."""
from __future__ import annotations

import os

_DEFAULTS = {
    # No telemetry: workers and CI have no network beyond package registries.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # The embedded (ephemeral) server takes 5-12 s to start on a busy 2-core machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    # Keep the embedded server's own access logs out of the user's terminal.
    "PREFECT_LOGGING_SERVER_LEVEL": "WARNING",
}


def configure_environment() -> None:
    """Set defaults only: anything the user (or a deployment) configured wins."""
    for key, value in _DEFAULTS.items():
        os.environ.setdefault(key, value)
