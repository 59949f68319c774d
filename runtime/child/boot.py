"""The loop that runs inside a sandbox process.

The host (:mod:`runtime.host.process`) starts a child process from the forkserver with
``child_main(sock, boot)``: ``sock`` is the child's end of a socketpair, ``boot`` a
:class:`BootConfig`. The child then:

1. becomes the leader of its own process group without a controlling terminal
   (:func:`own_group`), so the host can kill it and everything it started with one
   ``killpg``, and a terminal's Ctrl-C does not reach it; pins itself to
   ``boot.cpu_affinity`` if given, and applies the OS isolation plan
   (``boot.isolation``); a configuration sent in two parts (``rest_follows``)
   then reads its rest from the channel (:func:`read_rest`);
2. applies the working directory, environment overrides and ``sys.path``;
3. imports the entry ``"module:function"`` and calls it with ``boot.args``, then
   runs the boot hooks (:func:`register_boot_hook`); the entry returns a list of :class:`~runtime.childspec.ChildSpec` (run under a
   one_for_one root supervisor), a :class:`~runtime.supervisor.SupervisorSpec`, or
   an already started supervisor's ref;
4. sends a SYSTEM ``ready`` frame (``{"pid", "names"}``), or, if any of this
   failed, a SYSTEM ``boot_failed`` frame (``{"type", "message", "traceback"}``) and
   exits with :data:`EXIT_BOOT_FAILED`;
5. serves frames until the host says stop or goes away:

   - CALL ``target``: the actor registered under ``target`` gets the call with a
     :class:`SocketReply`, so its answer goes straight back to the socket. An idle
     actor's call runs on the reading thread itself (no thread hand-off), which
     hands the reading to a helper if the handler runs long
     (:mod:`runtime.child.relay`); a busy actor's call waits in its mailbox. An unknown target
     gets an ERROR ``NoSuchActor`` listing the registered names.
   - CAST ``target``: delivered to the actor's ``handle_cast``.
   - SYSTEM ``op``: run from a dispatch table (:func:`register_system_op`);
     built in: ``ping``, ``names``, ``stop``, ``run`` (``(fn, args)``, for hosts
     allowed to pickle). The answer is a REPLY (or ERROR) with the same ref.
   - A cast to a name nobody holds is answered by a SYSTEM ``cast_dropped``
     notice (the host reports it as telemetry).

How it ends, and the exit code the host sees:

- SYSTEM ``stop`` or EOF on the socket (the host is gone): the root supervisor is
  stopped (children in reverse order, ``terminate`` callbacks run), exit
  :data:`EXIT_OK`.
- The root supervisor fails (restart intensity exceeded: escalation): a SYSTEM
  ``exiting`` frame with the reason, exit :data:`EXIT_ESCALATED`.
- The host breaks the protocol: exit :data:`EXIT_PROTOCOL`.

The process always ends with ``os._exit``: multiprocessing's atexit machinery has
nothing to do here and must not be able to hang the exit.

This module is preloaded into the forkserver, so everything it imports at module
level is shared by all children; keep that list short.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal's functions without its enum lookups
import fcntl
import gc
import hashlib
import importlib
import logging
import os
import pickle
import signal
import struct
import sys
import termios
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from runtime import logs as _logs
from runtime import registry
from runtime.actor import NOREPLY, ActorRef, Down, monitor, stop_here
from runtime.child import guard as _guard
from runtime.child import isolation as _isolation
from runtime.child import libc as _libc
from runtime.child import notices as _notices
from runtime.child import snapshot as _snapshot
from runtime.child import swap
from runtime.child.opthreads import OpThreads
from runtime.child.relay import Relay
from runtime.childspec import ChildSpec
from runtime.errors import ActorDead, ActorFailed, NoSuchActor, ProtocolError
from runtime.genserver import NOT_HERE, ServerActor
from runtime.registry import _names, registered, whereis
from runtime.supervisor import Supervisor, SupervisorSpec, gave_up
from runtime.wire.channel import Channel, ChannelClosed, recv_exact
from runtime.wire.mailbox import CALL, CAST, DEFAULT_MAX_FRAME, ERROR, REPLY, SYSTEM, Codec, Envelope

__all__ = [
    "BootConfig",
    "ChildServer",
    "EXIT_BOOT_FAILED",
    "EXIT_ESCALATED",
    "EXIT_INTERNAL",
    "EXIT_OK",
    "EXIT_PROTOCOL",
    "EXIT_CODES",
    "SocketReply",
    "child_main",
    "current_channel",
    "current_server",
    "error_payload",
    "read_rest",
    "register_boot_hook",
    "register_system_op",
    "send_rest",
    "shared_codec",
    "system_ops",
]

EXIT_OK = 0
#: How long a call to a named actor that is being restarted waits for it (seconds).
RESTART_WAIT = 2.0
#: The entry could not be imported, raised, or its supervisor did not start.
EXIT_BOOT_FAILED = 70
#: The app's root supervisor gave up (more restarts than its intensity allows).
EXIT_ESCALATED = 71
#: The host sent a frame that broke the protocol.
EXIT_PROTOCOL = 72
#: The child loop itself crashed (a bug in the runtime).
EXIT_INTERNAL = 73

#: What each distinctive exit code means (for the host's exit reasons).
EXIT_CODES: dict[int, str] = {
    EXIT_BOOT_FAILED: "boot failed",
    EXIT_ESCALATED: "the app's root supervisor gave up (escalation)",
    EXIT_PROTOCOL: "the host broke the mailbox protocol",
    EXIT_INTERNAL: "internal error in the sandbox loop",
}


@dataclass
class BootConfig:
    """Everything a child needs to start; plain data, pickled once to the child.

    - ``entry``: ``"module:function"`` returning the app's child specs.
    - ``args``: positional arguments for the entry function.
    - ``sys_path``: directories put in front of ``sys.path`` (the app's directory).
    - ``name``: the sandbox's name (logs, the root supervisor's name).
    - ``max_frame``: largest frame body in bytes, both ways.
    - ``allow_pickle``: the child may unpickle values the host sends (the host
      pickles what msgpack cannot carry). Only for children that trust the host,
      which they always do; off by default to keep the wire plain data.
    - ``send_pickle``: the child may pickle values it sends; only useful when the
      host reads with ``trusted=True``, otherwise the host refuses such frames.
    - ``cwd``: working directory of the child.
    - ``env``: environment overrides (a ``None`` value removes the variable).
    - ``shutdown``: seconds the root supervisor gets to stop on a graceful stop.
    - ``cpu_affinity``: CPUs the child (all its threads) may run on; ``None``
      leaves scheduling to the kernel.
    - ``states``: ``{registered name: pickled state}`` taken from the previous
      process by the ``get_states`` op; restored into those actors after boot.
    - ``modules``: the app's compiled modules (:class:`~runtime.child.swap.ModuleCode`),
      served by the app finder: the child never imports app code from disk.
    """

    entry: str
    args: tuple = ()
    sys_path: list[str] = field(default_factory=list)
    name: str = "sandbox"
    max_frame: int = DEFAULT_MAX_FRAME
    allow_pickle: bool = False
    send_pickle: bool = False
    cwd: str | None = None
    env: dict[str, str | None] = field(default_factory=dict)
    shutdown: float = 5.0
    states: Any = None
    cpu_affinity: list[int] | None = None
    modules: list[Any] = field(default_factory=list)
    #: OS-level isolation plan (:func:`runtime.child.isolation.plan`), applied first thing.
    isolation: dict[str, Any] | None = None
    #: Runtime guard policy (:meth:`actors.profiles.Profile.guard_policy`), installed
    #: after the environment is set up and before the entry is imported.
    guard: dict[str, Any] | None = None
    #: Calls to idle actors run on the reading thread (:mod:`runtime.child.relay`);
    #: False sends every call through the actor's mailbox (one thread hand-off).
    run_in_place: bool = True
    #: This part holds only what comes before the app (the isolation plan, the CPU
    #: affinity): the child applies it while the host finishes the start (compile,
    #: versions), then reads the rest of its configuration from its channel
    #: (:func:`read_rest`) before anything else runs.
    rest_follows: bool = False


# -- system ops ------------------------------------------------------------------------

SystemOp = Callable[["ChildServer", Any], Any]
_system_ops: dict[str, tuple[SystemOp, bool]] = {}
#: Where ``threaded`` ops run: a thread kept from an earlier op, or a new one.
_OP_THREADS = OpThreads()


def register_system_op(name: str, *, threaded: bool = False) -> Callable[[SystemOp], SystemOp]:
    """Register ``fn(server, payload) -> result`` as the handler of SYSTEM op ``name``.

    The result goes back to the host as a REPLY (an exception as an ERROR).
    Handlers run in the reader thread, so no frame is read while one runs: keep
    them short, or pass ``threaded=True`` to run each request on a thread of its
    own (an idle one kept from an earlier op, see :mod:`runtime.child.opthreads`;
    calls keep flowing meanwhile). Registering a name again replaces the handler.

    >>> @register_system_op("doc-echo")
    ... def _echo(server, payload):
    ...     return payload
    >>> "doc-echo" in system_ops()
    True
    """

    def deco(fn: SystemOp) -> SystemOp:
        _system_ops[name] = (fn, threaded)
        return fn

    return deco


def system_ops() -> list[str]:
    """Names of the registered SYSTEM ops."""
    return sorted(_system_ops)


BootHook = Callable[["ChildServer"], None]
_boot_hooks: list[BootHook] = []


def register_boot_hook(fn: BootHook) -> BootHook:
    """Run ``fn(server)`` in every child after its root supervisor started, before
    ``ready`` is sent (``server.boot`` is the :class:`BootConfig`, ``server.root``
    the root supervisor). An exception fails the boot. Register at import time of
    a module the forkserver preloads (or the app imports).
    """
    if fn not in _boot_hooks:
        _boot_hooks.append(fn)
    return fn


@register_system_op("get_states")
def _op_get_states(server: ChildServer, payload: Any) -> dict[str, bytes]:
    """Each named GenServer's state, pickled: opaque bytes the host hands back at boot
    (``BootConfig.states``) and never unpickles itself."""
    return swap.snapshot_states()


@register_system_op("reload", threaded=True)
@_logs.sandbox_op  # the host operation's correlation id, and log lines (runtime/logs.py)
def _op_reload(server: ChildServer, payload: Any) -> dict[str, Any]:
    """Swap code in place (see :mod:`runtime.child.swap`); then apply child spec changes."""
    report = swap.reload_from_wire(payload)
    if report.get("ok") and server.root is not None:
        report["children"] = swap.upgrade_children(server.root, server.boot.entry, server.boot.args)
    return report


@register_system_op("reload_cancel")  # inline, never queued behind the reload itself
def _op_reload_cancel(server: ChildServer, payload: Any) -> str:
    """The host's wait ran out: the verdict of reload ``payload`` (see swap.cancel_reload)."""
    return swap.cancel_reload(str(payload))


