"""Timer trigger: enqueue terminate requests for the active Batch jobs the SWEEP_* policies pick."""

from __future__ import annotations

import logging

import azure.functions as func

from shared import wiring
from shared.contract.errors import ConfigurationError

log = logging.getLogger("batch_terminator.sweep")


def main(timer: func.TimerRequest) -> None:
    """Sweep once; failures are logged and the run ends (a timer that raised is only retried on schedule anyway)."""
    try:
        sweeper = wiring.current().sweeper()
    except ConfigurationError as exc:
        log.error("sweep not run: %s", exc)
        return
    if sweeper is None:
        log.info("sweep disabled: set SWEEP_MAX_AGE_HOURS and/or SWEEP_IDLE_MINUTES to enable it")
        return
    if timer.past_due:
        log.warning("sweep timer is past due; sweeping now")
    sweeper.run()
