"""Property-based fuzzing of the message parser, the whole function and the BATCH_ACCOUNT_URL check."""

from __future__ import annotations

import base64
import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, timedelta, timezone
from typing import Any

import pytest
from azure.functions.queue import QueueMessage
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import terminate_job
from local.batch_emulator import BatchEmulator, RecordedRequest
from local.identity import IdentityEndpoint
from shared import wiring
from shared.config.settings import QueueOptions, Settings, StorageSettings, validate_batch_url
from shared.contract.errors import ConfigurationError, InvalidMessage, PoisonWriteFailed
from shared.contract.poison_record import MAX_RECORD_BYTES, PoisonRecord
from shared.contract.terminate_request import MAX_REASON_LENGTH, TerminateRequest
from shared.storage.poison_writer import PoisonWriter

JOB_ID_RULE = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)
FUZZ = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
FUZZ_MAIN = settings(FUZZ, max_examples=200)

# --------------------------------------------------------------------------- strategies

VALID_ID_CHARS = "abcXYZ019_-"
# Characters that look like (or are normalised into) valid ones, path/URL syntax, whitespace and controls.
HOSTILE_ID_CHARS = (
    "/\\?#%&=+.:;@!*'\"<>|{}[]`~$^,() \t\n\r\x00\x0b\x0c\x7f"
    "\u0430\u0435\u043e\u0440\u0441\u0445"  # Cyrillic a, e, o, p, c, x
    "\u0391\u039f\u0399"  # Greek A, O, I
    "\uff21\uff41\uff10\uff3f\uff0d"  # fullwidth A, a, 0, _, -
    "\u2010\u2011\u2012\u2013\u2212\u02d7\u2043"  # hyphen look-alikes
    "\u0660\u06f1\u0966\u1040"  # non-ASCII decimal digits
    "\u212a\u017f\u0131\u0130"  # Kelvin sign, long s, dotless i, dotted I
    "\u00a0\u2000\u2028\u2029\u3000\u200b\u200d\ufeff\u00ad"  # unicode spaces, zero-width, soft hyphen
    "\u0301\u0338"  # combining marks
    "\ud800\udfff"  # lone surrogates (JSON \u escapes make them reachable)
    "\U0001f600"
)


def _ids_of_length(length: int) -> st.SearchStrategy[str]:
    """Valid-alphabet ids of exactly this length."""
    return st.text(alphabet=VALID_ID_CHARS, min_size=length, max_size=length)


valid_job_ids = st.one_of(
    st.from_regex(JOB_ID_RULE, fullmatch=True),
    _ids_of_length(1),
    _ids_of_length(64),
)


