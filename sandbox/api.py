"""The public face: a :class:`Runtime` wiring the component actors under one supervisor.

>>> import sandbox
>>> with sandbox.start() as rt:
...     sb = rt.create_sandbox("doc-counter", "examples/counter")
...     sb.call("counter", "incr")
...     sb.call("counter", ("add", 41))
1
42
"""

from __future__ import annotations

import atexit
import contextvars
import functools
import itertools
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any, Literal, Unpack, cast, overload

from actors.config import AlertThresholds, Limits, SandboxConfig, WatchOptions
from actors.inflight import InFlight, Ticket
from actors.monitor import call_with_deadline
from runtime import logs, telemetry
from runtime.actor import ActorRef
from runtime.childspec import ChildSpec
from runtime.errors import (
    ActorDead,
    ConfigError,
    ProtocolError,
    SandboxError,
    SandboxNotFound,
    SecurityViolation,
)
from runtime.host.output import OutputLine
from runtime.wire.mailbox import DEFAULT_MAX_FRAME
from runtime.supervisor import Supervisor, SupervisorRef
from runtime.workshare import share_out
from sandbox.capacity import CapacityReport, measure
from sandbox.health import Observability
from sandbox.options import StartOptions
from sandbox.statedir import StateDir

if TYPE_CHECKING:
    from sandbox.cluster.runtime import ClusterRuntime
    from sandbox.hotreload import ReloadReport
    from sandbox.statesnapshot import RestoreReport, StateSnapshot

__all__ = ["Runtime", "Sandbox", "BatchResult", "start"]

log = logging.getLogger("runtime")

DEFAULT_TIMEOUT = 5.0
#: How long create_sandbox and destroy_sandbox wait for their sandbox.
CREATE_TIMEOUT = 60.0
_runtime_ids = itertools.count(1)

_RUNTIME_OPTIONS = {
    "name": "a string naming this runtime in logs and telemetry",
    "base_dir": "a directory under which sandboxes get their work directories",
    "max_restarts": "an integer >= 0 (root supervisor intensity)",
    "max_seconds": "a number of seconds > 0 (root supervisor intensity window)",
    "history": "an integer >= 1: module versions kept per module for rollback",
    "monitor_interval": "seconds between two samples of the resource monitor (default 1.0)",
    "audit_path": "a file for the audit log (JSON lines), kept after stop; default: a "
    "temporary file removed at stop",
    "watch_backend": "'auto' (inotify, polling where unavailable), 'inotify' or 'polling'",
    "http": "None, or a (host, port) pair to serve /health and /metrics on (port 0: any free port)",
    "state_dir": "a directory for the durable state (created if missing) that no other "
    "running runtime uses; default: a per-user data directory for a named runtime, a "
    "temporary one removed at stop otherwise",
    "alerts": "a dict of alert thresholds (actors.config.AlertThresholds), e.g. {'warn_at': 0.9}",
    "alert_webhook": "None, a URL, or a dict with 'url', 'timeout', 'retries', 'backoff', "
    "'headers'",
    "listen": "None, or a control endpoint address: 'unix:PATH' or 'tcp:HOST:PORT'",
    "token_file": "None, or a file holding the control endpoint's token (made if absent)",
    "tls": "None, or a (certificate, key) pair of PEM files for a tcp: endpoint",
}


