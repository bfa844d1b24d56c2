"""Prefect flows and the `singanimation` CLI."""
from flows._env import configure_environment

configure_environment()
