"""The CLI subcommands that talk to a running runtime through its control endpoint.

``sandbox [--connect ADDRESS] ps | call | cast | info | reload | rollback | logs |
top | stop``. The address comes from ``--connect`` or ``SANDBOX_ADDRESS``; the token
(TCP) from ``--token-file`` or ``SANDBOX_TOKEN_FILE``; a CA to verify a TLS server
from ``--tls-ca`` or ``SANDBOX_TLS_CA``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from runtime.errors import SandboxError
from sandbox.control.client import RemoteRuntime, connect

__all__ = ["add_client_options", "add_client_commands", "parse_request"]


def add_client_options(parser: argparse.ArgumentParser) -> None:
    """The options saying where the runtime is (before the subcommand)."""
    parser.add_argument("--connect", metavar="ADDRESS", default=None,
                        help="control endpoint of a running runtime: unix:PATH or "
                             "tcp:HOST:PORT (default: $SANDBOX_ADDRESS)")
    parser.add_argument("--token-file", dest="client_token_file", metavar="PATH", default=None,
                        help="file holding the endpoint's token (default: $SANDBOX_TOKEN_FILE)")
    parser.add_argument("--tls-ca", metavar="PEM", default=None,
                        help="verify the endpoint's TLS certificate against this CA file "
                             "(default: $SANDBOX_TLS_CA)")


def parse_request(text: str) -> Any:
    """A request given on the command line: JSON, else a Python literal.

    >>> parse_request('"incr"'), parse_request("('add', 2)"), parse_request('{"a": [1]}')
    ('incr', ('add', 2), {'a': [1]})
    """
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise SandboxError(
            f"cannot read the request {text!r}: give JSON ('\"incr\"', '[\"add\", 2]') or a "
            "Python literal (\"('add', 2)\"); quote it for the shell") from None


def _json(value: Any) -> str:
    return json.dumps(value, default=lambda v: sorted(v) if isinstance(v, (set, frozenset))
                      else str(v))


def _remote(args: argparse.Namespace) -> RemoteRuntime:
    address = args.connect or os.environ.get("SANDBOX_ADDRESS")
    if not address:
        raise SandboxError(f"sandbox {args.command} needs a running runtime: give --connect "
                           "ADDRESS or set SANDBOX_ADDRESS (start one with "
                           "`sandbox run APP --listen unix:PATH`)")
    token_file = args.client_token_file or os.environ.get("SANDBOX_TOKEN_FILE")
    tls = args.tls_ca or os.environ.get("SANDBOX_TLS_CA")
    return connect(address, token_file=token_file, tls=tls)


def _client(fn: Callable[[RemoteRuntime, argparse.Namespace], int]
            ) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        with _remote(args) as remote:
            return fn(remote, args)

    return run


def _ps(remote: RemoteRuntime, args: argparse.Namespace) -> int:
    rows = [(i["id"], i["status"], str(i.get("pid") or "-"), str(i.get("restart_count", 0)),
             f"{i.get('uptime') or 0:.0f}s", i.get("profile", ""), i.get("path", ""))
            for i in remote.list_sandboxes()]
    _table(("ID", "STATUS", "PID", "RESTARTS", "UPTIME", "PROFILE", "PATH"), rows)
    return 0


def _table(header: tuple[str, ...], rows: Sequence[tuple[Any, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip(), flush=True)


def _call(remote: RemoteRuntime, args: argparse.Namespace) -> int:
    reply = remote.sandbox(args.sandbox).call(args.actor, parse_request(args.request),
                                              timeout=args.timeout)
    print(_json(reply), flush=True)
    return 0


def _cast(remote: RemoteRuntime, args: argparse.Namespace) -> int:
    remote.sandbox(args.sandbox).cast(args.actor, parse_request(args.request))
    return 0


def _info(remote: RemoteRuntime, args: argparse.Namespace) -> int:
    print(json.dumps(remote.get_sandbox_info(args.sandbox), indent=2, default=str), flush=True)
    return 0


def _reload(remote: RemoteRuntime, args: argparse.Namespace) -> int:
    report = remote.hot_reload(args.sandbox, modules=args.modules or None, timeout=args.timeout)
    if report.modules:
        swapped = ", ".join(f"{m} v{report.versions[m]}" if m in report.versions else m
                            for m in report.modules)
        print(f"reloaded {swapped} in {report.duration * 1000:.1f} ms "
              f"({report.actors} actors migrated)", flush=True)
    else:
        print("no module changed", flush=True)
    for warning in report.warnings:
        print(f"warning: {warning}", flush=True)
    return 0


def _rollback(remote: RemoteRuntime, args: argparse.Namespace) -> int:
    report = remote.rollback_module(args.sandbox, args.module, args.version,
                                    timeout=args.timeout)
    print(f"rolled {args.module} back to v{args.version} in {report.duration * 1000:.1f} ms",
          flush=True)
    return 0


def _format_record(record: dict[str, Any]) -> str:
    where = record.get("sandbox") or "-"
    line = (f"{record.get('ts', '')} {record.get('level', ''):7} {record.get('logger', '')} "
            f"[{where}] {record.get('message', '')}")
    return line


def _logs(remote: RemoteRuntime, args: argparse.Namespace) -> int:
    show = (lambda r: print(_json(r), flush=True)) if args.json else (
        lambda r: print(_format_record(r), flush=True))
    if not args.follow:
        for record in remote.logs(lines=args.lines):
            show(record)
        return 0
    for record in remote.follow_logs(lines=args.lines):
        show(record)
    return 0


_CALLS = re.compile(r'^sandbox_calls_total\{sandbox="([^"]*)"\} (\S+)$', re.M)


def _top(remote: RemoteRuntime, args: argparse.Namespace) -> int:
    tty = sys.stdout.isatty()
    previous: dict[str, float] = {}
    last = time.monotonic()
    stop = threading.Event()
    n = 0
    while not stop.is_set():
        calls = {m[0]: float(m[1]) for m in _CALLS.findall(remote.metrics_text())}
        now = time.monotonic()
        rows = []
        for info in remote.list_sandboxes():
            sid = info["id"]
            usage = remote.resource_usage(sid) or {}
            rate = (calls.get(sid, 0.0) - previous[sid]) / (now - last) if sid in previous else 0.0
            rows.append((sid, info["status"], f"{usage.get('cpu_percent', 0.0):.1f}",
                         f"{usage.get('rss_mb', 0.0):.1f}", f"{rate:.1f}",
                         str(info.get("restart_count", 0))))
        previous, last = calls, now
        if tty:
            print("\x1b[H\x1b[2J", end="")  # redraw in place
        else:
            print(f"-- {time.strftime('%H:%M:%S')}", flush=True)
        _table(("ID", "STATUS", "CPU%", "MEM_MB", "CALLS/S", "RESTARTS"), rows)
        n += 1
        if args.count and n >= args.count:
            break
        stop.wait(args.interval)
    return 0


def _stop(remote: RemoteRuntime, args: argparse.Namespace) -> int:
    name = remote.name
    remote.stop()
    print(f"stopped runtime {name}", flush=True)
    return 0


def add_client_commands(sub: Any) -> None:
    """Register ps, call, cast, info, reload, rollback, logs, top and stop."""

    def command(name: str, fn: Callable[[RemoteRuntime, argparse.Namespace], int],
                help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help)
        p.set_defaults(fn=_client(fn))
        return p

    command("ps", _ps, "list the sandboxes of a running runtime")
    for name, fn, what in (("call", _call, "call an actor; prints its reply as JSON"),
                           ("cast", _cast, "send an actor a request without waiting")):
        p = command(name, fn, what)
        p.add_argument("sandbox")
        p.add_argument("actor")
        p.add_argument("request", help="JSON or a Python literal, e.g. '\"incr\"'")
        if name == "call":
            p.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    p = command("info", _info, "a sandbox's status, configuration and last error, as JSON")
    p.add_argument("sandbox")
    p = command("reload", _reload, "hot-reload a sandbox's changed modules")
    p.add_argument("sandbox")
    p.add_argument("modules", nargs="*", help="only these modules (default: what changed)")
    p.add_argument("--timeout", type=float, default=30.0)
    p = command("rollback", _rollback, "swap a kept version of a module back in")
    p.add_argument("sandbox")
    p.add_argument("module")
    p.add_argument("version", type=int)
    p.add_argument("--timeout", type=float, default=30.0)
    p = command("logs", _logs, "the runtime's recent log records; -f to follow")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new records")
    p.add_argument("-n", "--lines", type=int, default=None, help="how many recent records")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p = command("top", _top, "a live table of sandboxes: status, CPU, memory, calls/s, restarts")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    p.add_argument("-n", "--count", type=int, default=0, help="stop after N refreshes")
    command("stop", _stop, "stop the runtime (every sandbox is destroyed)")
