"""The operator CLI (`batch-terminator`, package ops/) over Azurite: output, queue effects, exit codes."""

from __future__ import annotations

import base64
import contextlib
import importlib
import importlib.metadata
import io
import json
import os
import subprocess
import sys
import sysconfig
import time
import tomllib
import urllib.parse
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import QueueClient

from ops.__main__ import entry, main
from ops.output import Progress
from ops.storage_errors import endpoint_of
from ops.target import Target, open_queue, resolve_target
from shared.config.settings import PROJECT_ROOT, StorageSettings
from shared.contract.confirm_check import ConfirmCheck
from shared.contract.errors import BatchError, BatchErrorDetail, ConfigurationError
from shared.contract.poison_record import PoisonRecord
from shared.services.keep_poison import PoisonKeeper
from shared.storage.poison_writer import PoisonWriter
from shared.storage.queues import queue_client
from tests.conftest import Queues

pytestmark = pytest.mark.integration

REQUEST_ID = "9c4d50ee-2d56-4cd3-8152-34347dc9f2b0"
ENCODING_SETTING = "AzureFunctionsJobHost__extensions__queues__messageEncoding"
BOTH_ENCODINGS = pytest.mark.parametrize("encoding", ["none", "base64"])
Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    """Call main in-process; return (exit code, stdout, stderr)."""

    def invoke(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


@pytest.fixture
def encoding() -> str:
    """The trigger queue's messageEncoding: none, as host.json has it (docs/CONTRACT.md §3); BOTH_ENCODINGS for both."""
    return "none"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, queues: Queues, encoding: str) -> Queues:
    """The function's settings in the environment, pointing at this test's queues."""
    for name in list(os.environ):
        if name.startswith(("AzureWebJobsStorage", "AzureFunctionsJobHost__")) or name in (
            "TERMINATE_QUEUE_NAME",
            "POISON_QUEUE_NAME",
            "BATCH_ACCOUNTS",
        ):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AzureWebJobsStorage", queues.connection_string)
    monkeypatch.setenv("BATCH_ACCOUNT_URL", "https://main.westeurope.batch.azure.com")  # accounts: env, not files
    monkeypatch.setenv("TERMINATE_QUEUE_NAME", queues.trigger)
    monkeypatch.setenv(ENCODING_SETTING, encoding)
    return queues


@pytest.fixture
def writer(queues: Queues, encoding: str) -> PoisonWriter:
    """The function's own poison writer on this test's poison queue, in the trigger queue's encoding."""
    storage = StorageSettings(connection_string=queues.connection_string)
    return PoisonWriter(queue_client(storage, queues.poison, encoding))


def record(
    original: bytes | str,
    *,
    job_id: str | None = "job-1",
    code: str = "JobNotFound",
    status: int | None = 404,
    attempts: int = 1,
    account: str | None = None,
) -> PoisonRecord:
    """A poison record as the function writes it."""
    body = original.encode() if isinstance(original, str) else original
    detail = BatchError(code, f"{code} happened", (BatchErrorDetail("k", "v"),), status, "req-1", "client-1")
    return PoisonRecord(
        error=detail, attempts=attempts, message_id="m-1", original_message=body, job_id=job_id, account=account
    )


def raw(queues: Queues, name: str) -> QueueClient:
    """A client that reads and writes message text as stored: no encoding policy."""
    return QueueClient.from_connection_string(queues.connection_string, name)


def message_bytes(text: str, encoding: str) -> bytes:
    """The message the function reads from this queue text: the host's decoding, then JSON text or base64 of it."""
    if encoding == "base64":
        return base64.b64decode(text, validate=True)
    return text.encode("utf-8") if text.lstrip().startswith("{") else base64.b64decode(text, validate=True)


def trigger_bodies(queues: Queues, encoding: str) -> list[bytes]:
    """The trigger queue's messages as the function would read them (bytes), without removing them."""
    return [message_bytes(m.content, encoding) for m in raw(queues, queues.trigger).peek_messages(max_messages=32)]


def stored(queues: Queues, name: str, encoding: str) -> list[dict[str, Any]]:
    """A queue's messages as JSON documents, decoded as the function reads them, without removing them."""
    return [json.loads(message_bytes(m.content, encoding)) for m in raw(queues, name).peek_messages(max_messages=32)]


def host_moved(queues: Queues, text: str, encoding: str, *, ttl: int | None = None) -> str:
    """Put a message on the poison queue as the host moves one: the trigger queue's text unchanged; its id."""
    client = raw(queues, queues.poison)
    with contextlib.suppress(ResourceExistsError):
        client.create_queue()
    content = base64.b64encode(text.encode()).decode() if encoding == "base64" else text
    return str(client.send_message(content, time_to_live=ttl).id)


