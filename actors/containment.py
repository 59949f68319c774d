"""What the manager does for security and resources, kept out of the manager itself.

The manager calls these at a few points of a sandbox's life; each is a function of
the manager (its records and its ``component`` lookup) and one sandbox record:

- :func:`fork_ahead` (create, first): the sandbox's child asked of the fork
  server before containment, with the namespaces its plan will ask for; it runs
  nothing until its plan reaches it, which :func:`isolate_ahead` sends as soon as
  containment is done (its OS layers overlap the compile; the app follows at its
  start).
- :func:`prepare` (create, before compiling): registers the sandbox with the
  security controller, which resolves its profile (custom profiles included),
  refuses to go on (:class:`~runtime.child.isolation.IsolationUnavailable`,
  naming what to install) when this host lacks an OS layer every sandbox needs,
  works out its effective limits (the profile's, overridden by the sandbox's
  own), gives it its UID and cgroups (:func:`runtime.child.isolation.prepare`),
  registers it with the resource monitor, and counts towards its
  quarantine both its guard's reports and, from the host's own reading of each
  exit status, every process of it killed by the seccomp filter (``SIGSYS``). Everything is kept on the
  sandbox's :class:`~actors.slot.ProcessSlot` (``slot.security``), which
  outlives a restart of the manager.
- :func:`compile_profile` / :func:`check_compiled`: the profile handed to the
  compiler (a custom profile travels as the object), and
  :class:`~runtime.errors.SecurityViolation` when the scan found errors.
- :func:`process_options`: what ``start_process`` gets for each start of the
  sandbox's process: the isolation plan (:func:`start_plan`), the guard policy, the environment
  (HOME and TMPDIR in the workdir), whether pickling is allowed, and the
  violation callback bound to this sandbox's id (the channel's identity, never
  the message's). Refuses to start a sandbox that was quarantined or terminated.
- :func:`terminate`: kill the sandbox's process now and tell the manager to
  stop it for good (:class:`Terminate`, handled by :func:`handle_info`).
- :func:`forget` (destroy, or a failed create): kill whatever is left in the
  sandbox's cgroups or runs under its UID, remove the cgroups (:func:`release`),
  unregister (:func:`unregister`). A destroy kills what runs under the UID
  outside the cgroups while the process stops (:func:`joined_cgroups`,
  :func:`kill_strays`).
- :func:`info_extra`: ``isolation``, ``quarantined``, ``usage`` and the
  effective limits, for ``get_sandbox_info``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from actors.config import Limits
from actors.profiles import BUILTIN_PROFILES, Profile, split_addr as _split_addr
from actors.scan import WARN_HINT
from actors.security import LogEvent, ObservedRefusal, ViolationReport
from runtime import telemetry
from runtime.actor import ExitReason
from runtime.child import isolation, uidscan
from runtime.child import userns as _userns
from runtime.host.forkserver import ForkServerError
from runtime.host.process import ChildAhead
from runtime.child.seccomp import KILL_SIGNAL
from runtime.errors import SandboxError, SecurityViolation

__all__ = [
    "Protection",
    "Terminate",
    "check_compiled",
    "compile_profile",
    "effective_limits",
    "forget",
    "fork_ahead",
    "handle_info",
    "info_extra",
    "isolate_ahead",
    "joined_cgroups",
    "kill_strays",
    "prepare",
    "process_options",
    "release",
    "start_plan",
    "terminate",
    "unregister",
]

log = logging.getLogger("runtime.containment")
_MIB = 1 << 20
_logged_reasons: set[tuple[str, str]] = set()
#: How long get_sandbox_info waits for the monitor's figures.
USAGE_TIMEOUT = 1.0


@dataclass
class Protection:
    """A sandbox's security and resource settings (kept on its slot)."""

    profile: Profile
    limits: Limits
    state: dict[str, Any] = field(default_factory=dict)
    report: Callable[[Any], None] | None = None


