"""The training configs shipped with tcae (YAML files beside this module), by name: `tiny`, `fashion`, `b`, ...

Imports nothing heavy, so the command line can list them without importing torch."""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).parent


def list_configs() -> list[str]:
    """The names of the shipped configs (`tcae train NAME`)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
