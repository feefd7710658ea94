"""The error tree: every exception survives pickling (a worker may hand one across processes)."""

from __future__ import annotations

import pickle

import pytest

from ops.errors import CliError
from shared.contract.errors import (
    AlertRejected,
    BatchCallFailed,
    BatchError,
    BatchErrorDetail,
    ConfigurationError,
    EnqueueFailed,
    IncidentWriteFailed,
    InvalidMessage,
    JobRefused,
    PoisonWriteFailed,
    RetryLater,
    TerminatorError,
)

ERROR = BatchError("JobNotFound", "The specified job does not exist.", (BatchErrorDetail("k", "v"),), 404, "r", "c")

EXAMPLES: list[TerminatorError] = [
    ConfigurationError("BATCH_ACCOUNT_URL", "is required"),
    InvalidMessage([BatchErrorDetail("jobId", "is required")], job_id="x", reason="why", account="eu"),
    JobRefused(BatchError("JobNotAllowed", "outside the prefixes", (BatchErrorDetail("jobId", "x"),))),
    BatchCallFailed(ERROR, attempts=3, transient=True),
    RetryLater("terminate job=a outcome=retry_later"),
    PoisonWriteFailed("could not write"),
    EnqueueFailed("queue q does not exist"),
    IncidentWriteFailed("table t does not take incident alert-1"),
    InvalidMessage([BatchErrorDetail("reason", "must be a string")], job_id="x", incident="alert-1"),
    AlertRejected(400, "InvalidJobId", "bad id", (BatchErrorDetail("jobId", "a/b"),)),
    CliError("queue q does not exist at http://127.0.0.1:10001", 3),
]


@pytest.mark.parametrize("exc", EXAMPLES, ids=lambda e: type(e).__name__)
def test_every_exception_pickles_and_unpickles_with_its_fields(exc: TerminatorError) -> None:
    copy = pickle.loads(pickle.dumps(exc))  # noqa: S301 - bytes this test just made

    assert type(copy) is type(exc)
    assert str(copy) == str(exc)
    assert vars(copy) == vars(exc)


def test_every_exception_of_the_tree_is_covered_by_the_pickle_test() -> None:
    def subclasses(cls: type) -> set[type]:
        return {sub for direct in cls.__subclasses__() for sub in {direct, *subclasses(direct)}}

    assert subclasses(TerminatorError) == {type(e) for e in EXAMPLES}


def test_exceptions_are_plain_classes_not_dataclasses() -> None:
    assert all(not hasattr(type(e), "__dataclass_fields__") for e in EXAMPLES)


def test_batch_call_failed_names_kind_code_status_and_attempts() -> None:
    assert str(BatchCallFailed(ERROR, attempts=2, transient=False)) == (
        "permanent failure JobNotFound (HTTP 404) after 2 attempt(s)"
    )
