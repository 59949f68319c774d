"""Fixtures for the attack suite: real runtimes, real sandboxes, host-side checks.

Each test starts a runtime (sampling every 0.2 s so limit actions come quickly),
creates sandboxes in it and attacks from inside them; containment is checked from
the host (files, listeners, processes), never from what the sandbox says. The
runtime is stopped after the test and must not have leaked processes, threads or
file descriptors.

Attacks that need code the static scan would refuse outright travel with
``sandbox.run(fn)`` under ``high-run``: the ``high`` profile with ``run()``
allowed and a higher quarantine threshold (so one test can try several ways in;
``test_attack_quarantine.py`` checks the threshold), everything else unchanged
(same guard policy, same OS layers).
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.profiles import Profile
from runtime.child import isolation
from sandbox.testing import leaks, snapshot, wait_for, warm_up

_ids = itertools.count(1)
ROOT = Path(__file__).resolve().parents[2]
COUNTER = ROOT / "examples" / "counter"
#: The high profile with run() allowed: the attacks' delivery vehicle.
HIGH_RUN = Profile.derive(
    "high", name="high-run", allow_run=True, violation_threshold=50
)
#: ``high`` and ``medium`` with ctypes allowed as well: libc calls raise no audit
#: event, so what these attacks meet is the OS layer alone, not the guard.
CTYPES = [
    Profile.derive(base, name=f"{base}-ctypes", allow_run=True, violation_threshold=50,
                   allow=Profile.derive(base).allow | {"native"})
    for base in ("high", "medium")
]
#: The OS layer must hold the same in every profile.
OS_PROFILES = ["high-ctypes", "medium-ctypes", "low"]


def host_address() -> str | None:
    """An IPv4 address of this host other than loopback (None if it has none)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def layer_missing(layer: str) -> str | None:
    """Why an OS layer is not available here (None if it is)."""
    return isolation.detect().get(layer)


def require(layer: str) -> None:
    why = layer_missing(layer)
    if why is not None:
        pytest.skip(f"isolation layer {layer} is not available on this host: {why}")


class World:
    """A runtime plus helpers to make sandboxes and look at the audit log."""

    def __init__(self, rt: Any, tmp: Path) -> None:
        self.rt = rt
        self.tmp = tmp
        self._outside: Path | None = None

    def sandbox(self, profile: str = "high-run", app: Path | dict | None = None, **opts: Any) -> Any:
        sid = opts.pop("id", f"atk{next(_ids)}")
        path = COUNTER
        if isinstance(app, dict):
            path = self.tmp / f"app-{sid}"
            path.mkdir()
            for name, src in app.items():
                (path / name).write_text(textwrap.dedent(src))
        elif app is not None:
            path = app
        return self.rt.create_sandbox(sid, path, profile=profile, **opts)

    def events(self, sandbox_id: str, prefix: str = "") -> list[dict[str, Any]]:
        return [e for e in self.rt.audit_events(sandbox_id) if e["event"].startswith(prefix)]

    def wait_event(self, sandbox_id: str, prefix: str, timeout: float = 10.0) -> dict[str, Any]:
        return wait_for(
            lambda: next(iter(self.events(sandbox_id, prefix)), None),
            timeout,
            message=f"no audit event {prefix!r} for {sandbox_id}: {self.events(sandbox_id)}",
        )

    def workdir(self, sb: Any) -> Path:
        return Path(sb.info()["workdir"])

    def marker(self, name: str = "marker") -> Path:
        """A path outside every workdir, in a directory anyone may write to (so only
        the guard, not file permissions, stands in the way)."""
        if self._outside is None:
            self._outside = Path(tempfile.mkdtemp(prefix="sandbox-attack-"))
            os.chmod(self._outside, 0o777)
        return self._outside / name

    def close(self) -> None:
        if self._outside is not None:
            shutil.rmtree(self._outside, ignore_errors=True)


def attempt(sb: Any, fn: Callable[..., Any], *args: Any, timeout: float = 10.0) -> Any:
    """Run ``fn`` in the sandbox; return its result, or the exception it ended with."""
    import sys

    import cloudpickle

    module = sys.modules.get(fn.__module__)
    if module is not None and module.__name__ not in ("builtins", "os", "posix"):
        # The sandbox cannot import the test module: send the function by value.
        cloudpickle.register_pickle_by_value(module)
    try:
        return sb.run(fn, *args, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - the point is to look at it
        return exc


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    import sandbox

    warm_up()
    before = snapshot()
    # tmp_path is private to root (0700): the sandboxes' UIDs may not even look in.
    w: World | None = None
    rt = sandbox.start(name=f"sec{os.getpid()}x{next(_ids)}", monitor_interval=0.2)
    try:
        for profile in (HIGH_RUN, *CTYPES):
            rt.register_profile(profile)
        w = World(rt, tmp_path)
        yield w
    finally:
        rt.stop()
        if w is not None:
            w.close()
    problems = leaks(before, timeout=30)  # settling takes longer on a loaded machine
    if problems:
        pytest.fail("the test leaked:\n  " + "\n  ".join(problems), pytrace=False)
