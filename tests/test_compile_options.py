"""Per-sandbox compile options (issue 17): ``compile_timeout``, ``compile_memory_mb``
and ``compile_cpu_seconds`` given to ``create_sandbox`` are validated like the other
options and used for every compile of that sandbox unless a call overrides them;
``Runtime.batch_hot_reload`` reloads many sandboxes with one result each."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import write

from runtime.errors import CompileError, ConfigError, SandboxNotFound

pytestmark = pytest.mark.timeout(120)

APP = {
    "app.py": "import counter\n\n\ndef children():\n"
              "    return [counter.Counter.child_spec(name='counter')]\n",
    "counter.py": "from runtime.genserver import GenServer\n\n\nclass Counter(GenServer):\n"
                  "    vsn = 1\n\n    def init(self):\n        return 0\n\n"
                  "    def handle_call(self, request, state):\n        return self.vsn, state\n",
}

#: A module whose compile and scan take over a second on a quiet 2-core machine,
#: far over the 0.5 s limit below, while the app's small modules take milliseconds
#: (0.1 s was once too short for them on a loaded 2-core machine).
BIG = "X = [" + "1, " * 150_000 + "]\n"


@pytest.mark.parametrize("option, value", [
    ("compile_timeout", 0),
    ("compile_timeout", "10"),
    ("compile_timeout", True),
    ("compile_memory_mb", 0),
    ("compile_memory_mb", 32),
    ("compile_memory_mb", 1.5),
    ("compile_cpu_seconds", -1),
    ("compile_cpu_seconds", "x"),
])
def test_bad_compile_options_are_refused_by_name(sandbox_runtime, option, value):
    with pytest.raises(ConfigError) as err:
        sandbox_runtime.create_sandbox("bad", "examples/counter", **{option: value})
    assert err.value.option == option
    assert sandbox_runtime.list_sandboxes() == []


def test_sandbox_compile_timeout_applies_until_a_call_overrides(sandbox_factory):
    sb = sandbox_factory(APP, compile_timeout=0.5)
    assert sb.info()["compile"]["compile_timeout"] == 0.5
    write(sb, "big.py", BIG)
    with pytest.raises(CompileError, match="longer than 0.5s"):
        sb.hot_reload()
    report = sb.hot_reload(compile_timeout=60.0)
    assert report.ok and report.changed == ["big"]


def address_space_limit(pid: int) -> int:
    """RLIMIT_AS of a process, as the kernel reports it."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max address space"):
            return int(line.split()[3])
    raise AssertionError(f"no address space limit line for pid {pid}")


def test_sandbox_compile_memory_is_the_workers_rlimit_until_a_call_overrides(sandbox_factory):
    """The modules of a sandbox with compile_memory_mb are compiled by a worker whose
    RLIMIT_AS is that many MiB; a reload's own value picks a worker with that one."""
    sb = sandbox_factory(APP, compile_memory_mb=200, compile_cpu_seconds=30)
    compiler = sb.runtime.component("compiler")

    def worker(mb: int) -> int:
        (found,) = [w for w in compiler.invoke("status")["workers"]
                    if w["memory_limit"] == mb << 20]
        return found["pid"]

    assert address_space_limit(worker(200)) == 200 << 20
    write(sb, "extra.py", "Y = 1\n")
    assert sb.hot_reload(compile_memory_mb=300).changed == ["extra"]
    assert address_space_limit(worker(300)) == 300 << 20


def test_batch_hot_reload_one_result_each(sandbox_factory):
    good, bad = sandbox_factory(APP), sandbox_factory(APP)
    write(good, "counter.py", APP["counter.py"].replace("vsn = 1", "vsn = 2"))
    write(bad, "counter.py", "def broken(:\n")
    results = good.runtime.batch_hot_reload(
        [{"id": good.id, "extra": "x"}, bad.id, "missing"], workers=3)
    assert [r.id for r in results] == [good.id, bad.id, "missing"]
    assert results[0].ok and results[0].value.changed == ["counter"]
    assert not results[1].ok and isinstance(results[1].error, CompileError)
    assert not results[2].ok and isinstance(results[2].error, SandboxNotFound)
    assert good.call("counter", "vsn") == 2 and bad.call("counter", "vsn") == 1


def test_batch_hot_reload_refuses_a_spec_without_id(sandbox_runtime):
    with pytest.raises(ConfigError, match="id"):
        sandbox_runtime.batch_hot_reload([{"modules": ["counter"]}])
