"""A sandbox cannot raise its own cgroup limits or leave its cgroup, and its task
count is bounded by the pids controller; judged from the host's view of the
cgroup files and of ``/proc/<pid>/cgroup``. ``low`` runs the attack with ctypes
and raw writes allowed; ``high-run`` and ``medium`` have the guard in front too.
"""

from __future__ import annotations

import os

import pytest
from conftest import attempt, layer_missing

pytestmark = pytest.mark.timeout(90)


def _escape(cg: dict) -> dict:
    import os

    out = {}
    for ctl, d in cg.items():
        for name, value in (("pids.max", "max"), ("memory.max", "max"),
                            ("memory.limit_in_bytes", "-1")):
            path = os.path.join(d, name)
            if os.path.exists(path):
                try:
                    with open(path, "w") as fh:
                        fh.write(value)
                    out[f"{ctl}:{name}"] = "written"
                except Exception as exc:  # noqa: BLE001
                    out[f"{ctl}:{name}"] = type(exc).__name__
        parent = os.path.dirname(os.path.dirname(d))  # above the runtime's group
        try:
            with open(os.path.join(parent, "cgroup.procs"), "w") as fh:
                fh.write(str(os.getpid()))
            out[f"{ctl}:leave"] = "moved"
        except Exception as exc:  # noqa: BLE001
            out[f"{ctl}:leave"] = type(exc).__name__
    return out


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read().strip()


@pytest.mark.parametrize("profile", ["high-run", "medium", "low"])
def test_the_sandbox_cannot_change_or_leave_its_cgroup(world, profile):
    if layer_missing("cgroup-pids"):
        pytest.skip(f"no pids cgroup here: {layer_missing('cgroup-pids')}")
    sb = world.sandbox(profile=profile)
    info = sb.info()
    cgroups = info["cgroups"]
    before = {ctl: open(f"/proc/{sb.pid}/cgroup").read() for ctl in cgroups}
    pids_max = _read(os.path.join(cgroups["pids"], "pids.max"))
    assert pids_max != "max", "the pids controller must bound the sandbox's tasks"
    got = attempt(sb, _escape, cgroups)
    assert "written" not in str(got) and "moved" not in str(got), got
    assert _read(os.path.join(cgroups["pids"], "pids.max")) == pids_max
    assert open(f"/proc/{sb.pid}/cgroup").read() == before["pids"]
    with open(os.path.join(cgroups["pids"], "cgroup.procs")) as fh:
        assert str(sb.pid) in fh.read().split()


def _threads(n: int) -> int:
    import threading

    stop = threading.Event()
    started = 0
    threads = []
    try:
        for _ in range(n):
            t = threading.Thread(target=stop.wait, daemon=True)
            t.start()
            threads.append(t)
            started += 1
    except RuntimeError:  # "can't start new thread": the pids limit said no
        pass
    finally:
        stop.set()
        for t in threads:
            t.join()
    return started


@pytest.mark.parametrize("profile", ["high-run", "medium", "low"])
def test_thread_count_is_bounded_by_the_pids_controller(world, profile):
    if layer_missing("cgroup-pids"):
        pytest.skip(f"no pids cgroup here: {layer_missing('cgroup-pids')}")
    sb = world.sandbox(profile=profile)
    d = sb.info()["cgroups"]["pids"]
    # A low ceiling for this test only (written from the host, as the runtime does).
    with open(os.path.join(d, "pids.max"), "w") as fh:
        fh.write("64")
    started = attempt(sb, _threads, 500)
    assert isinstance(started, int) and started < 64, started
    assert sb.call("counter", "incr") == 1
