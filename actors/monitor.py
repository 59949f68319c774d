"""The resource monitor: samples every sandbox's process tree and enforces its limits.

One per runtime, under the root supervisor. One sampler thread (not one per
sandbox) wakes every ``interval`` seconds (default 1 s) and, for each registered
sandbox, finds its process tree (the members of its cgroup when it has one, so
processes that left its process group are counted too; otherwise the process and
its descendants from ``/proc/<pid>/task/<pid>/children``) and reads each process
with psutil under ``oneshot()``: CPU times, RSS, threads, open fds (on Linux the
same figures come from one read of ``/proc/<pid>/stat``, the file ``oneshot()``
reads, plus a listing of ``fd/``). USS (psutil's ``memory_full_info``, which reads
every mapping) is read once every ``uss_every`` ticks (default 30) per sandbox,
the sandboxes' turns spread over the ticks (a new sandbox's first read too: its
``uss`` is None until then, unless ``sample_now`` reads it); on its turn it is
read again only if the tree's RSS moved since the last read, or at the latest
every 10th turn (an idle
sandbox's USS only drifts, as pages it shared become its own). The ``/proc`` files
read every tick stay open and are re-read in place (:mod:`actors.procfiles`).

Per sandbox it keeps a bounded history (``history`` samples) with min/mean/max
trends over 10 s, 1 min and 5 min windows, and checks the limits of
:class:`actors.config.Limits`: ``memory_mb`` (RSS of the tree), ``cpu_percent``
(mean over ``cpu_window`` seconds), ``processes``, ``open_files`` (per process).
Crossing ``warn_at`` (80 %; per runtime ``start(alerts={"warn_at": ...})``, per
sandbox ``create_sandbox(alerts=...)``) of a limit emits ``limit.warning`` telemetry once;
reaching the limit emits ``limit.exceeded``, writes the audit log, records the
event in the sandbox's info and takes the sandbox's ``action``: ``restart``
(its process is killed; its supervisor starts a fresh one) or ``terminate``.
``cpu_seconds`` is a budget per call, not per process life: each tick charges
the process's CPU time to the call in flight (or to a busy stretch with none),
and a stretch past the budget is a limit reached. Limits the kernel enforces
(RLIMIT_CPU where set, RLIMIT_FSIZE) end the process with
SIGXCPU / SIGXFSZ; the monitor records those exits as limits reached too, and
resource errors a sandbox reports in its replies (MemoryError, EMFILE, ...) as
``limit.reported`` (the sandbox's word).

Operations: ``register(sandbox_id, slot)``, ``unregister(sandbox_id)`` (``unregister_many(ids)``:
a batch destroy's, in one turn),
``usage(sandbox_id)`` (latest figures, trends, limit events), ``usage_all()``,
``sample_now()`` (one tick, synchronously), ``stats()`` (the sampler's own cost),
``run_overrun(sandbox_id, seconds)`` (a ``run`` went past ``run_seconds``).
After a restart of the monitor, it finds the sandboxes again from the
``sandboxes`` supervisor's child specs.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import psutil

from actors.config import Limits
from actors.procfiles import ProcFiles
from runtime import telemetry
from runtime.actor import ExitReason, Reply
from runtime.child import isolation
from runtime.component import Component
from runtime.errors import ActorDead, CallTimeout, ResourceLimitExceeded, SandboxError

__all__ = [
    "ResourceMonitorActor",
    "call_with_deadline",
    "deadline_passed",
    "deadline_wait",
    "raise_if_cpu_budget",
    "run_with_limit",
    "watch_call",
    "TREND_WINDOWS",
]

log = logging.getLogger("runtime.monitor")
_MIB = 1 << 20
#: Trend windows, in seconds.
TREND_WINDOWS = (10, 60, 300)
_EVENTS_KEPT = 20
_NO_LIMITS = Limits()
#: USS turns a sandbox whose RSS does not move may skip in a row (see _read_uss).
USS_TURNS_KEPT = 9
_SIGNAL_LIMITS = {"SIGXCPU": "cpu_seconds", "SIGXFSZ": "file_size_mb"}
#: With no call in flight, a process using more than this share of a core between
#: two samples is busy: its CPU is charged to one stretch (``cpu_seconds``).
IDLE_SHARE = 0.1


@dataclass
class _Watch:
    sandbox_id: str
    slot: Any
    pid: int | None = None
    #: The tree's processes; a psutil handle only where /proc cannot be read directly
    #: (not _FAST): making one reads the process's stat (~40 us per new process).
    procs: dict[int, psutil.Process | None] = field(default_factory=dict)
    cpu_prev: dict[int, float] = field(default_factory=dict)
    last_t: float = 0.0
    history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=300))
    latest: dict[str, Any] | None = None
    warned: set[str] = field(default_factory=set)
    acted: bool = False
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=_EVENTS_KEPT))
    uss: int | None = None
    uss_rss: int = 0  # the tree's RSS when its USS was read
    uss_kept: int = 0  # USS turns skipped in a row since (the RSS had not moved)
    phase: int = 0  # which tick of every uss_every reads this sandbox's USS
    fds: dict[int, int] = field(default_factory=dict)  # last fd count per process
    #: Calls whose callers gave up before the handler deadline: (proc, reply, started).
    calls: list[tuple[Any, Any, float]] = field(default_factory=list)
    warn_at: float | None = None  # the sandbox's own warning level (None: the monitor's)
    #: The per-call CPU budget (``cpu_seconds``): the process's CPU time (its own, not
    #: its children's) at the start of the busy stretch being charged, the request
    #: it belongs to, and the CPU time at the last tick.
    cpu_base: float = 0.0
    cpu_ref: int | None = None
    cpu_last: tuple[float, float] | None = None  # (CPU time, wall time) at the last tick

    @property
    def limits(self) -> Limits:
        prot = getattr(self.slot, "security", None)
        return prot.limits if prot is not None else _NO_LIMITS

    @property
    def state(self) -> dict[str, Any]:
        prot = getattr(self.slot, "security", None)
        return prot.state if prot is not None else {}


@dataclass(frozen=True)
class _Exit:
    sandbox_id: str
    reason: str


@dataclass(frozen=True)
class _Reported:
    sandbox_id: str
    error: str


@dataclass(frozen=True)
class _WatchCall:
    sandbox_id: str
    proc: Any
    reply: Any
    started: float


class ResourceMonitorActor(Component):
    """Samples sandboxes' process trees and acts on their limits (see the module doc).

    Options: ``runtime_id``, ``component`` (the runtime's component lookup, to
    find the sandboxes after a restart and to tell the manager and the security
    controller), ``interval`` (seconds between samples), ``uss_every`` (USS every
    n-th sample), ``history`` (samples kept per sandbox), ``warn_at`` (fraction
    of a limit that warns), ``autostart`` (start the sampler thread; off for
    tests that tick by hand with ``sample_now``).
    """

    def __init__(
        self,
        *,
        runtime_id: str = "runtime",
        component: Callable[[str], Any] | None = None,
        interval: float = 1.0,
        uss_every: int = 30,
        history: int = 300,
        warn_at: float = 0.8,
        autostart: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name or "monitor")
        if not isinstance(interval, (int, float)) or isinstance(interval, bool) or interval <= 0:
            from runtime.errors import ConfigError

            raise ConfigError("monitor_interval", interval, "a number of seconds > 0")
        self.runtime_id = runtime_id
        self._component = component
        self.interval = float(interval)
        self.uss_every = max(1, int(uss_every))
        self.history_len = max(10, int(history))
        self.warn_at = float(warn_at)
        self.autostart = autostart
        self.watches: dict[str, _Watch] = {}
        self._lock = threading.Lock()
        # One tick at a time (the sampler thread's, or sample_now's): they share the
        # open /proc files.
        self._tick_lock = threading.Lock()
        self._files = ProcFiles()  # actors/procfiles.py: re-read in place each tick
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._ticks = 0
        self._registered = 0
        self._tick_cpu: deque[float] = deque(maxlen=120)
        self._tick_wall: deque[float] = deque(maxlen=120)
        self._handlers = [f"{runtime_id}:monitor:down", f"{runtime_id}:monitor:reported"]

    # -- lifecycle -------------------------------------------------------------------
    def on_init(self) -> None:
        self._rebuild()
        me = self.ref
        rid = self.runtime_id

        def on_down(_e: str, _m: Any, md: Any) -> None:
            if md.get("runtime") == rid and md.get("kind") not in ("normal", "shutdown"):
                try:
                    me.tell(_Exit(str(md.get("sandbox")), str(md.get("reason") or "")))
                except SandboxError:
                    pass

        def on_reported(_e: str, _m: Any, md: Any) -> None:
            name = str(md.get("name") or "")
            runtime, sep, sid = name.partition("/")
            if sep and runtime == rid:
                try:
                    me.tell(_Reported(sid, str(md.get("error") or "")))
                except SandboxError:
                    pass

        for hid in self._handlers:
            telemetry.detach(hid)
        telemetry.attach(self._handlers[0], "sandbox.process.down", on_down)
        telemetry.attach(self._handlers[1], "process.resource_error", on_reported)
        if self.autostart:
            self._thread = threading.Thread(
                target=self._loop, name=f"{self.runtime_id}:monitor-sampler", daemon=True
            )
            self._thread.start()

    def on_exit(self, reason: Any) -> None:
        for hid in self._handlers:
            telemetry.detach(hid)
        self._halt.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(5.0)
        with self._tick_lock:
            self._files.close()

    def _rebuild(self) -> None:
        if self._component is None:
            return
        try:
            children = self._component("sandboxes").which_children()
        except SandboxError:
            return
        for child in children:
            meta = getattr(getattr(child, "spec", None), "meta", None) or {}
            slot, config = meta.get("slot"), meta.get("config")
            if slot is not None and config is not None:
                alerts = getattr(config, "alerts", None)
                self.op_register(config.id, slot, alerts.warn_at if alerts is not None else None)

    # -- operations ------------------------------------------------------------------
    def op_register(self, sandbox_id: str, slot: Any, warn_at: float | None = None) -> None:
        """Watch a sandbox; ``warn_at`` overrides the monitor's warning level for it."""
        with self._lock:
            w = _Watch(sandbox_id, slot, warn_at=warn_at)
            w.history = deque(maxlen=self.history_len)
            self._registered += 1
            w.phase = self._registered % self.uss_every
            self.watches[sandbox_id] = w

    def op_unregister(self, sandbox_id: str) -> None:
        self.op_unregister_many([sandbox_id])

    def op_unregister_many(self, sandbox_ids: list[str]) -> None:
        """Stop watching these sandboxes (a batch destroy: one turn for all)."""
        with self._lock:
            for sandbox_id in sandbox_ids:
                self.watches.pop(sandbox_id, None)

    def op_usage(self, sandbox_id: str) -> dict[str, Any] | None:
        with self._lock:
            w = self.watches.get(sandbox_id)
            if w is None:
                return None
            latest = dict(w.latest) if w.latest else None
            hist = list(w.history)
            events = list(w.events)
        out: dict[str, Any] = dict(latest or {})
        out["sampled"] = latest is not None
        out["trends"] = _trends(hist)
        out["limit_events"] = events
        out["limits"] = w.limits.as_dict()
        out["warn_at"] = w.warn_at if w.warn_at is not None else self.warn_at
        out["interval"] = self.interval
        return out

    def op_usage_all(self) -> dict[str, Any]:
        return {sid: self.op_usage(sid) for sid in list(self.watches)}

    def op_sample_now(self) -> int:
        """Take one sample of every sandbox now (in the monitor's thread); a sandbox
        whose USS was never read gets it read now, whatever its turn."""
        return self._tick(first_uss=True)

    def op_stats(self) -> dict[str, Any]:
        cpu, wall = list(self._tick_cpu), list(self._tick_wall)
        return {
            "ticks": self._ticks,
            "sandboxes": len(self.watches),
            "interval": self.interval,
            "tick_cpu_mean": sum(cpu) / len(cpu) if cpu else 0.0,
            "tick_wall_mean": sum(wall) / len(wall) if wall else 0.0,
            "tick_cpu": cpu,
        }

    def op_set_interval(self, seconds: float) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
            from runtime.errors import ConfigError

            raise ConfigError("interval", seconds, "a number of seconds > 0")
        self.interval = float(seconds)

    def op_run_overrun(self, sandbox_id: str, seconds: float) -> str:
        w = self.watches.get(sandbox_id)
        if w is None:
            return "none"
        limit = w.limits.run_seconds
        return self._exceeded(w, "run_seconds", seconds, limit, force=True)

    def op_call_overrun(self, sandbox_id: str, seconds: float, proc: Any = None) -> str:
        """A call's handler went past ``call_seconds``: take the limit's action
        (kill and restart, or terminate) unless the process is already another one."""
        w = self.watches.get(sandbox_id)
        if w is None or (proc is not None and w.slot.current() is not proc):
            return "none"
        return self._exceeded(w, "call_seconds", seconds, w.limits.call_seconds, force=True)

    def op_watch_call(self, sandbox_id: str, proc: Any, reply: Any, started: float) -> None:
        """Keep an eye on a call its caller stopped waiting for: if ``reply`` is
        still unanswered ``call_seconds`` after ``started`` (and ``proc`` still
        serves), the handler is over its deadline (checked every tick)."""
        w = self.watches.get(sandbox_id)
        if w is not None and w.limits.call_seconds is not None:
            with self._lock:
                w.calls.append((proc, reply, started))

    # -- messages --------------------------------------------------------------------
    def on_info(self, message: Any) -> None:
        if isinstance(message, _WatchCall):
            self.op_watch_call(message.sandbox_id, message.proc, message.reply, message.started)
        elif isinstance(message, _Exit):
            w = self.watches.get(message.sandbox_id)
            if w is None:
                return
            sig = next((s for s in _SIGNAL_LIMITS if s in message.reason), None)
            if sig is not None:
                key = _SIGNAL_LIMITS[sig]
                value = getattr(w.limits, key, None)
                self._event(w, key, value, value, "killed", f"the kernel sent {sig}")
                self._audit(w, "limit.exceeded", f"{key}: process {message.reason}", "limit",
                            "killed")
                telemetry.execute(
                    "limit.exceeded",
                    {"value": value or 0, "limit": value or 0},
                    self._md(w, key, "killed"),
                )
            else:
                self._audit(w, "sandbox.crash", message.reason[:500], "exit", "logged")
        elif isinstance(message, _Reported):
            w = self.watches.get(message.sandbox_id)
            if w is not None:
                self._audit(w, "limit.reported", f"the sandbox reported {message.error}",
                            "limit", "logged")

    # -- sampling ----------------------------------------------------------------------
    def _loop(self) -> None:
        # A killed monitor runs no on_exit: the sampler also ends when its actor has.
        while not self._halt.wait(self.interval) and self._exit_reason is None:
            try:
                self._tick()
            except Exception:  # the sampler must outlive any one bad read
                log.exception("resource sampling failed")

    def _tick(self, first_uss: bool = False) -> int:
        with self._tick_lock:
            return self._tick_locked(first_uss)

    def _tick_locked(self, first_uss: bool) -> int:
        t_cpu, t_wall = time.thread_time(), time.perf_counter()
        with self._lock:
            watches = list(self.watches.values())
        self._ticks += 1
        n = 0
        try:
            for w in watches:
                if w.calls:
                    self._overdue(w)
                # USS reads every mapping: each sandbox's turn comes every uss_every
                # ticks, the turns spread so every tick costs about the same. A new
                # process waits for its turn too (unless asked by sample_now): its
                # first read is the dearest (~0.4 ms of kernel time, against ~40 us
                # for the rest of a sample), and a burst of creates would pay them
                # all in one tick.
                with_uss = ((first_uss and w.uss is None)
                            or (self._ticks + w.phase) % self.uss_every == 0)
                try:
                    sample = self._sample(w, with_uss)
                except Exception:
                    log.exception("sampling sandbox %s failed", w.sandbox_id)
                    continue
                if sample is None:
                    continue
                n += 1
                with self._lock:
                    w.latest = sample
                    w.history.append(sample)
                self._check(w, sample)
                self._cpu_budget(w, sample)
        finally:
            # Files of processes gone, or of sandboxes no longer watched, are closed.
            self._files.keep_only({p for w in watches for p in w.procs})
        self._tick_cpu.append(time.thread_time() - t_cpu)
        self._tick_wall.append(time.perf_counter() - t_wall)
        return n

    def _tree(self, w: _Watch, root: int) -> list[int]:
        state = w.state
        if state.get("cgroups"):
            pids = isolation.sandbox_pids(state)
            if pids is not None:
                return pids
        try:  # most sandboxes are one process: one read says so
            if not self._files.read(root, f"task/{root}/children").strip():
                return [root]
        except OSError:
            return [root]
        out, todo = [], [root]
        while todo:
            pid = todo.pop()
            out.append(pid)
            try:
                todo.extend(int(x) for x in self._files.read(pid, f"task/{pid}/children").split())
            except (OSError, ValueError):
                pass
            if len(out) > 100_000:
                break
        return out

    def _read_uss(self, w: _Watch, procs: dict[int, psutil.Process | None], rss: int) -> None:
        """USS of the tree, on its turn: smaps_rollup walks every mapping, the dearest
        read of a tick, so it is skipped while the tree's RSS has not moved since the
        last read (an idle sandbox), up to :data:`USS_TURNS_KEPT` turns in a row
        (pages it shared can become its own as other processes exit)."""
        if w.uss is not None and rss == w.uss_rss and w.uss_kept < USS_TURNS_KEPT:
            w.uss_kept += 1
            return
        total = 0
        for p_id, p in procs.items():
            try:
                if _FAST:
                    total += _uss(p_id)
                else:
                    assert p is not None
                    total += p.memory_full_info().uss
            except (psutil.Error, OSError):
                pass  # gone since its stat was read
        w.uss, w.uss_rss, w.uss_kept = total, rss, 0

    def _sample(self, w: _Watch, with_uss: bool) -> dict[str, Any] | None:
        proc = w.slot.current()
        pid = proc.pid if proc is not None else None
        now = time.time()
        if pid is None:
            w.latest = None
            return None
        if pid != w.pid:  # a new process: start afresh
            w.pid, w.procs, w.cpu_prev, w.last_t, w.fds = pid, {}, {}, 0.0, {}
            w.cpu_ref, w.cpu_last = None, None
            w.warned.clear()
            w.acted = False
            w.uss = None
            with self._lock:
                w.history.clear()
        pids = self._tree(w, pid)
        lim = w.limits.open_files
        rss = threads = fds = 0
        fds_max = 0
        cpu_delta = 0.0
        seen: dict[int, psutil.Process | None] = {}
        cpu_now: dict[int, float] = {}
        for p_id in pids:
            p = w.procs.get(p_id)
            try:
                fast = _parse_stat(self._files.read(p_id, "stat")) if _FAST else None
            except OSError:
                fast = None
            if fast is None and p is None:
                try:
                    p = psutil.Process(p_id)
                except psutil.Error:
                    continue
            try:
                if fast is not None:  # one read of /proc/<pid>/stat, one listing of fd/
                    total, rss_b, nth = fast
                    # Listing fd/ costs as much as the rest: every 5th tick, or every
                    # tick once a process holds half its limit or more.
                    last = w.fds.get(p_id)
                    if last is None or (self._ticks + w.phase) % 5 == 0 or (
                        lim is not None and last * 2 >= lim
                    ):
                        last = w.fds[p_id] = len(os.listdir(f"/proc/{p_id}/fd"))
                    nfd = last
                else:
                    assert p is not None
                    with p.oneshot():
                        ct = p.cpu_times()
                        rss_b = p.memory_info().rss
                        nth = p.num_threads()
                        nfd = p.num_fds()
                    total = ct.user + ct.system
            except (psutil.Error, OSError):
                continue
            seen[p_id] = p
            cpu_now[p_id] = total
            prev = w.cpu_prev.get(p_id)
            if prev is not None:
                cpu_delta += max(0.0, total - prev)
            elif w.last_t:
                cpu_delta += total if p_id != pid else 0.0
            rss += rss_b
            threads += nth
            fds += nfd
            fds_max = max(fds_max, nfd)
        if with_uss and seen:
            self._read_uss(w, seen, rss)
        elapsed = now - w.last_t if w.last_t else 0.0
        cpu_percent = (cpu_delta / elapsed * 100.0) if elapsed > 0 else 0.0
        w.procs, w.cpu_prev, w.last_t = seen, cpu_now, now
        if len(w.fds) > len(seen):
            w.fds = {k: v for k, v in w.fds.items() if k in seen}
        helpers = 0
        if len(seen) > 1:
            # The runtime's own helpers in the tree (slirp4netns and the egress
            # refresher, runtime/child/egress.py) stay in the host's network
            # namespace; no process of the sandbox's code can leave the sandbox's
            # (unshare, setns and new namespaces are denied by seccomp everywhere).
            own = _netns(pid)
            if own is not None:
                helpers = sum(1 for p_id in seen if p_id != pid and _netns(p_id) not in (own, None))
        started = getattr(w.slot, "started_at", None)
        return {
            "ts": now,
            "pid": pid,
            "cpu_seconds": cpu_now.get(pid),
            "rss": rss,
            "rss_mb": rss / _MIB,
            "uss": w.uss,
            "cpu_percent": round(cpu_percent, 2),
            "threads": threads,
            "processes": len(seen) - helpers,
            "fds": fds,
            "fds_max": fds_max,
            "uptime": now - started if started else 0.0,
        }

    # -- limits ------------------------------------------------------------------------
    def _check(self, w: _Watch, s: dict[str, Any]) -> None:
        if w.acted:
            return
        lim = w.limits
        warn_at = w.warn_at if w.warn_at is not None else self.warn_at
        checks: list[tuple[str, float, float | None, bool]] = [
            ("memory_mb", s["rss"] / _MIB, lim.memory_mb, False),
            ("processes", s["processes"], lim.processes, False),
            ("open_files", s["fds_max"], lim.open_files, True),
        ]
        if lim.cpu_percent is not None:
            window = lim.cpu_window or 5
            with self._lock:
                recent = [h for h in w.history if h["ts"] >= s["ts"] - window]
            span = recent[-1]["ts"] - recent[0]["ts"] if len(recent) > 1 else 0.0
            if span >= window * 0.8 - self.interval:
                mean = sum(h["cpu_percent"] for h in recent[1:]) / max(1, len(recent) - 1)
                checks.append(("cpu_percent", mean, lim.cpu_percent, False))
        for key, value, limit, inclusive in checks:
            if limit is None:
                continue
            over = value >= limit if inclusive else value > limit
            if over:
                self._exceeded(w, key, value, limit)
                return
            floor = 1 if key == "processes" else 0
            if value > max(limit * warn_at, floor):
                if key not in w.warned:
                    w.warned.add(key)
                    self._event(w, key, value, limit, "warning", "")
                    telemetry.execute(
                        "limit.warning",
                        {"value": value, "limit": limit, "warn_at": warn_at},
                        self._md(w, key, "warning"),
                    )
            else:
                w.warned.discard(key)

    def _exceeded(
        self, w: _Watch, key: str, value: float, limit: float | None, force: bool = False
    ) -> str:
        if w.acted and not force:
            return "none"
        w.acted = True
        action = w.limits.action
        self._event(w, key, value, limit, action, "")
        telemetry.execute(
            "limit.exceeded", {"value": value, "limit": limit or 0}, self._md(w, key, action)
        )
        self._audit(
            w,
            "limit.exceeded",
            f"{key}: {_fmt(value)} over the limit {_fmt(limit)}",
            "limit",
            action,
        )
        if action == "terminate":
            from actors.containment import terminate

            if self._component is not None:
                terminate(self._component, w.slot, f"{key} limit reached ({_fmt(value)} > "
                          f"{_fmt(limit)})", kind="limit")
        else:
            proc = w.slot.current()
            if proc is not None:
                try:
                    proc.kill(ExitReason.killed(f"{key} limit reached; restarting"))
                except SandboxError:
                    pass
        return action

    def _cpu_budget(self, w: _Watch, s: dict[str, Any]) -> None:
        """Charge the process's CPU time to the busy stretch it belongs to; past
        ``cpu_seconds`` the stretch is over its budget (the sandbox's action).

        A stretch is one call (the oldest request awaiting its reply: the same
        one as at the last tick, or a new one, which starts a new stretch), or,
        with no call in flight, CPU used without a pause (more than
        :data:`IDLE_SHARE` of the wall time since the last tick: a cast, a timer or
        a thread spinning, however little of a loaded machine it gets). A process
        that is idle, or serves one cheap call after another, starts a new stretch
        at every tick and is never stopped, however much CPU it uses over its life.
        Read from ``/proc`` by the host: nothing the sandbox says or does to its
        own limits changes it. (The kernel cannot hold this budget: RLIMIT_CPU
        counts a process's whole life, and moving it from the host needs
        CAP_SYS_RESOURCE.)
        """
        budget = w.limits.cpu_seconds
        cpu, proc = s.get("cpu_seconds"), w.slot.current()
        if budget is None or cpu is None or proc is None:
            return
        oldest = proc.oldest_request()
        last, w.cpu_last = w.cpu_last, (cpu, s["ts"])
        if oldest is not None:
            if oldest != w.cpu_ref:
                w.cpu_ref, w.cpu_base = oldest, cpu
        else:
            busy = last is not None and cpu - last[0] > IDLE_SHARE * (s["ts"] - last[1])
            if w.cpu_ref is not None or not busy:
                w.cpu_ref, w.cpu_base = None, cpu
        if cpu - w.cpu_base > budget:
            self._exceeded(w, "cpu_seconds", cpu - w.cpu_base, budget)

    def _overdue(self, w: _Watch) -> None:
        limit = w.limits.call_seconds
        now = time.monotonic()
        current = w.slot.current()
        with self._lock:
            pending = [c for c in w.calls if c[0] is current and not c[1].wait(0)]
            late = [c for c in pending if limit is not None and now - c[2] >= limit]
            w.calls = [c for c in pending if c not in late]
        if late:
            self.op_call_overrun(w.sandbox_id, now - min(c[2] for c in late), current)

    def _event(
        self, w: _Watch, key: str, value: Any, limit: Any, action: str, note: str
    ) -> None:
        with self._lock:
            w.events.append(
                {"at": time.time(), "limit": key, "value": value, "max": limit,
                 "action": action, "note": note}
            )

    def _md(self, w: _Watch, key: str, action: str) -> dict[str, Any]:
        return {"sandbox": w.sandbox_id, "runtime": self.runtime_id, "limit": key,
                "action": action}

    def _audit(self, w: _Watch, event: str, detail: str, action: str, response: str) -> None:
        if self._component is None:
            return
        from actors.security import LogEvent

        try:
            self._component("security").tell(
                LogEvent(w.sandbox_id, event, detail, action, response)
            )
        except SandboxError:
            pass