@st.composite
def near_valid_job_ids(draw: st.DrawFn) -> str:
    """A valid id with hostile characters spliced in, or one that is 0, 65 or more characters long."""
    kind = draw(st.sampled_from(["splice", "length", "percent", "wrap"]))
    if kind == "length":
        return draw(st.sampled_from(["", "a" * 65, "a" * 64 + "-", "x" * 1000, "x" * 100_000]))
    base = draw(st.text(alphabet=VALID_ID_CHARS, min_size=0, max_size=64))
    if kind == "percent":
        escaped = draw(st.sampled_from(["%2F", "%2f", "%5C", "%3F", "%23", "%25", "%2E%2E", "%00", "%20"]))
        return base[:32] + escaped + base[32:]
    if kind == "wrap":
        pad = draw(st.sampled_from([" ", "\t", "\n", "\r\n", "\u00a0", "\u200b", "\ufeff", "/", "../", "./"]))
        return draw(st.sampled_from([pad + base, base + pad, pad + base + pad])) or pad
    chars = draw(st.lists(st.sampled_from(HOSTILE_ID_CHARS), min_size=1, max_size=4))
    text = list(base)
    for char in chars:
        text.insert(draw(st.integers(0, len(text))), char)
    return "".join(text)


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),  # NaN and Infinity are not JSON: test_message covers them
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=12,
)
wrong_types = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
reasons = st.one_of(
    st.text(max_size=40),
    st.integers(MAX_REASON_LENGTH - 1, MAX_REASON_LENGTH + 1).map(lambda n: "r" * n),
    st.tuples(st.sampled_from([2_000, 30_000, 70_000, 200_000]), st.sampled_from("x\u00e9\u20ac\U0001f600")).map(
        lambda size_char: size_char[1] * size_char[0]
    ),
    st.sampled_from(["", " ", "\x00", "\ud800", "line\nbreak", '"quoted"', "\\", "\U0001f600" * 600]),
    wrong_types,
)
dates = st.one_of(
    st.sampled_from(
        [
            "2099-01-01T00:00:00Z",
            "Thu, 01 Jan 2099 00:00:00 GMT",
            "9999-12-31T23:59:59-01:00",
            "0001-01-01T00:00:00+01:00",
            "Fri, 31 Dec 9999 23:59:59 -0100",
            "Mon, 01 Jan 0001 00:00:00 +0100",
            "soon",
            "",
            "2024-02-30",
            "2024-01-01T25:00:00",
        ]
    ),
    st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-1)), timezone(timedelta(hours=14))])).map(
        lambda moment: moment.isoformat()
    ),
    st.text(max_size=30),
    wrong_types,
)
option_values: dict[str, st.SearchStrategy[Any]] = {
    "reason": reasons,
    "force": st.one_of(st.booleans(), wrong_types, st.sampled_from(["true", "false", 1, 0])),
    "ifMatch": st.one_of(st.sampled_from(['"0x8D1"', "*", "a\r\nX-Evil: 1", " ", "\u00e9"]), st.text(max_size=10)),
    "ifNoneMatch": st.one_of(st.just("*"), st.text(max_size=10), wrong_types),
    "ifModifiedSince": dates,
    "ifUnmodifiedSince": dates,
    "requestId": st.one_of(st.uuids().map(str), st.text(max_size=40), wrong_types),
    "unknownField": json_values,
}


@st.composite
def near_valid_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A message object close to valid: a good, hostile or wrongly typed jobId plus some optional fields."""
    job_id = draw(st.one_of(valid_job_ids, near_valid_job_ids(), wrong_types))
    document: dict[str, Any] = {} if draw(st.integers(0, 15)) == 0 else {"jobId": job_id}
    for key in draw(st.lists(st.sampled_from(sorted(option_values)), unique=True, max_size=4)):
        document[key] = draw(option_values[key])
    return document


@st.composite
def duplicate_key_bodies(draw: st.DrawFn) -> bytes:
    """JSON text with a key repeated (the last one valid, so a last-wins parser would accept it)."""
    key = draw(st.sampled_from(["jobId", "reason", "force"]))
    first = draw(st.one_of(near_valid_job_ids(), valid_job_ids))
    pairs = [("jobId", first), (key, draw(json_scalars)), ("jobId", draw(valid_job_ids))]
    if key == "jobId":
        pairs[1] = ("jobId", draw(valid_job_ids))
    text = "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs) + "}"
    return text.encode()


@st.composite
def deep_bodies(draw: st.DrawFn) -> bytes:
    """Deeply nested arrays/objects, at the top level or inside a field of an otherwise valid message."""
    depth = draw(st.sampled_from([1_000, 50_000, 200_000]))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    nested = opener * depth + "1" + closer * depth
    if draw(st.booleans()):
        return nested.encode()
    return ('{"jobId":"deep-1","extra":' + nested + "}").encode()


@st.composite
def oversized_bodies(draw: st.DrawFn) -> bytes:
    """Messages near or past the poison record's 48 KiB: a huge reason, jobId or unknown field."""
    size = draw(st.sampled_from([1_025, 30_000, 49_000, 70_000, 200_000]))
    text = draw(st.sampled_from("x\u00e9\u20ac\U0001f600\ud800")) * size
    job_id = draw(st.one_of(valid_job_ids, near_valid_job_ids()))
    document = draw(
        st.sampled_from(
            [
                {"jobId": job_id, "reason": text},
                {"jobId": text},
                {"jobId": job_id, "padding": text},
                {"jobId": job_id, "reason": text, "force": "yes"},
            ]
        )
    )
    return _encode(document)


def _encode(document: object) -> bytes:
    """Serialise as a producer might, including the allow-nan and lone-surrogate corners."""
    return json.dumps(document).encode("utf-8")


