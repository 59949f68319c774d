"""The manager actor: the registry of sandboxes and their lifecycle.

Each sandbox runs as a small supervisor of its own (``sandbox:<id>``, one_for_one,
with the sandbox's restart type and intensity) holding the sandbox's child process.
Those supervisors live under the runtime's ``sandboxes`` supervisor, not under the
manager: the manager only keeps the books. When the manager crashes and is
restarted, it rebuilds its registry from the ``sandboxes`` supervisor's children,
whose specs carry each sandbox's configuration and process slot, so no sandbox is
lost.

With a store (:mod:`actors.store`), each sandbox's desired state is written at
create and removed at destroy. A starting manager brings back every stored sandbox
that is not running (a host restart, or a crash of both the manager and the
``sandboxes`` supervisor) with its current code from the version manager; a
restarted ``sandboxes`` supervisor starts empty and the manager starts every
sandbox again under it (:class:`Readopt`). Processes still running are adopted;
``info()["recovered"]`` and the ``sandbox.recovered`` telemetry event say
``adopted`` or ``restarted`` (in-memory actor state is lost on a restart).

Status moves initializing -> compiling -> starting -> running, then reloading,
stopping -> stopped, or error; every change is timestamped and emitted as the
``sandbox.status`` telemetry event.
"""

from __future__ import annotations

import contextvars
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from actors import containment
from actors.config import Limits, SandboxConfig, WatchOptions, compiler_options
from actors.inflight import InFlight, Job, Ticket
from actors.profiles import BUILTIN_PROFILES
from actors.slot import ProcessSlot
from actors.store import Store, StoredSandbox
from runtime import telemetry
from runtime.actor import Down, ExitReason, demonitor, monitor
from runtime.child import isolation
from runtime.child.swap import ModuleCode
from runtime.childspec import ChildSpec, Restart
from runtime.component import Component
from runtime.errors import (
    ActorDead,
    ChildSpecError,
    SandboxError,
    SandboxExists,
    SandboxNotFound,
    SupervisorError,
)
from runtime.host.process import KILL_MARGIN, ChildAhead, ProcessRef, start_process
from runtime.recovery import annotate as annotate_error
from runtime.supervisor import ChildStartFailed, Supervisor, SupervisorRef, gave_up

__all__ = ["Created", "ManagerActor", "SandboxRecord", "STATUSES", "Readopt", "ReloadContext"]

log = logging.getLogger("runtime.manager")

#: A cold compile of a large app (worker start, scan, 100s of modules) fits in this.
COMPILE_TIMEOUT = 120.0
#: Threads that wait for a batch's stops and remove its remains (see _take_down).
REMAINS_THREADS = 4
#: How long a create's or destroy's thread waits for a manager to finish its job
#: (a manager killed meanwhile is replaced within seconds).
JOB_TIMEOUT = COMPILE_TIMEOUT + 60.0

STATUSES = (
    "initializing",
    "compiling",
    "starting",
    "running",
    "reloading",
    "stopping",
    "stopped",
    "error",
)
#: Statuses in which a process event changes nothing (the sandbox is going, or gone).
_DONE = ("stopping", "stopped", "error")
#: A create of a batch whose child is asked for by the thread that takes it up
#: (:meth:`ManagerActor._create`).
_LATER = "later"


