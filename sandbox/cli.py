"""The ``sandbox`` command: ``demo``, ``run``, ``new``, ``check``, ``capacity``,
``patterns``, ``bench``, and the commands of a running runtime (``ps``, ``call``,
``cast``, ``info``, ``reload``, ``rollback``, ``logs``, ``top``, ``stop``:
:mod:`sandbox.control.commands`).

Exit codes: 0 ok, 1 failure, 2 usage error. Errors print one line without a
traceback unless ``--debug`` is given.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from runtime import telemetry
from runtime.component import ComponentRef
from runtime.errors import SandboxError
from sandbox import loadtest, records
from sandbox.control.commands import add_client_commands, add_client_options
from sandbox.entrycheck import entry_diagnostics

__all__ = ["main", "scaffold"]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
#: The side-by-side benchmarks (a source checkout only: not an installed package).
BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

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
    >>> with tempfile.TemporaryDirectory() as parent:
    ...     sorted(p.name for p in scaffold("myapp", parent).iterdir())
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
        self._lock = threading.Lock()  # events arrive from several threads

    def line(self, text: str) -> None:
        with self._lock:
            self.out(f"[{time.monotonic() - self.t0:7.3f}s] {text}")

    def __call__(self, event: str, m: Any, md: Any) -> None:
        if md.get("runtime") not in (None, self.runtime_name):
            return
        if event == "sandbox.status":
            if md["from"] == md["to"]:
                return  # a refresh, not a change
            self.line(f"sandbox {md['sandbox']}: {md['from']} -> {md['to']}")
        elif event == "sandbox.process.up":
            self.line(f"sandbox {md['sandbox']}: process {m.get('pid')} up (start #{m.get('starts')})")
        elif event == "sandbox.process.down":
            self.line(f"sandbox {md['sandbox']}: process down ({md.get('reason')})")


def _demo(args: argparse.Namespace) -> int:
    import tempfile

    import sandbox

    out = print
    app = EXAMPLES / "counter"
    tmp = None
    if not (app / "app.py").is_file():  # installed without the source tree
        tmp = tempfile.mkdtemp(prefix="sandbox-demo-")
        app = scaffold("counter", tmp)
    out(f"Sandbox demo: the counter app from {app}")
    # The demo prints its own account of every event; the runtime's error log lines
    # (with tracebacks, on stderr) would tell the same story twice.
    logging.getLogger("runtime").setLevel(logging.CRITICAL)
    with sandbox.start() as rt:  # unnamed: a throwaway state directory
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
            # A call sent before the host sees the process die fails with ActorDead
            # (it may have run): wait for the supervisor's restart, then call.
            from sandbox.testing import wait_for

            wait_for(lambda: sb.info()["restart_count"] >= 1, timeout=10)
            value = sb.call("counter", "get", timeout=10)
            info = sb.info()
            printer.line(
                f"call counter 'get' -> {value} from the restarted process {info['pid']} "
                f"(restarts: {info['restart_count']}; the state started afresh)"
            )
            printer.line(f"call counter 'incr' -> {sb.call('counter', 'incr')}")
            try:
                sb.call("counter", "crash")
            except sandbox.ActorFailed as exc:
                printer.line(f"call counter 'crash' -> ActorFailed: {exc.error}")
            got: list[Any] = []

            def get_once_back() -> bool:  # the name is re-registered once the actor restarted
                try:
                    got.append(sb.call("counter", "get", timeout=10))
                    return True
                except (sandbox.NoSuchActor, sandbox.ActorDead):
                    return False

            wait_for(get_once_back, timeout=10)
            printer.line(f"the app's supervisor restarted the actor: 'get' -> {got[0]}")
            sb.destroy()
            printer.line("destroyed sandbox 'counter'")
        finally:
            telemetry.detach("cli-demo")
    if tmp:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    out("Demo finished: every process stopped and every work directory removed.")
    return 0


def _quiet_reloads(printer: _Printer) -> Callable[[str, Any, Any], None]:
    """The printer without the status changes of each reload (its own line says it)."""

    def handle(event: str, m: Any, md: Any) -> None:
        if event == "sandbox.status" and "reloading" in (md.get("from"), md.get("to")):
            return
        printer(event, m, md)

    return handle


class _ReloadPrinter:
    """``sandbox run --watch``: one line per reload; the diagnostics of a failed one."""

    def __init__(self, printer: _Printer) -> None:
        self.printer = printer

    def __call__(self, event: str, m: Any, md: Any) -> None:
        if md.get("runtime") not in (None, self.printer.runtime_name):
            return
        files = ", ".join(md.get("files") or [])
        if event == "watcher.reload.stop":
            ms = (m.get("duration") or 0.0) * 1000
            modules = md.get("modules") or []
            if not modules:
                self.printer.line(f"saved {files}: no module changed ({ms:.1f} ms)")
                return
            versions = md.get("versions") or {}
            shown = ", ".join(
                f"{mod} v{versions[mod]}" if mod in versions else mod for mod in modules
            )
            self.printer.line(f"reloaded {shown} in {ms:.1f} ms ({files})")
        elif event == "watcher.reload.failed":
            lines = md.get("diagnostics") or [md.get("error") or "unknown error"]
            self.printer.line(
                f"reload of {files} failed ({md.get('kind')}); still running the previous code:"
                + "".join(f"\n    {line}" for line in lines)
            )
        elif event == "watcher.fallback":
            self.printer.line(f"watching by polling: {md.get('reason')}")


class _CrashPrinter(logging.Handler):
    """``sandbox run``: each failure the runtime logs (once, where it is handled: a
    supervisor restarting an actor, in the host or inside the sandbox) as one
    readable block: what happened, then its traceback indented."""

    def __init__(self, printer: _Printer) -> None:
        super().__init__(logging.ERROR)
        self.printer = printer

    def emit(self, record: logging.LogRecord) -> None:
        sandbox_id = getattr(record, "sandbox", None)
        where = f"sandbox {sandbox_id}: " if sandbox_id else ""
        text = f"{where}{record.getMessage()}"
        tb = getattr(record, "traceback", None) or (
            logging.Formatter().formatException(record.exc_info) if record.exc_info else "")
        if tb:
            text += "".join(f"\n    {line}" for line in str(tb).rstrip().splitlines())
        self.printer.line(text)


class _OutputLines(logging.Handler):
    """The sandbox's stdout/stderr lines (runtime.output records), already
    neutralised by the host, as ``[id stream] text`` lines of the printer."""

    def __init__(self, printer: _Printer) -> None:
        super().__init__(logging.INFO)
        self.printer = printer

    def emit(self, record: logging.LogRecord) -> None:
        sid, stream = getattr(record, "sandbox", "?"), getattr(record, "stream", "?")
        self.printer.line(f"[{sid} {stream}] {record.getMessage()}")


def _run(args: argparse.Namespace) -> int:
    import sandbox

    path = Path(args.path)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if args.listen and args.listen.startswith("tcp:") and not args.token_file:
        raise SandboxError("--listen tcp:... needs --token-file PATH (the token clients must "
                           "give; a new one is written there if the file does not exist)")
    tls = (args.tls_cert, args.tls_key) if args.tls_cert or args.tls_key else None
    # Unnamed: its state directory goes at stop, so the next run starts only this app.
    with sandbox.start(listen=args.listen, token_file=args.token_file, tls=tls) as rt:
        if args.listen:  # `sandbox stop` from another terminal ends this command too
            rt._control.on_stop = stop.set
            # `sandbox logs` shows the operations (create, reload, ...), not only failures.
            logging.getLogger("runtime").setLevel(logging.INFO)
        printer = _Printer(lambda s: print(s, flush=True), rt.name)
        output = logging.getLogger("runtime.output")
        output.addHandler(_OutputLines(printer))
        output.setLevel(logging.INFO)
        watch = getattr(args, "watch", False)
        telemetry.attach("cli-run", "sandbox", _quiet_reloads(printer) if watch else printer)
        if watch:
            telemetry.attach("cli-run-watch", "watcher", _ReloadPrinter(printer))
            # Its lines say what the watcher's log warnings would say a second time.
            logging.getLogger("runtime.watcher").addHandler(logging.NullHandler())
        crashes = _CrashPrinter(printer)
        logging.getLogger("runtime").addHandler(crashes)
        try:
            sandbox_id = args.id or path.resolve().name
            sb = rt.create_sandbox(sandbox_id, path, entry=args.entry, profile=args.profile,
                                   auto_reload=watch)
            info = sb.info()
            watching = f"; watching {info['path']} for changes" if watch else ""
            listening = f"; control endpoint {rt.control_address}" if args.listen else ""
            printer.line(f"running {sandbox_id} (pid {info['pid']}){watching}{listening}; "
                         "press Ctrl-C to stop")
            stop.wait()
            printer.line("stopping")
        finally:
            telemetry.detach("cli-run")
            telemetry.detach("cli-run-watch")
            logging.getLogger("runtime").removeHandler(crashes)
    print("stopped", flush=True)
    return 0


def _new(args: argparse.Namespace) -> int:
    target = scaffold(args.name, args.parent)
    print(f"created {target}; start it with: sandbox run {target}")
    return 0


def _check(args: argparse.Namespace) -> int:
    """Compile and scan every module of an app once; print diagnostics like a linter.

    One ``file:line:col: code [risk] message`` line per finding, the code around
    it with the matched text underlined, a hint when there is one, then a summary;
    ``--format json`` prints one JSON object instead (``findings``: every
    diagnostic's fields). Exit 1 if any error, else 0.
    """
    import json

    from actors.compiler import CompilerActor
    from actors.scan import ProfileScanner, render

    if not Path(args.path).is_dir():
        raise SandboxError(f"{args.path} is not a directory: give the app's directory")
    ref = cast(ComponentRef, CompilerActor.start(scanner=ProfileScanner(), timeout=args.timeout))
    try:
        result = ref.invoke("compile_sandbox", args.path, profile=args.profile, timeout=None)
    finally:
        ref.stop()
    entry = entry_diagnostics(args.path, args.entry)  # sandbox run would fail on these
    n_err, n_warn = len(result.errors) + len(entry), len(result.warnings)
    if args.format == "json":
        print(json.dumps({
            "path": args.path, "profile": args.profile,
            "modules": len(result.modules) + len(result.failed),
            "errors": n_err, "warnings": n_warn,
            "findings": [d.to_dict() for d in [*entry, *result.diagnostics]],
        }, indent=2), flush=True)
        return 1 if n_err else 0
    for d in [*entry, *result.diagnostics]:
        print(render(d))
    print(
        f"{args.path}: {len(result.modules) + len(result.failed)} modules checked "
        f"(profile {args.profile}): {n_err} error{'s' if n_err != 1 else ''}, "
        f"{n_warn} warning{'s' if n_warn != 1 else ''}",
        flush=True,
    )
    return 1 if n_err else 0


def _capacity(args: argparse.Namespace) -> int:
    """Measure probe sandboxes of the app in a runtime of this process; print what fits."""
    import json

    import sandbox

    with sandbox.start() as rt:
        report = rt.capacity(args.path, profile=args.profile, samples=args.samples,
                             window=args.window, entry=args.entry)
    print(json.dumps(report.as_dict(), indent=1) if args.json else report.text(), flush=True)
    return 0


def _patterns(args: argparse.Namespace) -> int:
    """Recurring errors of a running runtime, from its HTTP endpoint's /health."""
    import json
    import urllib.error
    import urllib.request

    url = args.http if "://" in args.http else f"http://{args.http}"
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=args.timeout) as resp:
            health = json.load(resp)
    except urllib.error.HTTPError as err:  # 503 (degraded) still carries the document
        health = json.load(err)
    except urllib.error.URLError as err:
        raise SandboxError(f"cannot reach {url}/health ({err.reason}): start the runtime with "
                           "http=(host, port) and give that address") from None
    found = health.get("error_patterns") or []
    if args.json:
        print(json.dumps(found, indent=1))
        return 0
    if not found:
        print(f"no recurring errors in runtime {health.get('runtime')}")
    for p in found:
        where = f" at {p['location']}" if p.get("location") else ""
        sandboxes = ", ".join(f"{k} ({v})" for k, v in sorted(p["sandboxes"].items()))
        print(f"{p['count']:>6}x {p['type']}{where}: {p['message']}\n"
              f"        [{p['fingerprint']}] {p['category']}; sandboxes: {sandboxes}; "
              f"first {time.strftime('%H:%M:%S', time.localtime(p['first_seen']))}, "
              f"last {time.strftime('%H:%M:%S', time.localtime(p['last_seen']))}\n"
              f"        remedy: {p['remedy']}")
    return 0


