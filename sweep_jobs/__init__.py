"""Timer trigger: enqueue terminate requests for the active Batch jobs the SWEEP_* policies pick."""

from __future__ import annotations

import logging
import threading

import azure.functions as func

from shared.errors import ConfigurationError
from shared.settings import Settings
from shared.sweep import Sweeper, SweepPolicy, build_sweeper

log = logging.getLogger("batch_terminator.sweep")

_lock = threading.Lock()
_sweeper: Sweeper | None = None


def main(timer: func.TimerRequest) -> None:
    """Sweep once; failures are logged and the run ends (a timer that raised is only retried on schedule anyway)."""
    try:
        sweeper = _get_sweeper()
    except ConfigurationError as exc:
        log.error("sweep not run: %s", exc)
        return
    if sweeper is None:
        log.info("sweep disabled: set SWEEP_MAX_AGE_HOURS and/or SWEEP_IDLE_MINUTES to enable it")
        return
    if timer.past_due:
        log.warning("sweep timer is past due; sweeping now")
    sweeper.run()


def _get_sweeper() -> Sweeper | None:
    """The process's Sweeper, built on the first enabled run (settings are read then and cached)."""
    global _sweeper
    with _lock:
        if _sweeper is None:
            policy = SweepPolicy.from_env()
            if not policy.enabled:
                return None
            _sweeper = build_sweeper(Settings.from_env(), policy)
        return _sweeper
