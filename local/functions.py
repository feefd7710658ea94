"""The app's function folders as the Functions host and the Python worker read them (v1 model: function.json)."""

from __future__ import annotations

import importlib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.config.settings import PROJECT_ROOT

DEFAULT_SCRIPT_FILE = "__init__.py"  # azure_functions_worker/loader.py _DEFAULT_SCRIPT_FILENAME
DEFAULT_ENTRY_POINT = "main"  # azure_functions_worker/loader.py _DEFAULT_ENTRY_POINT
_SETTING = re.compile(r"%([^%]+)%")

Binding = Mapping[str, Any]


class FunctionLoadError(Exception):
    """A function folder the host would not load; the message names the folder and says why."""


@dataclass(frozen=True)
class FunctionFolder:
    """One function folder: its name, function.json bindings, and where its entry point lives."""

    name: str
    directory: Path
    script_file: Path
    entry_point: str
    bindings: tuple[Binding, ...] = field(repr=False)
    disabled: bool = False

    @classmethod
    def read(cls, directory: Path) -> FunctionFolder:
        """Parse `directory/function.json`; FunctionLoadError when it is not a function the host would index."""
        name = directory.name
        function_json = directory / "function.json"
        try:
            document = json.loads(function_json.read_text(encoding="utf-8-sig"))
        except (OSError, ValueError) as exc:
            raise FunctionLoadError(f"{name}: {function_json.name} is not readable JSON ({exc})") from exc
        if not isinstance(document, dict):
            raise FunctionLoadError(f"{name}: {function_json.name} is not a JSON object")
        bindings = document.get("bindings")
        if not isinstance(bindings, list) or not all(isinstance(b, dict) for b in bindings):
            raise FunctionLoadError(f"{name}: {function_json.name} has no list of binding objects")
        script = str(document.get("scriptFile") or DEFAULT_SCRIPT_FILE)
        return cls(
            name=name,
            directory=directory,
            # The host resolves scriptFile against the function folder and hands the worker the full path.
            script_file=(directory / script).resolve(),
            entry_point=str(document.get("entryPoint") or DEFAULT_ENTRY_POINT),
            bindings=tuple(bindings),
            disabled=document.get("disabled") is True,
        )

    @property
    def trigger(self) -> Binding | None:
        """The trigger binding (type `...Trigger`), if any."""
        return next((b for b in self.bindings if str(b.get("type", "")).endswith("Trigger")), None)

    @property
    def trigger_type(self) -> str | None:
        """The trigger binding's type, e.g. `queueTrigger`."""
        trigger = self.trigger
        return None if trigger is None else str(trigger.get("type"))

    def binding(self, kind: str, direction: str | None = None) -> Binding | None:
        """The first binding of this type (and direction, when given)."""
        return next(
            (
                b
                for b in self.bindings
                if b.get("type") == kind and (direction is None or b.get("direction") == direction)
            ),
            None,
        )

    def is_disabled(self, environ: Mapping[str, str] | None = None) -> bool:
        """Disabled in function.json or by the `AzureWebJobs.<name>.Disabled` app setting, as the host reads it."""
        env = os.environ if environ is None else environ
        return self.disabled or env.get(f"AzureWebJobs.{self.name}.Disabled", "").strip().lower() in ("true", "1")

    def module_name(self) -> str:
        """The module holding the entry point, named as the worker's loader names it (without `__app__.`)."""
        # azure_functions_worker/loader.py load_function: the script path relative to the app root, `.py` only,
        # `__init__` standing for its package. The worker prefixes `__app__.`; the app root is on sys.path too, so
        # the plain name is the same code (and the same module objects the tests and the product import).
        root = self.directory.parent.resolve()
        try:
            relative = self.script_file.relative_to(root)
        except ValueError:
            raise FunctionLoadError(
                f"{self.name}: script path {self.script_file} is not inside the app folder {root}"
            ) from None
        stem, suffix = os.path.splitext(relative.parts[-1])
        if suffix != ".py":
            raise FunctionLoadError(f"{self.name}: invalid Python filename {relative}")
        parts = list(relative.parts[:-1])
        if stem.lower() != "__init__":
            parts.append(stem)
        return ".".join(parts)

    def load_entry_point(self) -> Callable[..., Any]:
        """Import the module and return the entry point (FunctionLoadError when it is missing or not callable)."""
        module = importlib.import_module(self.module_name())
        function = getattr(module, self.entry_point, None)
        if function is None or not callable(function):
            raise FunctionLoadError(f"{self.name}: function {self.entry_point}() is not present in {module.__name__}")
        return function

    def trigger_handler(self) -> Callable[[Any], Any]:
        """Call the entry point with the trigger value on the trigger binding's name, as the worker does."""
        trigger = self.trigger
        if trigger is None:
            raise FunctionLoadError(f"{self.name}: no trigger binding")
        parameter = str(trigger.get("name") or "")
        if not parameter:
            raise FunctionLoadError(f"{self.name}: the {trigger.get('type')} binding has no name")
        function = self.load_entry_point()

        def handler(value: Any) -> Any:
            """Invoke with the trigger bound by name."""
            return function(**{parameter: value})

        handler.__qualname__ = f"{self.name}.{self.entry_point}"
        return handler


def resolve_settings(value: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace each `%NAME%` with the app setting's value (empty when unset), as the host does for bindings."""
    env = os.environ if environ is None else environ
    return _SETTING.sub(lambda match: env.get(match.group(1), ""), value)


def setting_name(value: str) -> str | None:
    """`NAME` when the whole value is one `%NAME%` expression, else None."""
    found = _SETTING.fullmatch(value.strip())
    return found.group(1) if found else None


def function_folders(root: Path = PROJECT_ROOT, trigger_type: str | None = None) -> list[FunctionFolder]:
    """Every function folder under root (one level, as the host indexes them), optionally of one trigger type."""
    folders = [FunctionFolder.read(path.parent) for path in sorted(root.glob("*/function.json"))]
    return [folder for folder in folders if trigger_type is None or folder.trigger_type == trigger_type]


__all__ = [
    "DEFAULT_ENTRY_POINT",
    "DEFAULT_SCRIPT_FILE",
    "FunctionFolder",
    "FunctionLoadError",
    "function_folders",
    "resolve_settings",
    "setting_name",
]
