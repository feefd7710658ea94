"""Whether an incident waits for a person (docs/CONTRACT.md §10): its own module, so settings stay light."""

from __future__ import annotations

import enum


class Approval(enum.StrEnum):
    """Whether a planned incident acts at once or waits for `approve` (KILL_SWITCH_APPROVAL's values)."""

    AUTO = "auto"
    MANUAL = "manual"
