"""The security controller: profiles, the static scan, the audit log and containment.

One per runtime, under the root supervisor. Its operations (``ref.invoke(op, ...)``):

- ``get_profile(name)``, ``list_profiles()``, ``register_profile(profile)``
  (a :class:`~actors.profiles.Profile` or its dict), ``guard_policy(profile,
  workdir, app_dir)`` (the plain-data policy for :func:`runtime.child.guard.install_guard`);
- ``scan(source, filename, profile)`` -> findings; ``check_module(source,
  filename, profile, sandbox_id=None, correlation_id=None)`` -> warnings, or
  :class:`~runtime.errors.SecurityViolation` (with ``findings``) when there is an
  error; ``scanner()`` -> a picklable hook for the compiler that knows the
  custom profiles;
- ``register_sandbox(sandbox_id, profile)`` -> the profile, resolved (so a create
  binds and resolves it in one round trip) / ``forget_sandbox(sandbox_id)``
  (``forget_sandboxes(ids)``: a batch's, in one turn);
- ``record_violation(sandbox_id, event, correlation_id=None, profile=None)`` ->
  the action to take: ``"logged"``, or ``"terminate"`` once the profile's
  threshold of refusals is reached (the sandbox is then quarantined);
  ``record_observed(sandbox_id, event, detail)``: the same for a refusal the host
  saw itself (its process killed by the seccomp filter), which the sandbox cannot
  keep from being counted (audit field ``source``: ``observed``, or
  ``reported`` for the guard's reports);
  ``log_event(sandbox_id, event, detail, action, ...)`` for other components
  (the resource monitor's limit actions, the manager's terminations);
- ``audit_events(sandbox_id=None, since=None, limit=None)`` -> records, oldest
  first; ``is_quarantined(id)``, ``quarantined()``, ``release(id)``,
  ``violation_count(id)``.

The audit log is JSON lines, one file per runtime; each record has ``ts``
(epoch seconds), ``time`` (ISO 8601, UTC), ``sandbox``, ``correlation_id``,
``event``, ``detail``, ``action`` (what the guard or the scan did: ``refused``,
``allowed``, ``blocked``, ...) and ``response`` (what the controller decided:
``logged``, ``terminate``, ...). What is written depends on the profile's audit
level: ``full`` writes everything, ``basic`` refusals, blocked modules and
containment, ``none`` nothing (refusals still count towards the threshold).
Every refusal also emits the telemetry event ``security.violation``.

Everything a sandbox reports is treated as hostile: only known keys of plain
types are kept, strings are truncated, and the sandbox's identity and profile
come from the caller (the channel it arrived on), never from the event.

>>> ref = SecurityControllerActor.start()
>>> ref.invoke("register_sandbox", "sb1", "high").name
'high'
>>> [ref.invoke("record_violation", "sb1", {"event": "os.system", "detail": "ls"})
...  for _ in range(3)]
['logged', 'logged', 'terminate']
>>> ref.invoke("is_quarantined", "sb1")
True
>>> _ = ref.stop()
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.config import register_profile_name
from actors.profiles import BUILTIN_PROFILES, Profile
from actors.scan import Finding, ProfileScanner, scan_source
from runtime import telemetry
from runtime.component import Component
from runtime.errors import ConfigError, SandboxError, SecurityViolation

__all__ = [
    "SecurityControllerActor",
    "MAX_DETAIL",
    "ObservedRefusal",
    "ViolationReport",
    "LogEvent",
]

log = logging.getLogger("actors.security")

#: Longest ``detail`` kept from a sandbox's report.
MAX_DETAIL = 2000
_MAX_FIELD = 200
#: Records kept in memory when there is no log file.
_MEMORY_RECORDS = 10_000
#: What each audit level writes (by the record's ``action``).
_LEVEL_ACTIONS = {
    "full": None,  # everything
    "basic": frozenset({"refused", "blocked", "warned", "terminate", "quarantined", "restart",
                        "limit"}),
    "none": frozenset(),
}


@dataclass(frozen=True)
class ViolationReport:
    """Told (not called) by the host side of a sandbox's channel, from its reader
    thread: ``sandbox_id`` is the channel's, ``event`` the sandbox's (hostile).
    ``then(response)`` runs in the controller's thread with the decision."""

    sandbox_id: str
    event: Any
    then: Callable[[str], None] | None = None


