"""JobSelector: the ALERT_SELECT_* settings, the server-side filter, and the checks on every listed job."""

from __future__ import annotations

import pytest

from shared.batch.jobs import Job
from shared.contract.errors import ConfigurationError
from shared.rules.guards import is_kept
from shared.rules.selection import JobSelector


def job(
    job_id: str = "render-1",
    *,
    state: str = "active",
    metadata: dict[str, str] | None = None,
    execution_pool_id: str | None = None,
    pool_info_pool_id: str | None = None,
) -> Job:
    return Job(
        job_id, state, metadata=metadata or {}, execution_pool_id=execution_pool_id, pool_info_pool_id=pool_info_pool_id
    )


def test_no_setting_means_no_selector() -> None:
    assert not JobSelector.from_env({}).configured
    assert not JobSelector.from_env({"ALERT_SELECT_JOB_ID_PREFIX": "  ", "ALERT_SELECT_METADATA": ""}).configured


def test_settings_are_read_and_trimmed() -> None:
    selector = JobSelector.from_env(
        {
            "ALERT_SELECT_JOB_ID_PREFIX": " render- ",
            "ALERT_SELECT_POOL_ID": "gpu-pool",
            "ALERT_SELECT_METADATA": " cost-center = vfx=blue ",
        }
    )

    assert selector == JobSelector("render-", "gpu-pool", ("cost-center", "vfx=blue"))
    assert selector.configured


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ALERT_SELECT_JOB_ID_PREFIX", "render'or'1"),
        ("ALERT_SELECT_JOB_ID_PREFIX", "a" * 65),
        ("ALERT_SELECT_POOL_ID", "pool/x"),
        ("ALERT_SELECT_METADATA", "team"),
        ("ALERT_SELECT_METADATA", "=render"),
    ],
)
def test_bad_settings_name_themselves(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        JobSelector.from_env({name: value})

    assert caught.value.setting == name


def test_batch_filters_state_and_id_prefix_and_nothing_else() -> None:
    assert JobSelector().odata_filter() == "state eq 'active'"
    selector = JobSelector("render-", "gpu", ("team", "vfx"))
    assert selector.odata_filter() == "state eq 'active' and startswith(id,'render-')"


def test_the_prefix_is_case_insensitive_and_checked_on_the_listed_job() -> None:
    selector = JobSelector(job_id_prefix="Render")

    assert selector.matches(job("render-1"))
    assert selector.matches(job("RENDER-2"))
    assert not selector.matches(job("etl-render"))


def test_the_pool_is_execution_info_else_pool_info() -> None:
    selector = JobSelector(pool_id="GPU")

    assert selector.matches(job(execution_pool_id="gpu", pool_info_pool_id="gpu"))
    assert selector.matches(job(execution_pool_id="gpu"))  # an auto pool
    assert selector.matches(job(pool_info_pool_id="gpu"))  # not yet running anywhere
    assert not selector.matches(job(execution_pool_id="cpu", pool_info_pool_id="gpu"))
    assert not selector.matches(job())


def test_metadata_names_compare_case_insensitively_and_values_exactly() -> None:
    selector = JobSelector(metadata=("Team", "vfx"))

    assert selector.matches(job(metadata={"team": "vfx"}))
    assert not selector.matches(job(metadata={"team": "VFX"}))
    assert not selector.matches(job(metadata={"owner": "vfx"}))


def test_only_active_jobs_with_valid_ids_are_ever_selected() -> None:
    selector = JobSelector(job_id_prefix="r")

    assert not selector.matches(job(state="completed"))
    assert not selector.matches(job("r/../x"))


@pytest.mark.parametrize(
    ("metadata", "kept"),
    [
        ({"batch-terminator-keep": "true"}, True),
        ({" Batch-Terminator-Keep ": " TRUE "}, True),
        ({"batch-terminator-keep": "false"}, False),
        ({"batch-terminator-keep": "yes"}, False),
        ({}, False),
    ],
)
def test_keep_metadata(metadata: dict[str, str], kept: bool) -> None:
    assert is_kept(metadata) is kept
