"""The kill switch's settings (docs/CONTRACT.md §9, §10), read apart from Settings: only its functions load them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from shared.config import catalog, readers
from shared.contract.approval import Approval
from shared.contract.errors import ConfigurationError


@dataclass(frozen=True)
class KillSwitchSettings:
    """Incidents and the kill switch (docs/CONTRACT.md §9, §10); read apart from Settings, so a kill-switch typo
    never stops terminate_job."""

    queue_name: str | None = None  # INCIDENT_QUEUE_NAME; needed where incidents are opened or run
    table_name: str = catalog.INCIDENT_TABLE_NAME.default_text()
    approval: Approval = Approval.AUTO
    disable_schedules: bool = True
    scale_pools: bool = False
    max_jobs: int = int(catalog.ALERT_MAX_JOBS.default_number())

    def queue(self) -> str:
        """INCIDENT_QUEUE_NAME, which kill_switch and an alert opening an incident need."""
        if self.queue_name is None:
            raise ConfigurationError(catalog.INCIDENT_QUEUE_NAME.name, "is required")
        return self.queue_name

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, other_queues: tuple[str, ...] = ()
    ) -> KillSwitchSettings:
        """Read INCIDENT_*, KILL_SWITCH_* and ALERT_MAX_JOBS; the queue must differ from `other_queues`."""
        env = os.environ if environ is None else environ
        queue = readers.queue_name(env, catalog.INCIDENT_QUEUE_NAME)
        if queue is not None and queue in other_queues:
            raise ConfigurationError(
                catalog.INCIDENT_QUEUE_NAME.name,
                "must differ from TERMINATE_QUEUE_NAME, POISON_QUEUE_NAME and CONFIRM_QUEUE_NAME",
            )
        return cls(
            queue_name=queue,
            table_name=readers.table_name(env, catalog.INCIDENT_TABLE_NAME),
            approval=Approval(readers.choice(env, catalog.KILL_SWITCH_APPROVAL)),
            disable_schedules=readers.boolean(env, catalog.KILL_SWITCH_DISABLE_SCHEDULES),
            scale_pools=readers.boolean(env, catalog.KILL_SWITCH_SCALE_POOLS),
            max_jobs=readers.whole(env, catalog.ALERT_MAX_JOBS),
        )
