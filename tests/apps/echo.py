"""A plain app: ``echo`` returns what it gets, ``counter`` adds casts, ``marker`` writes
a file from ``terminate`` so the host can see a graceful stop happened."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from runtime.genserver import GenServer
from runtime.supervisor import SupervisorSpec


class Echo(GenServer):
    def init(self) -> None:
        return None

    def handle_call(self, request: Any, state: Any) -> tuple[Any, Any]:
        return request, state


class Counter(GenServer):
    def init(self, start: int = 0) -> int:
        return start

    def handle_call(self, request: Any, state: int) -> tuple[Any, int]:
        if request == "get":
            return state, state
        if request == "pid":
            return os.getpid(), state
        if request == "fail":
            raise ValueError("asked to fail")
        if request == "unencodable":
            return threading.Lock(), state
        if request == "slow":
            threading.Event().wait(0.3)  # a handler that takes its time
            return "slow done", state
        raise ValueError(f"unknown request {request!r}")

    def handle_cast(self, request: int, state: int) -> int:
        return state + request


class Marker(GenServer):
    """Writes ``terminated: <reason>`` to its file when it stops."""

    def init(self, path: str) -> str:
        return path

    def handle_call(self, request: Any, state: str) -> tuple[Any, str]:
        return "ok", state

    def terminate(self, reason: Any, state: str) -> None:
        Path(state).write_text(f"terminated: {reason}")


def children(marker: str | None = None) -> list:
    specs = [Echo.child_spec(name="echo"), Counter.child_spec(name="counter")]
    if marker:
        specs.append(Marker.child_spec(marker, name="marker"))
    return specs


def fragile() -> SupervisorSpec:
    """A root supervisor that gives up at the first crash (escalation)."""
    return SupervisorSpec(children(), max_restarts=0, max_seconds=5)


def broken() -> list:
    raise RuntimeError("this app cannot start")


def env_and_cwd() -> list:
    """Echo plus a server reporting the child's cwd and one environment variable."""

    class Where(GenServer):
        def handle_call(self, request: Any, state: Any) -> tuple[Any, Any]:
            return {"cwd": os.getcwd(), "var": os.environ.get("SANDBOX_TEST_VAR")}, state

    return [Where.child_spec(name="where")]
