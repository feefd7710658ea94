"""The unit tier opens no socket: services meet Batch through local.in_process, never the network."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture(autouse=True)
def no_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test in tests/unit that connects or binds a socket fails at once."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the unit tier opens no socket (put the test in tests/adapters or tests/functions)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "bind", refuse)
