"""local.functions: function folders read as the host indexes them and entry points loaded as the worker loads them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import alert_terminate
import sweep_jobs
import terminate_job
from local.functions import FunctionFolder, FunctionLoadError, function_folders, resolve_settings, setting_name
from shared.config.settings import PROJECT_ROOT


def make_function(root: Path, name: str, document: object, files: dict[str, str] | None = None) -> Path:
    """A function folder under root with this function.json and these source files."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "function.json").write_text(json.dumps(document) if not isinstance(document, str) else document)
    for relative, text in (files or {"__init__.py": "def main(msg):\n    return msg\n"}).items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


QUEUE_BINDING = {"name": "msg", "type": "queueTrigger", "direction": "in", "queueName": "%Q%", "connection": "S"}


def test_the_app_functions_are_found_by_trigger_type() -> None:
    by_type = {f.name: f.trigger_type for f in function_folders()}
    assert by_type["terminate_job"] == "queueTrigger"
    assert by_type["alert_terminate"] == "httpTrigger"
    assert by_type["sweep_jobs"] == "timerTrigger"
    assert by_type["keep_poison"] == "timerTrigger"
    assert [f.name for f in function_folders(trigger_type="timerTrigger")] == ["keep_poison", "sweep_jobs"]


def test_the_app_entry_points_are_the_modules_main() -> None:
    folders = {f.name: f for f in function_folders()}
    assert folders["terminate_job"].load_entry_point() is terminate_job.main
    assert folders["alert_terminate"].load_entry_point() is alert_terminate.main
    assert folders["sweep_jobs"].load_entry_point() is sweep_jobs.main
    assert folders["terminate_job"].script_file == (PROJECT_ROOT / "terminate_job" / "__init__.py").resolve()


def test_script_file_and_entry_point_are_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_function(
        tmp_path,
        "custom_fn",
        {"scriptFile": "handlers.py", "entryPoint": "run", "bindings": [QUEUE_BINDING]},
        {"__init__.py": "", "handlers.py": "def run(msg):\n    return ('run', msg)\n"},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    function = FunctionFolder.read(folder)

    assert function.module_name() == "custom_fn.handlers"
    assert function.trigger_handler()("m") == ("run", "m")


def test_the_trigger_value_is_passed_by_its_binding_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binding = {**QUEUE_BINDING, "name": "item"}
    folder = make_function(
        tmp_path, "named_fn", {"bindings": [binding]}, {"__init__.py": "def main(*, item):\n    return item\n"}
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    assert FunctionFolder.read(folder).trigger_handler()("value") == "value"


@pytest.mark.parametrize(
    ("document", "files", "problem"),
    [
        ("{not json", None, "is not readable JSON"),
        ({"bindings": "x"}, None, "no list of binding objects"),
        ({"scriptFile": "run.js", "bindings": [QUEUE_BINDING]}, {"run.js": ""}, "invalid Python filename"),
        ({"scriptFile": "../../elsewhere.py", "bindings": [QUEUE_BINDING]}, None, "is not inside the app folder"),
        ({"entryPoint": "missing", "bindings": [QUEUE_BINDING]}, None, "function missing() is not present"),
        ({"entryPoint": "VALUE", "bindings": [QUEUE_BINDING]}, {"__init__.py": "VALUE = 1\n"}, "VALUE() is not"),
        ({"bindings": [{**QUEUE_BINDING, "name": ""}]}, None, "binding has no name"),
    ],
)
def test_a_function_the_host_would_not_load_names_the_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, document: object, files: dict[str, str] | None, problem: str
) -> None:
    name = f"bad_fn_{abs(hash(problem)) % 10_000}"
    folder = make_function(tmp_path / "app", name, document, files)
    monkeypatch.syspath_prepend(str(tmp_path / "app"))

    with pytest.raises(FunctionLoadError, match=f"^{name}: .*{re.escape(problem)}"):
        FunctionFolder.read(folder).trigger_handler()


def test_disabled_in_function_json_or_by_app_setting(tmp_path: Path) -> None:
    off = FunctionFolder.read(make_function(tmp_path, "off_fn", {"disabled": True, "bindings": [QUEUE_BINDING]}))
    on = FunctionFolder.read(make_function(tmp_path, "on_fn", {"bindings": [QUEUE_BINDING]}))

    assert off.is_disabled({})
    assert not on.is_disabled({})
    assert on.is_disabled({"AzureWebJobs.on_fn.Disabled": "true"})
    assert not on.is_disabled({"AzureWebJobs.on_fn.Disabled": "false"})


def test_settings_are_resolved_from_the_environment() -> None:
    assert resolve_settings("%SWEEP_SCHEDULE%", {"SWEEP_SCHEDULE": "0 */15 * * * *"}) == "0 */15 * * * *"
    assert resolve_settings("%SWEEP_SCHEDULE%", {}) == ""
    assert resolve_settings("0 0 * * * *", {}) == "0 0 * * * *"
    assert resolve_settings("%A%-%B%", {"A": "x", "B": "y"}) == "x-y"
    assert setting_name(" %TERMINATE_QUEUE_NAME% ") == "TERMINATE_QUEUE_NAME"
    assert setting_name("%A%-%B%") is None
