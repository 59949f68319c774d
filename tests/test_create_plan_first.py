"""A create hands its child the isolation plan first, the app after.

The child forked at the start of a create gets its plan as soon as containment is
done and applies its OS layers while the host compiles; the app (its modules, its
entry) reaches it only at its start, over its channel. Real runtimes and real
child processes; the moment the app is about to be sent is caught by wrapping
``ChildAhead.start``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import psutil
import pytest

import sandbox
import sandbox.testing
from runtime.child import isolation, seccomp
from runtime.errors import SecurityViolation
from runtime.host import forkserver
from runtime.host.process import ChildAhead

pytestmark = pytest.mark.timeout(60)

COUNTER = Path(__file__).resolve().parent.parent / "examples" / "counter"


def _needs_layers() -> None:
    for layer in ("uid", "cgroup-pids"):
        why = isolation.detect().get(layer)
        if why:
            pytest.skip(f"isolation layer {layer} is not available on this host: {why}")
    if seccomp.unavailable():
        pytest.skip(seccomp.unavailable())


def _children() -> set[int]:
    return {p.pid for p in psutil.Process(forkserver.ensure_running()).children()}


def _status(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return fh.read()
    except OSError:
        return ""


def _layers_on(pid: int) -> bool:
    """Seccomp filter and no_new_privs on, and no longer root: the OS layers."""
    status = _status(pid)
    uid = next((line.split()[1] for line in status.splitlines() if line.startswith("Uid:")), "0")
    return "Seccomp:\t2" in status and "NoNewPrivs:\t1" in status and uid != "0"


def _watch_starts(monkeypatch: pytest.MonkeyPatch, before: set[int], seen: list[Any]) -> None:
    """Wrap ChildAhead.start (where the app is sent): note the child's pid and
    whether its layers are on by then (waiting for them a bounded while)."""
    original = ChildAhead.start

    def start(self: ChildAhead, *args: Any, **kwargs: Any) -> Any:
        (pid,) = _children() - before
        try:
            sandbox.testing.wait_for(lambda: _layers_on(pid), timeout=10)
            seen.append((pid, True))
        except AssertionError:
            seen.append((pid, False))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ChildAhead, "start", start)


def test_a_creates_child_has_its_os_layers_on_before_the_app_reaches_it(monkeypatch):
    _needs_layers()
    with sandbox.start(name="plan-first") as rt:
        before = _children()
        seen: list[Any] = []
        _watch_starts(monkeypatch, before, seen)
        sb = rt.create_sandbox("first", COUNTER)
        assert sb.call("counter", "get") == 0
        assert [pid for pid, _ in seen] == [sb.pid]
        assert seen[0][1], "the child had no OS layers when the app was about to be sent"


REFUSED = """
def children():
    return __import__("o" + "s")
"""


def test_a_create_refused_after_its_childs_plan_leaves_nothing_behind(tmp_path, monkeypatch):
    """The scan refuses the app once containment sent the child its plan: the
    child (in its cgroups, as its UID) is killed and gone, its cgroups removed."""
    _needs_layers()
    app = tmp_path / "refused"
    app.mkdir()
    (app / "app.py").write_text(textwrap.dedent(REFUSED))
    planned: list[int] = []
    original = ChildAhead.isolate

    def isolate(self: ChildAhead, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        assert self.proc is not None
        planned.append(self.proc.pid)
        sandbox.testing.wait_for(lambda: _layers_on(planned[-1]), timeout=10)

    monkeypatch.setattr(ChildAhead, "isolate", isolate)
    with sandbox.start(name="plan-refused") as rt:
        before = _children()
        with pytest.raises(SecurityViolation, match="SBX103"):
            rt.create_sandbox("refused", app, entry="app:children")
        assert len(planned) == 1
        assert not (_children() - before), "the child given its plan is still there"
        assert not psutil.pid_exists(planned[0]) or psutil.Process(planned[0]).status() == "zombie"
        assert rt.list_sandboxes() == []
