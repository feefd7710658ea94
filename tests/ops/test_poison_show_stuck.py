"""`batch-terminator poison show` of a TerminationStuck record: the record as JSON on stdout, why it is stuck in one
line on stderr (docs/CONTRACT.md §5b), with the operator's next step."""

from __future__ import annotations

import json
import os

import pytest
from azure.storage.queue import QueueClient

from ops.__main__ import main
from shared.config.settings import StorageSettings
from shared.contract.confirm_check import ConfirmCheck
from shared.contract.errors import BatchError, BatchErrorDetail
from shared.contract.poison_record import PoisonRecord
from shared.storage.poison_writer import PoisonWriter
from shared.storage.queues import queue_client
from tests.conftest import Queues

pytestmark = pytest.mark.integration

BASE = (("state", "terminating"), ("stateTransitionTime", "2026-12-01T10:00:00.0000000Z"), ("checks", "3"))
DIAGNOSED = (
    *BASE,
    ("releaseTasksRunning", "3"),
    ("releaseTaskNodes", "tvm-1_1-20261201t090000z,tvm-1_2-20261201t090000z,tvm-1_3-20261201t090000z"),
    ("releaseTaskSince", "2026-12-01T10:02:11.0000000Z"),
    ("unusableNodes", "1"),
    ("offlineNodes", "0"),
    ("startTaskFailedNodes", "0"),
)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, queues: Queues) -> Queues:
    """The function's settings in the environment, pointing at this test's queues."""
    for name in list(os.environ):
        if name.startswith(("AzureWebJobsStorage", "AzureFunctionsJobHost__")) or name in (
            "TERMINATE_QUEUE_NAME",
            "POISON_QUEUE_NAME",
            "BATCH_ACCOUNTS",
        ):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AzureWebJobsStorage", queues.connection_string)
    monkeypatch.setenv("BATCH_ACCOUNT_URL", "https://main.westeurope.batch.azure.com")
    monkeypatch.setenv("TERMINATE_QUEUE_NAME", queues.trigger)
    return queues


def write(queues: Queues, code: str, values: tuple[tuple[str, str], ...], account: str = "default") -> str:
    """Write one record as the functions do; its poison queue message id."""
    writer = PoisonWriter(
        queue_client(StorageSettings(connection_string=queues.connection_string), queues.poison, "none")
    )
    check = ConfirmCheck("job-1", account, "budget", "orig-1", 3)
    error = BatchError(
        code, "The job is still terminating after 3 check(s).", tuple(BatchErrorDetail(*v) for v in values)
    )
    writer.write(PoisonRecord(error, 3, "orig-1", check.to_json().encode(), "job-1", "budget", account))
    [message] = QueueClient.from_connection_string(queues.connection_string, queues.poison).peek_messages()
    return str(message.id)


def show(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("json_flag", [(), ("--json",)])
def test_poison_show_prints_why_a_termination_is_stuck_in_one_line(
    env: Queues, capsys: pytest.CaptureFixture[str], json_flag: tuple[str, ...]
) -> None:
    message_id = write(env, "TerminationStuck", DIAGNOSED)
    code, out, err = show(capsys, *json_flag, "poison", "show", message_id)
    assert code == 0
    shown = json.loads(out)  # stdout stays one JSON document, for scripts
    assert [v["key"] for v in shown["error"]["values"]] == [key for key, _ in DIAGNOSED]
    assert err.splitlines() == [
        "why stuck: release task still running on 3 nodes since 10:02 UTC; 1 node unusable"
        " (to end it: batch-terminator poison replay --code TerminationStuck --job-id job-1 --force)"
    ]


@pytest.mark.parametrize(
    ("values", "line"),
    [
        ((*BASE, ("diagnosis", "unavailable: ServiceUnavailable")), "diagnosis unavailable: ServiceUnavailable"),
        (
            (
                *BASE,
                ("releaseTask", "none"),
                ("unusableNodes", "0"),
                ("offlineNodes", "2"),
                ("startTaskFailedNodes", "0"),
            ),
            "no release task; 2 nodes offline",
        ),
    ],
)
def test_other_diagnoses_and_accounts(
    env: Queues,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    values: tuple[tuple[str, str], ...],
    line: str,
) -> None:
    monkeypatch.setenv("BATCH_ACCOUNTS", "eu=https://eu.westeurope.batch.azure.com")
    message_id = write(env, "TerminationStuck", values, account="eu")
    _, _, err = show(capsys, "poison", "show", message_id)
    assert err == (
        f"why stuck: {line} (to end it: batch-terminator poison replay --code TerminationStuck --job-id job-1"
        " --account eu --force)\n"
    )


@pytest.mark.parametrize(("code", "values"), [("TerminationStuck", BASE), ("JobNotFound", (("k", "v"),))])
def test_no_line_for_a_record_without_a_diagnosis(
    env: Queues, capsys: pytest.CaptureFixture[str], code: str, values: tuple[tuple[str, str], ...]
) -> None:
    """A TerminationStuck record written before v3, or any other record: the JSON only."""
    message_id = write(env, code, values)
    exit_code, out, err = show(capsys, "poison", "show", message_id)
    assert (exit_code, err) == (0, "")
    assert json.loads(out)["error"]["code"] == code
