"""shared.confirmation: the confirm message (docs/CONTRACT.md §5b) read and written."""

from __future__ import annotations

import base64
import json

import pytest

from shared.contract.confirm_check import ConfirmCheck
from shared.contract.errors import InvalidMessage


def test_a_check_round_trips_as_the_contracts_object() -> None:
    check = ConfirmCheck("job-1", "eu", "budget", "orig-1", 2)
    assert json.loads(check.to_json()) == {
        "jobId": "job-1",
        "account": "eu",
        "reason": "budget",
        "messageId": "orig-1",
        "check": 2,
    }
    assert ConfirmCheck.parse(check.to_json(), accounts=("default", "eu")) == check
    assert ConfirmCheck.parse(base64.b64encode(check.to_json().encode()).decode()) == check


def test_the_following_check_counts_up() -> None:
    assert ConfirmCheck("job-1", check=1).following() == ConfirmCheck("job-1", check=2)


def test_absent_optional_fields_read_as_defaults() -> None:
    assert ConfirmCheck.parse('{"jobId": "job-1", "check": 1}') == ConfirmCheck("job-1")


@pytest.mark.parametrize(
    ("document", "keys"),
    [
        ({"check": 1}, ["jobId"]),
        ({"jobId": "a/b", "check": 1}, ["jobId"]),
        ({"jobId": "job-1"}, ["check"]),
        ({"jobId": "job-1", "check": 0}, ["check"]),
        ({"jobId": "job-1", "check": True}, ["check"]),
        ({"jobId": "job-1", "check": "1"}, ["check"]),
        ({"jobId": "job-1", "check": 1, "account": "us"}, ["account"]),
        ({"jobId": "job-1", "check": 1, "reason": 5}, ["reason"]),
        ({"jobId": "job-1", "check": 1, "messageId": 5}, ["messageId"]),
    ],
)
def test_a_malformed_check_is_invalid(document: dict[str, object], keys: list[str]) -> None:
    with pytest.raises(InvalidMessage) as caught:
        ConfirmCheck.parse(json.dumps(document), accounts=("default", "eu"))
    assert [p.key for p in caught.value.problems] == keys
