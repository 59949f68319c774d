"""Soak: each component killed over and over while threads call sandboxes and a
reload loop runs (issue 12). No call to a healthy sandbox fails except with a
documented retriable error (ActorDead, CallTimeout: "retry once its supervisor has
restarted it"), no version number is reused, no sandbox is lost.

Sized for a 2-core machine shared with other test runs (about 30 s for all the
components together): SANDBOXES sandboxes, CALLERS threads, KILLS kills each.
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers import wait_for
from test_durability import COUNTER, HELPER_V1, counter_src

import runtime
import sandbox

SANDBOXES = 6
CALLERS = 4
KILLS = 20
RETRIABLE = (runtime.ActorDead, runtime.CallTimeout)

COMPONENTS = ["manager", "compiler", "versions", "watcher", "monitor", "security", "sandboxes"]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("component", COMPONENTS)
def test_killing_a_component_loses_no_sandbox_call_or_version(tmp_path: Path, component: str):
    app = tmp_path / "app"
    shutil.copytree(COUNTER, app, ignore=shutil.ignore_patterns("__pycache__"))
    (app / "counter.py").write_text(counter_src(1))
    (app / "helper.py").write_text(HELPER_V1)
    reload_app = tmp_path / "reloaded"
    shutil.copytree(app, reload_app)
    # The root supervisor must not give up on a component killed KILLS times in a row.
    with sandbox.start(state_dir=tmp_path / "state", max_restarts=10 * KILLS) as rt:
        sbs = [rt.create_sandbox(f"s{i}", app) for i in range(SANDBOXES)]
        reloaded = rt.create_sandbox("reloaded", reload_app)
        stop = threading.Event()
        done: Counter[str] = Counter()
        errors: list[BaseException] = []
        retried: Counter[str] = Counter()

        def caller(seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                sb = rng.choice(sbs)
                try:
                    sb.call("counter", "incr", timeout=20)
                    done[sb.id] += 1
                except RETRIABLE as exc:
                    retried[type(exc).__name__] += 1
                except BaseException as exc:  # anything else fails the test
                    errors.append(exc)
                    return

        versions: list[int] = []

        def reloader() -> None:
            n = 1
            while not stop.is_set():
                (reload_app / "counter.py").write_text(counter_src(n + 1))
                try:
                    report = reloaded.hot_reload(timeout=20)
                except runtime.SandboxError:
                    continue  # a component it needs is restarting: the next round retries
                if report.versions:
                    versions.append(report.versions["counter"])
                    n += 1

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(CALLERS)]
        threads.append(threading.Thread(target=reloader))
        for t in threads:
            t.start()
        try:
            for _ in range(KILLS):
                ref = rt.component(component, timeout=30)
                ref.kill(runtime.ExitReason("exception", "killed by the soak"))
                wait_for(lambda: rt.component(component, timeout=30) != ref, 30)
                if component == "sandboxes":  # the next kill once every sandbox is back
                    wait_for(lambda: all(s["status"] == "running" for s in rt.list_sandboxes()), 60)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert errors == []
        listed = {s["id"]: s for s in rt.list_sandboxes()}
        assert set(listed) == {sb.id for sb in sbs} | {"reloaded"}
        wait_for(lambda: all(s["status"] == "running" for s in rt.list_sandboxes()), 60)
        assert versions == sorted(set(versions)), "a version number was reused"
        history = [v.version for v in reloaded.module_versions("counter")]
        assert history == sorted(set(history))
        current = rt.module_versions("reloaded")["counter"]
        assert current == (versions[-1] if versions else 1)
        assert _call(reloaded, "version") == current  # what runs is what is recorded
        if component != "sandboxes":
            # Their processes never stopped: every increment is still there.
            assert [_call(sb, "get") for sb in sbs] == [done[sb.id] for sb in sbs]
            assert not retried, f"calls failed while only {component} was killed: {retried}"


def _call(sb, request):
    deadline = time.monotonic() + 30
    while True:
        try:
            return sb.call("counter", request, timeout=20)
        except RETRIABLE:
            if time.monotonic() > deadline:
                raise
