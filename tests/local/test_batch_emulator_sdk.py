"""The emulator driven by the real azure-batch 15.1.0 client (requirements-bench.txt), over real azure-identity."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from azure.batch import BatchClient
from azure.batch.models import BatchJobState
from azure.batch.models._models import BatchJobTerminateOptions  # not re-exported in 15.1.0
from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
)
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.identity import ManagedIdentityCredential

from local.batch_emulator import BatchEmulator, JobState
from local.identity import IdentityEndpoint

pytestmark = pytest.mark.integration


class AllowPlainHttp(SansIOHTTPPolicy):  # type: ignore[misc]
    """Lets the bearer-token policy send its token to the emulator's http:// URL (azure-core insists on https)."""

    def on_request(self, request: Any) -> None:
        request.context["enforce_https"] = False


@pytest.fixture
def account(identity: IdentityEndpoint) -> Iterator[BatchEmulator]:
    with BatchEmulator(authorize=identity.is_valid) as emulator:
        yield emulator


def client_for(account: BatchEmulator, api_version: str | None = None) -> BatchClient:
    """The SDK's client on the emulator; api_version None keeps the SDK's own default (2025-06-01)."""
    options: dict[str, Any] = {"per_call_policies": [AllowPlainHttp()]}
    if api_version is not None:
        options["api_version"] = api_version
    return BatchClient(account.url, ManagedIdentityCredential(), **options)


@pytest.fixture
def client(account: BatchEmulator) -> BatchClient:
    return client_for(account)


def test_the_sdk_speaks_api_version_2025_06_01_with_timeout_spelled_timeOut(
    account: BatchEmulator, client: BatchClient
) -> None:
    account.add_job("render")
    client.get_job("render", service_timeout=10)
    [request] = account.requests
    assert request.query["api-version"] == "2025-06-01"
    assert request.query["timeOut"] == "10"


def test_begin_terminate_job_terminates_and_its_poller_sees_completed(
    account: BatchEmulator, client: BatchClient
) -> None:
    account.add_job("render")
    options = BatchJobTerminateOptions(termination_reason="budget exceeded")
    client.begin_terminate_job("render", options, service_timeout=30, polling_interval=0).result(timeout=10)
    [termination] = account.terminations
    assert termination.reason == "budget exceeded"
    job = client.get_job("render")
    assert job.state == BatchJobState.COMPLETED
    assert job.execution_info.termination_reason == "budget exceeded"
    # The poller read the job (Job - Get) after the 202.
    assert [r.method for r in account.requests[:2]] == ["POST", "GET"]


def test_sdk_cannot_terminate_without_options_though_the_spec_makes_the_body_optional(
    account: BatchEmulator, client: BatchClient
) -> None:
    """Client and spec disagree: the body is `"required": false` (Job - Terminate in every spec version), but
    azure-batch 15.1.0 serialises a None content-type header when `options` is omitted and fails before sending.
    The emulator follows the spec (test_batch_emulator_fidelity: a terminate without body or content type)."""
    account.add_job("render")
    with pytest.raises(ValueError, match="No value for given attribute"):
        client.begin_terminate_job("render", polling_interval=0)
    assert account.requests == []


def test_a_completed_job_is_a_409_the_sdk_raises_as_resource_exists(
    account: BatchEmulator, client: BatchClient
) -> None:
    account.add_job("render", JobState.COMPLETED)
    with pytest.raises(ResourceExistsError) as raised:
        client.begin_terminate_job("render", BatchJobTerminateOptions(termination_reason="r"), polling_interval=0)
    assert raised.value.error is not None
    assert raised.value.error.code == "JobCompleted"


def test_get_job_reads_pool_metadata_and_select(account: BatchEmulator, client: BatchClient) -> None:
    account.add_job("render", pool_id="gpu", metadata={"batch-terminator-keep": "true"})
    job = client.get_job("render")
    assert (job.id, job.state, job.pool_info.pool_id, job.execution_info.pool_id) == (
        "render",
        BatchJobState.ACTIVE,
        "gpu",
        "gpu",
    )
    assert [(item.name, item.value) for item in job.metadata] == [("batch-terminator-keep", "true")]
    selected = client.get_job("render", select=["id", "state"])
    assert (selected.id, selected.state, selected.metadata) == ("render", BatchJobState.ACTIVE, None)


def test_list_jobs_pages_through_next_links_with_a_filter(account: BatchEmulator, client: BatchClient) -> None:
    active = account.add_jobs(7, prefix="render-")
    account.add_jobs(3, prefix="done-", state=JobState.COMPLETED)
    listed = client.list_jobs(max_results=2, filter="state eq 'active' and startswith(id,'render')", select=["id"])
    assert [job.id for job in listed] == active
    lists = [r for r in account.requests if r.path == "/jobs"]
    assert len(lists) == 4
    assert all(r.query["api-version"] == "2025-06-01" for r in lists)
    assert "$skiptoken" in lists[1].query


