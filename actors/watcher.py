"""The watcher actor: file events in, one hot reload per batch of saves out.

One watchdog observer for the whole runtime (inotify on Linux), one recursive
watch per watched sandbox directory. The path from a save to a reload:

1. **observer thread** (watchdog): each event is filtered
   (:class:`~actors.watchfilter.WatchFilter`: the sandbox's patterns, no
   ``__pycache__``, ``.git``, editor swap and backup files, compile cache) and
   added to the sandbox's pending batch in the
   :class:`~actors.debounce.Debouncer`. Only close-after-write
   (``IN_CLOSE_WRITE``), create, delete and move events count; a modify event does
   not (a read right after it can see half a file). An atomic save (write a
   temporary file, rename it over the original) arrives as a move whose
   destination is the source.
2. **timer thread** (one for all sandboxes): when a batch has been quiet for the
   sandbox's debounce time (default 20 ms), it is posted to the actor.
3. **watcher actor thread**: the batch's files are hashed (sha256); a save that
   did not change the content is dropped (``watcher.unchanged``). The rest is
   one ``watcher.change`` and one reload job.
   Meanwhile, at the first complete save of a batch, ``prepare(sandbox, files)``
   (the runtime's: compile those files into the sandbox's compile cache) runs in
   a worker thread, so the reload that follows finds them compiled.
4. **reload worker thread** (per sandbox, while it has work): ``reload(sandbox,
   files)`` (the runtime's ``hot_reload(rt, id, changed_files=files)``), retried
   with exponential backoff for transient failures (a file read mid-write), never
   for compile errors or failed swaps. Reloads of one sandbox are serialised: a
   batch arriving during a reload becomes ONE follow-up reload.

A failed reload leaves the old code serving; it is reported as the
``watcher.reload.failed`` event and a log line with each ``file:line:col``
diagnostic, and the failed files' hashes are forgotten so the next save of any
of them reloads again.

When inotify is unavailable, or its watch limit is reached for a directory, that
directory is watched by watchdog's ``PollingObserver`` instead, with a log line
saying why and how to raise the limit.

The set of watched sandboxes lives in each sandbox's process slot (``slot.watch``,
beside its configuration in the ``sandboxes`` supervisor's child specs), not in
this actor: a watcher restarted after a crash rebuilds every watch from there.

Telemetry (metadata always has ``runtime`` and ``sandbox``): ``watcher.watch``,
``watcher.unwatch``, ``watcher.change`` (``files``), ``watcher.unchanged``,
``watcher.reload.start`` / ``.stop`` / ``.exception`` (a span),
``watcher.reload.retry``, ``watcher.reload.failed`` (``diagnostics``),
``watcher.fallback`` (polling instead of inotify), ``watcher.error``.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from actors.config import WatchOptions
from actors.debounce import CHANGED, CREATED, DELETED, Debouncer, DebounceTimer
from actors.reloadqueue import SerialRunner, is_transient, retry
from actors.watchfilter import FileHashes, TooManyFiles, WatchFilter, relative
from runtime import telemetry
from runtime.actor import Down, ExitReason, monitor
from runtime.component import Component
from runtime.errors import ActorDead, SandboxError, SandboxNotFound

__all__ = ["WatcherActor", "WatchError", "WatchSpec", "watch_specs"]

log = logging.getLogger("runtime.watcher")

#: A directory deleted or moved away: every known source under it is checked.
DIR_GONE = "dir-gone"
#: How long a just-created empty file may wait for its close-after-write.
CREATE_GRACE = 0.25
#: Seconds a reload worker waits for its sandbox's next batch before it ends.
WORKER_LINGER = 60.0
#: No compile ahead of the reload below this debounce: it would only compete with it.
PREPARE_MIN_DEBOUNCE = 0.01
BACKENDS = ("auto", "inotify", "polling")


class WatchError(SandboxError):
    """A sandbox's directory cannot be watched (too many files, no such directory...)."""


