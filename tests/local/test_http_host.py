"""local.http_host over real sockets: alert_terminate on Azurite, routing, methods, the function key, bodies."""

from __future__ import annotations

import errno
import json
import logging
import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import azure.functions as func
import pytest
import requests

from local.functions import FunctionLoadError
from local.http_host import HttpFunction, HttpHost, http_functions
from local.invocations import ThreadPool
from tests.conftest import Queues

pytestmark = pytest.mark.integration

KEY = "local-test-key-0123456789"

ECHO = """
import json
import azure.functions as func

def main(req: func.HttpRequest) -> func.HttpResponse:
    if req.params.get("fail"):
        raise RuntimeError("asked to fail")
    document = {
        "method": req.method,
        "url": req.url,
        "params": dict(req.params),
        "route_params": dict(req.route_params),
        "echo_header": req.headers.get("x-echo"),
        "body": req.get_body().decode(),
    }
    return func.HttpResponse(json.dumps(document), status_code=207, headers={"X-Served-By": "echo"},
                             mimetype="application/json")
"""

NAMED_OUT = """
import azure.functions as func

def main(request: func.HttpRequest, res: func.Out[func.HttpResponse]) -> None:
    res.set(func.HttpResponse("set on the output binding", status_code=201))
"""

PLAIN_TEXT = """
def main(req):
    return "just a string"
"""


def write_function(root: Path, name: str, source: str, bindings: list[dict[str, object]]) -> None:
    """A v1-model function folder: function.json and __init__.py."""
    folder = root / name
    folder.mkdir()
    (folder / "function.json").write_text(json.dumps({"scriptFile": "__init__.py", "bindings": bindings}))
    (folder / "__init__.py").write_text(textwrap.dedent(source))


@pytest.fixture(scope="module")
def sample_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A small app: an anonymous echo function with a templated route, a named output binding, a str return."""
    root = tmp_path_factory.mktemp("sample_app")
    out = {"name": "$return", "type": "http", "direction": "out"}
    write_function(
        root,
        "echo_http_fn",
        ECHO,
        [
            {
                "name": "req",
                "type": "httpTrigger",
                "direction": "in",
                "authLevel": "anonymous",
                "route": "things/{id:int}/{*rest}",
            },
            out,
        ],
    )
    write_function(
        root,
        "named_out_http_fn",
        NAMED_OUT,
        [
            {"name": "request", "type": "httpTrigger", "direction": "in", "authLevel": "anonymous"},
            {"name": "res", "type": "http", "direction": "out"},
        ],
    )
    write_function(
        root,
        "plain_text_http_fn",
        PLAIN_TEXT,
        [{"name": "req", "type": "httpTrigger", "direction": "in", "authLevel": "function", "methods": ["get"]}, out],
    )
    write_function(
        root,
        "queue_only_fn",
        "def main(msg): pass\n",
        [{"name": "msg", "type": "queueTrigger", "direction": "in", "queueName": "q"}],
    )
    (root / "host.json").write_text(json.dumps({"version": "2.0", "extensions": {"http": {"routePrefix": "v1"}}}))
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(root))
        yield root


@pytest.fixture
def sample(sample_app: Path) -> Iterator[HttpHost]:
    """The sample app served on a free port."""
    with HttpHost(http_functions(sample_app), port=0, function_key=KEY) as host:
        yield host


@pytest.fixture
def app(trigger: Queues) -> Iterator[HttpHost]:
    """The project's own HTTP functions on a free port, with a known key."""
    with HttpHost.from_project(port=0, function_key=KEY) as host:
        yield host


@pytest.fixture
def http() -> Iterator[requests.Session]:
    """A session that never goes through a proxy from the environment."""
    with requests.Session() as session:
        session.trust_env = False
        yield session


# ---- the project's alert_terminate


def test_the_app_serves_alert_terminate_as_its_function_json_says() -> None:
    [function] = http_functions()
    assert function.name == "alert_terminate"
    assert function.path == "/api/alert_terminate"
    assert function.methods == {"POST"}
    assert function.auth_level == "function"
    assert function.parameter == "req"


def test_a_plain_body_with_the_key_is_202_and_lands_on_the_trigger_queue(
    app: HttpHost, trigger: Queues, http: requests.Session
) -> None:
    response = http.post(app.url("alert_terminate"), json={"jobId": "demo-job-1"}, timeout=10)

    assert response.status_code == 202, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"enqueued": ["demo-job-1"]}
    [request] = trigger.enqueued()
    assert request.job_id == "demo-job-1"