@dataclass(frozen=True)
class Terminate:
    """Told to the manager: stop the sandbox for good (no restart) and say why."""

    sandbox_id: str
    reason: str
    kind: str = "terminated"  # or "quarantined", "limit"


def effective_limits(profile_limits: Limits, own: Limits) -> Limits:
    """The profile's limits, each replaced by the sandbox's own where it set one.

    >>> effective_limits(Limits(memory_mb=512, open_files=64), Limits(memory_mb=128)).as_dict()["memory_mb"]
    128
    """
    changes: dict[str, Any] = {
        k: v for k, v in own.as_dict().items() if v is not None and k != "action"
    }
    if own.action != Limits().action:
        changes["action"] = own.action
    return replace(profile_limits, **changes)


def _log_skips(skipped: dict[str, str]) -> None:
    for layer, why in skipped.items():
        if (layer, why) not in _logged_reasons:
            _logged_reasons.add((layer, why))
            log.info("isolation layer %s skipped: %s", layer, why)


def fork_ahead(config: Any, slot: Any) -> ChildAhead | None:
    """The sandbox's child, asked of the fork server now so its fork overlaps
    containment and the compile (from the request to the child's first step took
    ~2 ms of a lone create; measured net, 0.6-1.2 ms less per create: the fork
    competes with containment for the CPUs); None if the server cannot be reached
    (the start then forks, and fails, the usual way). Forked into a user namespace when the host needs one
    (a plan that cannot have it fails containment) and given a network namespace of
    the server's pool unless the sandbox has an egress allowlist (a custom
    profile's allowlist is known only later: its child then does not enter it)."""
    userns = _userns.needed()
    try:
        return ChildAhead(slot.output, userns=userns, netns=not (userns or config.net_allow))
    except ForkServerError:
        return None


def prepare(manager: Any, record: Any, *, overlap: bool = True) -> Protection:
    """Resolve the profile and limits, set up UID and cgroups, register the sandbox.

    With ``overlap`` (a lone create) the sandbox is registered with the security
    controller, which answers with its profile, while the UID and cgroups are made
    (one round trip for both: a failed create unregisters it, as it unregisters the
    rest). Without (a create of a batch: the CPUs are busy with the others, and the
    hand-off is pure overhead) it is registered after them, on this thread when the
    controller is idle. Then the resource monitor is told.
    """
    component = manager._component
    config = record.config
    sid = config.id
    security = component("security")
    asked = security.send("register_sandbox", sid, config.profile) if overlap else None
    # cgroups are grouped per runtime instance: the base dir is unique, the name is not
    state = isolation.prepare(record.workdir, sid, group=os.path.basename(manager.base_dir))
    try:
        profile = (asked.result() if asked is not None
                   else security.invoke_here("register_sandbox", sid, config.profile))
        limits = effective_limits(profile.limits, config.limits)
        # Every profile needs the OS layers: no sandbox runs on the host's network or
        # filesystem because a layer happens to be missing here.
        missing = isolation.missing_required(egress=bool(profile.net_allow or config.net_allow))
        if missing:
            raise isolation.IsolationUnavailable(missing)
    except BaseException:
        isolation.release(state)  # nothing it owns yet knows of these cgroups
        raise
    isolation.set_cgroup_limits(
        state,
        tasks=isolation.DEFAULT_TASKS,
        memory=None if limits.memory_mb is None else limits.memory_mb * _MIB,
    )
    _log_skips(state.get("skipped") or {})
    slot = record.slot
    prot = Protection(profile=profile, limits=limits, state=state)
    prot.report, slot.on_exit = _reporter(component, sid, slot)
    slot.security = prot
    try:
        warn_at = config.alerts.warn_at if config.alerts is not None else None
        # On this thread when the monitor is idle (its own short bookkeeping, which
        # this thread only waits for): no hand-off to its thread and back.
        component("monitor").invoke_here("register", sid, slot, warn_at)
    except SandboxError:
        log.warning("resource monitor not running: sandbox %s is not sampled", sid)
    return prot


