"""Egress for a sandbox's network namespace: an allowlist, nothing else.

slirp4netns (a Debian package; what rootless Podman uses) gives the namespace a
tap device whose traffic it relays through ordinary sockets of the host, with the
host's loopback switched off (``--disable-host-loopback``) and no DNS relay
(``--disable-dns``). It relays to anywhere, so the allowlist is enforced in the
namespace itself by an nftables ruleset (through libnftables, also from Debian),
loaded as root before the sandbox's UID changes: outgoing packets leave only to
the listed addresses and ports. Names are resolved once, by the sandbox process
before it leaves the host's namespace, into a private ``/etc/hosts``.

Called by :func:`runtime.child.isolation.apply`: :func:`start` before
``unshare`` (the helper that becomes slirp4netns must stay in the host's
namespace), :func:`finish` right after it.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

__all__ = ["INSTALL", "TAP", "finish", "kill_helper", "ruleset", "start"]

#: What to install when a tool is missing.
INSTALL = {
    "slirp4netns": "install slirp4netns (Debian/Ubuntu: apt-get install slirp4netns)",
    "nftables": "install libnftables (Debian/Ubuntu: apt-get install nftables)",
}
#: The tap device slirp4netns makes in the namespace (10.0.2.100/24, gateway .2).
TAP = "tap0"
#: How long the sandbox waits for slirp4netns to bring the device up.
READY_TIMEOUT = 10.0


def start(egress: list[Any]) -> dict[str, Any]:
    """Resolve the allowlist and fork the helper that becomes slirp4netns once this
    process has its own network namespace (it must itself stay in the host's).

    In a sandbox process, as root, before ``unshare(CLONE_NEWNET)``::

        helper = start([("api.example.com", 443)])
    """
    import socket

    resolved: list[tuple[str, list[str], int]] = []
    for host, port in egress:
        try:
            infos = socket.getaddrinfo(str(host), None, socket.AF_INET, socket.SOCK_STREAM)
        except OSError as exc:
            raise OSError(f"net_allow {host}:{port}: cannot resolve {host!r}: {exc}") from None
        resolved.append((str(host), sorted({str(i[4][0]) for i in infos}), int(port)))
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
            for fd in keep:
                os.set_inheritable(fd, True)
            os.execv(exe, [
                exe, "--configure", "--disable-host-loopback", "--disable-dns",
                "--enable-sandbox", "--enable-seccomp",
                f"--ready-fd={ready_w}", f"--exit-fd={exit_r}", str(me), TAP,
            ])
        finally:
            os._exit(127)
    for fd in (go_r, ready_w, exit_r):
        os.close(fd)
    # exit_w stays open for the life of this process (non-inheritable, so its own
    # children do not hold it): at its end slirp4netns sees EOF and exits.
    return {"pid": pid, "go": go_w, "ready": ready_r, "exit": exit_w, "resolved": resolved}


def finish(helper: dict[str, Any]) -> str:
    """In the new namespace: start slirp4netns, wait for the tap device, load the
    allowlist's firewall; returns the private /etc/hosts for the mount step.

    Right after ``unshare(CLONE_NEWNET)``, with what :func:`start` returned::

        hosts = finish(helper)   # "127.0.0.1 localhost\n...\n203.0.113.9 api.example.com\n"
    """
    import select

    os.write(helper["go"], b"1")
    os.close(helper["go"])
    try:
        ready, _, _ = select.select([helper["ready"]], [], [], READY_TIMEOUT)
        if not ready or os.read(helper["ready"], 1) != b"1":
            raise OSError(f"slirp4netns did not come up within {READY_TIMEOUT:g}s")
    finally:
        os.close(helper["ready"])
    _nft(ruleset(helper["resolved"]))
    lines = ["127.0.0.1 localhost", "::1 localhost"]
    lines += [f"{ip} {name}" for name, ips, _port in helper["resolved"] for ip in ips]
    return "\n".join(lines) + "\n"


def kill_helper(pid: int) -> None:
    """End the helper (or slirp4netns) after a failed set-up."""
    import signal

    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except OSError:
        pass


def ruleset(resolved: list[tuple[str, list[str], int]]) -> str:
    """The nftables ruleset of an allowlist: output dropped except to the listed
    addresses (and ports; 0 = any) and on the namespace's own loopback.

    >>> print(ruleset([("api.example.com", ["192.0.2.7"], 443)]).splitlines()[4])
          ip daddr 192.0.2.7 tcp dport 443 accept
    """
    rules = ['oifname "lo" accept']
    for _name, ips, port in resolved:
        for ip in ips:
            if port:
                rules.append(f"ip daddr {ip} tcp dport {port} accept")
                rules.append(f"ip daddr {ip} udp dport {port} accept")
            else:
                rules.append(f"ip daddr {ip} accept")
    body = "\n".join(f"      {r}" for r in rules)
    return (
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