def test_the_key_may_come_in_the_x_functions_key_header(app: HttpHost, trigger: Queues, http: requests.Session) -> None:
    response = http.post(
        app.url("alert_terminate", with_key=False),
        json={"jobId": "demo-job-2", "reason": "header key"},
        headers={"x-functions-key": KEY},
        timeout=10,
    )

    assert response.status_code == 202, response.text
    assert [(r.job_id, r.reason) for r in trigger.enqueued()] == [("demo-job-2", "header key")]


@pytest.mark.parametrize(
    ("query", "headers"),
    [("", {}), ("?code=wrong", {}), ("?code=", {}), ("", {"x-functions-key": "wrong"})],
    ids=["no key", "wrong code", "empty code", "wrong header"],
)
def test_without_the_right_key_it_is_401_and_nothing_is_enqueued(
    app: HttpHost, trigger: Queues, http: requests.Session, query: str, headers: dict[str, str]
) -> None:
    url = app.url("alert_terminate", with_key=False) + query
    response = http.post(url, json={"jobId": "demo-job-1"}, headers=headers, timeout=10)

    assert response.status_code == 401
    assert "x-functions-key" in response.text
    assert trigger.enqueued() == []


def test_get_is_answered_by_the_host_per_the_methods_in_function_json(
    app: HttpHost, trigger: Queues, http: requests.Session, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    response = http.get(app.url("alert_terminate"), timeout=10)

    # methods: ["post"] is part of the route, so the Functions host answers 404 before the function runs
    # (azure-functions-host#10098); the function's own 405 is for hosts that let other methods through.
    assert response.status_code == 404
    assert response.content == b""
    assert "GET /api/alert_terminate -> 404 (alert_terminate takes POST)" in caplog.messages
    assert not any("alert_terminate rejected" in m for m in caplog.messages)
    assert trigger.enqueued() == []


def test_a_body_over_the_limit_reaches_the_function_which_answers_413(
    app: HttpHost, trigger: Queues, http: requests.Session
) -> None:
    body = json.dumps({"jobId": "demo-job-1", "padding": "x" * 70_000}).encode()
    response = http.post(app.url("alert_terminate"), data=body, timeout=10)

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "RequestBodyTooLarge"
    assert trigger.enqueued() == []


def test_the_key_never_reaches_a_log_record(
    app: HttpHost, trigger: Queues, http: requests.Session, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    http.post(app.url("alert_terminate"), json={"jobId": "demo-job-1"}, timeout=10)
    http.post(app.url("alert_terminate", with_key=False), json={}, headers={"x-functions-key": KEY}, timeout=10)
    http.get(app.url("alert_terminate"), timeout=10)

    # urllib3's own DEBUG lines are the client's (this test's requests); everything on the host's side is checked.
    served = [r for r in caplog.records if not r.name.startswith("urllib3")]
    texts = [f"{r.getMessage()} {r.exc_text or ''}" for r in served]
    assert any("POST /api/alert_terminate -> 202 (alert_terminate" in text for text in texts)
    assert not [text for text in texts if KEY in text]


# ---- routing, binding and the answer, on a sample app


def test_only_folders_with_an_http_trigger_are_served_under_the_host_json_prefix(sample: HttpHost) -> None:
    assert [f.name for f in sample.functions] == ["echo_http_fn", "named_out_http_fn", "plain_text_http_fn"]
    assert sample.function("echo_http_fn").path == "/v1/things/{id:int}/{*rest}"
    assert sample.function("named_out_http_fn").methods == frozenset()
    assert sample.url("named_out_http_fn") == f"{sample.base_url}/v1/named_out_http_fn"
    assert sample.url("plain_text_http_fn") == f"{sample.base_url}/v1/plain_text_http_fn?code={KEY}"


def test_a_real_http_request_is_handed_to_the_function_and_its_response_written_back(
    sample: HttpHost, http: requests.Session
) -> None:
    response = http.put(
        f"{sample.base_url}/v1/things/42/a/b%20c?x=1&x=2&empty=",
        data=b"payload",
        headers={"X-Echo": "hello"},
        timeout=10,
    )

    assert response.status_code == 207
    assert response.headers["X-Served-By"] == "echo"
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {
        "method": "PUT",
        "url": f"http://127.0.0.1:{sample.port}/v1/things/42/a/b%20c?x=1&x=2&empty=",
        "params": {"x": "1,2", "empty": ""},
        "route_params": {"id": "42", "rest": "a/b c"},
        "echo_header": "hello",
        "body": "payload",
    }


def test_route_constraints_and_unknown_paths_are_404(sample: HttpHost, http: requests.Session) -> None:
    assert http.get(f"{sample.base_url}/v1/things/abc", timeout=10).status_code == 404
    assert http.get(f"{sample.base_url}/api/named_out_http_fn", timeout=10).status_code == 404
    assert http.get(f"{sample.base_url}/v1/things/7", timeout=10).json()["route_params"] == {"id": "7"}


def test_without_methods_every_method_is_served(sample: HttpHost, http: requests.Session) -> None:
    for method in ("GET", "POST", "DELETE", "PATCH", "OPTIONS"):
        response = http.request(method, f"{sample.base_url}/v1/things/1", timeout=10)
        assert response.json()["method"] == method
    head = http.head(f"{sample.base_url}/v1/things/1", timeout=10)
    assert head.status_code == 207
    assert head.content == b""


def test_a_chunked_body_is_read_whole(sample: HttpHost, http: requests.Session) -> None:
    chunks = (part.encode() for part in ["first,", "second,", "third"])
    response = http.post(f"{sample.base_url}/v1/things/3", data=chunks, timeout=10)

    assert response.json()["body"] == "first,second,third"


def test_a_named_http_output_binding_and_a_str_return_are_answers(sample: HttpHost, http: requests.Session) -> None:
    named = http.post(sample.url("named_out_http_fn"), timeout=10)
    assert (named.status_code, named.text) == (201, "set on the output binding")
    assert named.headers["Content-Type"] == "text/plain; charset=utf-8"

    text = http.get(sample.url("plain_text_http_fn"), timeout=10)
    assert (text.status_code, text.text) == (200, "just a string")


def test_a_function_that_raises_is_a_500_and_the_host_keeps_serving(
    sample: HttpHost, http: requests.Session, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="local.http")
    failed = http.get(f"{sample.base_url}/v1/things/1?fail=1", timeout=10)

    assert (failed.status_code, failed.content) == (500, b"")
    assert any("echo_http_fn raised" in r.getMessage() and r.exc_info for r in caplog.records)
    assert http.get(f"{sample.base_url}/v1/things/1", timeout=10).status_code == 207


def test_stop_releases_the_port_even_with_an_idle_keep_alive_connection(sample_app: Path) -> None:
    host = HttpHost(http_functions(sample_app), port=0).start()
    port = host.port
    with requests.Session() as session:
        session.trust_env = False
        assert session.get(f"http://127.0.0.1:{port}/v1/things/1", timeout=10).status_code == 207
        started = time.monotonic()
        host.stop()
        assert time.monotonic() - started < 2
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_a_generated_key_is_new_per_host() -> None:
    first, second = HttpHost([]), HttpHost([])
    assert first.function_key != second.function_key
    assert len(first.function_key) >= 32


def test_a_taken_port_is_an_os_error(sample_app: Path) -> None:
    with HttpHost(http_functions(sample_app), port=0) as running, pytest.raises(OSError, match="in use") as raised:
        HttpHost([], port=running.port).start()
    assert raised.value.errno == errno.EADDRINUSE


def test_bad_bindings_are_refused() -> None:
    with pytest.raises(FunctionLoadError, match="authLevel"):
        HttpFunction.from_binding("f", {"authLevel": "system"}, None, print)
    with pytest.raises(FunctionLoadError, match="unknown HTTP method"):
        HttpFunction.from_binding("f", {"methods": ["fetch"]}, None, print)
    with pytest.raises(FunctionLoadError, match="one parameter per segment"):
        HttpFunction.from_binding("f", {"route": "files/{name}.{ext}"}, None, print)


def test_an_http_invocation_runs_on_the_workers_pool_when_given_one(http: requests.Session) -> None:
    ran_on: list[str] = []

    def main(req: func.HttpRequest) -> str:
        ran_on.append(threading.current_thread().name)
        return "ok"

    trigger = {"name": "req", "type": "httpTrigger", "direction": "in", "authLevel": "anonymous"}
    function = HttpFunction.from_binding("pooled_fn", trigger, None, main)
    pool = ThreadPool(1, name="worker")
    try:
        with HttpHost([function], port=0, pool=pool) as host:
            answer = http.get(host.url("pooled_fn"), timeout=10)
    finally:
        pool.shutdown()
    assert (answer.status_code, answer.text) == (200, "ok")
    assert ran_on == ["worker-0"]
