"""shared.guards: docs/CONTRACT.md §5a, the checks made before Job - Terminate."""

from __future__ import annotations

import pytest

from shared.batch.jobs import Job
from shared.config.settings import Settings
from shared.contract.errors import BatchCallFailed, BatchError, BatchErrorDetail, JobRefused
from shared.contract.terminate_request import TerminateRequest
from shared.rules.guards import Clearance, Cleared, Guards, is_kept, refusal

BASE = {
    "BATCH_ACCOUNT_URL": "https://acct.westeurope.batch.azure.com",
    "TERMINATE_QUEUE_NAME": "batch-terminate",
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
}


def settings(**overrides: str) -> Settings:
    return Settings.from_env({**BASE, **overrides})


class Reads:
    """Job - Get answers to play, and the reads asked for."""

    def __init__(self, *answers: Job | BatchCallFailed) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, str, str]] = []

    def __call__(self, account: str, job_id: str, client_request_id: str, *, select: str) -> Job:
        assert {"state", "metadata"} <= set(select.split(","))
        self.calls.append((account, job_id, client_request_id))
        answer = self.answers.pop(0)
        if isinstance(answer, BatchCallFailed):
            raise answer
        return answer


def snapshot(state: str = "active", **metadata: str) -> Job:
    return Job(id="job-1", state=state, state_transition_time=None, metadata=metadata, request_id="rid-1")


def refused(guards: Guards, request: TerminateRequest) -> BatchError:
    with pytest.raises(JobRefused) as caught:
        guards.check(request, "crid")
    return caught.value.error


def test_no_guard_set_lets_every_request_through_without_a_read() -> None:
    reads = Reads()
    assert Guards(settings(), reads).check(TerminateRequest("job-1"), "crid") == Cleared(Clearance.TERMINATE)
    assert reads.calls == []


@pytest.mark.parametrize("job_id", ["render-1", "RENDER-2", "Nightly_3", "nightly_"])
def test_allowed_prefixes_are_compared_case_insensitively(job_id: str) -> None:
    guards = Guards(settings(TERMINATE_ALLOWED_JOB_ID_PREFIXES="Render-,nightly_"), Reads())
    assert guards.check(TerminateRequest(job_id), "crid").clearance is Clearance.TERMINATE


@pytest.mark.parametrize("job_id", ["other-1", "render", "xrender-1", "nightly-1"])
def test_a_job_outside_the_allowed_prefixes_is_refused_without_a_read(job_id: str) -> None:
    reads = Reads()
    guards = Guards(settings(TERMINATE_ALLOWED_JOB_ID_PREFIXES="render-,nightly_", TERMINATE_HONOR_KEEP="true"), reads)
    error = refused(guards, TerminateRequest(job_id))
    assert error.code == "JobNotAllowed"
    assert error.values == (BatchErrorDetail("jobId", job_id),)
    assert error.http_status is None
    assert reads.calls == []


@pytest.mark.parametrize("version", ["2023-11-01.18.0", "2024-02-01.19.0"])
def test_force_with_an_api_version_before_2024_07_01_is_refused(version: str) -> None:
    error = refused(Guards(settings(BATCH_API_VERSION=version), Reads()), TerminateRequest("job-1", force=True))
    assert error.code == "ForceNotSupported"
    assert BatchErrorDetail("apiVersion", version) in error.values
    assert error.http_status is None


@pytest.mark.parametrize("version", ["2024-07-01.20.0", "2025-06-01"])
def test_force_with_a_new_enough_api_version_passes(version: str) -> None:
    guards = Guards(settings(BATCH_API_VERSION=version), Reads())
    assert guards.check(TerminateRequest("job-1", force=True), "crid").clearance is Clearance.TERMINATE


def test_without_force_an_old_api_version_is_fine() -> None:
    assert refusal(TerminateRequest("job-1"), settings(BATCH_API_VERSION="2023-11-01.18.0")) is None


@pytest.mark.parametrize(
    "metadata",
    [
        {"batch-terminator-keep": "true"},
        {"batch-terminator-keep": "TRUE"},
        {"batch-terminator-keep": " True "},
        {"Batch-Terminator-Keep": "true"},
        {"owner": "x", "batch-terminator-keep": "true"},
    ],
)
def test_kept_metadata(metadata: dict[str, str]) -> None:
    assert is_kept(metadata)


@pytest.mark.parametrize(
    "metadata",
    [{}, {"batch-terminator-keep": "false"}, {"batch-terminator-keep": "yes"}, {"keep": "true"}, {"x": "true"}],
)
def test_not_kept_metadata(metadata: dict[str, str]) -> None:
    assert not is_kept(metadata)


def test_honor_keep_reads_the_job_once_in_its_account_and_refuses_a_kept_one() -> None:
    reads = Reads(snapshot(**{"batch-terminator-keep": "True"}))
    guards = Guards(settings(TERMINATE_HONOR_KEEP="true"), reads)
    error = refused(guards, TerminateRequest("job-1", account="eu"))
    assert error.code == "JobProtected"
    assert error.http_status is None
    assert reads.calls == [("eu", "job-1", "crid")]


def test_honor_keep_finds_a_completed_job_done() -> None:
    guards = Guards(settings(TERMINATE_HONOR_KEEP="true"), Reads(snapshot("completed")))
    assert guards.check(TerminateRequest("job-1"), "crid") == Cleared(Clearance.ALREADY_COMPLETED, "rid-1")


@pytest.mark.parametrize("state", ["active", "disabled", "terminating", "deleting"])
def test_honor_keep_lets_other_states_go_on_to_terminate(state: str) -> None:
    guards = Guards(settings(TERMINATE_HONOR_KEEP="true"), Reads(snapshot(state, keep="true")))
    assert guards.check(TerminateRequest("job-1"), "crid") == Cleared(Clearance.TERMINATE, "rid-1")


def test_a_failed_read_is_the_callers_to_classify() -> None:
    failure = BatchCallFailed(BatchError("ServerBusy", "busy", http_status=503), attempts=4, transient=True)
    guards = Guards(settings(TERMINATE_HONOR_KEEP="true"), Reads(failure))
    with pytest.raises(BatchCallFailed) as caught:
        guards.check(TerminateRequest("job-1"), "crid")
    assert caught.value is failure


def test_dry_run_skips_only_the_terminate() -> None:
    assert Guards(settings(TERMINATE_DRY_RUN="true"), Reads()).check(TerminateRequest("job-1"), "c") == Cleared(
        Clearance.DRY_RUN
    )
    kept = Guards(
        settings(TERMINATE_DRY_RUN="true", TERMINATE_HONOR_KEEP="true"),
        Reads(snapshot(**{"batch-terminator-keep": "true"})),
    )
    assert refused(kept, TerminateRequest("job-1")).code == "JobProtected"
    outside = Guards(settings(TERMINATE_DRY_RUN="true", TERMINATE_ALLOWED_JOB_ID_PREFIXES="a"), Reads())
    assert refused(outside, TerminateRequest("job-1")).code == "JobNotAllowed"
    completed = Guards(settings(TERMINATE_DRY_RUN="true", TERMINATE_HONOR_KEEP="true"), Reads(snapshot("completed")))
    assert completed.check(TerminateRequest("job-1"), "c").clearance is Clearance.ALREADY_COMPLETED