def message_count(queues: Queues, name: str) -> int:
    """Azurite's (exact) message count, hidden messages included."""
    return int(raw(queues, name).get_queue_properties().approximate_message_count or 0)


# --- enqueue -----------------------------------------------------------------------------------------------


@BOTH_ENCODINGS
def test_enqueue_prints_the_message_id_and_sends_every_option_in_the_queue_encoding(
    env: Queues, run: Run, encoding: str
) -> None:
    code, out, err = run(
        "enqueue",
        "job-1",
        "--reason",
        "budget exceeded",
        "--force",
        "--if-modified-since",
        "2026-11-25T12:00:00Z",
        "--request-id",
        REQUEST_ID,
    )
    assert (code, err) == (0, "")
    [message] = raw(env, env.trigger).peek_messages()
    assert out == f"{message.id}\n"
    assert message.content.startswith("{") == (encoding == "none")
    assert json.loads(message_bytes(message.content, encoding)) == {
        "jobId": "job-1",
        "reason": "budget exceeded",
        "force": True,
        "ifModifiedSince": "Wed, 25 Nov 2026 12:00:00 GMT",
        "requestId": REQUEST_ID,
    }


@pytest.mark.parametrize(
    ("option", "value", "field"),
    [
        ("--if-match", '"0x8D"', "ifMatch"),
        ("--if-unmodified-since", "Wed, 25 Nov 2026 13:00:00 GMT", "ifUnmodifiedSince"),
    ],
)
def test_enqueue_sends_each_condition(env: Queues, run: Run, option: str, value: str, field: str) -> None:
    code, _, _ = run("enqueue", "job-1", option, value)
    assert code == 0
    assert stored(env, env.trigger, "none") == [{"jobId": "job-1", field: value}]


def test_enqueue_json_and_explicit_connection_options(
    monkeypatch: pytest.MonkeyPatch, queues: Queues, run: Run
) -> None:
    monkeypatch.delenv("AzureWebJobsStorage", raising=False)
    code, out, _ = run(
        "--connection-string", queues.connection_string, "--queue", queues.trigger, "enqueue", "j-2", "--json"
    )
    assert code == 0
    document = json.loads(out)
    assert document["queue"] == queues.trigger
    assert document["message"] == {"jobId": "j-2"}
    [message] = raw(queues, queues.trigger).peek_messages()
    assert document["messageId"] == message.id


@pytest.mark.parametrize(("given", "sent"), [("EU", {"account": "eu"}), ("default", {})])
def test_enqueue_account_names_a_configured_alias(
    env: Queues, run: Run, monkeypatch: pytest.MonkeyPatch, given: str, sent: dict[str, str]
) -> None:
    monkeypatch.setenv("BATCH_ACCOUNTS", "eu=https://b.westeurope.batch.azure.com,us=https://c.eastus.batch.azure.com")
    code, _, err = run("enqueue", "job-1", "--account", given)
    assert (code, err) == (0, "")
    assert stored(env, env.trigger, "none") == [{"jobId": "job-1", **sent}]


