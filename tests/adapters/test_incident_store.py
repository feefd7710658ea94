"""The incident table over Azurite (docs/CONTRACT.md §10): insert-if-absent, ETag-matched updates, big incidents."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from local.azurite import Azurite
from shared.config.settings import StorageSettings
from shared.contract.errors import IncidentWriteFailed
from shared.contract.incident import Incident, IncidentJob, Selectors, Source, State
from shared.storage.incidents import IncidentStore

pytestmark = pytest.mark.integration

NOW = datetime(2026, 1, 2, tzinfo=UTC)


@pytest.fixture
def store(azurite: Azurite) -> IncidentStore:
    storage = StorageSettings(connection_string=azurite.connection_string)
    return IncidentStore.connect(storage, f"inc{uuid.uuid4().hex[:12]}")


def incident(incident_id: str = "alert-1", at: datetime = NOW) -> Incident:
    return Incident.open(incident_id, source=Source.ALERT, reason="r", selectors=Selectors("x"), at=at, rule="rule")


def test_the_same_id_twice_gives_back_the_first_incident(store: IncidentStore) -> None:
    first, created = store.insert(incident())
    again, created_again = store.insert(incident().changed(NOW, reason="other"))

    assert (created, created_again) == (True, False)
    assert again == first
    assert store.get("alert-1") == first
    assert store.get("alert-2") is None


def test_incidents_are_listed_newest_first(store: IncidentStore) -> None:
    for n in range(3):
        store.insert(incident(f"alert-{n}", NOW + timedelta(minutes=n)))
    assert [i.id for i in store.list_incidents()] == ["alert-2", "alert-1", "alert-0"]
    assert [i.id for i in store.list_incidents(limit=1)] == ["alert-2"]


def test_concurrent_updates_are_each_applied_once(store: IncidentStore) -> None:
    store.insert(incident().changed(NOW, jobs=tuple(IncidentJob(f"job-{n}") for n in range(8))))

    def mark(job_id: str) -> None:
        store.update(
            "alert-1",
            lambda current: current.changed(
                NOW,
                jobs=tuple(IncidentJob(j.job_id, j.pool_id, True) if j.job_id == job_id else j for j in current.jobs),
            ),
        )

    threads = [threading.Thread(target=mark, args=(f"job-{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    stored = store.get("alert-1")
    assert stored is not None
    assert all(job.enqueued for job in stored.jobs), "no writer's change was lost"


def test_an_incident_of_thousands_of_jobs_fits(store: IncidentStore) -> None:
    jobs = tuple(IncidentJob(f"render-{uuid.uuid4().hex}{n:06d}"[:64], f"pool-{n % 7}") for n in range(5000))
    big = incident().changed(NOW, jobs=jobs)

    store.insert(big)
    stored = store.update("alert-1", lambda current: current.entering(State.EXECUTED, NOW))

    assert store.get("alert-1") == stored
    assert len(stored.jobs) == 5000


def test_updating_a_missing_incident_raises(store: IncidentStore) -> None:
    with pytest.raises(IncidentWriteFailed):
        store.update("alert-9", lambda current: current)
