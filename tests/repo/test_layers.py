"""The layer rule of shared/ (stated in shared/__init__.py), and no import cycle, read off the code with ast."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import shared

ROOT = Path(__file__).resolve().parents[2]
FUNCTION_FOLDERS = (
    "terminate_job",
    "confirm_termination",
    "alert_terminate",
    "sweep_jobs",
    "keep_poison",
    "kill_switch",
)
TOOLS = ("ops", "local", "soak", "bench", "tests")


def module_name(path: Path, root: Path = ROOT) -> str:
    """The dotted name of a .py file under root."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[tuple[str, int, bool]]:
    """Every module a file imports (type-only and deferred imports included), with its line; False: maybe a name."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, True
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno, True
            for alias in node.names:  # `from shared import wiring` imports the module shared.wiring
                yield f"{node.module}.{alias.name}", node.lineno, False


def own_modules(root: Path = ROOT) -> dict[str, Path]:
    """The project's importable modules (shared/ and the function folders)."""
    found: dict[str, Path] = {}
    for top in ("shared", *FUNCTION_FOLDERS):
        for path in sorted((root / top).rglob("*.py")):
            found[module_name(path, root)] = path
    return found


def layer_of(module: str) -> int | None:
    """The index of a shared module's layer in shared.LAYERS (None outside shared's layers)."""
    for index, names in enumerate(shared.LAYERS):
        if any(module == f"shared.{name}" or module.startswith(f"shared.{name}.") for name in names):
            return index
    return None


def violations(root: Path = ROOT) -> list[str]:
    """Every import that goes up or sideways across the layers, or from the deployed code into a tool."""
    found: list[str] = []
    modules = own_modules(root)
    for module, path in modules.items():
        mine = layer_of(module)
        top = module.split(".")[0]
        for target, line, exact in imports(path):
            if not exact and target not in modules:
                continue
            where = f"{path.relative_to(root)}:{line} imports {target}"
            if exact and target.split(".")[0] in TOOLS:
                found.append(f"{where}: deployed code never imports a tool")
            if top in FUNCTION_FOLDERS and target.startswith("shared.") and layer_of(target) is not None:
                continue  # the function folders sit on top of every layer
            theirs = layer_of(target)
            if mine is None or theirs is None or module.startswith(target):
                continue
            if theirs > mine or (theirs == mine and target.split(".")[1] != module.split(".")[1]):
                found.append(f"{where}: layer {'/'.join(shared.LAYERS[mine])} may not import it")
    return found


def cycles(root: Path = ROOT) -> list[list[str]]:
    """Import cycles among the project's modules (every import counts, type-only ones too)."""
    modules = own_modules(root)
    graph = {
        module: sorted({target for target, _, _ in imports(path) if target in modules and target != module})
        for module, path in modules.items()
    }
    found: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in graph[node]:
            if state.get(target) == 1:
                found.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module)
    return found


def test_shared_imports_only_downward() -> None:
    assert violations() == []


def test_no_import_cycle_in_the_deployed_code() -> None:
    assert cycles() == []


def test_every_shared_module_belongs_to_a_layer() -> None:
    unplaced = [m for m in own_modules() if m.startswith("shared.") and m != "shared" and layer_of(m) is None]
    assert unplaced == []


def test_an_upward_import_is_a_violation(tmp_path: Path) -> None:
    (tmp_path / "shared" / "contract").mkdir(parents=True)
    (tmp_path / "shared" / "__init__.py").write_text("")
    (tmp_path / "shared" / "contract" / "__init__.py").write_text("")
    (tmp_path / "shared" / "contract" / "bad.py").write_text("from shared.services.terminate_job import Terminator\n")
    assert violations(tmp_path) == [
        "shared/contract/bad.py:1 imports shared.services.terminate_job: layer contract may not import it"
    ]


def test_a_sideways_import_between_services_is_a_violation(tmp_path: Path) -> None:
    (tmp_path / "shared" / "services").mkdir(parents=True)
    (tmp_path / "shared" / "services" / "a.py").write_text("import logging\nfrom shared.batch.client import X\n")
    (tmp_path / "shared" / "rules").mkdir(parents=True)
    (tmp_path / "shared" / "rules" / "b.py").write_text("from shared.storage.queues import queue_client\n")
    (tmp_path / "shared" / "storage").mkdir(parents=True)
    (tmp_path / "shared" / "storage" / "c.py").write_text("from shared.batch.client import X\n")
    assert violations(tmp_path) == [
        "shared/storage/c.py:1 imports shared.batch.client: layer batch/storage may not import it"
    ]


@pytest.mark.parametrize("tool", ["ops", "local"])
def test_deployed_code_importing_a_tool_is_a_violation(tmp_path: Path, tool: str) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "wiring.py").write_text(f"from {tool}.x import y\n")
    assert violations(tmp_path) == [f"shared/wiring.py:1 imports {tool}.x: deployed code never imports a tool"]


def test_a_type_only_cycle_is_found(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import shared.b\n"
    )
    (tmp_path / "shared" / "b.py").write_text("def f():\n    from shared.a import x\n")
    assert cycles(tmp_path) == [["shared.a", "shared.b", "shared.a"]]
