"""App for tests/test_dispatch.py: where and in which order a sandbox runs calls.

- ``where``: ``call("where", x)`` returns the name of the thread that ran it.
- ``gate``: ``call("gate", "block")`` waits until ``opener`` is called with "open"
  (a long handler, ended by another actor's call); ``"fail"`` raises;
  ``"stop"`` stops the actor from inside its handler; ``"answer-early"`` answers
  its caller inside the handler and returns NOREPLY; ``"defer"`` keeps its caller,
  which ``"release"`` answers; ``"continue-reply"`` is answered by its
  ``handle_continue``.
- ``opener``: ``call("opener", "open")`` opens the gate.
- ``log``: casts append, ``call("log", "get")`` returns the list (order per sender).
"""

from __future__ import annotations

import threading
from typing import Any

from runtime import NOREPLY, reply
from runtime.genserver import Continue, GenServer

GATE = threading.Event()


class Where(GenServer):
    def init(self) -> int:
        return 0

    def handle_call(self, request: Any, state: int) -> tuple[Any, int]:
        if request == "count":
            return state, state
        return threading.current_thread().name, state + 1


class Gate(GenServer):
    def init(self) -> None:
        return None

    def handle_call(self, request: Any, state: Any) -> tuple[Any, Any]:
        if request == "block":
            opened = GATE.wait(30)
            GATE.clear()
            return ("opened" if opened else "timed out", threading.current_thread().name), state
        if request == "fail":
            raise RuntimeError("asked to fail")
        if request == "stop":
            self.ref.stop()
            return "stopping", state
        if request == "answer-early":  # answer inside the handler, then NOREPLY
            reply(self.caller, ("early", threading.current_thread().name))
            return NOREPLY, state
        if request == "defer":  # keep the caller; "release" answers it
            return NOREPLY, self.caller
        if request == "continue-reply":  # handle_continue answers, after the handler
            return NOREPLY, Continue(self.caller, "answer")
        if request == "release":
            if state is None:
                return "nothing kept yet", state
            reply(state, "released")
            return "done", None
        return request, state

    def handle_continue(self, arg: Any, state: Any) -> Any:
        if arg == "answer":
            reply(state, ("continued", threading.current_thread().name))
            return None
        return state


class Opener(GenServer):
    def init(self) -> None:
        return None

    def handle_call(self, request: Any, state: Any) -> tuple[Any, Any]:
        GATE.set()
        return threading.current_thread().name, state


class Log(GenServer):
    def init(self) -> list:
        return []

    def handle_cast(self, request: Any, state: list) -> list:
        return [*state, request]

    def handle_call(self, request: Any, state: list) -> tuple[Any, list]:
        return list(state), state


def children() -> list:
    return [
        Where.child_spec(name="where"),
        Gate.child_spec(name="gate"),
        Opener.child_spec(name="opener"),
        Log.child_spec(name="log"),
    ]
