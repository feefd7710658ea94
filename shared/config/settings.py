"""Settings of the function app, read once from the environment and host.json."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from shared.config import catalog, readers
from shared.contract.errors import ConfigurationError
from shared.contract.terminate_request import ALIAS_PATTERN, DEFAULT_ACCOUNT

PROJECT_ROOT = Path(__file__).resolve().parents[2]
HOST_JSON = PROJECT_ROOT / "host.json"

DEFAULT_API_VERSION = catalog.BATCH_API_VERSION.default_text()
DEFAULT_TIMEOUT_SECONDS = int(catalog.BATCH_TIMEOUT_SECONDS.default_number())
DEFAULT_MAX_DEQUEUE_COUNT = int(catalog.MAX_DEQUEUE_COUNT.default_number())
# Job - Terminate takes `force`, and the query spells timeOut, from this api-version on (docs/CONTRACT.md §3, §4).
FORCE_API_VERSION = "2024-07-01.20.0"
# Batch has announced the retirement of every api-version before this one (docs/CONTRACT.md §2).
CURRENT_API_VERSION = "2025-06-01"
# SWEEP_CONCURRENCY's ceiling; the Batch session pools this many connections (shared.wiring).
MAX_SWEEP_CONCURRENCY = catalog.SWEEP_CONCURRENCY.upper_bound()
MAX_DEQUEUE_ENV = catalog.MAX_DEQUEUE_COUNT.name
ENCODING_ENV = catalog.MESSAGE_ENCODING.name
# docs/CONTRACT.md §2 names these three; other 127.x addresses are not taken as loopback (to the letter, and unusual).
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_DNS_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DNS_NAME = rf"(?:{_DNS_LABEL}\.)*{_DNS_LABEL}"  # re caches it compiled on first use
_API_VERSION = re.compile(r"(\d{4}-\d{2}-\d{2})(?:\.\d+\.\d+)?", re.ASCII)


@dataclass(frozen=True)
class StorageSettings:
    """Where the queues and the incident table live: a connection string, or service URIs used with an identity."""

    connection_string: str | None = None
    queue_service_uri: str | None = None
    table_service_uri: str | None = None
    client_id: str | None = None
    credential: str | None = None

    def __repr__(self) -> str:
        # The connection string carries the account key: never print it.
        where = self.queue_service_uri or ("<connection string>" if self.connection_string else None)
        return f"StorageSettings({where})"


@dataclass(frozen=True)
class QueueOptions:
    """The host's queue-trigger options (host.json extensions.queues, with env overrides)."""

    max_dequeue_count: int = DEFAULT_MAX_DEQUEUE_COUNT
    message_encoding: str = "base64"
    batch_size: int = 16
    new_batch_threshold: int = 8
    visibility_timeout_seconds: float = 0.0
    max_polling_interval_seconds: float = 60.0


@dataclass(frozen=True)
class GuardSettings:
    """What may be terminated (docs/CONTRACT.md §5a)."""

    allowed_job_id_prefixes: tuple[str, ...] = ()  # lower-cased; empty: every job id
    honor_keep: bool = False
    dry_run: bool = False


@dataclass(frozen=True)
class ConfirmSettings:
    """Whether and how a 202 is followed by checks of the job's state (docs/CONTRACT.md §5b)."""

    after_seconds: int = 0  # 0: off
    queue_name: str | None = None
    max_checks: int = int(catalog.CONFIRM_MAX_CHECKS.default_number())
    force: bool = False

    @property
    def enabled(self) -> bool:
        """Whether terminate_job schedules a check after a 202."""
        return self.after_seconds > 0

    def queue(self) -> str:
        """CONFIRM_QUEUE_NAME, which confirm_termination always needs."""
        if self.queue_name is None:
            raise ConfigurationError("CONFIRM_QUEUE_NAME", "is required")
        return self.queue_name


