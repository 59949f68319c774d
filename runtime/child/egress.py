"""Egress for a sandbox's network namespace: an allowlist, nothing else.

slirp4netns (a Debian package; what rootless Podman uses) gives the namespace a
tap device whose traffic it relays through ordinary sockets of the host, with the
host's loopback switched off (``--disable-host-loopback``) and no DNS relay
(``--disable-dns``). It relays to anywhere, so the allowlist is enforced in the
namespace itself by an nftables ruleset (through libnftables, also from Debian),
loaded as root before the sandbox's UID changes: outgoing packets leave only to
the listed addresses and ports.

IPv4 and IPv6: a name's A and AAAA records are both allowed; slirp4netns gets
``--enable-ipv6`` when an IPv6 address is listed. Its IPv6 network is fixed at
``fd00::/64`` (no option moves it) and stands for slirp4netns itself, so an IPv6
destination in that prefix cannot be reached from a sandbox: such an address in
``net_allow`` fails creation, and a name's addresses in it are left out.

Names are resolved by the sandbox process before it leaves the host's namespace,
into a private ``/etc/hosts``, and again every :data:`REFRESH_SECONDS` (Python's
resolver does not expose the records' TTL) by a small helper that stays in the
host's namespaces as root: when a name's addresses change it reloads the
firewall inside the sandbox's network namespace (from a short-lived child that
joins it) and rewrites the sandbox's ``/etc/hosts`` in place, so an allowlisted
name whose address changes keeps working. The helper holds nothing of the
sandbox's but the pipe whose end (EOF) tells it the sandbox is gone.

Called by :func:`runtime.child.isolation.apply`: :func:`start` before
``unshare`` (the helper that becomes slirp4netns must stay in the host's
namespace), :func:`finish` right after it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any

from runtime.child.mounts import HOSTS_DIR

__all__ = ["INSTALL", "REFRESH_SECONDS", "SLIRP_V6_NET", "TAP", "finish", "hosts_file",
           "kill_helper", "refresh", "resolve", "ruleset", "start"]

#: What to install when a tool is missing.
INSTALL = {
    "slirp4netns": "install slirp4netns (Debian/Ubuntu: apt-get install slirp4netns)",
    "nftables": "install libnftables (Debian/Ubuntu: apt-get install nftables)",
}
#: The tap device slirp4netns makes in the namespace (10.0.2.100/24, gateway .2).
TAP = "tap0"
#: How long the sandbox waits for slirp4netns to bring the device up.
READY_TIMEOUT = 10.0
#: How often the allowlist's names are resolved again.
REFRESH_SECONDS = 30.0
#: slirp4netns's own IPv6 network: unreachable as a destination.
SLIRP_V6_NET = "fd00::/64"

Resolved = list[tuple[str, list[str], int]]


def resolve(egress: list[Any]) -> Resolved:
    """``[(name, addresses, port)]`` for an allowlist: IPv4 and IPv6 addresses,
    without those in :data:`SLIRP_V6_NET`; OSError when an entry has none left.

    >>> resolve([("192.0.2.7", 443), ("2001:db8::1", 0)])
    [('192.0.2.7', ['192.0.2.7'], 443), ('2001:db8::1', ['2001:db8::1'], 0)]
    """
    import ipaddress
    import socket

    slirp = ipaddress.ip_network(SLIRP_V6_NET)
    out: Resolved = []
    for host, port in egress:
        try:
            infos = socket.getaddrinfo(str(host), None, socket.AF_UNSPEC, socket.SOCK_STREAM)
        except OSError as exc:
            raise OSError(f"net_allow {host}:{port}: cannot resolve {host!r}: {exc}") from None
        found = {ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in infos}
        ips = sorted((a for a in found if a not in slirp), key=lambda a: (a.version, a))
        if not ips:
            raise OSError(
                f"net_allow {host}:{port}: {host!r} is in {SLIRP_V6_NET}, the IPv6 network "
                "slirp4netns keeps for itself: a sandbox cannot reach it (list an address "
                "outside it, or the host's IPv4 address)")
        out.append((str(host), [str(a) for a in ips], int(port)))
    return out


def start(egress: list[Any]) -> dict[str, Any]:
    """Resolve the allowlist and fork the helper that becomes slirp4netns once this
    process has its own network namespace (it must itself stay in the host's).

    In a sandbox process, as root, before ``unshare(CLONE_NEWNET)``::

        helper = start([("api.example.com", 443)])
    """
    resolved = resolve(egress)
    exe = shutil.which("slirp4netns")
    if exe is None:
        raise OSError(INSTALL["slirp4netns"])
    go_r, go_w = os.pipe()
    ready_r, ready_w = os.pipe()
    exit_r, exit_w = os.pipe()
    # The pid slirp4netns must find under the host's /proc (still mounted here):
    # in a pid namespace of its own (runtime.child.userns) getpid() is not it.
    me = int(os.readlink("/proc/self"))
    pid = os.fork()
    if pid == 0:  # the helper: nothing of the sandbox's may reach slirp4netns
        try:
            os.read(go_r, 1)
            keep = {ready_w, exit_r}
            _hold_only(keep)
            for fd in keep:
                os.set_inheritable(fd, True)
            v6 = ["--enable-ipv6"] if any(":" in ip for _n, ips, _p in resolved for ip in ips) else []
            os.execv(exe, [
                exe, "--configure", "--disable-host-loopback", "--disable-dns",
                "--enable-sandbox", "--enable-seccomp", *v6,
                f"--ready-fd={ready_w}", f"--exit-fd={exit_r}", str(me), TAP,
            ])
        finally:
            os._exit(127)
    refresher = None
    if any(_is_name(name) for name, _ips, _port in resolved):
        refresher = _fork_refresher(me, egress, resolved, exit_r)
    for fd in (go_r, ready_w, exit_r):
        os.close(fd)
    # exit_w stays open for the life of this process (non-inheritable, so its own
    # children do not hold it): at its end slirp4netns (and the refresher) see EOF.
    return {"pid": pid, "go": go_w, "ready": ready_r, "exit": exit_w, "resolved": resolved,
            "refresher": refresher}


def _is_name(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False


def hosts_file(resolved: Resolved) -> str:
    """The sandbox's /etc/hosts: its own loopback names and the allowlist's names.

    >>> print(hosts_file([("api.example.com", ["192.0.2.7", "2001:db8::7"], 443)]), end="")
    127.0.0.1 localhost
    ::1 localhost
    192.0.2.7 api.example.com
    2001:db8::7 api.example.com
    """
    lines = ["127.0.0.1 localhost", "::1 localhost"]
    lines += [f"{ip} {name}" for name, ips, _port in resolved for ip in ips if _is_name(name)]
    return "\n".join(lines) + "\n"


def _fork_refresher(sandbox: int, egress: list[Any], resolved: Resolved, exit_r: int) -> int:
    """Fork the helper that resolves the allowlist's names again every
    :data:`REFRESH_SECONDS` until ``exit_r`` reaches EOF (the sandbox is gone)."""
    pid = os.fork()
    if pid != 0:
        return pid
    try:  # the helper: root, in the host's namespaces, nothing of the sandbox's held
        _hold_only({exit_r})
        _refresh_loop(sandbox, egress, resolved, exit_r)
    finally:
        os._exit(0)


def _hold_only(keep: set[int]) -> None:
    """In a freshly forked helper: close every descriptor but ``keep`` (nothing of the
    sandbox's may reach the helper or what it runs), stdio on ``/dev/null``."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)


def _refresh_loop(sandbox: int, egress: list[Any], resolved: Resolved, exit_r: int) -> None:
    import select

    while not select.select([exit_r], [], [], REFRESH_SECONDS)[0]:
        resolved = refresh(sandbox, egress, resolved)


def refresh(
    sandbox: int, egress: list[Any], resolved: Resolved,
    lookup: Callable[[list[Any]], Resolved] = resolve,
) -> Resolved:
    """One round of the refresher: resolve ``egress`` again (``lookup``) and, if the
    addresses changed, reload the firewall in the network namespace of process
    ``sandbox`` and rewrite its /etc/hosts; returns what is in force now. As root,
    from the host's namespaces; a failed lookup or update keeps the last addresses::

        resolved = refresh(pid, [("api.example.com", 443)], resolved)
    """
    try:
        fresh = lookup(egress)
        if fresh == resolved:
            return resolved
        if os.stat(f"/proc/{sandbox}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino:
            return resolved  # not (or no longer) in its own namespace: nothing to change
        if not _in_netns(sandbox, ruleset(fresh)):
            return resolved
        with open(f"/proc/{sandbox}/root{HOSTS_DIR}/hosts", "w", encoding="utf-8") as fh:
            fh.write(hosts_file(fresh))
    except OSError:
        return resolved
    return fresh


def _in_netns(sandbox: int, rules: str) -> bool:
    """Load ``rules`` inside the sandbox's network namespace, from a child that joins
    it (this helper must stay in the host's, for name resolution); True on success."""
    fd = os.open(f"/proc/{sandbox}/ns/net", os.O_RDONLY)
    try:
        pid = os.fork()
        if pid == 0:
            try:
                if _libc().setns(fd, _CLONE_NEWNET) != 0:  # os.setns is Python 3.12+
                    os._exit(1)
                _nft(rules)
                os._exit(0)
            finally:
                os._exit(1)
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def finish(helper: dict[str, Any]) -> str:
    """In the new namespace: start slirp4netns, wait for the tap device, load the
    allowlist's firewall; returns the private /etc/hosts for the mount step.

    Right after ``unshare(CLONE_NEWNET)``, with what :func:`start` returned::

        hosts = finish(helper)   # "127.0.0.1 localhost\n...\n203.0.113.9 api.example.com\n"
    """
    import select

    v6 = any(":" in ip for _name, ips, _port in helper["resolved"] for ip in ips)
    if v6:  # the tap device takes its address from slirp4netns's router adverts, at once
        for key, value in (("accept_dad", "0"), ("accept_ra", "2")):
            with open(f"/proc/sys/net/ipv6/conf/default/{key}", "w") as fh:
                fh.write(value)
    os.write(helper["go"], b"1")
    os.close(helper["go"])
    try:
        ready, _, _ = select.select([helper["ready"]], [], [], READY_TIMEOUT)
        if not ready or os.read(helper["ready"], 1) != b"1":
            raise OSError(f"slirp4netns did not come up within {READY_TIMEOUT:g}s")
    finally:
        os.close(helper["ready"])
    if v6:
        _wait_for_ipv6()
    _nft(ruleset(helper["resolved"]))
    return hosts_file(helper["resolved"])


_CLONE_NEWNET = 0x40000000


def _libc() -> Any:
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _wait_for_ipv6() -> None:
    """Until the tap device has a global IPv6 address and a default route."""
    import time

    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        with open("/proc/net/if_inet6") as fh:
            addr = any(f.split()[-1] == TAP and not f.startswith("fe80") for f in fh)
        with open("/proc/net/ipv6_route") as fh:
            route = any(f.startswith("0" * 32 + " 00 ") and f.split()[-1] == TAP for f in fh)
        if addr and route:
            return
        if time.monotonic() > deadline:
            raise OSError(f"slirp4netns gave {TAP} no IPv6 address within {READY_TIMEOUT:g}s")
        time.sleep(0.01)


def kill_helper(pid: int) -> None:
    """End the helper (or slirp4netns, or the refresher) after a failed set-up."""
    import signal

    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except OSError:
        pass


def ruleset(resolved: Resolved) -> str:
    """The nftables ruleset of an allowlist: output dropped except to the listed
    addresses (and ports; 0 = any) and on the namespace's own loopback. It replaces
    a previous one in one transaction (the flush and the new rules apply together).

    >>> print(ruleset([("api.example.com", ["192.0.2.7", "2001:db8::7"], 443)]).splitlines()[7])
          ip daddr 192.0.2.7 tcp dport 443 accept
    >>> print(ruleset([("api.example.com", ["192.0.2.7", "2001:db8::7"], 443)]).splitlines()[9])
          ip6 daddr 2001:db8::7 tcp dport 443 accept
    """
    rules = ['oifname "lo" accept']
    if any(":" in ip for _name, ips, _port in resolved for ip in ips):
        # Neighbour discovery (IPv6's ARP) with slirp4netns's virtual router only.
        rules.append("icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, "
                     "nd-router-solicit } accept")
    for _name, ips, port in resolved:
        for ip in ips:
            family = "ip6" if ":" in ip else "ip"
            if port:
                rules.append(f"{family} daddr {ip} tcp dport {port} accept")
                rules.append(f"{family} daddr {ip} udp dport {port} accept")
            else:
                rules.append(f"{family} daddr {ip} accept")
    body = "\n".join(f"      {r}" for r in rules)
    return (
        "table inet sandbox_egress {}\n"
        "flush table inet sandbox_egress\n"
        "table inet sandbox_egress {\n"
        "  chain output {\n"
        "    type filter hook output priority 0; policy drop;\n"
        f"{body}\n"
        "  }\n"
        "}\n"
    )


def _nft(rules: str) -> None:
    """Load ``rules`` through libnftables (the library behind the nft command)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("nftables") or "libnftables.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        raise OSError(INSTALL["nftables"]) from None
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    ctx = lib.nft_ctx_new(0)
    try:
        lib.nft_ctx_buffer_error(ctx)
        if lib.nft_run_cmd_from_buffer(ctx, rules.encode()) != 0:
            err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
            raise OSError(f"loading the egress firewall failed: {err.strip()[:500]}")
    finally:
        lib.nft_ctx_free(ctx)