def _check_options(name: Any, max_restarts: Any, max_seconds: Any, history: Any,
                   monitor_interval: Any, listen: Any, tls: Any) -> None:
    """Validate the options of :func:`start` before anything is created."""

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    def integer(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    checks = [
        ("name", name, name is None or (isinstance(name, str) and bool(name)
                                       and all(c.isalnum() or c in "-_." for c in name))),
        ("max_restarts", max_restarts, integer(max_restarts) and max_restarts >= 0),
        ("max_seconds", max_seconds, number(max_seconds) and max_seconds > 0),
        ("history", history, integer(history) and history >= 1),
        ("monitor_interval", monitor_interval, number(monitor_interval) and monitor_interval > 0),
        ("tls", tls, tls is None or (isinstance(tls, (tuple, list)) and len(tls) == 2)),
    ]
    for option, value, ok in checks:
        if not ok:
            accepted = _RUNTIME_OPTIONS[option]
            if option == "name":
                accepted = "a non-empty string of letters, digits, '-', '_' and '.' (it names " \
                           "files and log fields)"
            raise ConfigError(option, value, accepted)
    if listen is not None:
        from sandbox.control.protocol import parse_address

        parse_address(listen)
    elif tls is not None:
        raise ConfigError("tls", tls, "TLS together with listen='tcp:HOST:PORT'")


#: Runtimes started and not stopped yet: stopped at interpreter exit (see _at_exit).
_running: set[Runtime] = set()
_exit_hook = threading.Lock()


def _at_exit(runtime: Runtime) -> None:
    """Stop ``runtime`` at interpreter exit if nobody did: its processes, work
    directories, audit file and compile cache are gone when the program is.

    Registered at the first start, after the process module's own exit hook, so it
    runs first (atexit runs hooks last-in first-out) and stops the sandboxes in order.
    """
    _running.add(runtime)
    if _exit_hook.acquire(blocking=False):  # once per interpreter; never released
        atexit.register(_stop_all)


def _stop_all() -> None:
    for runtime in list(_running):
        try:
            runtime.stop()
        except Exception:  # exiting anyway; the next runtime still gets stopped
            log.exception("runtime %s: stopping at exit failed", runtime.name)


@dataclass(frozen=True)
class BatchResult:
    """The outcome of one item of a batch operation: a value or an error, never both."""

    id: str
    ok: bool
    value: Any = None
    error: BaseException | None = None


class Sandbox:
    """A handle on one sandbox of a runtime. Cheap; survives restarts of its process.

    Calls made while the sandbox's process restarts wait for the new process, up
    to their timeout. A call already in flight when the process dies fails with
    :class:`~runtime.errors.ActorDead` instead: it may or may not have been handled,
    so it is never sent again behind the caller's back (at most once, as in OTP).
    """

    def __init__(self, runtime: Runtime, sandbox_id: str) -> None:
        self.runtime = runtime
        self.id = sandbox_id
        self._slot: Any = None
        #: The sandbox's ``created_at``: which sandbox this handle belongs to (kept in
        #: the durable store, so it survives a manager restart; an id may be reused).
        self._created: float | None = None

    def __repr__(self) -> str:
        return f"<Sandbox {self.id!r}>"

    def _process(self, timeout: float | None) -> Any:
        # The slot outlives process restarts, so it is fetched from the manager once:
        # calls to a healthy sandbox never queue behind the manager's other work.
        if self._slot is None:
            self._check_owner()
            self._slot = self.runtime._slot(self.id)
        try:
            return self._slot.get(timeout)
        except ActorDead:
            # The slot of a sandbox outlives its processes, but not a rebuild of the
            # manager's table: if this handle's sandbox still exists, ask for its slot
            # again once, so a manager crash never fails a call to a healthy sandbox.
            self._check_owner()
            self._slot = self.runtime._slot(self.id)
            return self._slot.get(timeout)

    def _check_owner(self) -> dict[str, Any]:
        """The sandbox's info; SandboxNotFound if this handle's sandbox was destroyed
        (its id may name another sandbox now: a handle belongs to one sandbox)."""
        info: dict[str, Any] = self.runtime.get_sandbox_info(self.id)
        self._bind(info.get("created_at"))
        return info

    def _bind(self, created_at: Any) -> None:
        if self._created is None:
            self._created = created_at
        elif created_at != self._created:
            raise SandboxNotFound(self.id)

    def _owned(self) -> str:
        # Operations by id check first that the id still names this handle's sandbox
        # (its creation time only: the full info also asks the monitor for usage).
        self._bind(self.runtime._read("created_at", self.id))
        return self.id

    def call(self, actor: str, request: Any, *, timeout: float | None = DEFAULT_TIMEOUT) -> Any:
        """Call the actor registered as ``actor`` inside the sandbox and return its reply.

        >>> import sandbox
        >>> with sandbox.start() as rt:
        ...     rt.create_sandbox("doc-call", "examples/counter").call("counter", "get")
        0
        """
        t0, ok = perf_counter(), False  # call count and latency: rt.metrics_text()
        try:
            proc = self._process(timeout)
            deadline = self._slot.deadline  # _process set the slot
            try:
                if deadline is not None:  # the handler deadline (limits.call_seconds)
                    value = call_with_deadline(self, proc, deadline, actor, request, timeout)
                else:
                    value = proc.call(actor, request, timeout=timeout)
            except (TypeError, ProtocolError) as exc:  # the request could not be encoded
                raise unsendable(self, "call", exc) from None
            ok = True
            return value
        finally:
            self.runtime._obs.calls.observe_call(self.id, perf_counter() - t0, ok)

    def cast(self, actor: str, request: Any) -> None:
        """Send ``request`` to ``actor`` without waiting for it to be handled."""
        proc = self._process(DEFAULT_TIMEOUT)
        try:
            proc.cast(actor, request)
        except (TypeError, ProtocolError) as exc:
            raise unsendable(self, "cast", exc) from None

    def run(self, fn: Callable[..., Any], *args: Any, timeout: float | None = DEFAULT_TIMEOUT) -> Any:
        """Run ``fn(*args)`` inside the sandbox and return its (msgpack-native) result.

        The function travels by cloudpickle; the ``high`` profile refuses it.

        >>> import sandbox
        >>> with sandbox.start() as rt:
        ...     rt.create_sandbox("doc-run", "examples/counter").run(pow, 2, 10)
        1024
        """
        info = self.runtime.get_sandbox_info(self.id)
        if not info.get("allow_run", info["profile"] != "high"):
            raise SecurityViolation(
                f"sandbox {self.id!r} runs under the 'high' profile, which forbids run(); "
                "use profile='medium' or 'low', or send a call to one of its actors"
            )
        proc = self._process(timeout)
        from actors.monitor import run_with_limit  # the sandbox's run_seconds limit
        from runtime.wire.shipping import ship

        blob = ship((fn, tuple(args)))
        return run_with_limit(self, lambda t: proc.system("run", blob, timeout=t), timeout)

    def info(self) -> dict[str, Any]:
        """The sandbox's status, pid, configuration, restart count, uptime, last error."""
        return self._check_owner()

    def restart(self, *, preserve_state: bool = False) -> dict[str, Any]:
        """Restart the sandbox with the same configuration (optionally keeping actor state)."""
        return self.runtime.restart_sandbox(self._owned(), preserve_state=preserve_state)

    def destroy(self) -> None:
        """Stop the sandbox's processes and remove its work directory and registry entry."""
        self.runtime.destroy_sandbox(self._owned())

    @property
    def pid(self) -> int | None:
        return self.info()["pid"]

    def output(self, tail: int | None = 100) -> list[OutputLine]:
        """The last ``tail`` lines the sandbox wrote to stdout and stderr (all kept
        lines if None), oldest first, across its restarts; see :meth:`Runtime.output`.

        >>> from sandbox.testing import wait_for
        >>> with sandbox.start() as rt:
        ...     sb = rt.create_sandbox("doc-output", "examples/counter", profile="low")
        ...     _ = sb.run(print, "hello")
        ...     _ = wait_for(lambda: sb.output(tail=1), 10)
        ...     [(line.stream, line.text) for line in sb.output(tail=1)]
        [('stdout', 'hello')]
        """
        return self.runtime.output(self.id, tail=tail)

    def hot_reload(
        self,
        *,
        modules: Iterable[str] | None = None,
        source: Mapping[str, str] | None = None,
        migrate: Callable[[Any, Any, Any], Any] | None = None,
        extra: Any = None,
        changed_files: Iterable[str] | None = None,
        timeout: float = 30.0,
        compile_timeout: float | None = None,
        compile_memory_mb: int | None = None,
        compile_cpu_seconds: int | None = None,
    ) -> ReloadReport:
        """Swap changed code in, keeping state; see :meth:`Runtime.hot_reload`."""
        # The handle's check rides on the reload's own first round trip (its context
        # carries created_at): a replaced sandbox is refused before anything is done.
        return self.runtime._hot_reload(self.id, self._bind, dict(
            modules=modules, source=source, migrate=migrate, extra=extra,
            changed_files=changed_files, timeout=timeout, compile_timeout=compile_timeout,
            compile_memory_mb=compile_memory_mb, compile_cpu_seconds=compile_cpu_seconds))

    def rollback_module(
        self, module: str, version: int, *, extra: Any = None, timeout: float = 30.0
    ) -> ReloadReport:
        """Swap a kept version of ``module`` back in; see :meth:`Runtime.rollback_module`."""
        return self.runtime.rollback_module(self._owned(), module, version, extra=extra, timeout=timeout)

    def module_versions(self, module: str | None = None) -> Any:
        """Kept versions; see :meth:`Runtime.module_versions`."""
        return self.runtime.module_versions(self._owned(), module)

    def unload_module(self, module: str, *, timeout: float = 30.0) -> ReloadReport:
        """Remove ``module`` from the running sandbox and from its current versions
        (its kept versions stay, for rollback); see :func:`sandbox.hotreload.unload_module`.

        >>> import sandbox
        >>> with sandbox.start() as rt:
        ...     sb = rt.create_sandbox("doc-unload", "examples/counter")
        ...     sb.unload_module("app")
        Traceback (most recent call last):
        ...
        runtime.errors.ReloadFailed: sandbox 'doc-unload': cannot unload module 'app': it holds the app's entry; it is needed to restart the app; nothing was changed
        """
        from sandbox.hotreload import unload_module

        return unload_module(self.runtime, self._owned(), module, timeout=timeout)

    def snapshot(self, *, timeout: float = 30.0) -> StateSnapshot:
        """The states of the sandbox's named actors now, as plain data to keep.

        All actors are held between two messages while it is taken (the reload
        barrier), so the states are of one instant. Raises
        :class:`~sandbox.statesnapshot.SnapshotError` naming an actor whose state is
        not plain data (msgpack) under a profile that forbids pickling.

        >>> import sandbox
        >>> with sandbox.start() as rt:
        ...     sb = rt.create_sandbox("doc-snap", "examples/counter")
        ...     sb.call("counter", ("add", 5))
        ...     snap = sb.snapshot()
        ...     sb.call("counter", ("add", 1))
        ...     sb.restore(snap).actors
        ...     sb.call("counter", "get")
        5
        6
        1
        5
        """
        from sandbox.statesnapshot import take

        return take(self.runtime, self._owned(), timeout=timeout)

    def restore(
        self, snapshot: StateSnapshot | Mapping[str, Any], *, extra: Any = None,
        timeout: float = 30.0,
    ) -> RestoreReport:
        """Put a :meth:`snapshot` (or its ``to_dict()``) back, through the reload
        barrier: all actors or none, ``code_change(old_vsn, state, extra)`` for
        actors whose ``vsn`` changed since, their declared state shape checked.
        Raises :class:`~runtime.errors.ReloadFailed` naming the step and actor."""
        from sandbox.statesnapshot import restore

        return restore(self.runtime, self._owned(), snapshot, extra=extra, timeout=timeout)

    def enable_auto_reload(
        self,
        *,
        patterns: Iterable[str] | None = None,
        ignore: Iterable[str] | None = None,
        debounce: float | None = None,
        max_files: int | None = None,
    ) -> dict[str, Any]:
        """Hot-reload on every save; see :meth:`Runtime.enable_auto_reload`."""
        return self.runtime.enable_auto_reload(
            self.id, patterns=patterns, ignore=ignore, debounce=debounce, max_files=max_files)

    def disable_auto_reload(self) -> bool:
        """Stop watching; see :meth:`Runtime.disable_auto_reload`."""
        return self.runtime.disable_auto_reload(self.id)

    def reload_status(self) -> dict[str, Any] | None:
        """The last reload or rollback; see :meth:`Runtime.reload_status`."""
        return self.runtime.reload_status(self.id)

    def watch_status(self) -> dict[str, Any]:
        """Auto-reload state; see :meth:`Runtime.watch_status`."""
        return self.runtime.watch_status(self.id)


def unsendable(sandbox: Sandbox, method: str, exc: BaseException) -> BaseException:
    """The error for a request that cannot reach a sandbox (nothing was sent): it names
    the argument, and only settings a user of this API can change."""
    text = str(exc)
    if isinstance(exc, ProtocolError):  # over the frame limit
        size = text.split(" is ", 1)[-1].split(" bytes", 1)[0]
        return ProtocolError(
            f"argument 'request' of {method}() to sandbox {sandbox.id!r} is {size} bytes "
            f"encoded, over the {DEFAULT_MAX_FRAME // (1024 * 1024)} MiB a message may carry; "
            "send less per message (for example in chunks, or a path to a file)")
    kind = text.split("cannot send a ", 1)[-1].split(" value", 1)[0]
    try:
        profile = sandbox.runtime.get_sandbox_info(sandbox.id).get("profile")
    except SandboxError:
        profile = None
    how = ("only msgpack-native values cross (None, bool, int, float, str, bytes, list, "
           "dict, tuple, set, frozenset, datetime)")
    if profile == "high":
        how += "; under profile 'high' nothing else does (profiles 'medium' and 'low' " \
               "carry other Python objects by pickling)"
    return TypeError(f"argument 'request' of {method}() to sandbox {sandbox.id!r} cannot be "
                     f"sent: a {kind} value; {how}")


class Runtime:
    """A running actor system: the root supervisor and its component actors.

    Several runtimes may run in one process; they share nothing but the forkserver.
    Use :func:`start` to make one. ``state`` is its state directory
    (:class:`~sandbox.statedir.StateDir`: ``path``, and ``store`` while running, whose
    ``journal(sandbox_id)`` lists the latest reloads and their outcome).
    """

    def __init__(
        self,
        *,
        name: str | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        max_restarts: int = 10,
        max_seconds: float = 10.0,
        history: int = 10,
        monitor_interval: float = 1.0,
        audit_path: str | os.PathLike[str] | None = None,
        watch_backend: str = "auto",
        http: tuple[str, int] | None = None,
        alerts: AlertThresholds | Mapping[str, Any] | None = None,
        alert_webhook: str | Mapping[str, Any] | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        listen: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        tls: tuple[str | os.PathLike[str], str | os.PathLike[str]] | None = None,
    ) -> None:
        _check_options(name, max_restarts, max_seconds, history, monitor_interval, listen, tls)
        self._listen = (listen, token_file, tls)
        self._control: Any = None  # sandbox.control.server.ControlServer, once started
        self.name = name or f"rt{os.getpid()}-{next(_runtime_ids)}"
        if watch_backend not in ("auto", "inotify", "polling"):
            raise ConfigError("watch_backend", watch_backend, _RUNTIME_OPTIONS["watch_backend"])
        if base_dir is not None and not os.path.isdir(base_dir):
            raise ConfigError("base_dir", base_dir, _RUNTIME_OPTIONS["base_dir"])
        # The durable store (sandbox/statedir.py): per-user for a named runtime,
        # temporary (removed at stop) for a throwaway one.
        self.state = StateDir.resolve(state_dir, name)
        try:
            # metrics, health, alerts, HTTP (sandbox/health.py)
            self._obs = Observability(self, http=http, alerts=_plain(alerts),
                                      alert_webhook=alert_webhook)
        except BaseException:
            self.state.close()  # a bad option leaves no temporary state directory
            raise
        self.base_dir = tempfile.mkdtemp(prefix=f"sandbox-{self.name}-", dir=base_dir)
        self._lock = threading.Lock()
        self._root: SupervisorRef | None = None
        self._max_restarts = max_restarts
        self._max_seconds = max_seconds
        self._history = history
        self._monitor_interval = monitor_interval
        # The audit log sits beside base_dir (not in it: that holds only workdirs).
        self._audit_path = os.fspath(audit_path) if audit_path else self.state.audit_path
        self._watch_backend = watch_backend
        self._components: dict[str, ActorRef] = {}
        self._components_changed = threading.Condition()
        self._inflight: InFlight | None = None

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> Runtime:
        """Start the root supervisor and the component actors (done by :func:`start`)."""
        from actors.compiler import CompilerActor
        from actors.manager import ManagerActor
        from actors.monitor import ResourceMonitorActor
        from actors.scan import ProfileScanner
        from actors.security import SecurityControllerActor
        from actors.versions import VersionManagerActor

        try:
            store = self.state.open()
        except BaseException:
            self._remove_files()  # refused before anything started: stop() never runs
            raise
        store.journal_abandon_pending()  # reloads a dead host left half-way: none committed
        store.prune()  # what a create killed half-way left: that sandbox does not exist
        # Creates/destroys under way, beyond a manager's life (actors/inflight.py).
        inflight = self._inflight = InFlight()
        def started(name: str, start: Callable[[], ActorRef]) -> Callable[[], ActorRef]:
            # Components find each other through this table, refreshed by each start:
            # asking the root supervisor instead would deadlock while the root is busy
            # starting the one asking.
            def start_and_record() -> ActorRef:
                ref = start()
                with self._components_changed:
                    self._components[name] = ref
                    self._components_changed.notify_all()
                return ref

            return start_and_record

        def component(name: str) -> Any:
            ref = self._components.get(name)
            if ref is None or not ref.is_alive():
                raise SandboxError(f"component {name!r} of runtime {self.name!r} is not running")
            return ref

        n = self.name
        children = [
            ChildSpec(
                "sandboxes",
                start=started("sandboxes", lambda: _readopted(self, Supervisor.start(
                    [], strategy="one_for_one", max_restarts=1000, max_seconds=1.0,
                    name=f"{n}/sandboxes",
                ))),
                shutdown=120.0,
                type="supervisor",
            ),
            ChildSpec(
                "compiler",
                start=started("compiler", lambda: CompilerActor.start(
                    name=f"{n}/compiler", scanner=ProfileScanner(),  # scans every module
                    # The runtime's, not the actor's: a killed compiler runs no
                    # cleanup, and its restart reuses this one.
                    cache_dir=self.base_dir + ".compile-cache",
                )),
            ),
            ChildSpec(
                "versions",
                start=started("versions", lambda: VersionManagerActor.start(
                    history=self._history, name=f"{n}/versions", store=store,
                )),
            ),
            ChildSpec(
                "security",
                start=started("security", lambda: SecurityControllerActor.start(
                    name=f"{n}/security", runtime_id=n, audit_path=self._audit_path,
                )),
            ),
            ChildSpec(
                "monitor",
                start=started("monitor", lambda: ResourceMonitorActor.start(
                    name=f"{n}/monitor", runtime_id=n, component=component,
                    interval=self._monitor_interval, warn_at=self._obs.alerts.thresholds.warn_at,
                )),
            ),
            ChildSpec(
                "manager",
                start=started("manager", lambda: ManagerActor.start(
                    runtime_id=n, base_dir=self.base_dir, component=component,
                    name=f"{n}/manager", store=store,
                    start_stored="manager" not in self._components,  # the runtime's start
                    inflight=inflight,  # creates/destroys a killed manager left
                )),
            ),
        ]
        from sandbox.autoreload import watcher_child

        children.append(watcher_child(self, component, started, self._watch_backend))
        try:
            self._root = Supervisor.start(
                children,
                strategy="one_for_one",
                max_restarts=self._max_restarts,
                max_seconds=self._max_seconds,
                name=f"{self.name}/root",
            )
            self._obs.start()
            self._start_control()
        except BaseException:
            # A failed start leaves nothing behind: no actor, no directory, no audit file.
            if self._root is not None:
                self.stop()
            else:
                self._remove_files()
            raise
        _at_exit(self)
        telemetry.execute("runtime.start", {"count": 1}, {"runtime": self.name})
        return self

    def _start_control(self) -> None:
        listen, token_file, tls = self._listen
        if listen is None:
            return
        from sandbox.control.server import ControlServer, load_token, tls_context

        address = str(listen)
        token = load_token(token_file) if token_file is not None else None
        if token is None and address.startswith("tcp:"):
            import secrets

            token = secrets.token_urlsafe(32)  # rt.control_token tells it
        context = tls_context(*tls) if tls is not None else None
        self._control = ControlServer(self, address, token=token, tls=context).start()

    @property
    def control_address(self) -> Any:
        """The control endpoint's address (``sandbox.control.protocol.Address``; a tcp
        port 0 is resolved), or None without ``listen``."""
        return self._control.address if self._control is not None else None

    @property
    def control_token(self) -> str | None:
        """The token clients of the control endpoint must give (None: none needed)."""
        return self._control.token if self._control is not None else None

    def stop(self) -> None:
        """Destroy every sandbox and stop the component actors. Idempotent."""
        with self._lock:
            root, self._root = self._root, None
        if root is None:
            return
        control, self._control = self._control, None
        if control is not None:
            control.stop()
        root.stop(timeout=60.0)
        self._obs.stop()
        from runtime.child.isolation import release_group

        release_group(os.path.basename(self.base_dir))  # the sandboxes' cgroups, now empty
        self._remove_files()
        _running.discard(self)
        telemetry.execute("runtime.stop", {"count": 1}, {"runtime": self.name})

    def _remove_files(self) -> None:
        self.state.close()  # a temporary state directory goes, a named one stays
        shutil.rmtree(self.base_dir + ".compile-cache", ignore_errors=True)
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- observability (sandbox/health.py, sandbox/metrics.py, sandbox/http.py) --------
    def health(self) -> dict[str, Any]:
        """``{"status": "ok" | "degraded" | "down", "components": {name: {"alive",
        "restarts"}}, "sandboxes": {id: {"status", "ok", "pid", "restarts",
        "last_error"}}, ...}``; answers without asking any actor."""
        return self._obs.health()

    def metrics_text(self) -> str:
        """Counters and histograms (reloads, restarts, calls, latencies, violations, ...)
        in the Prometheus text format 0.0.4."""
        return self._obs.metrics_text()

    @property
    def metrics_registry(self) -> Any:
        """This runtime's own ``prometheus_client.CollectorRegistry`` (for a push
        gateway, or to serve it with prometheus-client's own server)."""
        return self._obs.registry

    def alerts(self, sandbox_id: str | None = None) -> list[dict[str, Any]]:
        """Alerts raised so far, oldest first (see :mod:`sandbox.alerts`).

        >>> with sandbox.start(alerts={"warn_at": 0.9}) as rt:
        ...     rt.alerts()
        []
        """
        return [a.as_dict() for a in self._obs.alerts.recent(sandbox_id)]

    def error_patterns(self, sandbox_id: str | None = None) -> list[dict[str, Any]]:
        """Recurring errors grouped by fingerprint, most frequent first: ``type``,
        ``location``, normalised ``message``, ``count``, ``first_seen``, ``last_seen``,
        ``sandboxes``, ``category`` and ``remedy`` (see :mod:`sandbox.patterns`).

        >>> with sandbox.start() as rt:
        ...     rt.error_patterns()
        []
        """
        return [p.as_dict() for p in self._obs.metrics.patterns.patterns(sandbox_id)]

    def capacity(
        self, app: str | os.PathLike[str], *, profile: str = SandboxConfig.profile,
        samples: int = 3, window: float = 1.0, entry: str = SandboxConfig.entry,
    ) -> CapacityReport:
        """How many more sandboxes of ``app`` under ``profile`` fit on this machine, and
        which limit binds first, from ``samples`` probe sandboxes measured here (see
        :mod:`sandbox.capacity`; the probes are destroyed before it returns).

        >>> with sandbox.start() as rt:
        ...     rt.capacity("examples/counter", samples=1, window=0.2).more > 0
        True
        """
        return measure(self, app, profile=profile, samples=samples, window=window, entry=entry)

    @property
    def http_address(self) -> tuple[str, int] | None:
        """``(host, port)`` the ``http`` endpoint listens on (None without one)."""
        return self._obs.address

    def _root_ref(self) -> SupervisorRef:
        root = self._root
        if root is None:
            raise SandboxError(f"runtime {self.name!r} is not running; start it with sandbox.start()")
        return root

    def component(self, name: str, *, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """The current reference of a component actor (``manager``, ``compiler``,
        ``versions``, ``sandboxes``, ``watcher``, ...); while its supervisor restarts
        it, waits up to ``timeout`` for the new one."""
        with self._components_changed:
            ok = self._components_changed.wait_for(
                lambda: self._root is None
                or (name in self._components and self._components[name].is_alive()),
                timeout,
            )
        self._root_ref()
        if not ok:
            raise SandboxError(
                f"component {name!r} of runtime {self.name!r} is not running "
                f"(waited {timeout}s for its supervisor to restart it)"
            )
        return self._components[name]

    def _manager(self, op: str, *args: Any, timeout: float | None = 60.0, here: bool = False) -> Any:
        """Operation ``op`` of the manager (``here``: on this thread if it is idle)."""
        manager = self.component("manager")
        if here:
            return manager.invoke_here(op, *args, timeout=timeout)
        return manager.invoke(op, *args, timeout=timeout)

    def _read(self, op: str, *args: Any, here: bool = False) -> Any:
        # A read changes nothing: if the manager dies under it, ask its successor
        # (within the timeout) instead of failing a caller for the manager's crash.
        deadline = perf_counter() + DEFAULT_TIMEOUT
        while True:
            try:
                return self._manager(op, *args, here=here)
            except ActorDead:
                if perf_counter() > deadline:
                    raise

    def _slot(self, sandbox_id: str) -> Any:
        return self._read("slot", sandbox_id)

    # -- sandboxes -------------------------------------------------------------------
    @logs.operation("create")
    def create_sandbox(
        self,
        sandbox_id: str,
        path: str | os.PathLike[str],
        *,
        entry: str = SandboxConfig.entry,
        profile: str = SandboxConfig.profile,
        limits: Limits | Mapping[str, Any] | None = None,
        restart: str = SandboxConfig.restart,
        max_restarts: int = SandboxConfig.max_restarts,
        max_seconds: float = SandboxConfig.max_seconds,
        env: Mapping[str, str] | None = None,
        auto_reload: bool = SandboxConfig.auto_reload,
        shutdown: float = SandboxConfig.shutdown,
        watch: WatchOptions | Mapping[str, Any] | None = None,
        compile_timeout: float | None = None,
        compile_memory_mb: int | None = None,
        compile_cpu_seconds: int | None = None,
        alerts: AlertThresholds | Mapping[str, Any] | None = None,
        net_allow: Iterable[str] = (),
    ) -> Sandbox:
        """Create and start a sandbox running the app at ``path``; returns its handle.

        Options: ``entry`` ('app:children'), ``profile`` ('high' | 'medium' | 'low'),
        ``limits`` (dict), ``restart`` ('permanent' | 'transient' | 'temporary'),
        ``max_restarts``, ``max_seconds``, ``env`` (dict), ``auto_reload``, ``shutdown``,
        ``watch``, and the limits of every compile of this sandbox (unless a
        ``hot_reload`` call overrides them): ``compile_timeout`` (seconds per module,
        default 10), ``compile_memory_mb`` (the compile worker's memory, default
        1024), ``compile_cpu_seconds`` (CPU seconds per module, default the timeout + 1);
        ``alerts`` (alert thresholds of this sandbox, over the runtime's: ``{"warn_at": 0.5}``);
        ``net_allow`` (``["api.example.com:443"]``: the only addresses it may reach
        outside, through slirp4netns; see docs/security.md).
        Raises :class:`~runtime.errors.ConfigError` naming any bad option, and leaves
        nothing behind when creation fails.
        """
        (outcome,) = self._create([self._config(
            sandbox_id, path, entry=entry, profile=profile, limits=limits, restart=restart,
            max_restarts=max_restarts, max_seconds=max_seconds, env=env,
            auto_reload=auto_reload, shutdown=shutdown, watch=watch,
            compile_timeout=compile_timeout, compile_memory_mb=compile_memory_mb,
            compile_cpu_seconds=compile_cpu_seconds, alerts=alerts, net_allow=net_allow)])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _config(self, sandbox_id: Any, path: Any, *, alerts: Any = None,
                net_allow: Iterable[str] = (), **options: Any) -> SandboxConfig:
        """The config of a create (:meth:`create_sandbox`'s options), or ConfigError."""
        return SandboxConfig.build(
            sandbox_id, os.fspath(path) if isinstance(path, os.PathLike) else path,
            alerts=None if alerts is None
            else AlertThresholds.build(_plain(alerts), base=self._obs.alerts.thresholds),
            net_allow=list(net_allow), **options)

    def _create(self, configs: list[SandboxConfig],
                workers: int = 1) -> list[Sandbox | BaseException]:
        """Create the sandboxes (one, or a batch) on one path: one manager turn starts
        them all, one job thread runs them on up to ``workers`` threads (actors/manager.py
        ``op_create``); returns, per config in order, its handle or the error of that
        config alone (nothing of a failed create is left)."""
        # The manager answers at once with tickets; the creates run outside its turns
        # and outlive a crash of it (actors/inflight.py).
        mine = {id(config) for config in configs}
        try:
            answers = self._tickets(
                "create", lambda todo: self._manager("create", [configs[i] for i in todo], workers),
                [config.id for config in configs], lambda job: id(job.record.config) in mine)
        except Exception as exc:  # the manager failed in that turn: every config hears it
            return [exc for _ in configs]
        # Each create has CREATE_TIMEOUT, and a batch runs ``workers`` at a time.
        deadline = perf_counter() + CREATE_TIMEOUT * -(-len(configs) // max(1, workers))
        outcomes: list[Sandbox | BaseException] = []
        for config, answer in zip(configs, answers):
            try:
                if isinstance(answer, BaseException):
                    raise answer
                created = answer.wait(max(0.0, deadline - perf_counter()))
            except Exception as exc:  # that config's alone; the others go on
                outcomes.append(exc)
                continue
            # once it exists (not on SandboxExists, which must keep the existing one's)
            self._obs.alerts.configure(config.id, config.alerts)
            handle = Sandbox(self, config.id)
            handle._created = created.created_at  # binds the handle to this sandbox
            # Its slot too: the first call asks the manager nothing (two round trips and
            # a read of /proc less); a destroy meanwhile closes the slot, which the call
            # then reports as SandboxNotFound, as it would have.
            handle._slot = created.slot
            outcomes.append(handle)
        return outcomes

    def sandbox(self, sandbox_id: str) -> Sandbox:
        """A handle on an existing sandbox (raises SandboxNotFound if there is none)."""
        handle = Sandbox(self, sandbox_id)
        handle._check_owner()  # SandboxNotFound if there is none; binds the handle
        return handle

    @logs.operation("destroy")
    def destroy_sandbox(self, sandbox_id: str) -> None:
        """Stop a sandbox (gracefully, then SIGKILL) and remove all trace of it."""
        (outcome,) = self._destroy([sandbox_id])
        if outcome is not None:
            raise outcome

    def _destroy(self, sandbox_ids: list[str]) -> list[BaseException | None]:
        """Destroy the sandboxes (one, or a batch) on one path: one manager turn
        starts them all, one thread stops them (actors/manager.py ``op_destroy``);
        returns, per id in order, None (destroyed) or the error of that id alone."""
        deadline = perf_counter() + CREATE_TIMEOUT
        try:
            # The turn runs on this thread when the manager is idle: it sends the
            # stops, so they leave without a hand-off to the manager's thread (it
            # only reads and sends; the jobs' thread waits).
            answers = self._tickets(
                "destroy", lambda todo: self._manager("destroy", [sandbox_ids[i] for i in todo],
                                                      here=True),
                sandbox_ids, lambda job: job.kind == "destroy")
        except Exception as exc:  # the manager failed in that turn: every id hears it
            return [exc for _ in sandbox_ids]
        outcomes: list[BaseException | None] = []
        for answer in answers:
            try:
                if isinstance(answer, BaseException):
                    raise answer
                answer.wait(max(0.0, deadline - perf_counter()))
                outcomes.append(None)
            except Exception as exc:  # that sandbox's alone; the others go on
                outcomes.append(exc)
        return outcomes

    def _tickets(self, op: str, ask: Callable[[list[int]], list[Any]], sandbox_ids: list[str],
                 ours: Callable[[Any], bool]) -> list[Ticket | BaseException]:
        """The tickets of the jobs (``op``: creates or destroys) one manager turn starts
        for ``sandbox_ids``, or each one's refusal: ``ask(indexes)`` asks the manager
        for those ids and returns a ticket or a SandboxError for each.

        A manager killed during that turn may or may not have started them (its
        thread finishes the turn; the caller hears ActorDead at once): each is then
        found in the runtime's in-flight table (``ours(job)``), or its successor is
        asked again, within DEFAULT_TIMEOUT, so the caller never sees the manager's
        crash. A destroy whose sandbox the successor no longer knows finished before
        it was asked: done, as asked.
        """
        deadline = perf_counter() + DEFAULT_TIMEOUT
        out: dict[int, Ticket | BaseException] = {}
        todo = list(range(len(sandbox_ids)))
        unsure = False

        def held(i: int) -> Ticket | None:
            job = self._inflight.get(sandbox_ids[i]) if self._inflight else None
            return job.ticket if job is not None and ours(job) else None

        while todo:
            try:
                answers = ask(todo)
            except ActorDead:
                unsure = True
                for i in todo:  # the killed manager's turn started these after all
                    ticket = held(i)
                    if ticket is not None:
                        out[i] = ticket
                todo = [i for i in todo if i not in out]
                if todo and perf_counter() > deadline:
                    for i in todo:
                        out[i] = SandboxError(
                            f"the manager kept failing while asked to {op} sandbox "
                            f"{sandbox_ids[i]!r}; check the runtime's health, then try again")
                    todo = []
                continue
            for i, answer in zip(todo, answers):
                if unsure and isinstance(answer, SandboxError):
                    ticket = held(i)  # the killed manager's turn started it after all
                    if ticket is not None:
                        answer = ticket
                    elif op == "destroy" and isinstance(answer, SandboxNotFound):
                        # ... and it finished before the successor was asked: gone, as asked
                        answer = Ticket(f"destroy of sandbox {sandbox_ids[i]!r}")
                        answer.settle()
                out[i] = answer
            todo = []
        return [out[i] for i in range(len(sandbox_ids))]

    @logs.operation("restart")
    def restart_sandbox(self, sandbox_id: str, *, preserve_state: bool = False) -> dict[str, Any]:
        """Restart a sandbox with the same configuration; ``preserve_state`` carries actor state.

        The new process runs the code the sandbox runs now (its last reload or
        rollback), not whatever is on disk: as in OTP, a restart does not upgrade.
        Call :meth:`hot_reload` to pick up edited files. A sandbox in status
        ``error`` (restart intensity reached) starts again from here.
        """
        return self._manager("restart", sandbox_id, preserve_state)

    def get_sandbox_info(self, sandbox_id: str) -> dict[str, Any]:
        """Status, pid, configuration, restart count, uptime, timestamps, last error."""
        return cast(dict[str, Any], self._read("info", sandbox_id))

    # -- security and resources --------------------------------------------------------
    def audit_events(
        self,
        sandbox_id: str | None = None,
        since: Any = None,
        *,
        limit: int | None = None,
        event: str | None = None,
    ) -> list[dict[str, Any]]:
        """Audit log records (oldest first): guard refusals, scan blocks, limits
        reached, quarantines; filtered by sandbox, time (epoch seconds or a
        datetime) and event name prefix."""
        return self.component("security").invoke(
            "audit_events", sandbox_id, since, limit, event, timeout=30.0
        )

    def resource_usage(self, sandbox_id: str) -> dict[str, Any] | None:
        """The resource monitor's latest figures for a sandbox (RSS/USS, CPU %,
        threads, processes, fds, uptime), trends and limit events."""
        self.get_sandbox_info(sandbox_id)  # SandboxNotFound for a bad id
        return self.component("monitor").invoke("usage", sandbox_id)

    def output(self, sandbox_id: str, *, tail: int | None = 100) -> list[OutputLine]:
        """The last ``tail`` lines sandbox ``sandbox_id`` wrote to stdout and stderr.

        Each :class:`~runtime.host.output.OutputLine` has ``stream`` ("stdout" or
        "stderr"), ``text`` (control characters and escapes shown escaped),
        ``time`` and ``truncated``. The host keeps the last 1,000 lines (256 Ki
        characters at most), and at most 64 KiB/s (bursts of 256 KiB) and 16 MiB
        in all per sandbox; the rest is dropped and counted (metric
        ``sandbox_output_dropped_bytes_total``).
        Every line is also a log record of the logger ``runtime.output``
        (fields ``sandbox``, ``stream``); none reaches the host's stdout.
        Raises :class:`~runtime.errors.SandboxNotFound` for an unknown id and
        ``ValueError`` for a negative ``tail``.

        >>> with sandbox.start() as rt:
        ...     _ = rt.create_sandbox("doc-rt-output", "examples/counter")
        ...     rt.output("doc-rt-output", tail=5)
        []
        """
        return self._slot(sandbox_id).output.tail(tail)

    def register_profile(self, profile: Any) -> Any:
        """Register a custom security profile (``actors.profiles.custom_profile(...)``)
        so sandboxes can be created with ``profile=<its name>``."""
        return self.component("security").invoke("register_profile", profile)

    def list_sandboxes(self) -> list[dict[str, Any]]:
        """Info of every sandbox of this runtime."""
        return self._manager("list")

    # -- hot reload ------------------------------------------------------------------
    def hot_reload(
        self,
        sandbox_id: str,
        *,
        modules: Iterable[str] | None = None,
        source: Mapping[str, str] | None = None,
        migrate: Callable[[Any, Any, Any], Any] | None = None,
        extra: Any = None,
        changed_files: Iterable[str] | None = None,
        timeout: float = 30.0,
        compile_timeout: float | None = None,
        compile_memory_mb: int | None = None,
        compile_cpu_seconds: int | None = None,
    ) -> ReloadReport:
        """Swap the changed modules of a running sandbox, migrating every actor's state.

        Each changed class's ``code_change(old_vsn, state, extra)`` (or ``migrate``)
        carries the state over; actors never stop and no message is lost. Returns a
        :class:`~sandbox.hotreload.ReloadReport`; raises CompileError or
        ReloadFailed, in which case the old code and state keep serving.

        >>> import sandbox
        >>> with sandbox.start() as rt:
        ...     rt.create_sandbox("doc-reload", "examples/counter").hot_reload().modules
        []
        """
        return self._hot_reload(sandbox_id, None, dict(
            modules=modules, source=source, migrate=migrate, extra=extra,
            changed_files=changed_files, timeout=timeout, compile_timeout=compile_timeout,
            compile_memory_mb=compile_memory_mb, compile_cpu_seconds=compile_cpu_seconds))

    @logs.operation("hot_reload")
    def _hot_reload(self, sandbox_id: str, owner: Callable[[float], None] | None,
                    options: dict[str, Any]) -> ReloadReport:
        """:meth:`hot_reload`, with a handle's ``owner`` check (see
        :func:`sandbox.hotreload.hot_reload`)."""
        from sandbox.hotreload import hot_reload

        return hot_reload(self, sandbox_id, owner=owner, **options)

    @logs.operation("rollback")
    def rollback_module(
        self, sandbox_id: str, module: str, version: int, *, extra: Any = None, timeout: float = 30.0
    ) -> ReloadReport:
        """Swap kept version ``version`` of ``module`` back in (state migrated by the
        target class's ``code_change``, which sees the downgrade as ``old_vsn > vsn``)."""
        from sandbox.hotreload import rollback_module

        return rollback_module(self, sandbox_id, module, version, extra=extra, timeout=timeout)

    # -- auto-reload (sandbox/autoreload.py, actors/watcher.py) ----------------------
    def enable_auto_reload(
        self,
        sandbox_id: str,
        *,
        patterns: Iterable[str] | None = None,
        ignore: Iterable[str] | None = None,
        debounce: float | None = None,
        max_files: int | None = None,
    ) -> dict[str, Any]:
        """Watch the sandbox's directory; each batch of saves becomes one hot reload.

        Each option given overrides the sandbox's watch option: ``patterns`` (``['*.py']``),
        ``ignore`` (more globs), ``debounce`` (seconds, 0.02), ``max_files``
        (10,000). Same as ``auto_reload=True`` at creation. Raises ``WatchError``
        if the directory cannot be watched (e.g. more files than ``max_files``).
        """
        from sandbox.autoreload import enable_auto_reload

        given = {"patterns": patterns, "ignore": ignore, "debounce": debounce,
                 "max_files": max_files}
        return enable_auto_reload(self, sandbox_id, **{k: v for k, v in given.items()
                                                         if v is not None})

    def disable_auto_reload(self, sandbox_id: str) -> bool:
        """Stop watching the sandbox's directory; returns whether it was watched."""
        from sandbox.autoreload import disable_auto_reload

        return disable_auto_reload(self, sandbox_id)

    def watch_status(self, sandbox_id: str) -> dict[str, Any]:
        """Auto-reload of a sandbox: ``auto_reload``, ``watching``, ``watch`` (files
        watched, backend, reloads and failures, a reload running or queued now) and
        ``last_reload`` (as :meth:`reload_status`)."""
        from sandbox.autoreload import watch_status

        return watch_status(self, sandbox_id)

    def module_versions(self, sandbox_id: str, module: str | None = None) -> Any:
        """Kept versions of ``module`` (oldest first), or ``{module: current version}``."""
        versions = self.component("versions")
        self.get_sandbox_info(sandbox_id)
        if module is not None:
            return versions.invoke("list_module_versions", sandbox_id, module)
        graph = versions.invoke("get_dependency_graph", sandbox_id)
        return {m: versions.invoke("get_current_version", sandbox_id, m).version for m in graph}

    def reload_status(self, sandbox_id: str) -> dict[str, Any] | None:
        """The last reload or rollback of a sandbox: when, modules, versions, duration,
        outcome and diagnostics (None before the first)."""
        return self._slot(sandbox_id).last_reload

    # -- batches ---------------------------------------------------------------------
    def _batch(self, items: Iterable[tuple[str, Callable[[], Any]]], workers: int) -> list[BatchResult]:
        """Run the items ``workers`` at a time; one result each, in the items' order.

        The calling thread is one of the workers (a batch of one starts no thread):
        a worker thread costs its start and two hand-offs, 0.1-0.5 ms each on a
        shared VM. The caller's share runs in an empty context, as the pool's does.
        """
        todo = list(items)
        results: list[BatchResult | None] = [None] * len(todo)

        def run(i: int) -> None:
            key, fn = todo[i]
            try:
                results[i] = BatchResult(key, True, fn())
            except Exception as exc:  # reported per item; one failure never stops the rest
                results[i] = BatchResult(key, False, error=exc)

        # The pool starts a thread per submit only: with no helper it starts none.
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo)) - 1)) as pool:
            share_out(run, len(todo), max(1, workers), pool.submit,
                      here=contextvars.Context().run)
        return cast("list[BatchResult]", results)

    def batch_create(
        self, specs: Iterable[Mapping[str, Any]], *, workers: int = 8
    ) -> list[BatchResult]:
        """Create many sandboxes in parallel; each spec is a dict of ``id``, ``path`` and options.

        Returns one :class:`BatchResult` per spec (value: the :class:`Sandbox`), in the
        specs' order; a spec refused (a bad option, its id taken, a compile error, a
        scan refusal, a child that dies) fails alone and leaves nothing behind. They
        are one batch: the manager starts all in one turn, up to ``workers`` at a time
        run on its job threads, each app is compiled once for the batch, and one turn
        adopts them all; each create is its own operation in the ops log. Their
        results come together when the batch is done (until then a sandbox that
        finished early is listed as ``starting``).

        >>> import sandbox
        >>> with sandbox.start() as rt:
        ...     results = rt.batch_create([{"id": "doc-bc", "path": "examples/counter"},
        ...                                {"id": "doc-bc", "path": "examples/counter"}])
        ...     [(r.id, r.ok) for r in results], results[0].value.call("counter", "incr")
        ([('doc-bc', True), ('doc-bc', False)], 1)
        """
        todo = [dict(spec) for spec in specs]
        ids = [str(spec.get("id")) for spec in todo]
        outcomes: list[Sandbox | BaseException | None] = [None] * len(todo)
        configs, where, cids, t0 = [], [], [], perf_counter()
        for i, (sid, opts) in enumerate(zip(ids, todo)):
            with logs.correlation(sandbox=sid, runtime=self.name) as cid:
                logs.operation_started("create", sid)
                try:  # a bad spec fails alone, as create_sandbox would have
                    configs.append(self._config(opts.pop("id"), opts.pop("path"), **opts))
                    where.append(i)
                except Exception as exc:
                    outcomes[i] = exc
            cids.append(cid)
        for i, made in zip(where, self._create(configs, workers)):
            outcomes[i] = made
        results = []
        for sid, cid, outcome in zip(ids, cids, outcomes):
            error = outcome if isinstance(outcome, BaseException) else None
            with logs.correlation(cid, sandbox=sid, runtime=self.name):
                logs.operation_ended("create", sid, t0, error)
            results.append(BatchResult(sid, error is None, None if error else outcome, error=error))
        return results

    def batch_destroy(self, sandbox_ids: Iterable[str], *, workers: int = 8) -> list[BatchResult]:
        """Destroy many sandboxes at once, one result each (in the ids' order; an id
        refused, unknown say, fails alone). They are one batch: the manager starts
        all in one turn and one thread stops them all (``workers`` is not used: it
        stays for callers that pass it)."""
        ids = list(sandbox_ids)
        cids, t0 = [], perf_counter()
        for sid in ids:  # each its own operation in the ops log, as destroy_sandbox's
            with logs.correlation(sandbox=sid, runtime=self.name) as cid:
                logs.operation_started("destroy", sid)
            cids.append(cid)
        errors = self._destroy(ids)
        for sid, cid, error in zip(ids, cids, errors):
            with logs.correlation(cid, sandbox=sid, runtime=self.name):
                logs.operation_ended("destroy", sid, t0, error)
        return [BatchResult(sid, error is None, error=error) for sid, error in zip(ids, errors)]

    def batch_hot_reload(
        self,
        ids_or_specs: Iterable[str | Mapping[str, Any]],
        *,
        workers: int = 8,
    ) -> list[BatchResult]:
        """Hot-reload many sandboxes in parallel, one result each (value: the
        :class:`~sandbox.hotreload.ReloadReport`; error: the CompileError or
        ReloadFailed of that sandbox alone).

        Each item is a sandbox id, or a dict of ``id`` and :meth:`hot_reload`'s
        keyword arguments (``{"id": "a", "modules": ["counter"], "extra": 2}``).

        >>> import sandbox
        >>> with sandbox.start() as rt:
        ...     _ = rt.create_sandbox("doc-batch", "examples/counter")
        ...     [(r.id, r.ok) for r in rt.batch_hot_reload(["doc-batch", "doc-none"])]
        [('doc-batch', True), ('doc-none', False)]
        """

        def reloader(item: str | Mapping[str, Any]) -> tuple[str, Callable[[], Any]]:
            if isinstance(item, str):
                return item, lambda: self.hot_reload(item)
            opts = dict(item)
            sandbox_id = opts.pop("id", None)
            if not isinstance(sandbox_id, str):
                raise ConfigError("id", sandbox_id,
                                  "a sandbox id, or a dict with 'id' and hot_reload options")
            return sandbox_id, lambda: self.hot_reload(sandbox_id, **opts)

        return self._batch([reloader(i) for i in ids_or_specs], workers)

    def batch_run(
        self,
        sandbox_ids: Iterable[str],
        fn: Callable[..., Any],
        *args: Any,
        timeout: float | None = DEFAULT_TIMEOUT,
        workers: int = 8,
    ) -> list[BatchResult]:
        """Run ``fn(*args)`` in each sandbox in parallel, one result each."""
        return self._batch(
            (
                (sid, functools.partial(Sandbox(self, sid).run, fn, *args, timeout=timeout))
                for sid in sandbox_ids
            ),
            workers,
        )


