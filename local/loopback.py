"""The one threaded loopback HTTP stack that the local emulators and hosts are built on."""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit

log = logging.getLogger("local.loopback")


@dataclass(frozen=True)
class HttpRequest:
    """One request as read off the socket.

    `query` keeps the last value of a repeated name; `headers` has lower-cased names with repeated headers
    comma-joined; `query_pairs` and `header_pairs` keep everything as sent, in order.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    raw_query: str = ""
    query_pairs: tuple[tuple[str, str], ...] = ()
    header_pairs: tuple[tuple[str, str], ...] = ()

    @property
    def target(self) -> str:
        """The request target as sent: path, then ?query when there is one."""
        return f"{self.path}?{self.raw_query}" if self.raw_query else self.path


@dataclass
class HttpResponse:
    """One answer; Content-Length is added when it is written."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class BadRequestBody(ValueError):
    """The body's framing is broken (bad Content-Length, truncated body or chunk)."""


class TrackingHTTPServer(ThreadingHTTPServer):
    """Threaded HTTP server that remembers its open connections so stop() can close idle keep-alives."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        service: Any = None,
        request_queue_size: int | None = None,
    ) -> None:
        self.service = service
        if request_queue_size is not None:
            self.request_queue_size = request_queue_size
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup, which can stall for seconds in sandboxes."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Track the connection, then serve it on its own thread."""
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        """Forget the connection, then close it."""
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut down every open connection so keep-alive handler threads end."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log handler failures (mostly clients that went away) at DEBUG instead of printing them."""
        log.debug("error while serving %s", client_address, exc_info=True)


class LoopbackHandler(BaseHTTPRequestHandler):
    """Reads a request, asks the server's service for an answer and writes it (or drops the connection)."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, delayed ACKs add ~40 ms to every answer with a body.
    disable_nagle_algorithm = True
    server: TrackingHTTPServer

    def _dispatch(self) -> None:
        """Serve any method through the service's handle()."""
        service: LoopbackService = self.server.service
        try:
            body = self._read_body()
        except BadRequestBody as exc:
            self.close_connection = True
            refusal = {"Content-Type": "text/plain; charset=utf-8", "Connection": "close"}
            self._write(HttpResponse(400, refusal, f"bad request body: {exc}".encode()))
            return
        target = urlsplit(self.path)
        header_pairs = tuple(self.headers.items())
        headers: dict[str, str] = {}
        for name, value in header_pairs:
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        query_pairs = tuple(parse_qsl(target.query, keep_blank_values=True))
        request = HttpRequest(
            method=self.command,
            path=target.path,
            query=dict(query_pairs),
            headers=headers,
            body=body,
            raw_query=target.query,
            query_pairs=query_pairs,
            header_pairs=header_pairs,
        )
        try:
            response = service.handle(request)
        except Exception:
            log.exception("%s failed on %s %s", type(service).__name__, self.command, target.path)
            response = HttpResponse(500, {"Content-Type": "text/plain"}, b"loopback service error")
        if response is None:
            self.close_connection = True
            return
        self._write(response)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_TRACE = _dispatch

    def _read_body(self) -> bytes:
        """The body, framed by Content-Length or chunked transfer coding."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length_text = self.headers.get("Content-Length")
        if not length_text:
            return b""
        if not length_text.strip().isdigit():
            raise BadRequestBody(f"Content-Length {length_text!r} is not a number")
        length = int(length_text)
        body = self.rfile.read(length) if length else b""
        if len(body) != length:
            raise BadRequestBody(f"the connection closed after {len(body)} of {length} bytes")
        return body

    def _read_chunked(self) -> bytes:
        """Decode a chunked body, skipping chunk extensions and trailers."""
        chunks: list[bytes] = []
        while True:
            size_line = self.rfile.readline(1024)
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise BadRequestBody(f"bad chunk size line {size_line[:40]!r}") from None
            if size == 0:
                while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunk = self.rfile.read(size)
            if len(chunk) != size:
                raise BadRequestBody("the connection closed inside a chunk")
            chunks.append(chunk)
            self.rfile.readline(8)

    def _write(self, response: HttpResponse) -> None:
        """Status, headers (always with Content-Length) and, except for HEAD, the body."""
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD" and response.body:
            self.wfile.write(response.body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """No access line from http.server: its request line may carry secrets (?code=); services log their own."""

    def log_message(self, format: str, *args: Any) -> None:
        """http.server's error lines go to DEBUG instead of stderr."""
        log.debug("%s %s", self.address_string(), format % args)


class LoopbackService:
    """An HTTP service on a daemon thread, one thread per connection; subclasses implement handle()."""

    # Seconds an idle keep-alive connection is kept open (None: until the client or stop() closes it).
    idle_timeout: float | None = None
    poll_interval = 0.05
    request_queue_size = 256

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._address = (host, port)
        self._server: TrackingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def port(self) -> int:
        """The bound port (before start, only a port asked for by number is known: an in-process service's)."""
        if self._server is None:
            if self._address[1]:
                return int(self._address[1])
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._server.server_port

    @property
    def base_url(self) -> str:
        """http://host:port of the running server."""
        return f"http://{self._address[0]}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the server is serving."""
        return self._server is not None

    def start(self) -> Self:
        """Bind (OSError when the port is taken) and serve on a daemon thread."""
        if self._server is not None:
            raise RuntimeError(f"{type(self).__name__} is already started")
        self._stopping.clear()
        handler = type("Handler", (LoopbackHandler,), {"timeout": self.idle_timeout})
        self._server = TrackingHTTPServer(self._address, handler, self, self.request_queue_size)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": self.poll_interval},
            name=f"{type(self).__name__}:{self._server.server_port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close open connections and release the port."""
        server, thread = self._server, self._thread
        if server is None:
            return
        # Wakes handlers sleeping in a delay so they give up instead of answering into a closed server.
        self._stopping.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        """Start (unless already started) and return self."""
        return self if self._server is not None else self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop."""
        self.stop()

    def handle(self, request: HttpRequest) -> HttpResponse | None:
        """Answer one request; None closes the connection without an answer."""
        raise NotImplementedError

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless the service stops meanwhile; False means it is stopping."""
        if seconds <= 0:
            return not self._stopping.is_set()
        return not self._stopping.wait(seconds)