_FAST = sys.platform.startswith("linux") and os.path.exists("/proc/self/stat")
_TICKS = os.sysconf("SC_CLK_TCK") if _FAST else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if _FAST else 4096


def _read(path: str) -> bytes:
    """A small /proc file in one read: os.open/os.read cost a third of open() (no
    buffered file object per read), and the monitor reads two per sandbox a tick."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, 65536)
        if len(data) >= 4000:  # procfs hands out about a page per read: get the rest
            chunks = [data]
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            data = b"".join(chunks)
        return data
    finally:
        os.close(fd)


def _uss(pid: int) -> int:
    """USS in bytes: the Private_* lines of /proc/<pid>/smaps_rollup (what psutil's
    ``memory_full_info().uss`` adds up, without its second read of statm); psutil
    where smaps_rollup cannot be read."""
    try:
        data = _read(f"/proc/{pid}/smaps_rollup")
    except OSError:
        return int(psutil.Process(pid).memory_full_info().uss)
    return sum(int(line.split()[1]) for line in data.splitlines()
               if line.startswith(b"Private_")) * 1024


def _parse_stat(data: bytes) -> tuple[float, int, int] | None:
    """(CPU seconds, RSS bytes, threads) from the content of /proc/<pid>/stat, the file
    psutil's ``oneshot()`` reads for the same figures; None if it cannot be parsed."""
    try:
        fields = data[data.rindex(b")") + 2 :].split()
        # fields[0] is field 3 (state): utime 14, stime 15, num_threads 20, rss 24
        cpu = (int(fields[11]) + int(fields[12])) / _TICKS
        return cpu, int(fields[21]) * _PAGE, int(fields[17])
    except (ValueError, IndexError):
        return None