@dataclass(frozen=True)
class Settings:
    """Everything the terminate function needs, validated."""

    batch_account_url: str
    terminate_queue_name: str
    poison_queue_name: str
    storage: StorageSettings
    batch_api_version: str = DEFAULT_API_VERSION
    batch_timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    azure_client_id: str | None = None
    queues: QueueOptions = QueueOptions()
    # BATCH_ACCOUNTS as (alias, url) pairs; `default` is batch_account_url and never listed here.
    batch_accounts: tuple[tuple[str, str], ...] = ()
    guards: GuardSettings = GuardSettings()
    confirm: ConfirmSettings = ConfirmSettings()

    @property
    def accounts(self) -> dict[str, str]:
        """Every account by alias, `default` first."""
        return {DEFAULT_ACCOUNT: self.batch_account_url, **dict(self.batch_accounts)}

    def account_url(self, alias: str) -> str:
        """The URL of a configured account (aliases are case-insensitive); KeyError when there is none."""
        return self.accounts[alias.lower()]

    @property
    def supports_force(self) -> bool:
        """Whether the configured api-version knows Job - Terminate's `force`."""
        return api_version_supports_force(self.batch_api_version)

    @property
    def queue_names(self) -> tuple[str, ...]:
        """The trigger, poison and confirm queues (the incident queue must differ from each)."""
        confirm = self.confirm.queue_name
        return (self.terminate_queue_name, self.poison_queue_name, *((confirm,) if confirm else ()))

    @property
    def max_dequeue_count(self) -> int:
        """The attempt on which the function writes its own poison record instead of retrying."""
        return self.queues.max_dequeue_count

    @property
    def http_timeout_seconds(self) -> float:
        """Client-side timeout: a little above the server-side one so Batch answers first."""
        return self.batch_timeout_seconds + 5.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, host_json: Path = HOST_JSON) -> Settings:
        """Read and validate settings; a ConfigurationError names the first bad setting."""
        env = os.environ if environ is None else environ
        queue_name = queue_name_setting(env, catalog.TERMINATE_QUEUE_NAME)
        poison = poison_queue_name(env, queue_name)
        default_url = validate_batch_url(readers.required(env, catalog.BATCH_ACCOUNT_URL))
        return cls(
            batch_account_url=default_url,
            terminate_queue_name=queue_name,
            poison_queue_name=poison,
            storage=storage_from_env(env),
            batch_api_version=_api_version(env),
            batch_timeout_seconds=readers.whole(env, catalog.BATCH_TIMEOUT_SECONDS),
            azure_client_id=readers.text(env, catalog.AZURE_CLIENT_ID),
            queues=queue_options(env, host_json),
            batch_accounts=batch_accounts(readers.raw(env, catalog.BATCH_ACCOUNTS), default_url),
            guards=guard_settings(env),
            confirm=confirm_settings(env, queue_name, poison),
        )


def poison_queue_name(env: Mapping[str, str], queue_name: str) -> str:
    """POISON_QUEUE_NAME, else `{TERMINATE_QUEUE_NAME}-poison`; either must be a valid queue name."""
    setting = catalog.POISON_QUEUE_NAME.name
    given = readers.raw(env, catalog.POISON_QUEUE_NAME)
    name = given or readers.poison_queue_of(queue_name)
    if not readers.is_queue_name(name):
        where = "" if given else f" (the default {name!r}, derived from TERMINATE_QUEUE_NAME, is {len(name)} long)"
        raise ConfigurationError(setting, f"{readers.QUEUE_NAME_RULE}{where}")
    if name == queue_name:
        raise ConfigurationError(setting, "must differ from TERMINATE_QUEUE_NAME")
    return name


def account_aliases(env: Mapping[str, str]) -> tuple[str, ...]:
    """The configured aliases (`default` first) from BATCH_ACCOUNTS alone, for tools that need no Batch URL."""
    return (DEFAULT_ACCOUNT, *(alias for alias, _ in batch_accounts(readers.raw(env, catalog.BATCH_ACCOUNTS), None)))


def batch_accounts(raw: str, default_url: str | None) -> tuple[tuple[str, str], ...]:
    """Parse BATCH_ACCOUNTS (`alias=url,...`) into (alias, url) pairs, each URL validated as BATCH_ACCOUNT_URL."""
    setting = catalog.BATCH_ACCOUNTS.name
    pairs: list[tuple[str, str]] = []
    for entry in raw.split(","):
        if not entry.strip():  # a trailing comma, or the setting left empty
            continue
        alias, sep, url = entry.partition("=")
        alias = alias.strip().lower()
        if not sep:
            raise ConfigurationError(setting, f"entry {entry.strip()[:40]!r} is not alias=url")
        if not ALIAS_PATTERN.fullmatch(alias):
            raise ConfigurationError(setting, f"alias {alias[:40]!r} must be 1-32 of a-z, 0-9 and -")
        if any(alias == known for known, _ in pairs):
            raise ConfigurationError(setting, f"alias {alias!r} is given twice")
        try:
            valid = validate_batch_url(url)
        except ConfigurationError as exc:
            raise ConfigurationError(setting, f"account {alias!r}: {exc.problem}") from exc
        if alias == DEFAULT_ACCOUNT:
            # Repeating BATCH_ACCOUNT_URL under its own alias is harmless; pointing it elsewhere is not.
            if default_url is not None and valid.lower() != default_url.lower():
                raise ConfigurationError(setting, "may not redefine the alias default (that is BATCH_ACCOUNT_URL)")
            continue
        pairs.append((alias, valid))
    return tuple(pairs)