def _load_harness() -> Any:
    """``benchmarks._harness`` from the source tree next to this package."""
    if not (BENCHMARKS / "_harness.py").is_file():
        raise SandboxError(
            f"sandbox bench needs the benchmarks/ directory of a source checkout, and there "
            f"is none at {BENCHMARKS} (benchmarks are not part of the installed package); "
            "run it from a clone installed with `pip install -e .`"
        )
    import importlib

    root = str(BENCHMARKS.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    harness = importlib.import_module("benchmarks._harness")
    found = Path(harness.__file__ or BENCHMARKS).resolve().parent
    if found != BENCHMARKS:
        raise SandboxError(
            f"the module 'benchmarks' comes from {found}, not {BENCHMARKS}: "
            "another package named 'benchmarks' shadows the project's"
        )
    return harness


def _bench_app(args: argparse.Namespace) -> int:
    """``sandbox bench --app DIR --call ACTOR REQUEST``: load one actor of a user's app."""
    import sandbox

    if args.only or args.list or args.quick:
        raise SandboxError("--only, --list and --quick select the project's benchmarks; "
                           "they do not go with --app/--connect")
    if args.call is None:
        raise SandboxError("sandbox bench --app/--connect needs --call ACTOR REQUEST "
                           "(e.g. --call counter incr)")
    if args.connect is not None:
        raise SandboxError(
            "sandbox bench --connect needs the control-endpoint client (sandbox.connect), "
            "which this installation does not have yet; load an app directory with "
            "--app DIR instead"
        )
    if args.use_async:
        raise SandboxError(
            "sandbox bench --async needs the asyncio API (sandbox.start_async), which this "
            "installation does not have yet; drop --async to load the app from threads"
        )
    path = Path(args.app)
    if not path.is_dir():
        raise SandboxError(f"--app {args.app!r} is not a directory; give an app's directory")
    actor, raw = args.call
    request = loadtest.parse_request(raw)
    duration = args.duration if args.duration is not None or args.calls is not None else 10.0
    label = f"call({actor!r}, {request!r})"
    with sandbox.start() as rt:  # unnamed: its state dir goes with it
        sb = rt.create_sandbox(path.resolve().name, path, entry=args.entry, profile=args.profile)
        sb.call(actor, request, timeout=args.timeout)  # fail fast on a bad actor or request
        print(f"loading {label} in {path} ({args.profile}): {args.concurrency} callers, "
              + (f"{duration:g} s" if duration is not None else f"{args.calls:,} calls"),
              file=sys.stderr, flush=True)
        result = loadtest.run_load(
            lambda _w: sb.call(actor, request, timeout=args.timeout),
            concurrency=args.concurrency,
            duration=duration,
            calls=args.calls,
            warmup=args.warmup,
            label=label,
            progress=loadtest.progress_line(duration, args.calls),
        )
    figures = result.records(benchmark=f"load:{path.resolve().name}")
    records.print_table(figures)
    print(loadtest.summary(result))
    if args.json:
        records.write_json(figures, args.json)
        print(f"wrote {len(figures)} figures to {args.json}")
    return 1 if result.errors else 0


def _bench(args: argparse.Namespace) -> int:
    if args.app is not None or args.connect is not None:
        return _bench_app(args)
    harness = _load_harness()
    only = [n.strip() for item in args.only for n in item.split(",") if n.strip()] or None
    try:
        names = harness.select_modules(only)
    except ValueError as exc:
        raise SandboxError(str(exc)) from None
    if args.list:
        for name in names:
            print(name.rsplit(".", 1)[-1])
        return 0
    try:
        records = harness.run_all(quick=args.quick, json_path=args.json, only=only)
    except KeyboardInterrupt:
        print("sandbox bench: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(f"wrote {len(records)} figures to {args.json}")
    return 1 if getattr(records, "failed", None) else 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sandbox", description="Supervised, hot-reloadable sandboxes.")
    p.add_argument("--debug", action="store_true",
                   help="show tracebacks on errors (accepted anywhere on the command line)")
    add_client_options(p)
    sub = p.add_subparsers(dest="command", required=True)
    add_client_commands(sub)
    demo = sub.add_parser("demo", help="a tour on the bundled counter app")
    demo.set_defaults(fn=_demo)
    run = sub.add_parser("run", help="run an app in the foreground until Ctrl-C")
    run.add_argument("path", help="the app's directory")
    run.add_argument("--entry", default="app:children", help="module:function returning child specs")
    run.add_argument("--profile", default="medium", choices=["high", "medium", "low"])
    run.add_argument("--id", default=None, help="sandbox id (default: the directory name)")
    run.add_argument("--watch", action="store_true",
                     help="hot-reload the app on every save, printing one line per reload")
    run.add_argument("--listen", metavar="ADDRESS", default=None,
                     help="serve a control endpoint: unix:PATH or tcp:HOST:PORT")
    run.add_argument("--token-file", metavar="PATH", default=None,
                     help="the endpoint's token (required for tcp; made if absent)")
    run.add_argument("--tls-cert", metavar="PEM", default=None, help="TLS certificate (tcp)")
    run.add_argument("--tls-key", metavar="PEM", default=None, help="TLS private key (tcp)")
    run.set_defaults(fn=_run)
    new = sub.add_parser("new", help="scaffold a new app directory")
    new.add_argument("name")
    new.add_argument("--parent", default=".", help="where to create it")
    new.set_defaults(fn=_new)
    bench = sub.add_parser(
        "bench", help="run the benchmarks (benchmarks/bench_*.py): one table, optional JSON"
    )
    bench.add_argument("--quick", action="store_true", help="fewer runs (a smoke run)")
    bench.add_argument("--json", metavar="PATH", help="also write every figure as a JSON list")
    bench.add_argument(
        "--only", action="append", default=[], metavar="NAME",
        help="run only these benchmarks (core, sandboxes, ...; repeat or comma-separate)",
    )
    bench.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    load = bench.add_argument_group(
        "load your own app", "sandbox bench --app DIR --call ACTOR REQUEST [-c N] [-d S | -n N]"
    )
    target = load.add_mutually_exclusive_group()
    target.add_argument("--app", metavar="DIR", help="start this app in a sandbox and load it")
    target.add_argument("--connect", metavar="ADDRESS", help="load a running runtime instead")
    load.add_argument("--call", nargs=2, metavar=("ACTOR", "REQUEST"),
                      help="what each caller calls; REQUEST is JSON, or else a string")
    load.add_argument("-c", "--concurrency", type=int, default=1, help="callers (default 1)")
    span = load.add_mutually_exclusive_group()
    span.add_argument("-d", "--duration", type=float, help="seconds to measure (default 10)")
    span.add_argument("-n", "--calls", type=int, help="calls to measure instead of a duration")
    load.add_argument("--warmup", type=float, default=1.0,
                      help="seconds of uncounted calls first (default 1)")
    load.add_argument("--async", dest="use_async", action="store_true",
                      help="call from asyncio tasks instead of threads")
    load.add_argument("--profile", default="medium", choices=["high", "medium", "low"],
                      help="security profile of the sandbox (default medium)")
    load.add_argument("--entry", default="app:children", help="the app's entry (module:function)")
    load.add_argument("--timeout", type=float, default=5.0, help="each call's timeout (default 5)")
    bench.set_defaults(fn=_bench)
    check = sub.add_parser(
        "check", help="compile and security-scan an app; print diagnostics (exit 1 on errors)"
    )
    check.add_argument("path", help="the app's directory")
    check.add_argument("--profile", default="medium", choices=["high", "medium", "low"],
                       help="security profile the scan applies (default: medium)")
    check.add_argument("--entry", default="app:children",
                       help="module:function returning the child specs (checked to exist)")
    check.add_argument("--timeout", type=float, default=10.0,
                       help="seconds each module's compile may take (default: 10)")
    check.add_argument("--format", default="text", choices=["text", "json"],
                       help="text: like a linter, with the code around each finding "
                       "(default); json: one object with every finding's fields")
    check.set_defaults(fn=_check)
    capacity = sub.add_parser(
        "capacity", help="how many more sandboxes of an app fit on this machine, and what binds"
    )
    capacity.add_argument("path", help="the app's directory")
    capacity.add_argument("--profile", default="medium", help="security profile (default: medium)")
    capacity.add_argument("--entry", default="app:children", help="module:function of the app")
    capacity.add_argument("--samples", type=int, default=3,
                          help="probe sandboxes to measure (default: 3)")
    capacity.add_argument("--window", type=float, default=1.0,
                          help="seconds over which idle CPU is measured (default: 1)")
    capacity.add_argument("--json", action="store_true", help="print the report as JSON")
    capacity.set_defaults(fn=_capacity)
    patterns = sub.add_parser(
        "patterns", help="recurring errors of a running runtime (from its /health endpoint)"
    )
    patterns.add_argument("--http", required=True, metavar="HOST:PORT",
                          help="the runtime's http address (sandbox.start(http=...))")
    patterns.add_argument("--timeout", type=float, default=10.0, help="seconds (default: 10)")
    patterns.add_argument("--json", action="store_true", help="print the patterns as JSON")
    patterns.set_defaults(fn=_patterns)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sandbox`` console script; returns the exit code."""
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # anywhere: after the subcommand as well as before
    try:
        args = parser.parse_args([a for a in argv if a != "--debug"])
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    try:
        return args.fn(args)
    except (SandboxError, OSError, TypeError, ValueError) as exc:
        if debug:
            raise
        # One line: the first of the message (an actor's failure carries its remote
        # traceback after it; --debug shows everything).
        first = str(exc).strip().split("\n", 1)[0]
        print(f"sandbox: error: {first}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