@register_system_op("code_digests")  # inline: a cheap look at sys.modules
def _op_code_digests(server: ChildServer, payload: Any) -> dict[str, str | None]:
    """The SHA-256 of the code each named app module runs from (see swap.serving)."""
    return swap.serving(payload if isinstance(payload, list) else [])


@register_system_op("snapshot", threaded=True)
def _op_snapshot(server: ChildServer, payload: Any) -> dict[str, Any]:
    """Every named actor's state as plain data (see :mod:`runtime.child.snapshot`)."""
    return _snapshot.take(allow_pickle=server.boot.allow_pickle,
                          suspend_timeout=float((payload or {}).get("suspend_timeout", 5.0)))


@register_system_op("restore", threaded=True)
def _op_restore(server: ChildServer, payload: Any) -> dict[str, Any]:
    """Put a snapshot's states back, all or nothing; ``ok`` False with the step on failure."""
    return swap.failure_report(lambda: _snapshot.put_back(
        payload["actors"], allow_pickle=server.boot.allow_pickle, extra=payload.get("extra"),
        suspend_timeout=float(payload.get("suspend_timeout", 5.0))))


@register_system_op("unload_module", threaded=True)
def _op_unload_module(server: ChildServer, payload: Any) -> dict[str, Any]:
    """Remove an app module (see :func:`runtime.child.swap.unload_module`)."""
    entry_module = server.boot.entry.partition(":")[0]
    return swap.failure_report(lambda: swap.unload_module(payload["module"], entry_module))


