"""The incident table (docs/CONTRACT.md §10) and the command queue: where incidents live and how commands are sent.

One entity per incident (PartitionKey `incident`, RowKey its id). The incident's document (Incident.to_document)
is stored zlib-compressed in binary properties of up to 64 KiB each (Doc00, Doc01, ...), because a Table property
holds at most 64 KiB and an incident of ALERT_MAX_JOBS=1000+ jobs is larger; State, Source, Rule, CreatedAt and
UpdatedAt are plain properties too, for people reading the table in the portal. Updates match the ETag and, on a
conflict, read again and apply the change again (optimistic concurrency). Entities never expire.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterator
from typing import Any

from azure.core import MatchConditions
from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.data.tables import TableClient, UpdateMode
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential
from azure.storage.queue import QueueClient

from shared.config import catalog
from shared.config.settings import StorageSettings
from shared.contract.errors import ConfigurationError, EnqueueFailed, IncidentWriteFailed
from shared.contract.incident import Command, Incident, IncidentCommand
from shared.storage.queues import STORAGE_READ_TIMEOUT, queue_client
from shared.transport.sessions import ca_bundle, pin_environment, pooled_session

PARTITION = "incident"
_CHUNK_BYTES = 64 * 1024
# An entity holds at most 1 MiB and 255 properties; leave room for the plain ones.
_MAX_CHUNKS = 15
_DOC_PREFIX = "Doc"
# Conflicting writers (two deliveries of one command) settle within a few rounds; more means something is wrong.
MAX_UPDATE_ROUNDS = 8


def table_client(
    storage: StorageSettings,
    table_name: str,
    *,
    credential: TokenCredential | None = None,
    pool_size: int = 10,
) -> TableClient:
    """A table client: by connection string (Azurite locally), or by the table service URI with an identity."""
    session = pooled_session(pool_size)
    transport = RequestsTransport(
        session=session,
        session_owner=False,
        connection_timeout=10,
        read_timeout=STORAGE_READ_TIMEOUT,
        connection_verify=ca_bundle() or True,
    )
    if storage.connection_string:
        client = TableClient.from_connection_string(storage.connection_string, table_name, transport=transport)
    else:
        if not storage.table_service_uri:
            raise ConfigurationError(
                catalog.STORAGE_TABLE_URI.name, "is required for incidents (or AzureWebJobsStorage__accountName)"
            )
        if credential is None and (storage.credential == "managedidentity" or storage.client_id):
            credential = ManagedIdentityCredential(client_id=storage.client_id)
        elif credential is None:
            credential = DefaultAzureCredential()
        client = TableClient(storage.table_service_uri, table_name, credential=credential, transport=transport)
    pin_environment(session, client.url)
    return client


def to_entity(incident: Incident) -> dict[str, Any]:
    """The table entity of an incident."""
    packed = zlib.compress(json.dumps(incident.to_document(), separators=(",", ":")).encode("utf-8"), 6)
    chunks = [packed[i : i + _CHUNK_BYTES] for i in range(0, len(packed), _CHUNK_BYTES)]
    if len(chunks) > _MAX_CHUNKS:
        raise IncidentWriteFailed(
            f"incident {incident.id} is too large for one table entity ({len(packed)} bytes compressed)"
        )
    entity: dict[str, Any] = {
        "PartitionKey": PARTITION,
        "RowKey": incident.id,
        "State": incident.state.value,
        "Source": incident.source.value,
        "Rule": incident.rule or "",
        "Account": incident.account,
        "CreatedAt": incident.to_document()["createdAt"],
        "UpdatedAt": incident.to_document()["updatedAt"],
        "DocParts": len(chunks),
    }
    for index, chunk in enumerate(chunks):
        entity[f"{_DOC_PREFIX}{index:02d}"] = chunk
    return entity


def from_entity(entity: dict[str, Any]) -> Incident:
    """The incident a table entity holds; ValueError when it holds none."""
    parts = entity.get("DocParts")
    if not isinstance(parts, int) or parts < 1:
        raise ValueError(f"entity {entity.get('RowKey')!r} holds no incident document")
    packed = b"".join(bytes(entity[f"{_DOC_PREFIX}{index:02d}"]) for index in range(parts))
    return Incident.from_document(json.loads(zlib.decompress(packed).decode("utf-8")))


class IncidentStore:
    """The incident table; thread-safe, one per process. Storage failures raise IncidentWriteFailed."""

    def __init__(self, table: TableClient) -> None:
        self._table = table
        self._ensured = False

    @classmethod
    def connect(
        cls, storage: StorageSettings, table_name: str, *, credential: TokenCredential | None = None
    ) -> IncidentStore:
        """The store over the app's storage account (connection string, or table service URI + identity)."""
        return cls(table_client(storage, table_name, credential=credential))

    @property
    def table_name(self) -> str:
        """The table's name."""
        return self._table.table_name

    def ensure_table(self) -> None:
        """Create the table when it is missing (an existing table is no error)."""
        try:
            self._table.create_table()
        except ResourceExistsError:
            pass
        except AzureError as exc:
            raise IncidentWriteFailed(f"could not create table {self.table_name}: {_describe(exc)}") from exc
        self._ensured = True

    def insert(self, incident: Incident) -> tuple[Incident, bool]:
        """Store a new incident unless one with its id exists: (the stored incident, whether it was new)."""
        entity = to_entity(incident)
        try:
            self._with_table(lambda: self._table.create_entity(entity))
        except ResourceExistsError:
            existing = self.get(incident.id)
            if existing is None:  # deleted in between (never by the app): store ours
                return self.insert(incident)
            return existing, False
        except AzureError as exc:
            raise IncidentWriteFailed(f"could not store incident {incident.id}: {_describe(exc)}") from exc
        return incident, True

    def get(self, incident_id: str) -> Incident | None:
        """The incident, or None when there is none."""
        found = self._read(incident_id)
        return found[0] if found is not None else None

    def list_incidents(self, *, limit: int | None = None) -> list[Incident]:
        """Every incident, newest first (by createdAt), at most `limit`."""
        incidents: list[Incident] = []
        try:
            for entity in self._with_table(lambda: self._entities()):
                try:
                    incidents.append(from_entity(dict(entity)))
                except (ValueError, KeyError, zlib.error):
                    continue  # not an incident (someone else's row): not ours to show
        except ResourceNotFoundError:
            return []
        except AzureError as exc:
            raise IncidentWriteFailed(f"could not list table {self.table_name}: {_describe(exc)}") from exc
        incidents.sort(key=lambda item: (item.created_at, item.id), reverse=True)
        return incidents[:limit] if limit is not None else incidents

    def update(self, incident_id: str, change: Callable[[Incident], Incident]) -> Incident:
        """Apply `change` to the stored incident and write it if the ETag still matches; on a conflict read again
        and apply it again. `change` may raise to give up (nothing is written). Returns what was stored.
        """
        for _ in range(MAX_UPDATE_ROUNDS):
            found = self._read(incident_id)
            if found is None:
                raise IncidentWriteFailed(f"incident {incident_id} is not in table {self.table_name}")
            current, etag = found
            updated = change(current)
            if updated == current:
                return current
            try:
                self._table.update_entity(
                    to_entity(updated),
                    mode=UpdateMode.REPLACE,
                    etag=etag,
                    match_condition=MatchConditions.IfNotModified,
                )
            except ResourceModifiedError:
                continue  # someone wrote in between: start from what they wrote
            except AzureError as exc:
                if getattr(exc, "status_code", None) == 412:
                    continue
                raise IncidentWriteFailed(f"could not update incident {incident_id}: {_describe(exc)}") from exc
            return updated
        raise IncidentWriteFailed(f"incident {incident_id} kept changing under {MAX_UPDATE_ROUNDS} updates")

    def _entities(self) -> Iterator[Any]:
        return iter(list(self._table.query_entities("PartitionKey eq @p", parameters={"p": PARTITION})))

    def _read(self, incident_id: str) -> tuple[Incident, str] | None:
        try:
            entity = self._table.get_entity(PARTITION, incident_id)
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise IncidentWriteFailed(f"could not read incident {incident_id}: {_describe(exc)}") from exc
        try:
            incident = from_entity(dict(entity))
        except (ValueError, KeyError, zlib.error) as exc:
            raise IncidentWriteFailed(f"incident {incident_id} in {self.table_name} is unreadable: {exc}") from exc
        return incident, str(entity.metadata["etag"])

    def _with_table(self, call: Callable[[], Any]) -> Any:
        """Run a call; if the table is missing, create it and run the call again."""
        try:
            return call()
        except ResourceNotFoundError as exc:
            if self._ensured and getattr(exc, "error_code", None) != "TableNotFound":
                raise
            self.ensure_table()
            return call()


