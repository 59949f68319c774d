"""An app that will not stop: its ``hang`` system op blocks the sandbox's reader, so a
SYSTEM ``stop`` is never read. It also runs a grandchild process (``sleep``) in the
sandbox's process group, which the host's SIGKILL of the group must take along."""

from __future__ import annotations

import subprocess
import threading
from typing import Any

from runtime.child.boot import register_system_op
from runtime.genserver import GenServer

_never = threading.Event()
_grandchildren: list[subprocess.Popen] = []


@register_system_op("hang")
def _hang(server: Any, payload: Any) -> None:
    _never.wait()


class Spawner(GenServer):
    def init(self) -> int:
        proc = subprocess.Popen(["sleep", "60"])
        _grandchildren.append(proc)
        return proc.pid

    def handle_call(self, request: Any, state: int) -> tuple[Any, int]:
        return state, state


def children() -> list:
    return [Spawner.child_spec(name="spawner")]