def _netns(pid: int) -> int | None:
    """The inode of the process's network namespace (None if it cannot be read)."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _fmt(v: Any) -> str:
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def _trends(hist: list[dict[str, Any]]) -> dict[str, Any]:
    if not hist:
        return {}
    now = hist[-1]["ts"]
    out: dict[str, Any] = {}
    for win in TREND_WINDOWS:
        sel = [h for h in hist if h["ts"] >= now - win]
        if not sel:
            continue
        t: dict[str, Any] = {"samples": len(sel)}
        for key in ("rss_mb", "cpu_percent", "threads", "processes", "fds"):
            vals = [h[key] for h in sel]
            t[key] = {"min": min(vals), "mean": sum(vals) / len(vals), "max": max(vals)}
        out[f"{win}s"] = t
    return out


def call_with_deadline(
    sandbox: Any, proc: Any, limit: float, actor: str, request: Any, timeout: float | None
) -> Any:
    """``proc.call(actor, request)`` under the sandbox's handler deadline ``limit``
    (``call_seconds``).

    A handler still running ``limit`` seconds after the call was sent is over its
    deadline: the monitor takes the sandbox's action (the process is killed and
    its supervisor restarts it, or it is terminated) and the caller, if it is
    still waiting, gets :class:`ResourceLimitExceeded` naming ``call_seconds``. A
    caller whose own ``timeout`` is shorter gets ``CallTimeout`` as usual, and the
    monitor keeps watching the call for the rest of the deadline, so no handler
    outlives it unnoticed. A process that dies of its CPU budget (SIGXCPU) during
    the call is reported as :class:`ResourceLimitExceeded` naming ``cpu_seconds``.
    ``sandbox.aio`` awaits calls the same way, through :func:`deadline_wait`,
    :func:`deadline_passed`, :func:`watch_call` and :func:`raise_if_cpu_budget`.
    """
    reply = Reply()
    started = time.monotonic()
    wait = deadline_wait(limit, timeout)
    call_wait = getattr(proc, "call_wait", None)
    if call_wait is not None:  # the caller reads its own answer: no thread hand-off
        done = call_wait(actor, request, reply, wait)
    else:
        proc.call_into((actor, request), reply)
        done = reply.wait(wait)
    if done:
        try:
            return reply.result()
        except ActorDead:
            raise_if_cpu_budget(sandbox, proc, time.time() - (time.monotonic() - started))
            raise
    deadline_passed(sandbox, proc, reply, limit, wait, started, actor, timeout)


def deadline_wait(limit: float, timeout: float | None) -> float:
    """How long a caller waits for a call under the handler deadline ``limit``:
    its own ``timeout``, but never past the deadline.

    >>> deadline_wait(30, 5.0), deadline_wait(2, 60), deadline_wait(2, None)
    (5.0, 2, 2)
    """
    return limit if timeout is None else min(float(timeout), limit)


def deadline_passed(
    sandbox: Any, proc: Any, reply: Any, limit: float, wait: float, started: float,
    actor: str, timeout: float | None,
) -> NoReturn:
    """A call under the deadline ``limit`` got no answer within ``wait`` seconds of
    ``started`` (time.monotonic()): raise what the caller gets.

    Before the deadline (the caller's own ``timeout`` was shorter) the call stays
    pending and the monitor watches ``reply`` (a :class:`~runtime.actor.Reply`, or
    anything whose ``wait(0)`` says the answer is in) for the rest of the deadline:
    ``CallTimeout``. At the deadline the monitor takes the limit's action (blocks
    for one call to the monitor): ``ResourceLimitExceeded``.
    """
    if wait < limit:
        watch_call(sandbox, proc, reply, started)
        raise CallTimeout(f"{sandbox.id}/{actor}", timeout)
    try:
        action = sandbox.runtime.component("monitor").invoke(
            "call_overrun", sandbox.id, time.monotonic() - started, proc)
    except SandboxError:
        action = "unknown"
    raise ResourceLimitExceeded(
        f"sandbox {sandbox.id!r}: the handler of a call to {actor!r} ran longer than its "
        f"deadline of {limit:g}s (call_seconds); action taken: {action}"
    )


def watch_call(sandbox: Any, proc: Any, reply: Any, started: float) -> None:
    """Have the monitor watch a call nobody waits for any more (its caller timed out
    or was cancelled) for the rest of its handler deadline; never blocks.
    ``reply``'s ``wait(0)`` says whether the answer is in."""
    try:
        sandbox.runtime.component("monitor").tell(_WatchCall(sandbox.id, proc, reply, started))
    except SandboxError:
        pass