def _readopted(rt: Runtime, sandboxes: SupervisorRef) -> SupervisorRef:
    """A restarted ``sandboxes`` supervisor starts empty: the manager, if running,
    starts every sandbox again under it (actors/manager.py, ``Readopt``)."""
    manager = rt._components.get("manager")
    if manager is not None and manager.is_alive():
        from actors.manager import Readopt

        manager.tell(Readopt(sandboxes))
    return sandboxes


@overload
def start(
    *, cluster: None = None, ray_address: str | None = None, **options: Unpack[StartOptions]
) -> Runtime: ...


@overload
def start(
    *, cluster: Literal["ray"], ray_address: str | None = None, **options: Unpack[StartOptions]
) -> ClusterRuntime: ...


def start(
    *,
    name: str | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    max_restarts: int = 10,
    max_seconds: float = 10.0,
    history: int = 10,
    monitor_interval: float = 1.0,
    audit_path: str | os.PathLike[str] | None = None,
    watch_backend: str = "auto",
    http: tuple[str, int] | None = None,
    alerts: AlertThresholds | Mapping[str, Any] | None = None,
    alert_webhook: str | Mapping[str, Any] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    listen: str | None = None,
    token_file: str | os.PathLike[str] | None = None,
    tls: tuple[str | os.PathLike[str], str | os.PathLike[str]] | None = None,
    cluster: Literal["ray"] | None = None,
    ray_address: str | None = None,
) -> Runtime | ClusterRuntime:
    """Start a runtime. Also a context manager: ``with sandbox.start() as rt: ...``.

    Options (each checked, a bad one raises :class:`~runtime.errors.ConfigError`
    naming it): ``name`` (logs and telemetry), ``base_dir`` (where work directories
    go), ``max_restarts``/``max_seconds`` (the root supervisor's intensity),
    ``history`` (versions kept per module), ``monitor_interval`` (seconds between
    resource samples), ``audit_path`` (a JSON-lines audit file kept after stop),
    ``watch_backend`` ('auto', 'inotify', 'polling'), ``http`` ((host, port) serving
    /health and /metrics), ``alerts`` (alert thresholds, the resource monitor's
    ``warn_at`` included: :class:`~actors.config.AlertThresholds`), ``alert_webhook``
    (a URL alerts are POSTed to as JSON; see :mod:`sandbox.alerts`), ``state_dir`` (the
    durable state: sandboxes, versions, reload journal, audit log; default:
    ``$XDG_DATA_HOME/sandbox/<name>`` for a named runtime, kept across stops and host
    restarts, else a temporary directory removed at stop). Starting again on the same
    ``state_dir`` brings every sandbox back with its latest committed code and history
    (see docs/operations.md).
    ``listen`` (a control endpoint, ``'unix:PATH'`` or ``'tcp:HOST:PORT'``, for
    :func:`sandbox.connect` and the CLI), ``token_file`` (its token; made if absent;
    a tcp endpoint without one gets a random token, ``rt.control_token``), ``tls``
    ((certificate, key) PEM files for tcp).

    ``cluster="ray"`` places the sandboxes on the nodes of a Ray cluster instead
    (``ray_address``: ``"auto"``, an address, or None for a local Ray) and returns a
    :class:`~sandbox.cluster.ClusterRuntime`; ``name`` names it and ``history``,
    ``monitor_interval``, ``max_restarts``, ``max_seconds`` and ``watch_backend``
    configure each node's runtime. See docs/cluster.md.

    >>> import sandbox
    >>> rt = sandbox.start(name="doc-rt")
    >>> rt.list_sandboxes()
    []
    >>> rt.stop()
    """
    if cluster is not None:
        if cluster != "ray":
            raise ConfigError("cluster", cluster, "None (this host) or 'ray'")
        # the cluster needs the optional Ray dependency: loaded only when asked for
        from sandbox.cluster.runtime import ClusterRuntime

        return ClusterRuntime(ray_address=ray_address, name=name, runtime_options={
            "max_restarts": max_restarts, "max_seconds": max_seconds, "history": history,
            "monitor_interval": monitor_interval, "watch_backend": watch_backend,
        }).start()
    return Runtime(
        name=name, base_dir=base_dir, max_restarts=max_restarts, max_seconds=max_seconds,
        history=history, monitor_interval=monitor_interval, audit_path=audit_path,
        watch_backend=watch_backend, http=http, alerts=alerts, alert_webhook=alert_webhook,
        state_dir=state_dir,
        listen=listen, token_file=token_file, tls=tls,
    ).start()


def _plain(value: Any) -> Any:
    """A mapping option as the dict the config builders take (other values unchanged)."""
    return dict(value) if isinstance(value, Mapping) else value
