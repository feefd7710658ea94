"""Where the CLI works: storage, trigger and poison queue names and their encoding, from the function's settings."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from azure.core.credentials import TokenCredential
from azure.core.pipeline.transport import RequestsTransport
from azure.data.tables import TableClient
from azure.storage.queue import LinearRetry, QueueClient

from ops.local_settings import local_settings_values
from shared.config import catalog, readers
from shared.config.kill_switch import KillSwitchSettings
from shared.config.settings import (
    PROJECT_ROOT,
    StorageSettings,
    queue_name_setting,
    queue_options,
    storage_from_env,
)
from shared.contract.errors import ConfigurationError
from shared.storage.queues import queue_client
from shared.storage.terminate_queue import ENQUEUE_THREADS
from shared.transport.sessions import ca_bundle, pin_environment, pooled_session

T = TypeVar("T")

STORAGE_SETTING = "AzureWebJobsStorage"
ACCOUNTS_SETTING = catalog.BATCH_ACCOUNTS.name
DEV_STORAGE = "UseDevelopmentStorage=true"
CONNECT_TIMEOUT_SECONDS = 3
READ_TIMEOUT_SECONDS = 20


@dataclass(frozen=True)
class Target:
    """Where the CLI works: storage, the trigger queue, its poison queue and their message encoding."""

    storage: StorageSettings
    queue: str
    poison_queue: str
    encoding: str
    batch_accounts: str | None = None  # BATCH_ACCOUNTS as seen here; None: not set, aliases unknown


@dataclass(frozen=True)
class IncidentTarget:
    """Where the incident commands work: the incident table, the command queue and its encoding."""

    storage: StorageSettings
    table: str
    queue_name: str | None  # INCIDENT_QUEUE_NAME; None: not set (only list and show work then)
    encoding: str
    batch_accounts: str | None = None  # BATCH_ACCOUNTS as seen here; None: not set, aliases unknown

    def queue(self) -> str:
        """INCIDENT_QUEUE_NAME, which every command that enqueues needs."""
        if self.queue_name is None:
            raise ConfigurationError(catalog.INCIDENT_QUEUE_NAME.name, "is required")
        return self.queue_name


def file_settings(root: Path) -> dict[str, str]:
    """The non-empty `Values` of local.settings.json, else of local.settings.sample.json, else nothing."""
    _, values = local_settings_values(root)
    return {name: value for name, value in values.items() if value.strip()}


def merged_settings(environ: Mapping[str, str], root: Path) -> dict[str, str]:
    """The environment over the settings file; each group (storage, queue names, accounts) comes whole from one."""
    env = {k: v for k, v in environ.items() if v.strip()}
    merged = file_settings(root)
    for in_group in (_is_storage_setting, _is_queue_name_setting, _is_account_setting, _is_incident_setting):
        if any(in_group(name) for name in env):
            merged = {k: v for k, v in merged.items() if not in_group(k)}
    merged.update(env)
    return merged


def _queue_option(value: str, option: str) -> str:
    """A queue name given on the command line (or derived), checked by the app's one queue-name rule."""
    if not readers.is_queue_name(value.strip()):
        raise ConfigurationError(option, readers.QUEUE_NAME_RULE)
    return value.strip()


def _is_storage_setting(name: str) -> bool:
    return name == STORAGE_SETTING or name.startswith(f"{STORAGE_SETTING}__")


def _is_queue_name_setting(name: str) -> bool:
    return name in ("TERMINATE_QUEUE_NAME", "POISON_QUEUE_NAME")


def _is_account_setting(name: str) -> bool:
    return name in ("BATCH_ACCOUNT_URL", ACCOUNTS_SETTING)


def _is_incident_setting(name: str) -> bool:
    return name in (catalog.INCIDENT_QUEUE_NAME.name, catalog.INCIDENT_TABLE_NAME.name)


def resolve_target(
    connection_string: str | None = None,
    queue: str | None = None,
    poison_queue: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    root: Path = PROJECT_ROOT,
) -> Target:
    """Settings from options, environment and settings file; raises ConfigurationError naming the setting."""
    settings = merged_settings(os.environ if environ is None else environ, root)
    storage = _storage(settings, connection_string)
    if queue is not None:
        name = _queue_option(queue, "--queue")
        default_poison = readers.poison_queue_of(name)
    else:
        name = queue_name_setting(settings, catalog.TERMINATE_QUEUE_NAME)
        default_poison = readers.raw(settings, catalog.POISON_QUEUE_NAME) or readers.poison_queue_of(name)
    if poison_queue is not None:
        poison = _queue_option(poison_queue, "--poison-queue")
    else:
        poison = _queue_option(default_poison, catalog.POISON_QUEUE_NAME.name)
    if poison == name:
        raise ConfigurationError("--poison-queue", "must differ from the trigger queue")
    encoding = queue_options(settings, root / "host.json").message_encoding
    accounts = settings.get(ACCOUNTS_SETTING)
    return Target(storage=storage, queue=name, poison_queue=poison, encoding=encoding, batch_accounts=accounts)