@dataclass
class SandboxRecord:
    """What the manager knows about one sandbox."""

    config: SandboxConfig
    slot: ProcessSlot
    workdir: str
    created_at: float
    status: str = "initializing"
    updated_at: float = 0.0
    history: list[tuple[str, float]] = field(default_factory=list)
    last_error: dict[str, Any] | None = None
    supervisor: SupervisorRef | None = None
    #: How the sandbox came back after a runtime failure: None (never had to),
    #: "adopted" (its process kept running) or "restarted" (started again with its
    #: current code; in-memory actor state lost).
    recovered: str | None = None
    #: The ``sandboxes`` supervisor its own supervisor was started under.
    parent: SupervisorRef | None = None
    #: True while its create compiles and boots outside the manager's turn.
    creating: bool = False
    #: True while its destroy stops it outside the manager's turn.
    destroying: bool = False

    def info(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        now = time.time()
        proc = self.slot.info()
        started = proc["started_at"] if self.status == "running" else None
        return {
            "id": self.config.id,
            "status": self.status,
            "pid": proc["pid"],
            "path": self.config.path,
            "entry": self.config.entry,
            "profile": self.config.profile,
            "limits": self.config.limits.as_dict(),
            "restart": self.config.restart,
            "restart_count": proc["restarts"],
            "uptime": (now - started) if started else 0.0,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "status_history": list(self.history),
            "last_error": annotate_error(self.last_error),  # + category, recovery, remedy
            "workdir": self.workdir,
            "auto_reload": self.slot.watch is not None,
            "watch": (self.slot.watch or self.config.watch).as_dict(),
            "compile": self.config.compile_settings(),
            "recovered": self.recovered,
            **(extra or {}),
        }


@dataclass(frozen=True)
class Readopt:
    """Told to the manager by a restarted ``sandboxes`` supervisor: start every sandbox
    again under it."""

    sandboxes: SupervisorRef


@dataclass(frozen=True)
class ReloadContext:
    """What a hot reload needs to know of a sandbox, in one round trip
    (``reload_context``): unlike ``info``, no usage figures from the monitor.
    ``created_at`` names which sandbox it is (an id may be reused): a handle checks
    it before the reload does anything, with no round trip of its own."""

    profile: str
    path: str
    workdir: str
    compile: dict[str, Any]
    cache_dir: str
    slot: ProcessSlot
    created_at: float


@dataclass(frozen=True)
class Created:
    """What a create's caller gets (its ticket's value): which sandbox it is
    (``created_at``: an id may be reused) and its slot, so the handle's first call
    needs no round trip to the manager."""

    created_at: float
    slot: ProcessSlot


@dataclass(frozen=True)
class _Recover:
    """First message of a starting manager: bring back the stored sandboxes."""


@dataclass(frozen=True)
class _JobReady:
    """Told by a create's thread, or a batch of destroys' (or to itself by a manager
    starting): the thread's part of ``jobs`` is done; the manager finishes each."""

    jobs: tuple[Job, ...]


@dataclass(frozen=True)
class _ProcessEvent:
    event: str
    sandbox: str
    metadata: dict[str, Any]


class ManagerActor(Component):
    """Creates, destroys and restarts sandboxes; answers questions about them.

    ``component(name)`` returns the current reference of another component
    (``sandboxes``, ``compiler``, ``versions``), looked up each time: the manager
    may outlive a restart of one, and the other way round.
    """

    def __init__(
        self,
        *,
        runtime_id: str,
        base_dir: str,
        component: Callable[[str], Any],
        name: str = "manager",
        store: Store | None = None,
        start_stored: bool = True,
        inflight: InFlight | None = None,
    ) -> None:
        super().__init__(name=name)
        self.store = store
        #: Creates and destroys under way; the runtime's table outlives this manager,
        #: so a successor finishes what it leaves (see :mod:`actors.inflight`).
        self.inflight = inflight if inflight is not None else InFlight()
        #: Start the stored sandboxes that are not running (a runtime starting); a
        #: restarted manager only lists them, in status error (they had stopped).
        self.start_stored = start_stored
        self.runtime_id = runtime_id
        self.base_dir = base_dir
        self._component = component
        self._sandboxes = lambda: component("sandboxes")
        self.records: dict[str, SandboxRecord] = {}
        #: This manager's monitor of each sandbox supervisor, by its actor id.
        self._sup_monitors: dict[str, str] = {}
        self._handler_id = f"{runtime_id}:manager"

    # -- lifecycle -------------------------------------------------------------------
    def on_init(self) -> None:
        # Jobs a killed predecessor left keep their ids reserved (their records are
        # theirs, not rebuilt); each comes back to this manager once: from its thread
        # when it is done, or from here if it was done already (a killed manager's
        # thread may even be finishing one now: see on_info).
        jobs = self.inflight.attach(self.ref)
        self._rebuild(skip={job.record.config.id for job in jobs})
        for job in jobs:
            self.records[job.record.config.id] = job.record
        ready = tuple(job for job in jobs if job.ready)
        if ready:
            self.ref.tell(_JobReady(ready))
        me = self.ref

        records = self.records

        def forward(event: str, _m: Any, md: Any) -> None:
            if md.get("runtime") == self.runtime_id:
                if event == "sandbox.process.up":
                    # A create's own start (its thread, before the finishing turn) sets
                    # no status: the finishing turn says ``running``. Dropped here, it
                    # costs the manager no turn (read from the emitting thread: a
                    # record's ``creating`` only turns False in a later turn).
                    record = records.get(md.get("sandbox"))
                    if record is not None and record.creating:
                        return
                elif event == "sandbox.process.down":
                    # A destroyed sandbox's process going down: its turn would ignore
                    # it (status ``stopping``, set in the turn that sent the stop, so
                    # before any down the stop causes). Dropped here, it wakes no
                    # manager while the destroy's thread finishes.
                    record = records.get(md.get("sandbox"))
                    if record is not None and record.destroying and record.status in _DONE:
                        return
                try:
                    me.tell(_ProcessEvent(event, md["sandbox"], dict(md)))
                except SandboxError:
                    pass

        telemetry.detach(self._handler_id)  # a crashed predecessor may have left it
        telemetry.attach(self._handler_id, "sandbox.process", forward)
        self.ref.tell(_Recover())  # first in the mailbox: callers wait behind it

    def on_exit(self, reason: ExitReason) -> None:
        telemetry.detach(self._handler_id)
        if not reason.abnormal:
            # The runtime is stopping (a crash leaves the jobs to the successor): no
            # manager will finish a job in flight, so none leaves anything behind.
            for job in self.inflight.close():
                _drop(job, self._component, self.base_dir)

    def _rebuild(self, skip: set[str]) -> None:
        """Recover the registry from the sandboxes supervisor (after a manager crash),
        but for the sandboxes in ``skip`` (created or destroyed by jobs in flight)."""
        sandboxes = self._sandboxes()
        for child in sandboxes.which_children():
            spec = child.spec if hasattr(child, "spec") else None
            meta = spec.meta if spec is not None else {}
            if "config" not in meta or meta["config"].id in skip:
                continue  # not a sandbox, or a job in flight has its record
            record = SandboxRecord(
                config=meta["config"],
                slot=meta["slot"],
                workdir=meta["workdir"],
                created_at=meta["created_at"],
                supervisor=child.ref,
                parent=sandboxes,
            )
            self.records[record.config.id] = record
            if child.ref is not None and child.ref.is_alive():
                self._monitor_supervisor(child.ref)
                self._recovered(record, "adopted")
                self._set_status(record, "running" if record.slot.current() else "starting")
            else:
                self._set_status(record, "error")
        if self.records:
            log.info("manager rebuilt its registry: %s", ", ".join(sorted(self.records)))

    def _recovered(self, record: SandboxRecord, how: str) -> None:
        record.recovered = how
        telemetry.execute(
            "sandbox.recovered", {"count": 1},
            {"sandbox": record.config.id, "runtime": self.runtime_id, "how": how},
        )

    def _recover_stored(self) -> None:
        """Start every stored sandbox that is not running (host restart)."""
        if self.store is None:
            return
        for stored in self.store.sandboxes():
            if stored.id not in self.records:
                self._restore(stored)

    def _restore(self, stored: StoredSandbox) -> None:
        """Bring back a stored sandbox: started with its current code, or (by a
        restarted manager) listed in status error, since it was not running."""
        cfg = dict(stored.config)
        try:
            config = SandboxConfig.build(
                stored.id, cfg.pop("path"), **{k: v for k, v in cfg.items() if k != "id"})
            problem = None
        except SandboxError as exc:  # e.g. the app's directory is gone
            config = SandboxConfig(
                id=stored.id, path=stored.config.get("path", ""),
                limits=Limits.build(stored.config.get("limits")),
                watch=WatchOptions.build(stored.config.get("watch")))
            problem = exc
        record = SandboxRecord(
            config=config,
            slot=ProcessSlot(config.id, runtime_id=self.runtime_id),
            workdir=tempfile.mkdtemp(prefix=f"{config.id}-", dir=self.base_dir),
            created_at=stored.created_at,
        )
        self.records[config.id] = record
        record.slot.watch = config.watch if config.auto_reload else None
        try:
            if problem is not None:
                raise problem
            containment.prepare(self, record)
            code = self._component("versions").invoke("current_code", config.id)
            if code:
                record.slot.modules = {n: ModuleCode.from_compiled(v) for n, v in code.items()}
            else:
                self._compile(record)  # killed mid-create, before its first versions
            if not self.start_stored:
                raise SandboxError(
                    f"sandbox {config.id!r} was not running when the manager restarted "
                    "(restart intensity reached, or terminated); restart_sandbox starts it")
            self._set_status(record, "starting")
            self._start(record)
            if record.slot.watch is not None:
                self._watch(record)
        except SandboxError as exc:
            record.last_error = {"kind": type(exc).__name__, "message": str(exc),
                                 "at": time.time()}
            record.slot.close(ExitReason("error", str(exc)))
            self._set_status(record, "error")
            log.log(logging.ERROR if self.start_stored else logging.INFO,
                    "sandbox %r not brought back: %s", config.id, exc)
            return
        self._recovered(record, "restarted")

    def _readopt(self, sandboxes: SupervisorRef) -> None:
        """A new ``sandboxes`` supervisor: start each sandbox under it again."""
        for record in list(self.records.values()):
            if record.parent is not None and record.parent.id == sandboxes.id:
                continue  # already started under the new one
            self._restart_lost(record, sandboxes)

    def _restart_lost(self, record: SandboxRecord, sandboxes: SupervisorRef | None = None) -> None:
        """Start a sandbox whose supervisor went down with its parent, with its current code."""
        if record.status in ("stopping", "stopped", "error") or record.slot.blocked:
            return  # destroyed, or it had given up: it stays as it was
        if record.creating or record.destroying:
            return  # its create or destroy job starts or stops it
        old = record.supervisor
        if old is not None and old.is_alive():
            # Still shutting down after its parent's exit: it holds the sandbox's name.
            old.join(record.config.shutdown + KILL_MARGIN + 5.0)
        self._set_status(record, "starting")
        try:
            self._start(record, sandboxes=sandboxes, quiet=True)
        except SandboxError as exc:
            log.info("sandbox %r waits for the sandboxes supervisor: %s", record.config.id, exc)
            return
        self._recovered(record, "restarted")

    # -- messages --------------------------------------------------------------------
    def on_info(self, message: Any) -> None:
        if isinstance(message, _Recover):
            self._recover_stored()
            return
        if isinstance(message, Readopt):
            self._readopt(message.sandboxes)
            return
        if isinstance(message, _JobReady):
            self._finish_jobs(message.jobs)
            return
        if containment.handle_info(self, message):  # security/limit terminations
            return
        if isinstance(message, _ProcessEvent):
            record = self.records.get(message.sandbox)
            if record is None or record.status in _DONE:
                return
            if message.event == "sandbox.process.up":
                if not record.creating:  # else its create's finishing turn says so
                    self._set_status(record, "running")
            elif message.event == "sandbox.process.down":
                kind = message.metadata.get("kind")
                if kind in ("normal", "shutdown"):
                    comes_back = record.config.restart == "permanent"
                else:
                    record.last_error = {
                        "kind": kind,
                        "message": message.metadata.get("reason"),
                        "at": time.time(),
                    }
                    comes_back = record.config.restart != "temporary"
                if comes_back:
                    self._set_status(record, "starting")
                else:
                    record.slot.close(ExitReason(kind or "exit", "not restarted (restart type)"))
                    self._set_status(record, "stopped" if kind in ("normal", "shutdown") else "error")
        elif isinstance(message, Down):
            self._sup_monitors.pop(message.actor_id, None)
            for record in list(self.records.values()):
                if record.supervisor is not None and record.supervisor.id == message.actor_id:
                    record.supervisor = None
                    if record.status in ("stopping", "stopped"):
                        continue
                    if gave_up(message.reason):  # its own restart intensity, as in OTP
                        record.last_error = {
                            "kind": "escalation",
                            "message": f"restart intensity reached: {message.reason.message}",
                            "at": time.time(),
                        }
                        record.slot.close(message.reason)
                        self._set_status(record, "error")
                    elif message.reason.abnormal:
                        # Not its own restart intensity: its parent (``sandboxes``) went
                        # down, or someone killed it. Start it again under the current
                        # ``sandboxes``; if that is the dying one, Readopt does it.
                        self._restart_lost(record)

    def _monitor_supervisor(self, sup: SupervisorRef) -> None:
        """Watch a sandbox's own supervisor (its Down: a crash, or restarts given up);
        the monitor is kept so that a destroy drops it (see :meth:`op_destroy`)."""
        self._sup_monitors[sup.id] = monitor(sup, self.ref)

    def _finish_jobs(self, jobs: tuple[Job, ...]) -> None:
        """The turn that finishes jobs whose thread is done (:class:`_JobReady`)."""
        for job in jobs:
            if job.finished.is_set():
                self._finished_before(job)
            elif self.inflight.get(job.record.config.id) is job:
                # One a killed manager's turn started after this one attached is
                # not in the records yet.
                self.records.setdefault(job.record.config.id, job.record)
                (self._finish_create if job.kind == "create" else self._finish_destroy)(job)

    def op_finish_jobs(self, jobs: tuple[Job, ...]) -> None:
        """:class:`_JobReady` for a job thread's creates or destroys, asked by that
        thread, which runs this turn itself when the manager is idle: it then settles
        the tickets with no hand-off to the manager's thread and back (a create's or
        destroy's last two)."""
        self._finish_jobs(jobs)

    def _finished_before(self, job: Job) -> None:
        """A job finished by a killed predecessor's thread after this manager took over
        its record: keep the sandbox as a rebuild would, or drop the record."""
        record: SandboxRecord = job.record
        if self.records.get(record.config.id) is not job.record:
            return
        _value, error = job.outcome
        if job.kind == "create" and error is None and record.supervisor is not None:
            self._monitor_supervisor(record.supervisor)
        else:
            del self.records[record.config.id]

    # -- operations ------------------------------------------------------------------
    def op_create(self, configs: list[SandboxConfig],
                  workers: int = 1) -> list[Ticket | BaseException]:
        """Start creating sandboxes (one, or a batch); returns, for each config in
        order, the :class:`~actors.inflight.Ticket` its caller waits on (a
        :class:`Created` once its app answers), or the error that refused it (its id
        taken, say): one refused config leaves the others going.

        Creates of independent sandboxes overlap, as children of a dynamic supervisor
        do: this turn reserves the ids, one job thread runs the creates on up to
        ``workers`` threads (each prepares containment, compiles and boots the
        process; the app of a batch is compiled once, :meth:`_prepare_all`), and a
        later turn (of this manager, or of its successor if this one is killed
        meanwhile) adopts them all, writes the store and settles the tickets. A
        batch costs one turn here and one there, not one each per create.
        """
        answers: list[Ticket | BaseException] = []
        jobs: list[Job] = []
        try:
            for config in configs:
                try:
                    job = self._create(config, ahead_now=len(jobs) < workers)
                except Exception as exc:  # that config's alone (SandboxExists, a full disk)
                    answers.append(exc)
                    continue
                jobs.append(job)
                answers.append(job.ticket)
        finally:  # a job that holds its id is run, whatever happened after it
            if jobs:
                self._run_jobs(jobs, lambda jobs: self._prepare_all(jobs, workers))
        return answers

    def _create(self, config: SandboxConfig, *, ahead_now: bool) -> Job:
        """One create of :meth:`op_create`: its child asked for (``ahead_now``: in this
        turn, else by the thread that takes it up), the record, the id held; returns
        the job (which owns the child from then on)."""
        if config.id in self.records or self.inflight.get(config.id) is not None:
            raise SandboxExists(config.id)
        slot = ProcessSlot(config.id, runtime_id=self.runtime_id)
        # First thing: the child's fork and first steps overlap the rest of this
        # turn, the job thread's start, containment and the compile. Only the first
        # ``workers`` of a batch: a child forked ahead waits for its plan, and a
        # batch's later creates would hold one waiting child each for nothing.
        ahead: ChildAhead | None | str = (
            containment.fork_ahead(config, slot) if ahead_now else _LATER)
        try:
            workdir = tempfile.mkdtemp(prefix=f"{config.id}-", dir=self.base_dir)
            record = SandboxRecord(
                config=config,
                slot=slot,
                workdir=workdir,
                created_at=time.time(),
                creating=True,
            )
            job = Job("create", record, Ticket(f"create of sandbox {config.id!r}"))
            try:
                held = self.inflight.add(job)  # first: until it holds the id, it owns nothing
            except BaseException:
                shutil.rmtree(workdir, ignore_errors=True)
                raise
            if held is not None:
                shutil.rmtree(workdir, ignore_errors=True)
                raise SandboxExists(config.id)
        except BaseException:
            if isinstance(ahead, ChildAhead):
                ahead.cancel()  # no job took it: killed unused
            raise
        job.extra["ahead"] = ahead
        self.records[config.id] = record
        # Set before the start, so a watcher restarting meanwhile finds it (watcher.py).
        record.slot.watch = config.watch if config.auto_reload else None
        self._set_status(record, "initializing")
        self._set_status(record, "compiling")
        return job

    def _prepare_all(self, jobs: list[Job], workers: int) -> None:
        """The job thread of :meth:`op_create`: each create's :meth:`_prepare` on up
        to ``workers`` threads (this one first: a lone create starts no other). The
        compiler is asked once per distinct app of the batch (path, profile and
        compile options): the others of that app wait for its answer (each still
        judges its scan under its own registered profile and records its versions)."""
        context = contextvars.copy_context()
        compiles: dict[tuple[Any, ...], Future[Any]] = {}
        lock = threading.Lock()

        def compiled(record: SandboxRecord) -> Any:
            config = record.config
            key = (config.path, config.profile, *config.compile_settings().values())
            with lock:
                answer, first = compiles.get(key), key not in compiles
                if answer is None:
                    answer = compiles[key] = Future()
            if first:
                try:
                    answer.set_result(self._compiled(record))
                except BaseException as exc:
                    answer.set_exception(exc)
            return answer.result()

        def one(i: int) -> None:
            job = jobs[i]
            try:
                ahead = job.extra.pop("ahead")
                if ahead is _LATER:
                    ahead = containment.fork_ahead(job.record.config, job.record.slot)
                context.copy().run(self._prepare, job, ahead,
                                   compiled if len(jobs) > 1 else None)
            except BaseException as exc:  # a bug: that job's (the finishing turn raises it)
                job.result = job.result or exc

        self.inflight.each(one, range(len(jobs)), workers)

    def _run_jobs(self, jobs: list[Job], part: Callable[[list[Job]], None]) -> None:
        """Run ``part(jobs)`` on one job thread (under the caller's correlation id),
        hand the jobs to the manager of the moment, and settle each ticket once a
        manager has finished its job. Each job's telemetry span (``sandbox.create`` or
        ``sandbox.destroy``) covers all of it and ends before its caller hears."""
        context = contextvars.copy_context()

        def run() -> None:
            spans = [_JobSpan(job, self.runtime_id) for job in jobs]
            try:
                part(jobs)
            except BaseException as exc:  # a bug: the finishing turn fails the manager with it
                for job in jobs:
                    job.result = job.result or exc
            finally:
                deadline = time.monotonic() + JOB_TIMEOUT
                self._hand_over(jobs, deadline)
            for span in spans:
                span.end(deadline)

        self.inflight.run(lambda: context.run(run))

    def _hand_over(self, jobs: list[Job], deadline: float) -> None:
        """A job thread is done: tell whichever manager runs now (a manager killed
        meanwhile is replaced by one that finds the jobs ready when it starts), and
        wait for that turn until ``deadline`` (monotonic)."""
        manager, closed = self.inflight.done(jobs)
        if closed:  # the runtime is stopping: nobody adopts them
            for job in jobs:
                _drop(job, self._component, self.base_dir)
            return
        if manager is not None:
            try:
                manager.invoke_here("finish_jobs", tuple(jobs),
                                    timeout=max(0.0, deadline - time.monotonic()))
            except SandboxError:
                # It ended (its successor finds the jobs at its start), failed in that
                # turn (the jobs' outcomes are set), or did not answer in time.
                pass

    def _prepare(self, job: Job, ahead: ChildAhead | None,
                 compiled: Callable[[SandboxRecord], Any] | None = None) -> None:
        """A create's slow part, on a job thread: containment (profile, limits, UID,
        cgroups), compile (a cache hit for the 2nd..Nth sandbox of one app), and boot
        the process until the app is ready. Its child, ``ahead``, was asked of the
        fork server first thing in the create's turn (or by this thread, for a
        create of a batch past its first ``workers``), so its fork overlaps
        containment and the compile; it runs nothing until containment hands it
        the plan (:func:`containment.fork_ahead`), and its OS layers overlap the
        compile; the app reaches it at its start. ``compiled``: the batch's compile
        of the record's app (:meth:`_prepare_all`), else the compiler is asked."""
        record = job.record
        try:
            plan = self._contain_and_compile(record, ahead, compiled)
            process: ProcessRef | BaseException
            try:
                process = job.extra["process"] = boot_process(
                    record, runtime_id=self.runtime_id, ahead=ahead, plan=plan)
            except Exception as exc:
                # Raised by the sandbox supervisor's first start, so a boot failure takes
                # the path (and emits the events) of any start failure.
                process = exc
            self._set_status(record, "starting")
            self._start_supervisor(record, process=process)
        except BaseException as exc:
            job.result = exc
        finally:
            if ahead is not None:
                ahead.cancel()  # containment or the compile refused it: killed unused

    def _contain_and_compile(
        self, record: SandboxRecord, ahead: ChildAhead | None,
        compiled: Callable[[SandboxRecord], Any] | None = None,
    ) -> dict[str, Any] | None:
        """Containment, and the compile: with a built-in profile the compiler's part
        (a cache hit for the 2nd..Nth sandbox of one app) runs beside containment
        on another job thread when the create is alone (:meth:`InFlight.aside`); what
        the scan found is judged (and audited under the sandbox's registered profile)
        after it. ``compiled`` (a create of a batch): the batch's compile of the app,
        and containment makes no round trip it would overlap. A custom profile is
        resolved by containment first, then compiled with. The child forked ``ahead``
        gets its isolation plan once containment is done; returns that plan."""
        if record.config.profile not in BUILTIN_PROFILES:
            containment.prepare(self, record, overlap=compiled is None)
            plan = containment.isolate_ahead(record, ahead)
            self._compile(record)
            return plan
        context = contextvars.copy_context()  # the caller's correlation id, as the job's
        compile = compiled or self._compiled
        result = self.inflight.aside(lambda: context.run(compile, record))
        try:
            containment.prepare(self, record, overlap=compiled is None)
            plan = containment.isolate_ahead(record, ahead)
        finally:
            wait([result])  # no compile outlives a failed create
        self._compile(record, result.result())
        return plan

    def _finish_create(self, job: Job) -> None:
        record, config = job.record, job.record.config
        process = job.extra.get("process")
        try:
            if job.result is not None:
                raise job.result  # containment, compile, scan or the start refused it
            assert record.supervisor is not None
            self._monitor_supervisor(record.supervisor)
            self._set_status(record, "running")
            if record.slot.watch is not None:
                self._watch(record)
            if self.store is not None:  # desired state: comes back after a host restart
                self.store.put_sandbox(StoredSandbox(
                    config.id, config.as_dict(), record.workdir, record.created_at))
        except BaseException as exc:
            if isinstance(process, ProcessRef) and record.supervisor is None:
                process.stop(ExitReason.shutdown("create failed"))  # never adopted
            self._abandon(record)
            self.inflight.remove(job)
            job.finish(error=exc)
            if not isinstance(exc, SandboxError):
                raise  # a bug here: the manager fails (its caller got the error)
            return
        record.creating = False
        self.inflight.remove(job)
        job.finish(Created(record.created_at, record.slot))

    def _abandon(self, record: SandboxRecord) -> None:
        """Leave nothing of a failed create behind: no process, no entry, no directory."""
        if self.records.get(record.config.id) is record:
            del self.records[record.config.id]
        _remove_traces(record, self._component, self.base_dir)

    def op_destroy(self, sandbox_ids: list[str]) -> list[Ticket | SandboxError]:
        """Start destroying sandboxes (one, or a batch); returns, for each id in order,
        the ticket its caller waits on (settled once its process has stopped and
        nothing of it is left), or the error that refused it (unknown, or its create
        or another destroy under way): one refused id leaves the others going.

        Destroys overlap like creates: this turn takes the sandboxes out of the store
        (one transaction), closes their slots and asks their processes to stop
        (gracefully: they start while the job's thread gets going), one thread stops
        the sandboxes' own supervisors (which wait for those processes to end), and
        a later turn (this manager's or its successor's) settles the tickets.
        """
        answers: list[Ticket | SandboxError] = []
        jobs: list[Job] = []
        for sandbox_id in sandbox_ids:
            try:
                record = self._settled(sandbox_id)
                job = Job("destroy", record, Ticket(f"destroy of sandbox {sandbox_id!r}"))
                held = self.inflight.add(job)  # first: until it holds the id, it changes nothing
                if held is not None:
                    raise _busy(sandbox_id, held)
            except SandboxError as exc:
                answers.append(exc)
                continue
            record.destroying = True
            record.slot.watch = None  # a restarting watcher leaves it; the job unwatches it
            sup = record.supervisor  # its Down would change nothing: no turn for it
            if sup is not None and (mref := self._sup_monitors.pop(sup.id, None)) is not None:
                demonitor(sup, mref)
            jobs.append(job)
            answers.append(job.ticket)
        if not jobs:
            return answers
        if self.store is not None:  # first: a host killed now does not bring them back
            self.store.delete_sandboxes([job.record.config.id for job in jobs])
        for job in jobs:  # all asked at once: their graceful stops overlap
            record = job.record
            record.slot.close(ExitReason.shutdown("sandbox destroyed"))
            job.extra["starts"] = record.slot.starts  # a restart after this is seen (_take_down)
            proc = record.slot.current()
            # Its graceful stop starts now, the job's thread waits for it. A process
            # whose end is now this stop's is not restarted: its remains may go once
            # it has exited (_take_down).
            job.extra["ours"] = proc if proc is not None and proc.stop_soon() else None
            # Is it in its cgroups? Then what its UID runs outside them is killed while
            # it stops (kill_strays), with no pass over /proc of its own after the exit.
            # Read on this thread right after its stop went (~0.2 ms, first reads of
            # its /proc entries): the process leaves its cgroups at the very end of its
            # exit (its app's stop, then the kernel's teardown of its memory, >= 1 ms),
            # so the stop need not wait for the read. A read that comes too late (an
            # exited process is in no cgroup; a batch's thread, or this one waiting for
            # the GIL for long) finds none: release then makes the pass after the exit.
            try:
                job.extra["member"] = containment.joined_cgroups(job.record)
            except Exception as exc:  # a bug: that destroy fails, after release's full pass
                job.result, job.extra["member"] = exc, None
            self._set_status(record, "stopping")  # after the stop: it waits for no event
        self._run_jobs(jobs, self._take_down)
        return answers

    def _take_down(self, jobs: list[Job]) -> None:
        """The slow part of destroys (one, or a batch), on one job thread: stop the
        sandboxes' supervisors (each process stops gracefully, then is killed) and
        remove every trace of them. The supervisors are all asked to stop at once;
        meanwhile what runs under each UID outside its cgroups is killed (passes
        over /proc are shared by the batch) and the sandboxes go off the other
        components' books (one round trip to each for all of them); then each stop
        is waited for and its remains removed, on up to :data:`REMAINS_THREADS`
        threads: once its process has exited, if it will not be restarted (else once
        its supervisor has stopped), and its supervisor's stop is waited for before
        the job is done. A failure of one destroy is that job's (``job.result``)."""
        records = [job.record for job in jobs]
        members = [job.extra["member"] for job in jobs]  # found in its cgroups (op_destroy)
        components = _Components(self._component)
        reason = ExitReason.shutdown("sandbox destroyed")
        sups = [record.supervisor for record in records]
        for sup in sups:
            if sup is not None:  # asked now (out of band, as an exit signal), waited for below
                sup.stop_soon(reason)

        def while_they_stop() -> list[bool | BaseException]:
            # The other components' books: 4 round trips for the batch, none in the
            # manager's turn; a reload the watcher starts meanwhile is refused (the
            # destroy is in flight).
            verdicts: list[bool | BaseException] = []
            try:
                for record, member in zip(records, members):
                    try:
                        verdicts.append(containment.kill_strays(components, record, member))
                    except BaseException as exc:  # that job's: everything else goes first
                        verdicts.append(exc)
            finally:  # a failed pass (release makes its own) leaves no registration behind
                _unregister(records, self._component)
            return verdicts

        early = self.inflight.aside(while_they_stop)  # beside the stop when alone

        def stopped_then_removed(i: int) -> None:
            job, sup, record = jobs[i], sups[i], records[i]
            wait = record.config.shutdown + KILL_MARGIN + 5.0
            try:
                # A process that will not be restarted (op_destroy): once it has
                # exited (out of its cgroups, running nothing), its remains go while
                # its server reaps it and its supervisor winds down (whose stop, which
                # waits for the reap, is waited for after), so the directories'
                # removal (0.3-0.5 ms, waiting in the kernel) overlaps those.
                ours = job.extra.get("ours")
                exited = sup is not None and ours is not None and ours.wait_exited(wait)
                if sup is not None and not exited:
                    sup.stop(reason, timeout=wait)
                try:
                    verdict = early.result()[i]
                except BaseException as exc:
                    verdict = exc
                if isinstance(verdict, BaseException):
                    job.result, strays_killed = job.result or verdict, False
                else:
                    # Only for the process it looked at: a restart meanwhile (before
                    # the stop reached the supervisor) started another.
                    strays_killed = verdict and record.slot.starts == job.extra["starts"]
                try:
                    _remove_remains(record, self._component, self.base_dir,
                                    stopped=sup is not None, strays_killed=strays_killed)
                finally:
                    if exited and sup is not None:
                        sup.stop(reason, timeout=wait)
            except BaseException as exc:  # a bug: the finishing turn fails the manager with it
                job.result = exc

        # Each stop waited for, then its remains removed, on a few threads: removing a
        # workdir the stopped process had mounted waits in the kernel (0.3-4 ms per
        # rmdir, mostly idle), and those waits overlap across threads.
        self.inflight.each(stopped_then_removed, range(len(jobs)), REMAINS_THREADS)

    def _finish_destroy(self, job: Job) -> None:
        record = self.records.get(job.record.config.id, job.record)
        sandbox_id = record.config.id
        self.inflight.remove(job)
        if isinstance(job.result, BaseException):
            job.finish(error=job.result)
            if isinstance(job.result, SandboxError):
                return
            raise job.result  # a bug in the destroy's thread: the manager fails with it
        self._set_status(record, "stopped")
        if self.records.get(sandbox_id) is record:
            del self.records[sandbox_id]
        job.finish()

    def op_restart(self, sandbox_id: str, preserve_state: bool) -> dict[str, Any]:
        record = self._settled(sandbox_id)
        with telemetry.span(
            "sandbox.restart",
            {"sandbox": sandbox_id, "runtime": self.runtime_id, "preserve_state": preserve_state},
        ):
            states = None
            if preserve_state:
                proc = record.slot.current()
                if proc is None:
                    raise SandboxError(
                        f"sandbox {sandbox_id!r} has no running process to take state from; "
                        "restart it without preserve_state"
                    )
                states = proc.system("get_states", timeout=record.config.shutdown)
            self._set_status(record, "stopping")
            self._stop_supervisor(record)
            self._set_status(record, "starting")
            self._start(record, states=states)
        return record.info()

    def op_info(self, sandbox_id: str) -> dict[str, Any]:
        record = self._get(sandbox_id)
        return record.info(containment.info_extra(self, record))

    def op_list(self) -> list[dict[str, Any]]:
        return [r.info(containment.info_extra(self, r)) for r in self.records.values()]

    def op_set_status(self, sandbox_id: str, status: str, only_from: str | None = None) -> None:
        record = self._get(sandbox_id)
        if only_from is None or record.status == only_from:
            self._set_status(record, status)

    def op_cache_dir(self, sandbox_id: str) -> str:
        self._settled(sandbox_id)  # a reload asks first: none before the create answered
        return self.cache_dir(sandbox_id)

    def op_record_error(self, sandbox_id: str, error: dict[str, Any]) -> None:
        self._get(sandbox_id).last_error = error

    def op_slot(self, sandbox_id: str) -> ProcessSlot:
        return self._get(sandbox_id).slot

    def op_created_at(self, sandbox_id: str) -> float:
        """When the sandbox of this id was created (a handle checks it still names it)."""
        return self._get(sandbox_id).created_at

    def op_reload_context(self, sandbox_id: str) -> ReloadContext:
        """What a hot reload needs of the sandbox (profile, paths, compile settings,
        cache directory, slot), in one round trip and without the usage figures
        ``info`` asks the monitor for. Refused while its create or a destroy is
        under way."""
        record = self._settled(sandbox_id)
        config = record.config
        return ReloadContext(config.profile, config.path, record.workdir,
                             config.compile_settings(), self.cache_dir(sandbox_id), record.slot,
                             record.created_at)

    # -- helpers ---------------------------------------------------------------------
    def cache_dir(self, sandbox_id: str) -> str:
        """Compile cache of a sandbox: beside, not inside, its work directory, which
        the sandbox itself can write."""
        return _cache_dir(self.base_dir, sandbox_id)

    def _compile(self, record: SandboxRecord, result: Any = None) -> None:
        """Compile (and scan) every module (or take ``result``, a :meth:`_compiled`
        made beforehand); refuse what the scan refused; record the modules as the
        first versions."""
        if result is None:
            result = self._compiled(record)
        containment.check_compiled(self, record, result)  # SecurityViolation
        result.raise_for_errors()
        # On this thread when the version manager is idle (this thread only waits
        # for its record): no hand-off to its thread and back.
        versions = self._component("versions").invoke_here("record", record.config.id, result)
        record.slot.modules = {
            name: ModuleCode.from_compiled(m, versions.get(name, 0))
            for name, m in result.modules.items()
        }

    def _compiled(self, record: SandboxRecord) -> Any:
        """The compiler's result for the sandbox's app (a round trip to the compiler)."""
        config = record.config
        return self._component("compiler").invoke(
            "compile_sandbox",
            config.path,
            profile=containment.compile_profile(record),
            # The compiler's own cache, shared by every sandbox: it is keyed on content
            # (source, profile, scanner, filename), so the 2nd..Nth sandbox of one app
            # loads what the first compiled and scanned.
            cache_dir=None,
            timeout=COMPILE_TIMEOUT,
            **compiler_options(config.compile_settings()),
        )

    def _watch(self, record: SandboxRecord) -> None:
        """Have the watcher watch the sandbox's directory (auto-reload); raises WatchError."""
        try:
            watcher = self._component("watcher")
        except SandboxError:
            # Restarting: the new watcher reads slot.watch of every sandbox at start.
            log.warning("watcher not running; sandbox %r will be watched when it is back",
                        record.config.id)
            return
        watcher.invoke(
            "watch", record.config.id, record.config.path, options=record.slot.watch,
            exclude=(record.workdir, self.cache_dir(record.config.id)), timeout=60.0,
        )

    def _get(self, sandbox_id: str) -> SandboxRecord:
        record = self.records.get(sandbox_id)
        if record is None:
            raise SandboxNotFound(sandbox_id, list(self.records))
        return record

    def _settled(self, sandbox_id: str) -> SandboxRecord:
        """The record, refusing one whose create or destroy is under way."""
        record = self._get(sandbox_id)
        held = self.inflight.get(sandbox_id)
        if held is not None:
            raise _busy(sandbox_id, held)
        return record

    def _set_status(self, record: SandboxRecord, status: str) -> None:
        old, now = record.status, time.time()
        record.status, record.updated_at = status, now
        record.history.append((status, now))
        del record.history[:-50]
        telemetry.execute(
            "sandbox.status",
            {"system_time": now},
            {"sandbox": record.config.id, "from": old, "to": status, "runtime": self.runtime_id},
        )

    def _start(
        self,
        record: SandboxRecord,
        states: Any = None,
        sandboxes: SupervisorRef | None = None,
        *,
        quiet: bool = False,
        process: ProcessRef | BaseException | None = None,
    ) -> None:
        """Start the sandbox's own supervisor under ``sandboxes``; waits for the app.

        ``quiet``: a failure to reach ``sandboxes`` (it is restarting) raises without
        marking the sandbox ``error``: a :class:`Readopt` will start it.
        ``process``: one already booted (:func:`boot_process`), adopted by the first start.
        """
        sup = self._start_supervisor(record, states, sandboxes, quiet=quiet, process=process)
        self._monitor_supervisor(sup)
        self._set_status(record, "running")

    def _start_supervisor(
        self,
        record: SandboxRecord,
        states: Any = None,
        sandboxes: SupervisorRef | None = None,
        *,
        quiet: bool = False,
        process: ProcessRef | BaseException | None = None,
    ) -> SupervisorRef:
        """The part of :meth:`_start` that needs no manager turn (a create's thread runs
        it): the sandbox's supervisor started under ``sandboxes``."""
        spec = sandbox_spec(record, runtime_id=self.runtime_id, states=states, process=process)
        sandboxes = sandboxes or self._sandboxes()
        if quiet and not sandboxes.is_alive():
            raise SandboxError("the sandboxes supervisor is restarting")
        try:
            try:
                sup = cast(SupervisorRef, sandboxes.start_child(spec))  # start_sandbox_supervisor's
            except ChildSpecError:
                # A previous run of this sandbox that gave up holds the id (rare: only
                # then a round trip more; the spec's start has not run).
                try:
                    sandboxes.delete_child(spec.id)
                except SupervisorError:
                    pass
                sup = cast(SupervisorRef, sandboxes.start_child(spec))
            record.supervisor, record.parent = sup, sandboxes
        except ActorDead:
            raise SandboxError("the sandboxes supervisor is restarting") from None
        except SupervisorError as exc:
            cause: BaseException = exc
            while isinstance(cause, ChildStartFailed) and cause.__cause__ is not None:
                cause = cause.__cause__  # the sandbox's own supervisor, then the process
            if not isinstance(cause, SandboxError):
                cause = SandboxError(f"sandbox {record.config.id!r} failed to start: {cause}")
            record.last_error = {"kind": type(cause).__name__, "message": str(cause), "at": time.time()}
            self._set_status(record, "error")
            raise cause from None
        return sup

    def _stop_supervisor(self, record: SandboxRecord) -> None:
        _stop_sandbox_supervisor(record, self._component)


class SandboxSupervisor(Supervisor):
    """A sandbox's own supervisor (over its process): a :class:`Supervisor` that
    has its thread from the start. Every destroy stops it through that thread
    (``stop_soon``, several side by side), so a thread started on demand would only
    move its start from the create to the destroy (runtime.ondemand)."""

    thread_on_demand = False


def boot_process(record: SandboxRecord, *, runtime_id: str, states: Any = None,
                 ahead: ChildAhead | None = None,
                 plan: dict[str, Any] | None = None) -> ProcessRef:
    """Start the sandbox's process with its current code; returns once the app is ready.
    ``ahead``: its child, forked beforehand (:func:`containment.fork_ahead`), and
    ``plan`` the isolation plan it was given (:func:`containment.isolate_ahead`)."""
    config = record.config
    return start_process(
        config.entry,
        modules=list(record.slot.modules.values()),
        name=f"{runtime_id}/{config.id}",
        shutdown=config.shutdown,
        **containment.process_options(record, runtime_id, plan),  # isolation, guard, env
        cwd=record.workdir,
        states=states,
        output=record.slot.output,
        ahead=ahead,
    )


def sandbox_spec(
    record: SandboxRecord,
    *,
    runtime_id: str,
    states: Any = None,
    process: ProcessRef | BaseException | None = None,
) -> ChildSpec:
    """The child spec of one sandbox: its own supervisor over its process.

    The spec carries the configuration and the slot, so whoever holds the
    ``sandboxes`` supervisor can rebuild the manager's registry. ``process``: one
    booted before (outside the supervisors' turns), adopted by the first start, or
    the exception its boot raised, raised by the first start.
    """
    config = record.config
    slot = record.slot
    # Handed to the first start only; a crash restart starts fresh.
    first: list[Any] = [states, process]

    def start_process_into_slot() -> Any:
        (initial, booted), first[:] = first, [None, None]
        if isinstance(booted, BaseException):
            raise booted
        if booted is None or not booted.is_alive():
            booted = boot_process(record, runtime_id=runtime_id, states=initial)
        return slot.put(booted)

    process_spec = ChildSpec(
        "process",
        start=start_process_into_slot,
        restart=cast(Restart, config.restart),  # validated by SandboxConfig.build
        shutdown=config.shutdown + KILL_MARGIN,  # the supervisor waits for the kill too
    )

    def start_sandbox_supervisor() -> SupervisorRef:
        return SandboxSupervisor.start(
            [process_spec],
            strategy="one_for_one",
            max_restarts=config.max_restarts,
            max_seconds=config.max_seconds,
            name=f"{runtime_id}/sandbox:{config.id}",
        )

    return ChildSpec(
        f"sandbox:{config.id}",
        start=start_sandbox_supervisor,
        restart="temporary",
        shutdown=config.shutdown + 5.0,
        type="supervisor",
        meta={
            "config": config,
            "slot": slot,
            "workdir": record.workdir,
            "created_at": record.created_at,
        },
    )


def _busy(sandbox_id: str, job: Job) -> SandboxError:
    """The error for an operation on a sandbox whose create or destroy is under way."""
    if job.kind == "create":
        return SandboxError(
            f"sandbox {sandbox_id!r} is still being created; wait for its "
            "create_sandbox to return, then destroy or restart it")
    return SandboxError(
        f"sandbox {sandbox_id!r} is being destroyed; wait for that destroy_sandbox to return")


def _cache_dir(base_dir: str, sandbox_id: str) -> str:
    return os.path.join(base_dir, f"{sandbox_id}.cache")


def _remove_traces(record: SandboxRecord, component: Callable[[str], Any], base_dir: str) -> None:
    """Everything of a sandbox but the manager's entry: its supervisor (and so its
    process), watch, cgroups and UID's processes, registrations, directories and
    versions. Needs no manager: a job's thread runs it when the runtime stops."""
    _unregister([record], component)
    _remove_remains(record, component, base_dir)


def _unregister(records: list[SandboxRecord], component: Callable[[str], Any]) -> None:
    """The sandboxes off the other components' books: watch, resource monitor,
    security controller, versions; one operation of each for all of them, run on
    this thread when the component is idle (their own short bookkeeping: no hand-off
    to its thread and back, two wake-ups fewer each). Needs no stopped process."""
    sandbox_ids = [record.config.id for record in records]
    _quietly(component, "watcher", "unwatch_many", sandbox_ids)
    containment.unregister(_Components(component), sandbox_ids)
    _quietly(component, "versions", "forget_many", sandbox_ids)


def _remove_remains(
    record: SandboxRecord,
    component: Callable[[str], Any],
    base_dir: str,
    *,
    stopped: bool = False,
    strays_killed: bool = False,
) -> None:
    """Its supervisor (and so its process), then what the process leaves: the
    cgroups and the UID's processes, then its directories.

    ``stopped``: its supervisor was stopped already, or was asked to stop and the
    caller waits for it after. It is a temporary child of ``sandboxes``, whose
    entry goes with it (the Down reaches ``sandboxes`` before that stop returns),
    so no round trip to ``sandboxes`` is needed for it.
    ``strays_killed``: :func:`actors.containment.kill_strays` vouched for the
    UID's processes outside the cgroups (else ``release`` makes its pass over them).
    """
    if stopped:
        record.supervisor = None
    else:
        _stop_sandbox_supervisor(record, component)
    # The cgroups first: once they are removed (or their members killed) nothing
    # runs under the UID, the workdir's inode, which a sandbox created meanwhile
    # could get once the directory is gone. One after the other on this thread: a
    # second thread beside costs a hand-off and competes for the GIL with the
    # supervisor's wind-down (same-run: 0.3 ms slower).
    try:
        containment.release(_Components(component), record, strays_killed=strays_killed)
    finally:
        isolation.remove_workdir(record.workdir)
        shutil.rmtree(_cache_dir(base_dir, record.config.id), ignore_errors=True)


def _quietly(component: Callable[[str], Any], name: str, op: str, *args: Any) -> None:
    """``op`` of component ``name``; nothing if it is not running (a restarted one
    starts without what this would undo)."""
    try:
        component(name).invoke_here(op, *args, timeout=60.0)
    except SandboxError:
        pass


def _stop_sandbox_supervisor(record: SandboxRecord, component: Callable[[str], Any]) -> None:
    """Stop the sandbox's own supervisor (and so its process) and remove its entry."""
    try:
        sandboxes = component("sandboxes")
    except SandboxError:
        return  # restarting: the new one starts without it
    sup_id = f"sandbox:{record.config.id}"
    record.supervisor = None
    for op in (sandboxes.terminate_child, sandboxes.delete_child):
        try:
            op(sup_id)
        except (SupervisorError, ActorDead):
            pass  # not there, or the supervisor is going away (and its children with it)


class _JobSpan:
    """A job's telemetry span (``sandbox.create`` or ``sandbox.destroy``): begun as its
    thread starts, ended once a manager has finished the job, then its ticket is
    settled (the span ends before the caller hears). Each span runs in a context of
    its own, so the jobs of one thread keep their own correlation ids."""

    def __init__(self, job: Job, runtime_id: str) -> None:
        self.job = job
        self._span = telemetry.span(f"sandbox.{job.kind}",
                                    {"sandbox": job.record.config.id, "runtime": runtime_id})
        self._context = contextvars.copy_context()
        self._context.run(self._span.__enter__)

    def end(self, deadline: float) -> None:
        """Wait (until ``deadline``, monotonic) for the job's outcome; end the span
        with it and settle the ticket."""
        job = self.job
        job.finished.wait(max(0.0, deadline - time.monotonic()))
        value, error = job.outcome
        if not job.finished.is_set():
            error = SandboxError(
                f"the {job.kind} of sandbox {job.record.config.id!r} was not finished within "
                f"{JOB_TIMEOUT}s: no manager took it over")
        try:
            if error is None:
                self._context.run(self._span.__exit__, None, None, None)
            else:
                self._context.run(self._span.__exit__, type(error), error, error.__traceback__)
        finally:
            job.ticket.settle(value, error)


@dataclass(frozen=True)
class _Components:
    """What :mod:`actors.containment` needs of a manager: its component lookup."""

    _component: Callable[[str], Any]


def _drop(job: Job, component: Callable[[str], Any], base_dir: str) -> None:
    """A job no manager will finish (the runtime is stopping): leave nothing behind,
    tell its caller."""
    record = job.record
    if job.kind == "destroy":  # its thread removed everything: what the caller asked for
        job.finish()
        return
    try:
        process = job.extra.get("process")
        if isinstance(process, ProcessRef) and record.supervisor is None:
            process.stop(ExitReason.shutdown("runtime stopping during create"))  # never adopted
        _remove_traces(record, component, base_dir)
    except Exception:  # the runtime is going away: whatever is left goes with it
        log.exception("cleaning up the unfinished create of sandbox %r", record.config.id)
    finally:
        job.finish(error=SandboxError(
            f"the runtime stopped while sandbox {record.config.id!r} was being created; "
            "nothing of it was kept: create it again in a running runtime"))


def remove_workdirs(base_dir: str) -> None:
    """Remove the runtime's work directories (after every sandbox has stopped)."""
    shutil.rmtree(Path(base_dir), ignore_errors=True)
