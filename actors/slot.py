"""The live process behind one sandbox, and the code it runs, across its restarts.

A sandbox's process is restarted by its supervisor with a new reference each time.
Callers hold the slot instead: :meth:`ProcessSlot.get` hands out the current live
process, waiting (up to a deadline) while a restart is under way, so a call made
during a restart waits for the new process instead of failing.

The slot is owned by the sandbox's child spec, below the root supervisor, not by
the manager: a restarted manager finds every slot where it was.

>>> slot = ProcessSlot("demo", runtime_id="rt1")
>>> slot.get(timeout=0.01)
Traceback (most recent call last):
...
runtime.errors.CallTimeout: call to 'sandbox demo' got no reply within 0.01s; the actor may be busy or stuck: raise the timeout or check what it is doing
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from runtime import telemetry
from runtime.actor import Down, ExitReason, monitor
from runtime.errors import ActorDead, CallTimeout
from runtime.host.output import OutputLog

if TYPE_CHECKING:
    from runtime.host.process import ProcessRef

__all__ = ["ProcessSlot"]


class ProcessSlot:
    """Holds the sandbox's current process reference; thread-safe."""

    def __init__(self, sandbox_id: str, *, runtime_id: str) -> None:
        self.sandbox_id = sandbox_id
        self.runtime_id = runtime_id
        self._cond = threading.Condition()
        self._ref: ProcessRef | None = None
        self._closed: ExitReason | None = None
        self.starts = 0
        self.last_exit: ExitReason | None = None
        self.started_at: float | None = None
        #: The code the sandbox runs now, by module name (ModuleCode); a restarted
        #: process boots from it, so a crash after a hot reload keeps the new code.
        self.modules: dict[str, Any] = {}
        #: Held for the whole of a reload or rollback: swaps of one sandbox never overlap.
        self.reload_lock = threading.Lock()
        self.last_reload: dict[str, Any] | None = None
        #: Auto-reload: the watch options (actors.config.WatchOptions) while it is on,
        #: None while off. Kept here, not in the watcher, so a restarted watcher
        #: re-establishes every watch (actors/watcher.py).
        self.watch: Any = None
        #: The sandbox's protection (profile, limits, isolation state, guard policy:
        #: see :mod:`actors.containment`), kept here so it outlives a manager restart.
        self.security: Any = None
        #: ``on_exit(exitcode)`` for each process of this slot that ends (set by
        #: :mod:`actors.containment`: a kernel kill counts as a refusal).
        self.on_exit: Callable[[int | None], None] | None = None
        #: Why this sandbox may not start again (quarantined, or terminated for a
        #: limit); None while it may.
        self.blocked: str | None = None
        #: What the sandbox's processes wrote to stdout/stderr (one log across restarts,
        #: so the tail shows what a crashed process wrote last).
        self.output = OutputLog(f"{runtime_id}/{sandbox_id}")

    @property
    def restarts(self) -> int:
        return max(self.starts - 1, 0)

    def current(self) -> ProcessRef | None:
        ref = self._ref
        return ref if ref is not None and ref.is_alive() else None

    def put(self, ref: ProcessRef) -> ProcessRef:
        """Record a newly started process (called by its child spec's start function)."""
        with self._cond:
            self._ref = ref
            self._closed = None
            self.starts += 1
            self.started_at = time.time()
            self._cond.notify_all()
        monitor(ref, self._on_down)
        telemetry.execute(
            "sandbox.process.up",
            {"pid": ref.pid, "starts": self.starts},
            {"sandbox": self.sandbox_id, "runtime": self.runtime_id},
        )
        return ref

    def _on_down(self, down: Down) -> None:
        gone = None
        with self._cond:
            if self._ref is not None and self._ref.id == down.actor_id:
                gone, self._ref = self._ref, None
            self.last_exit = down.reason
        hook = self.on_exit
        if gone is not None and hook is not None:
            hook(gone.exitcode)  # the host's reading of the exit status, not the sandbox's word
        telemetry.execute(
            "sandbox.process.down",
            {"count": 1},
            {
                "sandbox": self.sandbox_id,
                "runtime": self.runtime_id,
                "reason": str(down.reason),
                "kind": down.reason.kind,
            },
        )

    def close(self, reason: ExitReason) -> None:
        """No process will come back (destroyed, or restarts gave up): wake every waiter."""
        with self._cond:
            self._closed = reason
            self._cond.notify_all()

    @property
    def deadline(self) -> float | None:
        """The handler deadline of a call (``limits.call_seconds``), or None."""
        prot = self.security
        return None if prot is None else prot.limits.call_seconds

    def get(self, timeout: float | None) -> ProcessRef:
        """The live process, waiting up to ``timeout`` for one during a restart."""
        ref = self._ref  # every call passes here: no lock while the process is up
        if ref is not None and ref.is_alive():
            return ref
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                ref = self._ref
                if ref is not None and ref.is_alive():
                    return ref
                if self._closed is not None:
                    raise ActorDead(f"sandbox {self.sandbox_id}", self._closed)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise CallTimeout(f"sandbox {self.sandbox_id}", timeout)
                self._cond.wait(remaining)

    def info(self) -> dict[str, Any]:
        ref = self.current()
        return {
            "pid": ref.pid if ref is not None else None,
            "restarts": self.restarts,
            "started_at": self.started_at,
            "last_exit": str(self.last_exit) if self.last_exit else None,
        }
