"""Network egress only by an explicit allowlist (``net_allow``), in every profile.

Listeners run on the host: one on an address of the host's own network interface
(allowed, ``ADDR:PORT``), one on another port of that address and one on the
host's loopback (not allowed). Judged from the host: which listeners accepted a
connection. A sandbox without ``net_allow`` reaches none of them; one with it
reaches exactly the listed one, never the host's loopback.
"""

from __future__ import annotations

import select
import socket
import time

import pytest
from conftest import attempt, host_address, layer_missing, wait_for

from runtime.errors import ConfigError

pytestmark = pytest.mark.timeout(90)


def _connect(targets: list) -> dict:
    import socket

    out = {}
    for host, port in targets:
        try:
            with socket.create_connection((host, port), timeout=3) as s:
                s.sendall(b"hi")
            out[f"{host}:{port}"] = "connected"
        except Exception as exc:  # noqa: BLE001
            out[f"{host}:{port}"] = type(exc).__name__
    return out


def _reach(sb, targets: list) -> dict:
    """``_connect`` in the sandbox, given time for every target's 3 s connect timeout
    on a loaded machine (a refused target is dropped, so it takes all of it)."""
    return attempt(sb, _connect, targets, timeout=10.0 + 4.0 * len(targets))


class Listeners:
    def __init__(self, addr: str, loopback: str = "127.0.0.1") -> None:
        self.socks: dict[str, socket.socket] = {}
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        for name, host in (("allowed", addr), ("other_port", addr), ("loopback", loopback)):
            s = socket.socket(family)
            s.bind((host, 0))
            s.listen(8)
            self.socks[name] = s

    def addr(self, name: str) -> tuple[str, int]:
        return self.socks[name].getsockname()[:2]

    def accepted(self) -> set[str]:
        got = set()
        for name, s in self.socks.items():
            s.setblocking(False)
            while select.select([s], [], [], 0.2)[0]:
                try:
                    conn, _ = s.accept()
                except BlockingIOError:
                    break
                conn.close()
                got.add(name)
        return got

    def close(self) -> None:
        for s in self.socks.values():
            s.close()


@pytest.fixture
def listeners():
    for layer in ("slirp4netns", "nftables"):
        if layer_missing(layer):
            pytest.skip(f"{layer} is not installed here: {layer_missing(layer)}")
    addr = host_address()
    if addr is None:
        pytest.skip("this host has no non-loopback IPv4 address to listen on")
    ls = Listeners(addr)
    yield ls
    ls.close()


@pytest.mark.parametrize("profile", ["high-run", "medium", "low"])
def test_only_the_allowlisted_address_is_reachable(world, listeners, profile):
    host, port = listeners.addr("allowed")
    sb = world.sandbox(profile=profile, net_allow=[f"{host}:{port}"])
    assert {"slirp4netns", "nftables", "netns"} <= set(sb.info()["isolation"])
    targets = [listeners.addr(n) for n in ("allowed", "other_port", "loopback")]
    got = _reach(sb, [list(t) for t in targets])
    assert listeners.accepted() == {"allowed"}, got


def test_the_egress_helpers_are_not_the_sandboxs_processes(world, listeners):
    """slirp4netns (and the refresher) run beside the sandbox, in the host's network
    namespace: they do not count against its process limit (1 in medium), so it is
    not restarted for them."""
    host, port = listeners.addr("allowed")
    sb = world.sandbox(profile="medium", net_allow=[f"{host}:{port}"])
    pid, since = sb.pid, time.time()
    wait_for(lambda: world.rt.resource_usage(sb.id).get("ts", 0) > since + 0.6, 15)
    usage = world.rt.resource_usage(sb.id)
    assert usage["processes"] == 1 and not usage["limit_events"], usage
    assert sb.pid == pid


@pytest.mark.parametrize("profile", ["medium", "low"])
def test_without_an_allowlist_nothing_is_reachable(world, listeners, profile):
    sb = world.sandbox(profile=profile)
    targets = [listeners.addr(n) for n in ("allowed", "other_port", "loopback")]
    _reach(sb, [list(t) for t in targets])
    assert listeners.accepted() == set()


def test_loopback_in_the_allowlist_is_the_sandbox_own(world, listeners):
    """127.0.0.1 in net_allow still means the sandbox's own loopback, never the host's."""
    _host, port = listeners.addr("loopback")
    sb = world.sandbox(profile="low", net_allow=[f"127.0.0.1:{port}"])
    got = _reach(sb, [["127.0.0.1", port], ["10.0.2.2", port]])
    assert listeners.accepted() == set(), got


@pytest.mark.parametrize("bad", ["nohost", "host:99999", ":80", "host:http"])
def test_a_bad_allowlist_entry_is_refused(world, bad):
    with pytest.raises(ConfigError, match="net_allow"):
        world.sandbox(profile="low", net_allow=[bad])


