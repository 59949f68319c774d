"""Connecting to a listener on the host's 127.0.0.1: nothing may arrive."""

from __future__ import annotations

import select
import socket

import pytest
from conftest import attempt

pytestmark = pytest.mark.timeout(60)


def _connect(port: int) -> str:
    import socket

    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    s.sendall(b"exfiltrated")
    return "connected"


def _raw_connect(port: int) -> str:
    import _socket

    s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    s.settimeout(2)
    s.connect(("127.0.0.1", port))
    return "connected"


def test_no_connection_reaches_the_host(world):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        sb = world.sandbox()
        for fn in (_connect, _raw_connect):
            got = attempt(sb, fn, port)
            assert isinstance(got, Exception), (fn.__name__, got)
        ready, _, _ = select.select([listener], [], [], 0.2)
        assert not ready, "the listener got a connection from the sandbox"
        assert world.events(sb.id, "socket") or world.events(sb.id, "import"), world.events(sb.id)
    finally:
        listener.close()
