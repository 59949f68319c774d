"""Metrics: counters and histograms from telemetry, the Prometheus text exposition.

The text (written by prometheus-client) is parsed twice: by the small strict parser
below, and by prometheus-client's own parser.
"""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
from helpers import Recorder, wait_for

from runtime.errors import ActorFailed, CompileError, SandboxError
from sandbox.metrics import CALL_BUCKETS, Registry, RuntimeMetrics

ROOT = Path(__file__).resolve().parent.parent
COUNTER = ROOT / "examples" / "counter"

# -- a small strict parser of the text format 0.0.4 ----------------------------------------

_SAMPLE = re.compile(
    r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$'
)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')


def parse(text: str) -> dict[str, dict[str, Any]]:
    """``{family: {"type", "help", "samples": [(name, labels, value)]}}``; asserts the
    format: HELP/TYPE before samples, samples belong to the family just declared,
    label syntax, histogram buckets cumulative and ending at +Inf == _count."""
    assert text.endswith("\n"), "the exposition ends with a newline"
    families: dict[str, dict[str, Any]] = {}
    current: str | None = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert name not in families, f"{name} declared twice"
            families[name] = {"help": help_text, "type": None, "samples": []}
            current = name
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name == current and kind in ("counter", "gauge", "histogram", "untyped")
            families[name]["type"] = kind
        else:
            m = _SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            assert current is not None
            name = m.group("name")
            kind = families[current]["type"]
            allowed = {current}
            if kind == "histogram":
                allowed = {f"{current}_bucket", f"{current}_sum", f"{current}_count"}
            assert name in allowed, f"{name} outside its family {current}"
            raw = m.group("labels") or ""
            labels = dict(_LABEL.findall(raw))
            assert ",".join(f'{k}="{v}"' for k, v in _LABEL.findall(raw)) == raw, raw
            families[current]["samples"].append((name, labels, float(m.group("value"))))
    for name, fam in families.items():
        if fam["type"] == "histogram":
            _check_histogram(name, fam["samples"])
    return families


def _check_histogram(name: str, samples: list[tuple[str, dict[str, str], float]]) -> None:
    series: dict[tuple, dict[str, Any]] = {}
    for sname, labels, value in samples:
        key = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        s = series.setdefault(key, {"buckets": [], "count": None})
        if sname.endswith("_bucket"):
            s["buckets"].append((float(labels["le"]), value))
        elif sname.endswith("_count"):
            s["count"] = value
    for key, s in series.items():
        les = [le for le, _ in s["buckets"]]
        counts = [c for _, c in s["buckets"]]
        assert les == sorted(les) and math.isinf(les[-1]), f"{name}{key}: bad le order"
        assert counts == sorted(counts), f"{name}{key}: buckets not cumulative"
        assert counts[-1] == s["count"], f"{name}{key}: +Inf bucket != _count"


def value(families: dict[str, Any], family: str, sample: str | None = None, **labels: str) -> float:
    """The value of the one sample of ``family`` whose labels include ``labels`` (0 if none)."""
    found = [v for n, lab, v in families[family]["samples"]
             if n == (sample or family) and all(lab.get(k) == w for k, w in labels.items())]
    assert len(found) <= 1, (family, labels, found)
    return found[0] if found else 0.0


def parse_with_prometheus_client(text: str) -> dict[str, Any]:
    from prometheus_client.parser import text_string_to_metric_families

    return {f.name: f for f in text_string_to_metric_families(text)}


# -- unit ----------------------------------------------------------------------------------


def test_exposition_escapes_labels_and_help():
    reg = Registry()
    c = reg.counter("demo_total", 'Help with \\ and\nnewline.', ("path",))
    c.inc(('a "quoted" \\ path\nnext',))
    text = reg.text()
    assert '# HELP demo_total Help with \\\\ and\\nnewline.' in text
    assert 'demo_total{path="a \\"quoted\\" \\\\ path\\nnext"} 1' in text
    fams = parse(text)
    assert fams["demo_total"]["samples"][0][1]["path"] == 'a \\"quoted\\" \\\\ path\\nnext'
    pc = parse_with_prometheus_client(text)
    assert pc["demo"].samples[0].labels["path"] == 'a "quoted" \\ path\nnext'


