"""Under ``low`` ordinary operations work inside the sandbox (processes, sockets on
its own loopback, files in its workdir and private /tmp, ctypes, introspection);
their effects stay inside (``test_containment.py``), and signals outside the
sandbox stay refused."""

from __future__ import annotations

import pytest
from conftest import attempt

pytestmark = pytest.mark.timeout(60)


def _ordinary(marker: str) -> dict:
    import ctypes
    import gc
    import socket
    import subprocess
    import sys

    out = {}
    out["echo"] = subprocess.run(["echo", "hi"], capture_output=True, text=True).stdout
    # A server and a client on the sandbox's own loopback (its network namespace).
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        with socket.create_connection(srv.getsockname(), timeout=5) as c:
            c.sendall(b"hello")
            conn, _ = srv.accept()
            out["socket"] = conn.recv(5) == b"hello"
            conn.close()
    with open(marker, "w") as fh:
        fh.write("ok")
    with open("/tmp/scratch.txt", "w") as fh:  # its private /tmp
        fh.write("ok")
    out["ctypes"] = ctypes.sizeof(ctypes.c_int)
    out["gc"] = len(gc.get_objects()) > 0
    out["frame"] = sys._getframe().f_code.co_name
    return out


def test_low_allows_ordinary_operations_inside(world):
    sb = world.sandbox(profile="low")
    marker = world.workdir(sb) / "low.txt"
    got = attempt(sb, _ordinary, str(marker))
    assert isinstance(got, dict), got
    assert got["echo"] == "hi\n" and got["socket"] and got["ctypes"] == 4 and got["gc"]
    assert marker.read_text() == "ok"
    assert [e for e in world.events(sb.id) if e["action"] == "refused"] == []