def test_enqueue_refuses_an_alias_the_app_does_not_have(env: Queues, run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_ACCOUNTS", "eu=https://b.westeurope.batch.azure.com")
    code, out, err = run("enqueue", "job-1", "--account", "us")
    assert (code, out) == (2, "")
    assert err.startswith("error: account (--account): ")
    assert "eu" in err
    assert message_count(env, env.trigger) == 0


def test_without_batch_accounts_an_alias_is_checked_for_form_and_sent_with_a_warning(env: Queues, run: Run) -> None:
    code, _, err = run("enqueue", "job-1", "--account", "eu")
    assert code == 0
    assert err.startswith("warning: BATCH_ACCOUNTS is not set here, so --account eu is checked for its form only")
    assert stored(env, env.trigger, "none") == [{"jobId": "job-1", "account": "eu"}]
    code, _, err = run("enqueue", "job-1", "--account", "not_an/alias")
    assert code == 2
    assert "account (--account): " in err
    assert message_count(env, env.trigger) == 1


def test_file_with_an_account_sends_it_on_every_message(
    env: Queues, run: Run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BATCH_ACCOUNTS", "eu=https://b.westeurope.batch.azure.com")
    ids = tmp_path / "ids.txt"
    ids.write_text("job-a\njob-b\n", encoding="utf-8")
    code, _, _ = run("enqueue", "--file", str(ids), "--account", "eu")
    assert code == 0
    assert sorted(stored(env, env.trigger, "none"), key=lambda d: d["jobId"]) == [
        {"jobId": "job-a", "account": "eu"},
        {"jobId": "job-b", "account": "eu"},
    ]


def test_more_than_one_condition_is_refused_naming_the_options(env: Queues, run: Run) -> None:
    code, _, err = run("enqueue", "job-1", "--if-match", '"0x8D"', "--if-unmodified-since", "2026-11-25T12:00:00Z")
    assert code == 2
    assert err.startswith(
        "error: conditions (--if-match / --if-none-match / --if-modified-since / --if-unmodified-since)"
    )
    assert message_count(env, env.trigger) == 0


@pytest.mark.parametrize("job_id", ["a/b", "x" * 65, "job 1"])
def test_invalid_job_id_exits_2_naming_jobid_and_leaves_the_queue_alone(env: Queues, run: Run, job_id: str) -> None:
    code, out, err = run("enqueue", job_id)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("error: jobId: ")
    assert message_count(env, env.trigger) == 0


def test_invalid_option_is_named_by_field_and_option(env: Queues, run: Run) -> None:
    code, _, err = run("enqueue", "job-1", "--request-id", "nope", "--if-modified-since", "yesterday")
    assert code == 2
    assert "ifModifiedSince (--if-modified-since)" in err
    assert "requestId (--request-id)" in err
    assert err.count("\n") == 1
    assert message_count(env, env.trigger) == 0


@pytest.mark.parametrize(
    "argv",
    [
        (),
        ("enqueue",),
        ("enqueue", "job-1", "--file", "ids.txt"),
        ("enqueue", "job-1", "--no-such-option"),
        ("poison", "purge"),
        ("poison", "purge", "--all", "--code", "JobNotFound"),
        ("poison", "list", "--limit", "-1"),
        ("--queue", "Bad_Name", "enqueue", "job-1"),
    ],
)
def test_usage_errors_exit_2(env: Queues, run: Run, argv: tuple[str, ...]) -> None:
    code, out, err = run(*argv)
    assert code == 2
    assert out == ""
    assert "error" in err
    assert "Traceback" not in err


def test_file_with_a_bad_line_refuses_the_whole_file(env: Queues, run: Run, tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("# nightly\njob-1\n\nbad/id\n  job-2  \n" + "y" * 65 + "\n", encoding="utf-8")
    code, out, err = run("enqueue", "--file", str(ids))
    assert code == 2
    assert out == ""
    assert "2 invalid line(s); nothing was enqueued" in err
    assert "line 4: jobId:" in err
    assert "line 6: jobId:" in err
    assert "line 2" not in err
    assert message_count(env, env.trigger) == 0


def test_file_skips_comments_and_blank_lines_and_applies_the_options(env: Queues, run: Run, tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("\ufeff# header\n\njob-a\n   # indented comment\njob-b\n", encoding="utf-8")
    code, out, err = run("enqueue", "--file", str(ids), "--reason", "cleanup", "--force", "--json")
    assert code == 0
    assert err == ""  # few lines, stderr is not a TTY: no progress
    document = json.loads(out)
    assert document["enqueued"] == 2
    assert [(m["line"], m["jobId"]) for m in document["messages"]] == [(3, "job-a"), (5, "job-b")]
    bodies = sorted(stored(env, env.trigger, "none"), key=lambda d: d["jobId"])
    assert bodies == [{"jobId": j, "reason": "cleanup", "force": True} for j in ("job-a", "job-b")]


def test_file_refuses_per_job_options(env: Queues, run: Run, tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("job-1\n", encoding="utf-8")
    code, _, err = run("enqueue", "--file", str(ids), "--request-id", REQUEST_ID)
    assert code == 2
    assert "--request-id" in err
    assert message_count(env, env.trigger) == 0


def test_file_of_250_ids_enqueues_250_with_progress(env: Queues, run: Run, tmp_path: Path) -> None:
    wanted = [f"job-{n:03d}" for n in range(250)]
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(wanted) + "\n", encoding="utf-8")
    code, out, err = run("enqueue", "--file", str(ids))
    assert code == 0
    assert out == f"enqueued 250 terminate request(s) to {env.trigger}\n"
    assert "enqueued 250/250 (100%)" in err.splitlines()  # a line per 10% when stderr is not a TTY
    assert len(err.splitlines()) == 10
    client = raw(env, env.trigger)
    received = [json.loads(m.content)["jobId"] for m in client.receive_messages(messages_per_page=32)]
    assert sorted(received) == wanted


def test_missing_file_is_a_usage_error(env: Queues, run: Run, tmp_path: Path) -> None:
    code, _, err = run("enqueue", "--file", str(tmp_path / "nope.txt"))
    assert code == 2
    assert "nope.txt" in err


def test_progress_redraws_in_place_on_a_tty() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    progress = Progress(3, stream)
    for _ in range(3):
        progress.advance()
    progress.close()
    assert stream.getvalue().startswith("\renqueued 1/3 (33%)")
    assert stream.getvalue().endswith("\renqueued 3/3 (100%)\n")


# --- poison list / show ------------------------------------------------------------------------------------


@BOTH_ENCODINGS
def test_poison_list_is_a_table_of_records_and_host_moved_messages(
    env: Queues, run: Run, writer: PoisonWriter, encoding: str
) -> None:
    writer.write(record('{"jobId":"job-1"}', job_id="job-1"))
    writer.write(record('{"jobId":"job-2"}', job_id="job-2", code="ConditionNotMet", status=412, attempts=3))
    host_moved(env, '{"jobId":"job-3","account":"eu"}', encoding, ttl=7 * 86400)  # after maxDequeueCount
    code, out, err = run("poison", "list")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "JOB", "ID", "ACCOUNT", "CODE", "HTTP", "ATTEMPTS", "FAILED", "AT", "EXPIRES"]
    peeked = raw(env, env.poison).peek_messages(max_messages=32)
    assert peeked[2].expires_on is not None
    moved_expiry = peeked[2].expires_on.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert [row.split()[1:] for row in rows] == [
        ["job-1", "-", "JobNotFound", "404", "1", rows[0].split()[6], "never"],
        ["job-2", "-", "ConditionNotMet", "412", "3", rows[1].split()[6], "never"],
        ["job-3", "eu", "(moved", "by", "host)", "-", "unknown", rows[2].split()[8], moved_expiry],
    ]
    assert [row.split()[0] for row in rows] == [m.id for m in peeked]
    assert err == f"warning: 1 entry expires at {moved_expiry}, when storage deletes it: replay it before then\n"
    assert len(raw(env, env.poison).peek_messages(max_messages=32)) == 3  # peeked, not dequeued

    code, out, _ = run("poison", "list", "--code", "conditionnotmet", "--json")
    assert code == 0
    [row] = json.loads(out)
    assert row | {"id": None, "failedAt": None} == {
        "id": None,
        "kind": "record",
        "jobId": "job-2",
        "account": None,
        "code": "ConditionNotMet",
        "httpStatus": 412,
        "attempts": 3,
        "failedAt": None,
        "expiresOn": None,
        "replayable": True,
    }
    code, out, _ = run("--json", "poison", "list", "--account", "EU")
    [moved] = json.loads(out)
    assert (moved["kind"], moved["jobId"], moved["attempts"], moved["expiresOn"]) == (
        "message",
        "job-3",
        None,
        moved_expiry,
    )


def test_poison_list_reads_past_the_32_peek_limit_and_leaves_every_record_visible(
    env: Queues, run: Run, writer: PoisonWriter
) -> None:
    for n in range(40):
        writer.write(record(f'{{"jobId":"job-{n}"}}', job_id=f"job-{n}", code="JobNotFound" if n % 2 else "Other"))
    code, out, _ = run("poison", "list", "--limit", "0", "--json")
    assert code == 0
    assert sorted(r["jobId"] for r in json.loads(out)) == sorted(f"job-{n}" for n in range(40))
    assert len(raw(env, env.poison).peek_messages(max_messages=32)) == 32  # released, visible again
    code, out, _ = run("poison", "list", "--code", "JobNotFound", "--json")
    assert len(json.loads(out)) == 20
    code, out, err = run("poison", "list", "--limit", "5")
    assert len(out.splitlines()) == 6
    assert "showing 5 of about 40" in err


@BOTH_ENCODINGS
def test_poison_show_prints_the_full_record(env: Queues, run: Run, writer: PoisonWriter, encoding: str) -> None:
    writer.write(record('{"jobId":"job-1"}'))
    [peeked] = raw(env, env.poison).peek_messages()
    code, out, _ = run("poison", "show", peeked.id)
    assert code == 0
    assert out.startswith("{\n  ")  # pretty-printed
    assert json.loads(out) == json.loads(message_bytes(peeked.content, encoding))
    code, out, _ = run("--json", "poison", "show", peeked.id)
    assert out.count("\n") == 1
    assert json.loads(out)["error"]["code"] == "JobNotFound"


@BOTH_ENCODINGS
def test_poison_show_of_a_host_moved_message_says_what_is_known(env: Queues, run: Run, encoding: str) -> None:
    moved_id = host_moved(env, '{"jobId":"job-3"}', encoding, ttl=7 * 86400)
    [peeked] = raw(env, env.poison).peek_messages()
    assert peeked.expires_on is not None
    assert peeked.inserted_on is not None
    code, out, _ = run("poison", "show", moved_id)
    assert code == 0
    assert json.loads(out) == {
        "kind": "message",
        "id": moved_id,
        "jobId": "job-3",
        "account": "default",
        "insertedOn": peeked.inserted_on.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "expiresOn": peeked.expires_on.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "attempts": None,
        "message": '{"jobId":"job-3"}',
    }


def test_a_base64_message_in_a_plain_queue_is_read_and_replayed_as_it_was(env: Queues, run: Run) -> None:
    # A producer with TextBase64EncodePolicy on a messageEncoding none queue: the function reads it (§3), so may we.
    text = base64.b64encode(b'{"jobId":"job-7","account":"eu"}').decode()
    moved_id = host_moved(env, text, "none")
    code, out, _ = run("--json", "poison", "list")
    assert code == 0
    assert [(r["id"], r["jobId"], r["account"]) for r in json.loads(out)] == [(moved_id, "job-7", "eu")]
    code, _, _ = run("poison", "replay", "--account", "eu")
    assert code == 0
    assert [m.content for m in raw(env, env.trigger).peek_messages()] == [text]


def test_records_written_in_base64_still_read_once_the_queue_is_plain(env: Queues, run: Run) -> None:
    storage = StorageSettings(connection_string=env.connection_string)
    PoisonWriter(queue_client(storage, env.poison, "base64")).write(record('{"jobId":"job-1"}'))
    code, out, _ = run("--json", "poison", "list")
    assert code == 0
    assert [(r["kind"], r["jobId"], r["code"]) for r in json.loads(out)] == [("record", "job-1", "JobNotFound")]
    code, _, _ = run("poison", "replay")
    assert code == 0
    assert [m.content for m in raw(env, env.trigger).peek_messages()] == ['{"jobId":"job-1"}']


def test_poison_show_of_an_unknown_id_exits_1(env: Queues, run: Run, writer: PoisonWriter) -> None:
    writer.write(record('{"jobId":"job-1"}'))
    code, out, err = run("poison", "show", "00000000-0000-0000-0000-000000000000")
    assert (code, out) == (1, "")
    assert "no poison record" in err


def test_missing_poison_queue_exits_3(env: Queues, run: Run) -> None:
    code, _, err = run("poison", "list")
    assert code == 3
    assert err == f"error: queue {env.poison} does not exist at {endpoint_of(raw(env, env.poison))}\n"


# --- poison replay / purge ---------------------------------------------------------------------------------


@BOTH_ENCODINGS
def test_replay_re_enqueues_the_exact_original_text_and_deletes_the_record(
    env: Queues, run: Run, writer: PoisonWriter, encoding: str
) -> None:
    original = ' { "jobId" : "job-9",  "reason": "h\u00e9llo \u2603" }\n'
    writer.write(record(original, job_id="job-9"))
    writer.write(record('{"jobId":"job-keep"}', job_id="job-keep", code="ConditionNotMet", status=412))
    code, out, err = run("poison", "replay", "--code", "JobNotFound")
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == f"replayed 1 record(s) to {env.trigger}; skipped 0"
    assert trigger_bodies(env, encoding) == [original.encode("utf-8")]
    [kept] = stored(env, env.poison, encoding)
    assert kept["jobId"] == "job-keep"
    assert len(raw(env, env.poison).peek_messages(max_messages=32)) == 1  # the other one is visible again


def test_replay_dry_run_changes_nothing(env: Queues, run: Run, writer: PoisonWriter) -> None:
    writer.write(record('{"jobId":"job-1"}'))
    writer.write(record('{"jobId":"job-2"}', job_id="job-2"))
    before = [(m.id, m.dequeue_count) for m in raw(env, env.poison).peek_messages(max_messages=32)]
    code, out, _ = run("poison", "replay", "--dry-run", "--json")
    assert code == 0
    document = json.loads(out)
    assert document["dryRun"] is True
    assert [r["jobId"] for r in document["replayed"]] == ["job-1", "job-2"]
    assert [(m.id, m.dequeue_count) for m in raw(env, env.poison).peek_messages(max_messages=32)] == before
    assert message_count(env, env.trigger) == 0


@BOTH_ENCODINGS
def test_replay_restores_a_non_utf8_original_byte_for_byte(
    env: Queues, run: Run, writer: PoisonWriter, encoding: str
) -> None:
    original = b'\xff\xfe{"jobId":"job-1"}\x00'
    writer.write(record(original, job_id=None, code="InvalidMessage", status=None))
    assert stored(env, env.poison, encoding)[0]["originalMessageEncoding"] == "base64"
    code, _, err = run("poison", "replay", "--code", "InvalidMessage")
    assert code == 0
    assert "it will fail again" in err  # an invalid original is replayed as asked, with a warning
    assert trigger_bodies(env, encoding) == [original]
    assert stored(env, env.poison, encoding) == []


@BOTH_ENCODINGS
def test_replay_of_a_host_moved_message_sends_it_back_unchanged(env: Queues, run: Run, encoding: str) -> None:
    host_moved(env, '{"jobId":"job-3"}', encoding, ttl=7 * 86400)
    code, _, _ = run("poison", "replay", "--job-id", "JOB-3")
    assert code == 0
    assert trigger_bodies(env, encoding) == [b'{"jobId":"job-3"}']
    [replayed] = raw(env, env.trigger).peek_messages()
    assert replayed.expires_on is not None
    assert replayed.expires_on.year == 9999  # the replayed message does not expire either
    assert stored(env, env.poison, encoding) == []


@BOTH_ENCODINGS
def test_a_host_moved_message_the_keeper_kept_lists_as_a_record_and_replays(
    env: Queues, run: Run, writer: PoisonWriter, encoding: str
) -> None:
    host_moved(env, '{"jobId":"job-5","reason":"r"}', encoding, ttl=7 * 86400)
    assert PoisonKeeper([raw(env, env.poison)], writer, max_dequeue_count=5).run().kept == 1
    code, out, err = run("--json", "poison", "list")
    assert (code, err) == (0, "")  # nothing expires any more
    [row] = json.loads(out)
    assert (row["kind"], row["code"], row["jobId"], row["attempts"], row["expiresOn"]) == (
        "record",
        "HostGaveUp",
        "job-5",
        5,
        None,
    )
    code, _, _ = run("poison", "replay", "--code", "hostgaveup")
    assert code == 0
    [body] = trigger_bodies(env, encoding)
    assert json.loads(body if body.startswith(b"{") else base64.b64decode(body)) == {"jobId": "job-5", "reason": "r"}
    assert stored(env, env.poison, encoding) == []


def test_records_are_listed_shown_and_replayed_with_their_account(env: Queues, run: Run, writer: PoisonWriter) -> None:
    writer.write(record('{"jobId":"job-1","account":"eu"}', account="eu"))
    writer.write(record('{"jobId":"job-2"}', job_id="job-2", account="default"))
    code, out, _ = run("poison", "list", "--account", "EU")
    [header, row] = out.splitlines()
    assert (code, header.split()[3], row.split()[1:3]) == (0, "ACCOUNT", ["job-1", "eu"])
    code, out, _ = run("--json", "poison", "show", row.split()[0])
    assert json.loads(out)["account"] == "eu"
    code, _, _ = run("poison", "replay", "--account", "eu")
    assert code == 0
    assert stored(env, env.trigger, "none") == [{"jobId": "job-1", "account": "eu"}]  # the original, unchanged
    assert [r["jobId"] for r in stored(env, env.poison, "none")] == ["job-2"]


def stuck_record(job_id: str = "job-1", account: str = "default") -> PoisonRecord:
    """A TerminationStuck record as confirm_termination writes it: the confirm message is its original (§5b)."""
    check = ConfirmCheck(job_id, account, "budget", "orig-1", 3)
    error = BatchError(
        "TerminationStuck",
        "The job is still terminating after 3 check(s).",
        (
            BatchErrorDetail("state", "terminating"),
            BatchErrorDetail("stateTransitionTime", "2026-12-01T10:00:00.0000000Z"),
            BatchErrorDetail("checks", "3"),
        ),
    )
    return PoisonRecord(
        error=error,
        attempts=3,
        message_id="orig-1",
        original_message=check.to_json().encode(),
        job_id=job_id,
        reason="budget",
        account=account,
    )


def test_a_termination_stuck_record_is_listed_and_shown_like_any_other(
    env: Queues, run: Run, writer: PoisonWriter
) -> None:
    writer.write(stuck_record())
    code, out, _ = run("poison", "list", "--code", "terminationstuck")
    [header, row] = out.splitlines()
    assert code == 0
    assert header.split()[:6] == ["ID", "JOB", "ID", "ACCOUNT", "CODE", "HTTP"]
    assert row.split()[1:4] == ["job-1", "default", "TerminationStuck"]
    code, out, _ = run("--json", "poison", "show", row.split()[0])
    shown = json.loads(out)
    assert (shown["error"]["code"], shown["error"]["httpStatus"], shown["attempts"]) == ("TerminationStuck", None, 3)
    assert json.loads(shown["originalMessage"])["check"] == 3


@pytest.mark.parametrize(("flags", "expected"), [((), {}), (("--force",), {"force": True})])
def test_replay_of_a_termination_stuck_record_sends_a_fresh_terminate(
    env: Queues, run: Run, writer: PoisonWriter, flags: tuple[str, ...], expected: dict[str, object]
) -> None:
    writer.write(stuck_record(account="eu"))
    code, out, err = run("poison", "replay", "--code", "TerminationStuck", *flags)
    assert (code, err) == (0, "")
    # Not the check (that belongs on the confirm queue): what a producer sends for the job, force=true if asked.
    assert stored(env, env.trigger, "none") == [{"jobId": "job-1", "reason": "budget", "account": "eu", **expected}]
    assert "as a fresh terminate" in out
    assert stored(env, env.poison, "none") == []


def test_replay_force_leaves_other_originals_unchanged_and_says_so(env: Queues, run: Run, writer: PoisonWriter) -> None:
    writer.write(record('{"jobId":"job-2"}', job_id="job-2", code="ServiceUnavailable", status=None))
    code, _, err = run("poison", "replay", "--force")
    assert code == 0
    assert "--force applies to the records of checks" in err
    assert stored(env, env.trigger, "none") == [{"jobId": "job-2"}]


def test_replay_skips_a_truncated_record_and_keeps_it(
    env: Queues, run: Run, writer: PoisonWriter, encoding: str
) -> None:
    writer.write(record(b'{"jobId":"big","reason":"' + b"x" * 60000 + b'"}', job_id="big", code="InvalidMessage"))
    assert stored(env, env.poison, encoding)[0]["originalMessageTruncated"] is True
    code, out, err = run("poison", "replay")
    assert code == 1  # nothing replayed
    assert "skipped" in err
    assert "truncated" in err
    assert out.splitlines()[-1] == f"replayed 0 record(s) to {env.trigger}; skipped 1"
    assert len(stored(env, env.poison, encoding)) == 1
    assert message_count(env, env.trigger) == 0


def test_replay_with_nothing_matching_exits_1(env: Queues, run: Run, writer: PoisonWriter, encoding: str) -> None:
    writer.write(record('{"jobId":"job-1"}'))
    code, _, err = run("poison", "replay", "--job-id", "other")
    assert code == 1
    assert "no matching poison records" in err
    assert len(stored(env, env.poison, encoding)) == 1


def test_replay_to_a_missing_trigger_queue_exits_3_and_keeps_the_records(
    env: Queues, run: Run, writer: PoisonWriter
) -> None:
    writer.write(record('{"jobId":"job-1"}'))
    code, _, err = run("--queue", "no-such-queue", "--poison-queue", env.poison, "poison", "replay")
    assert code == 3
    assert "queue no-such-queue does not exist" in err
    assert len(raw(env, env.poison).peek_messages()) == 1


def test_purge_deletes_the_matching_records(env: Queues, run: Run, writer: PoisonWriter, encoding: str) -> None:
    writer.write(record('{"jobId":"job-1"}'))
    writer.write(record('{"jobId":"job-2"}', job_id="job-2"))
    writer.write(record('{"jobId":"job-3"}', job_id="job-3", code="ConditionNotMet", status=412))
    code, out, _ = run("poison", "purge", "--code", "JobNotFound")
    assert code == 0
    assert out == f"purged 2 record(s) from {env.poison}\n"
    assert [r["jobId"] for r in stored(env, env.poison, encoding)] == ["job-3"]
    code, out, _ = run("poison", "purge", "--code", "JobNotFound", "--json")
    assert (code, json.loads(out)["purged"]) == (1, 0)
    code, out, _ = run("poison", "purge", "--all")
    assert (code, out) == (0, f"purged 1 record(s) from {env.poison}\n")
    assert stored(env, env.poison, encoding) == []


# --- storage failures and settings -------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [("enqueue", "job-1"), ("poison", "list"), ("poison", "replay")])
def test_unreachable_storage_exits_3_fast_with_one_line(
    monkeypatch: pytest.MonkeyPatch, run: Run, argv: tuple[str, ...]
) -> None:
    key = base64.b64encode(b"not-a-real-key").decode()
    dead = f"DefaultEndpointsProtocol=http;AccountName=dead;AccountKey={key};QueueEndpoint=http://127.0.0.1:9/dead;"
    monkeypatch.setenv("AzureWebJobsStorage", dead)
    monkeypatch.setenv("TERMINATE_QUEUE_NAME", "batch-terminate")
    started = time.monotonic()
    code, out, err = run(*argv)
    assert time.monotonic() - started < 5
    assert code == 3
    assert out == ""
    assert err == "error: cannot reach storage at http://127.0.0.1:9 (connection refused)\n"
    assert key not in err


def test_settings_come_from_the_environment_then_the_settings_files(tmp_path: Path) -> None:
    sample = {"Values": {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "TERMINATE_QUEUE_NAME": "from-sample"}}
    (tmp_path / "local.settings.sample.json").write_text(json.dumps(sample), encoding="utf-8")
    (tmp_path / "host.json").write_text('{"extensions": {"queues": {"messageEncoding": "none"}}}', encoding="utf-8")
    target = resolve_target(environ={}, root=tmp_path)
    assert target == Target(
        StorageSettings(connection_string="UseDevelopmentStorage=true"), "from-sample", "from-sample-poison", "none"
    )
    # UseDevelopmentStorage=true is Azurite on 10001, the local run command's, with the well-known account
    assert open_queue(target.storage, "q").url == "http://127.0.0.1:10001/devstoreaccount1/q"

    local = {"Values": {"TERMINATE_QUEUE_NAME": "from-local", "POISON_QUEUE_NAME": "dead-letters"}}
    (tmp_path / "local.settings.json").write_text(json.dumps(local), encoding="utf-8")
    env = {"AzureWebJobsStorage__queueServiceUri": "https://acct.queue.core.windows.net", "POISON_QUEUE_NAME": ""}
    target = resolve_target(environ=env, root=tmp_path)
    assert (target.queue, target.poison_queue) == ("from-local", "dead-letters")
    assert target.storage.connection_string is None  # storage settings are never mixed across sources
    assert target.storage.queue_service_uri == "https://acct.queue.core.windows.net"
    assert target.encoding == "none"

    target = resolve_target(queue="other", environ=env, root=tmp_path)
    assert (target.queue, target.poison_queue) == ("other", "other-poison")


def test_missing_storage_setting_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="AzureWebJobsStorage"):
        resolve_target(environ={"TERMINATE_QUEUE_NAME": "q-1"}, root=tmp_path)


def help_text_ok(result: subprocess.CompletedProcess[str]) -> None:
    """The top-level --help, printed whole, with the console script's name."""
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("usage: batch-terminator ")
    for word in ("enqueue", "poison", "Exit codes"):
        assert word in result.stdout


def test_help_runs_as_a_module_from_another_directory(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "ops", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    help_text_ok(result)


def test_console_script_names_the_cli_entry() -> None:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    module, _, function = project["project"]["scripts"]["batch-terminator"].partition(":")
    assert getattr(importlib.import_module(module), function) is entry
    assert {"ops", "ops.*", "shared", "shared.*"} <= set(project["tool"]["setuptools"]["packages"]["find"]["include"])


def test_installed_console_script_runs_this_tree_from_any_directory(tmp_path: Path) -> None:
    owner = Path(sys.prefix).resolve().parent
    if owner != PROJECT_ROOT:  # as ./dev setup: a venv borrowed from another tree keeps that tree's CLI
        pytest.skip(f"this venv belongs to {owner}; its ./dev setup installs the console script")
    site_packages = sysconfig.get_paths()["purelib"]  # not the tree's own batch_terminator.egg-info
    installed = list(importlib.metadata.distributions(name="batch-terminator", path=[site_packages]))
    assert installed, "batch-terminator is not installed in this venv: run ./dev setup"
    source = json.loads(installed[0].read_text("direct_url.json") or "{}").get("url", "")
    assert Path(urllib.parse.urlsplit(source).path).resolve() == PROJECT_ROOT, f"installed from {source}"
    script = Path(sys.executable).parent / "batch-terminator"
    result = subprocess.run([str(script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    help_text_ok(result)


def test_replay_skips_a_kept_kill_switch_command() -> None:
    # A kept kill-switch command is no terminate request: replaying it to the trigger queue would only make an
    # InvalidMessage record; the incident commands are the way on (docs/CONTRACT.md §10).
    from ops.poison_commands import _replay_bodies
    from ops.poison_queue import PoisonEntry

    command = PoisonEntry("e-1", None, 0.0, None, None, {}, b'{"incident": "budget-01234567", "command": "plan"}', None)
    terminate = PoisonEntry("e-2", None, 0.0, None, None, {}, b'{"jobId": "job-1"}', None)
    bodies, problems = _replay_bodies([command, terminate], force=False)
    assert set(problems) == {"e-1"}
    assert "incidents" in problems["e-1"]
    assert bodies == {"e-2": b'{"jobId": "job-1"}'}
