"""Child-process actors: runtime.host.process (host side), runtime.child.boot (inside), runtime.host.forkserver.

The apps the children run are in ``tests/apps``. Every test checks, on the way out,
that it left no sandbox process, thread, socket or pipe behind.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from fractions import Fraction
from pathlib import Path

import psutil
import pytest
from helpers import Recorder, wait_for

from runtime.actor import ExitReason, Reply, monitor
from runtime.errors import (
    ActorDead,
    ActorError,
    ActorFailed,
    CallTimeout,
    NoSuchActor,
)
from runtime.host import forkserver
from runtime.host.output import OutputLog
from runtime.host.process import (
    KILL_MARGIN,
    ChildAhead,
    ProcessRef,
    SandboxBootError,
    describe_exit,
    process_spec,
    start_process,
)
from runtime.supervisor import Supervisor

pytestmark = pytest.mark.timeout(60)

TESTS = Path(__file__).resolve().parent
ECHO = "apps.echo:children"
CRASHER = "apps.crasher:children"


def start(entry: str = ECHO, **opts) -> ProcessRef:
    opts.setdefault("app_path", str(TESTS))
    return start_process(entry, **opts)


# -- leak checks -----------------------------------------------------------------------


def _sandbox_pids() -> set[int]:
    """Processes below the host that are not multiprocessing's helpers."""
    helpers = forkserver.helper_pids()
    pids = {p.pid for p in psutil.Process().children(recursive=True) if p.pid not in helpers}
    server = forkserver.server_pid()
    if server is not None:
        try:
            pids |= {p.pid for p in psutil.Process(server).children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
    return pids


def _io_fds() -> set[tuple[int, str]]:
    """This process's sockets and pipes."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(("socket:", "pipe:")):
            out.add((int(fd), target))
    return out


@pytest.fixture(scope="module", autouse=True)
def warm_forkserver():
    """Start the process-global forkserver (and its fds) before the first leak snapshot."""
    ref = start()
    ref.stop()


@pytest.fixture(autouse=True)
def no_leaks(warm_forkserver):
    procs, threads, fds = _sandbox_pids(), set(threading.enumerate()), _io_fds()
    yield

    def clean() -> bool:
        return (
            not (_sandbox_pids() - procs)
            and not (set(threading.enumerate()) - threads)
            and not (_io_fds() - fds)
        )

    try:
        wait_for(clean, timeout=10)
    except AssertionError:
        pass
    assert _sandbox_pids() - procs == set(), "sandbox processes left running"
    assert {t.name for t in set(threading.enumerate()) - threads} == set(), "threads left running"
    assert _io_fds() - fds == set(), "sockets or pipes left open"


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# -- basics ----------------------------------------------------------------------------


def test_call_cast_and_system_round_trip():
    ref = start(name="basic")
    try:
        assert sorted(ref.names) == ["counter", "echo"]
        assert ref.call("echo", {"a": (1, 2), "b": {3}}) == {"a": (1, 2), "b": {3}}
        assert ref.call("counter", "pid") == ref.pid != os.getpid()
        ref.cast("counter", 5)
        ref.cast_many("counter", [1, 2, 3])
        assert ref.call("counter", "get") == 11
        assert ref.system("ping") == "pong"
        assert ref.system("names") == ["counter", "echo"]
        reply = Reply()
        ref.call_into(("echo", "into"), reply)
        assert reply.wait(5) and reply.result() == "into"
    finally:
        assert ref.stop().kind == "shutdown"
    assert not ref.is_alive()
    with pytest.raises(ActorDead):
        ref.call("echo", 1)


def test_errors_map_to_runtime_errors():
    ref = start(name="errors")
    try:
        with pytest.raises(ActorFailed) as failed:
            ref.call("counter", "fail")
        assert "ValueError: asked to fail" in str(failed.value)
        assert 'apps/echo.py", line' in failed.value.remote_traceback

        with pytest.raises(NoSuchActor) as missing:
            ref.call("nobody", 1)
        assert "nobody" in str(missing.value) and "echo" in str(missing.value)

        wait_for(lambda: "counter" in ref.system("names"), message="counter restarted")
        with pytest.raises(ActorError, match="cannot send a _thread.lock"):
            ref.call("counter", "unencodable")
        with pytest.raises(TypeError, match="cannot send"):
            ref.call("echo", threading.Lock())  # refused before anything is sent

        with pytest.raises(CallTimeout):
            ref.call("counter", "slow", timeout=0.05)
        assert ref.call("echo", "after the timeout") == "after the timeout"
        assert ref.call("counter", "get") == 0  # the slow call finished, its reply dropped
        assert ref.is_alive()
    finally:
        ref.stop()


def test_thousand_concurrent_calls_from_eight_threads():
    ref = start(name="concurrent")
    errors: list[BaseException] = []
    gate = threading.Barrier(8)

    def worker(tid: int) -> None:
        try:
            gate.wait(5)
            for i in range(125):
                request = ("t", tid, i)
                target = "echo" if i % 2 else "counter"
                if target == "echo":
                    assert ref.call("echo", request) == request
                else:
                    ref.cast("counter", 1)
                    assert ref.call("echo", [tid, i]) == [tid, i]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors[:3]
        assert ref.call("counter", "get") == 8 * 63
    finally:
        ref.stop()


def test_cast_to_a_missing_name_is_reported():
    ref = start(name="casts")
    try:
        with Recorder("process.cast_dropped") as rec:
            ref.cast("nobody", 1)
            ref.call("echo", "flush")  # the notice was sent before this reply
            wait_for(lambda: rec.events, message="cast_dropped reported")
        assert rec.events[0].metadata["target"] == "nobody"
        assert "no actor named 'nobody'" in rec.events[0].metadata["reason"]
    finally:
        ref.stop()


def test_env_cwd_and_boot_args(tmp_path):
    ref = start("apps.echo:env_and_cwd", env={"SANDBOX_TEST_VAR": "42"}, cwd=str(tmp_path))
    try:
        assert ref.call("where", None) == {"cwd": str(tmp_path), "var": "42"}
    finally:
        ref.stop()


def test_pickle_only_where_allowed():
    plain = start(name="plain")
    trusting = start(name="pickling", allow_pickle=True)
    trusted = start(name="trusted", allow_pickle=True, trusted=True)
    try:
        with pytest.raises(TypeError):
            plain.system("run", (pow, (2, 10)))
        assert trusting.system("run", (lambda a, b: a * b, (6, 7))) == 42
        # The child may not pickle its answer to a host that does not trust it ...
        with pytest.raises(ActorError, match="cannot send"):
            trusting.system("run", (Fraction, (1, 3)))
        # ... and may to one that does.
        assert trusted.system("run", (Fraction, (1, 3))) == Fraction(1, 3)
    finally:
        for ref in (plain, trusting, trusted):
            ref.stop()


# -- boot ------------------------------------------------------------------------------


def test_boot_failure_raises_with_the_child_traceback():
    with Recorder("process") as rec:
        with pytest.raises(SandboxBootError) as err:
            start("apps.echo:broken", name="broken")
    text = str(err.value)
    assert "RuntimeError: this app cannot start" in text
    assert "remote traceback" in text and "apps/echo.py" in err.value.remote_traceback
    assert err.value.exitcode == 70
    assert [e for e in rec.named("process.boot_failed") if e.metadata["name"] == "broken"]


def test_boot_failure_on_a_missing_module():
    with pytest.raises(SandboxBootError, match="ModuleNotFoundError"):
        start("apps.no_such_module:children")


# -- ending ----------------------------------------------------------------------------


def test_graceful_stop_runs_terminate_callbacks(tmp_path):
    marker = tmp_path / "terminated"
    ref = start(args=(str(marker),), name="graceful")
    pid = ref.pid
    assert ref.call("marker", "hi") == "ok"
    with Recorder("process.exit") as rec:
        assert ref.stop().kind == "shutdown"
    assert marker.read_text() == "terminated: shutdown"
    assert ref.exitcode == 0 and _gone(pid)
    (event,) = rec.events
    assert event.metadata["expected"] is True and event.measurements["exitcode"] == 0


def test_stop_soon_stops_gracefully_and_nothing_restarts_the_child(tmp_path):
    """A destroy asks first (``stop_soon``): the child stops gracefully, its exit is
    expected (its supervisor does not restart it), and ``stop`` then reads it."""
    marker = tmp_path / "terminated"
    sup = Supervisor.start(
        [process_spec("p", ECHO, app_path=str(TESTS), args=(str(marker),))],
        strategy="one_for_one",
    )
    ref = sup.child_ref("p")
    assert isinstance(ref, ProcessRef)
    pid = ref.pid
    assert not ref.wait_exited(0)
    assert ref.stop_soon() is True  # its end is the host's: nothing restarts it
    assert ref.wait_exited(10)  # it runs nothing any more (reaped, or a zombie)
    assert _gone(pid)
    wait_for(lambda: ref._conn.down is not None, timeout=10, message="the host read its end")
    assert marker.read_text() == "terminated: shutdown"  # it stopped gracefully
    assert ref.is_alive() and sup.child_ref("p") is ref  # not failed, not restarted
    assert ref.stop_soon() is True  # asked again: still the host's
    assert ref.stop().kind == "shutdown" and ref.exitcode == 0
    sup.stop()


def test_a_stop_after_stop_soon_sends_the_child_no_second_stop(tmp_path, monkeypatch):
    """``stop()`` after ``stop_soon()`` (a destroy's order) waits for the exit the
    first request started: the child is asked to stop once, not once more while it
    exits (a frame, a system call and a kick of the reader for nothing)."""
    ref = start(args=(str(tmp_path / "terminated"),), name="asked-once")
    channel = ref._conn.channel
    sent: list[str] = []
    send = channel.send

    def counted(kind, ref_, op, payload):
        sent.append(op)
        return send(kind, ref_, op, payload)

    monkeypatch.setattr(channel, "send", counted)
    assert ref.stop_soon() is True
    assert ref.stop().kind == "shutdown" and ref.exitcode == 0
    assert sent.count("stop") == 1
    assert (tmp_path / "terminated").read_text() == "terminated: shutdown"


def test_a_child_counts_as_exited_from_its_exit_not_its_reap():
    """``Child.wait_exited`` answers from the child's pidfd: an exited child that
    its parent has not reaped yet (a zombie) runs nothing any more."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: waits for its cue, then exits
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    child = forkserver.Child(pid)
    try:
        assert not child.wait_exited(0)
        os.write(w, b"x")
        assert child.wait_exited(10)
        assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # not reaped yet
        assert not child.exited.is_set()
    finally:
        os.close(w)
        os.waitpid(pid, 0)
        child.close()


def test_stop_soon_of_a_child_whose_end_was_read_as_unexpected_says_so():
    """A child that died before the host asked it to stop fails its actor (its
    supervisor may restart it): ``stop_soon`` then does not claim its end, so a
    destroy does not remove its sandbox's remains at its reap."""
    ref = start(name="died-first")
    down = Reply()
    monitor(ref, down.set_result)
    os.kill(ref.pid, 9)
    assert down.wait(10) and down.result().reason.abnormal
    assert ref.stop_soon() is False


def test_stop_soon_has_a_parked_reader_read_the_eof_while_the_child_exits(
        tmp_path, monkeypatch):
    """A reader parked behind leading callers reads the child's EOF at once after
    stop_soon (not when stop() kicks it, after the exit), so the exit is read
    while the child exits."""
    from runtime.host import parking

    monkeypatch.setattr(parking, "PERIOD", 3600.0)  # parked: only a kick wakes it
    ref = start(args=(str(tmp_path / "terminated"),), name="parked")
    conn = ref._conn
    # A caller reading its own reply leads; the reader thread, woken by that reply,
    # parks behind it (a call or two: it may have been elsewhere the first time).
    wait_for(lambda: ref.call("marker", "hi") == "ok" and bool(conn._cv._waiters),
             message="the reader parks")
    ref.stop_soon()
    wait_for(lambda: conn.down is not None, timeout=10, message="the reader read the EOF")
    assert ref.stop().kind == "shutdown" and ref.exitcode == 0


def test_a_supervisor_stops_its_idle_process_on_the_calling_thread(tmp_path):
    """The process actor's ending is the runtime's (a graceful close, bounded by its
    own timeouts): a supervisor's stop runs it in place, and the child still stops
    gracefully."""
    marker = tmp_path / "terminated"
    sup = Supervisor.start(
        [process_spec("p", ECHO, app_path=str(TESTS), args=(str(marker),))])
    ref = sup.child_ref("p")
    pid = ref.pid
    threads: list[int] = []
    monitor(ref, lambda d: threads.append(threading.get_ident()))
    assert sup.stop().kind == "shutdown"
    assert threads == [threading.get_ident()]
    assert marker.read_text() == "terminated: shutdown" and ref.exitcode == 0 and _gone(pid)


def test_a_stop_with_less_time_than_the_processs_close_leaves_it_to_its_thread(tmp_path):
    """In place, nothing could abandon a close that overran the stop's timeout:
    with less time left than the process's shutdown and kill, its own thread
    closes it, as before."""
    marker = tmp_path / "terminated"
    sup = Supervisor.start(
        [process_spec("p", ECHO, app_path=str(TESTS), args=(str(marker),))])
    ref = sup.child_ref("p")
    threads: list[int] = []
    monitor(ref, lambda d: threads.append(threading.get_ident()))
    sup.stop(timeout=ref._actor.shutdown)  # less than shutdown + KILL_MARGIN
    assert threads == [ref._actor._thread.ident]
    assert marker.read_text() == "terminated: shutdown" and ref.exitcode == 0


def test_host_eof_makes_the_child_stop_and_exit(tmp_path):
    marker = tmp_path / "terminated"
    ref = start(args=(str(marker),), name="eof")
    pid = ref.pid
    ref._conn.channel.close()  # the host end of the socket goes away
    wait_for(lambda: _gone(pid), timeout=10, message="child exits on EOF")
    assert marker.read_text() == "terminated: shutdown"  # it stopped gracefully
    reason = ref.join(5)
    assert reason is not None and reason.kind == "normal" and "code 0" in reason.message


def test_stop_kills_the_process_group_of_a_child_that_does_not_stop(tmp_path):
    ref = start("apps.stubborn:children", name="stubborn", shutdown=0.5)
    pid, grandchild = ref.pid, ref.call("spawner", "pid")
    assert psutil.Process(grandchild).ppid() == pid
    with pytest.raises(CallTimeout):
        ref.system("hang", timeout=0.05)  # its reader is stuck from now on
    t0 = time.monotonic()
    assert ref.stop().kind == "shutdown"
    assert time.monotonic() - t0 >= 0.4  # it waited out the grace first (a lower bound: no upper
    # one, which a loaded machine could break; the test's timeout stands for "not never")
    assert ref.exitcode == -9
    assert _gone(pid)
    wait_for(lambda: _gone(grandchild), message="the grandchild died with the group")


def test_kill_ends_the_whole_process_group_at_once(tmp_path):
    marker = tmp_path / "terminated"
    ref = start(args=(str(marker),), name="killed")
    pid = ref.pid
    ref.kill()
    reason = ref.join(10)
    assert reason is not None and reason.kind == "killed"
    assert _gone(pid) and not marker.exists()
    assert ref.exitcode == -9


def test_escalation_in_the_child_exits_with_a_distinctive_code():
    ref = start("apps.echo:fragile", name="fragile")
    with pytest.raises(ActorFailed):
        ref.call("counter", "fail")
    reason = ref.join(10)
    assert reason is not None and reason.kind == "exit"
    assert "exited with code 71" in reason.message and "escalation" in reason.message


@pytest.mark.parametrize(
    ("action", "message"),
    [("sigkill", "killed by SIGKILL"), ("exit3", "exited with code 3"), ("segfault", "killed by SIGSEGV")],
)
def test_crashed_children_are_restarted_while_siblings_serve(action, message):
    sup = Supervisor.start(
        [
            process_spec("a", CRASHER, app_path=str(TESTS)),
            process_spec("b", ECHO, app_path=str(TESTS)),
            process_spec("c", CRASHER, app_path=str(TESTS)),
        ],
        strategy="one_for_one",
        max_restarts=10,
        max_seconds=5,
    )
    stop = threading.Event()
    served = {"b": 0, "c": 0}
    errors: list[BaseException] = []

    def siblings() -> None:
        b, c = sup.child_ref("b"), sup.child_ref("c")
        i = 0
        while not stop.is_set():
            i += 1
            try:
                assert b.call("echo", i) == i
                served["b"] += 1
                assert c.call("echo", -i) == -i
                served["c"] += 1
            except BaseException as exc:
                errors.append(exc)
                return

    try:
        old = sup.child_ref("a")
        sibling_pids = (sup.child_ref("b").pid, sup.child_ref("c").pid)
        downs = []
        monitor(old, downs.append)
        caller = threading.Thread(target=siblings)
        caller.start()
        wait_for(lambda: served["c"] > 10 or errors, message="siblings serving")
        with pytest.raises(ActorDead):
            old.call("crasher", action)
        wait_for(lambda: downs, message="the crashed process actor is down")
        assert downs[0].reason.kind == "exit" and downs[0].reason.message.startswith(message)
        new = wait_for(
            lambda: (r := sup.child_ref("a")) is not None and r != old and r.is_alive() and r,
            message="restarted",
        )
        assert new.call("echo", "back") == "back" and new.pid != old.pid
        before = dict(served)
        wait_for(lambda: served["c"] > before["c"] + 10 or errors, message="siblings still serving")
        stop.set()
        caller.join(10)
        assert not errors, errors
        assert (sup.child_ref("b").pid, sup.child_ref("c").pid) == sibling_pids
    finally:
        stop.set()
        sup.stop()


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ("garbage", "undecodable"),
        ("truncated", "mid-frame"),
        ("oversized", "over max_frame"),
        ("pickle", "does not allow pickling"),
    ],
)
def test_protocol_violations_close_that_child_only(action, message):
    sibling = start(name="sibling")
    bad = start(CRASHER, name=f"bad-{action}")
    pid = bad.pid
    try:
        with Recorder("process") as rec:
            with pytest.raises(ActorDead):
                bad.call("crasher", action)
            reason = bad.join(10)
        assert reason is not None and reason.kind == "protocol", reason
        assert message in reason.message
        (event,) = rec.named("process.protocol_error", pid=pid)
        assert message in event.metadata["error"]
        assert rec.named("process.exit", pid=pid)
        assert _gone(pid)
        assert sibling.call("echo", action) == action  # the host carries on
        with pytest.raises(ActorDead):
            bad.call("echo", 1)
    finally:
        sibling.stop()
        bad.stop()


