"""The security controller: profiles, scans, the audit log, thresholds and quarantine."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Recorder

from actors.profiles import BUILTIN_PROFILES, Profile, custom_profile, get_builtin
from actors.scan import Finding
from actors.security import MAX_DETAIL, SecurityControllerActor
from runtime.component import ComponentRef
from runtime.errors import ConfigError, SandboxError, SecurityViolation

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def audit_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "audit.jsonl"


@pytest.fixture
def sec(audit_path: Path) -> Iterator[ComponentRef]:
    ref = SecurityControllerActor.start(audit_path=audit_path, runtime_id="rt-test")
    try:
        yield ref  # type: ignore[misc]
    finally:
        ref.stop()


def refused(event: str = "os.system", detail: str = "ls") -> dict:
    return {"event": event, "detail": detail, "action": "refused", "group": "subprocess"}


# -- profiles ------------------------------------------------------------------------------


def test_builtin_profiles_are_consistent() -> None:
    high, medium, low = (get_builtin(n) for n in ("high", "medium", "low"))
    for denied in (
        "network_client",
        "network_server",
        "subprocess",
        "native",
        "pickle",
        "introspection",
        "dynamic_code",
        "file_write_any",
        "file_read_any",
    ):
        assert not high.allows(denied) and not medium.allows(denied), denied
        assert low.allows(denied), denied
    assert not high.allow_run and medium.allow_run and low.allow_run
    assert high.ban_dunder_strings and not medium.ban_dunder_strings
    assert medium.allow - high.allow == set()
    assert set(medium.read_roots) == {"workdir", "app", "python"} and high.read_roots == (
        "workdir",
    )
    assert not low.allows("signal_any")
    assert high.violation_threshold < medium.violation_threshold < low.violation_threshold
    assert high.limits.memory_mb < medium.limits.memory_mb < low.limits.memory_mb
    assert (
        high.is_blocked("socket")
        and high.is_blocked("urllib.request")
        and not high.is_blocked("os")
    )
    assert not low.blocked()


def test_guard_policy_is_plain_data_for_each_profile(tmp_path: Path) -> None:
    import msgpack

    for name in BUILTIN_PROFILES:
        pol = get_builtin(name).guard_policy(tmp_path / "wd", tmp_path / "app")
        assert msgpack.unpackb(msgpack.packb(pol, use_bin_type=True), raw=False) == pol
        assert pol["profile"] == name
    assert get_builtin("high").guard_policy(tmp_path, tmp_path)["write_roots"] == [
        str(tmp_path.resolve())
    ]
    assert get_builtin("low").guard_policy(tmp_path, tmp_path)["write_roots"] == ["/"]


@pytest.mark.parametrize(
    ("kwargs", "field", "value"),
    [
        ({"allow": ["netwrk"]}, "profile.allow", "netwrk"),
        ({"deny": ["nope"]}, "profile.deny", "nope"),
        ({"audit": "loud"}, "profile.audit", "loud"),
        ({"violation_threshold": 0}, "profile.violation_threshold", 0),
        ({"read_roots": ["relative/dir"]}, "profile.read_roots", "relative/dir"),
        ({"net_allow": ["localhost"]}, "profile.net_allow", "localhost"),
        ({"block_modules": ["not a module"]}, "profile.blocked_modules", "not a module"),
        ({"limits": {"memory_mb": -1}}, "profile.limits.memory_mb", -1),
        ({"allow_run": "yes"}, "profile.allow_run", "yes"),
        ({"colour": "red"}, "profile.colour", "red"),
        ({"allow": ["pickle"], "deny": ["pickle"]}, "profile.deny", "pickle"),
    ],
)
def test_custom_profile_validation_names_the_field(kwargs: dict, field: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        custom_profile("custom", base="high", **kwargs)
    assert info.value.option == field
    assert info.value.value == value
    assert field in str(info.value)


def test_custom_profile_derives_from_a_base() -> None:
    p = custom_profile(
        "worker",
        base="medium",
        allow=["network_client"],
        deny=["file_write_workdir"],
        block_modules=["json"],
        violation_threshold=2,
        net_allow=["10.0.0.1:*"],
    )
    assert p.allows("network_client") and not p.allows("file_write_workdir")
    assert p.allow_run and p.is_blocked("json") and not p.is_blocked("socket")
    assert p.violation_threshold == 2 and p.net_allow == ("10.0.0.1:*",)
    assert Profile.from_dict(p.to_dict()) == p
    assert Profile.derive(p, audit="none").audit == "none"
    with pytest.raises(ConfigError):
        custom_profile("medium")


def test_profile_operations(sec: ComponentRef) -> None:
    assert sec.invoke("list_profiles") == ["high", "low", "medium"]
    assert sec.invoke("get_profile", "high") == get_builtin("high")
    with pytest.raises(ConfigError, match="invalid profile='nope'"):
        sec.invoke("get_profile", "nope")
    p = sec.invoke("register_profile", custom_profile("netty", allow=["network_client"]).to_dict())
    assert sec.invoke("get_profile", "netty") == p
    # registering a sandbox resolves its profile too (a create's one round trip)
    assert sec.invoke("register_sandbox", "sb-netty", "netty") == p
    with pytest.raises(ConfigError, match="built-in"):
        sec.invoke("register_profile", Profile.derive("high", violation_threshold=9))
    pol = sec.invoke("guard_policy", "netty", "/tmp/wd", "/tmp/app")
    assert "network_client" in pol["allow"]
    assert sec.is_alive()


# -- scanning ------------------------------------------------------------------------------


def test_scan_and_check_module(sec: ComponentRef, audit_path: Path) -> None:
    findings = sec.invoke("scan", b"import socket\n", "app.py", "high")
    assert [f.rule for f in findings] == ["SBX101"]
    assert sec.invoke("check_module", b"import socket\n", "app.py", "low") == []
    with pytest.raises(SecurityViolation) as info:
        sec.invoke(
            "check_module",
            b"import json\nimport ctypes\neval('1')\n",
            "app.py",
            "high",
            sandbox_id="sb1",
            correlation_id="c-1",
        )
    err = info.value
    assert "app.py:2:1: SBX101" in str(err) and "app.py:3:1: SBX201" in str(err)
    assert [f.rule for f in err.findings] == ["SBX101", "SBX201"]
    assert all(isinstance(f, Finding) for f in err.findings)
    [rec] = sec.invoke("audit_events", sandbox_id="sb1")
    assert (rec["event"], rec["action"], rec["correlation_id"]) == (
        "scan.blocked",
        "blocked",
        "c-1",
    )
    # Warnings are returned (and not an error).
    warnings = sec.invoke("check_module", b"import os\nos.kill(1, 0)\n", "w.py", "high")
    assert [(f.rule, f.severity) for f in warnings] == [("SBX205", "warning")]


def test_scanner_for_the_compiler_knows_registered_profiles(sec: ComponentRef) -> None:
    sec.invoke("register_profile", custom_profile("netty", allow=["network_client"]))
    scanner = sec.invoke("scanner")
    assert [d.code for d in scanner(b"import socket\n", "m.py", "netty")] == []
    assert [d.code for d in scanner(b"import socket\n", "m.py", "high")] == ["SBX101"]


# -- violations, thresholds, the log -----------------------------------------------------------


def test_threshold_terminates_and_quarantines(sec: ComponentRef) -> None:
    with Recorder("security") as rec:
        sec.invoke("register_sandbox", "sb1", "high")  # threshold 3
        actions = [
            sec.invoke("record_violation", "sb1", refused(), correlation_id=f"c{i}")
            for i in range(3)
        ]
        assert actions == ["logged", "logged", "terminate"]
        assert sec.invoke("is_quarantined", "sb1") and sec.invoke("quarantined") == ["sb1"]
        assert sec.invoke("violation_count", "sb1") == 3
        # Once quarantined, every further refusal says terminate again.
        assert sec.invoke("record_violation", "sb1", refused()) == "terminate"
        events = rec.wait("security.violation", 4)
        assert [e.measurements["count"] for e in events] == [1, 2, 3, 4]
        assert events[0].metadata["sandbox"] == "sb1" and events[0].metadata["response"] == "logged"
        assert events[0].metadata["correlation_id"] == "c0"
        assert events[2].metadata["response"] == "terminate"
        assert rec.wait("security.quarantine")[0].metadata["sandbox"] == "sb1"
    [q] = sec.invoke("audit_events", sandbox_id="sb1", event="security.quarantine")
    assert (q["action"], q["response"]) == ("quarantined", "terminate")
    # Other sandboxes are not affected.
    sec.invoke("register_sandbox", "sb2", "high")
    assert sec.invoke("record_violation", "sb2", refused()) == "logged"
    assert not sec.invoke("is_quarantined", "sb2")
    # An operator lifts the quarantine.
    assert sec.invoke("release", "sb1") is True
    assert not sec.invoke("is_quarantined", "sb1") and sec.invoke("violation_count", "sb1") == 0


def test_thresholds_follow_the_profile(sec: ComponentRef) -> None:
    sec.invoke("register_profile", custom_profile("touchy", violation_threshold=1))
    sec.invoke("register_sandbox", "t", "touchy")
    assert sec.invoke("record_violation", "t", refused()) == "terminate"
    sec.invoke("register_profile", custom_profile("never", violation_threshold=None))
    sec.invoke("register_sandbox", "n", "never")
    assert {sec.invoke("record_violation", "n", refused()) for _ in range(20)} == {"logged"}
    # The profile may also be given per call (e.g. by the manager that knows it).
    assert sec.invoke("record_violation", "x", refused(), profile="touchy") == "terminate"


def test_audit_log_is_json_lines_and_queryable(sec: ComponentRef, audit_path: Path) -> None:
    sec.invoke("register_sandbox", "a", "high")
    sec.invoke("register_sandbox", "b", "high")
    t0 = dt.datetime.now(dt.UTC)
    sec.invoke(
        "record_violation", "a", refused("socket.connect", "127.0.0.1:80"), correlation_id="op-1"
    )
    sec.invoke("record_violation", "b", refused("open", "/etc/passwd"))
    sec.invoke("log_event", "a", "limit.memory", "rss 600 MB > 512 MB", "limit", response="restart")
    lines = audit_path.read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    assert len(recs) == 3
    first = recs[0]
    assert {
        "ts",
        "time",
        "sandbox",
        "correlation_id",
        "event",
        "detail",
        "action",
        "response",
    } <= set(first)
    assert (
        first["sandbox"],
        first["event"],
        first["detail"],
        first["action"],
        first["response"],
        first["correlation_id"],
    ) == ("a", "socket.connect", "127.0.0.1:80", "refused", "logged", "op-1")
    assert dt.datetime.fromisoformat(first["time"]) >= t0.replace(microsecond=0)
    assert [r["event"] for r in sec.invoke("audit_events", sandbox_id="a")] == [
        "socket.connect",
        "limit.memory",
    ]
    assert len(sec.invoke("audit_events")) == 3
    assert sec.invoke("audit_events", since=recs[1]["ts"]) == recs[1:]
    assert sec.invoke("audit_events", since=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)) == []
    assert sec.invoke("audit_events", limit=1) == recs[-1:]
    assert [r["event"] for r in sec.invoke("audit_events", event="limit")] == ["limit.memory"]
    with pytest.raises(ConfigError):
        sec.invoke("audit_events", since="yesterday")


def test_audit_levels(sec: ComponentRef) -> None:
    sec.invoke("register_profile", custom_profile("quiet", audit="none", violation_threshold=2))
    sec.invoke("register_profile", custom_profile("loud", base="low", audit="full"))
    sec.invoke("register_sandbox", "q", "quiet")
    sec.invoke("register_sandbox", "l", "loud")
    sec.invoke("register_sandbox", "m", "medium")  # basic
    allowed = {
        "event": "subprocess.Popen",
        "detail": "['ls']",
        "action": "allowed",
        "group": "subprocess",
    }
    assert sec.invoke("record_violation", "l", allowed) == "logged"
    assert sec.invoke("record_violation", "m", allowed) == "logged"
    assert [r["action"] for r in sec.invoke("audit_events", sandbox_id="l")] == ["allowed"]
    assert sec.invoke("audit_events", sandbox_id="m") == []  # basic: refusals only
    sec.invoke("record_violation", "m", refused())
    assert [r["action"] for r in sec.invoke("audit_events", sandbox_id="m")] == ["refused"]
    # none: nothing written, but refusals still count towards the threshold.
    assert sec.invoke("record_violation", "q", refused()) == "logged"
    assert sec.invoke("record_violation", "q", refused()) == "terminate"
    assert sec.invoke("audit_events", sandbox_id="q") == []
    assert sec.invoke("is_quarantined", "q")


def test_reports_from_a_sandbox_are_sanitised(sec: ComponentRef) -> None:
    sec.invoke("register_sandbox", "evil", "low")
    hostile = {
        "event": "x\n" * 500,
        "detail": "\x1b[2J" + "A" * 10_000,
        "action": "refused",
        "group": {"nested": object()},
        "sandbox": "someone-else",
        "profile": "low",
        "extra": "ignored",
    }
    assert sec.invoke("record_violation", "evil", hostile) == "logged"
    [rec] = sec.invoke("audit_events", sandbox_id="evil")
    assert rec["sandbox"] == "evil" and rec["profile"] == "low"
    assert (
        len(rec["detail"]) <= MAX_DETAIL
        and "\x1b" not in rec["detail"]
        and "\n" not in rec["event"]
    )
    assert "extra" not in rec and rec["group"] == "<dict>"
    assert sec.invoke("audit_events", sandbox_id="someone-else") == []
    # Not a dict at all, or mislabelled: still a refusal.
    assert sec.invoke("record_violation", "evil", "garbage") == "logged"
    sec.invoke("record_violation", "evil", {"event": "os.system", "action": "fine, really"})
    assert sec.invoke("violation_count", "evil") == 3
    with pytest.raises(SandboxError):
        sec.invoke("record_violation", "", refused())
    assert sec.is_alive()


def test_counts_and_quarantine_survive_a_restart(audit_path: Path) -> None:
    ref = SecurityControllerActor.start(audit_path=audit_path)
    try:
        ref.invoke("register_sandbox", "sb", "high")
        for _ in range(3):
            ref.invoke("record_violation", "sb", refused())
        ref.invoke("register_sandbox", "other", "high")
        ref.invoke("record_violation", "other", refused())
    finally:
        ref.stop()
    ref = SecurityControllerActor.start(audit_path=audit_path)
    try:
        assert ref.invoke("is_quarantined", "sb")
        assert ref.invoke("violation_count", "other") == 1
        ref.invoke("register_sandbox", "other", "high")
        assert ref.invoke("record_violation", "other", refused()) == "logged"
        assert ref.invoke("record_violation", "other", refused()) == "terminate"
    finally:
        ref.stop()


def test_without_a_file_records_stay_in_memory() -> None:
    ref = SecurityControllerActor.start()
    try:
        ref.invoke("register_sandbox", "m", "high")
        ref.invoke("record_violation", "m", refused())
        assert [r["event"] for r in ref.invoke("audit_events", sandbox_id="m")] == ["os.system"]
    finally:
        ref.stop()
