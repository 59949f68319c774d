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

import pytest
from conftest import attempt, layer_missing

from runtime.errors import ConfigError

pytestmark = pytest.mark.timeout(90)


def _host_address() -> str | None:
    """An IPv4 address of this host other than loopback (None if it has none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


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


class Listeners:
    def __init__(self, addr: str) -> None:
        self.socks: dict[str, socket.socket] = {}
        for name, host in (("allowed", addr), ("other_port", addr), ("loopback", "127.0.0.1")):
            s = socket.socket()
            s.bind((host, 0))
            s.listen(8)
            self.socks[name] = s

    def addr(self, name: str) -> tuple[str, int]:
        return self.socks[name].getsockname()

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
    addr = _host_address()
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
    got = attempt(sb, _connect, [list(t) for t in targets])
    assert listeners.accepted() == {"allowed"}, got


@pytest.mark.parametrize("profile", ["medium", "low"])
def test_without_an_allowlist_nothing_is_reachable(world, listeners, profile):
    sb = world.sandbox(profile=profile)
    targets = [listeners.addr(n) for n in ("allowed", "other_port", "loopback")]
    attempt(sb, _connect, [list(t) for t in targets])
    assert listeners.accepted() == set()


def test_loopback_in_the_allowlist_is_the_sandbox_own(world, listeners):
    """127.0.0.1 in net_allow still means the sandbox's own loopback, never the host's."""
    _host, port = listeners.addr("loopback")
    sb = world.sandbox(profile="low", net_allow=[f"127.0.0.1:{port}"])
    got = attempt(sb, _connect, [["127.0.0.1", port], ["10.0.2.2", port]])
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