def _restore_states(server: ChildServer) -> None:
    if server.boot.states:
        swap.restore_states(server.boot.states)


register_boot_hook(_restore_states)
register_boot_hook(_notices.forward_supervisor_events)  # actor restarts reach the host


@register_system_op("ping")
def _op_ping(server: ChildServer, payload: Any) -> Any:
    return "pong" if payload is None else payload


@register_system_op("names")
def _op_names(server: ChildServer, payload: Any) -> list[str]:
    return registered()


@register_system_op("run", threaded=True)
def _op_run(server: ChildServer, payload: Any) -> Any:
    """``(fn, args)`` as :func:`runtime.wire.shipping.ship` bytes: call ``fn(*args)`` here."""
    if not server.boot.allow_pickle:  # the host checks too; this side does not trust it to
        raise PermissionError("this sandbox's profile does not allow run()")
    from runtime.wire.shipping import land

    fn, args = land(payload) if isinstance(payload, bytes) else payload
    if not callable(fn):
        raise TypeError(f"run needs (function, args), got a {type(fn).__name__} to call")
    return fn(*args)


@register_system_op("stop")
def _op_stop(server: ChildServer, payload: Any) -> str:
    server.shutdown("stop requested by the host")
    server.request_exit(EXIT_OK)
    return "stopped"