def guard_settings(env: Mapping[str, str]) -> GuardSettings:
    """TERMINATE_ALLOWED_JOB_ID_PREFIXES, TERMINATE_HONOR_KEEP and TERMINATE_DRY_RUN."""
    prefixes = tuple(dict.fromkeys(p.lower() for p in readers.items(env, catalog.TERMINATE_ALLOWED_JOB_ID_PREFIXES)))
    return GuardSettings(
        allowed_job_id_prefixes=prefixes,
        honor_keep=readers.boolean(env, catalog.TERMINATE_HONOR_KEEP),
        dry_run=readers.boolean(env, catalog.TERMINATE_DRY_RUN),
    )


def confirm_settings(env: Mapping[str, str], queue_name: str, poison: str) -> ConfirmSettings:
    """CONFIRM_AFTER_SECONDS, CONFIRM_QUEUE_NAME, CONFIRM_MAX_CHECKS and CONFIRM_FORCE."""
    after = readers.whole(env, catalog.CONFIRM_AFTER_SECONDS)
    # terminate_job needs the queue only when checks are on; confirm_termination asks for it itself.
    confirm_queue = readers.queue_name(env, catalog.CONFIRM_QUEUE_NAME, needed=after > 0)
    if confirm_queue is not None and confirm_queue in (queue_name, poison):
        raise ConfigurationError("CONFIRM_QUEUE_NAME", "must differ from TERMINATE_QUEUE_NAME and POISON_QUEUE_NAME")
    return ConfirmSettings(
        after_seconds=after,
        queue_name=confirm_queue,
        max_checks=readers.whole(env, catalog.CONFIRM_MAX_CHECKS),
        force=readers.boolean(env, catalog.CONFIRM_FORCE),
    )


def api_version_at_least(version: str, floor: str) -> bool:
    """Whether a Batch api-version is `floor` or later (versions order by their date)."""
    matched = _API_VERSION.fullmatch(version)
    lowest = _API_VERSION.fullmatch(floor)
    assert lowest is not None
    return matched is not None and matched.group(1) >= lowest.group(1)


def api_version_supports_force(version: str) -> bool:
    """Whether Job - Terminate takes `force` in this api-version."""
    return api_version_at_least(version, FORCE_API_VERSION)


def api_version_retiring(version: str) -> bool:
    """Whether Batch has announced the retirement of this api-version (every one before CURRENT_API_VERSION)."""
    return not api_version_at_least(version, CURRENT_API_VERSION)


