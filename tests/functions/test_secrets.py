"""No bearer token, identity header or storage account key ever reaches a log record or a poison record."""

from __future__ import annotations

import base64
import json
import logging
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.functions.queue import QueueMessage
from azure.storage.queue import QueueClient

import local.identity
import terminate_job
from local.azurite import Azurite
from local.batch_emulator import BatchEmulator, Fault, JobState
from local.identity import IdentityEndpoint
from shared import wiring
from shared.contract.errors import RetryLater
from shared.storage.terminate_queue import TerminateQueue

pytestmark = pytest.mark.integration

ACCOUNT = "canaryacct"
# A recognisable account key (Azurite takes custom accounts from AZURITE_ACCOUNTS); base64 as storage keys are.
KEY_MARKER = b"canary-storage-key-never-log-"
TOKEN_PREFIX = "canaryBearerToken-"
IDENTITY_HEADER = "canary-identity-header-" + secrets.token_hex(8)
LOGGERS = ("", "azure", "azure.core", "azure.identity", "azure.storage", "msal", "urllib3", "requests")


class Capture(logging.Handler):
    """Keeps every record that reaches it, formatted exception text included."""

    def __init__(self) -> None:
        """Accept everything."""
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the record, with exc_text filled in as a formatter would."""
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        self.records.append(record)

    @staticmethod
    def texts_of(record: logging.LogRecord) -> list[str]:
        """Every piece of text a record carries: rendered message, raw msg/args, exception, stack, extras."""
        return [
            record.getMessage(),
            repr(record.msg),
            repr(record.args),
            record.exc_text or "",
            record.stack_info or "",
            repr(record.__dict__),
        ]


@dataclass
class World:
    """Azurite with a custom account, the identity endpoint and the Batch emulator, wired into the function."""

    azurite: Azurite
    key: str
    connection_string: str
    identity: IdentityEndpoint
    batch: BatchEmulator
    trigger: str

    def queue(self, name: str) -> QueueClient:
        """A queue client in the app's encoding (host.json messageEncoding none: the text as it is)."""
        return QueueClient.from_connection_string(self.connection_string, name)

    def secrets(self) -> list[str]:
        """Every secret in play, and recognisable fragments of them."""
        values = [self.key, self.key[:24], self.key[-24:], KEY_MARKER.decode(), IDENTITY_HEADER, TOKEN_PREFIX]
        values.extend(self.identity.issued)
        values.extend(token[-16:] for token in self.identity.issued)
        return values


@pytest.fixture(scope="module")
def custom_azurite() -> Iterator[tuple[Azurite, str]]:
    """Azurite serving only the canary account, with a recognisable key."""
    key = base64.b64encode(KEY_MARKER + secrets.token_bytes(33)).decode()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AZURITE_ACCOUNTS", f"{ACCOUNT}:{key}")
        service = Azurite().start()
    try:
        yield service, key
    finally:
        service.stop()


