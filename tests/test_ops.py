"""ops/: the Grafana dashboard and the Prometheus alerting rules refer only to metrics a
live runtime exports (so neither can drift from the code), and both are well formed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import sandbox

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "ops" / "grafana" / "sandbox.json"
RULES = ROOT / "ops" / "prometheus" / "sandbox-alerts.yml"
PROVISIONING = ROOT / "ops" / "grafana" / "provisioning"

_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
             "group_left", "group_right", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords).

    >>> sorted(metric_names('sum by (a) (rate(x_total{b="c"}[5m])) / on (a) group_left () y'))
    ['x_total', 'y']
    """
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    names = set()
    for m in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", e):
        if e[m.end():].lstrip().startswith("(") or m.group().lower() in _KEYWORDS:
            continue
        names.add(m.group())
    return names


def dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = [(f"panel {p['title']!r}", t["expr"])
           for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        query = var.get("definition") or ""
        m = re.match(r"label_values\((\w+)\s*,", query)
        if m:
            out.append((f"variable {var['name']}", m.group(1)))
    return out


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


@pytest.fixture(scope="module")
def exported() -> Iterator[set[str]]:
    """Sample names a live runtime's /metrics declares (a histogram's _bucket, _sum and
    _count included), fetched over HTTP like a Prometheus scrape."""
    with sandbox.start(http=("127.0.0.1", 0)) as rt:
        rt.create_sandbox("ops-live", "examples/counter", limits={"memory_mb": 512})
        rt.component("monitor").invoke("sample_now")
        host, port = rt.http_address  # type: ignore[misc]
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    assert "sandbox_resource_usage" in names and "sandbox_calls_total" in names
    yield names


def test_the_name_extractor_finds_what_it_should_and_nothing_else():
    assert metric_names("histogram_quantile(0.99, sum by (le, sandbox) (rate("
                        "a_bucket{sandbox=~\"$sandbox\"}[$__rate_interval])))") == {"a_bucket"}
    assert metric_names("topk(10, b) > bool 3 unless c offset 5m") == {"b", "c"}
    assert metric_names('count by (status) (d{x="y"}) or vector(0)') == {"d"}


@pytest.mark.parametrize(("where", "expr"), dashboard_queries(), ids=lambda v: str(v)[:60])
def test_every_dashboard_query_uses_exported_metrics(exported, where, expr):
    names = metric_names(expr)
    assert names, f"{where}: no metric found in {expr!r}"
    missing = names - exported
    assert not missing, f"{where} queries {sorted(missing)}, which /metrics does not export"


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r["alert"])
def test_every_rule_uses_exported_metrics(exported, rule):
    names = metric_names(rule["expr"])
    assert names, rule["expr"]
    missing = names - exported
    assert not missing, f"rule {rule['alert']} queries {sorted(missing)}, not exported"


def test_rules_are_complete_and_well_formed():
    found = rules()
    names = [r["alert"] for r in found]
    assert len(names) == len(set(names)), "alert names repeat"
    for r in found:
        assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
        if "for" in r:
            assert re.fullmatch(r"\d+[smh]", r["for"]), r["alert"]
    # what the issue asks the rules to cover
    for wanted in ("SandboxDown", "SandboxFlapping", "SandboxRestartStorm",
                   "SandboxSupervisorEscalation", "SandboxQuarantined", "SandboxMemoryNearLimit",
                   "SandboxCPUNearLimit", "SandboxReloadFailures", "SandboxComponentRestarting"):
        assert wanted in names


def test_dashboard_is_importable_and_covers_the_asked_panels():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
    assert "id" not in dash, "an imported dashboard must not carry a database id"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            assert p["targets"] and all(t["refId"] for t in p["targets"]), p["title"]
    queries = " ".join(expr for _, expr in dashboard_queries())
    for metric in ("sandbox_up", "sandbox_calls_total", "sandbox_call_errors_total",
                   "sandbox_call_duration_seconds_bucket", "sandbox_restarts_total",
                   "sandbox_crashes_total", "sandbox_reloads_total",
                   "sandbox_reload_duration_seconds_bucket", "sandbox_resource_usage",
                   "sandbox_resource_limit", "sandbox_security_violations_total",
                   "sandbox_security_events_total", "sandbox_actor_restarts_total"):
        assert metric in queries, f"no panel shows {metric}"


def test_provisioning_files_point_at_the_dashboard():
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "sandbox.yaml").read_text())
    assert provider["apiVersion"] == 1
    [p] = provider["providers"]
    assert p["type"] == "file" and p["options"]["path"]
    source = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())
    assert source["datasources"][0]["type"] == "prometheus"


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool (Prometheus) is not installed; the metric names were "
                           "still checked above")
def test_promtool_accepts_the_rules():
    done = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True,
                          text=True, timeout=50)
    assert done.returncode == 0, done.stdout + done.stderr