# -- pieces ----------------------------------------------------------------------------


def _asked_ahead() -> tuple[forkserver.Pending, int, socket.socket, list]:
    """A child asked of the fork server (not started): its pending request, its pid
    once it waits for its start, the host's end of its channel, what to close."""
    host, theirs = socket.socketpair()
    null = os.open(os.devnull, os.O_WRONLY)
    server = psutil.Process(forkserver.ensure_running())
    before = {p.pid for p in server.children()}
    pending = forkserver.begin((theirs.fileno(), null, null))
    new = wait_for(lambda: {p.pid for p in server.children()} - before, 10)
    (pid,) = new
    # blocked reading the pipe its start comes on
    wait_for(lambda: psutil.Process(pid).status() == psutil.STATUS_SLEEPING, 10)
    return pending, pid, host, [theirs, null]


def test_a_child_asked_ahead_runs_nothing_until_its_start():
    pending, pid, host, extra = _asked_ahead()
    try:
        host.setblocking(False)
        with pytest.raises(BlockingIOError):
            host.recv(16)  # forked, waiting: it ran nothing, said nothing
        host.setblocking(True)
        host.settimeout(10)
        child = pending.start(socket.socket.sendall, (b"started",))
        assert child.pid == pid
        assert host.recv(16) == b"started"
        wait_for(lambda: child.exitcode is not None, 10)
        assert child.exitcode == 0
        child.close()
    finally:
        host.close()
        extra[0].close()
        os.close(extra[1])


