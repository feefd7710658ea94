"""`python -m bench --smoke` still runs and prints every figure (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
INCIDENT_FIGURES = (
    "incident_accept",
    "kill_switch_1000",
    "kill_switch_plan_10000",
    "sweep_1000",
    "enqueue_file_1000",
)
FIGURES = (
    "per_message_vs_floor",
    "peer_sdk_vs_ours",
    "azurite_ceiling",
    "end_to_end_c1",
    "end_to_end_c4",
    "end_to_end_c16",
    "end_to_end_c24",
    "end_to_end_c32",
    *INCIDENT_FIGURES,
    "token_fetches",
    "rss_growth",
    "import_time_vs_deps",
)

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class SmokeRun:
    """One smoke run: its process result and what it wrote."""

    result: subprocess.CompletedProcess[str]
    output: Path

    def figures(self) -> dict[str, dict[str, Any]]:
        """results.json's figures by name."""
        written = json.loads((self.output / "results.json").read_text(encoding="utf-8"))
        return {figure["name"]: figure for figure in written["figures"]}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> SmokeRun:
    """The smoke bench, run once for every test here."""
    output = tmp_path_factory.mktemp("bench")
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--output", str(output)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    return SmokeRun(result, output)


@pytest.mark.timeout(420)
def test_smoke_bench_exits_zero_and_prints_every_figure(smoke: SmokeRun) -> None:
    """The smoke run exits 0, prints each figure's row and writes results.json with the same figures."""
    assert smoke.result.returncode == 0, smoke.result.stdout + smoke.result.stderr
    rows = {line.split()[0] for line in smoke.result.stdout.splitlines() if line.strip()}
    for name in FIGURES:
        assert name in rows, f"{name} missing from:\n{smoke.result.stdout}"
    assert set(smoke.figures()) == set(FIGURES)


@pytest.mark.timeout(420)
@pytest.mark.parametrize("name", INCIDENT_FIGURES)
def test_smoke_bench_measures_each_incident_figure(smoke: SmokeRun, name: str) -> None:
    """Each incident figure gets a value and a verdict against its target."""
    assert smoke.result.returncode == 0, smoke.result.stderr
    figure = smoke.figures()[name]

    assert figure["value"] is not None, figure
    assert figure["met"] is not None, figure


@pytest.mark.timeout(420)
def test_smoke_bench_incident_accept_made_no_batch_call(smoke: SmokeRun) -> None:
    """docs/CONTRACT.md §9: opening an incident calls no Batch API; the figure counts the emulator's requests."""
    assert smoke.result.returncode == 0, smoke.result.stderr
    figure = smoke.figures()["incident_accept"]

    assert figure["extra"]["batch_requests"] == 0, figure
    assert figure["extra"]["incidents"] == figure["extra"]["requests"], figure
    assert "Batch requests during the POSTs: 0" in figure["detail"]


@pytest.mark.timeout(420)
def test_smoke_bench_plan_makes_the_bare_loops_calls(smoke: SmokeRun) -> None:
    """docs/CONTRACT.md §10: the plan lists each thing once and reads each pool once, as the bare loop does."""
    assert smoke.result.returncode == 0, smoke.result.stderr
    figure = smoke.figures()["kill_switch_plan_10000"]

    assert figure["extra"]["requests"] == figure["extra"]["bare_requests"], figure
    assert set(figure["extra"]["requests"]) == {"job.list", "jobschedule.list", "pool.get"}, figure


@pytest.mark.timeout(420)
def test_smoke_bench_plots_the_sweep_and_the_incident_figures(smoke: SmokeRun) -> None:
    """throughput.png is written (matplotlib is a bench requirement)."""
    assert smoke.result.returncode == 0, smoke.result.stderr

    assert (smoke.output / "throughput.png").stat().st_size > 0
