"""A requests transport that hands each request to a loopback service's handle() in the calling thread.

The unit tier uses it (as httpx's MockTransport is used) to run the real Batch client and services against the
real emulator without a socket, a server thread or a port.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from urllib.parse import parse_qsl, urlsplit

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from local.loopback import HttpRequest, LoopbackService


class InProcessTransport(BaseAdapter):
    """Mount on a requests.Session for a service's URL: requests go to service.handle(), not to the network."""

    def __init__(self, service: LoopbackService) -> None:
        super().__init__()
        self._service = service

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Answer the request as the service would over a socket; a dropped connection is a ConnectionError."""
        target = urlsplit(request.url or "")
        pairs = tuple(parse_qsl(target.query, keep_blank_values=True))
        header_pairs = tuple((str(k), str(v)) for k, v in request.headers.items())
        body = request.body if isinstance(request.body, bytes) else (request.body or "").encode("utf-8")
        answer = self._service.handle(
            HttpRequest(
                method=request.method or "GET",
                path=target.path,
                query=dict(pairs),
                headers={name.lower(): value for name, value in header_pairs},
                body=body,
                raw_query=target.query,
                query_pairs=pairs,
                header_pairs=header_pairs,
            )
        )
        if answer is None:
            raise requests.ConnectionError("the service closed the connection without an answer", request=request)
        response = requests.Response()
        response.status_code = answer.status
        response.headers = CaseInsensitiveDict(answer.headers)
        response._content = answer.body
        response.url = request.url or ""
        response.request = request
        try:
            response.reason = HTTPStatus(answer.status).phrase
        except ValueError:
            response.reason = ""
        response.encoding = "utf-8"
        return response

    def close(self) -> None:
        """Nothing to close: no connection was opened."""


def in_process_session(service: LoopbackService) -> requests.Session:
    """A session whose requests to the service's URL never leave the process."""
    session = requests.Session()
    session.mount(f"{service.base_url}/", InProcessTransport(service))
    return session
