"""Core Tools' local.settings.json (else the sample): the Values the local run, the CLI and bench read."""

from __future__ import annotations

import json
from pathlib import Path

from shared.config.settings import PROJECT_ROOT
from shared.contract.errors import ConfigurationError

LOCAL_SETTINGS_FILES = ("local.settings.json", "local.settings.sample.json")


def local_settings_values(root: Path = PROJECT_ROOT) -> tuple[Path | None, dict[str, str]]:
    """The `Values` of local.settings.json, else of local.settings.sample.json (Core Tools' file), as strings."""
    for name in LOCAL_SETTINGS_FILES:
        path = root / name
        if not path.is_file():
            continue
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigurationError(name, f"unreadable ({type(exc).__name__}: {exc})") from exc
        values = document.get("Values") if isinstance(document, dict) else None
        if not isinstance(values, dict):
            raise ConfigurationError(name, "Values must be an object")
        return path, {str(k): "" if v is None else str(v) for k, v in values.items()}
    return None, {}
