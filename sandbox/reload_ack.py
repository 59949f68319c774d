"""A sandbox's acknowledgement of a reload or rollback, checked against what the host shipped.

The host knows what it sent: each module's marshalled code, whose SHA-256 it
computes itself. A sandbox's report of a swap must name exactly those digests
(``installed``: the code of the module objects ``sys.modules`` holds once the
swap's transaction has returned, looked up apart from the transaction's own
report), from the process the host sent the swap to, still running. When no
report came (the host's wait ran out and it only learned the verdict), a probe
(the ``code_digests`` system op, answered from ``sys.modules``) must name them.
Anything else is a protocol error: :class:`ReloadFailed` at step ``verify``,
the sandbox's process restarted so that it boots the code the host has
recorded, and nothing recorded for this swap (versions, store, journal). Once
the host has recorded the swap, :func:`still_serving` checks that the same
process still serves it: one restarted meanwhile booted the code recorded before
and is restarted again.

What this proves, and what not: the sandbox's answers are its own word. A
sandbox whose runtime works as shipped (the common case: a bug, a swap that did
not take, a process that restarted meanwhile and booted older code) cannot pass
the check while serving something else, so the host's records and what runs do
not drift apart. A sandbox whose code has taken over its own process can answer
anything; it gains nothing by it (it could run whatever it likes inside anyway),
and the host's records still only hold what the host compiled and shipped.

>>> shipped_digests([[{"name": "m", "code": b"x"}]])["m"][:12]
'2d711642b726'
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from runtime.actor import ExitReason
from runtime.errors import ReloadFailed, SandboxError

__all__ = ["PROBE_TIMEOUT", "shipped_digests", "still_serving", "verify_swap"]

#: Seconds the host waits for the sandbox to answer the probe after a swap with no report.
PROBE_TIMEOUT = 5.0


def shipped_digests(units: Sequence[Sequence[Mapping[str, Any]]]) -> dict[str, str]:
    """``{module: SHA-256 of the code the host ships}``, computed here from the bytes."""
    return {str(mc["name"]): hashlib.sha256(mc["code"]).hexdigest()
            for unit in units for mc in unit}


def verify_swap(
    proc: Any, sandbox_id: str, shipped: Mapping[str, str], reported: Any
) -> None:
    """Raise ReloadFailed (step ``verify``, process restarted) unless the sandbox's
    ``reported`` digests are exactly ``shipped`` and ``proc``, which sent them, still
    runs; with no report (None: only a verdict came), unless its answer to a probe is.

    >>> verify_swap(None, "sb", {}, {})   # nothing shipped, nothing to check
    """
    if not shipped:
        return
    answer, problem = reported, None
    if reported is not None:
        # The report is the probe: the sandbox looked at sys.modules after the swap
        # returned, in the process the host is still connected to.
        if not _same(reported, shipped):
            problem = "its report of the swap names other code than the host shipped"
        elif not proc.is_alive():
            problem = "its process ended after the swap"
    else:
        try:
            answer = proc.system("code_digests", sorted(shipped), timeout=PROBE_TIMEOUT)
        except SandboxError as exc:
            answer, problem = None, f"it did not answer the probe after the swap ({exc})"
        if problem is None and not _same(answer, shipped):
            problem = "it does not serve the code the host shipped"
    if problem is None:
        return
    wrong = [m for m in sorted(shipped)
             if not isinstance(answer, Mapping) or answer.get(m) != shipped[m]] or sorted(shipped)
    try:
        proc.kill(ExitReason("protocol", f"reload not acknowledged as shipped: {problem}"))
    except SandboxError:
        pass
    raise ReloadFailed(
        f"sandbox {sandbox_id!r}: {problem} (modules {', '.join(wrong[:10])}); "
        "nothing was recorded and its process was restarted with the recorded code",
        module=wrong[0], step="verify",
    )


def still_serving(slot: Any, proc: Any) -> bool:
    """After a swap is recorded (``slot.modules`` names its code): True if ``proc``,
    the process that swapped, still runs as the slot's process. If it ended, the
    process replacing it may have booted the code recorded before the swap: that
    one is restarted (waiting up to :data:`PROBE_TIMEOUT` for it), so that it boots
    the recorded code, and this returns False.
    """
    if proc.is_alive() and slot.current() is proc:
        return True
    try:
        successor = slot.get(PROBE_TIMEOUT)
        if successor is not proc:
            successor.kill(ExitReason("exception", "restarted during a reload: boot the "
                                      "recorded code"))
    except SandboxError:
        pass  # no successor (destroyed, or restarts gave up): nothing runs older code
    return False


def _same(answer: Any, shipped: Mapping[str, str]) -> bool:
    return isinstance(answer, Mapping) and len(answer) == len(shipped) and all(
        answer.get(m) == d for m, d in shipped.items())
