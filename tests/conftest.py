"""Shared fixtures: every test must leave no actor thread running behind it."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pykka
import pytest

# tests/helpers.py is imported as ``helpers`` by the test modules.
sys.path.insert(0, str(Path(__file__).parent))

from helpers import ensure_attached  # noqa: E402

# pytester runs the plugin's own tests (tests/test_plugin.py) in inner pytest sessions.
pytest_plugins = ["pytester"]

#: how long a test's actors get to finish their threads after the test returns
THREAD_GRACE = 5.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "allow_thread_leaks: skip the check that a test leaves no actor thread running",
    )


def _actor_of(thread: threading.Thread) -> pykka.Actor | None:
    """The pykka actor whose message loop runs in ``thread`` (None for other threads)."""
    target = getattr(thread, "_target", None)
    owner = getattr(target, "__self__", None)
    return owner if isinstance(owner, pykka.Actor) else None


@pytest.fixture(autouse=True)
def private_data_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Named runtimes keep their state under $XDG_DATA_HOME: each test gets its own
    (subprocesses inherit it), so no test sees another's, or the user's, sandboxes."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("data-home")))


@pytest.fixture(autouse=True)
def no_leaked_actor_threads(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves actor threads (daemon or not) alive after it ends.

    Threads get THREAD_GRACE seconds in total to finish (joined, not polled with
    sleep), since an actor's thread ends a moment after its stop() returns.
    """
    ensure_attached()
    before = set(threading.enumerate())
    yield
    if request.node.get_closest_marker("allow_thread_leaks"):
        return
    deadline = time.monotonic() + THREAD_GRACE
    leaked = []
    for thread in threading.enumerate():
        if thread in before or thread is threading.current_thread():
            continue
        actor = _actor_of(thread)
        if actor is None:
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            leaked.append(f"{thread.name} ({getattr(actor, 'actor_id', actor)})")
    assert not leaked, "actor threads still running after the test: " + ", ".join(leaked)
