"""The socket channel, over a real socketpair: whole frames, clean and unclean ends."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from runtime.errors import ProtocolError, SandboxError
from runtime.wire.channel import Channel, ChannelClosed, recv_exact
from runtime.wire.mailbox import CALL, CAST, REPLY, Codec, Envelope

pytestmark = pytest.mark.timeout(30)

JOIN = 20  # seconds: generous, only reached if something hangs


@pytest.fixture
def pair() -> Iterator[tuple[Channel, Channel]]:
    a, b = socket.socketpair()
    left, right = Channel(a, Codec()), Channel(b, Codec())
    try:
        yield left, right
    finally:
        left.close()
        right.close()


def recv_n(channel: Channel, n: int) -> list[Envelope]:
    got: list[Envelope] = []
    while len(got) < n:
        got += channel.recv()
    return got


def test_round_trip(pair: tuple[Channel, Channel]) -> None:
    left, right = pair
    left.send(CALL, 17, "counter", ("incr", 1))
    assert right.recv() == [Envelope(CALL, 17, "counter", ("incr", 1))]
    right.send(REPLY, 17, None, {"value": (1,)})
    assert left.recv() == [(REPLY, 17, None, {"value": (1,)})]


def test_batched_send_raw(pair: tuple[Channel, Channel]) -> None:
    left, right = pair
    envs = [(CAST, None, f"t{i}", i) for i in range(50)]
    left.send_raw(left.codec.frames(envs))
    assert recv_n(right, 50) == envs


def test_frame_bigger_than_read_size() -> None:
    a, b = socket.socketpair()
    with Channel(a, Codec()) as left, Channel(b, Codec(), read_size=1024) as right:
        payload = bytes(range(256)) * 2000
        done = threading.Event()
        # The frame is larger than the socket buffer: write from a thread.
        writer = threading.Thread(target=lambda: (left.send(REPLY, 1, None, payload), done.set()))
        writer.start()
        assert right.recv() == [(REPLY, 1, None, payload)]
        writer.join(JOIN)
        assert done.is_set()


def test_concurrent_senders_do_not_interleave(pair: tuple[Channel, Channel]) -> None:
    left, right = pair
    senders, per_sender = 8, 200
    errors: list[BaseException] = []

    def payload(tid: int, seq: int) -> bytes:
        # Sizes up to ~24 KiB so that frames outgrow the socket buffer and
        # sendall writes them in pieces: where interleaving would show.
        return bytes([tid]) * ((seq * 7919 + tid * 131) % 24000)

    def send_all(tid: int) -> None:
        try:
            for seq in range(per_sender):
                left.send(CAST, seq, f"sender{tid}", (tid, seq, payload(tid, seq)))
        except BaseException as exc:  # reported to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=send_all, args=(tid,)) for tid in range(senders)]
    for t in threads:
        t.start()
    got = recv_n(right, senders * per_sender)
    for t in threads:
        t.join(JOIN)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert len(got) == senders * per_sender
    next_seq = [0] * senders
    for env in got:
        tid, seq, data = env.payload
        assert env.kind == CAST and env.ref == seq and env.target == f"sender{tid}"
        assert seq == next_seq[tid], "frames of one sender arrive in the order sent"
        assert data == payload(tid, seq)
        next_seq[tid] += 1
    assert next_seq == [per_sender] * senders


def test_close_from_another_thread_wakes_a_blocked_recv(pair: tuple[Channel, Channel]) -> None:
    left, right = pair
    about_to_block = threading.Event()
    outcome: list[BaseException] = []

    def reader() -> None:
        about_to_block.set()
        try:
            right.recv()
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    assert about_to_block.wait(JOIN)
    right.close()
    thread.join(JOIN)
    assert not thread.is_alive()
    [exc] = outcome
    assert isinstance(exc, ChannelClosed)
    assert exc.local
    assert right.closed and right.fileno() == -1
    with pytest.raises(ChannelClosed) as info:  # and the peer sees a clean end
        left.recv()
    assert not info.value.local


def test_close_wakes_a_sender_blocked_on_a_full_socket(pair: tuple[Channel, Channel]) -> None:
    left, _right = pair  # nobody reads on the right: the 4 MiB write blocks
    about_to_block = threading.Event()
    outcome: list[BaseException] = []

    def writer() -> None:
        about_to_block.set()
        try:
            left.send(CAST, None, "t", b"x" * (4 * 1024 * 1024))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    assert about_to_block.wait(JOIN)
    left.close()
    thread.join(JOIN)
    assert not thread.is_alive()
    [exc] = outcome
    assert isinstance(exc, ChannelClosed) and exc.local


def test_clean_eof_is_channel_closed(pair: tuple[Channel, Channel]) -> None:
    left, right = pair
    left.send(CAST, None, "t", "last words")
    left.close()
    assert right.recv() == [(CAST, None, "t", "last words")]
    for _ in range(2):  # and stays closed
        with pytest.raises(ChannelClosed, match="peer closed the channel") as info:
            right.recv()
        assert not info.value.local
        assert isinstance(info.value, SandboxError) and isinstance(info.value, EOFError)


@pytest.mark.parametrize("cut", [2, 4, -3], ids=["in_prefix", "after_prefix", "in_body"])
def test_eof_mid_frame_is_a_protocol_error(pair: tuple[Channel, Channel], cut: int) -> None:
    left, right = pair
    data = left.codec.frame(CALL, 1, "t", "payload")
    left.send_raw(data[:cut])
    left.close()
    with pytest.raises(ProtocolError, match="mid-frame: frame 1 has"):
        right.recv()
    assert right.closed


def test_garbage_is_a_protocol_error_and_closes_the_channel(
    pair: tuple[Channel, Channel],
) -> None:
    left, right = pair
    body = b"\xc1\xc1"
    left.send_raw(struct.pack(">I", len(body)) + body)
    with pytest.raises(ProtocolError, match="frame 1: undecodable body"):
        right.recv()
    assert right.closed
    with pytest.raises(ProtocolError):  # the error sticks
        right.recv()
    with pytest.raises(ChannelClosed):  # and the peer is cut off
        left.recv()


def test_oversized_prefix_is_refused(pair: tuple[Channel, Channel]) -> None:
    left, right = pair
    left.send_raw(struct.pack(">I", right.codec.max_frame + 1))
    with pytest.raises(ProtocolError, match="over max_frame"):
        right.recv()


def test_good_frames_before_garbage_are_delivered(pair: tuple[Channel, Channel]) -> None:
    left, right = pair
    good = left.codec.frames([(CAST, None, "a", 1), (CAST, None, "b", 2)])
    left.send_raw(good + struct.pack(">I", 1) + b"\xc1")
    got: list[Envelope] = []
    with pytest.raises(ProtocolError, match="frame 3"):
        while True:
            got += right.recv()
    assert got == [(CAST, None, "a", 1), (CAST, None, "b", 2)]


def test_oversized_send_is_refused_and_writes_nothing() -> None:
    a, b = socket.socketpair()
    with Channel(a, Codec(max_frame=1024)) as left, Channel(b, Codec()) as right:
        with pytest.raises(ProtocolError, match="max_frame"):
            left.send(CAST, None, "t", b"x" * 2000)
        with pytest.raises(TypeError, match="allow_pickle"):
            left.send(CAST, None, "t", object())
        left.send(CAST, None, "t", "fine")
        assert right.recv() == [(CAST, None, "t", "fine")]


def test_send_after_close(pair: tuple[Channel, Channel]) -> None:
    left, _right = pair
    left.close()
    left.close()  # idempotent
    with pytest.raises(ChannelClosed) as info:
        left.send(CAST, None, "t", 1)
    assert info.value.local
    with pytest.raises(ChannelClosed):
        left.recv()


def test_send_to_a_closed_peer(pair: tuple[Channel, Channel]) -> None:
    left, right = pair
    right.close()
    with pytest.raises(ChannelClosed, match="peer is gone") as info:
        left.send(CAST, None, "t", 1)
    assert not info.value.local
    assert left.closed


def test_fileno_and_repr(pair: tuple[Channel, Channel]) -> None:
    left, _right = pair
    assert left.fileno() >= 0
    assert "fd=" in repr(left)
    left.close()
    assert left.fileno() == -1
    assert "closed" in repr(left)


def test_pickle_only_where_allowed() -> None:
    a, b = socket.socketpair()
    with Channel(a, Codec(allow_pickle=True)) as left, Channel(b, Codec()) as right:
        left.send(CALL, 1, "t", lambda: 1)
        with pytest.raises(ProtocolError, match="refusing to unpickle"):
            right.recv()


def test_recv_some_returns_nothing_when_the_sockets_receive_timeout_runs_out(
    pair: tuple[Channel, Channel],
) -> None:
    # The host's leading caller blocks in the read itself, bounded by SO_RCVTIMEO
    # (runtime/host/process.py): an expired read is "nothing yet", not a broken channel.
    left, right = pair
    right._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 20_000))
    assert right.recv_some() == []
    assert not right.closed
    left.send(CAST, None, "x", 1)
    assert [e.payload for e in right.recv_some()] == [1]


def test_recv_held_reads_under_the_callers_lock_and_stops_on_a_protocol_error(
    pair: tuple[Channel, Channel],
) -> None:
    """The relay's read: the caller holds recv_lock; a bad frame stops the channel
    (closed, the peer cut off) without the lock, and close() then releases it."""
    left, right = pair
    left.send(CAST, None, "a", 1)
    with right.recv_lock:
        assert [e.payload for e in right.recv_held()] == [1]
        body = b"\xc1\xc1"
        left.send_raw(struct.pack(">I", len(body)) + body)
        with pytest.raises(ProtocolError, match="undecodable body"):
            right.recv_held()  # would deadlock if it closed the socket under the lock
        assert right.closed
    with pytest.raises(ChannelClosed):  # the peer is cut off
        left.recv()
    assert right.fileno() != -1  # the socket waits for close()
    right.close()
    assert right.fileno() == -1
    right.close()  # idempotent


def test_recv_exact_reads_across_sends_and_leaves_what_follows():
    a, b = socket.socketpair()
    try:
        a.sendall(b"ab")
        t = threading.Thread(target=lambda: a.sendall(b"cdEF"))
        t.start()
        assert recv_exact(b, 5, b"x") == b"xabcd"  # head counts toward n
        t.join()
        assert b.recv(16) == b"EF"  # not read: the next reader's
        a.sendall(b"12")
        a.close()
        assert recv_exact(b, 4) is None  # the peer closed before n bytes
    finally:
        a.close()
        b.close()
