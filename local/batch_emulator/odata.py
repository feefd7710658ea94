"""The OData $filter subset Batch takes for Job - List, parsed into a predicate, and $select."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from local.batch_emulator.model import Job, JobState

# learn.microsoft.com/rest/api/batchservice/odata-filters-in-batch#list-jobs: id (startswith, eq, ne, ge, gt, le,
# lt), state (eq, ne), executionInfo/poolId (startswith, eq, ne, ge, gt, le, lt), combined with and / or. The
# time properties it also lists are not modelled here; metadata and poolInfo/poolId cannot be filtered on at all.
_COMPARISONS = ("eq", "ne", "ge", "gt", "le", "lt")
_OPERATORS: dict[str, tuple[str, ...]] = {
    "id": (*_COMPARISONS, "startswith"),
    "state": ("eq", "ne"),
    "executionInfo/poolId": (*_COMPARISONS, "startswith"),
}
_TOKEN = re.compile(r"\s*(?:(?P<string>'(?:[^']|'')*')|(?P<punct>[(),])|(?P<word>[A-Za-z_][A-Za-z0-9_/]*))")

Predicate = Callable[[Job], bool]


class FilterError(ValueError):
    """The $filter text is not one Batch would take for Job - List; the message says why."""


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str


def _tokens(text: str) -> list[_Token]:
    """Split the filter into strings, punctuation and words."""
    tokens: list[_Token] = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        matched = _TOKEN.match(text, position)
        if matched is None:
            raise FilterError(f"Unexpected text at position {position}: {text[position : position + 20]!r}.")
        kind = matched.lastgroup or ""
        tokens.append(_Token(kind, matched.group(kind)))
        position = matched.end()
    return tokens


def _value(job: Job, name: str) -> str | None:
    """The job's value for a filterable property (ids compare case-insensitively, as Batch treats them)."""
    if name == "id":
        return job.id.lower()
    if name == "state":
        return job.state.value
    return job.execution_pool_id.lower() if job.execution_pool_id is not None else None


def _compare(name: str, operator: str, literal: str) -> Predicate:
    """One comparison as a predicate."""
    wanted = literal if name == "state" else literal.lower()

    def check(job: Job) -> bool:
        value = _value(job, name)
        if value is None:
            return operator == "ne"
        match operator:
            case "eq":
                return value == wanted
            case "ne":
                return value != wanted
            case "ge":
                return value >= wanted
            case "gt":
                return value > wanted
            case "le":
                return value <= wanted
            case "lt":
                return value < wanted
            case _:
                return value.startswith(wanted)

    return check


class _Parser:
    """Recursive descent over: or-expr := and-expr ('or' and-expr)*; and-expr := term ('and' term)*."""

    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.index = 0

    def parse(self) -> Predicate:
        if not self.tokens:
            raise FilterError("The filter is empty.")
        predicate = self._or()
        if self.index != len(self.tokens):
            raise FilterError(f"Unexpected {self.tokens[self.index].text!r}.")
        return predicate

    def _peek(self) -> _Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def _take(self, kind: str, text: str | None = None) -> str:
        token = self._peek()
        if token is None or token.kind != kind or (text is not None and token.text != text):
            expected = text or kind
            raise FilterError(f"Expected {expected!r}, found {token.text if token else 'the end'!r}.")
        self.index += 1
        return token.text

    def _or(self) -> Predicate:
        parts = [self._and()]
        while (token := self._peek()) is not None and token.text == "or":
            self.index += 1
            parts.append(self._and())
        return parts[0] if len(parts) == 1 else (lambda job: any(part(job) for part in parts))

    def _and(self) -> Predicate:
        parts = [self._term()]
        while (token := self._peek()) is not None and token.text == "and":
            self.index += 1
            parts.append(self._term())
        return parts[0] if len(parts) == 1 else (lambda job: all(part(job) for part in parts))

    def _term(self) -> Predicate:
        token = self._peek()
        if token is not None and token.text == "(":
            self.index += 1
            inner = self._or()
            self._take("punct", ")")
            return inner
        if token is not None and token.text == "startswith":
            self.index += 1
            self._take("punct", "(")
            name = self._property("startswith")
            self._take("punct", ",")
            literal = self._literal()
            self._take("punct", ")")
            return _compare(name, "startswith", literal)
        name = self._property(None)
        operator = self._take("word")
        if operator not in _OPERATORS[name]:
            raise FilterError(f"{name} does not take {operator!r}; it takes {', '.join(_OPERATORS[name])}.")
        literal = self._literal()
        if name == "state" and literal not in _STATES:
            raise FilterError(f"{literal!r} is not a job state.")
        return _compare(name, operator, literal)

    def _property(self, operator: str | None) -> str:
        name = self._take("word")
        if name not in _OPERATORS:
            raise FilterError(f"Job - List cannot filter on {name!r}.")
        if operator is not None and operator not in _OPERATORS[name]:
            raise FilterError(f"{name} does not take {operator!r}.")
        return name

    def _literal(self) -> str:
        return self._take("string")[1:-1].replace("''", "'")


_STATES = frozenset(state.value for state in JobState)


def parse_filter(text: str) -> Predicate:
    """The predicate for a Job - List $filter, or FilterError."""
    return _Parser(text).parse()