def raise_if_cpu_budget(sandbox: Any, proc: Any, since: float) -> None:
    """The call's process died: ResourceLimitExceeded if it was for its CPU budget
    (the monitor's own record of acting on ``cpu_seconds`` since the call began,
    or the kernel's SIGXCPU)."""
    import signal

    code = None if proc is None else proc.exitcode
    if code is None and proc is not None:
        proc.join(1.0)
        code = proc.exitcode
    try:
        usage = sandbox.runtime.component("monitor").invoke("usage", sandbox.id) or {}
    except SandboxError:
        usage = {}
    acted = [e for e in usage.get("limit_events") or ()
             if e.get("limit") == "cpu_seconds" and e.get("at", 0) >= since]
    if acted or code == -signal.SIGXCPU:
        budget = (usage.get("limits") or {}).get("cpu_seconds")
        by = f"action taken: {acted[-1]['action']}" if acted else "stopped by the kernel (SIGXCPU)"
        raise ResourceLimitExceeded(
            f"sandbox {sandbox.id!r} used up its per-call CPU budget of {budget}s "
            f"(cpu_seconds) during the call; {by}"
        ) from None


def run_with_limit(sandbox: Any, do: Callable[[float | None], Any], timeout: float | None) -> Any:
    """Run ``do(timeout)`` (a ``run`` call) under the sandbox's ``run_seconds`` limit.

    Past the limit the monitor takes the sandbox's action (restart or terminate:
    the run stops with the process) and :class:`ResourceLimitExceeded` is raised.
    """
    from runtime.errors import CallTimeout

    try:
        slot = sandbox._slot or sandbox.runtime._slot(sandbox.id)
    except SandboxError:
        slot = None
    prot = getattr(slot, "security", None)
    limit = prot.limits.run_seconds if prot is not None else None
    since = time.time()
    try:
        if limit is None or (timeout is not None and timeout <= limit):
            return do(timeout)
        return do(float(limit))
    except ActorDead:
        raise_if_cpu_budget(sandbox, None, since)
        raise
    except CallTimeout:
        if limit is None or (timeout is not None and timeout <= limit):
            raise
        try:
            action = sandbox.runtime.component("monitor").invoke(
                "run_overrun", sandbox.id, float(limit)
            )
        except SandboxError:
            action = "unknown"
        raise ResourceLimitExceeded(
            f"sandbox {sandbox.id!r}: run() took longer than its limit of {limit}s "
            f"(run_seconds); action taken: {action}"
        ) from None