def resolve_incident_target(
    connection_string: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    root: Path = PROJECT_ROOT,
) -> IncidentTarget:
    """The incident table and command queue as the app reads them (INCIDENT_TABLE_NAME, INCIDENT_QUEUE_NAME,
    KILL_SWITCH_*); the trigger queues are not needed. Raises ConfigurationError naming the setting."""
    settings = merged_settings(os.environ if environ is None else environ, root)
    storage = _storage(settings, connection_string)
    others = tuple(
        name
        for name in (
            readers.raw(settings, catalog.TERMINATE_QUEUE_NAME),
            readers.raw(settings, catalog.POISON_QUEUE_NAME),
            readers.raw(settings, catalog.CONFIRM_QUEUE_NAME),
        )
        if name
    )
    kill_switch = KillSwitchSettings.from_env(settings, other_queues=others)
    encoding = queue_options(settings, root / "host.json").message_encoding
    return IncidentTarget(
        storage=storage,
        table=kill_switch.table_name,
        queue_name=kill_switch.queue_name,
        encoding=encoding,
        batch_accounts=settings.get(ACCOUNTS_SETTING),
    )


def _storage(settings: Mapping[str, str], connection_string: str | None) -> StorageSettings:
    if connection_string is not None:
        storage = _renamed(lambda: storage_from_env({STORAGE_SETTING: connection_string}), "--connection-string")
    else:
        storage = storage_from_env(settings)
    if storage.connection_string and storage.connection_string.replace(" ", "").lower() == DEV_STORAGE.lower():
        storage = StorageSettings(connection_string=DEV_STORAGE)  # azure-storage-queue: 127.0.0.1:10001
    return storage


def _renamed(call: Callable[[], T], setting: str) -> T:
    try:
        return call()
    except ConfigurationError as exc:
        raise ConfigurationError(setting, exc.problem) from None


def _operator_credential(storage: StorageSettings) -> TokenCredential:
    from azure.identity import DefaultAzureCredential  # an operator's az login, or the managed identity

    return DefaultAzureCredential(managed_identity_client_id=storage.client_id)


def open_queue(
    storage: StorageSettings, name: str, *, text_base64: bool = False, credential: TokenCredential | None = None
) -> QueueClient:
    """A queue client that fails fast: short connect timeout, one retry; base64 text encoding when asked."""
    if storage.queue_service_uri and credential is None:
        credential = _operator_credential(storage)
    try:
        return queue_client(
            storage,
            name,
            "base64" if text_base64 else "none",
            credential=credential,
            retry_policy=LinearRetry(backoff=1, random_jitter_range=1, retry_total=1),
            connection_timeout=CONNECT_TIMEOUT_SECONDS,
            read_timeout=READ_TIMEOUT_SECONDS,
            pool_size=ENQUEUE_THREADS,  # enqueue --file sends this many at once
        )
    except ValueError:
        raise ConfigurationError(
            f"{STORAGE_SETTING} / --connection-string", "is not a valid storage connection string"
        ) from None


def open_table(storage: StorageSettings, name: str, *, credential: TokenCredential | None = None) -> TableClient:
    """The incident table's client, failing as fast as open_queue's: short connect timeout, one retry.

    By connection string, or by the table service URI with the operator's DefaultAzureCredential (never the
    app's managed identity, which AzureWebJobsStorage__clientId would otherwise select).
    """
    session = pooled_session(1)
    options: dict[str, Any] = {
        "transport": RequestsTransport(
            session=session,
            session_owner=False,
            connection_timeout=CONNECT_TIMEOUT_SECONDS,
            read_timeout=READ_TIMEOUT_SECONDS,
            connection_verify=ca_bundle() or True,
        ),
        "retry_total": 1,
        "retry_backoff_factor": 1,
    }
    if storage.connection_string:
        try:
            client = TableClient.from_connection_string(storage.connection_string, name, **options)
        except ValueError:
            raise ConfigurationError(
                f"{STORAGE_SETTING} / --connection-string", "is not a valid storage connection string"
            ) from None
    else:
        if not storage.table_service_uri:
            raise ConfigurationError(
                catalog.STORAGE_TABLE_URI.name, "is required for incidents (or AzureWebJobsStorage__accountName)"
            )
        client = TableClient(
            storage.table_service_uri, name, credential=credential or _operator_credential(storage), **options
        )
    pin_environment(session, client.url)
    return client
