"""`python -m bench --smoke` still runs and prints every figure (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
FIGURES = (
    "per_message_vs_floor",
    "peer_sdk_vs_ours",
    "azurite_ceiling",
    "end_to_end_c1",
    "end_to_end_c4",
    "end_to_end_c16",
    "end_to_end_c24",
    "end_to_end_c32",
    "token_fetches",
    "rss_growth",
    "import_time_vs_deps",
)

pytestmark = pytest.mark.integration


@pytest.mark.timeout(300)
def test_smoke_bench_exits_zero_and_prints_every_figure(tmp_path: Path) -> None:
    """The smoke run exits 0, prints each figure's row and writes results.json with the same figures."""
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--output", str(tmp_path)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=290,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    for name in FIGURES:
        assert name in rows, f"{name} missing from:\n{result.stdout}"
    written = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert {figure["name"] for figure in written["figures"]} == set(FIGURES)