@dataclass(frozen=True)
class WatchSpec:
    """What to watch for one sandbox: its app directory, options, excluded directories."""

    sandbox: str
    path: str
    options: WatchOptions = field(default_factory=WatchOptions)
    exclude: tuple[str, ...] = ()


def watch_specs(sandboxes: Any, base_dir: str) -> list[WatchSpec]:
    """The sandboxes that should be watched, read from the ``sandboxes`` supervisor.

    Each sandbox's child spec carries its configuration and process slot (see
    ``actors/manager.py``); ``slot.watch`` holds the watch options while
    auto-reload is on.
    """
    specs = []
    for child in sandboxes.which_children():
        meta = child.spec.meta if child.spec is not None else {}
        config, slot = meta.get("config"), meta.get("slot")
        options = getattr(slot, "watch", None)
        if config is None or options is None:
            continue
        specs.append(WatchSpec(
            config.id, config.path, options,
            exclude=(meta.get("workdir", ""), cache_dir_of(base_dir, config.id)),
        ))
    return specs


def cache_dir_of(base_dir: str, sandbox_id: str) -> str:
    """The compile cache directory of a sandbox (as ``ManagerActor.cache_dir``)."""
    return os.path.join(base_dir, f"{sandbox_id}.cache")


def _diagnostic_lines(exc: BaseException) -> list[str]:
    """``file:line:col: message`` lines of a failed reload, or its message."""
    diags = getattr(exc, "diagnostics", None) or []
    lines = [str(d) for d in diags if getattr(d, "severity", "error") == "error"] or [
        str(d) for d in diags
    ]
    if not lines:
        text = str(exc).strip()
        module, step = getattr(exc, "module", None), getattr(exc, "step", None)
        where = f" (module {module}, step {step})" if module or step else ""
        lines = [f"{type(exc).__name__}: {text}{where}"]
    return lines


@dataclass(frozen=True)
class _Route:
    """Where the events of one watched root go (read by the observer thread)."""

    sandbox: str
    key: tuple[str, int]
    filter: WatchFilter
    polling: bool
    delay: float


@dataclass
class _Watch:
    spec: WatchSpec
    key: tuple[str, int]
    root: str
    filter: WatchFilter
    hashes: FileHashes
    backend: str
    since: float = field(default_factory=time.time)
    held: dict[str, float] = field(default_factory=dict)
    changes: int = 0
    unchanged: int = 0
    last_change: float | None = None
    reloads: int = 0
    failures: int = 0
    last_outcome: dict[str, Any] | None = None
    over_limit: bool = False


@dataclass(frozen=True)
class _Flush:
    key: tuple[str, int]
    items: dict[str, str]


@dataclass(frozen=True)
class _Gone:
    sandbox: str


@dataclass(frozen=True)
class _Outcome:
    key: tuple[str, int]
    files: tuple[str, ...]
    ok: bool
    summary: dict[str, Any]


class _Handler:
    """watchdog event handler of one watched root; runs in the observer's thread."""

    def __init__(self, watcher: WatcherActor, root: str) -> None:
        self.watcher = watcher
        self.root = root

    def dispatch(self, event: Any) -> None:
        self.watcher._on_fs_event(self.root, event)


def _default_observer(kind: str, poll_interval: float) -> Any:
    if kind == "inotify":
        from watchdog.observers.inotify import InotifyObserver

        # Full events: an unpaired IN_MOVED_TO (a file moved in from elsewhere) stays
        # a move, told apart from IN_CREATE (a file being written, not finished).
        return InotifyObserver(generate_full_events=True)
    from watchdog.observers.polling import PollingObserver

    return PollingObserver(timeout=poll_interval)


