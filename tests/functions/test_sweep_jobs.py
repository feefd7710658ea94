"""sweep_jobs: policies over Job - List / Get Task Counts on the Batch emulator, terminate requests on Azurite."""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from azure.functions.timer import TimerRequest

import sweep_jobs
from local.batch_emulator import ODATA_JSON, BatchEmulator, HttpRequest, HttpResponse, JobState
from local.identity import IdentityEndpoint
from shared import wiring
from shared.batch.client import BatchClient
from shared.batch.job_list import BatchReader
from shared.batch.tokens import TokenProvider
from shared.config.settings import Settings
from shared.contract.errors import BatchCallFailed, ConfigurationError
from shared.rules.selection import LIST_PAGE_SIZE
from shared.rules.sweep_policy import SweepPolicy
from shared.wiring import batch_credential, http_session
from tests.conftest import Queues

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SWEEP_SETTINGS = ("SWEEP_MAX_AGE_HOURS", "SWEEP_IDLE_MINUTES", "SWEEP_JOB_ID_PREFIX", "SWEEP_DRY_RUN")


class SweepBatch(BatchEmulator):
    """The emulator, plus what a sweep test needs: short pages, faults on reads, a rewritten nextLink."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.page_size: int | None = None  # Batch may answer fewer jobs than maxresults asked for
        self.list_failures: dict[int, tuple[int, str]] = {}  # Job - List call number (1-based) → error
        self.count_failures: dict[str, tuple[int, str]] = {}  # job id → error for Get Task Counts
        self.next_link_base: str | None = None
        self.list_queries: list[dict[str, str]] = []

    def handle(self, request: HttpRequest) -> HttpResponse | None:
        """Play the test's faults around the emulator's own answer."""
        segments = request.path.strip("/").split("/")
        if request.method == "GET" and segments == ["jobs"]:
            self.list_queries.append(dict(request.query))
            failure = self.list_failures.get(len(self.list_queries))
            if failure is not None:
                return _batch_error(*failure)
            if self.page_size is not None:
                asked = int(request.query.get("maxresults", "1000"))
                query = {**request.query, "maxresults": str(min(asked, self.page_size))}
                request = dataclasses.replace(request, query=query)
            response = super().handle(request)
            if response is not None and self.next_link_base is not None:
                response = self._rewrite_next_link(response)
            return response
        if request.method == "GET" and len(segments) == 3 and segments[2] == "taskcounts":
            failure = self.count_failures.get(segments[1])
            if failure is not None:
                return _batch_error(*failure)
        return super().handle(request)

    def _rewrite_next_link(self, response: HttpResponse) -> HttpResponse:
        document = json.loads(response.body)
        link = document.get("odata.nextLink")
        if link:
            parts = urlsplit(link)
            document["odata.nextLink"] = f"{self.next_link_base}{parts.path}?{parts.query}"
        return dataclasses.replace(response, body=json.dumps(document).encode())

    def list_calls(self) -> int:
        return len(self.list_queries)

    def count_calls(self) -> list[str]:
        return [r.job_id or "" for r in self.requests if r.path.endswith("/taskcounts")]


def _batch_error(status: int, code: str) -> HttpResponse:
    body = {"code": code, "message": {"lang": "en-US", "value": f"{code} (injected by the test)"}}
    headers = {"Content-Type": ODATA_JSON, "request-id": str(uuid.uuid4())}
    return HttpResponse(status, headers, json.dumps(body).encode())


@pytest.fixture
def account(identity: IdentityEndpoint) -> Iterator[SweepBatch]:
    with SweepBatch(authorize=identity.is_valid) as emulator:
        yield emulator


@pytest.fixture
def sweep_env(monkeypatch: pytest.MonkeyPatch, queues: Queues, account: SweepBatch) -> Queues:
    """App settings pointing at Azurite and the emulator; no sweep policy yet; a fresh process-wide sweeper."""
    for name in (*SWEEP_SETTINGS, "POISON_QUEUE_NAME", "BATCH_API_VERSION", "BATCH_TIMEOUT_SECONDS", "AZURE_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BATCH_ACCOUNT_URL", account.url)
    monkeypatch.setenv("TERMINATE_QUEUE_NAME", queues.trigger)
    monkeypatch.setenv("AzureWebJobsStorage", queues.connection_string)
    return queues


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="batch_terminator")
    return caplog


def run(past_due: bool = False) -> None:
    """Fire the timer once, with a real azure.functions TimerRequest."""
    assert sweep_jobs.main(TimerRequest(past_due=past_due)) is None


def summary(logs: pytest.LogCaptureFixture) -> str:
    [line] = [r.getMessage() for r in logs.records if r.getMessage().startswith("sweep outcome=")]
    return line


def ago(**delta: float) -> datetime:
    return datetime.now(UTC) - timedelta(**delta)


def no_sleep_sweeper() -> list[float]:
    """Install the production wiring with a sleep that records instead of waiting."""
    slept: list[float] = []
    wiring.install(wiring.Wiring(sleep=slept.append))
    return slept


def test_without_a_policy_the_sweep_is_disabled(
    sweep_env: Queues, account: SweepBatch, monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    account.add_job("old-1", creation_time=ago(days=30))
    monkeypatch.setenv("SWEEP_JOB_ID_PREFIX", "old")  # narrows, but picks nothing on its own
    monkeypatch.setenv("SWEEP_DRY_RUN", "false")

    run()

    assert account.requests == []
    assert sweep_env.enqueued() == []
    assert any("sweep disabled" in r.getMessage() for r in logs.records)


def test_max_age_policy_enqueues_jobs_active_too_long(
    sweep_env: Queues, account: SweepBatch, monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SWEEP_MAX_AGE_HOURS", "48")
    account.add_job("old-1", creation_time=ago(hours=49.2))
    account.add_job("young-1", creation_time=ago(hours=47))
    account.add_job("old-done", JobState.COMPLETED, creation_time=ago(days=9))
    account.add_job("old-disabled", JobState.DISABLED, creation_time=ago(days=9))

    run()

    [request] = sweep_env.enqueued()
    assert (request.job_id, request.reason) == ("old-1", "sweep: active 49.2 h > 48 h")
    assert "outcome=ok listed=2 matched=1 enqueued=1 kept=0 dry_run=false" in summary(logs)
    assert account.count_calls() == [], "the age policy needs no task counts"
    [query] = account.list_queries
    assert query == {
        "api-version": "2025-06-01",
        "maxresults": str(LIST_PAGE_SIZE),
        "timeOut": "30",
        "$filter": "state eq 'active'",
        "$select": "id,creationTime,metadata,state",
    }
    [listed] = [r for r in account.requests if r.path == "/jobs"]
    assert listed.headers["authorization"].startswith("Bearer ")
    assert listed.headers["client-request-id"] == str(uuid.UUID(listed.headers["client-request-id"]))


def test_idle_policy_enqueues_jobs_without_active_or_running_tasks(
    sweep_env: Queues, account: SweepBatch, monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SWEEP_IDLE_MINUTES", "60")
    account.add_job("idle-1", creation_time=ago(minutes=95), task_counts={"completed": 3, "succeeded": 3})
    account.add_job("running-1", creation_time=ago(minutes=95), task_counts={"running": 1})
    account.add_job("queued-1", creation_time=ago(minutes=95), task_counts={"active": 4})
    account.add_job("fresh-1", creation_time=ago(minutes=10))

    run()

    [request] = sweep_env.enqueued()
    assert request.job_id == "idle-1"
    assert request.reason == "sweep: idle, no active or running tasks, created 95 min ago > 60 min"
    assert sorted(account.count_calls()) == ["idle-1", "queued-1", "running-1"], "fresh jobs are not counted"
    assert "listed=4 matched=1 enqueued=1" in summary(logs)


def test_both_policies_and_the_age_policy_wins_without_counting(
    sweep_env: Queues, account: SweepBatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWEEP_MAX_AGE_HOURS", "24")
    monkeypatch.setenv("SWEEP_IDLE_MINUTES", "30")
    account.add_job("ancient-1", creation_time=ago(hours=30), task_counts={"running": 8})
    account.add_job("idle-1", creation_time=ago(hours=2))

    run()

    assert {(r.job_id, r.reason) for r in sweep_env.enqueued()} == {
        ("ancient-1", "sweep: active 30.0 h > 24 h"),
        ("idle-1", "sweep: idle, no active or running tasks, created 120 min ago > 30 min"),
    }
    assert account.count_calls() == ["idle-1"]


def test_prefix_narrows_the_sweep_case_insensitively(
    sweep_env: Queues, account: SweepBatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWEEP_MAX_AGE_HOURS", "1")
    monkeypatch.setenv("SWEEP_JOB_ID_PREFIX", "nightly-")
    for job_id in ("nightly-1", "NIGHTLY-2", "adhoc-1", "nightly"):
        account.add_job(job_id, creation_time=ago(hours=2))

    run()

    assert sorted(r.job_id for r in sweep_env.enqueued()) == ["NIGHTLY-2", "nightly-1"]


def test_keep_metadata_protects_a_job(
    sweep_env: Queues, account: SweepBatch, monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SWEEP_MAX_AGE_HOURS", "1")
    account.add_job("kept-1", creation_time=ago(hours=5), metadata={"batch-terminator-keep": "true"})
    account.add_job("kept-2", creation_time=ago(hours=5), metadata={"owner": "x", "batch-terminator-keep": "True"})
    account.add_job("not-kept", creation_time=ago(hours=5), metadata={"batch-terminator-keep": "false"})

    run()

    assert [r.job_id for r in sweep_env.enqueued()] == ["not-kept"]
    assert "listed=3 matched=1 enqueued=1 kept=2" in summary(logs)


def test_dry_run_logs_and_enqueues_nothing(
    sweep_env: Queues, account: SweepBatch, monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SWEEP_MAX_AGE_HOURS", "48")
    monkeypatch.setenv("SWEEP_DRY_RUN", "TRUE")
    account.add_job("old-1", creation_time=ago(hours=50))

    run()

    assert sweep_env.enqueued() == []
    assert any("would terminate job=old-1 reason='sweep: active 50.0 h > 48 h'" in r.getMessage() for r in logs.records)
    assert "outcome=ok listed=1 matched=1 enqueued=0 kept=0 dry_run=true" in summary(logs)


def test_listing_follows_next_links_across_pages(
    sweep_env: Queues, account: SweepBatch, monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SWEEP_MAX_AGE_HOURS", "1")
    account.page_size = 2
    for n in range(7):
        account.add_job(f"old-{n}", creation_time=ago(hours=3))
    account.add_job("done-1", JobState.COMPLETED, creation_time=ago(hours=3))
    account.add_job("young-1", creation_time=ago(minutes=5))

    run()

    assert sorted(r.job_id for r in sweep_env.enqueued()) == [f"old-{n}" for n in range(7)]
    assert account.list_calls() == 4
    assert account.list_queries[0]["maxresults"] == "1000"
    assert all("$skiptoken" in q and q["$filter"] == "state eq 'active'" for q in account.list_queries[1:])
    assert "listed=8 matched=7 enqueued=7" in summary(logs)


def test_batch_error_while_listing_is_logged_and_nothing_is_enqueued(
    sweep_env: Queues, account: SweepBatch, monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SWEEP_MAX_AGE_HOURS", "1")
    account.page_size = 2
    account.list_failures = {2: (403, "AuthorizationFailure")}
    for n in range(5):
        account.add_job(f"old-{n}", creation_time=ago(hours=3))

    run()

    assert sweep_env.enqueued() == [], "page 1 matched, but a half-read account stops nothing"
    assert account.list_calls() == 2, "a permanent error is not retried"
    error = next(r for r in logs.records if "Batch call failed" in r.getMessage())
    assert error.levelno == logging.ERROR
    assert "code=AuthorizationFailure status=403" in error.getMessage()
    assert "outcome=batch_error listed=0 matched=0 enqueued=0" in summary(logs)


def test_transient_listing_errors_are_retried_with_the_terminate_policy(
    sweep_env: Queues, account: SweepBatch, monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SWEEP_MAX_AGE_HOURS", "1")
    account.add_job("old-1", creation_time=ago(hours=3))
    account.list_failures = {1: (503, "ServerBusy"), 2: (500, "InternalError")}
    slept = no_sleep_sweeper()

    run()

    assert [r.job_id for r in sweep_env.enqueued()] == ["old-1"]
    assert len(slept) == 2
    assert account.list_calls() == 3


def test_listing_that_stays_unavailable_ends_the_run(
    sweep_env: Queues, account: SweepBatch, monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SWEEP_MAX_AGE_HOURS", "1")
    account.add_job("old-1", creation_time=ago(hours=3))
    account.list_failures = dict.fromkeys(range(1, 10), (503, "ServerBusy"))
    slept = no_sleep_sweeper()

    run()

    assert sweep_env.enqueued() == []
    assert account.list_calls() == 4, "RetryPolicy.max_attempts"
    assert len(slept) == 3
    assert "outcome=batch_error" in summary(logs)


def test_a_next_link_to_another_host_is_not_followed(
    sweep_env: Queues, account: SweepBatch, monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SWEEP_MAX_AGE_HOURS", "1")
    account.page_size = 1
    account.add_job("old-1", creation_time=ago(hours=3))
    account.add_job("old-2", creation_time=ago(hours=3))
    with BatchEmulator() as elsewhere:
        account.next_link_base = elsewhere.url

        run()

        assert elsewhere.requests == [], "the Batch token never leaves the configured account"
    assert sweep_env.enqueued() == []
    assert any("leaves the configured Batch account" in r.getMessage() for r in logs.records)
    assert "outcome=batch_error" in summary(logs)


def test_a_job_deleted_before_its_task_counts_is_skipped(
    sweep_env: Queues, account: SweepBatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWEEP_IDLE_MINUTES", "5")
    account.add_job("gone-1", creation_time=ago(minutes=30))
    account.add_job("idle-1", creation_time=ago(minutes=30))
    account.count_failures = {"gone-1": (404, "JobNotFound")}

    run()

    assert [r.job_id for r in sweep_env.enqueued()] == ["idle-1"]


def test_a_task_counts_failure_ends_the_run_with_nothing_enqueued(
    sweep_env: Queues, account: SweepBatch, monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SWEEP_IDLE_MINUTES", "5")
    account.add_job("idle-1", creation_time=ago(minutes=30))
    account.add_job("idle-2", creation_time=ago(minutes=30))
    account.count_failures = {"idle-2": (403, "AuthorizationFailure")}

    run()

    assert sweep_env.enqueued() == []
    assert "outcome=batch_error" in summary(logs)


def test_queue_failure_is_logged_not_raised(
    sweep_env: Queues, account: SweepBatch, monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SWEEP_MAX_AGE_HOURS", "1")
    monkeypatch.setenv("TERMINATE_QUEUE_NAME", "no-such-queue")
    account.add_job("old-1", creation_time=ago(hours=3))

    run()

    assert "outcome=enqueue_failed listed=1 matched=1 enqueued=0" in summary(logs)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SWEEP_MAX_AGE_HOURS", "two days"),
        ("SWEEP_MAX_AGE_HOURS", "-1"),
        ("SWEEP_IDLE_MINUTES", "0"),
        ("SWEEP_IDLE_MINUTES", "nan"),
        ("SWEEP_JOB_ID_PREFIX", "bad/prefix"),
        ("SWEEP_DRY_RUN", "maybe"),
    ],
)
def test_bad_settings_are_logged_and_nothing_runs(
    sweep_env: Queues,
    account: SweepBatch,
    monkeypatch: pytest.MonkeyPatch,
    logs: pytest.LogCaptureFixture,
    name: str,
    value: str,
) -> None:
    monkeypatch.setenv("SWEEP_MAX_AGE_HOURS", "1")
    monkeypatch.setenv(name, value)

    run()

    assert account.requests == []
    error = next(r for r in logs.records if "sweep not run" in r.getMessage())
    assert error.levelno == logging.ERROR
    assert name in error.getMessage()


def test_policy_reads_numbers_and_booleans() -> None:
    policy = SweepPolicy.from_env({"SWEEP_MAX_AGE_HOURS": " 0.5 ", "SWEEP_IDLE_MINUTES": "90", "SWEEP_DRY_RUN": "yes"})
    assert (policy.max_age_hours, policy.idle_minutes, policy.dry_run, policy.enabled) == (0.5, 90.0, True, True)
    assert not SweepPolicy.from_env({"SWEEP_JOB_ID_PREFIX": "x", "SWEEP_DRY_RUN": ""}).enabled
    with pytest.raises(ConfigurationError, match="SWEEP_MAX_AGE_HOURS"):
        SweepPolicy.from_env({"SWEEP_MAX_AGE_HOURS": "inf"})


def test_past_due_timer_still_sweeps(
    sweep_env: Queues, account: SweepBatch, monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SWEEP_MAX_AGE_HOURS", "1")
    account.add_job("old-1", creation_time=ago(hours=3))

    run(past_due=True)

    assert [r.job_id for r in sweep_env.enqueued()] == ["old-1"]
    assert any("past due" in r.getMessage() for r in logs.records)


def test_the_sweeper_and_its_token_are_reused_across_runs(
    sweep_env: Queues, account: SweepBatch, identity: IdentityEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWEEP_MAX_AGE_HOURS", "1")
    run()
    first = wiring.current().sweeper()
    run()

    assert first is not None
    assert wiring.current().sweeper() is first
    assert account.list_calls() == 2
    assert identity.fetches == 1


@pytest.mark.usefixtures("no_sleep")
def test_reader_refuses_to_send_the_token_elsewhere(sweep_env: Queues) -> None:
    settings = Settings.from_env()
    client = BatchClient(settings, TokenProvider(_NoCredential()), http_session())
    with pytest.raises(ValueError, match="outside the configured account"):
        client.get("https://evil.example/jobs", str(uuid.uuid4()), label="x")
    with pytest.raises(ValueError, match="job id"):
        BatchReader(client).task_counts("../pools/p1")


def test_reader_reads_task_counts_and_reports_a_missing_job(sweep_env: Queues, account: SweepBatch) -> None:
    settings = Settings.from_env()
    reader = BatchReader(BatchClient(settings, TokenProvider(batch_credential(None)), http_session()))
    account.add_job("job-1", task_counts={"running": 2})
    assert reader.task_counts("job-1").running == 2
    account.count_failures = {"job-1": (404, "JobNotFound")}
    with pytest.raises(BatchCallFailed) as caught:
        reader.task_counts("job-1")
    assert caught.value.error.code == "JobNotFound"


def test_function_json_is_a_timer_on_the_schedule_setting() -> None:
    [binding] = json.loads((ROOT / "sweep_jobs" / "function.json").read_text())["bindings"]
    assert binding["type"] == "timerTrigger"
    assert binding["schedule"] == "%SWEEP_SCHEDULE%"
    assert binding["name"] == "timer"
    assert binding["runOnStartup"] is False


class _NoCredential:
    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        raise AssertionError("no token may be fetched")
