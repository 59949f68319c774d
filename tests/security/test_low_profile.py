"""Under ``low`` the same ordinary operations work (processes, sockets, files, ctypes,
introspection); only signals outside the sandbox stay refused."""

from __future__ import annotations

import socket

import pytest
from conftest import attempt

pytestmark = pytest.mark.timeout(60)


def _ordinary(port: int, marker: str) -> dict:
    import ctypes
    import gc
    import subprocess
    import sys

    out = {}
    out["echo"] = subprocess.run(["echo", "hi"], capture_output=True, text=True).stdout
    s = socket_connect(port)
    out["socket"] = s
    with open(marker, "w") as fh:
        fh.write("ok")
    out["ctypes"] = ctypes.sizeof(ctypes.c_int)
    out["gc"] = len(gc.get_objects()) > 0
    out["frame"] = sys._getframe().f_code.co_name
    return out


def socket_connect(port: int) -> bool:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"hello")
    return True


def test_low_allows_ordinary_operations(world):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    try:
        sb = world.sandbox(profile="low")
        marker = world.marker("low.txt")
        got = attempt(sb, _ordinary, port, str(marker))
        assert isinstance(got, dict), got
        assert got["echo"] == "hi\n" and got["socket"] and got["ctypes"] == 4 and got["gc"]
        conn, _ = listener.accept()
        conn.close()
        assert marker.read_text() == "ok"
        assert [e for e in world.events(sb.id) if e["action"] == "refused"] == []
    finally:
        listener.close()