def test_an_allowlist_that_cannot_be_set_up_fails_creation(world, listeners):
    """The name cannot be resolved: the sandbox must not start (never a silent
    fallback to no allowlist, or to the host's network), and the error says why."""
    from runtime.errors import SandboxError

    with pytest.raises(SandboxError, match="cannot resolve"):
        world.sandbox(profile="low", net_allow=["does-not-exist.invalid:443"])


def test_a_missing_tool_fails_creation_naming_what_to_install(world, monkeypatch):
    """Test double, because a machine without slirp4netns cannot be made here for real:
    the host's layer detection is told slirp4netns is missing."""
    from runtime.child import isolation
    from runtime.errors import SandboxError

    detected = dict(isolation.detect())
    detected["slirp4netns"] = "slirp4netns is not installed (Debian/Ubuntu: apt-get install slirp4netns)"
    monkeypatch.setattr(isolation, "_detected", detected)
    with pytest.raises(SandboxError, match="apt-get install slirp4netns"):
        world.sandbox(profile="low", net_allow=["192.0.2.1:443"])
    assert world.sandbox(profile="low").call("counter", "incr") == 1  # no allowlist: fine


@pytest.fixture
def listeners6():
    """An IPv6 address of the host's own for this test (slirp4netns keeps fd00::/64,
    where this machine's interface sits, for itself): a documentation-range address
    on the host's ``lo``, removed afterwards; listeners on it and on ``::1``."""
    import shutil
    import subprocess
    import uuid

    for layer in ("slirp4netns", "nftables"):
        if layer_missing(layer):
            pytest.skip(f"{layer} is not installed here: {layer_missing(layer)}")
    if not socket.has_ipv6 or shutil.which("ip") is None:
        pytest.skip("no IPv6 (or no ip command) on this host")
    addr = f"2001:db8:5a:{uuid.uuid4().hex[:4]}::1"
    added = subprocess.run(["ip", "-6", "addr", "add", f"{addr}/128", "dev", "lo", "nodad"],
                           capture_output=True, check=False)
    if added.returncode != 0:
        pytest.skip(f"cannot add an IPv6 address here: {added.stderr.decode().strip()}")
    ls = Listeners(addr, loopback="::1")
    try:
        yield ls
    finally:
        ls.close()
        subprocess.run(["ip", "-6", "addr", "del", f"{addr}/128", "dev", "lo"], check=False)


@pytest.mark.parametrize("profile", ["high-run", "medium", "low"])
def test_ipv6_only_the_allowlisted_address_is_reachable(world, listeners6, profile):
    host, port = listeners6.addr("allowed")
    sb = world.sandbox(profile=profile, net_allow=[f"[{host}]:{port}"])
    targets = [listeners6.addr(n) for n in ("allowed", "other_port", "loopback")]
    got = _reach(sb, [list(t) for t in targets])
    assert listeners6.accepted() == {"allowed"}, got


def test_an_address_in_slirp4netns_own_ipv6_network_is_refused(world):
    """fd00::/64 stands for slirp4netns itself (its gateway is the host's loopback):
    never a destination, whatever the allowlist says."""
    from runtime.errors import SandboxError

    for layer in ("slirp4netns", "nftables"):
        if layer_missing(layer):
            pytest.skip(f"{layer} is not installed here: {layer_missing(layer)}")
    with pytest.raises(SandboxError, match="fd00::/64"):
        world.sandbox(profile="low", net_allow=["[fd00::2]:443"])


def test_a_name_whose_address_changes_keeps_working(world, listeners):
    """The refresher's round, run from the host as the refresher runs it (root, in
    the host's namespaces, a fresh process). Test double for the DNS answer only,
    because a record cannot be changed here for real without editing the shared
    machine's /etc/hosts: the lookup returns the name's new address."""
    import subprocess
    import sys

    name = socket.gethostname()
    try:
        first = socket.gethostbyname(name)
    except OSError:
        pytest.skip(f"this host's name {name!r} does not resolve")
    host, port = listeners.addr("allowed")
    if first == host:
        pytest.skip("this host's name already resolves to the listeners' address")
    sb = world.sandbox(profile="low", net_allow=[f"{name}:{port}"])
    assert _reach(sb, [[name, port]]) != {f"{name}:{port}": "connected"}
    assert listeners.accepted() == set()
    code = (
        "import sys\n"
        "from runtime.child import egress\n"
        "pid, name, port, old, new = sys.argv[1], sys.argv[2], int(sys.argv[3]), *sys.argv[4:]\n"
        "got = egress.refresh(int(pid), [(name, port)], [(name, [old], port)],\n"
        "                     lambda _e: [(name, [new], port)])\n"
        "sys.exit(0 if got[0][1] == [new] else 1)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(sb.pid), name, str(port), first, host],
                          capture_output=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    got = _reach(sb, [[name, port]])
    assert got == {f"{name}:{port}": "connected"}, got
    assert listeners.accepted() == {"allowed"}, got
    hosts = (f"/proc/{sb.pid}/root/etc/hosts")
    with open(hosts) as fh:
        assert f"{host} {name}" in fh.read().splitlines()
