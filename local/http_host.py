"""A loopback HTTP host for the app's HTTP-triggered functions, like `func start`: port 7071, `/api/<function>`."""

from __future__ import annotations

import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote

import azure.functions as func

from local.functions import FunctionFolder, FunctionLoadError, function_folders
from local.invocations import ThreadPool
from local.loopback import HttpRequest, HttpResponse, LoopbackService
from shared.config.settings import HOST_JSON, PROJECT_ROOT

log = logging.getLogger("local.http")

T = TypeVar("T")

DEFAULT_PORT = 7071  # what Core Tools' `func start` listens on
DEFAULT_ROUTE_PREFIX = "api"
KEY_PARAM = "code"
KEY_HEADER = "x-functions-key"
AUTH_LEVELS = frozenset({"anonymous", "function", "admin"})
# "If not specified, the function responds to all HTTP methods."
ALL_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE")
# Hop-by-hop and framing headers are the host's business, not the function's.
_HOST_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})
_ROUTE_PARAM = re.compile(r"\{(\*{1,2})?([A-Za-z_]\w*)((?::[^{}=?]+)*)(?:=([^{}?]*))?(\?)?\}")
# ASP.NET Core route constraints the host understands; others only check that the segment is present.
_CONSTRAINTS = {
    "int": r"-?\d+",
    "long": r"-?\d+",
    "bool": r"(?i:true|false)",
    "alpha": r"[A-Za-z]+",
    "guid": r"\{?[0-9A-Fa-f]{8}-?(?:[0-9A-Fa-f]{4}-?){3}[0-9A-Fa-f]{12}\}?",
    "decimal": r"-?\d+(?:\.\d+)?",
    "double": r"-?\d+(?:\.\d+)?",
    "float": r"-?\d+(?:\.\d+)?",
}


class _Out(func.Out[T]):
    """The value a function sets on a named output binding."""

    def __init__(self) -> None:
        self._value: T | None = None

    def set(self, val: T) -> None:
        """Keep the value."""
        self._value = val

    def get(self) -> T:
        """The value set (None when the function set none)."""
        return self._value  # type: ignore[return-value]


