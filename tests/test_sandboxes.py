"""Sandboxes as a product: lifecycle API, validation, crash isolation, cleanup."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import psutil
import pytest

import runtime
import sandbox
from runtime.errors import (
    ActorFailed,
    CompileError,
    ConfigError,
    SandboxError,
    SandboxExists,
    SandboxNotFound,
    SecurityViolation,
)
from sandbox.testing import process_alive, wait_for

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parent.parent
COUNTER = ROOT / "examples" / "counter"
KVSTORE = ROOT / "examples" / "kvstore"


def test_lifecycle_of_one_sandbox(sandbox_runtime):
    rt = sandbox_runtime
    sb = rt.create_sandbox("c1", COUNTER)
    assert sb.call("counter", "incr") == 1
    sb.cast("counter", "incr")
    assert sb.call("counter", "get") == 2
    info = sb.info()
    for key in ("id", "status", "pid", "path", "entry", "profile", "limits", "restart_count",
                "uptime", "created_at", "updated_at", "last_error"):
        assert key in info, key
    assert info["status"] == "running"
    assert info["pid"] and psutil.pid_exists(info["pid"])
    assert info["path"] == str(COUNTER)
    statuses = [s for s, _t in info["status_history"]]
    assert statuses[:4] == ["initializing", "compiling", "starting", "running"]
    assert [s["id"] for s in rt.list_sandboxes()] == ["c1"]

    old_pid = info["pid"]
    sb.restart()
    assert sb.call("counter", "get") == 0, "a plain restart starts from fresh state"
    assert sb.info()["pid"] != old_pid

    sb.call("counter", ("add", 41))
    sb.restart(preserve_state=True)
    assert sb.call("counter", "get") == 41, "preserve_state carries each actor's state"

    workdir = Path(sb.info()["workdir"])
    assert workdir.is_dir()
    pid = sb.info()["pid"]
    sb.destroy()
    assert not workdir.exists()
    assert rt.list_sandboxes() == []
    wait_for(lambda: not process_alive(pid), 5)
    with pytest.raises(SandboxNotFound, match="c1"):
        rt.get_sandbox_info("c1")


def test_multi_actor_app_with_worker_pool(sandbox_runtime):
    sb = sandbox_runtime.create_sandbox("kv", KVSTORE)
    sb.call("store", ("put", "a", 1))
    sb.call("store", ("put", "b", 2))
    assert sb.call("worker-1", ("sum_keys", ["a", "b", "zzz"])) == 3
    assert sb.call("store", ("summary",)) == {"keys": 2, "total": 3}


def test_run_executes_a_function_inside_the_sandbox(sandbox_runtime):
    sb = sandbox_runtime.create_sandbox("r", COUNTER)
    assert sb.run(os.getpid) == sb.info()["pid"]
    results = sandbox_runtime.batch_run(["r"], pow, 3, 4)
    assert results[0].ok and results[0].value == 81


def test_run_is_refused_under_high_profile(sandbox_runtime):
    sb = sandbox_runtime.create_sandbox("hi", COUNTER, profile="high")
    with pytest.raises(SecurityViolation, match="high"):
        sb.run(os.getpid)


@pytest.mark.parametrize(
    "args, options, error, message",
    [
        (("ok", COUNTER), {"colour": "red"}, TypeError, "colour"),
        (("ok", COUNTER), {"restart": "sometimes"}, ConfigError, "permanent, transient, temporary"),
        (("ok", COUNTER), {"max_restarts": -1}, ConfigError, "max_restarts=-1"),
        (("ok", COUNTER), {"max_seconds": "5"}, ConfigError, "max_seconds"),
        (("ok", COUNTER), {"limits": {"memory_mb": -5}}, ConfigError, "limits.memory_mb=-5"),
        (("ok", COUNTER), {"limits": {"bogus": 1}}, ConfigError, "limits.bogus"),
        (("ok", COUNTER), {"profile": "paranoid"}, ConfigError, "high, medium, low"),
        (("ok", COUNTER), {"env": {"A": 1}}, ConfigError, "env"),
        (("ok", COUNTER), {"auto_reload": "yes"}, ConfigError, "auto_reload"),
        (("ok", COUNTER), {"entry": "app"}, ConfigError, "module:function"),
        (("ok", COUNTER), {"entry": "nope:children"}, ConfigError, "nope.py"),
        (("ok", COUNTER), {"entry": "app:missing"}, ConfigError, "'missing'"),
        (("ok", "/does/not/exist"), {}, ConfigError, "/does/not/exist"),
        (("../escape", COUNTER), {}, ConfigError, "invalid id='../escape'"),
        (("a/b", COUNTER), {}, ConfigError, "invalid id"),
        ((42, COUNTER), {}, ConfigError, "invalid id=42"),
    ],
)
def test_bad_options_are_refused_up_front(sandbox_runtime, args, options, error, message):
    with pytest.raises(error) as info:
        sandbox_runtime.create_sandbox(*args, **options)
    assert message in str(info.value)
    assert sandbox_runtime.list_sandboxes() == []
    assert os.listdir(sandbox_runtime.base_dir) == []


def test_an_entry_edited_away_is_refused_at_the_next_create(tmp_path):
    """The entry check keeps what it parsed only while the file is unchanged."""
    from actors.config import SandboxConfig

    (tmp_path / "app.py").write_text("def children():\n    return []\n")
    assert SandboxConfig.build("e1", str(tmp_path)).entry == "app:children"
    (tmp_path / "app.py").write_text("def kids():\n    return []\n")
    with pytest.raises(ConfigError, match="'children'"):
        SandboxConfig.build("e2", str(tmp_path))


def test_duplicate_id_is_refused(sandbox_runtime):
    sandbox_runtime.create_sandbox("dup", COUNTER)
    with pytest.raises(SandboxExists, match="'dup' already exists"):
        sandbox_runtime.create_sandbox("dup", COUNTER)
    assert len(sandbox_runtime.list_sandboxes()) == 1


@pytest.mark.parametrize(
    "files, error, message",
    [
        ({"app.py": "def children(:\n    pass\n"}, CompileError, "app.py:1"),
        ({"app.py": "def children():\n    return 42\n"}, SandboxError, "returned int"),
        ({"app.py": "import not_a_module_anywhere\ndef children():\n    return []\n"},
         SandboxError, "not_a_module_anywhere"),
        ({"app.py": "def children():\n    raise RuntimeError('boom at boot')\n"},
         SandboxError, "boom at boot"),
    ],
)
def test_failed_creation_leaves_nothing_behind(sandbox_runtime, app_dir, files, error, message):
    path = app_dir(files)
    before = _sandbox_pids()
    with pytest.raises(error, match=message):
        sandbox_runtime.create_sandbox("broken", path)
    assert sandbox_runtime.list_sandboxes() == []
    assert os.listdir(sandbox_runtime.base_dir) == []
    wait_for(lambda: _sandbox_pids() <= before, 5, message="the app's process outlived the failure")


def _sandbox_pids() -> set[int]:
    """Live sandbox processes: the forkserver's children."""
    from runtime.host.forkserver import server_pid

    return {p.pid for p in psutil.Process(server_pid()).children() if process_alive(p.pid)}