def test_a_child_given_up_before_its_start_is_killed_unused():
    pending, pid, host, extra = _asked_ahead()
    try:
        pending.cancel()
        wait_for(lambda: _gone(pid), 10, message="the child given up still runs")
        extra[0].close()  # the last copy of the child's end
        host.settimeout(10)
        assert host.recv(16) == b""  # it never wrote a byte
    finally:
        host.close()
        extra[0].close()
        os.close(extra[1])


@pytest.mark.parametrize("how", ["spawn", "begin"])
def test_a_start_larger_than_the_servers_pipe_reaches_the_child(how):
    big = os.urandom(300_000)  # the pipe the server hands it on holds 64 KiB
    host, theirs = socket.socketpair()
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        fds = (theirs.fileno(), null, null)
        if how == "spawn":
            child = forkserver.spawn(socket.socket.sendall, (big,), fds=fds)
        else:
            child = forkserver.begin(fds).start(socket.socket.sendall, (big,))
        theirs.close()
        host.settimeout(10)
        got = b""
        while len(got) < len(big):
            chunk = host.recv(1 << 16)
            assert chunk, "the child ended early"
            got += chunk
        assert got == big
        wait_for(lambda: child.exitcode is not None, 10)
        assert child.exitcode == 0
        child.close()
    finally:
        host.close()
        theirs.close()
        os.close(null)