@pytest.fixture
def world(custom_azurite: tuple[Azurite, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """Everything running, with the function's settings in the environment and sleeps skipped."""
    azurite, key = custom_azurite
    connection = (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={key};"
        f"QueueEndpoint=http://{azurite.host}:{azurite.port}/{ACCOUNT};"
    )
    monkeypatch.setattr(local.identity, "_ISSUED_PREFIX", TOKEN_PREFIX)
    trigger = f"s-{uuid.uuid4().hex[:16]}"
    with IdentityEndpoint(secret=IDENTITY_HEADER) as identity, BatchEmulator(authorize=identity.is_valid) as batch:
        env = {
            **identity.environ(),
            "BATCH_ACCOUNT_URL": batch.url,
            "TERMINATE_QUEUE_NAME": trigger,
            "AzureWebJobsStorage": connection,
            "AzureFunctionsJobHost__extensions__queues__maxDequeueCount": "5",
        }
        for name in ("POISON_QUEUE_NAME", "BATCH_API_VERSION", "BATCH_TIMEOUT_SECONDS", "AZURE_CLIENT_ID"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        made = World(azurite, key, connection, identity, batch, trigger)
        made.queue(trigger).create_queue()
        wiring.install(wiring.Wiring(sleep=lambda _: None))
        yield made


@pytest.fixture
def capture() -> Iterator[Capture]:
    """DEBUG for every logger (root, azure.*, msal, urllib3 and any other already created), into one handler."""
    handler = Capture()
    root = logging.getLogger()
    names = set(LOGGERS) | set(logging.root.manager.loggerDict)
    saved = {name: (logging.getLogger(name).level, logging.getLogger(name).disabled) for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)
        logging.getLogger(name).disabled = False
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for name, (level, disabled) in saved.items():
            logging.getLogger(name).setLevel(level)
            logging.getLogger(name).disabled = disabled


def deliver(world: World, *, dequeue_count: int = 1) -> str:
    """Take the next message off the trigger queue, as the host does, and hand it to main(); say how it ended."""
    queue = world.queue(world.trigger)
    received = queue.receive_message(visibility_timeout=30)
    assert received is not None
    body = received.content.encode("utf-8")
    message = QueueMessage(id=received.id, body=body, dequeue_count=dequeue_count, pop_receipt=received.pop_receipt)
    try:
        terminate_job.main(message)
    except RetryLater:
        return "retry"
    queue.delete_message(received)
    return "done"


def poison_texts(world: World) -> list[str]:
    """The raw text of every poison record."""
    try:
        messages = world.queue(f"{world.trigger}-poison").peek_messages(max_messages=32)
    except ResourceNotFoundError:  # no poison queue yet
        return []
    return [m.content for m in messages]


def test_full_flow_leaks_no_token_identity_header_or_storage_key(world: World, capture: Capture) -> None:
    """Valid, 401-then-refresh, 503/429 retries, drops, not-found, invalid and token failure: secrets stay out."""
    producer = TerminateQueue.from_env()
    batch, identity = world.batch, world.identity
    for job_id in ("job-ok", "job-401", "job-503", "job-drop"):
        batch.add_job(job_id)

    producer.enqueue_terminate("job-ok", "budget exceeded")
    deliver(world)
    identity.revoke_all()
    producer.enqueue_terminate("job-401")
    deliver(world)
    batch.inject(Fault.status(503, "ServerBusy"), times=2)
    batch.inject(Fault.status(429, "TooManyRequests", retry_after=1))
    producer.enqueue_terminate("job-503")
    deliver(world)
    batch.inject(Fault.drop(), times=50)
    producer.enqueue_terminate("job-drop")
    deliver(world, dequeue_count=5)  # last attempt: ServiceUnavailable poison record
    batch.reset()
    producer.enqueue_terminate("ghost", "no such job")
    deliver(world)
    world.queue(world.trigger).send_message('{"jobId": "bad/id", "reason": 5}')
    deliver(world)
    world.queue(world.trigger).send_message("not json at all")
    deliver(world)
    batch.add_job("job-token")
    identity.revoke_all()
    identity.fail_next(50, status=500)
    producer.enqueue_terminate("job-token")
    deliver(world, dequeue_count=5)  # 401, then the refresh fails: CredentialUnavailable poison record

    records: list[dict[str, Any]] = [json.loads(text) for text in poison_texts(world)]
    codes = sorted(record["error"]["code"] for record in records)
    assert codes == ["CredentialUnavailable", "InvalidMessage", "InvalidMessage", "JobNotFound", "ServiceUnavailable"]
    assert batch.job("job-token") is not None
    assert identity.fetches >= 2
    assert all(token.startswith(TOKEN_PREFIX) for token in identity.issued)
    assert len(capture.records) > 50, "DEBUG logging did not reach the capture handler"
    assert {r.name.split(".")[0] for r in capture.records} >= {"batch_terminator", "azure", "urllib3"}
    assert_no_secret(world, capture, poison_texts(world))


def test_refresh_after_401_leaks_nothing(world: World, capture: Capture) -> None:
    """The 401 → fresh token path on its own, with two distinct tokens in play."""
    world.batch.add_job("job-a")
    world.batch.add_job("job-b")
    producer = TerminateQueue.from_env()
    producer.enqueue_terminate("job-a")
    deliver(world)
    world.identity.revoke_all()
    producer.enqueue_terminate("job-b")
    deliver(world)

    assert world.identity.fetches == 2
    assert world.batch.job("job-b").state is not JobState.ACTIVE
    assert_no_secret(world, capture, poison_texts(world))


def assert_no_secret(world: World, capture: Capture, poison: list[str]) -> None:
    """Fail naming the logger and the secret fragment if any secret shows up."""
    needles = world.secrets()
    for record in capture.records:
        for text in Capture.texts_of(record):
            for needle in needles:
                assert needle not in text, f"secret fragment {needle[:12]}... in a {record.name} log record"
    for text in poison:
        for needle in needles:
            assert needle not in text, f"secret fragment {needle[:12]}... in a poison record"


def test_failed_refresh_after_401_is_transient_not_authentication_failed(world: World) -> None:
    """401, then the token endpoint fails: the delivery is retried later, not poisoned with the rejected token."""
    world.batch.add_job("job-a")
    world.batch.add_job("job-b")
    producer = TerminateQueue.from_env()
    producer.enqueue_terminate("job-a")
    assert deliver(world) == "done"
    world.identity.revoke_all()
    world.identity.fail_next(1, status=500)
    producer.enqueue_terminate("job-b")

    outcome = deliver(world)

    assert poison_texts(world) == []
    assert outcome == "retry"
    sent = [r for r in world.batch.requests if r.method == "POST" and r.job_id == "job-b"]
    assert len(sent) == 1, "the token Batch rejected was sent again after the refresh failed"