def _killed(sb, pid):
    """SIGKILL the sandbox's process and wait until the host has noticed."""
    downs = []
    handler = f"test-down-{sb.id}-{pid}"
    runtime.telemetry.attach(handler, "sandbox.process.down",
                             lambda e, m, md: md["sandbox"] == sb.id and downs.append(md))
    try:
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: downs, 5)
    finally:
        runtime.telemetry.detach(handler)


def test_crashed_sandbox_is_restarted_and_calls_wait_for_it(sandbox_runtime):
    sb = sandbox_runtime.create_sandbox("crashy", COUNTER)
    pid = sb.info()["pid"]
    _killed(sb, pid)
    # made while the process restarts: waits for the new one instead of failing
    assert sb.call("counter", "get", timeout=10) == 0
    wait_for(lambda: sb.info()["restart_count"] == 1 and sb.info()["status"] == "running", 5)
    assert sb.info()["pid"] != pid


def test_past_the_intensity_the_sandbox_stays_in_error(sandbox_runtime):
    rt = sandbox_runtime
    sb = rt.create_sandbox("fragile", COUNTER, max_restarts=1, max_seconds=60)
    other = rt.create_sandbox("steady", COUNTER)
    other.call("counter", ("add", 5))
    for _ in range(2):
        pid = wait_for(lambda: sb.info()["pid"], 10)
        _killed(sb, pid)
    wait_for(lambda: sb.info()["status"] == "error", 10)
    info = sb.info()
    assert "restart intensity" in info["last_error"]["message"]
    with pytest.raises(SandboxError):
        sb.call("counter", "get", timeout=1)
    assert other.call("counter", "get") == 5, "the neighbour never noticed"
    sb.restart()
    assert sb.info()["status"] == "running"
    assert sb.call("counter", "get") == 0


