"""Which configured Batch account an alert is about: alertTargetIDs' Batch account name → an alias (§9)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from shared.config.settings import LOOPBACK_HOSTS, Settings
from shared.contract.errors import AlertRejected, BatchErrorDetail
from shared.contract.terminate_request import TerminateRequest
from shared.storage.terminate_queue import build_request

DEFAULT_ALIAS = "default"
# ARM resource ids compare case-insensitively; the account may be the target itself or own it (…/pools/x).
_BATCH_ACCOUNT = re.compile(r"/providers/microsoft\.batch/batchaccounts/([^/]+)(?:/|$)", re.IGNORECASE)


def configured_accounts(settings: Settings) -> dict[str, str]:
    """Alias → account URL for every configured account, "default" first."""
    return {DEFAULT_ALIAS: settings.batch_account_url, **settings.accounts}


def batch_account_names(target_ids: object) -> list[str]:
    """The Batch account names in data.essentials.alertTargetIDs, in order, without duplicates (casefolded)."""
    if not isinstance(target_ids, list):
        return []
    names: dict[str, None] = {}
    for target in target_ids:
        if isinstance(target, str):
            found = _BATCH_ACCOUNT.search(target)
            if found is not None:
                names.setdefault(found.group(1).casefold(), None)
    return list(names)


def account_for(names: Iterable[str], accounts: Mapping[str, str]) -> str:
    """The alias of the account the alert names; the default when it names none; else AlertRejected 400."""
    wanted = list(names)
    if not wanted:
        return DEFAULT_ALIAS
    if len(wanted) > 1:
        raise AlertRejected(
            400,
            "AmbiguousAccount",
            "the alert targets more than one Batch account; use one alert rule (or one split) per account",
            tuple(BatchErrorDetail("batchAccount", name) for name in wanted),
        )
    [name] = wanted
    matches = [alias for alias, url in accounts.items() if _first_label(url) == name]
    if len(matches) == 1:
        return matches[0]
    if not matches and len(accounts) == 1 and _is_loopback(next(iter(accounts.values()))):
        # A lone emulator stands for whichever account the alert names (local runs and tests).
        return next(iter(accounts))
    if matches:
        raise AlertRejected(
            400,
            "AmbiguousAccount",
            f"more than one configured account is named {name!r}",
            tuple(BatchErrorDetail("account", alias) for alias in matches),
        )
    raise AlertRejected(
        400,
        "UnknownAccount",
        f"the alert is about Batch account {name!r}, which is not configured (BATCH_ACCOUNT_URL, BATCH_ACCOUNTS); "
        "nothing was enqueued",
        (BatchErrorDetail("batchAccount", name),),
    )


def alias_for(value: object, accounts: Mapping[str, str]) -> str:
    """A plain body's `account` (an alias, case-insensitive) → the alias; else AlertRejected 400 UnknownAccount."""
    if value is None:
        return DEFAULT_ALIAS
    alias = value.strip().casefold() if isinstance(value, str) else None
    if alias is None or alias not in accounts:
        raise AlertRejected(
            400,
            "UnknownAccount",
            "account must be an alias of BATCH_ACCOUNTS or default; nothing was enqueued",
            (BatchErrorDetail("account", str(value)[:80]),),
        )
    return alias


def terminate_request(job_id: str, reason: str | None, alias: str) -> TerminateRequest:
    """A terminate request checked by the function's own parser, naming its account unless it is the default."""
    return build_request(job_id, reason or None, account=None if alias == DEFAULT_ALIAS else alias)


def _first_label(url: str) -> str:
    host = urlsplit(url).hostname or ""
    return host.split(".", 1)[0].casefold()


def _is_loopback(url: str) -> bool:
    return (urlsplit(url).hostname or "").lower() in LOOPBACK_HOSTS
