"""Network namespaces made ahead by the fork server (runtime/child/netns.py): each
sandbox gets one of its own, never a neighbour's nor the host's, with its
loopback up; the server itself stays in the host's namespace."""

from __future__ import annotations

import os

import pytest
from conftest import require, wait_for

from runtime.child import netns
from runtime.host import forkserver

pytestmark = pytest.mark.timeout(90)


def _lo_up(pid: int) -> bool:
    """Whether ``lo`` is up in the network namespace of process ``pid`` (read by the host)."""
    with open(f"/proc/{pid}/net/dev") as fh:
        names = {line.split(":")[0].strip() for line in fh.readlines()[2:]}
    assert names == {"lo"}, names
    with open(f"/proc/{pid}/net/route"):  # readable: the namespace is there
        pass
    # /proc/<pid>/net/if_inet6 is empty while lo is down (no ::1): the host's reading
    with open(f"/proc/{pid}/net/if_inet6") as fh:
        return any(line.split()[-1] == "lo" for line in fh)


def _ipv6() -> bool:
    return os.path.exists("/proc/self/net/if_inet6")


def test_each_sandbox_has_a_network_namespace_of_its_own(world):
    """Sandboxes started one after the other (from the pool) and at once (the pool
    runs dry: the rest make their own) all have distinct namespaces, none the host's."""
    require("netns")
    sandboxes = [world.sandbox(profile=p) for p in ("high", "medium", "low", "high")]
    results = world.rt.batch_create(
        [{"id": f"burst{i}", "path": sandboxes[0].info()["path"]} for i in range(8)])
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    sandboxes += [r.value for r in results]
    host = os.readlink("/proc/self/ns/net")
    seen = [os.readlink(f"/proc/{sb.pid}/ns/net") for sb in sandboxes]
    assert host not in seen
    assert len(set(seen)) == len(seen), seen
    for sb in sandboxes:
        assert "netns" in sb.info()["isolation"]
        if _ipv6():
            assert _lo_up(sb.pid), f"lo is down in sandbox {sb.id}"
    server = forkserver.server_pid()
    assert server is not None
    # The server is away from home only inside Pool.top_up (between its unshare and
    # its setns back, ~1 ms while it refills after the burst), where it forks nothing:
    # it is single-threaded. Read from outside, it is back home once that step ends.
    wait_for(lambda: os.readlink(f"/proc/{server}/ns/net") == host,
             message="the fork server did not return to the host's network namespace")


def test_pool_makes_distinct_namespaces_and_stays_home():
    require("netns")
    pool = netns.Pool(size=3)
    home = os.readlink("/proc/self/ns/net")
    try:
        while pool.wanted():
            pool.top_up()
        assert pool.broken is None
        assert os.readlink("/proc/self/ns/net") == home
        fds = [pool.take() for _ in range(3)]
        assert pool.take() is None and pool.wanted()
        inodes = {os.fstat(fd).st_ino for fd in fds if fd is not None}
        assert len(inodes) == 3 and os.stat("/proc/self/ns/net").st_ino not in inodes
        for fd in fds:
            assert fd is not None
            os.close(fd)
    finally:
        pool.close()