# -- replies ---------------------------------------------------------------------------


def error_payload(exc: BaseException, actor: str | None = None) -> dict[str, Any]:
    """The ERROR frame payload for ``exc``: ``{"type", "message", "traceback", "actor"}``.

    >>> error_payload(ValueError("bad"), "a")["type"]
    'ValueError'
    """
    if isinstance(exc, ActorFailed):
        return {
            "type": "ActorFailed",
            "message": exc.error,
            "traceback": exc.remote_traceback,
            "actor": exc.actor,
            "correlation_id": exc.correlation_id,
        }
    if isinstance(exc, ActorDead):
        return {
            "type": "ActorDead",
            "message": str(exc.reason) if exc.reason is not None else "",
            "traceback": "",
            "actor": exc.actor,
        }
    if isinstance(exc, NoSuchActor):
        return {
            "type": "NoSuchActor",
            "message": str(exc),
            "traceback": "",
            "actor": exc.name,
            "names": registered(),
        }
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
        "actor": actor,
    }


class SocketReply(tuple[Any, ...]):
    """A :class:`~runtime.actor.ReplySink` that answers the host over the socket.

    ``set_result`` sends a REPLY frame with the call's ref, ``set_exception`` an
    ERROR frame. A reply value that cannot be encoded (or is over ``max_frame``)
    becomes an ERROR frame saying so, never a broken stream.

    Made as ``SocketReply((server, ref, actor))``: a tuple, so tuple's C constructor
    makes it without a Python ``__init__`` (one per call, on every call's path). A
    sink is compared by identity, as any object: the pending set and ``From`` hold
    sinks, and two calls with the same ref are two callers.

    >>> a, b = SocketReply((None, 1, "x")), SocketReply((None, 1, "x"))
    >>> a == b, a == a, len({a, b})
    (False, True, 2)
    """

    __slots__ = ()
    __hash__ = object.__hash__
    __eq__ = object.__eq__
    __ne__ = object.__ne__

    def set_result(self, value: Any) -> None:
        server, ref, actor = self
        server.reply(ref, value, actor)

    def set_exception(self, exc: BaseException) -> None:
        server, ref, actor = self
        server.reply_error(ref, exc, actor)


# -- the server ------------------------------------------------------------------------

_current: ChildServer | None = None
#: Isolation layers applied in this process, and those skipped (with the reason).
_layers: list[str] = []
_skipped: dict[str, str] = {}

#: Bytes one recv may read in the child (frames larger than this just take more reads).
#: Every page of the buffer is private memory of each sandbox (it is zeroed when
#: made): 16 KiB holds a call, or a batch of hundreds of casts, in one read.
_READ_SIZE = 16 * 1024


def shared_codec(allow_pickle: bool, max_frame: int, max_items: int | None = None) -> Codec:
    """The codec for these settings, made once per process (a codec is safe to
    share: its packers and item counts are per thread).

    A codec makes a closure and a dict per nesting level (~60 us), and each thread
    that packs with it makes its packers once. In a sandbox the usual ones are made
    in the fork server (below; this module is preloaded), pages a sandbox would
    otherwise write; the host shares one per setting between all its connections,
    so starting a child makes none and a thread's first call to a new child packs
    with the packers it already has.

    >>> shared_codec(False, DEFAULT_MAX_FRAME) is shared_codec(False, DEFAULT_MAX_FRAME)
    True
    """
    key = (bool(allow_pickle), max_frame, max_items)
    codec = _codecs.get(key)
    if codec is None:
        if len(_codecs) >= _MAX_CODECS:  # unusual settings: do not keep every one
            return Codec(allow_pickle=key[0], max_frame=max_frame, max_items=max_items)
        codec = _codecs.setdefault(
            key, Codec(allow_pickle=key[0], max_frame=max_frame, max_items=max_items))
    return codec


