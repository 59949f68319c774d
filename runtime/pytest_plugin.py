"""pytest plugin (registered through the ``pytest11`` entry point): fixtures for sandboxes.

- ``sandbox_runtime``: a started runtime per test, stopped afterwards; the test
  fails if it leaked processes, threads or file descriptors.
- ``sandbox_factory``: creates sandboxes with unique ids from a path or a dict of
  ``{filename: source}``; destroys them afterwards.
- ``app_dir``: writes a dict of ``{filename: source}`` into a fresh directory.
"""

from __future__ import annotations

import itertools
import textwrap
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from .testing import leaks, snapshot, wait_for, warm_up

__all__ = ["sandbox_runtime", "sandbox_factory", "app_dir", "wait_for"]

_ids = itertools.count(1)


def write_app(directory: Path, files: Mapping[str, str]) -> Path:
    """Write ``{relative filename: source}`` under ``directory`` (dedented); returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return directory


@pytest.fixture
def app_dir(tmp_path: Path) -> Callable[[Mapping[str, str]], Path]:
    """``app_dir({"app.py": "..."})`` writes an app into a fresh directory and returns it."""
    counter = itertools.count(1)

    def make(files: Mapping[str, str]) -> Path:
        return write_app(tmp_path / f"app{next(counter)}", files)

    return make


@pytest.fixture
def sandbox_runtime(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A started runtime for this test; fails the test if it leaked anything."""
    import runtime

    warm_up()
    before = snapshot()
    rt = runtime.start(name=f"test{next(_ids)}")
    try:
        yield rt
    finally:
        rt.stop()
    problems = leaks(before)
    if problems:
        pytest.fail("the test leaked:\n  " + "\n  ".join(problems), pytrace=False)


@pytest.fixture
def sandbox_factory(sandbox_runtime: Any, tmp_path: Path) -> Callable[..., Any]:
    """``sandbox_factory(path_or_files, **options)`` -> a started Sandbox with a unique id."""
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
        except Exception:
            pass