def test_histogram_buckets_are_cumulative_and_le_inclusive():
    reg = Registry()
    h = reg.histogram("lat_seconds", "Latency.", (), buckets=(0.1, 0.5, 1.0))
    for v in (0.05, 0.1, 0.3, 0.5, 2.0):
        h.observe((), v)
    fams = parse(reg.text())
    buckets = [(lab["le"], v) for n, lab, v in fams["lat_seconds"]["samples"] if n.endswith("_bucket")]
    assert buckets == [("0.1", 2), ("0.5", 4), ("1", 4), ("+Inf", 5)]
    assert value(fams, "lat_seconds", "lat_seconds_sum") == pytest.approx(2.95)
    assert value(fams, "lat_seconds", "lat_seconds_count") == 5


def test_call_metrics_count_errors_and_latency_per_sandbox():
    m = RuntimeMetrics("unit")
    m.calls.observe_call("a", 0.00004, True)
    m.calls.observe_call("a", 0.003, False)
    m.calls.observe_call("b", 20.0, True)
    fams = parse(m.text())
    assert value(fams, "sandbox_calls_total", sandbox="a") == 2
    assert value(fams, "sandbox_call_errors_total", sandbox="a") == 1
    assert value(fams, "sandbox_call_errors_total", sandbox="b") == 0
    assert value(fams, "sandbox_call_duration_seconds", "sandbox_call_duration_seconds_bucket",
                  sandbox="a", le="5e-05") == 1
    assert value(fams, "sandbox_call_duration_seconds", "sandbox_call_duration_seconds_bucket",
                  sandbox="b", le=repr(CALL_BUCKETS[-1])) == 0
    assert value(fams, "sandbox_call_duration_seconds", "sandbox_call_duration_seconds_count",
                  sandbox="b") == 1


def test_events_of_another_runtime_are_not_counted():
    m = RuntimeMetrics("mine")
    m.handle("sandbox.reload.stop", {"duration": 0.1}, {"sandbox": "s", "runtime": "other"})
    m.handle("sandbox.reload.stop", {"duration": 0.1}, {"sandbox": "s", "runtime": "mine"})
    m.handle("supervisor.restart", {"count": 1}, {"supervisor": "other/root#3", "child": "compiler"})
    m.handle("supervisor.restart", {"count": 1}, {"supervisor": "mine/root#4", "child": "compiler"})
    fams = parse(m.text())
    assert value(fams, "sandbox_reloads_total", sandbox="s", kind="reload", outcome="ok") == 1
    assert value(fams, "sandbox_supervisor_restarts_total", supervisor="root", child="compiler") == 1
    assert m.snapshot()["component_restarts"] == {"compiler": 1}


# -- the runtime -----------------------------------------------------------------------------

CRASHY = {
    "app.py": """
        from counter import Counter

        def children():
            return [Counter.child_spec(name="counter")]
    """,
    "counter.py": """
        import os
        from runtime.genserver import GenServer

        class Counter(GenServer):
            vsn = 1

            def init(self):
                return 0

            def handle_call(self, request, state):
                if request == "incr":
                    return state + 1, state + 1
                if request == "die":
                    os._exit(3)
                raise ValueError(f"unknown request {request!r}")
    """,
}


def _write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir()
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text))
    return directory