def test_list_jobs_with_a_filter_batch_refuses_raises(account: BatchEmulator, client: BatchClient) -> None:
    with pytest.raises(HttpResponseError) as raised:
        list(client.list_jobs(filter="poolInfo/poolId eq 'gpu'"))
    assert raised.value.status_code == 400
    assert raised.value.error is not None
    assert raised.value.error.code == "InvalidQueryParameterValue"


def test_get_job_task_counts(account: BatchEmulator, client: BatchClient) -> None:
    account.add_job("render", task_counts={"active": 3, "running": 2, "completed": 5, "succeeded": 4, "failed": 1})
    result = client.get_job_task_counts("render")
    counts = result.task_counts
    assert (counts.active, counts.running, counts.completed, counts.succeeded, counts.failed) == (3, 2, 5, 4, 1)
    assert result.task_slot_counts.active == 3


def test_conditional_terminate_with_the_sdks_etag_and_match_condition(
    account: BatchEmulator, client: BatchClient
) -> None:
    account.add_job("render")
    with pytest.raises(ResourceModifiedError) as raised:
        client.begin_terminate_job(
            "render",
            BatchJobTerminateOptions(termination_reason="r"),
            etag="0x8DSTALE",
            match_condition=MatchConditions.IfNotModified,
        )
    assert raised.value.status_code == 412
    # The SDK quotes the ETag (azure/batch/_utils/utils.py prep_if_match -> quote_etag); Batch's own ETag header
    # is unquoted (0x8D...), and the emulator compares either form.
    assert account.requests[-1].headers["if-match"] == '"0x8DSTALE"'
    etag = account.job("render").etag  # type: ignore[union-attr]
    client.begin_terminate_job(
        "render",
        BatchJobTerminateOptions(termination_reason="r"),
        etag=etag,
        match_condition=MatchConditions.IfNotModified,
        polling_interval=0,
    ).result(timeout=10)
    assert account.job("render").state == JobState.COMPLETED  # type: ignore[union-attr]


def test_force_through_the_sdk_ends_a_job_held_terminating(account: BatchEmulator, client: BatchClient) -> None:
    account.add_job("render", job_release_seconds=math.inf)
    options = BatchJobTerminateOptions(termination_reason="over budget")
    poller = client.begin_terminate_job("render", options, polling_interval=0)
    assert not poller.done()
    assert client.get_job("render").state == BatchJobState.TERMINATING
    client.begin_terminate_job("render", options, force=True, polling_interval=0).result(timeout=10)
    assert client.get_job("render").state == BatchJobState.COMPLETED
    posts = [r for r in account.requests if r.method == "POST"]
    assert [r.query.get("force") for r in posts] == [None, "true"]


def test_force_with_an_older_api_version_is_refused(account: BatchEmulator) -> None:
    account.add_job("render")
    with pytest.raises(HttpResponseError) as raised:
        client_for(account, "2024-02-01.19.0").begin_terminate_job(
            "render", BatchJobTerminateOptions(termination_reason="r"), force=True
        )
    assert raised.value.status_code == 400
    assert raised.value.error is not None
    assert raised.value.error.code == "UnsupportedQueryParameter"
    assert account.terminations == []


def test_an_unreal_api_version_is_refused(account: BatchEmulator) -> None:
    account.add_job("render")
    with pytest.raises(HttpResponseError) as raised:
        client_for(account, "2025-06-01.21.0").get_job("render")
    assert raised.value.error is not None
    assert raised.value.error.code == "UnsupportedRequestVersion"


def test_get_job_with_the_sdks_match_conditions(account: BatchEmulator, client: BatchClient) -> None:
    etag = account.add_job("render").etag
    # A read's failed condition is 304 (Batch's table); the SDK's own error policy (azure/batch/_patch.py)
    # raises ResourceModifiedError for it, not azure-core's ResourceNotModifiedError.
    with pytest.raises(ResourceModifiedError) as not_modified:
        client.get_job("render", etag=etag, match_condition=MatchConditions.IfModified)
    assert not_modified.value.status_code == 304
    with pytest.raises(ResourceModifiedError) as modified:
        client.get_job("render", etag="0x8DSTALE", match_condition=MatchConditions.IfNotModified)
    assert modified.value.status_code == 412
    assert client.get_job("render", etag=etag, match_condition=MatchConditions.IfNotModified).id == "render"
