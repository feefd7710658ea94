"""Shared fixtures: Azurite, the Batch emulator, the managed-identity endpoint, queue messages."""

from __future__ import annotations

import base64
import json
import logging
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import azure.functions as func
import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.functions.queue import QueueMessage
from azure.storage.queue import QueueClient
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from local.azurite import Azurite
from local.batch_emulator import BatchEmulator
from local.identity import IdentityEndpoint
from shared import wiring
from shared.contract.terminate_request import TerminateRequest
from shared.telemetry import Telemetry


@pytest.fixture(autouse=True)
def fresh_wiring() -> Iterator[None]:
    """Every test starts without process objects, so the settings it sets are the ones read."""
    wiring.reset()
    yield
    wiring.reset()


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """One in-memory Azurite queue service for the whole run."""
    with Azurite() as service:
        yield service


@dataclass
class Queues:
    """A fresh trigger queue and its poison queue on Azurite."""

    connection_string: str
    trigger: str
    poison: str

    def client(self, name: str) -> QueueClient:
        """A client in the app's encoding: host.json's messageEncoding is none, so text goes as it is."""
        return QueueClient.from_connection_string(self.connection_string, name)

    def enqueued(self) -> list[TerminateRequest]:
        """The trigger queue's messages, parsed by the function's own parser (JSON text or base64 of it)."""
        return [TerminateRequest.parse(m.content) for m in self.client(self.trigger).peek_messages(max_messages=32)]

    def poison_records(self) -> list[dict[str, Any]]:
        """Every poison record, decoded, without removing them."""
        client = self.client(self.poison)
        try:
            messages = client.peek_messages(max_messages=32)
        except ResourceNotFoundError:  # the queue does not exist yet: nothing was poisoned
            return []
        return [json.loads(m.content) for m in messages]


@pytest.fixture
def queues(azurite: Azurite) -> Queues:
    name = f"t-{uuid.uuid4().hex[:20]}"
    made = Queues(azurite.connection_string, name, f"{name}-poison")
    made.client(name).create_queue()
    return made


@pytest.fixture
def trigger(monkeypatch: pytest.MonkeyPatch, queues: Queues) -> Queues:
    """App settings for alert_terminate on Azurite."""
    monkeypatch.setenv("AzureWebJobsStorage", queues.connection_string)
    monkeypatch.setenv("TERMINATE_QUEUE_NAME", queues.trigger)
    # A lone loopback account stands for whichever Batch account an alert names (docs/CONTRACT.md §9); alerts
    # that name their jobs never call it.
    monkeypatch.setenv("BATCH_ACCOUNT_URL", "http://127.0.0.1:9")
    for name in (
        "ALERT_JOB_ID_DIMENSION",
        "ALERT_RULES_ALLOWED",
        "ALERT_SELECT_JOB_ID_PREFIX",
        "ALERT_SELECT_POOL_ID",
        "ALERT_SELECT_METADATA",
        "ALERT_MAX_JOBS",
        "BATCH_ACCOUNTS",
        "AzureWebJobsStorage__queueServiceUri",
    ):
        monkeypatch.delenv(name, raising=False)
    return queues


@pytest.fixture
def identity(monkeypatch: pytest.MonkeyPatch) -> Iterator[IdentityEndpoint]:
    """The App Service managed-identity endpoint, wired into azure-identity through the environment."""
    with IdentityEndpoint() as endpoint:
        for name, value in endpoint.environ().items():
            monkeypatch.setenv(name, value)
        yield endpoint


@pytest.fixture
def batch(identity: IdentityEndpoint) -> Iterator[BatchEmulator]:
    """A Batch account on loopback that only accepts tokens the identity endpoint issued."""
    with BatchEmulator(authorize=identity.is_valid) as emulator:
        yield emulator


@pytest.fixture
def function_env(
    monkeypatch: pytest.MonkeyPatch, queues: Queues, batch: BatchEmulator, identity: IdentityEndpoint
) -> dict[str, str]:
    """App settings for terminate_job pointing at Azurite, the emulator and the identity endpoint."""
    env = {
        "BATCH_ACCOUNT_URL": batch.url,
        "TERMINATE_QUEUE_NAME": queues.trigger,
        "AzureWebJobsStorage": queues.connection_string,
        "AzureFunctionsJobHost__extensions__queues__maxDequeueCount": "5",
    }
    for name in ("POISON_QUEUE_NAME", "BATCH_API_VERSION", "BATCH_TIMEOUT_SECONDS", "AZURE_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def no_sleep(function_env: dict[str, str]) -> list[float]:
    """Install the production wiring with a sleep that records instead of waiting."""
    slept: list[float] = []
    wiring.install(wiring.Wiring(sleep=slept.append))
    return slept


@dataclass
class Exported:
    """What the OpenTelemetry SDK exported: log records of logger batch_terminator, and metric data points."""

    logs: InMemoryLogRecordExporter
    reader: InMemoryMetricReader

    def records(self) -> list[dict[str, Any]]:
        """The attributes of every exported log record, oldest first."""
        return [dict(r.log_record.attributes or {}) for r in self.logs.get_finished_logs()]

    def bodies(self) -> list[str]:
        """The text of every exported log record."""
        return [str(r.log_record.body) for r in self.logs.get_finished_logs()]

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        """(attributes, data point) of metric `name` as collected now."""
        data = self.reader.get_metrics_data()
        found: list[tuple[dict[str, Any], Any]] = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend((dict(p.attributes or {}), p) for p in metric.data.data_points)
        return found

    def counts(self, name: str) -> dict[tuple[tuple[str, Any], ...], int]:
        """A counter's values by their sorted attributes."""
        return {tuple(sorted(attrs.items())): int(point.value) for attrs, point in self.points(name)}


@pytest.fixture
def exported(function_env: dict[str, str]) -> Iterator[Exported]:
    """The production wiring (no sleeps) with telemetry on an SDK MeterProvider + LoggerProvider with in-memory
    exporters: the same handler the Azure Monitor distro attaches, on logger batch_terminator."""
    reader = InMemoryMetricReader()
    logs = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    handler = LoggingHandler(level=logging.DEBUG, logger_provider=logger_provider)
    logger = logging.getLogger("batch_terminator")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    telemetry = Telemetry(MeterProvider(metric_readers=[reader]))
    wiring.install(wiring.Wiring(sleep=lambda _: None, telemetry=telemetry))
    try:
        yield Exported(logs, reader)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger_provider.shutdown()


MessageFactory = Callable[..., func.QueueMessage]


@pytest.fixture
def make_message() -> MessageFactory:
    """Build a real azure.functions QueueMessage, as the host hands it to main()."""

    def make(body: object, *, dequeue_count: int = 1, message_id: str | None = None) -> func.QueueMessage:
        if isinstance(body, bytes):
            raw = body
        elif isinstance(body, str):
            raw = body.encode()
        else:
            raw = json.dumps(body).encode()
        return QueueMessage(
            id=message_id or str(uuid.uuid4()),
            body=raw,
            dequeue_count=dequeue_count,
            pop_receipt="pr",
        )

    return make


@pytest.fixture
def captured_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Capture every record at every level, azure SDK loggers included."""
    caplog.set_level(logging.DEBUG)
    return caplog


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def closed_port() -> int:
    """A loopback port nothing listens on (a connection to it is refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def other_batch(identity: IdentityEndpoint) -> Iterator[BatchEmulator]:
    """A second Batch account beside `batch` (its own port, jobs and ledger), for multi-account routing."""
    with BatchEmulator(authorize=identity.is_valid) as emulator:
        yield emulator