class IncidentQueue:
    """The command queue (INCIDENT_QUEUE_NAME): {"incident": id, "command": name}, plain JSON, never expiring."""

    def __init__(self, queue: QueueClient) -> None:
        self._queue = queue

    @classmethod
    def connect(
        cls,
        storage: StorageSettings,
        queue_name: str,
        *,
        message_encoding: str = "none",
        credential: TokenCredential | None = None,
    ) -> IncidentQueue:
        """The queue in the app's storage account, in the trigger queues' encoding."""
        return cls(queue_client(storage, queue_name, message_encoding, credential=credential))

    @property
    def queue_name(self) -> str:
        """The command queue's name."""
        return self._queue.queue_name

    @property
    def client(self) -> QueueClient:
        """The underlying queue client."""
        return self._queue

    def send(self, incident_id: str, command: Command | str) -> str:
        """Put one command on the queue; its message id. EnqueueFailed when the queue does not take it."""
        text = IncidentCommand(incident_id, Command(command)).to_json()
        try:
            return str(self._queue.send_message(text, time_to_live=-1).id)
        except ResourceNotFoundError as exc:
            raise EnqueueFailed(f"queue {self.queue_name} does not exist") from exc
        except AzureError as exc:
            raise EnqueueFailed(f"could not enqueue to {self.queue_name}: {type(exc).__name__}") from exc


def _describe(exc: AzureError) -> str:
    code = getattr(exc, "error_code", None)
    return f"{type(exc).__name__}" + (f" {code}" if code else "")


__all__ = ["IncidentQueue", "IncidentStore", "from_entity", "table_client", "to_entity"]