_MAX_CODECS = 32
_codecs: dict[tuple[bool, int, int | None], Codec] = {}
for _allow in (False, True):
    shared_codec(_allow, DEFAULT_MAX_FRAME)
# The app finder checks each module's code against its SHA-256 (runtime.child.swap):
# OpenSSL's first digest of a kind fetches its implementation and caches it, done
# here once, in the fork server, rather than in each sandbox.
hashlib.sha256(b"").digest()


def _send_log(record: dict[str, Any]) -> None:
    server = _current
    if server is not None:
        server.send(SYSTEM, None, "log", record)


#: The sandbox's logging (the app's and the runtime's) crosses the channel as
#: records to the host's handlers (runtime/logs.py), never to its stderr. Made here,
#: in the fork server, for the same reason as the codecs.
_LOG_HANDLER = _logs.ChannelHandler(_send_log)


def current_channel() -> Channel | None:
    """The channel to the host, in a sandbox process (None elsewhere).

    For tests that must break the protocol on purpose; apps have no business here.
    """
    return _current.channel if _current is not None else None


def current_server() -> ChildServer | None:
    """The running :class:`ChildServer`, in a sandbox process (None elsewhere)."""
    return _current


class ChildServer:
    """The sandbox side of one host connection: boots the app and serves frames."""

    def __init__(self, sock: Any, boot: BootConfig) -> None:
        self.boot = boot
        self.read_codec = shared_codec(boot.allow_pickle, boot.max_frame)
        self.write_codec = shared_codec(boot.send_pickle, boot.max_frame)
        # A modest read buffer: every page of it is private memory of this child.
        self.channel = Channel(sock, self.read_codec, read_size=_READ_SIZE)
        self.root: ActorRef | None = None
        self._lock = threading.Lock()
        self._stopping = False
        self._exit_code: int | None = None

    # -- sending ---------------------------------------------------------------------
    def send(self, kind: str, ref: int | None, target: str | None, payload: Any) -> None:
        """Send one frame to the host; a gone host is not an error here (EOF tells)."""
        self.send_raw(self.write_codec.frame(kind, ref, target, payload))

    def send_raw(self, data: bytes) -> None:
        try:
            self.channel.send_raw(data)
        except (ChannelClosed, OSError):
            pass

    def reply(self, ref: int | None, value: Any, actor: str | None = None) -> None:
        try:
            data = self.write_codec.pack_frame(REPLY, ref, None, value)
        except Exception as exc:  # unencodable or oversized: tell the caller why
            data = self.write_codec.frame(
                ERROR,
                ref,
                None,
                {
                    "type": "EncodeError",
                    "message": _unsendable_reply(actor, value, exc),
                    "traceback": "",
                    "actor": actor,
                },
            )
        self.send_raw(data)

    def reply_error(self, ref: int | None, exc: BaseException, actor: str | None = None) -> None:
        payload = error_payload(exc, actor)
        try:
            data = self.write_codec.frame(ERROR, ref, None, payload)
        except Exception:  # e.g. an oversized traceback: keep what surely fits
            payload["traceback"] = payload.get("traceback", "")[-4096:]
            payload.pop("names", None)
            data = self.write_codec.frame(ERROR, ref, None, payload)
        self.send_raw(data)

    # -- lifecycle -------------------------------------------------------------------
    def boot_app(self) -> None:
        """Apply the boot config, call the entry and start the root supervisor."""
        boot = self.boot
        _isolation.check_required(boot.isolation, _layers, _skipped)  # before any user code
        if boot.cwd:
            os.chdir(boot.cwd)
        for key, value in boot.env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for path in reversed(boot.sys_path):
            if path in sys.path:
                sys.path.remove(path)
            sys.path.insert(0, path)
        if boot.modules:
            swap.install_finder(boot.modules)
        if boot.guard is not None:
            _guard.install_guard(boot.guard, on_violation=self._report_violation)
            _layers.append("audit-hook")
        module_name, sep, fn_name = boot.entry.partition(":")
        if not sep or not module_name or not fn_name:
            raise ValueError(f"invalid entry {boot.entry!r}: expected 'module:function'")
        module = importlib.import_module(module_name)
        try:
            fn = getattr(module, fn_name)
        except AttributeError:
            raise AttributeError(
                f"entry {boot.entry!r}: module {module_name!r} ({getattr(module, '__file__', '?')}) "
                f"has no attribute {fn_name!r}"
            ) from None
        result = fn(*boot.args)
        self.root = self._start_root(result)
        monitor(self.root, self._root_down)
        for hook in list(_boot_hooks):
            hook(self)

    def _report_violation(self, event: dict[str, Any]) -> None:
        """The guard refused (or, under audit level full, noted) an operation: tell the host."""
        self.send(SYSTEM, None, "security_violation", event)

    def _start_root(self, result: Any) -> ActorRef:
        if isinstance(result, SupervisorSpec):
            return result.start()
        if isinstance(result, ActorRef):
            return result
        if isinstance(result, (list, tuple)) and all(isinstance(c, ChildSpec) for c in result):
            return Supervisor.start(list(result), strategy="one_for_one")
        raise TypeError(
            f"entry {self.boot.entry!r} returned {type(result).__name__}; expected a list of "
            "ChildSpec, a SupervisorSpec or a started supervisor"
        )

    def _root_down(self, down: Down) -> None:
        """The root supervisor ended without being asked: the app is gone."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        code = EXIT_ESCALATED if down.reason.abnormal or gave_up(down.reason) else EXIT_OK
        self.send(SYSTEM, None, "exiting", {"code": code, "reason": str(down.reason)})
        _exit(code)

    def shutdown(self, why: str = "") -> None:
        """Stop the app gracefully (children in reverse order, terminate callbacks run)."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        root = self.root
        if root is not None and root.is_alive():
            # On this thread, for every idle actor whose ending runs no app code: no
            # wake-up of the supervisors' and actors' threads and wait for each. The
            # process exits next (every caller's path), so their threads stay parked.
            stop_here(root, timeout=self.boot.shutdown, wake=False)

    def request_exit(self, code: int) -> None:
        """Leave the serve loop (after the current frame's reply) with ``code``."""
        self._exit_code = code

    def run(self) -> int:
        """Boot, say ready, serve; returns the exit code."""
        try:
            self.boot_app()
        except BaseException as exc:
            self.send(
                SYSTEM,
                None,
                "boot_failed",
                {
                    "type": type(exc).__name__,
                    "message": str(exc),
                    "traceback": "".join(traceback.format_exception(exc)),
                },
            )
            self.shutdown("boot failed")
            return EXIT_BOOT_FAILED
        self.send(
            SYSTEM,
            None,
            "ready",
            {
                "pid": os.getpid(),
                "names": registered(),
                "isolation": list(_layers),
                "isolation_skipped": dict(_skipped),
            },
        )
        return self.serve()

    def serve(self) -> int:
        relay = Relay(
            self.channel.recv_held,  # under the relay's token, which is the channel's lock
            self._dispatch,
            done=lambda: self._exit_code is not None,
            in_place=self.boot.run_in_place,
            call_here=self.call_here,
            token=self.channel.recv_lock,
            fd=self.channel.fileno(),  # input arriving while a handler runs raises SIGALRM
        )
        step = relay.step
        try:
            while self._exit_code is None:
                try:
                    step()
                except ProtocolError as exc:
                    print(f"sandbox {self.boot.name}: host broke the protocol: {exc}", file=sys.stderr)
                    self.shutdown("protocol error")
                    return EXIT_PROTOCOL
                except (ChannelClosed, OSError):
                    self.shutdown("the host closed the channel")
                    return EXIT_OK
            return self._exit_code
        finally:
            relay.close()

    def _dispatch(self, unit: list[Any], here: bool) -> None:
        """One unit from the relay: a call, a system op, or consecutive casts to one
        actor (one mailbox item: one wake-up of its thread instead of one per cast).
        ``here``: a call to an idle actor may run on this thread (see runtime.child.relay)."""
        env = unit[0]
        kind = env.kind
        if kind == CAST:
            self._cast(env.target, [e.payload for e in unit])
        elif kind == CALL:
            self._call(env.ref, env.target, env.payload, here)
        elif kind == SYSTEM:
            self._system(env.ref, env.target, env.payload)
        # REPLY / ERROR from the host: nothing asked for them; ignore.

    def call_here(self, env: Envelope) -> bool:
        """Run a call to an idle GenServer on this thread and send its reply; False
        (nothing done) for anything else, which :meth:`_dispatch` then handles.

        The relay's short way for every call it may run in place: the server found
        by one dict lookup, its handler run by :meth:`ServerActor.call_here
        <runtime.genserver.ServerActor.call_here>`, the reply framed and sent here
        (see :meth:`reply`, which this inlines: it is every call's path).
        """
        ref = _names.get(env.target)  # type: ignore[arg-type]
        if ref is None:
            return False
        actor = ref._actor
        if type(actor) is not ServerActor:
            return False
        sink = SocketReply((self, env.ref, actor.actor_id))
        value = actor.call_here(env.payload, sink)
        if value is NOT_HERE:
            return False
        if value is not NOREPLY:
            try:
                data = self.write_codec.pack_frame(REPLY, env.ref, None, value)
            except Exception:  # unencodable or oversized: reply() says why
                sink.set_result(value)
                return True
            try:
                self.channel.send_raw(data)
            except (ChannelClosed, OSError):
                pass  # the host is gone: the relay's next read ends the loop
        return True

    def _call(self, ref: int | None, target: str | None, request: Any, here: bool = False) -> None:
        actor = whereis(target) if target is not None else None
        if actor is None and target is not None and target in registry._known:
            # Its supervisor is restarting it: wait for it off the reader thread, so
            # the call is served by the new actor instead of failing at once.
            threading.Thread(
                target=self._call_when_back, args=(ref, target, request), daemon=True,
                name=f"await-{target}",
            ).start()
            return
        if actor is None:
            self.reply_error(ref, NoSuchActor(str(target), registered()), target)
            return
        try:
            actor.call_into(request, SocketReply((self, ref, actor.id)), run_here=here)
        except ActorDead as exc:
            if target is not None and target in registry._known:  # ending right now
                threading.Thread(
                    target=self._call_when_back, args=(ref, target, request), daemon=True,
                    name=f"await-{target}",
                ).start()
            else:
                self.reply_error(ref, exc, actor.id)

    def _call_when_back(self, ref: int | None, target: str, request: Any) -> None:
        stale = whereis(target)
        if stale is not None:  # still registered while it ends: wait for its successor
            stale.join(RESTART_WAIT)
        actor = registry.await_name(target, RESTART_WAIT)
        if actor is None:
            self.reply_error(ref, NoSuchActor(target, registered()), target)
            return
        try:
            actor.call_into(request, SocketReply((self, ref, actor.id)))
        except ActorDead as exc:
            self.reply_error(ref, exc, actor.id)

    def _cast(self, target: str | None, requests: list[Any]) -> None:
        actor = whereis(target) if target is not None else None
        try:
            if actor is None:
                raise NoSuchActor(str(target), registered())
            if len(requests) == 1:
                actor.cast(requests[0])
            else:
                actor.cast_many(requests)
        except (ActorDead, NoSuchActor) as exc:  # casts are fire and forget; tell the host
            self.send(SYSTEM, None, "cast_dropped",
                      {"target": target, "reason": str(exc), "count": len(requests)})

    def _system(self, ref: int | None, op: str | None, payload: Any) -> None:
        entry = _system_ops.get(op or "")
        if entry is None:
            self.reply_error(
                ref,
                LookupError(f"unknown system op {op!r}; known: {', '.join(system_ops())}"),
                None,
            )
            return
        fn, threaded = entry
        if threaded:
            _OP_THREADS.run(self._run_op, fn, ref, payload)
        else:
            self._run_op(fn, ref, payload)

    def _run_op(self, fn: SystemOp, ref: int | None, payload: Any) -> None:
        try:
            result = fn(self, payload)
        except BaseException as exc:
            if ref is not None:
                self.reply_error(ref, exc, None)
            return
        if ref is not None:
            self.reply(ref, result, None)


