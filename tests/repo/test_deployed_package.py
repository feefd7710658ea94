"""What Azure gets: the project folder minus `.funcignore` (gitignore syntax, as azd and Core Tools read it).

azd packages a function app's folder minus `.funcignore`, which "follows the standard gitignore syntax" (azd docs,
"Configure service packaging file exclusions"); pathspec's GitIgnoreSpec applies git's own rules to the tree's
files as git lists them (tracked, and untracked files that are not gitignored).
"""

from __future__ import annotations

import subprocess

import pathspec
import pytest

from shared.config.settings import PROJECT_ROOT

ONLY_TOP_LEVEL = {"host.json", "requirements.txt", "shared"}  # beside these: the function folders
NEVER = ("ops", "local", "soak", "bench", "tests")
# What a working tree holds besides git's files: venvs, caches, local settings, build and bench output.
WORKING_TREE_ARTIFACTS = (
    ".venv/bin/python",
    ".venv",  # in a git worktree: a symlink to the main tree's venv, a file that `.venv/` would not match
    "node_modules",
    ".venv-infra/bin/checkov",
    "node_modules/.bin/azurite-queue",
    "local.settings.json",
    ".azurite/__azurite_db_queue__.json",
    "shared/__pycache__/errors.cpython-311.pyc",
    "terminate_job/__pycache__/__init__.cpython-311.pyc",
    ".pytest_cache/v/cache/lastfailed",
    ".mypy_cache/3.11/shared/errors.data.json",
    ".ruff_cache/CACHEDIR.TAG",
    ".hypothesis/examples/x",
    "batch_terminator.egg-info/PKG-INFO",
    "bench/results.json",
    "bench/throughput.png",
    ".funcignore",
)


def funcignore() -> pathspec.GitIgnoreSpec:
    """The project's .funcignore with gitignore semantics."""
    return pathspec.GitIgnoreSpec.from_lines((PROJECT_ROOT / ".funcignore").read_text(encoding="utf-8").splitlines())


def tree_files() -> list[str]:
    """The project's files as git lists them: tracked, and untracked ones that are not gitignored."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode("utf-8")
    return [path for path in listed.split("\0") if path and (PROJECT_ROOT / path).exists()]


def deployed(paths: list[str]) -> list[str]:
    """The paths .funcignore lets through."""
    spec = funcignore()
    return [path for path in paths if not spec.match_file(path)]


def function_folders(paths: list[str]) -> set[str]:
    """Top-level folders holding a function.json: the functions of the v1 programming model."""
    return {path.split("/")[0] for path in paths if path.count("/") == 1 and path.endswith("/function.json")}


def test_the_package_is_host_json_requirements_the_functions_and_shared() -> None:
    files = tree_files()
    functions = function_folders(files)
    assert "terminate_job" in functions
    package = deployed(files)
    assert {path.split("/")[0] for path in package} == ONLY_TOP_LEVEL | functions


@pytest.mark.parametrize("folder", NEVER)
def test_tooling_is_not_deployed(folder: str) -> None:
    assert [path for path in deployed(tree_files()) if path.startswith(f"{folder}/")] == []


def test_every_file_of_the_functions_and_shared_is_deployed() -> None:
    files = tree_files()
    keep = ("shared", *function_folders(files))
    wanted = [path for path in files if path.startswith(tuple(f"{folder}/" for folder in keep))]
    assert wanted
    assert [path for path in wanted if path not in deployed(wanted)] == []


@pytest.mark.parametrize("path", WORKING_TREE_ARTIFACTS)
def test_working_tree_artifacts_are_not_deployed(path: str) -> None:
    assert funcignore().match_file(path)
