"""Supervisors, as in OTP: start children in order, restart them when they fail.

A :class:`Supervisor` is an actor that owns an ordered list of children, each
described by a :class:`~runtime.childspec.ChildSpec`. It monitors every child (and
links to it, so children do not outlive a supervisor that is killed); when one ends
it applies the child's restart type and the supervisor's strategy:

- ``one_for_one``: restart only the child that ended;
- ``one_for_all``: stop all the others (reverse order), restart all (in order);
- ``rest_for_one``: stop the children started after it (reverse order), restart it
  and those (in order).

Restart types: ``permanent`` children are always restarted, ``transient`` only
after an abnormal exit (:attr:`ExitReason.abnormal`), ``temporary`` never (and are
forgotten once they end). More than ``max_restarts`` restarts within
``max_seconds`` and the supervisor gives up: it stops its children in reverse order
and ends with a ``shutdown`` exit reason whose message starts with
``reached_max_restart_intensity`` (OTP's ``{shutdown, reached_max_restart_intensity}``):
its own supervisor restarts it only if it is ``permanent`` (:func:`gave_up` tells
this exit from an ordinary stop).

A start function may return :data:`~runtime.childspec.IGNORE` (OTP's ``ignore``): a
permanent or transient child's spec is kept with no actor (``which_children`` shows
``ref=None``; ``restart_child`` tries again), a temporary child's spec is dropped.

>>> from runtime.genserver import GenServer
>>> class Box(GenServer):
...     def handle_call(self, request, state):
...         return state, state
>>> sup = Supervisor.start([Box.child_spec(7, id="box")])
>>> sup.child_ref("box").call("get")
7
>>> [c.id for c in sup.which_children()]
['box']
>>> sup.stop().kind
'shutdown'
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from runtime import telemetry
from runtime.actor import (
    Actor, ActorRef, Down, Exit, ExitReason, Reply, demonitor, ending_here, link, monitor,
    stop_here, unlink,
)
from runtime.childspec import (
    BRUTAL_KILL,
    IGNORE,
    INFINITY,
    ChildSpec,
    IgnoreType,
    Restart,
    Shutdown,
    shutdown_timeout,
)
from runtime.errors import ActorFailed, ChildSpecError, ConfigError, SupervisorError
from runtime.registry import register

__all__ = [
    "ChildInfo",
    "ChildStartFailed",
    "STRATEGIES",
    "Strategy",
    "Supervisor",
    "SupervisorRef",
    "SupervisorSpec",
    "gave_up",
]

log = logging.getLogger("runtime.supervisor")

Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
STRATEGIES: tuple[str, ...] = ("one_for_one", "one_for_all", "rest_for_one")

#: How long a child supervisor gets to stop its own children: as long as it takes (OTP).
SUPERVISOR_SHUTDOWN: Shutdown = INFINITY
#: Default timeout of :meth:`SupervisorRef.stop` called by a user (each child still
#: gets its own ``shutdown`` time inside it).
STOP_TIMEOUT = 30.0
#: How an exit reason of a supervisor that gave up starts (see :func:`gave_up`).
MAX_INTENSITY = "reached_max_restart_intensity"
#: Default timeout of the run-time API calls; generous because terminate_child and
#: restart_child wait for a child's shutdown or init.
API_TIMEOUT = 30.0

Clock = Callable[[], float]


def gave_up(reason: ExitReason | None) -> bool:
    """Whether ``reason`` is the exit of a supervisor that exceeded its restart intensity.

    Such an exit is a ``shutdown`` (not abnormal, as in OTP), so this is how an owner
    tells it from an ordinary stop.

    >>> gave_up(ExitReason.shutdown()), gave_up(ExitReason("shutdown", MAX_INTENSITY + ": 4 restarts"))
    (False, True)
    """
    return (
        reason is not None and reason.kind == "shutdown" and reason.message.startswith(MAX_INTENSITY)
    )


class ChildStartFailed(SupervisorError):
    """A child's start function raised (or returned something that is not an actor).

    ``child_id`` names the child and ``reason`` is the failure as an
    :class:`~runtime.actor.ExitReason` (with the traceback text).

    >>> err = ChildStartFailed("sup", "db", ExitReason("exception", "OSError: refused"))
    >>> str(err)
    "supervisor 'sup': child 'db' failed to start: OSError: refused"
    """

    def __init__(self, supervisor: str, child_id: str, reason: ExitReason) -> None:
        self.supervisor = supervisor
        self.child_id = child_id
        self.reason = reason
        super().__init__(
            f"supervisor {supervisor!r}: child {child_id!r} failed to start: {reason.message}"
        )


@dataclass(frozen=True)
class ChildInfo:
    """One row of :meth:`SupervisorRef.which_children`.

    ``ref`` is None while the child is not running (terminated, ignored, or between
    a crash and its restart); ``alive`` says whether the actor behind ``ref`` runs;
    ``restarting`` is True while a restart that failed is being retried (OTP shows
    ``restarting`` instead of a pid). ``spec`` is the child's spec (its ``meta`` lets
    an owner rebuild what it knew).
    """

    id: str
    ref: ActorRef | None
    type: Literal["worker", "supervisor"]
    restart: Restart
    alive: bool
    spec: ChildSpec | None = field(default=None, compare=False, repr=False)
    restarting: bool = False

    @property
    def status(self) -> Literal["running", "restarting", "stopped"]:
        """``running``, ``restarting`` (a failed restart is being retried) or ``stopped``."""
        if self.alive:
            return "running"
        return "restarting" if self.restarting else "stopped"


# -- validation ------------------------------------------------------------------------
def _validate(
    children: Iterable[ChildSpec] | Any,
    strategy: Any,
    max_restarts: Any,
    max_seconds: Any,
) -> tuple[ChildSpec, ...]:
    """Check the supervisor options; return the children as a tuple."""
    if strategy not in STRATEGIES:
        raise ConfigError("strategy", strategy, "one of " + ", ".join(STRATEGIES))
    if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
        raise ConfigError("max_restarts", max_restarts, "an integer >= 0")
    if (
        isinstance(max_seconds, bool)
        or not isinstance(max_seconds, (int, float))
        or not max_seconds > 0
    ):
        raise ConfigError("max_seconds", max_seconds, "a number of seconds > 0")
    if isinstance(children, (str, bytes, ChildSpec)) or not isinstance(children, Iterable):
        raise ChildSpecError(
            f"children must be a sequence of ChildSpec, got {children!r}"
        )
    specs = tuple(children)
    seen: dict[str, int] = {}
    for i, spec in enumerate(specs):
        if not isinstance(spec, ChildSpec):
            raise ChildSpecError(
                f"children[{i}] is {spec!r}, not a ChildSpec; build one with ChildSpec(...) "
                "or GenServer.child_spec(...)"
            )
        if spec.id in seen:
            raise ChildSpecError(
                f"duplicate child id {spec.id!r} (children[{seen[spec.id]}] and children[{i}]); "
                "ids must be unique within a supervisor"
            )
        seen[spec.id] = i
    return specs


def _fmt_seconds(s: float) -> str:
    return f"{s:g}s"


# -- the actor ---------------------------------------------------------------------------
@dataclass(eq=False)
class _Child:
    spec: ChildSpec
    ref: ActorRef | None = None
    mref: str | None = None
    #: a restart of this child failed to start and a retry is queued
    restarting: bool = False

    @property
    def id(self) -> str:
        return self.spec.id


@dataclass(frozen=True)
class _Retry:
    """Sent to itself after a restart failed to start: retry, counted against intensity."""

    child: _Child
    reason: ExitReason


@dataclass(frozen=True)
class _Api:
    op: str
    arg: Any = None


@dataclass(frozen=True)
class _Err:
    """An API error travels back as a value: raising in on_call would fail the supervisor."""

    exc: SupervisorError


class SupervisorRef(ActorRef):
    """Handle on a running :class:`Supervisor`, with the OTP run-time API.

    Each method is a call into the supervisor, so it is serialised with restarts.
    Unknown child ids raise :class:`~runtime.errors.SupervisorError` listing the
    ids that exist.

    >>> class Idle(Actor): pass
    >>> sup = Supervisor.start([])
    >>> ref = sup.start_child(ChildSpec("idle", start=Idle.start))
    >>> sup.count_children()
    {'specs': 1, 'active': 1, 'supervisors': 0, 'workers': 1}
    >>> sup.terminate_child("idle"); sup.child_ref("idle") is None
    True
    >>> sup.delete_child("idle"); sup.which_children()
    []
    >>> _ = sup.stop()
    """

    __slots__ = ()

    def call(self, request: Any, *, timeout: float | None = API_TIMEOUT,
             run_here: bool = False) -> Any:
        """Call the supervisor; an error it answers with is raised here, in the caller.

        ``run_here=True``: if the supervisor is idle, its handler runs on the calling
        thread (:meth:`ActorRef.call_into`), saving two thread hand-offs; for a thread
        that would only wait meanwhile (a reload asking for the children)."""
        if run_here:
            reply = Reply()
            self.call_into(request, reply, run_here=True)
            result = self.await_reply(reply, timeout)
        else:
            result = super().call(request, timeout=timeout)
        if isinstance(result, _Err):
            raise result.exc
        return result

    def _api(self, op: str, arg: Any = None, timeout: float | None = API_TIMEOUT,
             run_here: bool = False) -> Any:
        return self.call(_Api(op, arg), timeout=timeout, run_here=run_here)

    def start_child(
        self, spec: ChildSpec, *, timeout: float | None = API_TIMEOUT
    ) -> ActorRef | IgnoreType:
        """Add ``spec`` at the end of the children and start it; returns its ref.

        Raises :class:`~runtime.errors.ChildSpecError` if the id is taken and
        :class:`ChildStartFailed` if the start raised (the spec is then not added).
        Returns :data:`~runtime.childspec.IGNORE` if the start function did (the spec
        is kept unless the child is temporary).
        """
        return self._api("start_child", spec, timeout)

    def terminate_child(self, child_id: str, *, timeout: float | None = API_TIMEOUT) -> None:
        """Stop a child (graceful, then killed after its ``shutdown``); keep its spec.

        A temporary child's spec is removed, as in OTP. No-op if it is not running.
        """
        self._api("terminate_child", child_id, timeout)

    def restart_child(
        self, child_id: str, *, timeout: float | None = API_TIMEOUT
    ) -> ActorRef | IgnoreType:
        """Start a terminated child again from its spec; returns the new ref.

        Raises :class:`~runtime.errors.SupervisorError` if the child runs, or is
        ``restarting`` (the supervisor's own retry loop keeps going).
        """
        return self._api("restart_child", child_id, timeout)

    def delete_child(self, child_id: str, *, timeout: float | None = API_TIMEOUT) -> None:
        """Forget a terminated child's spec (terminate it first; refused while ``restarting``)."""
        self._api("delete_child", child_id, timeout)

    def get_childspec(self, child_id: str, *, timeout: float | None = API_TIMEOUT) -> ChildSpec:
        """The spec of child ``child_id`` (OTP's ``get_childspec``).

        >>> sup = Supervisor.start([ChildSpec("idle", start=lambda: IGNORE)])
        >>> sup.get_childspec("idle").restart
        'permanent'
        >>> _ = sup.stop()
        """
        return self._api("get_childspec", child_id, timeout)

    def which_children(self, *, timeout: float | None = API_TIMEOUT,
                       run_here: bool = False) -> list[ChildInfo]:
        """The children, in start order (``run_here``: as in :meth:`call`)."""
        return self._api("which_children", None, timeout, run_here)

    def count_children(self, *, timeout: float | None = API_TIMEOUT) -> dict[str, int]:
        """``{"specs", "active", "supervisors", "workers"}`` counts, as OTP's count_children."""
        return self._api("count_children", None, timeout)

    def child_ref(self, child_id: str, *, timeout: float | None = API_TIMEOUT) -> ActorRef | None:
        """The running child's ref, or None if it is not running."""
        return self._api("child_ref", child_id, timeout)

    def stop(
        self,
        reason: ExitReason | None = None,
        *,
        timeout: float | None = STOP_TIMEOUT,
    ) -> ExitReason:
        """Stop the supervisor; it first stops its children in reverse order.

        The default timeout is longer than a worker's, since each child gets its own
        ``shutdown`` time. Run as :func:`~runtime.actor.stop_here`: an idle
        supervisor, and each idle child whose ending runs none of the app's code, end
        on the calling thread (no wake-up and wait per actor); the rest stop on their
        own threads within their ``shutdown``, and nothing waits beyond ``timeout``.
        """
        return stop_here(self, reason, timeout=timeout)

    def stop_soon(self, reason: ExitReason | None = None) -> None:
        """Ask the supervisor to stop without waiting: its own thread stops its
        children in reverse order, then ends (out of band, as an exit signal). A
        later :meth:`stop` (or :meth:`join`) waits for it; several supervisors asked
        first stop side by side.

        >>> sup = Supervisor.start(children=[])
        >>> sup.stop_soon(); sup.stop().kind
        'shutdown'
        """
        self._actor._request_stop(reason or ExitReason.shutdown())


class Supervisor(Actor):
    """An OTP supervisor. Start one with :meth:`Supervisor.start`.

    Children are started in order by the supervisor's ``on_init``, which runs on
    the thread that starts it (the supervisor's own thread starts with its first
    message: a Down, a call, a stop; :mod:`runtime.ondemand`); if one fails to
    start, those already started are stopped in reverse order and :meth:`start`
    raises :class:`ChildStartFailed`.

    Telemetry (metadata always has ``supervisor``, the supervisor's actor id):

    - ``supervisor.child_started`` / ``supervisor.child_terminated`` (``child``);
    - ``supervisor.restart``: ``{"count": 1}``, metadata ``child``, ``strategy``,
      ``reason_kind``, ``reason``, ``traceback``, ``restarted`` (ids restarted);
    - ``supervisor.child_start_failed`` when a start or restart raises;
    - ``supervisor.child_ignored`` when a start function returns ``IGNORE``;
    - ``supervisor.escalation`` when the restart intensity is exceeded.

    >>> class Idle(Actor): pass
    >>> sup = Supervisor.start([ChildSpec("a", start=Idle.start)], strategy="one_for_all")
    >>> first = sup.child_ref("a"); first.kill(ExitReason("exception", "boom"))
    >>> sup.child_ref("a") != first  # the call runs after the supervisor saw the Down
    True
    >>> _ = sup.stop()
    """

    trap_exit: ClassVar[bool] = True
    ref_class: ClassVar[type[ActorRef]] = SupervisorRef
    # Its on_init is the runtime's (start the children in order): it runs on the
    # starter's thread, and most supervisors get their first message late or never.
    thread_on_demand: ClassVar[bool] = True

    def __init__(
        self,
        children: Sequence[ChildSpec],
        *,
        strategy: Strategy = "one_for_one",
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        clock: Clock = time.monotonic,
        name: str | None = None,
        _start_failures: list[ChildStartFailed] | None = None,
    ) -> None:
        super().__init__(name=name)
        self.strategy = strategy
        self.max_restarts = max_restarts
        self.max_seconds = float(max_seconds)
        self.clock = clock
        self._specs = tuple(children)
        self._children: list[_Child] = []
        self._restarts: deque[float] = deque()
        # Ids of children linked to us whose Exit message must be swallowed (the Down
        # notice is what drives restarts). Entries leave when their Exit arrives or
        # when unlink() proves none will come, so the set stays small.
        self._expect_exit: set[str] = set()
        self._start_failures = _start_failures if _start_failures is not None else []

    # -- starting ------------------------------------------------------------------------
    @classmethod
    def start(  # type: ignore[override]
        cls,
        children: Sequence[ChildSpec],
        *,
        strategy: Strategy = "one_for_one",
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        clock: Clock = time.monotonic,
        name: str | None = None,
    ) -> SupervisorRef:
        """Start a supervisor and its children (in order); returns once all run.

        Raises :class:`~runtime.errors.ConfigError` / :class:`~runtime.errors.ChildSpecError`
        for bad options or specs (duplicate ids included), and :class:`ChildStartFailed`
        naming the child and the cause if a child fails to start. ``clock`` measures
        restart intensity (inject a fake one in tests). With ``name``, the supervisor
        is registered under it (see :mod:`runtime.registry`).

        >>> Supervisor.start([], max_restarts=-1)
        Traceback (most recent call last):
        ...
        runtime.errors.ConfigError: invalid max_restarts=-1: expected an integer >= 0
        """
        specs = _validate(children, strategy, max_restarts, max_seconds)
        if not callable(clock):
            raise ConfigError("clock", clock, "a callable returning seconds (like time.monotonic)")
        failures: list[ChildStartFailed] = []
        try:
            ref = super().start(
                specs,
                strategy=strategy,
                max_restarts=max_restarts,
                max_seconds=max_seconds,
                clock=clock,
                name=name,
                _start_failures=failures,
            )
        except ActorFailed as exc:
            if failures:
                err = failures[0]
                raise err from err.__cause__
            raise SupervisorError(
                f"supervisor {name or 'Supervisor'} failed to start: {exc}"
            ) from exc
        if name is not None:
            try:
                register(name, ref)
            except BaseException:
                ref.stop()
                raise
        assert isinstance(ref, SupervisorRef)
        return ref

    @classmethod
    def child_spec(
        cls,
        children: Sequence[ChildSpec],
        *,
        id: str,
        restart: Restart = "permanent",
        shutdown: Shutdown = SUPERVISOR_SHUTDOWN,
        strategy: Strategy = "one_for_one",
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        clock: Clock = time.monotonic,
        name: str | None = None,
    ) -> ChildSpec:
        """A spec that runs a nested supervisor (``type="supervisor"``) under another one.

        Options are checked now, so a bad nested spec fails where it is written.

        >>> spec = Supervisor.child_spec([], id="inner", strategy="rest_for_one")
        >>> spec.type, spec.shutdown
        ('supervisor', 'infinity')
        """
        specs = _validate(children, strategy, max_restarts, max_seconds)

        def start() -> SupervisorRef:
            return cls.start(
                specs,
                strategy=strategy,
                max_restarts=max_restarts,
                max_seconds=max_seconds,
                clock=clock,
                name=name,
            )

        return ChildSpec(
            id,
            start=start,
            restart=restart,
            shutdown=shutdown,
            type="supervisor",
            meta={"strategy": strategy, "children": [s.id for s in specs]},
        )

    def on_init(self) -> None:
        for spec in self._specs:
            child = _Child(spec)
            failure = self._start(child)
            if failure is not None:
                # OTP: a supervisor whose children cannot all start does not start;
                # undo what was started, newest first.
                self._stop_all_children()
                err = ChildStartFailed(self.actor_id, spec.id, failure[1])
                err.__cause__ = failure[0]
                self._start_failures.append(err)
                raise err
            if child.ref is None and spec.restart == "temporary":
                continue  # ignored: OTP keeps no spec of a temporary child
            self._children.append(child)

    # -- messages --------------------------------------------------------------------------
    def on_info(self, message: Any) -> None:
        if isinstance(message, Down):
            self._on_down(message)
        elif isinstance(message, Exit):
            self._on_exit_signal(message)
        elif isinstance(message, _Retry):
            child = message.child
            if child.restarting and child.ref is None and self._holds(child):
                child.restarting = False
                self._restart(child, message.reason)
        else:
            log.debug("supervisor %s ignored message %r", self.actor_id, message)

    def on_call(self, request: Any) -> Any:
        if not isinstance(request, _Api):
            return _Err(SupervisorError(f"supervisor {self.actor_id} does not handle {request!r}"))
        handler = getattr(self, f"_api_{request.op}", None)
        if handler is None:
            return _Err(
                SupervisorError(f"supervisor {self.actor_id} has no operation {request.op!r}")
            )
        try:
            return handler(request.arg)
        except SupervisorError as exc:
            return _Err(exc)

    def on_exit(self, reason: ExitReason) -> None:
        # An idle child whose ending runs no app code (a process's, for one) ends on
        # this thread: no wake-up of its thread and wait for it.
        with ending_here():
            self._stop_all_children()

    def _exits_quietly(self) -> bool:
        # Stopping the children runs no app code here: theirs runs on their threads.
        return type(self).on_exit is Supervisor.on_exit

    # Child bookkeeping; DynamicSupervisor keeps its children in dicts instead.
    def _holds(self, child: _Child) -> bool:
        return child in self._children

    def _forget(self, child: _Child) -> None:
        if child in self._children:
            self._children.remove(child)

    def _by_monitor(self, mref: str) -> _Child | None:
        return next((c for c in self._children if c.mref == mref), None)

    def _on_down(self, down: Down) -> None:
        child = self._by_monitor(down.monitor_ref)
        if child is None:
            return  # a child we stopped on purpose or already replaced
        self._unwatch(child)
        child.ref = child.mref = None
        self._emit("supervisor.child_terminated", child, down.reason)
        restart = child.spec.restart
        if restart == "temporary":
            self._forget(child)
            return
        if restart == "transient" and not down.reason.abnormal:
            return
        self._restart(child, down.reason)

    def _on_exit_signal(self, msg: Exit) -> None:
        if msg.actor_id in self._expect_exit:
            self._expect_exit.discard(msg.actor_id)  # a child's; its Down does the work
            return
        if msg.reason.kind != "normal":
            # Another linked actor (in OTP terms, the parent) ended: shut down in order
            # with its reason rather than leave children running under nobody.
            log.info("supervisor %s: linked %s ended (%s); shutting down",
                     self.actor_id, msg.actor_id, msg.reason)
            self._request_stop(msg.reason)

    # -- restarts --------------------------------------------------------------------------
    def _restart(self, failed: _Child, reason: ExitReason) -> None:
        """Apply the strategy after ``failed`` ended with ``reason`` (or failed to restart)."""
        if not self._count_restart(failed, reason):
            return

        if self.strategy == "one_for_one":
            group = [failed]
        elif self.strategy == "one_for_all":
            group = list(self._children)
        else:
            group = self._children[self._children.index(failed):]
        ids = [c.id for c in group]
        self._announce_restart(failed, reason, ids)
        for child in reversed(group):
            if child is not failed and child.ref is not None:
                self._stop_child(child)
        for child in group:
            if not self._holds(child):
                continue  # a temporary sibling stopped above is not restarted
            if child.ref is not None:
                continue
            if not self._start_or_retry(child):
                return

    def _announce_restart(self, failed: _Child, reason: ExitReason, ids: list[str]) -> None:
        log.error(
            "supervisor %s: child %r ended (%s); restarting %s (%s)",
            self.actor_id, failed.id, reason, ", ".join(map(repr, ids)), self.strategy,
            extra={**reason.log_fields, "traceback": reason.traceback, "actor": failed.id},
        )
        telemetry.execute(
            "supervisor.restart",
            {"count": 1},
            {
                "supervisor": self.actor_id,
                "child": failed.id,
                "strategy": self.strategy,
                "reason_kind": reason.kind,
                "reason": reason.message,
                "traceback": reason.traceback,
                "restarted": ids,
            },
        )

    def _count_restart(self, failed: _Child, reason: ExitReason) -> bool:
        """Count one restart against the intensity; False (and escalate) if it is exceeded."""
        now = self.clock()
        self._restarts.append(now)
        while self._restarts and self._restarts[0] < now - self.max_seconds:
            self._restarts.popleft()
        if len(self._restarts) > self.max_restarts:
            self._escalate(failed, reason)
            return False
        return True

    def _start_or_retry(self, child: _Child) -> bool:
        """Start a child being restarted; if that fails, queue a retry. False if it failed."""
        failure = self._start(child)
        if failure is None:
            return True
        log.error("supervisor %s: child %r failed to restart: %s; retrying",
                  self.actor_id, child.id, failure[1].message,
                  extra={**failure[1].log_fields, "traceback": failure[1].traceback,
                         "actor": child.id})
        # Counted as another restart when the retry runs, so a child that can never
        # start ends in escalation rather than a busy loop; meanwhile it is
        # ``restarting`` and restart_child/delete_child refuse it.
        child.restarting = True
        self.ref.tell(_Retry(child, failure[1]))
        return False

    def _escalate(self, failed: _Child, reason: ExitReason) -> None:
        n = len(self._restarts)
        message = (
            f"{MAX_INTENSITY}: {n} restarts in {_fmt_seconds(self.max_seconds)}; "
            f"last failure: child {failed.id!r}: {reason}"
        )
        log.error("supervisor %s: %s; stopping all children", self.actor_id, message,
                  extra={**reason.log_fields, "traceback": reason.traceback, "actor": failed.id})
        telemetry.execute(
            "supervisor.escalation",
            {"restarts": n},
            {
                "supervisor": self.actor_id,
                "child": failed.id,
                "strategy": self.strategy,
                "max_restarts": self.max_restarts,
                "max_seconds": self.max_seconds,
                "reason_kind": reason.kind,
                "reason": reason.message,
                "traceback": reason.traceback,
            },
        )
        self._stop_all_children()
        # Ends the supervisor before its next message. As in OTP the reason is a
        # shutdown: a transient parent does not restart a supervisor that gave up on
        # its own children, a permanent one does.
        self._request_stop(ExitReason("shutdown", message, reason.traceback))

    # -- starting and stopping one child ----------------------------------------------------
    def _start(self, child: _Child) -> tuple[BaseException, ExitReason] | None:
        """Start ``child``; returns (exception, reason) if its start failed.

        A start returning IGNORE leaves ``child.ref`` None and is no failure.
        """
        try:
            ref = child.spec.start()
            if ref is IGNORE:
                log.info("supervisor %s: child %r ignored (nothing to start)",
                         self.actor_id, child.id)
                self._emit("supervisor.child_ignored", child, None)
                return None
            if not isinstance(ref, ActorRef):
                raise ChildSpecError(
                    f"start function of child {child.id!r} returned {ref!r}, not an ActorRef "
                    "(return runtime.IGNORE when there is nothing to start)"
                )
        except Exception as exc:
            reason = ExitReason.from_exception(exc)
            # Raised to whoever asked for the start (logged there), or logged by the
            # restart that tried it: here it is only a debug line.
            log.debug("supervisor %s: child %r failed to start: %s",
                      self.actor_id, child.id, reason.message,
                      extra={"traceback": reason.traceback, "actor": child.id})
            telemetry.execute(
                "supervisor.child_start_failed",
                {"count": 1},
                {
                    "supervisor": self.actor_id,
                    "child": child.id,
                    "reason": reason.message,
                    "traceback": reason.traceback,
                },
            )
            return exc, reason
        child.ref = ref
        # Down notices come to our mailbox (on_info), serialised with everything else.
        child.mref = monitor(ref, self.ref)
        self._watch(child)
        # The link makes a killed supervisor take its children along (they get the
        # exit signal); the Exit it sends us when the child ends is swallowed.
        self._expect_exit.add(ref.id)
        link(ref, self.ref)
        self._emit("supervisor.child_started", child, None)
        return None

    def _stop_child(self, child: _Child) -> None:
        """Stop a running child on purpose; temporary children are then forgotten."""
        ref = self._detach(child)
        if ref is None:
            return
        try:
            if child.spec.shutdown == BRUTAL_KILL:
                ref.kill(ExitReason.killed(BRUTAL_KILL))
                reason = ExitReason.killed(BRUTAL_KILL)
            else:
                reason = ref.stop(timeout=shutdown_timeout(child.spec.shutdown))
        except Exception as exc:  # a stop must never leave the others running
            log.error("supervisor %s: stopping child %r raised", self.actor_id, child.id,
                      exc_info=exc)
            reason = ExitReason.from_exception(exc)
        self._stopped(child, reason)

    def _detach(self, child: _Child) -> ActorRef | None:
        """Stop watching a child about to be stopped on purpose; returns its ref."""
        ref, mref = child.ref, child.mref
        if ref is None:
            return None
        self._unwatch(child)
        child.ref = child.mref = None
        # Demonitor first so the Down of this deliberate stop is not taken for a crash.
        if mref is not None:
            demonitor(ref, mref)
        if unlink(self.ref, ref):
            self._expect_exit.discard(ref.id)  # no Exit can come any more
        return ref

    def _stopped(self, child: _Child, reason: ExitReason) -> None:
        self._emit("supervisor.child_terminated", child, reason)
        if child.spec.restart == "temporary":
            self._forget(child)

    def _watch(self, child: _Child) -> None:
        """A child got a monitor (``child.mref``); DynamicSupervisor indexes it."""

    def _unwatch(self, child: _Child) -> None:
        """``child.mref`` is about to go."""

    def _stop_all_children(self) -> None:
        for child in reversed(list(self._children)):
            if child.ref is not None:
                self._stop_child(child)

    def _emit(self, event: str, child: _Child, reason: ExitReason | None) -> None:
        md: dict[str, Any] = {"supervisor": self.actor_id, "child": child.id}
        if reason is None:
            md["ref"] = child.ref.id if child.ref is not None else None
        else:
            md["reason_kind"] = reason.kind
            md["reason"] = reason.message
        telemetry.execute(event, {"count": 1}, md)

    # -- run-time API (runs in the supervisor's thread) -----------------------------------------
    def _find(self, child_id: Any) -> _Child:
        for child in self._children:
            if child.id == child_id:
                return child
        ids = ", ".join(repr(c.id) for c in self._children) or "none"
        raise SupervisorError(
            f"supervisor {self.actor_id} has no child {child_id!r}; its children: {ids}"
        )

    def _api_start_child(self, spec: Any) -> ActorRef | IgnoreType:
        if not isinstance(spec, ChildSpec):
            raise ChildSpecError(f"start_child needs a ChildSpec, got {spec!r}")
        if any(c.id == spec.id for c in self._children):
            raise ChildSpecError(
                f"supervisor {self.actor_id} already has a child {spec.id!r}; "
                "pick another id or delete_child it first"
            )
        child = _Child(spec)
        failure = self._start(child)
        if failure is not None:
            err = ChildStartFailed(self.actor_id, spec.id, failure[1])
            err.__cause__ = failure[0]
            raise err
        if child.ref is None:  # ignored
            if spec.restart != "temporary":
                self._children.append(child)
            return IGNORE
        self._children.append(child)
        return child.ref

    def _api_terminate_child(self, child_id: Any) -> None:
        child = self._find(child_id)
        child.restarting = False  # cancels a queued retry
        if child.ref is not None:
            self._stop_child(child)
        elif child.spec.restart == "temporary":
            self._children.remove(child)

    def _api_restart_child(self, child_id: Any) -> ActorRef | IgnoreType:
        child = self._find(child_id)
        if child.ref is not None:
            raise SupervisorError(
                f"child {child_id!r} of {self.actor_id} is running; terminate_child it first"
            )
        self._refuse_restarting(child, "restart_child")
        failure = self._start(child)
        if failure is not None:
            err = ChildStartFailed(self.actor_id, child.id, failure[1])
            err.__cause__ = failure[0]
            raise err
        return IGNORE if child.ref is None else child.ref

    def _refuse_restarting(self, child: _Child, op: str) -> None:
        if child.restarting:
            # OTP answers {error, restarting} and its retry loop goes on: so does ours.
            raise SupervisorError(
                f"{op}: child {child.id!r} of {self.actor_id} is restarting (a failed "
                "restart is being retried); wait for it, or terminate_child it to stop the retries"
            )

    def _api_delete_child(self, child_id: Any) -> None:
        child = self._find(child_id)
        if child.ref is not None:
            raise SupervisorError(
                f"child {child_id!r} of {self.actor_id} is running; terminate_child it first"
            )
        self._refuse_restarting(child, "delete_child")
        self._children.remove(child)

    def _api_get_childspec(self, child_id: Any) -> ChildSpec:
        return self._find(child_id).spec

    def _api_which_children(self, _arg: Any) -> list[ChildInfo]:
        return [self._info(c) for c in self._children]

    @staticmethod
    def _info(c: _Child) -> ChildInfo:
        alive = c.ref is not None and c.ref.is_alive()
        return ChildInfo(c.id, c.ref, c.spec.type, c.spec.restart, alive, c.spec, c.restarting)

    def _api_count_children(self, _arg: Any) -> dict[str, int]:
        sups = sum(1 for c in self._children if c.spec.type == "supervisor")
        return {
            "specs": len(self._children),
            "active": sum(1 for c in self._children if c.ref is not None and c.ref.is_alive()),
            "supervisors": sups,
            "workers": len(self._children) - sups,
        }

    def _api_child_ref(self, child_id: Any) -> ActorRef | None:
        return self._find(child_id).ref


@dataclass(frozen=True)
class SupervisorSpec:
    """A supervisor as plain data: children plus strategy and restart intensity.

    A sandbox app's entry may return one of these (to choose the strategy) instead
    of a bare list of child specs; :meth:`coerce` accepts either.

    >>> spec = SupervisorSpec.coerce([])
    >>> spec.strategy, spec.max_restarts, spec.max_seconds
    ('one_for_one', 3, 5.0)
    >>> sup = SupervisorSpec([], strategy="rest_for_one").start()
    >>> sup.count_children()["specs"]
    0
    >>> _ = sup.stop()
    """

    children: Sequence[ChildSpec] = field(default_factory=tuple)
    strategy: Strategy = "one_for_one"
    max_restarts: int = 3
    max_seconds: float = 5.0

    def __post_init__(self) -> None:
        specs = _validate(self.children, self.strategy, self.max_restarts, self.max_seconds)
        object.__setattr__(self, "children", specs)

    @classmethod
    def coerce(cls, value: Any) -> SupervisorSpec:
        """A SupervisorSpec from an app entry's result: a SupervisorSpec or child specs."""
        if isinstance(value, SupervisorSpec):
            return value
        if isinstance(value, (list, tuple)):
            return cls(tuple(value))
        raise ChildSpecError(
            f"an app entry must return a list of ChildSpec or a SupervisorSpec, got {value!r}"
        )

    def start(self, name: str | None = None, clock: Clock = time.monotonic) -> SupervisorRef:
        """Start a :class:`Supervisor` from this spec."""
        return Supervisor.start(
            self.children,
            strategy=self.strategy,
            max_restarts=self.max_restarts,
            max_seconds=self.max_seconds,
            clock=clock,
            name=name,
        )

    def child_spec(
        self,
        id: str,
        *,
        restart: Restart = "permanent",
        shutdown: Shutdown = SUPERVISOR_SHUTDOWN,
        name: str | None = None,
        clock: Clock = time.monotonic,
    ) -> ChildSpec:
        """A child spec running this supervisor under another one."""
        return Supervisor.child_spec(
            self.children,
            id=id,
            restart=restart,
            shutdown=shutdown,
            strategy=self.strategy,
            max_restarts=self.max_restarts,
            max_seconds=self.max_seconds,
            clock=clock,
            name=name,
        )