def _reporter(
    component: Callable[[str], Any], sid: str, slot: Any
) -> tuple[Callable[[Any], None], Callable[[int | None], None]]:
    """The sandbox's two sources of refusals: its guard's reports (its word) and
    the host's reading of its exit status (a seccomp kill: no sandbox can hide it)."""

    def then(response: str) -> None:
        if response == "terminate":
            terminate(
                component,
                slot,
                "quarantined after repeated security violations",
                kind="quarantined",
            )

    def report(event: Any) -> None:  # the channel's reader thread: never block
        try:
            component("security").tell(ViolationReport(sid, event, then))
        except SandboxError:
            pass

    def exited(code: int | None) -> None:
        if code != -KILL_SIGNAL:
            return
        detail = (f"process killed by {KILL_SIGNAL.name}: it made a system call its "
                  "profile denies (seccomp); seen by the host in its exit status")
        try:
            component("security").tell(ObservedRefusal(sid, "seccomp.kill", detail, then))
        except SandboxError:
            pass

    return report, exited


def compile_profile(record: Any) -> Any:
    """What the compiler scans with: a built-in's name, or the custom profile itself."""
    prot = getattr(record.slot, "security", None)
    if prot is None or prot.profile.name in BUILTIN_PROFILES:
        return record.config.profile
    return prot.profile


def audit_warned(security: Any, sandbox_id: str, result: Any) -> None:
    """Write one ``scan.warned`` audit record for the scan findings a compile reported
    only because the profile marks their group ``warn`` (they do not block)."""
    prefix = WARN_HINT.split("{", 1)[0]
    warned = [d for d in result.warnings if (getattr(d, "hint", None) or "").startswith(prefix)]
    if warned:
        security.tell(LogEvent(sandbox_id, "scan.warned",
                               "; ".join(str(d) for d in warned[:5]), "warned"))


def check_compiled(manager: Any, record: Any, result: Any) -> None:
    """Raise SecurityViolation (and write the audit log) if the scan refused a module;
    audit the findings of ``warn`` groups."""
    try:
        audit_warned(manager._component("security"), record.config.id, result)
    except SandboxError:
        pass
    findings = [d for d in result.errors if str(getattr(d, "code", "")).startswith("SBX")]
    if not findings:
        return
    shown = "\n  ".join(d.format() if hasattr(d, "format") else str(d) for d in findings[:10])
    more = f"\n  ... and {len(findings) - 10} more" if len(findings) > 10 else ""
    try:
        manager._component("security").tell(
            LogEvent(
                record.config.id,
                "scan.blocked",
                "; ".join(str(d) for d in findings[:5]),
                "blocked",
            )
        )
    except SandboxError:
        pass
    telemetry.execute(
        "security.scan.blocked",
        {"errors": len(findings)},
        {"sandbox": record.config.id, "runtime": manager.runtime_id, "profile": record.config.profile},
    )
    raise SecurityViolation(
        f"sandbox {record.config.id!r}: the security scan refused its code under profile "
        f"{record.config.profile!r}:\n  {shown}{more}",
        findings,
    )


def _net_allow(profile: Profile, config: Any) -> list[str]:
    return list(dict.fromkeys([*profile.net_allow, *config.net_allow]))


def start_plan(record: Any) -> dict[str, Any] | None:
    """The isolation plan of the sandbox's next start, once whatever its previous
    process left is killed (a restart starts clean); None for a sandbox without
    protection (made before protection existed: a manager rebuild)."""
    prot: Protection | None = record.slot.security
    if prot is None:
        return None
    isolation.kill_leftovers(prot.state)
    profile, config = prot.profile, record.config
    plan = isolation.plan(
        allow=profile.allow,
        # cpu_seconds is per call, held by the monitor: RLIMIT_CPU would count the
        # process's whole life and stop a long-lived sandbox for no call's fault.
        limits={**prot.limits.as_dict(), "cpu_seconds": None},
        state=prot.state,
        net_allow=[_split_addr(a) for a in _net_allow(profile, config)],
        env_allow=profile.env_allow,
        read_only=[config.path],
    )
    _log_skips(plan.get("skipped") or {})
    return plan


