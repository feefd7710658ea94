"""What the CLI prints: table cells, JSON, warnings, invalid-input lines and a progress line on stderr."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TextIO

from shared.contract.errors import InvalidMessage
from shared.rules import confirmation as stuck

CELL_WIDTH = 40
_OPTION_OF_FIELD = {
    "jobId": "JOB_ID",
    "reason": "--reason",
    "account": "--account",
    "conditions": "--if-match / --if-none-match / --if-modified-since / --if-unmodified-since",
    "ifMatch": "--if-match",
    "ifNoneMatch": "--if-none-match",
    "ifModifiedSince": "--if-modified-since",
    "ifUnmodifiedSince": "--if-unmodified-since",
    "requestId": "--request-id",
}


def cell(value: object, width: int = CELL_WIDTH) -> str:
    """A table cell: `-` for nothing, control characters escaped, long text shortened."""
    text = "-" if value is None else str(value)
    text = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
    return text if len(text) <= width else text[: width - 3] + "..."


def print_json(document: object, *, pretty: bool = False) -> None:
    """Print one JSON document on stdout."""
    print(json.dumps(document, ensure_ascii=False, indent=2 if pretty else None))


def warn(message: str) -> None:
    """One warning line on stderr."""
    print(f"warning: {message}", file=sys.stderr)


def invalid_message_text(exc: InvalidMessage, given: Mapping[str, object]) -> str:
    """One line naming each bad field (and the option it came from) with the value given."""
    parts = []
    for problem in exc.problems:
        option = _OPTION_OF_FIELD.get(problem.key)
        label = f"{problem.key} ({option})" if option and option != "JOB_ID" else problem.key
        value = given.get(problem.key)
        shown = f" (got {cell(json.dumps(value, ensure_ascii=False))})" if value is not None else ""
        parts.append(f"{label}: {problem.value}{shown}")
    return "; ".join(parts)


def stuck_line(values: Mapping[str, str]) -> str | None:
    """A TerminationStuck record's diagnosis (docs/CONTRACT.md §5b) in one line; None when it has none (pre-v3)."""
    parts: list[str] = []
    if values.get(stuck.RELEASE_TASK) == stuck.NO_RELEASE_TASK:
        parts.append("no release task")
    elif stuck.RELEASE_TASKS_RUNNING in values:
        running = _count(values[stuck.RELEASE_TASKS_RUNNING])
        if running == 0:
            parts.append("no release task running")
        else:
            since = values.get(stuck.RELEASE_TASK_SINCE)
            when = f" since {_clock_time(since)}" if since else ""
            parts.append(f"release task still running on {_nodes(running, values[stuck.RELEASE_TASKS_RUNNING])}{when}")
    counted = [(key, state) for key, state in stuck.NODE_STATE_COUNTS if key in values]
    if counted:
        states = [f"{_nodes(_count(values[key]), values[key])} {_STATE_WORDS[state]}" for key, state in counted]
        shown = [text for (key, _), text in zip(counted, states, strict=True) if _count(values[key]) != 0]
        parts.append("; ".join(shown) if shown else "no node unusable, offline or with a failed start task")
    elif parts and stuck.DIAGNOSIS not in values:
        parts.append("the job names no pool (node states not read)")
    if stuck.DIAGNOSIS in values:
        parts.append(f"diagnosis {values[stuck.DIAGNOSIS]}")
    return "; ".join(parts) if parts else None


_STATE_WORDS = {"unusable": "unusable", "offline": "offline", "starttaskfailed": "with a failed start task"}


def _count(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _nodes(count: int | None, text: str) -> str:
    """ "1 node", "3 nodes" (the recorded text when it is not a count)."""
    return f"{text} node" if count == 1 else f"{text} nodes"


def _clock_time(text: str) -> str:
    """An ISO 8601 time as HH:MM UTC (the date is the record's failedAt day, or near it); else as recorded."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    if moment.tzinfo is None:
        return text
    return moment.astimezone(UTC).strftime("%H:%M UTC")


class Progress:
    """A stdlib progress line on stderr: redrawn in place on a TTY, every 10% otherwise."""

    def __init__(self, total: int, stream: TextIO, label: str = "enqueued") -> None:
        self.total = total
        self.stream = stream
        self.label = label
        self.done = 0
        self._tty = bool(getattr(stream, "isatty", lambda: False)())
        self._lock = threading.Lock()
        self._last_draw = 0.0
        self._last_step = 0

    def advance(self) -> None:
        """Count one item and redraw when due."""
        with self._lock:
            self.done += 1
            if self._tty:
                now = time.monotonic()
                if now - self._last_draw >= 0.1 or self.done == self.total:
                    self._last_draw = now
                    self.stream.write(f"\r{self._text()}")
                    self.stream.flush()
            else:
                step = self.done * 10 // max(self.total, 1)
                if step > self._last_step:
                    self._last_step = step
                    self.stream.write(f"{self._text()}\n")
                    self.stream.flush()

    def close(self) -> None:
        """End the in-place line on a TTY."""
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()

    def _text(self) -> str:
        percent = self.done * 100 // max(self.total, 1)
        return f"{self.label} {self.done}/{self.total} ({percent}%)"
