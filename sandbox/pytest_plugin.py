"""pytest plugin (registered through the ``pytest11`` entry point): fixtures for sandboxes.

Installing the package is enough; every test suite gets:

- ``sandbox_runtime``: a started runtime per test, stopped afterwards; the test
  errors at teardown, listing them, if it leaked processes, threads or file
  descriptors. Runtime options come from ``@pytest.mark.sandbox_runtime(**options)``.
- ``sandbox_factory``: ``sandbox_factory(app, **options)`` creates a sandbox with a
  unique id from a path or a dict of ``{filename: source}``; every sandbox it made
  is destroyed afterwards.
- ``app_dir``: ``app_dir({filename: source})`` writes an app into a fresh directory.
- the helpers of :mod:`sandbox.testing`, importable from here and also as fixtures
  of the same name: ``wait_for``, ``wait_for_reload``, ``assert_sandbox_running``,
  ``assert_hot_reload_successful``, ``stress``.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import textwrap
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from sandbox.testing import (
    StressReport,
    assert_hot_reload_successful,
    assert_sandbox_running,
    leaks,
    snapshot,
    stress,
    wait_for,
    wait_for_reload,
    warm_up,
)

__all__ = [
    "sandbox_runtime",
    "sandbox_factory",
    "app_dir",
    "write_app",
    "wait_for",
    "wait_for_reload",
    "assert_sandbox_running",
    "assert_hot_reload_successful",
    "stress",
    "StressReport",
]

_ids = itertools.count(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "sandbox_leak_timeout",
        "seconds the sandbox_runtime fixture gives a test's processes and threads to "
        "end before it reports them as leaked (default 5)",
        default="5.0",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "sandbox_runtime(**options): options for sandbox.start() in the sandbox_runtime fixture",
    )


def write_app(directory: Path, files: Mapping[str, str]) -> Path:
    """Write ``{relative filename: source}`` under ``directory`` (dedented); returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return directory


@pytest.fixture
def app_dir(tmp_path: Path) -> Callable[..., Path]:
    """``app_dir({"app.py": "..."})`` writes an app into a fresh directory and returns it."""
    counter = itertools.count(1)

    def make(files: Mapping[str, str] | None = None) -> Path:
        return write_app(tmp_path / f"app{next(counter)}", files or {})

    return make


@pytest.fixture
def sandbox_runtime(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A started runtime for this test, stopped after it.

    The test errors at teardown, naming each leak, if processes, threads or file
    descriptors it started are still there (after the ini option
    ``sandbox_leak_timeout`` seconds, default 5). Options for ``sandbox.start()``
    come from ``@pytest.mark.sandbox_runtime(**options)``.
    """
    import sandbox

    marker = request.node.get_closest_marker("sandbox_runtime")
    options = dict(marker.kwargs) if marker else {}
    options.setdefault("name", f"test{next(_ids)}")
    # A named runtime would keep its state in the user's data directory: a test's is its own.
    own_state = None if "state_dir" in options else tempfile.mkdtemp(prefix="sandbox-test-state-")
    options.setdefault("state_dir", own_state)
    warm_up()
    before = snapshot()
    rt = sandbox.start(**options)
    try:
        yield rt
    finally:
        rt.stop()
        if own_state is not None:
            shutil.rmtree(own_state, ignore_errors=True)
    problems = leaks(before, float(request.config.getini("sandbox_leak_timeout")))
    if problems:
        pytest.fail("the test leaked:\n  " + "\n  ".join(problems), pytrace=False)


@pytest.fixture
def sandbox_factory(sandbox_runtime: Any, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """``sandbox_factory(path_or_files, **options)`` -> a started Sandbox with a unique id.

    ``id=`` picks the id yourself; other options go to ``Runtime.create_sandbox``.
    """
    created: list[str] = []

    def make(app: str | Path | Mapping[str, str], **options: Any) -> Any:
        n = next(_ids)
        if isinstance(app, Mapping):
            app = write_app(tmp_path / f"sandbox-app{n}", app)
        sandbox_id = options.pop("id", f"sb{n}")
        sb = sandbox_runtime.create_sandbox(sandbox_id, app, **options)
        created.append(sandbox_id)
        return sb

    yield make
    for sandbox_id in created:
        try:
            sandbox_runtime.destroy_sandbox(sandbox_id)
        except Exception:  # already destroyed by the test
            pass


# The helpers as fixtures too (module-level names stay the plain functions).


@pytest.fixture(name="wait_for")
def _wait_for_fixture() -> Callable[..., Any]:
    """:func:`sandbox.testing.wait_for`."""
    return wait_for


@pytest.fixture(name="wait_for_reload")
def _wait_for_reload_fixture() -> Callable[..., Any]:
    """:func:`sandbox.testing.wait_for_reload`."""
    return wait_for_reload


@pytest.fixture(name="assert_sandbox_running")
def _assert_sandbox_running_fixture() -> Callable[..., Any]:
    """:func:`sandbox.testing.assert_sandbox_running`."""
    return assert_sandbox_running


@pytest.fixture(name="assert_hot_reload_successful")
def _assert_hot_reload_successful_fixture() -> Callable[..., Any]:
    """:func:`sandbox.testing.assert_hot_reload_successful`."""
    return assert_hot_reload_successful


@pytest.fixture(name="stress")
def _stress_fixture() -> Callable[..., StressReport]:
    """:func:`sandbox.testing.stress`."""
    return stress