def test_actor_crash_inside_sandbox_is_handled_by_the_apps_supervisor(sandbox_runtime):
    sb = sandbox_runtime.create_sandbox("inner", COUNTER)
    pid = sb.info()["pid"]
    for _ in range(3):
        sb.call("counter", "incr")
        with pytest.raises(ActorFailed, match="asked to crash"):
            sb.call("counter", "crash")
        # made at once, while the app's supervisor restarts the actor: served by the new one
        assert sb.call("counter", "get") == 0
    assert sb.info()["pid"] == pid, "the process did not restart: only the actor did"


def test_batch_create_call_destroy_100_sandboxes(sandbox_runtime):
    rt = sandbox_runtime
    specs = [{"id": f"b{i}", "path": COUNTER} for i in range(100)]
    specs.append({"id": "bad id!", "path": COUNTER})
    results = rt.batch_create(specs)
    assert [r.ok for r in results] == [True] * 100 + [False]
    assert isinstance(results[-1].error, ConfigError)
    pids = [r.value.info()["pid"] for r in results[:100]]
    assert len(set(pids)) == 100
    for r in results[:100]:
        assert r.value.call("counter", "incr") == 1
    destroyed = rt.batch_destroy([f"b{i}" for i in range(100)] + ["never-was"])
    assert [d.ok for d in destroyed] == [True] * 100 + [False]
    assert isinstance(destroyed[-1].error, SandboxNotFound)
    assert rt.list_sandboxes() == []
    assert os.listdir(rt.base_dir) == []
    wait_for(lambda: not any(process_alive(p) for p in pids), 10)


def test_random_kills_never_disturb_healthy_sandboxes(sandbox_runtime):
    rt = sandbox_runtime
    healthy = [rt.create_sandbox(f"h{i}", COUNTER) for i in range(4)]
    victims = [rt.create_sandbox(f"v{i}", COUNTER, max_restarts=100, max_seconds=1) for i in range(3)]
    failures: list[BaseException] = []
    stop = threading.Event()

    def caller(sb):
        n = 0
        while not stop.is_set():
            try:
                n += 1
                assert sb.call("counter", "incr", timeout=5) == n
            except BaseException as exc:  # recorded, asserted in the main thread
                failures.append(exc)
                return

    threads = [threading.Thread(target=caller, args=(sb,)) for sb in healthy]
    for t in threads:
        t.start()
    rng = random.Random(7)
    for _ in range(12):
        victim = rng.choice(victims)
        pid = wait_for(lambda v=victim: v.info()["pid"], 10)
        _killed(victim, pid)
        victim.call("counter", "get", timeout=10)  # wait until it is back
    stop.set()
    for t in threads:
        t.join(10)
    assert failures == []
    assert all(sb.call("counter", "get") > 0 for sb in healthy)