def _ahead(output: OutputLog) -> tuple[ChildAhead, int]:
    """A ChildAhead and its child's pid, once the fork server has forked it."""
    server = psutil.Process(forkserver.ensure_running())
    before = {p.pid for p in server.children()}
    ahead = ChildAhead(output, userns=False, netns=False)
    (pid,) = wait_for(lambda: {p.pid for p in server.children()} - before, 10)
    return ahead, pid


def test_start_process_starts_the_child_asked_ahead_or_gives_it_up():
    ahead, pid = _ahead(OutputLog("ahead"))
    ref = start(name="ahead", ahead=ahead)  # its output: the ahead's
    try:
        assert ref.pid == pid and ref.call("echo", 1) == 1
    finally:
        ref.stop()
    # Another output than the one it was asked with: it is given up, another forked.
    ahead, pid = _ahead(OutputLog("ahead"))
    ref = start(name="not-ahead", ahead=ahead, output=OutputLog("other"))
    try:
        assert ref.pid != pid and ref.call("echo", 2) == 2
        wait_for(lambda: _gone(pid), 10, message="the child given up still runs")
    finally:
        ref.stop()


def _layers_on(pid: int) -> bool:
    """Whether process ``pid`` runs under its seccomp filter with no_new_privs."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            status = fh.read()
    except OSError:
        return False
    return "Seccomp:\t2" in status and "NoNewPrivs:\t1" in status


def _plan() -> dict:
    from runtime.child import isolation, seccomp

    if seccomp.unavailable():
        pytest.skip(seccomp.unavailable())
    # No state (workdir, UID, cgroups): the mount view is skipped, so not required.
    return {**isolation.plan(allow=set(), limits={}), "require": []}


def test_a_child_given_its_plan_ahead_has_its_layers_on_before_the_rest_of_its_start():
    """The isolation plan first (ChildAhead.isolate): the child applies its OS
    layers at once, then waits for the rest (the app) on its channel."""
    plan = _plan()
    output = OutputLog("plan-first")
    ahead, pid = _ahead(output)
    ahead.isolate(plan)
    # Its layers are on while the host still holds the app: nothing of it was sent.
    wait_for(lambda: _layers_on(pid), 10, message="no layers before the start")
    ref = start(name="plan-first", ahead=ahead, isolation=plan, env={"X": "1"})
    try:
        assert ref.pid == pid and ref.call("echo", 3) == 3
        assert "seccomp" in ref.isolation
    finally:
        ref.stop()


def test_a_child_given_a_plan_then_another_or_given_up_is_killed_and_gone():
    plan = _plan()
    output = OutputLog("replanned")
    ahead, pid = _ahead(output)
    ahead.isolate(plan)
    other = {**plan, "rlimits": {**plan["rlimits"], "nofile": 77}}
    ref = start(name="replanned", ahead=ahead, isolation=other)  # not the plan it got
    try:
        assert ref.pid != pid and ref.call("echo", 4) == 4
        assert _gone(pid)  # killed and waited for before the start went on
    finally:
        ref.stop()
    ahead, pid = _ahead(output)
    ahead.isolate(plan)
    wait_for(lambda: _layers_on(pid), 10)
    ahead.cancel()  # a create refused after its containment: nothing of it left
    assert _gone(pid)


def test_process_spec_and_exit_descriptions():
    spec = process_spec("worker", ECHO, restart="transient", shutdown=2.0, app_path="/x")
    assert (spec.id, spec.restart, spec.shutdown) == ("worker", "transient", 2.0 + KILL_MARGIN)
    assert spec.meta["entry"] == ECHO and spec.meta["name"] == "worker"
    assert describe_exit(-9) == ExitReason("exit", "killed by SIGKILL")
    assert describe_exit(71).message.startswith("exited with code 71 (the app's root supervisor")
    assert describe_exit(0).kind == "normal"
    with pytest.raises(ValueError, match="module:function"):
        start_process("no-colon")