def isolate_ahead(record: Any, ahead: ChildAhead | None) -> dict[str, Any] | None:
    """Hand the child forked ahead the plan of its first start as soon as
    containment is done (:meth:`~runtime.host.process.ChildAhead.isolate`): it
    applies its OS layers while the host judges the compile, records the first
    versions and makes the start's options (on a lone create the layers took
    1.7-1.9 ms of the child's, those host steps ~0.9 ms; the app was ready ~0.5-1 ms
    sooner). Returns the plan, for :func:`process_options` (the start sends the
    rest of the configuration only if its plan is this one)."""
    plan = start_plan(record)
    if ahead is not None and plan is not None:
        try:
            ahead.isolate(plan)
        except ForkServerError:
            pass  # given up: the start forks another, and fails the usual way
    return plan


def process_options(record: Any, runtime_id: str,
                    plan: dict[str, Any] | None = None) -> dict[str, Any]:
    """``start_process`` options for one start of the sandbox's process; ``plan``:
    its isolation plan if :func:`start_plan` made it for this start already."""
    config = record.config
    slot = record.slot
    if slot.blocked:
        raise SandboxError(f"sandbox {config.id!r} may not start again: {slot.blocked}")
    prot: Protection | None = slot.security
    workdir = record.workdir
    env = {**config.env, "HOME": workdir, "TMPDIR": os.path.join(workdir, "tmp")}
    if prot is None:  # a sandbox made before protection existed (manager rebuild)
        return {"allow_pickle": config.profile != "high", "env": env}
    if plan is None:
        plan = start_plan(record)
    profile = prot.profile
    policy = profile.guard_policy(workdir, config.path)
    policy["net_allow"] = [list(_split_addr(a)) for a in _net_allow(profile, config)]
    policy["app_modules"] = sorted(slot.modules)
    return {
        "allow_pickle": profile.allow_run,
        "env": env,
        "isolation": plan,
        "guard": policy,
        "on_violation": prot.report,
    }


def terminate(
    component: Callable[[str], Any], slot: Any, reason: str, *, kind: str = "terminated"
) -> None:
    """Stop a sandbox for good: no restart, its process killed now, the manager told."""
    slot.blocked = f"{kind}: {reason}"
    proc = slot.current()
    if proc is not None:
        try:
            proc.kill(ExitReason.killed(reason))
        except SandboxError:
            pass
    try:
        component("manager").tell(Terminate(slot.sandbox_id, reason, kind))
    except SandboxError:
        pass


def handle_info(manager: Any, message: Any) -> bool:
    """The manager's share of :class:`Terminate`; False for messages not ours."""
    if not isinstance(message, Terminate):
        return False
    record = manager.records.get(message.sandbox_id)
    if record is None:
        return True
    record.slot.blocked = record.slot.blocked or f"{message.kind}: {message.reason}"
    record.last_error = {"kind": message.kind, "message": message.reason, "at": time.time()}
    record.slot.close(ExitReason("killed", message.reason))
    manager._stop_supervisor(record)
    manager._set_status(record, "error")
    record.last_error = {"kind": message.kind, "message": message.reason, "at": time.time()}
    try:
        manager._component("security").tell(
            LogEvent(message.sandbox_id, f"sandbox.{message.kind}", message.reason, "terminate",
                     "terminate")
        )
    except SandboxError:
        pass
    telemetry.execute(
        "sandbox.terminated",
        {"count": 1},
        {"sandbox": message.sandbox_id, "runtime": manager.runtime_id, "kind": message.kind,
         "reason": message.reason},
    )
    return True