def _utf8(text: str) -> bytes:
    """UTF-8 bytes of arbitrary text (lone surrogates kept as their 3-byte form, which is invalid UTF-8)."""
    return text.encode("utf-8", "surrogatepass")


message_bodies = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=80).map(_utf8),
    json_values.map(_encode),
    near_valid_documents().map(_encode),
    near_valid_documents().map(lambda d: b"\xef\xbb\xbf" + _encode(d)),
    near_valid_documents().map(lambda d: json.dumps(d).encode("utf-16")),
    near_valid_documents().map(lambda d: json.dumps(d, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    duplicate_key_bodies(),
    deep_bodies(),
    oversized_bodies(),
)

# --------------------------------------------------------------------------- parser


def check_parse(body: bytes | str) -> TerminateRequest | InvalidMessage:
    """Parse and assert the invariant: a request with a rule-abiding id, or InvalidMessage with problems."""
    try:
        request = TerminateRequest.parse(body)
    except InvalidMessage as exc:
        error = exc
    else:
        error = None
    if error is not None:
        assert error.problems, "InvalidMessage without a problem"
        assert all(p.key and p.value for p in error.problems)
        return error
    assert isinstance(request, TerminateRequest)
    assert isinstance(request.job_id, str)
    assert JOB_ID_RULE.fullmatch(request.job_id), request.job_id
    assert request.job_id.isascii()
    assert isinstance(request.terminate_reason, str)
    assert 0 < len(request.terminate_reason) <= MAX_REASON_LENGTH
    return request


@FUZZ
@given(body=st.binary(max_size=300))
@example(body=b"")
@example(body=b"\xef\xbb\xbf")
@example(body=b"\xff\xfe{\x00}\x00")
def test_parse_arbitrary_bytes(body: bytes) -> None:
    """Any bytes: a valid request or InvalidMessage, nothing else."""
    check_parse(body)


@FUZZ
@given(value=json_values)
def test_parse_arbitrary_json(value: object) -> None:
    """Any JSON value, as bytes and as text."""
    check_parse(_encode(value))
    check_parse(json.dumps(value))


@FUZZ
@given(document=near_valid_documents())
def test_parse_near_valid_documents(document: dict[str, Any]) -> None:
    """Near-valid objects: accepted exactly when jobId obeys the rule (other fields can only add problems)."""
    result = check_parse(_encode(document))
    job_id = document.get("jobId")
    if not (isinstance(job_id, str) and JOB_ID_RULE.fullmatch(job_id)):
        assert isinstance(result, InvalidMessage)
        assert "jobId" in {p.key for p in result.problems}
    elif isinstance(result, TerminateRequest):
        assert result.job_id == job_id


@FUZZ
@given(job_id=near_valid_job_ids())
@example(job_id="a" * 65)
@example(job_id="abc\n")
@example(job_id="\u212a")
@example(job_id="job\u2011one")
def test_parse_rejects_hostile_job_ids(job_id: str) -> None:
    """Look-alikes, path/URL syntax, whitespace and wrong lengths never pass as a job id."""
    result = check_parse(_encode({"jobId": job_id}))
    assert isinstance(result, InvalidMessage)
    assert [p.key for p in result.problems] == ["jobId"]


@FUZZ
@given(job_id=valid_job_ids)
def test_parse_accepts_every_rule_abiding_job_id(job_id: str) -> None:
    """The rule is not stricter than Batch's: 1-64 of letters, digits, '-', '_' all pass."""
    result = check_parse(_encode({"jobId": job_id}))
    assert isinstance(result, TerminateRequest)
    assert result.job_id == job_id


@FUZZ
@given(body=duplicate_key_bodies())
def test_parse_refuses_duplicate_keys(body: bytes) -> None:
    """A repeated jobId is a problem, never a silent last-wins."""
    result = check_parse(body)
    assert isinstance(result, InvalidMessage)
    assert "jobId" in {p.key for p in result.problems}


@FUZZ
@given(body=deep_bodies())
@example(body=b"[" * 200_000)
def test_parse_deep_nesting(body: bytes) -> None:
    """Deep nesting is a problem (or, within limits, an ignored field), never a RecursionError."""
    check_parse(body)


@FUZZ
@given(moment=dates)
@example(moment="9999-12-31T23:59:59-01:00")
@example(moment="0001-01-01T00:00:00+01:00")
@example(moment="Fri, 31 Dec 9999 23:59:59 -0100")
def test_parse_dates_at_the_edge_of_the_calendar(moment: object) -> None:
    """A date that cannot be shifted to UTC is a bad date (InvalidMessage), not an OverflowError."""
    check_parse(_encode({"jobId": "job-1", "ifModifiedSince": moment, "ifUnmodifiedSince": moment}))


@FUZZ
@given(text=st.text(max_size=120))
def test_parse_arbitrary_text(text: str) -> None:
    """parse() also takes str (lone surrogates included)."""
    check_parse(text)


# --------------------------------------------------------------------------- the whole function


class RecordingPoisonWriter(PoisonWriter):
    """Keeps poison records in memory, serialised and size-checked exactly as the queue would take them."""

    def __init__(self) -> None:
        """No queue client: nothing to connect to."""
        self.records: list[dict[str, Any]] = []

    @property
    def queue_name(self) -> str:
        """A fixed name."""
        return "fuzz-poison"

    def write(self, record: PoisonRecord) -> None:
        """Serialise the record and keep it; fail where the storage queue would."""
        text = record.to_json()
        try:
            size = len(text.encode("utf-8"))  # the queue client sends UTF-8
        except UnicodeEncodeError as exc:
            raise PoisonWriteFailed(f"record is not encodable as UTF-8: {exc}") from exc
        if size > MAX_RECORD_BYTES:  # base64 of more than 48 KiB exceeds the 64 KiB message limit
            raise PoisonWriteFailed(f"record of {size} bytes exceeds the queue's message size limit")
        self.records.append(json.loads(text))


@dataclass
class Harness:
    """The function wired to the emulator, with a recording poison writer."""

    batch: BatchEmulator
    identity: IdentityEndpoint
    poison: RecordingPoisonWriter
    objects: wiring.Wiring  # kept across examples: one token and session for the module, as in a worker

    def run(self, body: bytes) -> tuple[list[RecordedRequest], list[dict[str, Any]]]:
        """Deliver one message to main() (which must return) and say what reached Batch and the poison queue."""
        wiring.install(self.objects)  # each test starts from a reset wiring (tests/conftest.py)
        self.batch.reset()
        self.poison.records.clear()
        message = QueueMessage(id=str(uuid.uuid4()), body=body, dequeue_count=1, pop_receipt="pr")
        assert terminate_job.main(message) is None
        return [r for r in self.batch.requests if r.method == "POST"], list(self.poison.records)


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    """One emulator, identity endpoint and Wiring for all examples of the module."""
    with (
        IdentityEndpoint() as identity,
        BatchEmulator(authorize=identity.is_valid) as batch,
        pytest.MonkeyPatch.context() as mp,
    ):
        batch.auto_create_jobs = True
        for name, value in identity.environ().items():
            mp.setenv(name, value)
        settings_ = Settings(
            batch_account_url=batch.url,
            terminate_queue_name="fuzz",
            poison_queue_name="fuzz-poison",
            storage=StorageSettings(connection_string="UseDevelopmentStorage=true"),
            queues=QueueOptions(max_dequeue_count=5),
        )
        poison = RecordingPoisonWriter()
        yield Harness(
            batch, identity, poison, wiring.Wiring(settings_, sleep=lambda _: None, http_timeout=5.0, poison=poison)
        )


def _original(record: dict[str, Any]) -> bytes:
    """The original message bytes a poison record carries."""
    if record.get("originalMessageEncoding") == "base64":
        return base64.b64decode(record["originalMessage"])
    return record["originalMessage"].encode("utf-8")


@pytest.mark.integration
@FUZZ_MAIN
@given(body=message_bodies)
@example(body=b'{"jobId":"\\ud800","reason":"\\udc00"}')
@example(body=b'{"jobId":"job-1","reason":"\\ud800"}')
@example(body=b'{"jobId":"job-1","ifModifiedSince":"9999-12-31T23:59:59-01:00"}')
@example(body=b'{"jobId":"a/b"}')
@example(body=json.dumps({"jobId": "a/b", "reason": "\u00e9" * 100_000}).encode())
@example(body=json.dumps({"jobId": "x" * 100_000}).encode())
@example(body=json.dumps({"jobId": "ghost", "reason": "r" * 60_000}).encode())
@example(body=b'{"jobId":"a%2Fb"}')
def test_main_calls_batch_only_with_valid_ids(harness: Harness, body: bytes) -> None:
    """main() never raises; Batch sees only /jobs/<valid id>/terminate; invalid input → one InvalidMessage record."""
    try:
        expected: TerminateRequest | None = TerminateRequest.parse(body)
    except InvalidMessage:
        expected = None

    sent, records = harness.run(body)

    for request in sent:
        match = re.fullmatch(r"/jobs/([^/]+)/terminate", request.path)
        assert match is not None, request.path
        assert JOB_ID_RULE.fullmatch(match.group(1)), request.path
    if expected is None:
        assert sent == []
        assert len(records) == 1, records
        [record] = records
        assert record["error"]["code"] == "InvalidMessage"
        assert record["error"]["values"], record
        assert record["error"]["httpStatus"] is None
        if not record.get("originalMessageTruncated"):
            assert _original(record) == body
    else:
        assert [r.path for r in sent] == [f"/jobs/{expected.job_id}/terminate"]
        assert json.loads(sent[0].body) == {"terminateReason": expected.terminate_reason}
        assert all(r["error"]["code"] != "InvalidMessage" for r in records)
        assert len(records) <= 1


# --------------------------------------------------------------------------- BATCH_ACCOUNT_URL

hosts = st.from_regex(r"[a-z][a-z0-9]{2,23}\.[a-z]{4,12}\.batch\.azure\.com", fullmatch=True)
non_loopback_ips = (
    st.ip_addresses().filter(lambda ip: not ip.is_loopback).map(lambda ip: f"[{ip}]" if ip.version == 6 else str(ip))
)
url_text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\t\n\r"), min_size=1, max_size=12)
HOST_JUNK = " ;\\<>\"'{}|^`%!$&()*+,=\x00\x01\x7f\u00a0\u200b"
HOMOGLYPHS = "\u0430\u0435\u043e\u0440\u0441\u0456\u0501\u00e4\u00df\uff41\u2024\u3002"


@st.composite
def bad_batch_urls(draw: st.DrawFn) -> str:
    """A BATCH_ACCOUNT_URL docs/CONTRACT.md §2 says must be refused."""
    host = draw(hosts)
    kind = draw(
        st.sampled_from(
            ["credentials", "scheme", "http", "path", "query", "fragment", "port", "unicode_host", "host_junk"]
        )
    )
    if kind == "credentials":
        user = draw(st.text(alphabet="abcXYZ019%:._-", max_size=8))
        password = draw(st.text(alphabet="abcXYZ019%._-", min_size=1, max_size=8))
        return draw(st.sampled_from([f"https://{user}@{host}", f"https://{user}:{password}@{host}"]))
    if kind == "scheme":
        scheme = draw(st.sampled_from(["ftp", "ws", "wss", "file", "javascript", "httpss", "http+unix", ""]))
        return f"{scheme}://{host}" if scheme else draw(st.sampled_from([host, f"//{host}", f"https:{host}"]))
    if kind == "http":
        target = draw(st.one_of(hosts, non_loopback_ips, st.sampled_from(["localhost.evil.com", "127.0.0.1.nip.io"])))
        return f"{draw(st.sampled_from(['http', 'HTTP', 'Http']))}://{target}"
    if kind == "path":
        segment = draw(url_text.filter(lambda s: s.strip() and not set(s) <= {"/"} and "?" not in s and "#" not in s))
        return f"https://{host}/{segment}"
    if kind == "query":
        return f"https://{host}{draw(st.sampled_from(['', '/']))}?{draw(st.one_of(st.just(''), url_text))}"
    if kind == "fragment":
        return f"https://{host}{draw(st.sampled_from(['', '/']))}#{draw(st.one_of(st.just(''), url_text))}"
    if kind == "port":
        port = draw(
            st.one_of(
                st.just("0"),
                st.integers(65536, 10**12).map(str),
                st.integers(-(10**6), -1).map(str),
                st.sampled_from(
                    ["abc", "+443", " 443", "4 43", "\uff10", "\u0664\u0664\u0663", "443a", "0x1bb", "1e3", "443:443"]
                ),
            )
        )
        return f"https://{host}:{port}"
    glyphs = HOMOGLYPHS if kind == "unicode_host" else HOST_JUNK
    spliced = list(host)
    for char in draw(st.lists(st.sampled_from(glyphs), min_size=1, max_size=3)):
        # Inside the host: at its ends, whitespace would be stripped as surrounding the setting.
        spliced.insert(draw(st.integers(1, len(spliced) - 1)), char)
    return "https://" + "".join(spliced)


good_batch_urls = st.one_of(
    hosts.map(lambda host: f"https://{host}"),
    hosts.map(lambda host: f"https://{host}/"),
    st.tuples(st.sampled_from(["127.0.0.1", "localhost", "[::1]"]), st.integers(1, 65535)).map(
        lambda hp: f"http://{hp[0]}:{hp[1]}"
    ),
)


@FUZZ
@given(url=bad_batch_urls())
@example(url="https://acct.westeurope.batch.azure.com:0")
@example(url="https://\u0430cct.westeurope.batch.azure.com")
@example(url="https://acct.westeurope.batch.azure.com\\@evil.example")
@example(url="https://ho st.batch.azure.com")
@example(url="https://acct;x.batch.azure.com")
@example(url="https://%61cct.westeurope.batch.azure.com")
@example(url="https://acct.batch.azure.com\x00.evil.example")
def test_settings_refuse_malformed_batch_urls(url: str) -> None:
    """Credentials, non-https, path/query/fragment, odd ports and non-ASCII/junk hosts are configuration errors."""
    with pytest.raises(ConfigurationError) as caught:
        validate_batch_url(url)
    assert caught.value.setting == "BATCH_ACCOUNT_URL"


@FUZZ
@given(url=good_batch_urls)
def test_settings_accept_well_formed_batch_urls(url: str) -> None:
    """The refusals are not over-broad: account URLs and loopback emulators pass, without a trailing slash."""
    accepted = validate_batch_url(url)
    assert accepted == url.rstrip("/")


@pytest.fixture(scope="module")
def bare_identity() -> Iterator[IdentityEndpoint]:
    """An identity endpoint, wired in through the environment, that must never be asked for a token."""
    with IdentityEndpoint() as identity:
        yield identity


@pytest.mark.integration
@settings(FUZZ, max_examples=60)
@given(url=bad_batch_urls())
@example(url="https://user:pw@acct.westeurope.batch.azure.com")
@example(url="http://acct.westeurope.batch.azure.com")
def test_main_refuses_malformed_batch_url_before_any_token(bare_identity: IdentityEndpoint, url: str) -> None:
    """main() fails with ConfigurationError naming BATCH_ACCOUNT_URL and never asks for a token."""
    bare_identity.reset()
    try:
        validate_batch_url(url)
    except ConfigurationError:
        pass
    else:  # main() would fetch a token and retry against the bad URL for seconds: fail fast instead
        pytest.fail(f"BATCH_ACCOUNT_URL {url!r} is accepted")
    environ = {
        **bare_identity.environ(),
        "BATCH_ACCOUNT_URL": url,
        "TERMINATE_QUEUE_NAME": "fuzz-settings",
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
    }
    message = QueueMessage(id="m-1", body=b'{"jobId":"job-1"}', dequeue_count=1, pop_receipt="pr")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("POISON_QUEUE_NAME", raising=False)
        for name, value in environ.items():
            if "\x00" in value:  # the OS environment cannot hold NUL; check Settings.from_env directly
                with pytest.raises(ConfigurationError):
                    Settings.from_env({**os.environ, **environ})
                return
            mp.setenv(name, value)
        wiring.reset()
        try:
            with pytest.raises(ConfigurationError) as caught:
                terminate_job.main(message)
        finally:
            wiring.reset()
    assert caught.value.setting == "BATCH_ACCOUNT_URL"
    assert bare_identity.requests == []
