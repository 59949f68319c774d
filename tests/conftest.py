"""Shared fixtures: every test must leave no actor thread running behind it."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

# tests/helpers.py is imported as ``helpers`` by the test modules.
sys.path.insert(0, str(Path(__file__).parent))

from helpers import ensure_attached  # noqa: E402
from suite_scheduling import shared_fixture_files, xdist_scope  # noqa: E402

# pytester runs the plugin's own tests (tests/test_plugin.py) in inner pytest sessions.
pytest_plugins = ["pytester"]

#: how long a test's actors get to finish their threads after the test returns
THREAD_GRACE = 5.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "allow_thread_leaks: skip the check that a test leaves no actor thread running",
    )


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: absent without xdist
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """How ``pytest -n N`` (the README's command) spreads the tests over workers.

    Each test goes to whichever worker is free, except that a file whose tests share
    a module-scoped fixture (a Ray cluster, a served runtime, a recorded scenario) goes
    to one worker whole, in file order: the fixture is set up once, and files whose
    tests build on each other (tests/test_cluster.py) keep their order. (Not xdist's
    ``--dist loadgroup`` with marks: it renames node ids in a way pytest 9 ignores.)
    A ``--dist`` other than the default ``load`` is left to xdist.
    """
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    grouped = shared_fixture_files(config.rootpath)

    class FileOrTest(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(nodeid, grouped)

    return FileOrTest(config, log)


def _actor_of(thread: threading.Thread) -> pykka.Actor | None:
    """The pykka actor whose message loop runs in ``thread`` (None for other threads)."""
    target = getattr(thread, "_target", None)
    owner = getattr(target, "__self__", None)
    return owner if isinstance(owner, pykka.Actor) else None


@pytest.fixture(scope="session", autouse=True)
def session_data_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The same for module-scoped fixtures, which start before any test's own: without
    it their named runtimes left directories in the user's ~/.local/share/sandbox."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("session-data-home")))
        yield


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
