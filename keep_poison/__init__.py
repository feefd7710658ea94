"""Timer trigger: keep what the host moved to its poison queues as never-expiring records (docs/CONTRACT.md §6)."""

from __future__ import annotations

import logging

import azure.functions as func

from shared import wiring
from shared.contract.errors import ConfigurationError

log = logging.getLogger("batch_terminator.keeper")


def main(timer: func.TimerRequest) -> None:
    """One pass; failures are logged and the next schedule tries again (the host's entries live 7 days)."""
    try:
        keeper = wiring.current().keeper()
    except ConfigurationError as exc:
        log.error("keep_poison not run: %s", exc)
        return
    if timer.past_due:
        log.warning("keep_poison timer is past due; running now")
    keeper.run()