def validate_batch_url(raw: str) -> str:
    """Return the account URL without a trailing slash, or raise naming BATCH_ACCOUNT_URL."""
    setting = "BATCH_ACCOUNT_URL"
    try:
        parts = urlsplit(raw.strip())
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(setting, f"not a valid URL ({exc})") from exc
    host = parts.hostname or ""
    if parts.scheme not in ("https", "http") or not host:
        raise ConfigurationError(
            setting, "must be an absolute https URL such as https://account.region.batch.azure.com"
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError(setting, "must not contain credentials")
    if not _is_host(host) or any(c.isspace() or not c.isprintable() for c in raw.strip()):
        raise ConfigurationError(setting, "must name an ASCII DNS host or an IP address")
    if port == 0:
        raise ConfigurationError(setting, "port must be between 1 and 65535")
    if parts.path not in ("", "/") or parts.query or parts.fragment or raw.strip().endswith(("?", "#")):
        raise ConfigurationError(setting, "must be the account URL only, without path, query or fragment")
    if parts.scheme == "http" and not _is_loopback(host):
        raise ConfigurationError(setting, "must use https (http is allowed only for a loopback host)")
    netloc = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{netloc}{f':{port}' if port is not None else ''}"


def storage_from_env(env: Mapping[str, str]) -> StorageSettings:
    """Read AzureWebJobsStorage as a connection string or in its identity-based form."""
    connection = readers.raw(env, catalog.STORAGE)
    if connection:
        if connection == "UseDevelopmentStorage=true" or "=" in connection:
            return StorageSettings(connection_string=connection)
        raise ConfigurationError(catalog.STORAGE.name, "is not a storage connection string")
    account = readers.raw(env, catalog.STORAGE_ACCOUNT_NAME)
    service_uri = _service_uri(env, catalog.STORAGE_QUEUE_URI, account, "queue")
    if not service_uri:
        raise ConfigurationError(
            catalog.STORAGE.name, "is required (a connection string, or AzureWebJobsStorage__queueServiceUri)"
        )
    return StorageSettings(
        queue_service_uri=service_uri,
        # The table service is needed only for incidents: a missing one is an error where incidents are used.
        table_service_uri=_service_uri(env, catalog.STORAGE_TABLE_URI, account, "table"),
        client_id=readers.text(env, catalog.STORAGE_CLIENT_ID),
        credential=readers.text(env, catalog.STORAGE_CREDENTIAL),
    )


def _service_uri(env: Mapping[str, str], setting: catalog.Setting, account: str, service: str) -> str | None:
    """An identity-based service URI: given, else derived from the account name as the Functions host does."""
    uri = readers.raw(env, setting) or (f"https://{account}.{service}.core.windows.net" if account else "")
    if not uri:
        return None
    if urlsplit(uri).scheme != "https" and not _is_loopback(urlsplit(uri).hostname or ""):
        raise ConfigurationError(setting.name, "must be an https URL")
    return uri.rstrip("/")


def queue_options(env: Mapping[str, str], host_json: Path = HOST_JSON) -> QueueOptions:
    """Read extensions.queues from host.json, overridden by AzureFunctionsJobHost__ app settings."""
    queues: dict[str, object] = {}
    if host_json.is_file():
        try:
            document = json.loads(host_json.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigurationError("host.json", f"unreadable ({exc})") from exc
        extensions = document.get("extensions") if isinstance(document, dict) else None
        section = extensions.get("queues") if isinstance(extensions, dict) else None
        if section is not None and not isinstance(section, dict):
            raise ConfigurationError("host.json", "extensions.queues must be an object")
        queues = {str(k).lower(): v for k, v in (section or {}).items()}
    prefix = "azurefunctionsjobhost__extensions__queues__"
    for name, value in env.items():
        if name.lower().startswith(prefix) and value.strip():  # an empty app setting means "not set"
            queues[name[len(prefix) :].lower()] = value
    encoding = str(queues.get("messageencoding", "base64")).lower()
    if encoding not in ("base64", "none"):
        raise ConfigurationError(ENCODING_ENV, "must be base64 or none")
    return QueueOptions(
        max_dequeue_count=readers.bounded(
            catalog.MAX_DEQUEUE_COUNT, queues.get("maxdequeuecount", DEFAULT_MAX_DEQUEUE_COUNT)
        ),
        message_encoding=encoding,
        batch_size=readers.bounded(_BATCH_SIZE, queues.get("batchsize", 16)),
        new_batch_threshold=readers.bounded(_NEW_BATCH_THRESHOLD, queues.get("newbatchthreshold", 8)),
        visibility_timeout_seconds=parse_timespan(queues.get("visibilitytimeout", "00:00:00")),
        max_polling_interval_seconds=parse_timespan(queues.get("maxpollinginterval", "00:01:00")),
    )


# host.json options the app reads too (not app settings, so not in the catalog): their names and bounds.
_BATCH_SIZE = catalog.Setting("batchSize", catalog.Kind.WHOLE, "host.json queues.batchSize", ("host",), low=1, high=32)
_NEW_BATCH_THRESHOLD = catalog.Setting(
    "newBatchThreshold", catalog.Kind.WHOLE, "host.json queues.newBatchThreshold", ("host",), low=0, high=1000
)


def parse_timespan(value: object) -> float:
    """Parse a host.json TimeSpan ("hh:mm:ss[.fff]" or "d.hh:mm:ss") into seconds."""
    text = str(value).strip()
    days = 0
    head, _, rest = text.partition(":")
    if "." in head:
        day_text, head = head.split(".", 1)
        days = int(day_text)
    try:
        hours = int(head)
        minutes_text, _, seconds_text = rest.partition(":")
        seconds = days * 86400 + hours * 3600 + int(minutes_text) * 60 + float(seconds_text or 0)
    except ValueError as exc:
        raise ConfigurationError("host.json", f"invalid TimeSpan {text!r}") from exc
    return seconds


def queue_name_setting(env: Mapping[str, str], setting: catalog.Setting) -> str:
    """A queue-name setting that must be given, validated by Azure's naming rule."""
    value = readers.queue_name(env, setting, needed=True)
    assert value is not None
    return value


def _api_version(env: Mapping[str, str]) -> str:
    value = readers.text(env, catalog.BATCH_API_VERSION) or DEFAULT_API_VERSION
    if not _API_VERSION.fullmatch(value):
        raise ConfigurationError(catalog.BATCH_API_VERSION.name, "must look like 2025-06-01 or 2023-11-01.18.0")
    return value


def _is_host(host: str) -> bool:
    """Whether `host` (as urlsplit gives it) is an ASCII DNS name or an IP address."""
    if re.fullmatch(_DNS_NAME, host, re.ASCII | re.IGNORECASE):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    return host.lower() in LOOPBACK_HOSTS
