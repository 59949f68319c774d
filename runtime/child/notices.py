"""Supervisor events inside a sandbox, told to the host as SYSTEM notices.

The user's actors run under supervisors inside the sandbox process, whose
telemetry stays in that process. A boot hook (registered by
:mod:`runtime.child.boot`) forwards two of those events to the host, which
reports any SYSTEM notice it does not handle itself as ``process.system``
telemetry (metadata ``op`` and ``payload``):

- ``actor_restart``: ``{"supervisor", "child", "reason_kind", "reason", "traceback"}``
  for each restart of an actor by a supervisor of the app;
- ``actor_escalation``: ``{"supervisor"}`` when one of them gave up.

The host's metrics count them (``sandbox_actor_restarts_total``) and its error
patterns group them (:mod:`sandbox.patterns`).
"""

from __future__ import annotations

from typing import Any

from runtime import telemetry
from runtime.wire.mailbox import SYSTEM

__all__ = ["forward_supervisor_events", "ACTOR_RESTART", "ACTOR_ESCALATION"]

ACTOR_RESTART = "actor_restart"
ACTOR_ESCALATION = "actor_escalation"
#: Caps on what one notice carries: a traceback is for grouping and reading, not archiving.
_REASON_MAX = 1000
_TRACEBACK_MAX = 4000


def forward_supervisor_events(server: Any) -> None:
    """Boot hook: send each ``supervisor.restart`` / ``supervisor.escalation`` of this
    process to the host (``server.send(SYSTEM, None, op, payload)``)."""

    def on_event(event: str, _m: Any, md: Any) -> None:
        if event == "supervisor.restart":
            server.send(SYSTEM, None, ACTOR_RESTART, {
                "supervisor": str(md.get("supervisor") or ""),
                "child": str(md.get("child") or ""),
                "reason_kind": str(md.get("reason_kind") or ""),
                "reason": str(md.get("reason") or "")[:_REASON_MAX],
                "traceback": str(md.get("traceback") or "")[-_TRACEBACK_MAX:],
            })
        elif event == "supervisor.escalation":
            server.send(SYSTEM, None, ACTOR_ESCALATION,
                        {"supervisor": str(md.get("supervisor") or "")})

    telemetry.detach("child:notices")
    telemetry.attach("child:notices", "supervisor", on_event)
