"""Figure 4b: import time of terminate_job against importing its dependencies alone, in fresh interpreters."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.harness import Figure

PROJECT_ROOT = Path(__file__).resolve().parent.parent
OWN_PACKAGES = ("terminate_job", "shared", "bench", "local", "tests")
IMPORT_TARGET = 1.1

# Lists, in import order, the modules `import terminate_job` brings in that are not the project's own.
_PROBE = """
import json, sys
before = set(sys.modules)
import terminate_job
own = {own!r}
print(json.dumps([m for m in sys.modules if m not in before and m.split(".")[0] not in own]))
"""

_TIME_FUNCTION = """
import time
started = time.perf_counter()
import terminate_job
print(time.perf_counter() - started)
"""

_TIME_DEPENDENCIES = """
import importlib, json, sys, time
names = json.loads(sys.stdin.read())
started = time.perf_counter()
for name in names:
    try:
        importlib.import_module(name)
    except Exception:
        pass  # aliases some packages put in sys.modules (e.g. six.moves) are not importable by name
print(time.perf_counter() - started)
"""


def _python(code: str, stdin: str = "", pycache: str | None = None) -> str:
    """Run code in a fresh interpreter of this venv from the project root; its stdout."""
    env = dict(os.environ)
    if pycache is not None:
        # Every module's bytecode cached in one place, ours included, as after a first start; the tree stays clean.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = pycache
    result = subprocess.run(
        [sys.executable, "-c", code],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env=env,
        check=True,
        timeout=120,
    )
    return result.stdout.strip()


def dependencies(pycache: str | None = None) -> list[str]:
    """The third-party and standard-library modules importing terminate_job loads, in load order."""
    return list(json.loads(_python(_PROBE.format(own=OWN_PACKAGES), pycache=pycache)))


def import_time(repetitions: int) -> Figure:
    """Median import time of terminate_job over that of its dependencies alone, alternating fresh processes."""
    function_times: list[float] = []
    dependency_times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-pycache-") as pycache:
        names = dependencies(pycache)  # also writes every module's bytecode, ours included
        payload = json.dumps(names)
        for index in range(repetitions):
            runs = [("f", _TIME_FUNCTION, ""), ("d", _TIME_DEPENDENCIES, payload)]
            if index % 2:
                runs.reverse()
            for kind, code, stdin in runs:
                seconds = float(_python(code, stdin, pycache))
                (function_times if kind == "f" else dependency_times).append(seconds)
    function_ms = statistics.median(function_times) * 1000
    dependency_ms = statistics.median(dependency_times) * 1000
    ratio = function_ms / dependency_ms
    return Figure(
        "import_time_vs_deps",
        ratio,
        "x",
        f"<= {IMPORT_TARGET}x",
        ratio <= IMPORT_TARGET,
        f"import terminate_job {function_ms:.0f} ms, its {len(names)} dependency modules alone {dependency_ms:.0f} ms"
        f" (median of {repetitions} fresh interpreters each, bytecode cached)",
        {"function_ms": function_ms, "dependencies_ms": dependency_ms, "modules": len(names)},
    )