def test_runtime_metrics_follow_real_operations(sandbox_runtime, tmp_path):
    rt = sandbox_runtime
    app = _write(tmp_path / "app", CRASHY)
    sb = rt.create_sandbox("m1", app, profile="low")
    for _ in range(5):
        sb.call("counter", "incr")
    with pytest.raises(ActorFailed):
        sb.call("counter", "nope")
    wait_for(lambda: _incr(sb), 30)  # the app's supervisor restarted the actor
    v2 = textwrap.dedent(CRASHY["counter.py"]).replace("vsn = 1", "vsn = 2")
    sb.hot_reload(source={"counter": v2})
    sb.rollback_module("counter", 1)
    with pytest.raises(CompileError):
        sb.hot_reload(source={"counter": "def broken(:\n"})
    sb.restart()
    pid = sb.info()["pid"]
    with Recorder("sandbox.process") as rec:
        with pytest.raises(SandboxError):
            sb.call("counter", "die")
        rec.wait("sandbox.process.up", timeout=30)
    wait_for(lambda: sb.info()["pid"] not in (None, pid) and _incr(sb), 30)

    fams = parse(rt.metrics_text())
    assert value(fams, "sandbox_operations_total", operation="create", outcome="ok") == 1
    assert value(fams, "sandbox_operations_total", operation="restart", outcome="ok") == 1
    assert value(fams, "sandbox_reloads_total", sandbox="m1", kind="reload", outcome="ok") == 1
    assert value(fams, "sandbox_reloads_total", sandbox="m1", kind="reload", outcome="error") == 1
    assert value(fams, "sandbox_reloads_total", sandbox="m1", kind="rollback", outcome="ok") == 1
    assert value(fams, "sandbox_reload_duration_seconds", "sandbox_reload_duration_seconds_count",
                 kind="reload") == 2
    assert value(fams, "sandbox_reload_duration_seconds", "sandbox_reload_duration_seconds_sum",
                 kind="reload") > 0
    # one requested restart and one crash restart
    assert value(fams, "sandbox_restarts_total", sandbox="m1") == 2
    assert value(fams, "sandbox_crashes_total", sandbox="m1", category="runtime") == 1
    assert value(fams, "sandbox_supervisor_restarts_total", supervisor="sandbox:m1",
                 child="process") == 1
    calls = value(fams, "sandbox_calls_total", sandbox="m1")
    assert calls >= 8  # 5 incr, nope, die, and the waits' incr
    assert value(fams, "sandbox_call_errors_total", sandbox="m1") >= 2
    assert value(fams, "sandbox_call_duration_seconds", "sandbox_call_duration_seconds_count",
                 sandbox="m1") == calls
    assert value(fams, "sandbox_compiles_total", outcome="ok") == 2  # create, reload
    assert value(fams, "sandbox_compiles_total", outcome="error") == 1
    assert value(fams, "sandbox_status_changes_total", status="reloading") == 3
    assert value(fams, "sandbox_runtime_up") == 1
    assert value(fams, "sandbox_up", sandbox="m1", status="running") == 1
    assert value(fams, "sandbox_component_up", component="manager") == 1

    pc = parse_with_prometheus_client(rt.metrics_text())
    assert pc["sandbox_reloads"].type == "counter"
    assert pc["sandbox_reload_duration_seconds"].type == "histogram"
    assert {s.name for s in pc["sandbox_call_duration_seconds"].samples} >= {
        "sandbox_call_duration_seconds_bucket", "sandbox_call_duration_seconds_count",
        "sandbox_call_duration_seconds_sum",
    }

    # a destroyed sandbox's series go away with it
    sb.destroy()
    fams = parse(rt.metrics_text())
    assert value(fams, "sandbox_reloads_total", sandbox="m1", kind="reload", outcome="ok") == 0
    assert value(fams, "sandbox_calls_total", sandbox="m1") == 0
    assert value(fams, "sandbox_operations_total", operation="destroy", outcome="ok") == 1


def _incr(sb: Any) -> bool:
    try:
        sb.call("counter", "incr", timeout=1)
        return True
    except SandboxError:
        return False


def test_violations_and_limits_are_counted(sandbox_runtime, tmp_path):
    rt = sandbox_runtime
    files = dict(CRASHY)
    files["counter.py"] = CRASHY["counter.py"].replace(
        '                if request == "die":',
        '                if request == "peek":\n'
        '                    try:\n'
        '                        open("/etc/hostname").close()\n'
        '                    except PermissionError:\n'
        '                        return "refused", state\n'
        '                if request == "die":',
    )
    sb = rt.create_sandbox("m-sec", _write(tmp_path / "app", files), profile="medium")
    with Recorder("security.violation") as rec:
        assert sb.call("counter", "peek") == "refused"
        rec.wait("security.violation", timeout=30)
    fams = parse(rt.metrics_text())
    assert value(fams, "sandbox_security_violations_total", sandbox="m-sec") == 1


def test_each_runtime_has_its_own_registry():
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

    import sandbox

    with sandbox.start() as a, sandbox.start() as b:
        a.create_sandbox("only-in-a", COUNTER).call("counter", "incr")
        assert isinstance(a.metrics_registry, CollectorRegistry)
        assert a.metrics_registry is not b.metrics_registry is not REGISTRY
        text_a = generate_latest(a.metrics_registry).decode()
        assert value(parse(text_a), "sandbox_calls_total", sandbox="only-in-a") == 1
        assert "only-in-a" not in b.metrics_text()
    assert "only-in-a" not in generate_latest(REGISTRY).decode()
