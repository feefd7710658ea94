"""The process's objects, built in one place on first use and reused: settings, identity, HTTP, clients, services."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, TypeVar

import requests
from azure.core.credentials import TokenCredential
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential
from azure.storage.queue import QueueClient

from shared.batch.client import BatchClient
from shared.batch.retry import RetryPolicy
from shared.batch.tokens import TokenProvider
from shared.config import catalog, readers
from shared.config.settings import (
    CURRENT_API_VERSION,
    MAX_SWEEP_CONCURRENCY,
    Settings,
    api_version_retiring,
)
from shared.rules.guards import Guards
from shared.services.terminate_job import Terminator
from shared.storage.poison_writer import PoisonWriter
from shared.storage.queues import queue_client
from shared.telemetry import Telemetry
from shared.transport.sessions import pin_environment, pooled_session

if TYPE_CHECKING:
    from shared.batch.job_list import BatchReader
    from shared.batch.jobs import JobGetter
    from shared.config.kill_switch import KillSwitchSettings
    from shared.rules.sweep_policy import SweepPolicy
    from shared.services.alert_terminate import AlertAction
    from shared.services.confirm_termination import Confirmer
    from shared.services.keep_poison import PoisonKeeper
    from shared.services.kill_switch import Incidents, KillSwitch
    from shared.services.sweep_jobs import Sweeper
    from shared.storage.confirm_queue import ConfirmQueue
    from shared.storage.incidents import IncidentQueue, IncidentStore
    from shared.storage.terminate_queue import TerminateQueue

# The confirm, alert, sweep, keeper and kill-switch services are imported where they are built: a terminate_job
# cold start (the one that matters in an incident) does not pay for modules it never runs.

log = logging.getLogger("batch_terminator")

T = TypeVar("T")


def batch_credential(client_id: str | None) -> TokenCredential:
    """Managed identity where the platform provides one; the developer's chain elsewhere."""
    if os.environ.get("IDENTITY_ENDPOINT") or os.environ.get("MSI_ENDPOINT") or os.environ.get("WEBSITE_INSTANCE_ID"):
        # Our own loop retries token failures with backoff; a second layer would only stretch them.
        return ManagedIdentityCredential(client_id=client_id, retry_total=0)
    return DefaultAzureCredential(managed_identity_client_id=client_id)


def http_session(account_url: str | None = None, *, pool_size: int = 24) -> requests.Session:
    """A pooled session for Batch calls; requests retries nothing on its own (we do)."""
    session = pooled_session(pool_size)
    if account_url is not None:
        pin_environment(session, account_url)
    return session


_UNBUILT = object()
_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_if_retiring(api_version: str) -> None:
    """Log ApiVersionRetiring once per process for an api-version Batch is retiring (docs/CONTRACT.md §2)."""
    if not api_version_retiring(api_version):
        return
    with _warned_lock:
        if api_version in _warned:
            return
        _warned.add(api_version)
    log.warning(
        "BATCH_API_VERSION %s: Batch has announced the retirement of api-versions before %s",
        api_version,
        CURRENT_API_VERSION,
        extra={"code": "ApiVersionRetiring", "apiVersion": api_version},
    )