def _event_filter(polling: bool) -> list[type]:
    from watchdog.events import (
        DirCreatedEvent,
        DirDeletedEvent,
        DirMovedEvent,
        FileClosedEvent,
        FileCreatedEvent,
        FileDeletedEvent,
        FileModifiedEvent,
        FileMovedEvent,
    )

    # Asked of the kernel as the inotify mask: no IN_OPEN/IN_ACCESS/IN_MODIFY traffic
    # from the sandbox's own reads or a writer's every write() call.
    kinds: list[type] = [FileClosedEvent, FileCreatedEvent, FileDeletedEvent, FileMovedEvent,
                         DirCreatedEvent, DirDeletedEvent, DirMovedEvent]
    if polling:
        kinds.append(FileModifiedEvent)  # polling has no close events
    return kinds


class WatcherActor(Component):
    """Watches sandbox directories and reloads the sandboxes whose sources changed.

    Options: ``reload(sandbox_id, files)`` (what a batch of changes runs; the
    runtime passes its ``hot_reload``), ``sandboxes()`` (the :class:`WatchSpec` of
    every sandbox to watch, read at start, so a restarted watcher re-establishes
    every watch), ``prepare(sandbox_id, files)`` (optional work worth starting at
    the first save of a batch, during the debounce: the runtime compiles the
    files into the compile cache), ``backend`` (``auto``: inotify, polling where it is unavailable
    or out of watches; ``inotify``; ``polling``), ``poll_interval`` (seconds),
    ``retry_attempts`` and ``retry_base`` (backoff of transient failures),
    ``create_grace`` (how long a new empty file waits for its writer's close),
    ``observer_factory(kind, poll_interval)`` (tests).

    Operations (``ref.invoke(name, ...)``):

    - ``watch(sandbox_id, path, *, options=None, exclude=())`` -> status dict;
      raises :class:`WatchError` (too many files, missing directory).
    - ``unwatch(sandbox_id)`` -> whether it was watched; ``unwatch_many(ids)`` -> the same
      for each (a batch destroy's, in one turn).
    - ``status(sandbox_id=None)`` -> the watch of one sandbox (None if not
      watched), or of the watcher as a whole.
    - ``watched()`` -> the ids of the watched sandboxes.
    """

    def __init__(
        self,
        *,
        runtime_id: str = "",
        reload: Callable[[str, list[str]], Any] | None = None,
        sandboxes: Callable[[], Iterable[WatchSpec]] | None = None,
        prepare: Callable[[str, list[str]], Any] | None = None,
        backend: str = "auto",
        poll_interval: float = 1.0,
        retry_attempts: int = 4,
        retry_base: float = 0.02,
        create_grace: float = CREATE_GRACE,
        observer_factory: Callable[[str, float], Any] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name or "watcher")
        if backend not in BACKENDS:
            raise SandboxError(f"watch backend {backend!r} is not one of {', '.join(BACKENDS)}")
        self.runtime_id = runtime_id
        self._reload = reload
        self._sandboxes = sandboxes
        self._prepare = prepare
        self.backend = backend
        self.poll_interval = poll_interval
        self.retry_attempts = retry_attempts
        self.retry_base = retry_base
        self.create_grace = create_grace
        self._observer_factory = observer_factory or _default_observer
        self._watches: dict[str, _Watch] = {}
        # root -> routes; replaced whole (copy on write), read by the observer thread
        self._routes: dict[str, tuple[_Route, ...]] = {}
        # root -> (observer, ObservedWatch, polling?)
        self._scheduled: dict[str, tuple[Any, Any, bool]] = {}
        self._gen = 0
        self._observer: Any = None
        self._observer_kind = ""
        self._fallback: Any = None
        self._debouncer = Debouncer()
        self._timer: DebounceTimer | None = None
        self._runner = SerialRunner(self._reload_job, name=f"{self.name}:reload",
                                    linger=WORKER_LINGER)
        self._preparer = SerialRunner(self._prepare_job, name=f"{self.name}:prepare",
                                      linger=WORKER_LINGER)
        self._stopping = threading.Event()
        self._closed = False
        self._close_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------
    def on_init(self) -> None:
        me = self.ref
        monitor(me, self._on_own_down)  # cleans up however this actor ends, even killed
        self._observer, self._observer_kind = self._start_observer()
        self._timer = DebounceTimer(
            self._debouncer, self._post_flush, name=f"{self.name}:debounce",
            on_error=lambda exc: log.error("watcher timer callback failed: %s", exc, exc_info=exc),
        )
        self._timer.start()
        if self._sandboxes is not None:
            self._rebuild()

    def _rebuild(self) -> None:
        """Watch every sandbox whose slot says so (and only those).

        Two passes: the manager, which tells the watcher about each sandbox it
        creates or destroys, skips a watcher that is restarting, so a sandbox
        created or destroyed while the first pass hashed files is caught by the
        second; after that the new watcher is registered within microseconds.
        """
        errors: dict[str, str] = {}
        for _pass in range(2):
            try:
                specs = list(self._sandboxes())  # type: ignore[misc]
            except SandboxError as exc:
                log.error("watcher could not list the sandboxes to watch: %s", exc)
                return
            wanted = {spec.sandbox for spec in specs}
            for sid in [s for s in self._watches if s not in wanted]:
                self.op_unwatch(sid)
            for spec in specs:
                try:
                    self.op_watch(spec.sandbox, spec.path, options=spec.options,
                                  exclude=spec.exclude)
                except SandboxError as exc:
                    errors[spec.sandbox] = str(exc)
        for sid, reason in errors.items():
            log.error("watcher could not re-establish the watch of sandbox %r: %s", sid, reason)
            self._event("watcher.error", sid, {"count": 1}, {"reason": reason})
        if self._watches:
            log.info("watcher watching %d sandbox(es): %s", len(self._watches),
                     ", ".join(sorted(self._watches)))

    def on_exit(self, reason: ExitReason) -> None:
        self._close(wait=5.0)

    def _on_own_down(self, down: Down) -> None:
        self._close(wait=0.0)

    def _close(self, wait: float) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._stopping.set()
        self._preparer.close(timeout=0.0)
        self._runner.close(timeout=wait)
        if self._timer is not None:
            self._timer.stop()
        for obs in (self._observer, self._fallback):
            if obs is None:
                continue
            try:
                obs.stop()
                obs.join(5.0)
            except Exception as exc:  # a broken observer must not stop the cleanup
                log.warning("watcher: stopping the file observer failed: %s", exc)

    def _start_observer(self) -> tuple[Any, str]:
        if self.backend in ("auto", "inotify"):
            try:
                obs = self._observer_factory("inotify", self.poll_interval)
                obs.start()
                return obs, "inotify"
            except Exception as exc:  # ImportError off Linux, OSError (EMFILE), ...
                if self.backend == "inotify":
                    raise WatchError(f"inotify is unavailable: {exc}") from exc
                log.warning(
                    "file watching: inotify is unavailable (%s); watching by polling every %.1f s "
                    "instead, which notices saves later and costs CPU on big trees", exc,
                    self.poll_interval,
                )
                self._event("watcher.fallback", "", {"count": 1}, {"reason": str(exc), "path": ""})
        obs = self._observer_factory("polling", self.poll_interval)
        obs.start()
        return obs, "polling"

    def _polling_observer(self) -> Any:
        if self._observer_kind == "polling":
            return self._observer
        if self._fallback is None:
            self._fallback = self._observer_factory("polling", self.poll_interval)
            self._fallback.start()
        return self._fallback

    # -- operations ------------------------------------------------------------------
    def op_watch(
        self,
        sandbox_id: str,
        path: str | os.PathLike[str],
        *,
        options: WatchOptions | dict[str, Any] | None = None,
        exclude: Iterable[str | os.PathLike[str]] = (),
    ) -> dict[str, Any]:
        opts = WatchOptions.build(options)
        root = os.path.abspath(os.fspath(path))
        spec = WatchSpec(sandbox_id, root, opts, tuple(os.fspath(e) for e in exclude if e))
        current = self._watches.get(sandbox_id)
        if current is not None:
            if current.spec == spec:
                return self._status(current)
            self.op_unwatch(sandbox_id)
        if not os.path.isdir(root):
            raise WatchError(f"cannot watch sandbox {sandbox_id!r}: {root} is not a directory")
        filt = WatchFilter(root, patterns=opts.patterns, ignore=opts.ignore, exclude=spec.exclude)
        try:
            files = filt.scan(limit=opts.max_files)
        except OSError as exc:
            raise WatchError(f"cannot watch sandbox {sandbox_id!r}: {root}: {exc}") from None
        except TooManyFiles:
            raise WatchError(
                f"cannot watch sandbox {sandbox_id!r}: {root} has more than {opts.max_files} files "
                f"matching {', '.join(opts.patterns)} (max_files={opts.max_files}); raise the cap "
                "with watch={'max_files': N} or narrow watch 'patterns' / 'ignore'"
            ) from None
        hashes = FileHashes()
        hashes.add_baseline(files)
        self._gen += 1
        key = (sandbox_id, self._gen)
        polling = self._schedule(root, sandbox_id)
        watch = _Watch(spec, key, root, filt, hashes, "polling" if polling else "inotify")
        self._watches[sandbox_id] = watch
        route = _Route(sandbox_id, key, filt, polling, opts.debounce)
        self._routes = {**self._routes, root: self._routes.get(root, ()) + (route,)}
        self._event("watcher.watch", sandbox_id, {"files": len(hashes)},
                    {"path": root, "backend": watch.backend})
        log.info("watching %s for sandbox %r (%d files, %s)", root, sandbox_id, len(hashes),
                 watch.backend)
        return self._status(watch)

    def op_unwatch_many(self, sandbox_ids: list[str]) -> list[bool]:
        """:meth:`op_unwatch` of each sandbox (a batch destroy: one turn for all)."""
        return [self.op_unwatch(sid) for sid in sandbox_ids]

    def op_unwatch(self, sandbox_id: str) -> bool:
        watch = self._watches.pop(sandbox_id, None)
        if watch is None:
            return False
        routes = tuple(r for r in self._routes.get(watch.root, ()) if r.sandbox != sandbox_id)
        new = dict(self._routes)
        if routes:
            new[watch.root] = routes
        else:
            new.pop(watch.root, None)
        self._routes = new
        if not routes:
            self._unschedule(watch.root)
        self._debouncer.discard(watch.key)
        self._runner.cancel(sandbox_id)
        self._event("watcher.unwatch", sandbox_id, {"count": 1}, {"path": watch.root})
        return True

    def op_status(self, sandbox_id: str | None = None) -> dict[str, Any] | None:
        if sandbox_id is not None:
            watch = self._watches.get(sandbox_id)
            return self._status(watch) if watch is not None else None
        return {
            "backend": self._observer_kind,
            "polling_fallback": sorted(r for r, (_o, _w, p) in self._scheduled.items() if p),
            "watched": sorted(self._watches),
            "pending": len(self._debouncer),
            "reloads": self._runner.stats(),
        }

    def op_watched(self) -> list[str]:
        return sorted(self._watches)

    def _status(self, watch: _Watch) -> dict[str, Any]:
        sid = watch.spec.sandbox
        return {
            "sandbox": sid,
            "watching": True,
            "path": watch.root,
            "backend": watch.backend,
            "files": len(watch.hashes),
            "patterns": list(watch.spec.options.patterns),
            "debounce": watch.spec.options.debounce,
            "max_files": watch.spec.options.max_files,
            "since": watch.since,
            "changes": watch.changes,
            "unchanged": watch.unchanged,
            "last_change": watch.last_change,
            "reloads": watch.reloads,
            "failures": watch.failures,
            "reloading": self._runner.busy(sid),
            "follow_up": self._runner.follow_up(sid),
            "pending": self._debouncer.pending(watch.key),
            "held": sorted(watch.held),  # created, empty, waiting for their writer to close
            "last_outcome": watch.last_outcome,
        }

    # -- scheduling watches ----------------------------------------------------------
    def _schedule(self, root: str, sandbox_id: str) -> bool:
        """Watch ``root`` (once, however many sandboxes share it); returns True if polled."""
        if root in self._scheduled:
            return self._scheduled[root][2]
        handler = _Handler(self, root)
        if self._observer_kind == "inotify":
            dirs = _count_dirs(root)  # before: a directory made meanwhile is no false alarm
            try:
                watch = self._observer.schedule(handler, root, recursive=True,
                                                event_filter=_event_filter(False))
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EMFILE):
                    raise WatchError(f"cannot watch sandbox {sandbox_id!r}: {root}: {exc}") from exc
                self._fall_back(root, sandbox_id, str(exc))
            else:
                missing = self._unwatched_dirs(watch, dirs)
                if not missing:
                    self._scheduled[root] = (self._observer, watch, False)
                    return False
                self._observer.unschedule(watch)
                self._fall_back(
                    root, sandbox_id,
                    f"inotify watch limit reached ({missing} directories left unwatched)",
                )
        observer = self._polling_observer()
        try:
            watch = observer.schedule(handler, root, recursive=True,
                                      event_filter=_event_filter(True))
        except OSError as exc:
            raise WatchError(f"cannot watch sandbox {sandbox_id!r}: {root}: {exc}") from exc
        self._scheduled[root] = (observer, watch, True)
        return True

    def _unwatched_dirs(self, watch: Any, dirs: int) -> int:
        """How many of the ``dirs`` directories of a new inotify watch got no inotify
        watch (best effort, from watchdog's internals; 0 if they are not there).

        watchdog raises when the root cannot be watched but skips subdirectories
        that fail, such as when the watch limit runs out halfway down the tree.
        """
        try:
            emitter = self._observer._emitter_for_watch[watch]
            watched = len(emitter._inotify._active_callbacks_by_path)
        except (AttributeError, KeyError, TypeError):
            return 0
        return max(0, dirs - watched)

    def _fall_back(self, root: str, sandbox_id: str, reason: str) -> None:
        limit = ""
        try:
            with open("/proc/sys/fs/inotify/max_user_watches") as f:
                limit = f" (fs.inotify.max_user_watches = {f.read().strip()})"
        except OSError:
            pass
        log.warning(
            "file watching: %s for %s%s; watching it by polling every %.1f s instead. Raise the "
            "limit, e.g. sudo sysctl fs.inotify.max_user_watches=524288 (and max_user_instances), "
            "then enable auto-reload again", reason, root, limit, self.poll_interval,
        )
        self._event("watcher.fallback", sandbox_id, {"count": 1}, {"reason": reason, "path": root})

    def _unschedule(self, root: str) -> None:
        entry = self._scheduled.pop(root, None)
        if entry is None:
            return
        observer, watch, _polling = entry
        try:
            observer.unschedule(watch)
        except (KeyError, OSError) as exc:  # the emitter already stopped (root deleted)
            log.debug("unscheduling %s: %s", root, exc)

    # -- observer thread -------------------------------------------------------------
    def _on_fs_event(self, root: str, event: Any) -> None:
        """Filter one watchdog event and add it to the batches (observer thread)."""
        routes = self._routes.get(root)
        if not routes:
            return
        etype = event.event_type
        src = os.fsdecode(event.src_path) if event.src_path else ""
        dest = os.fsdecode(event.dest_path) if getattr(event, "dest_path", "") else ""
        poke = False
        for route in routes:
            changes: list[tuple[str, str]] = []
            if event.is_directory:
                # Known sources under a directory deleted or moved away are checked at
                # the flush; the files of one created or moved in arrive as their own
                # events (watchdog walks it).
                if etype in ("deleted", "moved") and src:
                    changes.append((src, DIR_GONE))
            elif etype == "closed":
                if route.filter.matches(src):
                    changes.append((src, CHANGED))
            elif etype == "created":
                if route.filter.matches(src):
                    changes.append((src, CHANGED if route.polling else CREATED))
            elif etype == "modified":
                if route.polling and route.filter.matches(src):
                    changes.append((src, CHANGED))
            elif etype == "deleted":
                if route.filter.matches(src):
                    changes.append((src, DELETED))
            elif etype == "moved":
                if src and route.filter.matches(src):
                    changes.append((src, DELETED))
                if dest and route.filter.matches(dest):
                    changes.append((dest, CHANGED))
            for path, kind in changes:
                if (kind == CHANGED and self._prepare is not None
                        and route.delay >= PREPARE_MIN_DEBOUNCE
                        and not self._debouncer.has(route.key)):
                    self._preparer.submit(route.sandbox, [path])  # first save of a batch
                poke |= self._debouncer.add(route.key, path, kind, delay=route.delay)
        if poke and self._timer is not None:
            self._timer.poke()

    # -- timer thread ----------------------------------------------------------------
    def _post_flush(self, key: Hashable, items: dict[str, str]) -> None:
        try:
            self.ref.tell(_Flush(key, items))  # type: ignore[arg-type]
        except ActorDead:
            pass

    # -- actor thread ----------------------------------------------------------------
    def on_info(self, message: Any) -> None:
        if isinstance(message, _Flush):
            self._flush(message)
        elif isinstance(message, _Outcome):
            self._record_outcome(message)
        elif isinstance(message, _Gone):
            if self.op_unwatch(message.sandbox):
                log.info("sandbox %r is gone: no longer watching it", message.sandbox)
        else:
            super().on_info(message)

    def _flush(self, message: _Flush) -> None:
        sid = message.key[0]
        watch = self._watches.get(sid)
        if watch is None or watch.key != message.key:
            return  # unwatched (or re-watched) since
        now = time.monotonic()
        candidates: list[str] = []
        for path, kind in message.items.items():
            if kind == DIR_GONE:
                candidates.extend(watch.hashes.under(path))
                continue
            if kind == CREATED and path not in watch.held and _empty_file(path):
                # Created, not yet closed after writing: its writer is most likely still
                # at it. Wait for the close (or CREATE_GRACE, for a file made by link()).
                watch.held[path] = now
                if self._debouncer.add(watch.key, path, CREATED, delay=self.create_grace):
                    self._timer.poke()  # type: ignore[union-attr]
                continue
            watch.held.pop(path, None)
            candidates.append(path)
        if not candidates:
            return
        changed = watch.hashes.changed(candidates)
        rel = relative(watch.root, changed or candidates)
        if not changed:
            watch.unchanged += 1
            self._event("watcher.unchanged", sid, {"files": len(candidates)}, {"files": rel})
            return
        over = len(watch.hashes) > watch.spec.options.max_files
        if over and not watch.over_limit:
            msg = (
                f"sandbox {sid!r}: {watch.root} now has {len(watch.hashes)} files to watch, over "
                f"max_files={watch.spec.options.max_files}; new files are still reloaded, but "
                "raise the cap with watch={'max_files': N} or narrow the patterns"
            )
            log.error(msg)
            self._event("watcher.error", sid, {"count": 1}, {"reason": msg})
        watch.over_limit = over
        watch.changes += 1
        watch.last_change = time.time()
        self._event("watcher.change", sid, {"files": len(changed)},
                    {"files": rel, "paths": changed})
        if self._reload is not None:
            self._runner.submit(sid, changed)

    def _record_outcome(self, message: _Outcome) -> None:
        watch = self._watches.get(message.key[0])
        if watch is None:
            return
        watch.last_outcome = message.summary
        if message.ok:
            watch.reloads += 1
        else:
            watch.failures += 1
            # The next save of any of these files reloads, even with the same bytes.
            watch.hashes.forget(message.files)

    # -- reload worker thread --------------------------------------------------------
    def _reload_job(self, sandbox_id: Hashable, files: list[str]) -> None:
        sid = str(sandbox_id)
        watch = self._watches.get(sid)
        if watch is None or self._stopping.is_set():
            return
        root = watch.root
        md = {"sandbox": sid, "runtime": self.runtime_id, "files": relative(root, files)}
        attempts = [0]

        def once() -> Any:
            attempts[0] += 1
            report = self._reload(sid, list(files))  # type: ignore[misc]
            if getattr(report, "ok", True) is False:
                raise SandboxError(getattr(report, "error", None) or f"reload of {sid!r} failed")
            return report

        def on_retry(attempt: int, delay: float, exc: BaseException) -> None:
            log.info("auto-reload of sandbox %r: transient failure (%s); retrying in %.0f ms",
                     sid, exc, delay * 1000)
            self._event("watcher.reload.retry", sid, {"attempt": attempt, "delay": delay},
                        {"reason": f"{type(exc).__name__}: {exc}"})

        try:
            with telemetry.span("watcher.reload", md) as extra:
                report = retry(once, attempts=self.retry_attempts, base=self.retry_base,
                               stop=self._stopping, on_retry=on_retry)
                summary = {
                    "ok": True,
                    "at": time.time(),
                    "modules": list(getattr(report, "modules", []) or []),
                    "changed": list(getattr(report, "changed", []) or []),
                    "versions": dict(getattr(report, "versions", {}) or {}),
                    "reload_seconds": getattr(report, "duration", None),
                    "attempts": attempts[0],
                    "files": md["files"],
                }
                extra.update(summary)
        except BaseException as exc:
            if self._stopping.is_set():
                return
            if isinstance(exc, SandboxNotFound):  # destroyed meanwhile: drop its watch
                self._tell(_Gone(sid))
                return  # shutting down, or the sandbox was destroyed meanwhile
            lines = _diagnostic_lines(exc)
            summary = {
                "ok": False,
                "at": time.time(),
                "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                "kind": type(exc).__name__,
                "diagnostics": lines,
                "transient": is_transient(exc),
                "attempts": attempts[0],
                "files": md["files"],
            }
            log.warning(
                "auto-reload of sandbox %r failed (%s); it keeps serving its previous code. "
                "Fix and save again:\n  %s", sid, type(exc).__name__, "\n  ".join(lines),
            )
            telemetry.execute("watcher.reload.failed", {"count": 1}, {**md, **summary})
            self._tell(_Outcome(watch.key, tuple(files), False, summary))
            if not isinstance(exc, Exception):
                raise
            return
        self._tell(_Outcome(watch.key, tuple(files), True, summary))

    def _prepare_job(self, sandbox_id: Hashable, files: list[str]) -> None:
        if self._stopping.is_set() or self._prepare is None:
            return
        try:
            self._prepare(str(sandbox_id), files)
        except Exception as exc:  # only a head start: the reload reports real problems
            log.debug("preparing %s for sandbox %r failed: %s", files, sandbox_id, exc)

    def _tell(self, message: Any) -> None:
        try:
            self.ref.tell(message)
        except ActorDead:
            pass

    def _event(self, event: str, sandbox_id: str, measurements: dict[str, Any],
               metadata: dict[str, Any]) -> None:
        telemetry.execute(event, measurements,
                          {"sandbox": sandbox_id, "runtime": self.runtime_id, **metadata})


def _count_dirs(root: str) -> int:
    """Directories under ``root`` (itself included) as watchdog watches them."""
    dirs = 0
    for dirpath, dirnames, _files in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        dirs += 1
    return dirs


def _empty_file(path: str) -> bool:
    try:
        return os.stat(path).st_size == 0
    except OSError:
        return False