@dataclass(frozen=True)
class ObservedRefusal:
    """Told by the host side of a sandbox: the host itself saw the kernel refuse
    something (the process died of the seccomp filter's ``SIGSYS``). Counted like a
    guard's refusal, but no sandbox can suppress it. ``then`` as in
    :class:`ViolationReport`."""

    sandbox_id: str
    event: str
    detail: str
    then: Callable[[str], None] | None = None


@dataclass(frozen=True)
class LogEvent:
    """Told by another component: write one audit record (see ``op_log_event``)."""

    sandbox_id: str | None
    event: str
    detail: str = ""
    action: str = "logged"
    response: str = "logged"


class SecurityControllerActor(Component):
    """Profiles, scans, the audit log and the violation counts of one runtime.

    Options: ``audit_path`` (the JSON-lines file; None keeps records in memory
    only), ``runtime_id`` (put in telemetry metadata), ``default_profile`` (for
    sandboxes nobody registered), ``profiles`` (custom profiles to start with).
    """

    def __init__(
        self,
        *,
        name: str | None = None,
        audit_path: str | os.PathLike[str] | None = None,
        runtime_id: str = "runtime",
        default_profile: str = "medium",
        profiles: list[Profile] | None = None,
    ) -> None:
        super().__init__(name=name or "security")
        self.audit_path = Path(audit_path) if audit_path is not None else None
        self.runtime_id = runtime_id
        self.default_profile = default_profile
        self._initial = list(profiles or [])
        self.profiles: dict[str, Profile] = {}
        self.sandboxes: dict[str, str] = {}  # sandbox id -> profile name
        self.counts: dict[str, int] = {}
        self.quarantine: dict[str, float] = {}
        self.memory: deque[dict[str, Any]] = deque(maxlen=_MEMORY_RECORDS)
        self._file: Any = None
        self._write_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------
    def on_init(self) -> None:
        self.profiles = dict(BUILTIN_PROFILES)
        for p in self._initial:
            self.op_register_profile(p)
        if self.default_profile not in self.profiles:
            raise ConfigError(
                "default_profile",
                self.default_profile,
                f"one of {', '.join(sorted(self.profiles))}",
            )
        if self.audit_path is not None:
            self.audit_path.parent.mkdir(parents=True, exist_ok=True)
            self._rebuild()
            # Private to the host: a sandbox with its own UID must not read it.
            fd = os.open(self.audit_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._file = os.fdopen(fd, "a", encoding="utf-8")

    def on_info(self, message: Any) -> None:
        if isinstance(message, (ViolationReport, ObservedRefusal)):
            try:
                if isinstance(message, ObservedRefusal):
                    response = self.op_record_observed(
                        message.sandbox_id, message.event, message.detail
                    )
                else:
                    response = self.op_record_violation(message.sandbox_id, message.event)
            except SandboxError:
                return
            if message.then is not None:
                try:
                    message.then(response)
                except Exception:
                    log.exception("violation response for %s failed", message.sandbox_id)
        elif isinstance(message, LogEvent):
            try:
                self.op_log_event(
                    message.sandbox_id,
                    message.event,
                    message.detail,
                    message.action,
                    response=message.response,
                )
            except SandboxError:
                pass

    def on_exit(self, reason: Any) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _rebuild(self) -> None:
        """After a restart: counts and quarantines come back from the log."""
        assert self.audit_path is not None
        if not self.audit_path.exists():
            return
        for rec in self._read():
            sid = rec.get("sandbox")
            if not isinstance(sid, str):
                continue
            if rec.get("event") == "security.release":
                self.counts.pop(sid, None)
                self.quarantine.pop(sid, None)
            elif rec.get("action") == "refused":
                self.counts[sid] = self.counts.get(sid, 0) + 1
            if rec.get("response") == "terminate":
                self.quarantine.setdefault(sid, float(rec.get("ts") or 0))

    # -- profiles ------------------------------------------------------------------------
    def _profile(self, profile: Profile | str | Mapping[str, Any]) -> Profile:
        if isinstance(profile, Profile):
            return profile
        if isinstance(profile, Mapping):
            return Profile.from_dict(profile)
        try:
            return self.profiles[profile]
        except (KeyError, TypeError):
            raise ConfigError(
                "profile", profile, f"one of {', '.join(sorted(self.profiles))}"
            ) from None

    def op_get_profile(self, name: str) -> Profile:
        return self._profile(name)

    def op_list_profiles(self) -> list[str]:
        return sorted(self.profiles)

    def op_register_profile(self, profile: Profile | Mapping[str, Any]) -> Profile:
        """Add (or replace) a custom profile; built-ins cannot be replaced."""
        p = profile if isinstance(profile, Profile) else Profile.from_dict(profile)
        if not isinstance(p, Profile):
            raise ConfigError("profile", profile, "a Profile or a dict of profile fields")
        if p.name in BUILTIN_PROFILES and BUILTIN_PROFILES[p.name] != p:
            raise ConfigError(
                "profile.name",
                p.name,
                f"a name that is not a built-in profile ({', '.join(BUILTIN_PROFILES)})",
            )
        self.profiles[p.name] = p
        register_profile_name(p.name)
        return p

    def op_guard_policy(self, profile: str | Profile, workdir: str, app_dir: str) -> dict[str, Any]:
        return self._profile(profile).guard_policy(workdir, app_dir)

    def op_scanner(self) -> ProfileScanner:
        """A compiler hook that knows the custom profiles registered so far."""
        custom = {n: p for n, p in self.profiles.items() if n not in BUILTIN_PROFILES}
        return ProfileScanner(custom)

    # -- scanning ------------------------------------------------------------------------
    def op_scan(self, source: bytes, filename: str, profile: str | Profile) -> list[Finding]:
        return scan_source(source, filename, self._profile(profile))

    def op_check_module(
        self,
        source: bytes,
        filename: str,
        profile: str | Profile,
        *,
        sandbox_id: str | None = None,
        correlation_id: str | None = None,
    ) -> list[Finding]:
        """The module's warnings; raises SecurityViolation if any finding is an error."""
        p = self._profile(profile)
        findings = scan_source(source, filename, p)
        errors = [f for f in findings if f.is_error]
        if errors:
            shown = "\n  ".join(str(f) for f in errors[:10])
            more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
            self._record(
                p,
                sandbox_id,
                correlation_id,
                "scan.blocked",
                f"{filename}: " + "; ".join(str(f) for f in errors[:5]),
                "blocked",
                "logged",
            )
            telemetry.execute(
                "security.scan.blocked",
                {"errors": len(errors)},
                {
                    "sandbox": sandbox_id,
                    "file": filename,
                    "profile": p.name,
                    "runtime": self.runtime_id,
                },
            )
            raise SecurityViolation(
                f"{filename} is refused under security profile {p.name!r}:\n  {shown}{more}",
                findings,
            )
        if findings:
            self._record(
                p,
                sandbox_id,
                correlation_id,
                "scan.warning",
                f"{filename}: " + "; ".join(str(f) for f in findings[:5]),
                "warned",
                "logged",
            )
        return findings

    # -- sandboxes and violations --------------------------------------------------------
    def op_register_sandbox(self, sandbox_id: str, profile: str | Profile) -> Profile:
        """Bind the sandbox to ``profile`` (a name or a Profile); returns it resolved."""
        p = self._profile(profile)
        if p.name not in self.profiles:
            self.profiles[p.name] = p
        self.sandboxes[_check_id(sandbox_id)] = p.name
        return p

    def op_forget_sandbox(self, sandbox_id: str) -> None:
        """The sandbox was destroyed: drop its profile binding (its quarantine stays)."""
        self.op_forget_sandboxes([sandbox_id])

    def op_forget_sandboxes(self, sandbox_ids: list[str]) -> None:
        """:meth:`op_forget_sandbox` of each (a batch destroy: one turn for all)."""
        for sandbox_id in sandbox_ids:
            self.sandboxes.pop(sandbox_id, None)

    def _sandbox_profile(self, sandbox_id: str, profile: str | Profile | None) -> Profile:
        if profile is not None:
            return self._profile(profile)
        return self.profiles.get(
            self.sandboxes.get(sandbox_id, ""), self.profiles[self.default_profile]
        )

    def op_record_violation(
        self,
        sandbox_id: str,
        event: Any,
        *,
        correlation_id: str | None = None,
        profile: str | Profile | None = None,
    ) -> str:
        """Record a report from the sandbox's guard; returns the action to take.

        ``event`` is what the sandbox sent (hostile: sanitised here). Only a
        ``refused`` action counts towards the threshold; ``allowed`` reports are
        logged under audit level ``full``.
        """
        sid = _check_id(sandbox_id)
        p = self._sandbox_profile(sid, profile)
        ev = _sanitise(event)
        if ev["action"] != "refused":
            self._record(
                p,
                sid,
                correlation_id,
                ev["event"],
                ev["detail"],
                ev["action"],
                "logged",
                group=ev["group"],
            )
            return "logged"
        return self._count(p, sid, correlation_id, ev["event"], ev["detail"], ev["group"],
                           "reported")

    def op_record_observed(
        self,
        sandbox_id: str,
        event: str,
        detail: str,
        *,
        correlation_id: str | None = None,
    ) -> str:
        """Count a refusal the host observed itself (a process killed by the seccomp
        filter); returns the action to take, as :meth:`op_record_violation` does.

        The audit record has ``source`` ``observed`` (a guard's report:
        ``reported``): the sandbox cannot keep these from being counted.
        """
        sid = _check_id(sandbox_id)
        p = self._sandbox_profile(sid, None)
        return self._count(p, sid, correlation_id, _text(event, _MAX_FIELD),
                           _text(detail, MAX_DETAIL), "kernel", "observed")

    def _count(
        self,
        p: Profile,
        sid: str,
        correlation_id: str | None,
        event: str,
        detail: str,
        group: str,
        source: str,
    ) -> str:
        """One more refusal for ``sid``: audit, telemetry, quarantine at the threshold."""
        ev = {"event": event, "detail": detail, "group": group}
        n = self.counts.get(sid, 0) + 1
        self.counts[sid] = n
        threshold = p.violation_threshold
        response = (
            "terminate"
            if (threshold is not None and n >= threshold) or sid in self.quarantine
            else "logged"
        )
        self._record(
            p,
            sid,
            correlation_id,
            ev["event"],
            ev["detail"],
            "refused",
            response,
            group=ev["group"],
            count=n,
            source=source,
        )
        telemetry.execute(
            "security.violation",
            {"count": n},
            {
                "sandbox": sid,
                "event": ev["event"],
                "detail": ev["detail"],
                "group": ev["group"],
                "action": "refused",
                "response": response,
                "source": source,
                "profile": p.name,
                "correlation_id": correlation_id,
                "runtime": self.runtime_id,
            },
        )
        if response == "terminate" and sid not in self.quarantine:
            self.quarantine[sid] = time.time()
            self._record(
                p,
                sid,
                correlation_id,
                "security.quarantine",
                f"{n} refused operations (threshold {threshold})",
                "quarantined",
                "terminate",
            )
            telemetry.execute(
                "security.quarantine",
                {"violations": n},
                {
                    "sandbox": sid,
                    "profile": p.name,
                    "runtime": self.runtime_id,
                    "correlation_id": correlation_id,
                },
            )
        return response

    def op_log_event(
        self,
        sandbox_id: str | None,
        event: str,
        detail: str = "",
        action: str = "logged",
        *,
        response: str = "logged",
        correlation_id: str | None = None,
        profile: str | Profile | None = None,
    ) -> None:
        """Write a record for another component (limit reached, sandbox terminated, ...)."""
        p = self._sandbox_profile(sandbox_id or "", profile)
        self._record(
            p,
            sandbox_id,
            correlation_id,
            _text(event, _MAX_FIELD),
            _text(detail, MAX_DETAIL),
            _text(action, _MAX_FIELD),
            _text(response, _MAX_FIELD),
        )

    def op_is_quarantined(self, sandbox_id: str) -> bool:
        return sandbox_id in self.quarantine

    def op_quarantined(self) -> list[str]:
        return sorted(self.quarantine)

    def op_violation_count(self, sandbox_id: str) -> int:
        return self.counts.get(sandbox_id, 0)

    def op_release(self, sandbox_id: str, *, correlation_id: str | None = None) -> bool:
        """Lift a quarantine and reset the count (an operator's decision); logged."""
        was = self.quarantine.pop(sandbox_id, None) is not None
        self.counts.pop(sandbox_id, None)
        self._record(
            self._sandbox_profile(sandbox_id, None),
            sandbox_id,
            correlation_id,
            "security.release",
            "quarantine lifted" if was else "count reset",
            "released",
            "logged",
            force=True,
        )
        return was

    # -- the log -------------------------------------------------------------------------
    def _record(
        self,
        profile: Profile,
        sandbox_id: str | None,
        correlation_id: str | None,
        event: str,
        detail: str,
        action: str,
        response: str,
        *,
        force: bool = False,
        **extra: Any,
    ) -> None:
        wanted = _LEVEL_ACTIONS[profile.audit]
        if not force and wanted is not None and action not in wanted and response != "terminate":
            return
        if not force and profile.audit == "none":
            return
        now = time.time()
        rec = {
            "ts": now,
            "time": dt.datetime.fromtimestamp(now, dt.UTC).isoformat(timespec="milliseconds"),
            "runtime": self.runtime_id,
            "sandbox": sandbox_id,
            "correlation_id": correlation_id,
            "profile": profile.name,
            "event": event,
            "detail": detail,
            "action": action,
            "response": response,
            **{k: v for k, v in extra.items() if v is not None},
        }
        if self._file is None:
            self.memory.append(rec)
            return
        line = json.dumps(rec, ensure_ascii=False, default=str) + "\n"
        with self._write_lock:
            self._file.write(line)
            self._file.flush()

    def _read(self) -> list[dict[str, Any]]:
        if self.audit_path is None:
            return list(self.memory)
        out = []
        try:
            with open(self.audit_path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue  # a torn last line after a crash
                    if isinstance(rec, dict):
                        out.append(rec)
        except FileNotFoundError:
            pass
        return out

    def op_audit_events(
        self,
        sandbox_id: str | None = None,
        since: float | dt.datetime | None = None,
        limit: int | None = None,
        event: str | None = None,
    ) -> list[dict[str, Any]]:
        """Records, oldest first, filtered by sandbox, time (epoch seconds or a
        datetime), event name prefix; ``limit`` keeps the newest ones."""
        if isinstance(since, dt.datetime):
            since = since.timestamp() if since.tzinfo else since.replace(tzinfo=dt.UTC).timestamp()
        if since is not None and (isinstance(since, bool) or not isinstance(since, (int, float))):
            raise ConfigError("since", since, "epoch seconds or a datetime")
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 0
        ):
            raise ConfigError("limit", limit, "an integer >= 0 or None")
        recs = [
            r
            for r in self._read()
            if (sandbox_id is None or r.get("sandbox") == sandbox_id)
            and (since is None or float(r.get("ts") or 0) >= since)
            and (event is None or str(r.get("event", "")).startswith(event))
        ]
        return recs[-limit:] if limit else recs


def _check_id(sandbox_id: Any) -> str:
    if not isinstance(sandbox_id, str) or not sandbox_id or len(sandbox_id) > 128:
        raise SandboxError(f"invalid sandbox id {sandbox_id!r}: expected a non-empty string")
    return sandbox_id


def _text(value: Any, limit: int) -> str:
    if not isinstance(value, str):
        value = (
            repr(value)
            if isinstance(value, (int, float, bool, bytes, type(None)))
            else f"<{type(value).__name__}>"
        )
    value = "".join(
        c if c.isprintable() or c == " " else f"\\x{ord(c):02x}" for c in value[: limit * 2]
    )
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _sanitise(event: Any) -> dict[str, str]:
    """The parts of a sandbox's report we keep: short printable strings, known keys."""
    if not isinstance(event, Mapping):
        return {
            "event": "guard.report",
            "detail": _text(event, MAX_DETAIL),
            "action": "refused",
            "group": "",
        }
    action = event.get("action")
    return {
        "event": _text(event.get("event", "unknown"), _MAX_FIELD),
        "detail": _text(event.get("detail", ""), MAX_DETAIL),
        # Anything but an explicit "allowed" (or "warned": a group its profile marks
        # warn) is a refusal: a sandbox cannot dodge the count by mislabelling its
        # reports.
        "action": action if action in ("allowed", "warned") else "refused",
        "group": _text(event.get("group", ""), _MAX_FIELD),
    }
