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

from shared.errors import ConfigurationError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
HOST_JSON = PROJECT_ROOT / "host.json"

DEFAULT_API_VERSION = "2023-11-01.18.0"
DEFAULT_TIMEOUT_SECONDS = 30
DEFAULT_MAX_DEQUEUE_COUNT = 5
BATCH_SCOPE = "https://batch.core.windows.net//.default"
MAX_DEQUEUE_ENV = "AzureFunctionsJobHost__extensions__queues__maxDequeueCount"
ENCODING_ENV = "AzureFunctionsJobHost__extensions__queues__messageEncoding"
# docs/CONTRACT.md §2 names these three; other 127.x addresses are not taken as loopback (to the letter, and unusual).
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_DNS_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"(?:{_DNS_LABEL}\.)*{_DNS_LABEL}", re.ASCII | re.IGNORECASE)


@dataclass(frozen=True)
class StorageSettings:
    """Where the queues live: a connection string, or a queue service URI used with an identity."""

    connection_string: str | None = None
    queue_service_uri: str | None = None
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
        queue_name = queue_name_setting(env, "TERMINATE_QUEUE_NAME")
        poison = _queue_name(env, "POISON_QUEUE_NAME", required=False) or f"{queue_name}-poison"
        if poison == queue_name:
            raise ConfigurationError("POISON_QUEUE_NAME", "must differ from TERMINATE_QUEUE_NAME")
        return cls(
            batch_account_url=validate_batch_url(_required(env, "BATCH_ACCOUNT_URL")),
            terminate_queue_name=queue_name,
            poison_queue_name=poison,
            storage=storage_from_env(env),
            batch_api_version=_api_version(env),
            batch_timeout_seconds=_int(env, "BATCH_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS, 1, 30),
            azure_client_id=env.get("AZURE_CLIENT_ID") or None,
            queues=queue_options(env, host_json),
        )


LOCAL_SETTINGS_FILES = ("local.settings.json", "local.settings.sample.json")


def local_settings_values(root: Path = PROJECT_ROOT) -> tuple[Path | None, dict[str, str]]:
    """The `Values` of local.settings.json, else of local.settings.sample.json (Core Tools' file), as strings."""
    for name in LOCAL_SETTINGS_FILES:
        path = root / name
        if not path.is_file():
            continue
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigurationError(name, f"unreadable ({type(exc).__name__}: {exc})") from exc
        values = document.get("Values") if isinstance(document, dict) else None
        if not isinstance(values, dict):
            raise ConfigurationError(name, "Values must be an object")
        return path, {str(k): "" if v is None else str(v) for k, v in values.items()}
    return None, {}


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
    connection = env.get("AzureWebJobsStorage", "").strip()
    if connection:
        if connection == "UseDevelopmentStorage=true" or "=" in connection:
            return StorageSettings(connection_string=connection)
        raise ConfigurationError("AzureWebJobsStorage", "is not a storage connection string")
    service_uri = env.get("AzureWebJobsStorage__queueServiceUri", "").strip()
    if not service_uri:
        account = env.get("AzureWebJobsStorage__accountName", "").strip()
        service_uri = f"https://{account}.queue.core.windows.net" if account else ""
    if not service_uri:
        raise ConfigurationError(
            "AzureWebJobsStorage", "is required (a connection string, or AzureWebJobsStorage__queueServiceUri)"
        )
    if urlsplit(service_uri).scheme != "https" and not _is_loopback(urlsplit(service_uri).hostname or ""):
        raise ConfigurationError("AzureWebJobsStorage__queueServiceUri", "must be an https URL")
    return StorageSettings(
        queue_service_uri=service_uri.rstrip("/"),
        client_id=env.get("AzureWebJobsStorage__clientId") or None,
        credential=env.get("AzureWebJobsStorage__credential") or None,
    )


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
        max_dequeue_count=_bounded(MAX_DEQUEUE_ENV, queues.get("maxdequeuecount", DEFAULT_MAX_DEQUEUE_COUNT), 1, 1000),
        message_encoding=encoding,
        batch_size=_bounded("batchSize", queues.get("batchsize", 16), 1, 32),
        new_batch_threshold=_bounded("newBatchThreshold", queues.get("newbatchthreshold", 8), 0, 1000),
        visibility_timeout_seconds=parse_timespan(queues.get("visibilitytimeout", "00:00:00")),
        max_polling_interval_seconds=parse_timespan(queues.get("maxpollinginterval", "00:01:00")),
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


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigurationError(name, "is required")
    return value


def queue_name_setting(env: Mapping[str, str], name: str) -> str:
    """A required queue-name setting, validated by Azure's naming rule."""
    value = _queue_name(env, name, required=True)
    assert value is not None
    return value


def _queue_name(env: Mapping[str, str], name: str, *, required: bool) -> str | None:
    value = env.get(name, "").strip()
    if not value:
        if required:
            raise ConfigurationError(name, "is required")
        return None
    valid = 3 <= len(value) <= 63 and value[0].isalnum() and value[-1].isalnum() and "--" not in value
    if not valid or any(not (c.isdigit() or c == "-" or ("a" <= c <= "z")) for c in value):
        raise ConfigurationError(name, "must be 3-63 lowercase letters, digits and single hyphens")
    return value


def _api_version(env: Mapping[str, str]) -> str:
    value = env.get("BATCH_API_VERSION", "").strip() or DEFAULT_API_VERSION
    if not all(c.isalnum() or c in ".-" for c in value):
        raise ConfigurationError("BATCH_API_VERSION", "must look like 2023-11-01.18.0")
    return value


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    return default if not raw else _bounded(name, raw, low, high)


def _bounded(name: str, raw: object, low: int, high: int) -> int:
    try:
        value = int(str(raw).strip())
    except ValueError as exc:
        raise ConfigurationError(name, f"must be a whole number, got {raw!r}") from exc
    if not low <= value <= high:
        raise ConfigurationError(name, f"must be between {low} and {high}, got {value}")
    return value


def _is_host(host: str) -> bool:
    """Whether `host` (as urlsplit gives it) is an ASCII DNS name or an IP address."""
    if _DNS_NAME.fullmatch(host):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    return host.lower() in LOOPBACK_HOSTS