@dataclass(frozen=True)
class HttpFunction:
    """One HTTP-triggered function: its route, methods, auth level and the callable that serves it."""

    name: str
    route: str
    methods: frozenset[str]
    auth_level: str
    parameter: str
    output: str
    handler: Callable[..., Any] = field(repr=False)
    route_prefix: str = DEFAULT_ROUTE_PREFIX
    _pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _defaults: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Compile the route template."""
        pattern, defaults = _compile_route(self.route_prefix, self.route)
        object.__setattr__(self, "_pattern", pattern)
        object.__setattr__(self, "_defaults", defaults)

    @classmethod
    def load(cls, function: FunctionFolder | Path, route_prefix: str = DEFAULT_ROUTE_PREFIX) -> HttpFunction | None:
        """The function in this folder if its function.json has an httpTrigger binding, else None."""
        folder = function if isinstance(function, FunctionFolder) else FunctionFolder.read(function)
        trigger = folder.binding("httpTrigger")
        if trigger is None:
            return None
        output = folder.binding("http", "out")
        return cls.from_binding(folder.name, trigger, output, folder.load_entry_point(), route_prefix)

    @classmethod
    def from_binding(
        cls,
        name: str,
        trigger: Mapping[str, Any],
        output: Mapping[str, Any] | None,
        handler: Callable[..., Any],
        route_prefix: str = DEFAULT_ROUTE_PREFIX,
    ) -> HttpFunction:
        """Build from the httpTrigger binding (and the http output binding, if any) of a function.json."""
        auth_level = str(trigger.get("authLevel") or "function").lower()
        if auth_level not in AUTH_LEVELS:
            raise FunctionLoadError(f"{name}: authLevel {auth_level!r} is not one of {sorted(AUTH_LEVELS)}")
        methods = frozenset(str(m).upper() for m in trigger.get("methods") or ())
        unknown = methods - set(ALL_METHODS)
        if unknown:
            raise FunctionLoadError(f"{name}: unknown HTTP method(s) {sorted(unknown)}")
        route = str(trigger.get("route") or name).strip("/")
        return cls(
            name=name,
            route=route,
            methods=methods,
            auth_level=auth_level,
            parameter=str(trigger.get("name") or "req"),
            output=str(output.get("name") or "$return") if output else "$return",
            handler=handler,
            route_prefix=route_prefix,
        )

    @property
    def path(self) -> str:
        """The route template with its prefix, e.g. `/api/alert_terminate`."""
        return "/" + "/".join(part for part in (self.route_prefix, self.route) if part)

    def allowed_methods(self) -> tuple[str, ...]:
        """The methods the function answers, in the usual order."""
        return tuple(m for m in ALL_METHODS if not self.methods or m in self.methods)

    def match(self, path: str) -> dict[str, str] | None:
        """The route parameters when the URL path (still percent-encoded) matches the route, else None."""
        found = self._pattern.fullmatch(path)
        if found is None:
            return None
        values = {name: unquote(value) for name, value in found.groupdict().items() if value is not None}
        return {**self._defaults, **values}

    def invoke(self, request: func.HttpRequest) -> Any:
        """Call the function with the request on its parameter name; the HTTP output is what it returned or set."""
        if self.output == "$return":
            return self.handler(**{self.parameter: request})
        out: _Out[Any] = _Out()
        self.handler(**{self.parameter: request, self.output: out})
        return out.get()


def _compile_route(prefix: str, route: str) -> tuple[re.Pattern[str], dict[str, str]]:
    """A regex for `/prefix/route` with `{name}`, `{name?}`, `{name=default}`, `{name:int}` and `{*rest}` segments."""
    pieces: list[str] = []
    defaults: dict[str, str] = {}
    segments = [s for s in prefix.strip("/").split("/") if s] + [s for s in route.strip("/").split("/") if s]
    for segment in segments:
        found = _ROUTE_PARAM.fullmatch(segment)
        if found is None:
            if "{" in segment or "}" in segment:
                raise FunctionLoadError(f"route segment {segment!r} is not supported (one parameter per segment)")
            pieces.append("/" + re.escape(segment))
            continue
        catch_all, name, constraints, default, optional = found.groups()
        if catch_all:
            pieces.append(f"(?:/(?P<{name}>.*))?")
            continue
        value = r"[^/]+"
        for constraint in filter(None, constraints.split(":")):
            kind = constraint.split("(", 1)[0].lower()
            if kind in _CONSTRAINTS:
                value = _CONSTRAINTS[kind]
        if default is not None:
            defaults[name] = default
        group = f"/(?P<{name}>{value})"
        pieces.append(f"(?:{group})?" if optional or default is not None else group)
    return re.compile("".join(pieces) + "/?" if pieces else "/?", re.IGNORECASE), defaults


def route_prefix(host_json: Path = HOST_JSON) -> str:
    """host.json's extensions.http.routePrefix (default `api`)."""
    try:
        document = json.loads(host_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return DEFAULT_ROUTE_PREFIX
    http = (document.get("extensions") or {}).get("http") or {}
    prefix = http.get("routePrefix") if isinstance(http, dict) else None
    return DEFAULT_ROUTE_PREFIX if prefix is None else str(prefix).strip("/")


def http_functions(root: Path = PROJECT_ROOT, host_json: Path | None = None) -> list[HttpFunction]:
    """Every function folder under root whose function.json has an httpTrigger binding."""
    prefix = route_prefix(host_json or root / "host.json")
    loaded = (HttpFunction.load(folder, prefix) for folder in function_folders(root, "httpTrigger"))
    return [function for function in loaded if function is not None]


def _text(status: int, text: str, headers: Mapping[str, str] | None = None) -> HttpResponse:
    """A short plain-text answer from the host itself."""
    return HttpResponse(status, {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}, text.encode())


def _answer_from(result: Any) -> HttpResponse:
    """The function's return value as the worker encodes it: HttpResponse, str (200), None (204)."""
    if isinstance(result, func.HttpResponse):
        headers = {name: value for name, value in result.headers.items() if name.lower() not in _HOST_HEADERS}
        if not any(name.lower() == "content-type" for name in headers):
            mimetype = result.mimetype
            content_type = f"{mimetype}; charset={result.charset}" if mimetype.startswith("text/") else mimetype
            headers["Content-Type"] = content_type
        return HttpResponse(int(result.status_code), headers, result.get_body() or b"")
    if isinstance(result, str):
        return _text(200, result)
    if result is None:
        return HttpResponse(204)
    raise TypeError(f"an HTTP function must return func.HttpResponse or str, not {type(result).__name__}")


class HttpHost(LoopbackService):
    """Serves HTTP-triggered functions on loopback with the host's routing and function-key check."""

    idle_timeout = 120.0  # an idle keep-alive connection is closed after this
    poll_interval = 0.1
    request_queue_size = 64

    def __init__(
        self,
        functions: Iterable[HttpFunction],
        *,
        port: int = DEFAULT_PORT,
        host: str = "127.0.0.1",
        function_key: str | None = None,
        pool: ThreadPool | None = None,
    ) -> None:
        super().__init__(host, port)
        # The worker's one thread pool: an HTTP invocation waits for a thread like any other.
        self.pool = pool
        self.functions = list(functions)
        self.function_key = function_key or secrets.token_urlsafe(32)
        self.requests = 0

    @classmethod
    def from_project(
        cls,
        root: Path = PROJECT_ROOT,
        *,
        port: int = DEFAULT_PORT,
        function_key: str | None = None,
        pool: ThreadPool | None = None,
    ) -> HttpHost:
        """A host for every HTTP-triggered function of the app under root."""
        return cls(http_functions(root), port=port, function_key=function_key, pool=pool)

    def function(self, name: str) -> HttpFunction:
        """The served function with this name."""
        for function in self.functions:
            if function.name == name:
                return function
        raise KeyError(name)

    def url(self, name: str, *, with_key: bool = True) -> str:
        """The function's URL (its route template as is), with `?code=<key>` when it needs a key."""
        function = self.function(name)
        url = self.base_url + function.path
        if with_key and function.auth_level != "anonymous":
            url += f"?{KEY_PARAM}={self.function_key}"
        return url

    def handle(self, request: HttpRequest) -> HttpResponse:
        """Route, authorize and invoke one request; log one line (the path only: the query may hold the key)."""
        started = time.monotonic()
        self.requests += 1
        method, target, body = request.method, request.target, request.body
        path = request.path or "/"
        matched = [(function, params) for function in self.functions if (params := function.match(path)) is not None]
        if not matched:
            log.info("%s %s -> 404 (no function has this route)", method, path)
            return HttpResponse(404)
        allowed = [(function, params) for function, params in matched if method in function.allowed_methods()]
        if not allowed:
            # Like the Functions host: methods are part of the route, so another method is a 404, not a 405.
            methods = sorted({m for function, _ in matched for m in function.allowed_methods()})
            log.info("%s %s -> 404 (%s takes %s)", method, path, matched[0][0].name, ", ".join(methods))
            return HttpResponse(404)
        function, route_params = allowed[0]
        params = _params(request.raw_query)
        merged = _headers(request.header_pairs)
        if function.auth_level != "anonymous" and not self._authorized(params, merged):
            log.info("%s %s -> 401 (%s needs its function key)", method, path, function.name)
            return _text(401, f"{function.name} needs the function key: ?{KEY_PARAM}=<key> or an {KEY_HEADER} header")
        host = merged.get("host") or f"{self._address[0]}:{self.port}"
        delivered = func.HttpRequest(
            method, f"http://{host}{target}", headers=merged, params=params, route_params=route_params, body=body
        )
        try:
            pool = self.pool
            result = function.invoke(delivered) if pool is None else pool.run(lambda: function.invoke(delivered))
            answer = _answer_from(result)
        except Exception:
            log.exception("%s %s -> 500 (%s raised)", method, path, function.name)
            return HttpResponse(500)
        log.info(
            "%s %s -> %d (%s, %.0f ms)", method, path, answer.status, function.name, (time.monotonic() - started) * 1000
        )
        return answer

    def _authorized(self, params: Mapping[str, str], headers: Mapping[str, str]) -> bool:
        """Whether the request carries the function key in ?code= or x-functions-key."""
        expected = self.function_key.encode()
        offered = [value for value in (params.get(KEY_PARAM), headers.get(KEY_HEADER)) if value]
        return any(hmac.compare_digest(value.encode(), expected) for value in offered)


def _params(query: str) -> dict[str, str]:
    """Query parameters; a repeated name keeps its values comma-joined."""
    params: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        params[name] = f"{params[name]},{value}" if name in params else value
    return params


def _headers(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Request headers by lower-case name; a repeated header keeps its values comma-joined."""
    headers: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


__all__ = [
    "DEFAULT_PORT",
    "KEY_HEADER",
    "KEY_PARAM",
    "HttpFunction",
    "HttpHost",
    "http_functions",
    "route_prefix",
]
