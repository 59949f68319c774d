"""An app that dies, or breaks the mailbox protocol, on request.

``call("crasher", action)`` with action one of :data:`ACTIONS`; ``echo`` keeps working
until then.
"""

from __future__ import annotations

import ctypes
import os
import signal
from typing import Any

from runtime.child.boot import current_channel
from runtime.genserver import GenServer
from runtime.wire.mailbox import REPLY, Codec

from .echo import Echo


def _exit3() -> None:
    os._exit(3)


def _sigkill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _segfault() -> None:
    ctypes.string_at(0)


def _raw(data: bytes) -> None:
    channel = current_channel()
    assert channel is not None
    channel.send_raw(data)


def _garbage() -> None:
    _raw(b"\x00\x00\x00\x04\xc1\xc1\xc1\xc1")  # 0xc1 is never valid msgpack


def _truncated() -> None:
    _raw(b"\x00\x00\x00\x40" + b"\x94" + b"x" * 10)  # 64 bytes announced, 11 sent
    os._exit(0)  # the stream ends mid-frame


def _oversized() -> None:
    _raw(b"\xff\xff\xff\xff")  # a 4 GiB frame


def _pickle() -> None:
    class Opaque:
        pass

    _raw(Codec(allow_pickle=True).frame(REPLY, None, None, Opaque()))


ACTIONS = {
    "exit3": _exit3,
    "sigkill": _sigkill,
    "segfault": _segfault,
    "garbage": _garbage,
    "truncated": _truncated,
    "oversized": _oversized,
    "pickle": _pickle,
}


class Crasher(GenServer):
    def init(self) -> None:
        return None

    def handle_call(self, action: str, state: Any) -> tuple[Any, Any]:
        if action == "pid":
            return os.getpid(), state
        ACTIONS[action]()
        return "survived", state


def children() -> list:
    return [Crasher.child_spec(name="crasher"), Echo.child_spec(name="echo")]