def test_manager_crash_loses_no_sandbox(sandbox_runtime):
    rt = sandbox_runtime
    sbs = [rt.create_sandbox(f"m{i}", COUNTER) for i in range(3)]
    for i, sb in enumerate(sbs):
        sb.call("counter", ("add", i + 10))
    pids = {sb.id: sb.info()["pid"] for sb in sbs}
    manager = rt.component("manager")
    manager.kill(runtime.ExitReason("exception", "killed by the test"))
    wait_for(lambda: rt.component("manager") != manager, 5)
    listed = {s["id"]: s for s in rt.list_sandboxes()}
    assert set(listed) == {"m0", "m1", "m2"}
    for i, sb in enumerate(sbs):
        assert sb.call("counter", "get") == i + 10
        assert listed[sb.id]["pid"] == pids[sb.id]
        assert listed[sb.id]["status"] == "running"
    # and the rebuilt manager still manages them
    sbs[0].destroy()
    assert {s["id"] for s in rt.list_sandboxes()} == {"m1", "m2"}


def test_two_runtimes_in_one_process_do_not_clash(sandbox_runtime):
    with sandbox.start(name="second") as rt2:
        a = sandbox_runtime.create_sandbox("same", COUNTER)
        b = rt2.create_sandbox("same", COUNTER)
        a.call("counter", ("add", 3))
        assert b.call("counter", "get") == 0
        assert a.info()["pid"] != b.info()["pid"]


HOST_SCRIPT = textwrap.dedent(
    """
    import sys, sandbox
    rt = sandbox.start(name="victim")
    pids = [rt.create_sandbox(f"s{i}", sys.argv[1]).info()["pid"] for i in range(3)]
    print(" ".join(map(str, pids)), flush=True)
    sys.stdin.read()  # until killed
    """
)


def test_sandboxes_die_with_a_sigkilled_host(tmp_path):
    # A killed host cannot remove its temporary files (compile cache, audit log):
    # they go under tmp_path, which pytest removes.
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOST_SCRIPT, str(COUNTER)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )
    try:
        line = proc.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 3 and all(psutil.pid_exists(p) for p in pids)
        proc.kill()
        proc.wait(10)

        def gone():
            return not any(process_alive(p) for p in pids)

        # Generous for a loaded machine; a child that outlives its host never goes.
        wait_for(gone, 15.0, message="sandbox processes outlived their host")
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdin.close()
        proc.stdout.close()


def test_a_killed_compiler_leaves_no_temporary_files(tmp_path, monkeypatch):
    # Every temporary file of the runtime lands in tmp_path; a kill runs no cleanup
    # (on_exit), so what the compiler held must be the runtime's to remove.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with sandbox.start(name=f"killc{os.getpid()}") as rt:
        compiler = rt.component("compiler")
        compiler.kill(runtime.ExitReason("exception", "killed by the test"))
        wait_for(lambda: rt.component("compiler") is not compiler, 30)
        assert rt.create_sandbox("k", COUNTER).call("counter", "incr") == 1
        assert list(tmp_path.iterdir()), "the runtime kept nothing in the temporary directory"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("option", [
    {"watch_backend": "nope"}, {"alerts": {"no_such_threshold": 1}}, {"http": ("127.0.0.1",)},
], ids=["watch_backend", "alerts", "http"])
def test_options_refused_leave_no_temporary_files(tmp_path, monkeypatch, option):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(ConfigError, match=next(iter(option))):
        sandbox.start(**option)
    assert os.listdir(tmp_path) == []


def test_a_runtime_refused_at_start_leaves_no_temporary_files(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    with sandbox.start(state_dir=tmp_path / "shared"):
        kept = sorted(os.listdir(tmp_path / "tmp"))
        with pytest.raises(ConfigError, match="no other running runtime uses"):
            sandbox.start(state_dir=tmp_path / "shared")
        assert sorted(os.listdir(tmp_path / "tmp")) == kept
    assert os.listdir(tmp_path / "tmp") == []


def test_recreating_a_destroyed_id_compiles_into_a_fresh_cache(sandbox_runtime, caplog):
    for _ in range(2):
        sb = sandbox_runtime.create_sandbox("again", COUNTER)
        assert sb.call("counter", "incr") == 1
        sb.destroy()
    assert "could not write compile cache" not in caplog.text
