"""The benchmark app: an echo server and a cast counter.

Entry: ``echo:children`` with ``app_path`` this directory.

- ``echo``: ``call("echo", x)`` returns ``x``.
- ``counter``: every cast adds one; ``call("counter", "count")`` returns the count.
"""

from __future__ import annotations

from typing import Any

from runtime.genserver import GenServer


class EchoServer(GenServer):
    vsn = 1

    def init(self) -> None:
        return None

    def handle_call(self, request: Any, state: Any) -> tuple[Any, Any]:
        return request, state


class Counter(GenServer):
    vsn = 1

    def init(self) -> int:
        return 0

    def handle_cast(self, request: Any, state: int) -> int:
        return state + 1

    def handle_call(self, request: Any, state: int) -> tuple[Any, int]:
        if request == "count":
            return state, state
        raise ValueError(f"unknown request {request!r}")


def children() -> list:
    return [EchoServer.child_spec(name="echo"), Counter.child_spec(name="counter")]
