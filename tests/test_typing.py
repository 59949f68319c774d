"""The type hints hold: mypy over runtime/, actors/ and sandbox/ at the project's
setting ([tool.mypy] in pyproject.toml, explained in docs/architecture.md)."""

from __future__ import annotations

import inspect
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sandbox.api import Runtime, Sandbox, start
from sandbox.options import CreateOptions, ReloadOptions, StartOptions

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def mypy(tmp_path_factory: pytest.TempPathFactory):
    """Run mypy from the repo with the project's setting; one cache for the module
    (the first run fills it, so later runs check only what they add)."""
    exe = shutil.which("mypy", path=str(Path(sys.executable).parent))
    assert exe, "mypy is part of the test extra: pip install -e '.[test]'"
    cache = tmp_path_factory.mktemp("mypy-cache")

    def run(*files: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([exe, "--cache-dir", str(cache), "--no-error-summary", *files],
                              cwd=ROOT, capture_output=True, text=True)

    return run


@pytest.mark.timeout(240)
def test_mypy_finds_no_errors(mypy):
    proc = mypy()
    assert proc.returncode == 0, proc.stdout + proc.stderr


MISSPELT = textwrap.dedent('''
    import sandbox
    from sandbox.aio import AsyncRuntime
    from sandbox.cluster.runtime import ClusterRuntime
    from sandbox.control.client import AsyncRemoteRuntime, RemoteRuntime


    async def use(a: AsyncRuntime, r: RemoteRuntime, ar: AsyncRemoteRuntime,
                  c: ClusterRuntime, rt: sandbox.Runtime) -> None:
        rt.create_sandbox("x", "app", profle="low")  # line 10
        await a.create_sandbox("x", "app", profle="low")
        r.create_sandbox("x", "app", profle="low")
        await ar.create_sandbox("x", "app", profle="low")
        c.create_sandbox("x", "app", profle="low")
        await a.create_sandbox("x", "app", max_restarts="3")  # line 15
        c.create_sandbox("x", "app", auto_reload=True)  # not on a cluster
        await a.create_sandbox("x", "app", profile="low", max_restarts=3, auto_reload=True)
        r.create_sandbox("x", "app", limits={"memory_mb": 64}, net_allow=["a:1"])
        c.create_sandbox("x", "app", node="n1", profile="low")
        async with sandbox.start_async(histroy=3) as b:  # line 20
            pass
        async with sandbox.start_async(history="3") as b:  # line 22
            pass
        async with sandbox.start_async(history=3, listen="unix:/tmp/s") as b:
            pass
        here: sandbox.Runtime = sandbox.start(history=3)
        there: ClusterRuntime = sandbox.start(cluster="ray", history=3)
        sandbox.start(histroy=3)  # line 28
        wrong: ClusterRuntime = sandbox.start(history=3)  # line 29
        await a.hot_reload("x", modules=["m"], timeout=5.0)
        await a.hot_reload("x", modulse=["m"])  # line 31
        await a.hot_reload("x", timeout="5")  # line 32
''')


@pytest.mark.timeout(240)
def test_mypy_refuses_a_misspelt_create_option_on_every_runtime(mypy, tmp_path):
    # The runtimes that pass the options on take **options: Unpack[CreateOptions]:
    # a misspelt or mistyped option is still a type error in the caller's code.
    snippet = tmp_path / "uses_create_options.py"
    snippet.write_text(MISSPELT)
    proc = mypy(str(snippet))
    lines = [int(m.group(1)) for m in re.finditer(r":(\d+): error:", proc.stdout)]
    assert lines == [10, 11, 12, 13, 14, 15, 16, 20, 22, 28, 29, 31, 32], \
        proc.stdout + proc.stderr


def test_create_options_are_the_keyword_parameters_of_create_sandbox():
    # Runtime.create_sandbox spells each option out; CreateOptions must say the same.
    params = inspect.signature(Runtime.create_sandbox).parameters.values()
    keyword = {p.name: p.annotation for p in params if p.kind is p.KEYWORD_ONLY}
    options = {name: getattr(ann, "__forward_arg__", ann)  # TypedDict keeps ForwardRefs
               for name, ann in CreateOptions.__annotations__.items()}
    assert options == keyword


def test_start_options_are_the_keyword_parameters_of_start():
    # start() spells each option out; StartOptions (start_async's) must say the same,
    # but for the cluster's two.
    params = inspect.signature(start).parameters.values()
    keyword = {p.name: p.annotation for p in params if p.kind is p.KEYWORD_ONLY
               and p.name not in ("cluster", "ray_address")}
    options = {name: getattr(ann, "__forward_arg__", ann)
               for name, ann in StartOptions.__annotations__.items()}
    assert options == keyword


@pytest.mark.parametrize("method", [Runtime.hot_reload, Sandbox.hot_reload])
def test_reload_options_are_the_keyword_parameters_of_hot_reload(method):
    # The asyncio runtime and sandbox take **options: Unpack[ReloadOptions].
    params = inspect.signature(method).parameters.values()
    keyword = {p.name: p.annotation for p in params if p.kind is p.KEYWORD_ONLY}
    options = {name: getattr(ann, "__forward_arg__", ann)
               for name, ann in ReloadOptions.__annotations__.items()}
    assert options == keyword
