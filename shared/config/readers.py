"""One reader per kind of setting (shared.config.catalog.Kind); each names the setting when its value is bad."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from shared.config.catalog import Setting
from shared.contract.errors import ConfigurationError
from shared.contract.terminate_request import JOB_ID_PATTERN

# docs/CONTRACT.md §2 (project): both spellings the app ever accepted, so nothing that worked stops working.
TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
FALSE_WORDS = frozenset({"false", "0", "no", "off"})
_QUEUE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?!-)){1,61}[a-z0-9]", re.ASCII)
_TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]{2,62}", re.ASCII)
QUEUE_NAME_RULE = "must be 3-63 lowercase letters, digits and single hyphens"
# The Functions host moves a trigger queue's failed messages to the queue of this name plus this suffix.
POISON_SUFFIX = "-poison"


def raw(env: Mapping[str, str], setting: Setting) -> str:
    """The setting's value with surrounding spaces removed ("" when unset: an empty app setting is unset)."""
    return env.get(setting.name, "").strip()


def required(env: Mapping[str, str], setting: Setting) -> str:
    """A setting that must be given."""
    value = raw(env, setting)
    if not value:
        raise ConfigurationError(setting.name, "is required")
    return value


def text(env: Mapping[str, str], setting: Setting) -> str | None:
    """Free text, or the declared default (None when there is none)."""
    return raw(env, setting) or setting.default


def boolean(env: Mapping[str, str], setting: Setting) -> bool:
    """true/1/yes/on or false/0/no/off, any case; unset means the declared default."""
    value = raw(env, setting).lower() or (setting.default or "false")
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise ConfigurationError(setting.name, f"must be true or false (or 1/0, yes/no, on/off), got {value[:20]!r}")


def whole(env: Mapping[str, str], setting: Setting) -> int:
    """A whole number within the declared bounds; unset means the declared default."""
    value = raw(env, setting) or setting.default
    if value is None:
        raise ConfigurationError(setting.name, "is required")
    return bounded(setting, value)


def bounded(setting: Setting, value: object) -> int:
    """`value` as a whole number within the setting's bounds (host.json values come this way too)."""
    try:
        number = int(str(value).strip())
    except ValueError as exc:
        raise ConfigurationError(setting.name, f"must be a whole number, got {value!r}") from exc
    low, high = setting.low, setting.high
    if low is not None and high is not None and not low <= number <= high:
        raise ConfigurationError(setting.name, f"must be between {low} and {high}, got {number}")
    if low is not None and number < low:
        raise ConfigurationError(setting.name, f"must be at least {low}, got {number}")
    if high is not None and number > high:
        raise ConfigurationError(setting.name, f"must be at most {high}, got {number}")
    return number


def positive(env: Mapping[str, str], setting: Setting, unit: str) -> float | None:
    """A positive finite number of `unit`, or the declared default (None: off)."""
    value = raw(env, setting) or setting.default
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError as exc:
        raise ConfigurationError(setting.name, f"must be a number of {unit}, got {value!r}") from exc
    if not math.isfinite(number) or number <= 0:
        raise ConfigurationError(setting.name, f"must be a positive number of {unit}, got {value!r}")
    return number


def choice(env: Mapping[str, str], setting: Setting) -> str:
    """One of the declared choices, any case; unset means the declared default."""
    value = raw(env, setting).lower() or (setting.default or "")
    if value not in setting.choices:
        raise ConfigurationError(setting.name, f"must be one of {', '.join(setting.choices)}, got {value[:20]!r}")
    return value


def items(env: Mapping[str, str], setting: Setting) -> tuple[str, ...]:
    """A comma-separated list: entries stripped, empty ones dropped, first occurrence kept."""
    return tuple(dict.fromkeys(entry.strip() for entry in raw(env, setting).split(",") if entry.strip()))


def job_id_prefix(env: Mapping[str, str], setting: Setting) -> str:
    """A prefix a job id could start with ("" when unset)."""
    prefix = raw(env, setting)
    if prefix and not JOB_ID_PATTERN.fullmatch(prefix):
        raise ConfigurationError(setting.name, "may contain only letters, digits, hyphens and underscores")
    return prefix


def is_queue_name(name: str) -> bool:
    """Azure's queue naming rule: 3-63 of lowercase letters, digits and single hyphens, alphanumeric at both ends."""
    return _QUEUE_NAME.fullmatch(name) is not None


def poison_queue_of(queue_name: str) -> str:
    """The queue the Functions host moves a trigger queue's failed messages to (the one place this is spelled)."""
    return f"{queue_name}{POISON_SUFFIX}"


def queue_name(env: Mapping[str, str], setting: Setting, *, needed: bool | None = None) -> str | None:
    """A queue name by Azure's rule; None when unset and not needed (needed defaults to the declaration)."""
    value = raw(env, setting)
    if not value:
        if setting.required if needed is None else needed:
            raise ConfigurationError(setting.name, "is required")
        return None
    if not is_queue_name(value):
        raise ConfigurationError(setting.name, QUEUE_NAME_RULE)
    return value


def table_name(env: Mapping[str, str], setting: Setting) -> str:
    """A table name by Azure's rule (3-63 letters and digits, a letter first); unset means the declared default."""
    value = raw(env, setting) or (setting.default or "")
    if not _TABLE_NAME.fullmatch(value):
        raise ConfigurationError(setting.name, "must be 3-63 letters and digits, starting with a letter")
    return value
