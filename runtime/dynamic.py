"""DynamicSupervisor: children started on demand from one template (OTP's
``simple_one_for_one``, Elixir's ``DynamicSupervisor``).

The supervisor starts with no children; :meth:`DynamicSupervisorRef.start_child`
starts one by calling the template's start function with the extra arguments
appended (a restart calls it again with the same ones). Children are restarted one
for one, with the same restart intensity and escalation as :class:`Supervisor`;
stopping the supervisor stops all children at once (each within the template's
``shutdown``), not one after the other.

>>> from runtime.genserver import GenServer
>>> class Room(GenServer):
...     def init(self, topic):
...         return topic
...     def handle_call(self, request, state):
...         return state, state
>>> rooms = DynamicSupervisor.start(Room.child_spec(restart="temporary"))
>>> lobby = rooms.start_child("lobby")
>>> lobby.call("topic")
'lobby'
>>> rooms.count_children()["active"]
1
>>> rooms.terminate_child(lobby); rooms.which_children()
[]
>>> rooms.stop().kind
'shutdown'
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import time
from typing import Any, ClassVar

from runtime.actor import Actor, ActorRef, Down, ExitReason, ended_here
from runtime.childspec import (
    BRUTAL_KILL,
    IGNORE,
    ChildSpec,
    IgnoreType,
    Restart,
    Shutdown,
    shutdown_timeout,
)
from runtime.errors import ActorFailed, ChildSpecError, ConfigError, SupervisorError
from runtime.registry import register
from runtime.supervisor import (
    API_TIMEOUT,
    SUPERVISOR_SHUTDOWN,
    ChildInfo,
    ChildStartFailed,
    Clock,
    Supervisor,
    SupervisorRef,
    _Child,
    _validate,
)

__all__ = ["DynamicSupervisor", "DynamicSupervisorRef"]

log = logging.getLogger("runtime.dynamic")


@dataclasses.dataclass(frozen=True)
class _StartArgs:
    args: tuple
    kwargs: dict[str, Any]


def _check_template(template: Any) -> None:
    """A template must be one ChildSpec that registers no name."""
    if not isinstance(template, ChildSpec):
        raise ChildSpecError(
            f"DynamicSupervisor needs one ChildSpec as its template, got {template!r}"
        )
    if template.meta.get("name"):
        raise ChildSpecError(
            f"DynamicSupervisor template {template.id!r} registers the name "
            f"{template.meta['name']!r}: every child would take the same one; build the "
            "template without name= (find children through which_children, or have each "
            "register its own name in init)"
        )


class DynamicSupervisorRef(SupervisorRef):
    """Handle on a running :class:`DynamicSupervisor`.

    ``restart_child``, ``delete_child``, ``get_childspec`` and ``child_ref`` take a
    child id and answer :class:`~runtime.errors.SupervisorError` here (as OTP's
    ``simple_one_for_one`` does): dynamic children are addressed by their ref.
    """

    __slots__ = ()

    def start_child(
        self, *extra_args: Any, timeout: float | None = API_TIMEOUT, **extra_kwargs: Any
    ) -> ActorRef | IgnoreType:
        """Start one more child: the template's start with ``extra_args`` appended.

        Returns its ref, or :data:`~runtime.childspec.IGNORE` if the start function
        returned it (nothing is kept). Raises :class:`ChildStartFailed` if the start
        raised and :class:`~runtime.errors.SupervisorError` once ``max_children`` run.
        (``timeout`` is this call's own; it is not passed on to the child.)
        """
        return self._api("start_child", _StartArgs(extra_args, extra_kwargs), timeout)

    def terminate_child(  # type: ignore[override]
        self, ref: ActorRef, *, timeout: float | None = API_TIMEOUT
    ) -> None:
        """Stop the child ``ref`` (within the template's ``shutdown``) and forget it."""
        self._api("terminate_child", ref, timeout)


class DynamicSupervisor(Supervisor):
    """A supervisor of children started on demand from one template.

    Start one with :meth:`DynamicSupervisor.start`. Telemetry is the same as
    :class:`Supervisor`'s; child ids are the template's id with ``#n`` appended.
    """

    ref_class: ClassVar[type[ActorRef]] = DynamicSupervisorRef

    def __init__(
        self,
        template: ChildSpec,
        *,
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        max_children: int | None = None,
        clock: Clock = time.monotonic,
        name: str | None = None,
    ) -> None:
        super().__init__(
            (), max_restarts=max_restarts, max_seconds=max_seconds, clock=clock, name=name
        )
        self.template = template
        self.max_children = max_children
        self._seq = itertools.count(1)
        # Dicts, not the list Supervisor keeps: 10,000 children must start, end and
        # stop in constant time each. ``_all`` is insertion-ordered (start order).
        self._all: dict[_Child, None] = {}
        self._by_mref: dict[str, _Child] = {}
        self._by_ref: dict[ActorRef, _Child] = {}

    @classmethod
    def start(  # type: ignore[override]
        cls,
        template: ChildSpec,
        *,
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        max_children: int | None = None,
        clock: Clock = time.monotonic,
        name: str | None = None,
    ) -> DynamicSupervisorRef:
        """Start an empty dynamic supervisor whose children ``template`` describes.

        ``max_restarts``/``max_seconds``/``clock`` are as for :meth:`Supervisor.start`;
        ``max_children`` caps how many children run at once (None: no cap).

        >>> DynamicSupervisor.start(ChildSpec("w", start=lambda: IGNORE), max_children=-1)
        Traceback (most recent call last):
        ...
        runtime.errors.ConfigError: invalid max_children=-1: expected None or an integer >= 0
        """
        _validate((), "one_for_one", max_restarts, max_seconds)
        _check_template(template)
        if max_children is not None and (
            isinstance(max_children, bool) or not isinstance(max_children, int) or max_children < 0
        ):
            raise ConfigError("max_children", max_children, "None or an integer >= 0")
        if not callable(clock):
            raise ConfigError("clock", clock, "a callable returning seconds (like time.monotonic)")
        try:
            ref = Actor.start.__func__(  # type: ignore[attr-defined]
                cls,
                template,
                max_restarts=max_restarts,
                max_seconds=max_seconds,
                max_children=max_children,
                clock=clock,
                name=name,
            )
        except ActorFailed as exc:
            raise SupervisorError(
                f"dynamic supervisor {name or cls.__name__} failed to start: {exc}"
            ) from exc
        if name is not None:
            try:
                register(name, ref)
            except BaseException:
                ref.stop()
                raise
        assert isinstance(ref, DynamicSupervisorRef)
        return ref

    @classmethod
    def child_spec(  # type: ignore[override]
        cls,
        template: ChildSpec,
        *,
        id: str,
        restart: Restart = "permanent",
        shutdown: Shutdown = SUPERVISOR_SHUTDOWN,
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        max_children: int | None = None,
        clock: Clock = time.monotonic,
        name: str | None = None,
    ) -> ChildSpec:
        """A spec running a dynamic supervisor under another supervisor.

        >>> spec = DynamicSupervisor.child_spec(ChildSpec("w", start=lambda: IGNORE), id="pool")
        >>> spec.type, spec.shutdown
        ('supervisor', 'infinity')
        """
        _validate((), "one_for_one", max_restarts, max_seconds)
        _check_template(template)

        def start() -> DynamicSupervisorRef:
            return cls.start(
                template,
                max_restarts=max_restarts,
                max_seconds=max_seconds,
                max_children=max_children,
                clock=clock,
                name=name,
            )

        return ChildSpec(
            id,
            start=start,
            restart=restart,
            shutdown=shutdown,
            type="supervisor",
            meta={"strategy": "dynamic", "template": template.id},
        )

    # -- bookkeeping (overrides of Supervisor's list-based versions) ------------------------
    def _holds(self, child: _Child) -> bool:
        return child in self._all

    def _forget(self, child: _Child) -> None:
        self._all.pop(child, None)

    def _by_monitor(self, mref: str) -> _Child | None:
        return self._by_mref.get(mref)

    def _watch(self, child: _Child) -> None:
        assert child.ref is not None and child.mref is not None
        self._by_mref[child.mref] = child
        self._by_ref[child.ref] = child

    def _unwatch(self, child: _Child) -> None:
        if child.mref is not None:
            self._by_mref.pop(child.mref, None)
        if child.ref is not None:
            self._by_ref.pop(child.ref, None)

    # -- restarts and stopping ------------------------------------------------------------
    def _on_down(self, down: Down) -> None:
        child = self._by_monitor(down.monitor_ref)
        super()._on_down(down)
        if child is not None and child.ref is None and not child.restarting:
            self._forget(child)  # OTP keeps no slot for a dynamic child that stays down

    def _restart(self, failed: _Child, reason: ExitReason) -> None:
        if not self._count_restart(failed, reason):
            return
        self._announce_restart(failed, reason, [failed.id])
        if self._start_or_retry(failed) and failed.ref is None:
            self._forget(failed)  # ignored on restart: nothing left to supervise

    def _stop_all_children(self) -> None:
        """Stop every child at once, each within the template's shutdown (OTP stops a
        simple_one_for_one supervisor's children concurrently, not in order)."""
        stopping: list[tuple[_Child, ActorRef]] = []
        for child in list(self._all):
            ref = self._detach(child)
            if ref is None:
                continue
            if child.spec.shutdown == BRUTAL_KILL:
                ref.kill(ExitReason.killed(BRUTAL_KILL))
                self._stopped(child, ExitReason.killed(BRUTAL_KILL))
            elif ended_here(ref, ExitReason.shutdown()):  # idle, within stop_here
                self._stopped(child, ref.exit_reason or ExitReason.shutdown())
            else:
                # Ask all first (the request is out of band, like an exit signal), then
                # wait for each against one deadline.
                ref._actor._request_stop(ExitReason.shutdown())
                stopping.append((child, ref))
        timeout = shutdown_timeout(self.template.shutdown)
        deadline = None if timeout is None else time.monotonic() + timeout
        for child, ref in stopping:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._stopped(child, ref.stop(timeout=left))

    # -- run-time API -------------------------------------------------------------------------
    def _api_start_child(self, extra: Any) -> ActorRef | IgnoreType:
        if self.max_children is not None and len(self._all) >= self.max_children:
            raise SupervisorError(
                f"dynamic supervisor {self.actor_id} already runs max_children="
                f"{self.max_children} children; terminate one first or raise max_children"
            )
        assert isinstance(extra, _StartArgs)
        template = self.template
        spec = dataclasses.replace(
            template,
            id=f"{template.id}#{next(self._seq)}",
            start=functools.partial(template.start, *extra.args, **extra.kwargs),
            meta={**template.meta, "extra_args": repr((extra.args, sorted(extra.kwargs.items())))},
        )
        child = _Child(spec)
        failure = self._start(child)
        if failure is not None:
            err = ChildStartFailed(self.actor_id, spec.id, failure[1])
            err.__cause__ = failure[0]
            raise err
        if child.ref is None:
            return IGNORE  # OTP keeps nothing of an ignored dynamic child
        self._all[child] = None
        return child.ref

    def _api_terminate_child(self, ref: Any) -> None:
        child = self._by_ref.get(ref) if isinstance(ref, ActorRef) else None
        if child is None:
            raise SupervisorError(
                f"{ref!r} is not a running child of dynamic supervisor {self.actor_id} "
                "(terminate_child takes the ref start_child returned)"
            )
        self._stop_child(child)
        self._forget(child)

    def _not_dynamic(self, op: str) -> SupervisorError:
        return SupervisorError(
            f"{op} is not available on dynamic supervisor {self.actor_id}: its children "
            "have no fixed ids; use terminate_child(ref) and start_child(...)"
        )

    def _api_restart_child(self, _arg: Any) -> Any:
        raise self._not_dynamic("restart_child")

    def _api_delete_child(self, _arg: Any) -> Any:
        raise self._not_dynamic("delete_child")

    def _api_get_childspec(self, _arg: Any) -> Any:
        raise self._not_dynamic("get_childspec")

    def _api_child_ref(self, _arg: Any) -> Any:
        raise self._not_dynamic("child_ref")

    def _api_which_children(self, _arg: Any) -> list[ChildInfo]:
        return [self._info(c) for c in self._all]

    def _api_count_children(self, _arg: Any) -> dict[str, int]:
        n = len(self._all)
        sups = n if self.template.type == "supervisor" else 0
        return {
            "specs": n,
            "active": sum(1 for c in self._all if c.ref is not None and c.ref.is_alive()),
            "supervisors": sups,
            "workers": n - sups,
        }

