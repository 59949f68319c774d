"""The ``sandbox`` command: ``demo``, ``run``, ``new``.

Exit codes: 0 ok, 1 failure, 2 usage error. Errors print one line without a
traceback unless ``--debug`` is given.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import telemetry
from .errors import SandboxError

__all__ = ["main", "scaffold"]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

_APP_TEMPLATE = '''"""{name}: a sandbox app. Start it with `sandbox run {name}`."""

from runtime.genserver import GenServer


class Counter(GenServer):
    vsn = 1

    def init(self, start=0):
        return start

    def handle_call(self, request, state):
        if request == "get":
            return state, state
        if request == "incr":
            return state + 1, state + 1
        raise ValueError(f"unknown request {{request!r}}; try 'get' or 'incr'")


def children():
    return [Counter.child_spec(name="counter")]
'''


def scaffold(name: str, parent: str | os.PathLike[str] = ".") -> Path:
    """Create a new app directory ``parent/name`` that ``sandbox run`` starts as is.

    >>> import tempfile
    >>> d = scaffold("myapp", tempfile.mkdtemp())
    >>> sorted(p.name for p in d.iterdir())
    ['app.py']
    """
    target = Path(parent) / name
    if target.exists():
        raise SandboxError(f"{target} already exists; pick another name or remove it")
    if not name.isidentifier():
        raise SandboxError(f"app name {name!r} must be a valid Python identifier")
    target.mkdir(parents=True)
    (target / "app.py").write_text(_APP_TEMPLATE.format(name=name))
    return target


class _Printer:
    """Plain, readable lines for the events a person wants to see."""

    def __init__(self, out: Callable[[str], None], runtime_name: str) -> None:
        self.out = out
        self.runtime_name = runtime_name
        self.t0 = time.monotonic()

    def line(self, text: str) -> None:
        self.out(f"[{time.monotonic() - self.t0:7.3f}s] {text}")

    def __call__(self, event: str, m: Any, md: Any) -> None:
        if md.get("runtime") not in (None, self.runtime_name):
            return
        if event == "sandbox.status":
            self.line(f"sandbox {md['sandbox']}: {md['from']} -> {md['to']}")
        elif event == "sandbox.process.up":
            self.line(f"sandbox {md['sandbox']}: process {m.get('pid')} up (start #{m.get('starts')})")
        elif event == "sandbox.process.down":
            self.line(f"sandbox {md['sandbox']}: process down ({md.get('reason')})")


def _demo(args: argparse.Namespace) -> int:
    import tempfile

    import runtime

    out = print
    app = EXAMPLES / "counter"
    tmp = None
    if not (app / "app.py").is_file():  # installed without the source tree
        tmp = tempfile.mkdtemp(prefix="sandbox-demo-")
        app = scaffold("counter", tmp)
    out(f"Sandbox demo: the counter app from {app}")
    with runtime.start(name="demo") as rt:
        printer = _Printer(out, rt.name)
        telemetry.attach("cli-demo", "sandbox", printer)
        try:
            sb = rt.create_sandbox("counter", app)
            info = sb.info()
            printer.line(f"created sandbox 'counter' (pid {info['pid']}, profile {info['profile']})")
            for _ in range(3):
                printer.line(f"call counter 'incr' -> {sb.call('counter', 'incr')}")
            pid = info["pid"]
            printer.line(f"killing the sandbox process {pid} with SIGKILL to show the supervisor at work")
            os.kill(pid, signal.SIGKILL)
            value = sb.call("counter", "get", timeout=10)
            info = sb.info()
            printer.line(
                f"call counter 'get' -> {value} from the restarted process {info['pid']} "
                f"(restarts: {info['restart_count']}; the state started afresh)"
            )
            printer.line(f"call counter 'incr' -> {sb.call('counter', 'incr')}")
            try:
                sb.call("counter", "crash")
            except runtime.ActorFailed as exc:
                printer.line(f"call counter 'crash' -> ActorFailed: {exc.error}")
            printer.line(f"the app's supervisor restarted the actor: 'get' -> {sb.call('counter', 'get', timeout=10)}")
            sb.destroy()
            printer.line("destroyed sandbox 'counter'")
        finally:
            telemetry.detach("cli-demo")
    if tmp:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    out("Demo finished: every process stopped and every work directory removed.")
    return 0


def _run(args: argparse.Namespace) -> int:
    import runtime

    path = Path(args.path)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with runtime.start(name="run") as rt:
        printer = _Printer(lambda s: print(s, flush=True), rt.name)
        telemetry.attach("cli-run", "sandbox", printer)
        try:
            sandbox_id = args.id or path.resolve().name
            sb = rt.create_sandbox(sandbox_id, path, entry=args.entry, profile=args.profile)
            info = sb.info()
            printer.line(f"running {sandbox_id} (pid {info['pid']}); press Ctrl-C to stop")
            stop.wait()
            printer.line("stopping")
        finally:
            telemetry.detach("cli-run")
    print("stopped", flush=True)
    return 0


def _new(args: argparse.Namespace) -> int:
    target = scaffold(args.name, args.parent)
    print(f"created {target}; start it with: sandbox run {target}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sandbox", description="Supervised, hot-reloadable sandboxes.")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="a tour on the bundled counter app")
    demo.set_defaults(fn=_demo)
    run = sub.add_parser("run", help="run an app in the foreground until Ctrl-C")
    run.add_argument("path", help="the app's directory")
    run.add_argument("--entry", default="app:children", help="module:function returning child specs")
    run.add_argument("--profile", default="medium", choices=["high", "medium", "low"])
    run.add_argument("--id", default=None, help="sandbox id (default: the directory name)")
    run.set_defaults(fn=_run)
    new = sub.add_parser("new", help="scaffold a new app directory")
    new.add_argument("name")
    new.add_argument("--parent", default=".", help="where to create it")
    new.set_defaults(fn=_new)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sandbox`` console script; returns the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    try:
        return args.fn(args)
    except (SandboxError, OSError) as exc:
        if args.debug:
            raise
        print(f"sandbox: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
