"""shared.batch.jobs: Job - Get over the real client against the emulator (one read, $select, the account's URL)."""

from __future__ import annotations

import uuid

import pytest

from local.batch_emulator import BatchEmulator, JobState
from local.identity import IdentityEndpoint
from shared import wiring
from shared.batch.jobs import Job
from shared.contract.errors import BatchCallFailed

pytestmark = pytest.mark.integration


@pytest.fixture
def getter(function_env: dict[str, str]) -> wiring.Wiring:
    made = wiring.Wiring(sleep=lambda _: None)
    wiring.install(made)
    return made


def test_a_job_is_read_with_its_state_and_metadata(
    getter: wiring.Wiring, batch: BatchEmulator, identity: IdentityEndpoint
) -> None:
    batch.add_job("job-1", state=JobState.TERMINATING, metadata={"batch-terminator-keep": "true", "owner": "x"})
    crid = str(uuid.uuid4())
    job = getter.job_getter()("default", "job-1", crid, select="id,state,stateTransitionTime,metadata")
    assert isinstance(job, Job)
    assert (job.id, job.state) == ("job-1", "terminating")
    assert job.metadata == {"batch-terminator-keep": "true", "owner": "x"}
    assert job.state_transition_time is not None
    assert job.request_id
    [read] = batch.requests
    assert (read.method, read.path) == ("GET", "/jobs/job-1")
    assert read.query["$select"] == "id,state,stateTransitionTime,metadata"
    assert read.query["api-version"] == "2025-06-01"
    assert read.headers["client-request-id"] == crid
    assert read.headers["authorization"] == f"Bearer {identity.issued[0]}"


def test_a_missing_job_is_job_not_found(getter: wiring.Wiring, batch: BatchEmulator) -> None:
    with pytest.raises(BatchCallFailed) as caught:
        getter.job_getter()("default", "ghost", str(uuid.uuid4()), select="id,state")
    assert (caught.value.error.code, caught.value.error.http_status, caught.value.transient) == (
        "JobNotFound",
        404,
        False,
    )


def test_the_alias_picks_the_account(
    monkeypatch: pytest.MonkeyPatch, getter: wiring.Wiring, batch: BatchEmulator, identity: IdentityEndpoint
) -> None:
    with BatchEmulator(authorize=identity.is_valid) as other:
        monkeypatch.setenv("BATCH_ACCOUNTS", f"eu={other.url}")
        other.add_job("job-1", state=JobState.COMPLETED)
        assert getter.job_getter()("EU", "job-1", str(uuid.uuid4()), select="id,state").state == "completed"
        assert batch.requests == []


def test_an_id_that_failed_validation_never_becomes_a_url(getter: wiring.Wiring, batch: BatchEmulator) -> None:
    with pytest.raises(ValueError, match="validation"):
        getter.job_getter()("default", "../pools", str(uuid.uuid4()), select="id")
    assert batch.requests == []
