"""Findings with a risk and their source (issue 17): every rule has a documented
risk; each finding carries its source line, the lines around it and the matched
text; ``sandbox check`` prints them like a linter or as JSON; a profile's ``warn``
groups are reported and audited without blocking."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import cloudpickle
import pytest

from actors.profiles import custom_profile
from actors.scan import RISKS, RULE_RISKS, RULES, WARN_HINT, scan_source
from runtime.errors import ConfigError, SecurityViolation
from sandbox.testing import wait_for

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parent.parent
cloudpickle.register_pickle_by_value(sys.modules[__name__])

UNSAFE = b"import os\n\n\ndef clean(path):\n    os.system('rm -rf ' + path)\n    return path\n"


def test_every_rule_has_a_risk_documented_in_the_security_guide():
    assert set(RULES) <= set(RULE_RISKS) and set(RULE_RISKS.values()) <= set(RISKS)
    guide = (REPO / "docs" / "security.md").read_text()
    for rule, risk in RULE_RISKS.items():
        assert re.search(rf"^\| {rule} \| {risk} \|", guide, re.M), f"{rule} ({risk}) not in docs"


def test_a_finding_carries_its_line_context_and_matched_text():
    [f] = scan_source(UNSAFE, "app.py", "high")
    assert (f.rule, f.severity, f.risk, f.line, f.col) == ("SBX205", "error", "critical", 5, 5)
    assert f.source_line == "    os.system('rm -rf ' + path)"
    assert f.matched == "os.system"
    assert f.context.splitlines() == [
        "   3 | ",
        "   4 | def clean(path):",
        "   5 |     os.system('rm -rf ' + path)",
        "   6 |     return path",
    ]
    assert f.to_dict()["risk"] == "critical"


def check(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "sandbox.cli", "check", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=100,
                          stdin=subprocess.DEVNULL)


def test_check_prints_findings_like_a_linter_or_as_json(tmp_path):
    (tmp_path / "unsafe.py").write_bytes(UNSAFE)
    (tmp_path / "app.py").write_text("def children():\n    return []\n")  # the entry
    text = check(str(tmp_path), "--profile", "high")
    assert text.returncode == 1
    lines = text.stdout.splitlines()
    head = lines.index(f"{tmp_path / 'unsafe.py'}:5:5: SBX205 [critical] os.system is not "
                       "allowed under profile 'high' (starting processes)")
    assert lines[head + 3:head + 5] == [">   5 |     os.system('rm -rf ' + path)",
                                        "      |     ^^^^^^^^^"]

    as_json = check(str(tmp_path), "--profile", "high", "--format", "json")
    assert as_json.returncode == 1
    out = json.loads(as_json.stdout)
    assert (out["profile"], out["errors"], out["warnings"]) == ("high", 1, 0)
    [finding] = out["findings"]
    assert finding["code"] == "SBX205" and finding["risk"] == "critical"
    assert finding["matched"] == "os.system" and finding["line"] == 5


LISTENER = b"import socketserver\n\nSERVER_CLASS = socketserver.TCPServer\n"


def test_a_warn_group_is_a_warning_not_an_error():
    warned = custom_profile("listen-warn", base="high", warn=["network_server"])
    assert [f.severity for f in scan_source(LISTENER, "l.py", "high")] == ["error"]
    [f] = scan_source(LISTENER, "l.py", warned)
    assert (f.rule, f.severity, f.risk) == ("SBX101", "warning", "high")
    assert f.hint == WARN_HINT.format(profile="listen-warn", group="network_server")
    assert "socketserver" not in warned.blocked() and not warned.allows("network_server")


@pytest.mark.parametrize("options, bad", [
    ({"warn": ["network_serve"]}, "network_serve"),
    ({"warn": ["network_server"], "allow": ["network_server"]}, "network_server"),
])
def test_bad_warn_groups_are_refused_by_name(options, bad):
    with pytest.raises(ConfigError) as err:
        custom_profile("w", base="high", **options)
    assert err.value.option == "profile.warn" and err.value.value == bad


def bind_loopback() -> int:
    """Probe run inside the sandbox: bind and listen on a loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        return s.getsockname()[1]


def test_warned_code_compiles_runs_and_is_audited(sandbox_runtime, sandbox_factory, tmp_path):
    sandbox_runtime.register_profile(
        custom_profile("listen-warn", base="medium", warn=["network_server"]))
    app = {"app.py": "import socketserver\n\nSERVER = socketserver.TCPServer\n\n\n"
                     "def children():\n    return []\n"}
    with pytest.raises(SecurityViolation, match="SBX101"):
        sandbox_factory(app, profile="medium")
    sb = sandbox_factory(app, profile="listen-warn")
    [scan] = sandbox_runtime.audit_events(sb.id, event="scan.warned")
    assert "socketserver" in scan["detail"] and scan["action"] == "warned"
    assert sb.run(bind_loopback) > 0, "the guard lets the warned group through"
    bound = wait_for(lambda: [e for e in sandbox_runtime.audit_events(sb.id)
                              if e["action"] == "warned" and e["event"] == "socket.bind"], 10)
    assert "127.0.0.1" in bound[0]["detail"]