def _unsendable_reply(actor: str | None, value: Any, exc: BaseException) -> str:
    """Why a reply cannot cross to the host, naming only what the app can change."""
    who = f"the reply of {actor}" if actor else "the sandbox's answer"
    if isinstance(exc, TypeError):
        text = str(exc)  # the codec names the offending type, however deep it is
        kind = (text.split("cannot send a ", 1)[1].split(" value", 1)[0]
                if "cannot send a " in text else type(value).__name__)
        return (f"{who} cannot be sent to the host: cannot send a {kind} value; replies "
                "carry only msgpack-native values (None, bool, int, float, str, bytes, "
                "list, dict, tuple, set, frozenset, datetime): reply with plain data")
    if isinstance(exc, ProtocolError):  # over the frame limit
        return (f"{who} cannot be sent to the host: it is over the "
                f"{DEFAULT_MAX_FRAME // (1024 * 1024)} MiB a message may carry; "
                "reply with less (for example in parts, or a path to a file)")
    return f"{who} cannot be sent to the host: {exc}"


def _exit(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


def own_group() -> None:
    """Make this process the leader of a process group of its own, with no
    controlling terminal: the host kills the whole tree with one ``killpg``, and
    no terminal's signals (Ctrl-C) or input reach it.

    ``setpgid``, not ``setsid``: on Linux a new session is also a new scheduling
    autogroup (``kernel.sched_autogroup_enabled``), and a group per sandbox made
    the scheduler balance 100 sandboxes as 100 groups against the one of the
    host's calling threads (and of a bare child), which cost calls per second
    under load. The controlling terminal a new session would have shed is dropped
    here instead (``TIOCNOTTY``); as a process that leads no session, the
    sandbox can never acquire one again.
    """
    try:
        os.setpgid(0, 0)
    except OSError:
        pass  # already a session (so group) leader: nothing to leave
    try:
        tty = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return  # no controlling terminal
    try:
        fcntl.ioctl(tty, termios.TIOCNOTTY)
    finally:
        os.close(tty)


#: The length of the configuration's rest on the channel (:func:`send_rest`).
_REST = struct.Struct(">I")


def send_rest(sock: Any, boot: BootConfig) -> None:
    """Send a child started with ``rest_follows`` the rest of its configuration,
    ``boot`` (the host side of :func:`read_rest`), on its channel before any frame.
    The plan it already applied is not sent again: the child keeps its own."""
    body = pickle.dumps(replace(boot, isolation=None, rest_follows=False),
                        protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_REST.pack(len(body)) + body)


def read_rest(sock: Any, first: BootConfig) -> BootConfig | None:
    """The rest of the configuration whose first part, ``first``, this child applied
    (:func:`send_rest`); the plan and CPU affinity stay ``first``'s, so the layers
    the boot checks are those applied. None if the host closed the channel first
    (it gave the start up)."""
    head = recv_exact(sock, _REST.size)
    body = None if head is None else recv_exact(sock, _REST.unpack(head)[0])
    if body is None:
        return None
    rest: BootConfig = pickle.loads(body)
    rest.isolation, rest.cpu_affinity = first.isolation, first.cpu_affinity
    return rest


def child_main(sock: Any, boot: BootConfig) -> None:
    """Entry point of a sandbox process (the target of the forkserver Process).

    The OS layers first; a configuration sent in two parts (``rest_follows``) has
    its rest read after them, so the layers overlap the host's work on the rest
    and every layer is on before anything of the app (its modules, its entry)
    reaches this process."""
    global _current
    code = EXIT_INTERNAL
    try:
        own_group()
        if boot.cpu_affinity:
            try:
                os.sched_setaffinity(0, boot.cpu_affinity)
            except (OSError, ValueError):
                pass  # not allowed here (or a CPU went away): run unpinned
        if boot.isolation is not None:
            applied, skipped = _isolation.apply(boot.isolation)
            _layers.extend(applied)
            _skipped.update(skipped)
        if boot.rest_follows:
            rest = read_rest(sock, boot)
            if rest is None:
                code = EXIT_OK  # given up before its start: nothing of the app ran
                return
            boot = rest
        if boot.guard is not None:
            # The layers' C library handle, the fork server's: calls through it raise
            # no audit event, so none may be left where code the guard judges could
            # find it (without a guard, ctypes is the child's to import anyway, and
            # freeing the handle would only write to the server's pages).
            _libc.forget()
        # Everything inherited from the forkserver is long-lived: keep the collector
        # off those objects, so it never writes to (and un-shares) their pages.
        gc.freeze()
        # The relay's ticks must land in the main thread: every thread started from
        # here on (actors, supervisors) inherits this mask; the relay unblocks the
        # signal in the main thread alone (runtime.child.relay).
        _signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        server = ChildServer(sock, boot)
        _current = server
        logging.getLogger().addHandler(_LOG_HANDLER)
        code = server.run()
    except BaseException:
        try:
            traceback.print_exc()
        except Exception:
            pass
    finally:
        _exit(code)
