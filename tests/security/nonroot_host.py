"""A host that is not root, for ``test_nonroot.py`` (run by it as ``nobody``).

Reads its brief (JSON) from argv[1]; starts one runtime, a ``victim`` and an
``attacker`` sandbox (both ``low``: only the OS layer stands in the way), runs
the attacks in the attacker, and prints one JSON line: what the attacker got
back, the pids, and what this host saw (its own unix listener, the victim's
counter). Then it waits for a line on stdin (the test reads the sandboxes' fd
tables meanwhile) and stops the runtime.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any

import sandbox
from runtime.host import forkserver


def _attacks(t: dict[str, Any]) -> dict[str, Any]:
    """Runs in the attacker sandbox: every way out we could think of, each result kept."""
    import ctypes
    import os
    import signal
    import socket

    out: dict[str, Any] = {}

    def attempt(name: str, fn: Any) -> None:
        try:
            out[name] = fn()
        except Exception as exc:  # noqa: BLE001 - denied is the expected outcome
            out[name] = f"failed: {type(exc).__name__}: {exc}"

    def write(path: str) -> str:
        with open(path, "w") as fh:
            fh.write("pwned")
        return "written"

    def read(path: str) -> str:
        with open(path, "rb") as fh:
            return fh.read().decode("utf-8", "replace")

    def connect_unix(path: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(3)
            s.connect(path)
            s.sendall(b"escaped")
        return "connected"

    def connect_tcp(port: int) -> str:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            s.sendall(b"escaped")
        return "connected"

    def kill(pid: int) -> str:
        # through libc, past the audit hook (which refuses os.kill already): the
        # OS layer is what is tested
        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.kill(pid, signal.SIGKILL)
        return "sent" if rc == 0 else f"failed: {os.strerror(ctypes.get_errno())}"

    def ptrace(pid: int) -> str:
        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.ptrace(16, pid, None, None)  # PTRACE_ATTACH
        return "attached" if rc == 0 else f"failed: {os.strerror(ctypes.get_errno())}"

    for key, path in t["write"].items():
        attempt(f"write:{key}", lambda p=path: write(p))
    for key, path in t["read"].items():
        attempt(f"read:{key}", lambda p=path: read(p))
    attempt("list:workdirs", lambda: os.listdir(os.path.dirname(os.path.dirname(t["read"]["victim"]))))
    attempt("connect:home_socket", lambda: connect_unix(t["home_socket"]))
    attempt("connect:loopback", lambda: connect_tcp(t["port"]))
    attempt("proc:pids", lambda: sorted(int(n) for n in os.listdir("/proc") if n.isdigit()))
    attempt("uid", lambda: [os.getuid(), os.geteuid()])
    for name, pid in t["pids"].items():
        attempt(f"environ:{name}", lambda p=pid: read(f"/proc/{p}/environ"))
        attempt(f"ptrace:{name}", lambda p=pid: ptrace(p))
        attempt(f"kill:{name}", lambda p=pid: kill(p))
    attempt("kill:all", lambda: kill(-1))
    return out


def _connect_all(targets: list[list[Any]]) -> dict[str, str]:
    import socket

    out = {}
    for host, port in targets:
        try:
            with socket.create_connection((host, port), timeout=3) as s:
                s.sendall(b"hi")
            out[f"{host}:{port}"] = "connected"
        except Exception as exc:  # noqa: BLE001 - refused or dropped: both are fine
            out[f"{host}:{port}"] = type(exc).__name__
    return out


def main() -> None:
    t = json.loads(sys.argv[1])
    home_socket = os.path.join(os.environ["HOME"], "agent.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(home_socket)
    listener.listen(4)
    listener.setblocking(False)
    with sandbox.start(base_dir=t["base"]) as rt:
        victim = rt.create_sandbox("victim", t["app"], profile="low")
        victim.call("counter", "incr")
        secret = os.path.join(victim.info()["workdir"], "secret.txt")
        with open(secret, "w") as fh:
            fh.write(t["secret"])
        attacker = rt.create_sandbox("attacker", t["app"], profile="low")
        pids = {"host": os.getpid(), "victim": victim.pid,
                "forkserver": forkserver.server_pid()}
        brief = {
            "write": {**t["write"], "victim": os.path.join(os.path.dirname(secret), "planted.txt")},
            "read": {"victim": secret, "home": os.path.join(os.environ["HOME"], "secret.txt")},
            "home_socket": home_socket,
            "port": t["port"],
            "pids": pids,
        }
        got = attacker.run(_attacks, brief, timeout=30)
        try:
            listener.accept()[0].close()
            accepted = True
        except BlockingIOError:
            accepted = False
        report = {
            "got": got,
            "pids": {**pids, "attacker": attacker.pid},
            "home_socket_accepted": accepted,
            "victim_counter": victim.call("counter", "incr"),
            "attacker_alive": attacker.call("counter", "incr"),
            "isolation": attacker.info()["isolation"],
            "workdirs": {"victim": os.path.dirname(secret),
                         "attacker": attacker.info()["workdir"]},
        }
        egress = t.get("egress")
        if egress:  # the allowlist, through slirp4netns, without root
            sb = rt.create_sandbox("egress", t["app"], profile="low",
                                   net_allow=[f"{egress['host']}:{egress['allowed']}"])
            report["egress"] = sb.run(_connect_all, [[egress["host"], egress["allowed"]],
                                                     [egress["host"], egress["other"]],
                                                     ["127.0.0.1", t["port"]]], timeout=30)
        print(json.dumps(report), flush=True)
        sys.stdin.readline()
    listener.close()
    os.unlink(home_socket)


if __name__ == "__main__":
    main()
