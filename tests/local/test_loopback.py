"""The one loopback HTTP stack: framing, methods, repeated names and connection handling."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from http.client import HTTPConnection

import pytest
import requests

from local.loopback import HttpRequest, HttpResponse, LoopbackService

pytestmark = pytest.mark.integration


class Echo(LoopbackService):
    """Answers with what it read; path /drop closes unanswered, /boom raises."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[HttpRequest] = []

    def handle(self, request: HttpRequest) -> HttpResponse | None:
        self.seen.append(request)
        if request.path == "/drop":
            return None
        if request.path == "/boom":
            raise RuntimeError("handler bug")
        return HttpResponse(200, {"X-Method": request.method}, request.body or b"no body")


@pytest.fixture
def echo() -> Iterator[Echo]:
    with Echo() as service:
        yield service


def test_content_length_and_chunked_bodies_are_read_whole(echo: Echo) -> None:
    assert requests.post(echo.base_url + "/x", data=b"framed", timeout=5).content == b"framed"
    chunked = requests.post(echo.base_url + "/x", data=iter([b"one ", b"two"]), timeout=5)
    assert chunked.content == b"one two"
    assert "chunked" in echo.seen[-1].headers["transfer-encoding"]


def test_head_answers_headers_without_a_body(echo: Echo) -> None:
    response = requests.head(echo.base_url + "/x", timeout=5)
    assert (response.status_code, response.headers["X-Method"], response.content) == (200, "HEAD", b"")
    assert response.headers["Content-Length"] == str(len(b"no body"))


@pytest.mark.parametrize("method", ["OPTIONS", "TRACE", "PUT", "PATCH", "DELETE"])
def test_every_method_reaches_the_service(echo: Echo, method: str) -> None:
    assert requests.request(method, echo.base_url + "/x", timeout=5).headers["X-Method"] == method


def test_repeated_query_names_and_headers_are_kept_as_sent(echo: Echo) -> None:
    connection = HTTPConnection("127.0.0.1", echo.port, timeout=5)
    try:
        connection.putrequest("GET", "/x?a=1&b=2&a=3")
        connection.putheader("X-Tag", "one")
        connection.putheader("x-tag", "two")
        connection.endheaders()
        connection.getresponse().read()
    finally:
        connection.close()
    request = echo.seen[-1]
    assert request.query_pairs == (("a", "1"), ("b", "2"), ("a", "3"))
    assert request.query == {"a": "3", "b": "2"}
    assert request.raw_query == "a=1&b=2&a=3"
    assert request.target == "/x?a=1&b=2&a=3"
    assert ("X-Tag", "one") in request.header_pairs
    assert ("x-tag", "two") in request.header_pairs
    assert request.headers["x-tag"] == "one, two"


def _raw(port: int, data: bytes) -> bytes:
    """Send raw bytes and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    return received


def test_broken_framing_is_400_and_closes(echo: Echo) -> None:
    answer = _raw(echo.port, b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: ten\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400")
    assert b"Connection: close" in answer
    assert echo.seen == []


def test_none_drops_the_connection_and_a_raising_service_is_500(echo: Echo) -> None:
    with pytest.raises(requests.ConnectionError):
        requests.get(echo.base_url + "/drop", timeout=5)
    assert requests.get(echo.base_url + "/boom", timeout=5).status_code == 500


def test_idle_keep_alive_connections_close_after_idle_timeout() -> None:
    class Idle(Echo):
        idle_timeout = 0.2

    with Idle() as service, socket.create_connection(("127.0.0.1", service.port), timeout=5) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
        assert received.startswith(b"HTTP/1.1 200")


def test_request_queue_size_is_per_service() -> None:
    class Small(Echo):
        request_queue_size = 7

    with Small() as service:
        assert service._server is not None
        assert service._server.request_queue_size == 7
    with Echo() as service:
        assert service._server is not None
        assert service._server.request_queue_size == 256
