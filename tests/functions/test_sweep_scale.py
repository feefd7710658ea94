"""The sweep at incident scale: bounded concurrent task-count reads, a run budget, the SWEEP_MAX_JOBS limit."""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.storage.queue import QueueClient

from local.batch_emulator import BatchEmulator, HttpRequest, HttpResponse
from local.identity import IdentityEndpoint
from shared import wiring
from shared.contract.errors import ConfigurationError
from shared.rules.sweep_policy import SweepPolicy
from shared.services.sweep_jobs import Sweeper
from tests.conftest import Queues

pytestmark = pytest.mark.integration

OLD = datetime.now(UTC) - timedelta(hours=3)


class CountingBatch(BatchEmulator):
    """The emulator, counting how many Get Task Counts requests it serves at once."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._gauge = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0

    def handle(self, request: HttpRequest) -> HttpResponse | None:
        counting = request.path.endswith("/taskcounts")
        if counting:
            with self._gauge:
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return super().handle(request)
        finally:
            if counting:
                with self._gauge:
                    self.in_flight -= 1


@pytest.fixture
def account(identity: IdentityEndpoint) -> Iterator[CountingBatch]:
    with CountingBatch(authorize=identity.is_valid, latency=0.05) as emulator:
        yield emulator


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, queues: Queues, account: CountingBatch) -> Iterator[Queues]:
    for name in ("BATCH_ACCOUNTS", "POISON_QUEUE_NAME", "BATCH_API_VERSION", "AZURE_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BATCH_ACCOUNT_URL", account.url)
    monkeypatch.setenv("TERMINATE_QUEUE_NAME", queues.trigger)
    monkeypatch.setenv("AzureWebJobsStorage", queues.connection_string)
    wiring.reset()
    yield queues
    wiring.reset()


def sweeper(policy: SweepPolicy, *, clock: Callable[[], float] | None = None) -> Sweeper:
    """A Sweeper over the production wiring (identity, pooled session, retry policy, trigger queue)."""
    made = wiring.Wiring(sleep=lambda _: None)
    readers = policy.pick_accounts(made.batch_readers())
    if clock is None:
        return Sweeper(readers, made.terminate_queue(), policy)
    return Sweeper(readers, made.terminate_queue(), policy, clock=clock)


def enqueued(queues: Queues) -> list[str]:
    raw = QueueClient.from_connection_string(queues.connection_string, queues.trigger)
    ids: list[str] = []
    while batch := list(raw.receive_messages(max_messages=32, visibility_timeout=60)):
        for message in batch:
            try:
                document = json.loads(message.content)
            except ValueError:
                document = json.loads(base64.b64decode(message.content))
            ids.append(document["jobId"])
    return ids


def idle_jobs(batch: BatchEmulator, count: int, prefix: str = "idle") -> list[str]:
    ids = [f"{prefix}-{n:03d}" for n in range(count)]
    for job_id in ids:
        batch.add_job(job_id, creation_time=OLD)
    return ids


def test_task_counts_are_read_concurrently_but_never_more_than_the_setting(env: Queues, account: CountingBatch) -> None:
    ids = idle_jobs(account, 24)

    report = sweeper(SweepPolicy(idle_minutes=60, concurrency=6)).run()

    assert report.outcome == "ok"
    assert report.reads == 24
    assert 1 < account.most_in_flight <= 6
    assert sorted(enqueued(env)) == ids


def test_the_matches_keep_listing_order_whatever_order_the_reads_finish_in(env: Queues, account: CountingBatch) -> None:
    ids = idle_jobs(account, 12)
    account.add_job("busy-1", creation_time=OLD, task_counts={"running": 1})

    report = sweeper(SweepPolicy(idle_minutes=60, concurrency=8, dry_run=True)).run()

    assert [m.job_id for m in report.matched] == ids


def test_a_run_out_of_budget_enqueues_what_it_decided_and_says_where_it_stopped(
    env: Queues, account: CountingBatch, caplog: pytest.LogCaptureFixture
) -> None:
    ids = idle_jobs(account, 5)
    ticks = iter(range(0, 1000, 4))  # every look at the clock is 4 s later: the third read is past 10 s
    caplog.set_level(logging.INFO, logger="batch_terminator")

    policy = SweepPolicy(idle_minutes=60, concurrency=1, run_budget_seconds=10)
    report = sweeper(policy, clock=lambda: next(ticks)).run()

    assert report.outcome == "budget_exhausted"
    assert report.reads == 2
    assert (report.stopped_at, report.unread) == (f"default/{ids[2]}", 3)
    assert sorted(enqueued(env)) == ids[:2]
    summary = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("sweep outcome="))
    assert f"stopped_at=default/{ids[2]} unread=3" in summary
    assert any(r.levelno == logging.ERROR and "stopped at job=idle-002" in r.getMessage() for r in caplog.records)


def test_the_age_policy_still_decides_when_no_read_could_start(env: Queues, account: CountingBatch) -> None:
    account.add_job("old-1", creation_time=datetime.now(UTC) - timedelta(hours=50))
    idle_jobs(account, 2)
    ticks = iter(range(0, 1000, 100))

    policy = SweepPolicy(max_age_hours=48, idle_minutes=60, run_budget_seconds=10)
    report = sweeper(policy, clock=lambda: next(ticks)).run()

    assert report.outcome == "budget_exhausted"
    assert report.reads == 0
    assert enqueued(env) == ["old-1"]


def test_more_matches_than_sweep_max_jobs_enqueue_nothing(
    env: Queues, account: CountingBatch, caplog: pytest.LogCaptureFixture
) -> None:
    idle_jobs(account, 3)
    caplog.set_level(logging.INFO, logger="batch_terminator")

    report = sweeper(SweepPolicy(idle_minutes=60, max_jobs=2)).run()

    assert report.outcome == "too_many_jobs"
    assert enqueued(env) == []
    assert any(
        r.levelno == logging.ERROR and "3 jobs matched, more than SWEEP_MAX_JOBS=2; nothing enqueued" in r.getMessage()
        for r in caplog.records
    )


def test_protected_jobs_do_not_count_against_sweep_max_jobs(env: Queues, account: CountingBatch) -> None:
    idle_jobs(account, 2)
    account.add_job("kept-1", creation_time=OLD, metadata={"batch-terminator-keep": "true"})

    report = sweeper(SweepPolicy(idle_minutes=60, max_jobs=2)).run()

    assert (report.outcome, report.kept) == ("ok", 1)
    assert len(enqueued(env)) == 2


def test_a_serial_sweeper_is_the_same_code_with_one_read_in_flight(env: Queues, account: CountingBatch) -> None:
    idle_jobs(account, 6)
    policy = SweepPolicy(idle_minutes=60, dry_run=True)

    serial = sweeper(replace(policy, concurrency=1)).run()

    assert account.most_in_flight == 1
    assert [m.job_id for m in serial.matched] == [m.job_id for m in sweeper(policy).run().matched]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SWEEP_MAX_JOBS", "0"),
        ("SWEEP_MAX_JOBS", "many"),
        ("SWEEP_CONCURRENCY", "0"),
        ("SWEEP_CONCURRENCY", "65"),
        ("SWEEP_RUN_BUDGET_SECONDS", "-1"),
        ("SWEEP_RUN_BUDGET_SECONDS", "nan"),
    ],
)
def test_bad_scale_settings_name_themselves(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        SweepPolicy.from_env({"SWEEP_IDLE_MINUTES": "60", name: value})

    assert caught.value.setting == name


def test_scale_settings_have_defaults() -> None:
    policy = SweepPolicy.from_env({"SWEEP_IDLE_MINUTES": "60"})

    assert (policy.max_jobs, policy.concurrency, policy.run_budget_seconds, policy.accounts) == (100, 16, 120.0, ())
    read = SweepPolicy.from_env({"SWEEP_ACCOUNTS": " EU, us,eu ", "SWEEP_RUN_BUDGET_SECONDS": "30"})
    assert (read.accounts, read.run_budget_seconds) == (("eu", "us"), 30.0)


def test_sweep_accounts_must_name_configured_accounts() -> None:
    policy = SweepPolicy(idle_minutes=60, accounts=("eu", "nope"))

    with pytest.raises(ConfigurationError) as caught:
        policy.pick_accounts({"default": "http://127.0.0.1:1", "eu": "http://127.0.0.1:2"})

    assert caught.value.setting == "SWEEP_ACCOUNTS"
    assert "nope" in caught.value.problem


def test_the_batch_session_keeps_a_connection_for_every_sweep_read_allowed(function_env: dict[str, str]) -> None:
    from shared.rules.sweep_policy import MAX_CONCURRENCY

    session = wiring.Wiring().session()

    adapter = session.get_adapter(function_env["BATCH_ACCOUNT_URL"])
    assert adapter._pool_maxsize >= MAX_CONCURRENCY  # type: ignore[attr-defined]
