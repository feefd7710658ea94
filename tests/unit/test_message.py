"""TerminateRequest.parse: docs/CONTRACT.md §3, field by field."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from shared.contract.codec import format_http_date, parse_http_date
from shared.contract.errors import InvalidMessage
from shared.contract.terminate_request import DEFAULT_REASON, TerminateRequest


def parse(document: object) -> TerminateRequest:
    return TerminateRequest.parse(json.dumps(document).encode())


def problems_of(body: bytes | str) -> dict[str, str]:
    with pytest.raises(InvalidMessage) as caught:
        TerminateRequest.parse(body)
    return {p.key: p.value for p in caught.value.problems}


def test_minimal_message_uses_user_terminate_reason() -> None:
    request = parse({"jobId": "nightly-render_42"})
    assert request == TerminateRequest(job_id="nightly-render_42")
    assert request.terminate_reason == DEFAULT_REASON


def test_all_fields_are_read() -> None:
    request = parse(
        {
            "jobId": "job-1",
            "reason": "budget exceeded",
            "account": "EU",
            "force": True,
            "ifMatch": '"0x8D4EDFEBFADF4AB"',
            "requestId": "9C4D50EE-2D56-4CD3-8152-34347DC9F2B0",
        }
    )
    assert request.reason == "budget exceeded"
    assert request.account == "eu"
    assert request.force is True
    assert request.if_match == '"0x8D4EDFEBFADF4AB"'
    assert request.request_id == "9C4D50EE-2D56-4CD3-8152-34347DC9F2B0"


@pytest.mark.parametrize(
    ("key", "value", "attribute", "expected"),
    [
        ("ifMatch", '"0x8D4EDFEBFADF4AB"', "if_match", '"0x8D4EDFEBFADF4AB"'),
        ("ifNoneMatch", '"0x1"', "if_none_match", '"0x1"'),
        ("ifModifiedSince", "2026-11-25T10:00:00Z", "if_modified_since", datetime(2026, 11, 25, 10, tzinfo=UTC)),
        (
            "ifUnmodifiedSince",
            "Wed, 25 Nov 2026 11:00:00 GMT",
            "if_unmodified_since",
            datetime(2026, 11, 25, 11, tzinfo=UTC),
        ),
    ],
)
def test_each_condition_is_read(key: str, value: str, attribute: str, expected: object) -> None:
    assert getattr(parse({"jobId": "job-1", key: value}), attribute) == expected


def test_empty_reason_becomes_user_terminate() -> None:
    assert parse({"jobId": "a", "reason": ""}).terminate_reason == DEFAULT_REASON


def test_null_optional_fields_count_as_absent() -> None:
    request = parse({"jobId": "a", "reason": None, "force": None, "ifMatch": None, "requestId": None})
    assert request == TerminateRequest(job_id="a")


def test_unknown_fields_are_ignored() -> None:
    assert parse({"jobId": "a", "priority": 7, "nested": {"x": [1]}}) == TerminateRequest(job_id="a")


def test_force_false_adds_nothing() -> None:
    assert parse({"jobId": "a", "force": False}).force is False


def test_job_id_of_64_characters_is_accepted() -> None:
    assert parse({"jobId": "x" * 64}).job_id == "x" * 64


@pytest.mark.parametrize(
    ("job_id", "expected"),
    [
        ("", "must not be empty"),
        ("x" * 65, "must be at most 64 characters, got 65"),
        ("a/b", "may contain only"),
        ("a?b", "may contain only"),
        ("a%2Fb", "may contain only"),
        ("..", "may contain only"),
        ("a b", "may contain only"),
        (" a", "may contain only"),
        ("a\n", "may contain only"),
        ("jöb", "may contain only"),
        ("ｊob", "may contain only"),  # fullwidth look-alike  # noqa: RUF001
        ("a#b", "may contain only"),
        ("a\\b", "may contain only"),
    ],
)
def test_job_id_outside_batch_rule_is_invalid(job_id: str, expected: str) -> None:
    assert expected in problems_of(json.dumps({"jobId": job_id}))["jobId"]


@pytest.mark.parametrize(
    ("document", "key", "expected"),
    [
        ({}, "jobId", "is required"),
        ({"jobId": None}, "jobId", "is required"),
        ({"jobId": 42}, "jobId", "must be a string, got number"),
        ({"jobId": ["a"]}, "jobId", "must be a string, got array"),
        ({"jobId": "a", "reason": 5}, "reason", "must be a string, got number"),
        ({"jobId": "a", "reason": "r" * 1025}, "reason", "at most 1024"),
        ({"jobId": "a", "force": "true"}, "force", "must be a boolean, got string"),
        ({"jobId": "a", "force": 1}, "force", "must be a boolean, got number"),
        ({"jobId": "a", "ifMatch": 3}, "ifMatch", "non-empty string"),
        ({"jobId": "a", "ifMatch": ""}, "ifMatch", "non-empty string"),
        ({"jobId": "a", "ifNoneMatch": "x\r\nX-Evil: 1"}, "ifNoneMatch", "non-empty string"),
        ({"jobId": "a", "ifModifiedSince": "yesterday"}, "ifModifiedSince", "ISO 8601 or RFC 1123"),
        ({"jobId": "a", "ifUnmodifiedSince": 1700000000}, "ifUnmodifiedSince", "ISO 8601 or RFC 1123"),
        ({"jobId": "a", "requestId": "not-a-uuid"}, "requestId", "must be a UUID"),
        ({"jobId": "a", "requestId": "{9c4d50ee-2d56-4cd3-8152-34347dc9f2b0}"}, "requestId", "must be a UUID"),
    ],
)
def test_wrong_field_is_reported_by_name(document: dict[str, object], key: str, expected: str) -> None:
    assert expected in problems_of(json.dumps(document))[key]


def test_reason_of_1024_characters_is_accepted() -> None:
    assert len(parse({"jobId": "a", "reason": "r" * 1024}).reason) == 1024


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of(json.dumps({"jobId": "a/b", "force": "yes", "ifModifiedSince": "never"}))
    assert set(problems) == {"jobId", "force", "ifModifiedSince"}


def test_invalid_message_keeps_what_could_be_read() -> None:
    with pytest.raises(InvalidMessage) as caught:
        TerminateRequest.parse(json.dumps({"jobId": "a/b", "reason": "cost", "force": "x"}))
    assert caught.value.job_id == "a/b"
    assert caught.value.reason == "cost"


def test_invalid_message_without_readable_fields_has_none() -> None:
    with pytest.raises(InvalidMessage) as caught:
        TerminateRequest.parse(json.dumps({"jobId": 7, "reason": ["x"]}))
    assert caught.value.job_id is None
    assert caught.value.reason is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"\xff\xfe\x00", "is not UTF-8"),
        (b"", "is empty"),
        (b"   ", "is empty"),
        (b"{jobId: 1}", "is not JSON"),
        (b"[]", "must be a JSON object, got array"),
        (b'"job-1"', "must be a JSON object, got string"),
        (b"null", "must be a JSON object, got null"),
        (b"42", "must be a JSON object, got number"),
        (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
    ],
)
def test_body_that_is_not_a_json_object_is_invalid(body: bytes, expected: str) -> None:
    assert expected in problems_of(body)["message"]


def test_duplicate_known_keys_are_invalid() -> None:
    assert problems_of(b'{"jobId": "a", "jobId": "b"}')["jobId"] == "appears more than once"


def test_duplicate_unknown_keys_are_ignored_like_any_unknown_field() -> None:
    assert TerminateRequest.parse(b'{"jobId": "a", "x": 1, "x": 2}').job_id == "a"


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_json_constants_are_invalid(constant: str) -> None:
    assert "is not JSON" in problems_of(f'{{"jobId": "a", "x": {constant}}}')["message"]


def test_utf8_bom_is_tolerated() -> None:
    assert TerminateRequest.parse("\ufeff".encode() + b'{"jobId": "a"}').job_id == "a"


def test_str_body_is_accepted() -> None:
    assert TerminateRequest.parse('{"jobId": "a"}').job_id == "a"


@pytest.mark.parametrize(
    "text",
    ["2026-11-25T12:00:00Z", "2026-11-25T13:00:00+01:00", "2026-11-25T12:00:00", "Wed, 25 Nov 2026 12:00:00 GMT"],
)
def test_dates_are_read_as_utc(text: str) -> None:
    assert parse_http_date(text) == datetime(2026, 11, 25, 12, tzinfo=UTC)


def test_dates_format_as_rfc1123() -> None:
    assert format_http_date(datetime(2026, 11, 25, 12, tzinfo=UTC)) == "Wed, 25 Nov 2026 12:00:00 GMT"


def test_client_request_id_is_stable_per_queue_message() -> None:
    request = parse({"jobId": "a"})
    first = request.client_request_id("message-1")
    assert first == request.client_request_id("message-1")
    assert first != request.client_request_id("message-2")


def test_client_request_id_without_a_message_id_is_fresh() -> None:
    request = parse({"jobId": "a"})
    assert request.client_request_id(None) != request.client_request_id(None)


def test_client_request_id_prefers_the_one_asked_for() -> None:
    request = parse({"jobId": "a", "requestId": "9c4d50ee-2d56-4cd3-8152-34347dc9f2b0"})
    assert request.client_request_id("message-1") == "9c4d50ee-2d56-4cd3-8152-34347dc9f2b0"


def test_to_message_round_trips() -> None:
    original = parse(
        {"jobId": "a", "reason": "r", "account": "eu", "force": True, "ifModifiedSince": "2026-11-25T12:00:00Z"}
    )
    assert TerminateRequest.parse(json.dumps(original.to_message())) == original


def test_invalid_message_with_empty_reason_reports_none() -> None:
    with pytest.raises(InvalidMessage) as caught:
        TerminateRequest.parse(json.dumps({"jobId": "a/b", "reason": ""}))
    assert caught.value.reason is None


# ---- docs/CONTRACT.md §3: conditions, account, encoding


@pytest.mark.parametrize(
    "conditions",
    [
        {"ifMatch": '"0x1"', "ifNoneMatch": '"0x2"'},
        {"ifMatch": '"0x1"', "ifUnmodifiedSince": "2026-11-25T10:00:00Z"},
        {"ifModifiedSince": "2026-11-25T10:00:00Z", "ifUnmodifiedSince": "2026-11-25T10:00:00Z"},
        {
            "ifMatch": '"0x1"',
            "ifNoneMatch": '"0x2"',
            "ifModifiedSince": "2026-11-25T10:00:00Z",
            "ifUnmodifiedSince": "2026-11-25T10:00:00Z",
        },
    ],
)
def test_more_than_one_condition_is_invalid(conditions: dict[str, str]) -> None:
    problems = problems_of(json.dumps({"jobId": "a", **conditions}))
    assert set(problems) == {"conditions"}
    assert all(key in problems["conditions"] for key in conditions)


def test_a_null_condition_does_not_count() -> None:
    assert parse({"jobId": "a", "ifMatch": '"0x1"', "ifNoneMatch": None}).if_match == '"0x1"'


def test_two_conditions_one_of_them_malformed_report_both() -> None:
    problems = problems_of(json.dumps({"jobId": "a", "ifMatch": '"0x1"', "ifModifiedSince": "yesterday"}))
    assert set(problems) == {"conditions", "ifModifiedSince"}


def test_account_defaults_to_default() -> None:
    assert parse({"jobId": "a"}).account == "default"
    assert parse({"jobId": "a", "account": None}).account == "default"


def test_account_is_matched_case_insensitively_against_the_configured_aliases() -> None:
    request = TerminateRequest.parse(json.dumps({"jobId": "a", "account": "EU"}), accounts=("default", "eu"))
    assert request.account == "eu"
    assert TerminateRequest.parse('{"jobId": "a", "account": "Default"}', accounts=("default",)).account == "default"


@pytest.mark.parametrize("account", ["us", "", "https://evil.example.com", "eu "])
def test_unknown_account_is_invalid(account: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        TerminateRequest.parse(json.dumps({"jobId": "a", "account": account}), accounts=("default", "eu"))
    assert [p.key for p in caught.value.problems] == ["account"]
    assert caught.value.account == account
    assert caught.value.job_id == "a"


@pytest.mark.parametrize("account", [7, True, ["eu"], {"alias": "eu"}])
def test_account_must_be_a_string(account: object) -> None:
    with pytest.raises(InvalidMessage) as caught:
        TerminateRequest.parse(json.dumps({"jobId": "a", "account": account}), accounts=("default", "eu"))
    assert [p.key for p in caught.value.problems] == ["account"]
    assert caught.value.account is None


def test_without_known_accounts_only_the_alias_form_is_checked() -> None:
    assert TerminateRequest.parse('{"jobId": "a", "account": "anything-1"}').account == "anything-1"
    assert set(problems_of('{"jobId": "a", "account": "not/an alias"}')) == {"account"}


def test_invalid_message_reports_its_readable_account() -> None:
    with pytest.raises(InvalidMessage) as caught:
        TerminateRequest.parse('{"jobId": "a/b", "account": "EU"}', accounts=("default", "eu"))
    assert caught.value.account == "eu"
    with pytest.raises(InvalidMessage) as caught:
        TerminateRequest.parse('{"jobId": "a/b"}')
    assert caught.value.account == "default"
    with pytest.raises(InvalidMessage) as caught:
        TerminateRequest.parse("not json")
    assert caught.value.account is None


def b64(text: str | bytes) -> str:
    return base64.b64encode(text if isinstance(text, bytes) else text.encode()).decode()


@pytest.mark.parametrize(
    "body",
    [
        b64('{"jobId": "job-1", "reason": "r"}'),
        b64('\ufeff{"jobId": "job-1", "reason": "r"}'),
        b64('  {"jobId": "job-1", "reason": "r"}\n'),
        "\ufeff" + b64('{"jobId": "job-1", "reason": "r"}'),
        " " + b64('{"jobId": "job-1", "reason": "r"}') + "\r\n",
        b64('{"jobId": "job-1", "reason": "r"}')[:8] + "\n" + b64('{"jobId": "job-1", "reason": "r"}')[8:],
    ],
)
def test_base64_of_the_json_is_read_as_the_json(body: str) -> None:
    assert TerminateRequest.parse(body) == TerminateRequest(job_id="job-1", reason="r")
    assert TerminateRequest.parse(body.encode()) == TerminateRequest(job_id="job-1", reason="r")


@pytest.mark.parametrize("body", ['{"jobId": "job-1"}', ' \t\n{"jobId": "job-1"}', '\ufeff {"jobId": "job-1"}'])
def test_json_text_is_read_as_is(body: str) -> None:
    assert TerminateRequest.parse(body) == TerminateRequest(job_id="job-1")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("hello world", "neither a JSON object nor base64 of one"),
        ("abc", "neither a JSON object nor base64 of one"),
        ("e30", "neither a JSON object nor base64 of one"),  # base64 without its padding
        ("ZXlKcWIySkpaQ0k2SW1FaWZRPT0=", "is base64, but not of a JSON object"),  # base64 of base64
        (b64("[1, 2]"), "must be a JSON object, got array"),
        (b64(b"\xff\xfe{}"), "neither a JSON object nor base64 of one"),  # base64 of bytes that are not UTF-8
        ("[1, 2]", "must be a JSON object, got array"),
        ("1234", "must be a JSON object, got number"),
        ("true", "must be a JSON object, got boolean"),
        ('"x"', "must be a JSON object, got string"),
        ("{not json", "is not JSON"),
    ],
)
def test_text_that_is_neither_json_nor_base64_json_is_invalid(body: str, expected: str) -> None:
    problems = problems_of(body)
    assert list(problems) == ["message"]
    assert expected in problems["message"]