class Wiring:
    """One process's objects: each built from the settings on first use, then shared by every thread."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        http_timeout: float | None = None,
        policy: RetryPolicy | None = None,
        poison: PoisonWriter | None = None,
        confirm_queue_client: QueueClient | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._confirm_queue_client = confirm_queue_client
        self._environ = environ
        self._sleep = sleep
        self._clock = clock
        self._http_timeout = http_timeout
        self._policy = policy
        self._lock = threading.RLock()  # reentrant: building one object builds the ones it needs
        self._built: dict[str, object] = {}
        if settings is not None:
            self._built["settings"] = settings
        if poison is not None:
            self._built["poison_writer"] = poison
        if telemetry is not None:
            self._built["telemetry"] = telemetry

    def _once(self, name: str, build: Callable[[], T]) -> T:
        """The object called `name`, built on the first call; a build that raises is tried again next time."""
        value = self._built.get(name, _UNBUILT)
        if value is _UNBUILT:
            with self._lock:
                value = self._built.get(name, _UNBUILT)
                if value is _UNBUILT:
                    value = build()
                    self._built[name] = value
        return value  # type: ignore[return-value]

    def settings(self) -> Settings:
        """The app settings, validated once; a ConfigurationError names the bad setting."""
        return self._once("settings", lambda: Settings.from_env(self._environ))

    def telemetry(self) -> Telemetry:
        """The records and metrics (on the global OpenTelemetry provider unless one was given)."""
        return self._once("telemetry", Telemetry)

    @property
    def concurrency(self) -> int:
        """How many invocations the host runs at once (batchSize + newBatchThreshold): the pools' size."""
        queues = self.settings().queues
        return queues.batch_size + queues.new_batch_threshold

    def credential(self) -> TokenCredential:
        """The app's identity for Batch."""
        return self._once("credential", lambda: batch_credential(self.settings().azure_client_id))

    def tokens(self) -> TokenProvider:
        """The one Batch token cache of the process."""
        return self._once("tokens", lambda: TokenProvider(self.credential()))

    def session(self) -> requests.Session:
        """The pooled HTTP session for Batch calls."""
        # Room for the busiest caller: the host's invocations, or a sweep's reads (SWEEP_CONCURRENCY is at most 64).
        # A pool only keeps connections once used, so a larger bound costs nothing until it is needed.
        pool_size = max(self.concurrency, MAX_SWEEP_CONCURRENCY)
        return self._once("session", lambda: http_session(self.settings().batch_account_url, pool_size=pool_size))

    def batch_clients(self) -> dict[str, BatchClient]:
        """One Batch client per configured account (alias → client), over the one token cache and pooled session."""

        def build() -> dict[str, BatchClient]:
            settings = self.settings()
            warn_if_retiring(settings.batch_api_version)
            tokens, session, telemetry = self.tokens(), self.session(), self.telemetry()
            return {
                alias: BatchClient(
                    settings,
                    tokens,
                    session,
                    account=alias,
                    policy=self._policy,
                    sleep=self._sleep,
                    clock=self._clock,
                    http_timeout=self._http_timeout,
                    telemetry=telemetry,
                )
                for alias in settings.accounts
            }

        return self._once("batch_clients", build)

    def batch_readers(self) -> dict[str, BatchReader]:
        """Job - List and task counts per configured account (alias → reader)."""
        from shared.batch.job_list import BatchReader

        return self._once(
            "batch_readers", lambda: {alias: BatchReader(client) for alias, client in self.batch_clients().items()}
        )

    def alert_action(self) -> AlertAction:
        """The alert_terminate service; reads the Batch settings only when an alert needs an account."""
        from shared.rules.accounts import configured_accounts
        from shared.services.alert_terminate import AlertAction

        def build() -> AlertAction:
            return AlertAction(
                self.terminate_queue(),
                lambda: configured_accounts(self.settings()),
                self.incidents,
            )

        return self._once("alert_action", build)

    def kill_switch_settings(self) -> KillSwitchSettings:
        """INCIDENT_*, KILL_SWITCH_* and ALERT_MAX_JOBS (read apart: a typo there never stops terminate_job)."""
        from shared.config.kill_switch import KillSwitchSettings

        return self._once(
            "kill_switch_settings",
            lambda: KillSwitchSettings.from_env(self._environ, other_queues=self.settings().queue_names),
        )

    def incident_store(self) -> IncidentStore:
        """The incident table (INCIDENT_TABLE_NAME), created on first use when missing."""
        from shared.storage.incidents import IncidentStore

        return self._once(
            "incident_store",
            lambda: IncidentStore.connect(self.settings().storage, self.kill_switch_settings().table_name),
        )

    def incident_queue(self) -> IncidentQueue:
        """The command queue (INCIDENT_QUEUE_NAME), in the trigger queues' encoding."""
        from shared.storage.incidents import IncidentQueue

        def build() -> IncidentQueue:
            settings = self.settings()
            name = self.kill_switch_settings().queue()
            return IncidentQueue(queue_client(settings.storage, name, settings.queues.message_encoding))

        return self._once("incident_queue", build)

    def incidents(self) -> Incidents:
        """Opening incidents and sending their commands (alert_terminate, the operator CLI)."""
        from shared.services.kill_switch import Incidents

        return self._once(
            "incidents", lambda: Incidents(self.incident_store(), self.incident_queue(), self.telemetry())
        )

    def kill_switch(self) -> KillSwitch:
        """The kill_switch service: Batch per account, the incident table, the terminate queue."""
        from shared.batch.job_schedules import JobSchedules
        from shared.batch.pools import Pools
        from shared.services.kill_switch import BatchAccount, KillSwitch

        def build() -> KillSwitch:
            settings = self.settings()
            readers = self.batch_readers()
            accounts = {
                alias: BatchAccount(readers[alias], JobSchedules(client), Pools(client, sleep=self._sleep))
                for alias, client in self.batch_clients().items()
            }
            return KillSwitch(
                self.incident_store(),
                accounts,
                self.terminate_queue(),
                self.kill_switch_settings(),
                self.telemetry(),
                dry_run=settings.guards.dry_run,
                max_dequeue_count=settings.max_dequeue_count,
            )

        return self._once("kill_switch", build)

    def poison_writer(self) -> PoisonWriter:
        """The writer of poison records."""

        def build() -> PoisonWriter:
            settings = self.settings()
            encoding = settings.queues.message_encoding
            client = queue_client(settings.storage, settings.poison_queue_name, encoding, pool_size=self.concurrency)
            return PoisonWriter(client, telemetry=self.telemetry())

        return self._once("poison_writer", build)

    def job_getter(self) -> JobGetter:
        """Job - Get over the same client (the guards' and the checks' one read)."""
        from shared.batch.jobs import JobGetter

        return self._once("job_getter", lambda: JobGetter(self.batch_clients()))

    def guards(self) -> Guards:
        """The checks made before Job - Terminate (docs/CONTRACT.md §5a)."""
        return self._once("guards", lambda: Guards(self.settings(), self.job_getter()))

    def confirm_queue(self) -> ConfirmQueue:
        """Where checks of terminated jobs wait (docs/CONTRACT.md §5b); needs CONFIRM_QUEUE_NAME."""

        from shared.storage.confirm_queue import ConfirmQueue

        def build() -> ConfirmQueue:
            settings = self.settings()
            client = self._confirm_queue_client or queue_client(
                settings.storage, settings.confirm.queue(), settings.queues.message_encoding, pool_size=self.concurrency
            )
            return ConfirmQueue(client, settings.confirm.after_seconds)

        return self._once("confirm_queue", build)

    def terminator(self) -> Terminator:
        """The terminate_job service."""

        def build() -> Terminator:
            settings = self.settings()
            confirm = self.confirm_queue() if settings.confirm.enabled else None
            made = Terminator(settings, self.batch_clients(), self.poison_writer(), self.guards(), confirm)
            log.info(
                "batch-terminator ready: accounts=%s api-version=%s queue=%s poison=%s maxDequeueCount=%d"
                " guards=%s confirm=%s",
                ",".join(f"{alias}={url}" for alias, url in settings.accounts.items()),
                settings.batch_api_version,
                settings.terminate_queue_name,
                settings.poison_queue_name,
                settings.max_dequeue_count,
                settings.guards,
                settings.confirm,
            )
            return made

        return self._once("terminator", build)

    def confirmer(self) -> Confirmer:
        """The confirm_termination service."""
        from shared.services.confirm_termination import Confirmer

        def build() -> Confirmer:
            settings = self.settings()
            return Confirmer(
                settings, self.job_getter(), self.batch_clients(), self.confirm_queue(), self.poison_writer()
            )

        return self._once("confirmer", build)

    def keeper(self) -> PoisonKeeper:
        """The keep_poison service: the host's poison queues (trigger; confirm and incident when set) into records."""
        from shared.services.keep_poison import PoisonKeeper

        def build() -> PoisonKeeper:
            settings = self.settings()
            env = os.environ if self._environ is None else self._environ
            triggers = [settings.terminate_queue_name]
            for setting in (catalog.CONFIRM_QUEUE_NAME, catalog.INCIDENT_QUEUE_NAME):
                name = readers.queue_name(env, setting)  # None when unset: that function does not run here
                if name is not None:
                    triggers.append(name)
            # The host names its poison queue {queue}-poison; read raw ("none"): a record keeps the text exactly.
            sources = [queue_client(settings.storage, readers.poison_queue_of(name), "none") for name in triggers]
            return PoisonKeeper(
                sources, self.poison_writer(), max_dequeue_count=settings.max_dequeue_count, telemetry=self.telemetry()
            )

        return self._once("keeper", build)

    def terminate_queue(self) -> TerminateQueue:
        """The producer for the trigger queue; reads only the storage and queue settings (no Batch ones)."""
        from shared.storage.terminate_queue import TerminateQueue

        return self._once("terminate_queue", lambda: TerminateQueue.from_env(self._environ))

    def sweep_policy(self) -> SweepPolicy:
        """The SWEEP_* settings."""
        from shared.rules.sweep_policy import SweepPolicy

        return self._once("sweep_policy", lambda: SweepPolicy.from_env(self._environ))

    def sweeper(self) -> Sweeper | None:
        """The sweep_jobs service, or None while no SWEEP_* policy picks jobs."""
        policy = self.sweep_policy()
        if not policy.enabled:
            return None

        from shared.services.sweep_jobs import Sweeper

        def build() -> Sweeper:
            readers = policy.pick_accounts(self.batch_readers())
            queue = self.terminate_queue()
            log.info("sweep ready: accounts=%s queue=%s %s", ",".join(readers), queue.queue_name, policy.describe())
            return Sweeper(readers, queue, policy, telemetry=self.telemetry())

        return self._once("sweeper", build)


_lock = threading.Lock()
_current: Wiring | None = None


def current() -> Wiring:
    """The process's Wiring (created on first use; its objects are built as they are asked for)."""
    global _current
    wiring = _current
    if wiring is None:
        with _lock:
            if _current is None:
                _current = Wiring()
            wiring = _current
    return wiring


def install(wiring: Wiring | None) -> None:
    """Use this Wiring for the process (a host or test that wires its own); None goes back to the settings."""
    global _current
    with _lock:
        _current = wiring


def reset() -> None:
    """Forget the process's objects and warnings so the next call re-reads the settings (tests)."""
    install(None)
    with _warned_lock:
        _warned.clear()
