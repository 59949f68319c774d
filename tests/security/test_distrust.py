"""The host believes nothing a sandbox says about itself: judged from the host.

Each attack speaks the wire protocol from inside a sandbox (its own channel), the
way hostile code that got hold of it would.
"""

from __future__ import annotations

import threading

import pytest
from conftest import attempt

from runtime import telemetry
from runtime.errors import ActorDead, ActorFailed, CallTimeout
from runtime.host import untrusted
from sandbox.testing import wait_for

pytestmark = pytest.mark.timeout(90)


def _half_frame_then_stall() -> None:
    import threading

    from runtime.child.boot import current_channel

    # a length prefix announcing 4096 bytes, and 3 of them
    current_channel().send_raw(b"\x00\x00\x10\x00abc")
    threading.Event().wait(60)


def test_a_half_frame_and_a_stall_never_hold_a_caller_past_its_timeout(world):
    sb = world.sandbox(profile="low")
    sibling = world.sandbox(profile="low")
    results: list = []
    stalled = threading.Thread(
        target=lambda: results.append(attempt(sb, _half_frame_then_stall, timeout=3)))
    stalled.start()
    stalled.join(30)
    assert not stalled.is_alive(), "a host thread is stuck on the stalled frame"
    assert isinstance(results[0], CallTimeout), results
    # the next caller leads the read itself: its timeout holds too
    with pytest.raises(CallTimeout):
        sb.call("counter", "incr", timeout=1)
    assert sibling.call("counter", "incr") == 1


def _raise_hostile(size: int) -> None:
    raise RuntimeError("\x1b]0;owned\x07\x1b[2J forged\nINFO runtime: all good " + "A" * size)


def test_exception_texts_are_neutralised_and_capped(world):
    sb = world.sandbox(profile="low")
    got = attempt(sb, _raise_hostile, 1_000_000, timeout=20)
    assert isinstance(got, ActorFailed), got
    for text in (str(got), got.error, got.remote_traceback):
        assert "\x1b" not in text and "\x07" not in text
    assert "\\x1b]0;owned\\x07" in got.error
    assert "\n" not in got.error, "a message is one line: a newline could forge a log line"
    assert len(got.error) <= untrusted.MESSAGE_MAX + 100
    assert len(got.remote_traceback) <= untrusted.TRACEBACK_MAX


def _forge_exit(size: int) -> None:
    import os

    from runtime.child.boot import SYSTEM, current_server

    current_server().send(SYSTEM, None, "exiting",
                          {"code": 0, "reason": "\x1b[31mclean exit\x1b[0m\r" + "B" * size})
    os._exit(71)


def test_an_exit_reason_is_the_hosts_reading_with_the_sandboxs_note_neutralised(world):
    sb = world.sandbox(profile="low")
    pid = sb.pid
    attempt(sb, _forge_exit, 100_000)
    wait_for(lambda: sb.info()["pid"] not in (None, pid) and sb.info()["last_error"], 20)
    last = sb.info()["last_error"]["message"]
    assert "exited with code 71" in last, last  # the host's reading, not the note's
    assert "\x1b" not in last and "\r" not in last
    assert len(last) <= untrusted.MESSAGE_MAX + 200


def _container_bomb(n: int) -> None:
    import threading

    import msgpack

    from runtime.child.boot import current_channel

    body = msgpack.packb(["reply", 1, None, [[[] for _ in range(n)] for _ in range(4)]])
    current_channel().send_raw(len(body).to_bytes(4, "big") + body)
    threading.Event().wait(30)


def test_a_frame_of_a_million_empty_arrays_is_a_protocol_error_not_host_memory(world):
    errors: list[dict] = []
    telemetry.attach("test-bomb", "process.protocol_error", lambda e, m, md: errors.append(md))
    try:
        sb = world.sandbox(profile="low")
        sibling = world.sandbox(profile="low")
        pid = sb.pid
        got = attempt(sb, _container_bomb, 1_000_000, timeout=20)
        assert isinstance(got, ActorDead), got
        wait_for(lambda: errors, 10)
        assert "max_items" in errors[0]["error"], errors
        wait_for(lambda: sb.info()["pid"] not in (None, pid), 20)  # restarted
        assert sb.call("counter", "incr") == 1
        assert sibling.call("counter", "incr") == 1
    finally:
        telemetry.detach("test-bomb")


LIAR = {
    "app.py": """
        import runtime.child.boot as boot
        from runtime.genserver import GenServer


        class Counter(GenServer):
            def init(self, args=None):
                return 0

            def handle_call(self, request, state):
                return state + 1, state + 1


        def children():
            # claim layers this process does not have, in its ready frame
            boot._layers.extend(["pidns", "utsns", "slirp4netns"])
            return [Counter.child_spec(name="counter")]
    """,
}


def test_the_isolation_layers_shown_are_the_hosts_reading_not_the_sandboxs_claim(world):
    sb = world.sandbox(profile="low", app=LIAR)
    assert sb.call("counter", "incr") == 1
    proc = world.rt._slot(sb.id).current()
    # Every profile has its network, IPC and mount namespaces and seccomp now: the
    # lie is about layers no sandbox without net_allow has.
    claimed = {"pidns", "utsns", "slirp4netns"}
    assert claimed <= set(proc.isolation_claimed), proc.isolation_claimed
    shown = set(sb.info()["isolation"])
    assert not claimed & shown, shown
    assert "audit-hook" in shown  # requested by the host, confirmed by the child


def _flood_frames(n: int) -> None:
    import threading

    from runtime.child.boot import REPLY, current_server

    server = current_server()
    frame = server.write_codec.frame(REPLY, 10**12, None, None)  # a ref nobody holds
    batch = frame * 1000
    for _ in range(n // 1000):
        server.channel.send_raw(batch)
    threading.Event().wait(30)


def test_a_flood_of_frames_nobody_asked_for_ends_the_sandbox_not_the_host(world):
    errors: list[dict] = []
    telemetry.attach("test-flood", "process.protocol_error", lambda e, m, md: errors.append(md))
    try:
        sb = world.sandbox(profile="low")
        sibling = world.sandbox(profile="low")
        got = attempt(sb, _flood_frames, 300_000, timeout=30)
        assert isinstance(got, ActorDead), got
        wait_for(lambda: errors, 10)
        assert "flooding its host" in errors[0]["error"], errors
        assert sibling.call("counter", "incr") == 1
    finally:
        telemetry.detach("test-flood")
