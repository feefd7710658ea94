"""The OData $filter subset Batch takes for its lists (jobs, job schedules, compute nodes), parsed into predicates."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from local.batch_emulator.model import Job, JobScheduleState, JobState, NodeState

_COMPARISONS = ("eq", "ne", "ge", "gt", "le", "lt")
_TOKEN = re.compile(r"\s*(?:(?P<string>'(?:[^']|'')*')|(?P<punct>[(),])|(?P<word>[A-Za-z_][A-Za-z0-9_/]*))")

Predicate = Callable[[Any], bool]


class FilterError(ValueError):
    """The $filter text is not one Batch would take for the list; the message says why."""


@dataclass(frozen=True)
class Property:
    """A filterable property: its operators, how to read it, and (for states) the literals it takes."""

    operators: tuple[str, ...]
    read: Callable[[Any], str | None]
    literals: frozenset[str] | None = None


@dataclass(frozen=True)
class Schema:
    """What one list operation can filter on; `name` is the operation, for messages."""

    name: str
    properties: Mapping[str, Property]


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


def _compare(prop: Property, operator: str, literal: str) -> Predicate:
    """One comparison as a predicate (values other than states compare case-insensitively, as Batch's ids do)."""
    wanted = literal if prop.literals is not None else literal.lower()

    def check(item: Any) -> bool:
        value = prop.read(item)
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

    def __init__(self, text: str, schema: Schema) -> None:
        self.tokens = _tokens(text)
        self.schema = schema
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
            _, prop = self._property("startswith")
            self._take("punct", ",")
            literal = self._literal()
            self._take("punct", ")")
            return _compare(prop, "startswith", literal)
        name, prop = self._property(None)
        operator = self._take("word")
        if operator not in prop.operators:
            raise FilterError(f"{name} does not take {operator!r}; it takes {', '.join(prop.operators)}.")
        literal = self._literal()
        if prop.literals is not None and literal not in prop.literals:
            raise FilterError(f"{literal!r} is not a {name} value.")
        return _compare(prop, operator, literal)

    def _property(self, operator: str | None) -> tuple[str, Property]:
        name = self._take("word")
        prop = self.schema.properties.get(name)
        if prop is None:
            raise FilterError(f"{self.schema.name} cannot filter on {name!r}.")
        if operator is not None and operator not in prop.operators:
            raise FilterError(f"{name} does not take {operator!r}.")
        return name, prop

    def _literal(self) -> str:
        return self._take("string")[1:-1].replace("''", "'")


def _lower(value: str | None) -> str | None:
    return value.lower() if value is not None else None


def _job_pool(job: Job) -> str | None:
    return _lower(job.execution_pool_id)


# learn.microsoft.com/rest/api/batchservice/odata-filters-in-batch#list-jobs: id (startswith, eq, ne, ge, gt, le,
# lt), state (eq, ne), executionInfo/poolId (startswith, eq, ne, ge, gt, le, lt), combined with and / or. The
# time properties it also lists are not modelled here; metadata and poolInfo/poolId cannot be filtered on at all.
JOBS = Schema(
    "Job - List",
    {
        "id": Property((*_COMPARISONS, "startswith"), lambda job: job.id.lower()),
        "state": Property(("eq", "ne"), lambda job: job.state.value, frozenset(s.value for s in JobState)),
        "executionInfo/poolId": Property((*_COMPARISONS, "startswith"), _job_pool),
    },
)
# The same page's list-job-schedules section: id and state as for jobs (its time properties not modelled).
JOB_SCHEDULES = Schema(
    "Job Schedule - List",
    {
        "id": Property((*_COMPARISONS, "startswith"), lambda item: item.id.lower()),
        "state": Property(("eq", "ne"), lambda item: item.state.value, frozenset(s.value for s in JobScheduleState)),
    },
)
# Its list-compute-nodes section: id and state (the emulator models no more of a node).
NODES = Schema(
    "Compute Node - List",
    {
        "id": Property((*_COMPARISONS, "startswith"), lambda item: item.id.lower()),
        "state": Property(("eq", "ne"), lambda item: item.state.value, frozenset(s.value for s in NodeState)),
    },
)
# Job - List Preparation and Release Task Status: its $filter is documented as "nodeId eq 'x'" (the spec's
# description of the operation); the emulator takes nodeId with eq/ne.
PREP_RELEASE = Schema(
    "Job - List Preparation and Release Task Status",
    {"nodeId": Property(("eq", "ne"), lambda item: item["nodeId"].lower())},
)


def parse_filter(text: str, schema: Schema = JOBS) -> Predicate:
    """The predicate for a list's $filter (Job - List unless another schema is given), or FilterError."""
    return _Parser(text, schema).parse()


__all__ = ["JOBS", "JOB_SCHEDULES", "NODES", "PREP_RELEASE", "FilterError", "Predicate", "Schema", "parse_filter"]
