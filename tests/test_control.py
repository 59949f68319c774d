"""The control endpoint and its client: a real runtime, real sockets, real processes.

Each defence of the server (docs/operations.md, sandbox/control/server.py) has a
test here that talks to it through a raw socket, as a hostile or broken client would.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandbox
from runtime.errors import ActorFailed, ConfigError, NoSuchActor, ProtocolError, SandboxNotFound
from runtime.wire.mailbox import CALL, ERROR, REPLY, SYSTEM, Codec, FrameDecoder
from sandbox.control.protocol import AuthenticationError, ControlError
from sandbox.control.server import ControlServer, Limits

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
COUNTER = str(ROOT / "examples" / "counter")


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    return str(tmp_path / "ctl.sock")


@pytest.fixture
def served(sock_path: str) -> Iterator[sandbox.Runtime]:
    with sandbox.start(listen=f"unix:{sock_path}") as rt:
        yield rt


class Raw:
    """A client speaking the wire by hand, to misbehave."""

    def __init__(self, address: str | tuple[str, int]) -> None:
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(address)
        self.codec = Codec()
        self.decoder = FrameDecoder(self.codec)
        self.got: list = []

    def send(self, kind: str, ref: int | None, target: str | None, payload: object) -> None:
        self.sock.sendall(self.codec.frame(kind, ref, target, payload))

    def hello(self, token: str | None = None) -> object:
        self.send(SYSTEM, 0, "hello", {"version": 1, "token": token})
        return self.next()

    def next(self):
        """The next envelope, or None at EOF."""
        while not self.got:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.got.extend(self.decoder.feed(data))
        return self.got.pop(0)

    def close(self) -> None:
        self.sock.close()


def test_unix_socket_is_private_and_serves_the_runtime(served, sock_path):
    assert os.stat(sock_path).st_mode & 0o777 == 0o600
    with sandbox.connect(f"unix:{sock_path}") as remote:
        assert remote.name == served.name
        sb = remote.create_sandbox("ctl-a", COUNTER)
        assert [sb.call("counter", "incr") for _ in range(3)] == [1, 2, 3]
        sb.cast("counter", "incr")
        from helpers import wait_for

        wait_for(lambda: served.sandbox("ctl-a").call("counter", "get") == 4, timeout=30)
        assert remote.get_sandbox_info("ctl-a")["status"] == "running"
        assert remote.health()["sandboxes"]["ctl-a"]["status"] == "running"
        assert 'sandbox_calls_total{sandbox="ctl-a"}' in remote.metrics_text()
        report = sb.hot_reload()
        assert report.ok and report.sandbox == "ctl-a"
        assert remote.module_versions("ctl-a") == {"app": 1, "counter": 1}
        sb.destroy()
        assert remote.list_sandboxes() == []
    served.stop()
    assert not os.path.exists(sock_path), "the socket file is removed at stop"


@pytest.mark.parametrize(
    "action, error",
    [
        (lambda r: r.sandbox("nope"), SandboxNotFound),
        (lambda r: r.get_sandbox_info("nope"), SandboxNotFound),
        (lambda r: r.sandbox("ctl-e").call("nobody", "get"), NoSuchActor),
        (lambda r: r.sandbox("ctl-e").call("counter", "crash"), ActorFailed),
        (lambda r: r.create_sandbox("bad", COUNTER, profile="x"), ConfigError),
        (lambda r: r.create_sandbox("ctl-e", COUNTER), sandbox.SandboxExists),
    ],
    ids=["sandbox", "info", "no-such-actor", "actor-failed", "config", "exists"],
)
def test_errors_cross_as_the_same_classes(served, sock_path, action, error):
    served.create_sandbox("ctl-e", COUNTER)
    with sandbox.connect(f"unix:{sock_path}") as remote:
        with pytest.raises(error) as info:
            action(remote)
    local = {SandboxNotFound: "no sandbox with id", ConfigError: "invalid profile"}
    if error in local:
        assert local[error] in str(info.value)


def test_an_argument_that_cannot_be_sent_is_named(served, sock_path):
    served.create_sandbox("ctl-arg", COUNTER)
    with sandbox.connect(f"unix:{sock_path}") as remote:
        with pytest.raises(TypeError, match="argument 'request' of call.. cannot be sent"):
            remote.sandbox("ctl-arg").call("counter", object())
        assert remote.sandbox("ctl-arg").call("counter", "incr") == 1  # still usable


def test_tcp_requires_the_token(tmp_path):
    token_file = tmp_path / "token"
    with sandbox.start(listen="tcp:127.0.0.1:0", token_file=token_file) as rt:
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert rt.control_token == token_file.read_text().strip()
        address = str(rt.control_address)
        for token in (None, "wrong"):
            with pytest.raises(AuthenticationError, match="wrong or missing token"):
                sandbox.connect(address, token=token)
        with sandbox.connect(address, token_file=token_file) as remote:
            assert remote.list_sandboxes() == []


def test_tcp_without_token_file_gets_a_random_token():
    with sandbox.start(listen="tcp:127.0.0.1:0") as rt:
        assert len(rt.control_token) >= 32
        with sandbox.connect(str(rt.control_address), token=rt.control_token) as remote:
            assert remote.health()["status"] == "ok"


@pytest.fixture
def cert(tmp_path: Path) -> tuple[Path, Path]:
    key, crt = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(crt), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return crt, key


def test_tls(cert):
    crt, key = cert
    with sandbox.start(listen="tcp:127.0.0.1:0", tls=(crt, key)) as rt:
        address = str(rt.control_address)
        with sandbox.connect(address, token=rt.control_token, tls=crt) as remote:
            assert remote.list_sandboxes() == []
        with pytest.raises(ControlError):  # plain text to a TLS server
            sandbox.connect(address, token=rt.control_token, timeout=5)
        # the server survived both
        with sandbox.connect(address, token=rt.control_token, tls=crt) as remote:
            assert remote.health()["status"] == "ok"


@pytest.mark.parametrize(
    "option, value",
    [("listen", "localhost:80"), ("listen", "tcp:127.0.0.1:99999"), ("tls", ("a", "b")),
     ("token_file", "/no/such/dir/token")],
)
def test_bad_endpoint_options_are_config_errors(option, value):
    kwargs = {"listen": "tcp:127.0.0.1:0", option: value}
    with pytest.raises(ConfigError) as info:
        sandbox.start(**kwargs)
    assert info.value.option == option


def test_a_busy_socket_path_is_refused(served, sock_path):
    with pytest.raises(ConfigError, match="another runtime serves"):
        sandbox.start(listen=f"unix:{sock_path}")
    with sandbox.connect(f"unix:{sock_path}") as remote:  # the first one is unharmed
        assert remote.list_sandboxes() == []


# -- hostile and broken clients ---------------------------------------------------------


@pytest.fixture
def strict(tmp_path: Path) -> Iterator[tuple[ControlServer, sandbox.Runtime]]:
    """A server with small limits, to reach each of them quickly."""
    with sandbox.start() as rt:
        limits = Limits(max_clients=3, max_frame=64 * 1024, auth_timeout=1.0,
                        frame_timeout=1.0, max_buffer=64 * 1024)
        server = ControlServer(rt, f"unix:{tmp_path / 's.sock'}", token="t0k", limits=limits)
        server.start()
        try:
            yield server, rt
        finally:
            server.stop()


def _still_serves(server: ControlServer) -> None:
    with sandbox.connect(str(server.address), token="t0k") as remote:
        assert remote.health()["status"] == "ok"


def test_nothing_before_authentication(strict):
    server, _ = strict
    raw = Raw(server.address.path)
    raw.send(CALL, 1, "list", {})  # no hello
    env = raw.next()
    assert env.kind == ERROR and env.payload["type"] == "AuthenticationError"
    assert raw.next() is None, "the server closes the connection"
    raw.close()
    _still_serves(server)


def test_silent_client_is_dropped_after_auth_timeout(strict):
    server, _ = strict
    raw = Raw(server.address.path)
    env = raw.next()  # blocks until the server gives up on us (1 s)
    assert env.kind == ERROR and "auth_timeout" in env.payload["message"]
    raw.close()


@pytest.mark.parametrize(
    "garbage, message",
    [
        (b"\x00\x00\x00\x03\xc1\xc1\xc1", "undecodable"),  # 0xc1: never valid msgpack
        (b"\x00\x00\x00\x03\x92\x01\x02", "expected [kind, ref, target, payload]"),
        (b"\xff\xff\xff\xff", "over this server's max_frame"),
    ],
    ids=["undecodable", "wrong-shape", "oversized"],
)
def test_malformed_frames_end_that_connection_only(strict, garbage, message):
    server, _ = strict
    raw = Raw(server.address.path)
    assert raw.hello("t0k").kind == REPLY
    raw.sock.sendall(garbage)
    env = raw.next()
    assert env.kind == ERROR and env.payload["type"] == "ProtocolError"
    assert message in env.payload["message"]
    assert raw.next() is None
    raw.close()
    _still_serves(server)


def test_a_refused_frame_is_read_to_its_end_so_the_client_hears_why(strict):
    """The server drops the body of an oversized frame before closing: the client's
    write completes (no EPIPE mid-send, as closing on unread data would cause) and the
    error frame that says why is there to read."""
    server, _ = strict
    raw = Raw(server.address.path)
    assert raw.hello("t0k").kind == REPLY
    size = 1024 * 1024  # 16 x this server's max_frame, more than the socket buffers hold
    raw.sock.sendall(size.to_bytes(4, "big") + b"\0" * size)
    env = raw.next()
    assert env.kind == ERROR and "over this server's max_frame" in env.payload["message"]
    assert raw.next() is None
    raw.close()
    _still_serves(server)


def test_never_unpickles(strict, tmp_path):
    server, _ = strict
    target = tmp_path / "made-by-unpickling"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(target),))

    raw = Raw(server.address.path)
    assert raw.hello("t0k").kind == REPLY
    raw.sock.sendall(Codec(allow_pickle=True).frame(CALL, 1, "list", {"x": Evil()}))
    env = raw.next()
    assert env.kind == ERROR and "refusing to unpickle" in env.payload["message"]
    assert not target.exists()
    raw.close()


def test_client_stalled_mid_frame_is_dropped(strict):
    server, _ = strict
    raw = Raw(server.address.path)
    assert raw.hello("t0k").kind == REPLY
    raw.sock.sendall(b"\x00\x00\x01\x00\x94")  # 256 bytes announced, 1 sent
    assert raw.next() is None  # after frame_timeout (1 s), not never
    raw.close()
    _still_serves(server)


def test_client_that_does_not_read_is_dropped(strict):
    server, _ = strict
    raw = Raw(server.address.path)
    assert raw.hello("t0k").kind == REPLY
    request = raw.codec.frame(CALL, 1, "metrics", {})
    dropped = False
    try:
        for _ in range(20_000):  # MBs of replies it never reads
            raw.sock.sendall(request)
    except ConnectionError:  # the server hung up on us while we were still writing
        dropped = True
    if not dropped:  # drain what was sent before the hang-up
        try:
            while raw.next() is not None:
                pass
        except ConnectionError:
            pass
    # A socket timeout instead (the server kept the connection open) fails the test.
    raw.close()
    _still_serves(server)


def test_max_clients(strict):
    server, _ = strict
    held = [sandbox.connect(str(server.address), token="t0k") for _ in range(3)]
    try:
        with pytest.raises(ControlError, match="too many clients"):
            sandbox.connect(str(server.address), token="t0k")
    finally:
        for remote in held:
            remote.close()
    _still_serves(server)


def test_requests_on_one_connection_run_concurrently(served, sock_path):
    served.create_sandbox("ctl-c", COUNTER)
    with sandbox.connect(f"unix:{sock_path}") as remote:
        sb = remote.sandbox("ctl-c")
        results: list[int] = []
        threads = [threading.Thread(target=lambda: results.append(sb.call("counter", "incr")))
                   for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == list(range(1, 21))


def test_logs_and_follow(served, sock_path):
    served.create_sandbox("ctl-l", COUNTER)
    with sandbox.connect(f"unix:{sock_path}") as remote:
        records = remote.follow_logs()
        with pytest.raises(SandboxNotFound):
            remote.destroy_sandbox("ctl-nope")  # logged as a failed operation (WARNING)
        record = next(r for r in records if r["sandbox"] == "ctl-nope")
        assert record["logger"] == "runtime.ops" and record["level"] == "WARNING"
        assert set(record) >= {"ts", "message", "sandbox", "runtime", "correlation_id", "exc"}
        records.close()
        assert remote.logs(), "the recent records are kept"


@pytest.mark.parametrize("client_max_frame, wanted", [
    (None, r"argument 'request' of call\(\) is 52428\d\d bytes, over the 4194304 bytes "
           r"one request may carry on this connection \(connect\(max_frame=\)\)"),
    (64 * 1024 * 1024, r"frame of 52429\d\d bytes is over this server's max_frame=4194304"),
], ids=["refused-by-the-client", "refused-by-the-server"])
def test_an_oversized_request_says_whose_limit_it_is_over(served, sock_path, client_max_frame,
                                                          wanted):
    served.create_sandbox("ctl-big", COUNTER)
    options = {} if client_max_frame is None else {"max_frame": client_max_frame}
    with sandbox.connect(f"unix:{sock_path}", **options) as remote:
        with pytest.raises(ProtocolError) as info:  # not a BrokenPipeError
            remote.sandbox("ctl-big").call("counter", "x" * (5 * 1024 * 1024))
    assert re.match(wanted, str(info.value)), str(info.value)
    assert "both sides" not in str(info.value)


def _until_reply(raw: Raw, ref: int) -> list:
    """The frames up to and including the answer to request ``ref``."""
    frames = []
    while not frames or frames[-1].ref != ref or frames[-1].kind not in (REPLY, ERROR):
        frame = raw.next()
        assert frame is not None, "the server closed the connection"
        frames.append(frame)
    return frames


def test_unfollow_stops_the_records_of_a_follow(served, sock_path):
    # A raw client: follow (ref 1), see a record; unfollow; the next record is logged
    # before the request that caused it is answered, and must not come for ref 1.
    raw = Raw(sock_path)
    try:
        assert raw.hello().kind == REPLY
        raw.send(CALL, 1, "logs", {"follow": True, "lines": 0})
        assert _until_reply(raw, 1)[-1].payload == []
        raw.send(CALL, 2, "destroy", {"id": "ctl-gone"})  # logged as a failed operation
        followed = [f for f in _until_reply(raw, 2) if f.kind == SYSTEM and f.ref == 1]
        assert any(f.payload["sandbox"] == "ctl-gone" for f in followed)
        raw.send(CALL, 3, "unfollow", {"ref": 1})
        assert _until_reply(raw, 3)[-1].payload is True
        raw.send(CALL, 4, "destroy", {"id": "ctl-gone"})
        assert [f for f in _until_reply(raw, 4) if f.kind == SYSTEM] == []
        raw.send(CALL, 5, "unfollow", {"ref": 1})  # not following any more
        assert _until_reply(raw, 5)[-1].payload is False
    finally:
        raw.close()


@pytest.mark.parametrize("end", ["close", "drop"])
def test_closing_a_clients_follow_stops_the_server_sending(served, sock_path, end):
    import gc

    from helpers import wait_for

    server = served._control
    with sandbox.connect(f"unix:{sock_path}") as remote:
        records = remote.follow_logs()
        with pytest.raises(SandboxNotFound):
            remote.destroy_sandbox("ctl-gone")
        assert next(r for r in records if r["sandbox"] == "ctl-gone")
        assert any(c.following for c in server._clients)
        if end == "close":
            records.close()
        else:
            del records
            gc.collect()
        wait_for(lambda: not any(c.following for c in server._clients), timeout=30)
        assert remote.health()["status"] == "ok", "the connection serves on"


def test_closing_an_async_follow_stops_the_server_sending(served, sock_path):
    import asyncio

    from helpers import wait_for

    server = served._control

    async def main() -> None:
        async with await sandbox.connect_async(f"unix:{sock_path}") as remote:
            with pytest.raises(SandboxNotFound):
                await remote.destroy_sandbox("ctl-gone")  # a record for the backlog
            async for _ in remote.follow_logs():
                break
            assert any(c.following for c in server._clients)
            # the abandoned generator is closed by the loop (asyncio's asyncgen hooks)
            await asyncio.to_thread(wait_for, lambda: not any(
                c.following for c in server._clients), timeout=30)

    asyncio.run(main())


def test_stop_request_stops_the_runtime(sock_path):
    rt = sandbox.start(listen=f"unix:{sock_path}")
    try:
        with sandbox.connect(f"unix:{sock_path}") as remote:
            remote.create_sandbox("ctl-s", COUNTER)
            remote.stop()
        from helpers import wait_for

        wait_for(lambda: rt.health()["status"] == "down" and not os.path.exists(sock_path),
                 timeout=60)
    finally:
        rt.stop()


def test_past_max_pending_the_server_stops_reading(tmp_path):
    from test_aio import GATE  # an actor whose "block" answers 2 s late

    app = tmp_path / "gate"
    app.mkdir()
    (app / "app.py").write_text(GATE)
    with sandbox.start() as rt:
        rt.create_sandbox("ctl-gate", str(app), profile="low")
        server = ControlServer(rt, f"unix:{tmp_path / 'p.sock'}", limits=Limits(max_pending=2))
        server.start()
        try:
            raw = Raw(server.address.path)
            assert raw.hello().kind == REPLY
            for ref in (1, 2):
                raw.send(CALL, ref, "call", {"id": "ctl-gate", "actor": "gate",
                                             "request": "block", "timeout": 30})
            raw.send(CALL, 3, "health", {})  # not read until a slot frees
            first = raw.next()
            assert first.kind == REPLY and first.ref in (1, 2), first
            assert {raw.next().ref, raw.next().ref} == {1, 2, 3} - {first.ref}
            raw.close()
        finally:
            server.stop()


def test_a_remote_handle_belongs_to_one_sandbox(served, sock_path):
    with sandbox.connect(f"unix:{sock_path}") as remote:
        old = remote.create_sandbox("ctl-same", COUNTER)
        by_id = remote.sandbox("ctl-same")  # bound to the same sandbox
        assert old.call("counter", "incr") == 1
        old.destroy()
        new = remote.create_sandbox("ctl-same", COUNTER)
        for handle in (old, by_id):
            for use in (lambda h: h.call("counter", "get"), lambda h: h.info(),
                        lambda h: h.cast("counter", "incr"), lambda h: h.destroy()):
                with pytest.raises(SandboxNotFound):
                    use(handle)
        assert new.call("counter", "get") == 0


def test_output_tail_over_the_endpoint(served, sock_path):
    from helpers import wait_for

    served.create_sandbox("ctl-out", COUNTER, profile="low").run(print, "hello from inside")
    with sandbox.connect(f"unix:{sock_path}") as remote:
        sb = remote.sandbox("ctl-out")
        lines = wait_for(lambda: sb.output(tail=5), timeout=30)
        assert [(line.stream, line.text) for line in lines] == [("stdout", "hello from inside")]
        assert remote.output("ctl-out", tail=1) == lines[-1:]