def forget(manager: Any, record: Any) -> None:
    """After destroy (or a failed create): nothing of the sandbox may be left running."""
    release(manager, record)
    unregister(manager, [record.config.id])


def joined_cgroups(record: Any) -> tuple[int, int | None] | None:
    """The pid and start time of the sandbox's process if the host finds it in the
    sandbox's cgroups (else None, also once it has exited); asked while a destroy
    stops it, for :func:`kill_strays`."""
    prot: Protection | None = getattr(record.slot, "security", None)
    proc = record.slot.current()
    pid = None if proc is None else proc.pid
    if prot is None or pid is None or not isolation.in_cgroups(prot.state, pid):
        return None
    return pid, uidscan.start_ticks(pid)


def kill_strays(manager: Any, record: Any, member: tuple[int, int | None] | None) -> bool:
    """While a destroyed sandbox's process stops: kill what runs under its UID
    outside its cgroups (:func:`runtime.child.isolation.kill_strays`; ``member``
    from :func:`joined_cgroups`); True if that stands for :func:`release`'s pass
    over the UID (pass ``strays_killed``)."""
    prot: Protection | None = getattr(record.slot, "security", None)
    if prot is None or member is None:
        return False
    left = isolation.kill_strays(prot.state, *member)
    if left:
        _report_leftovers(manager, record.config.id, left)
    return left is not None


def release(manager: Any, record: Any, *, strays_killed: bool = False) -> None:
    """Kill whatever the sandbox left in its cgroups or under its UID (only in its
    cgroups with ``strays_killed``, see :func:`kill_strays`), remove its cgroups
    (once its process has exited)."""
    prot: Protection | None = getattr(record.slot, "security", None)
    if prot is not None:
        left = isolation.release(prot.state, strays_killed=strays_killed)
        if left:
            _report_leftovers(manager, record.config.id, left)


def _report_leftovers(manager: Any, sid: str, left: list[int]) -> None:
    log.warning("sandbox %s left processes behind; killed: %s", sid, left)
    try:
        manager._component("security").tell(
            LogEvent(sid, "sandbox.leftovers", f"killed pids {left}", "terminate", "terminate")
        )
    except SandboxError:
        pass


def unregister(manager: Any, sandbox_ids: list[str]) -> None:
    """Take the sandboxes off the resource monitor's and the security controller's
    books, one operation of each for all of them, on this thread when the component
    is idle (needs no stopped process: a destroy does it while the processes stop)."""
    for name, op in (("monitor", "unregister_many"), ("security", "forget_sandboxes")):
        try:
            manager._component(name).invoke_here(op, sandbox_ids)
        except SandboxError:
            pass


def info_extra(manager: Any, record: Any) -> dict[str, Any]:
    """Isolation layers, quarantine, usage and effective limits for get_sandbox_info."""
    slot = record.slot
    prot: Protection | None = getattr(slot, "security", None)
    proc = slot.current()
    usage = None
    try:
        usage = manager._component("monitor").invoke(
            "usage", record.config.id, timeout=USAGE_TIMEOUT
        )
    except SandboxError:
        pass  # restarting, or gone: the figures come back with it
    blocked = getattr(slot, "blocked", None)
    extra: dict[str, Any] = {
        "isolation": proc.isolation if proc is not None else [],
        "isolation_skipped": proc.isolation_skipped if proc is not None else {},
        "quarantined": bool(blocked and blocked.startswith("quarantined")),
        "blocked": blocked,
        "usage": usage,
    }
    if prot is not None:
        extra["allow_run"] = prot.profile.allow_run
        extra["effective_limits"] = prot.limits.as_dict()
        extra["uid"] = prot.state.get("uid")
        extra["cgroups"] = dict(prot.state.get("cgroups") or {})
    return extra
