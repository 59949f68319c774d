"""Loading app code inside a sandbox, and swapping it atomically while actors run.

The host compiles every module (see ``actors/compiler.py``) and sends the code
objects; the sandbox never reads its app's source or ``__pycache__`` from disk.
:class:`AppFinder`, first on ``sys.meta_path``, serves the app's modules from
that code, so what runs is exactly what was compiled and scanned.

A hot reload (:func:`apply_reload`) is one transaction:

1. suspend: take the write side of the code barrier; every actor finishes the
   message it is handling and the next ones wait in their mailboxes;
2. stage: drop the reloaded modules from ``sys.modules`` and import them afresh, in
   reload order (a cycle is one unit), into new module objects: names deleted from
   the source do not linger, ``from m import f`` in a dependent sees the new ``f``,
   ``lru_cache`` and decorator wrappers are new;
3. copy each affected actor's state (a state of scalars and live objects with a
   shallow copy; any other by a pickle taken with ``sys.modules`` naming the
   previous modules for that moment, so instances of reloaded classes re-bind by
   qualified name to the new classes on restore; what cannot be pickled, such as
   generators, locks or lambdas, is carried by reference);
4. migrate: each copy goes through the new class's ``code_change(old_vsn, state,
   extra)`` (or the ``migrate`` function given); then checked against what the new
   class declares (``state_keys``, ``check_state``; see :mod:`runtime.child.statecheck`).
   A class that keeps the default ``code_change`` (the state as it is) is not called,
   and its actors' states are only checked against what it declares.
   Steps 3 and 4 run in one pass over the actors for the states a shallow copy
   serves, and need no copy at all for a state nothing will change. Each actor is
   switched to its new class, instance and state as soon as it is staged (every
   actor is held, so none runs with it before the commit), and what it had is kept:
   a failure anywhere puts every switched actor back as it was;
5. commit: the verdict (see below); past it the switches stand and the barrier is
   released. What the actors had is released when the swap returns, after the
   barrier: the held actors do not wait for 1,000 deallocations.

Any failure in 2 to 4 puts the previous modules back in ``sys.modules`` and leaves
every actor's code and state untouched, then raises
:class:`~runtime.errors.ReloadFailed` naming the step (``suspend``, ``unload``,
``stage``, ``resolve``, ``restore``, ``code_change``, ``migrate``, ``check_state``, ``commit``), the
module and the actor.

One truth with the host: a reload carries an id and a deadline. Just before the
commit, under one lock, the swap checks that the host has not cancelled it
(:func:`cancel_reload`, sent when the host's wait runs out) and that the deadline
has not passed, and records its verdict; past that point nothing can fail. So the
host either gets the report, or cancels and learns the verdict: ``committed``
(it records the new versions) or ``cancelled``/``failed`` (the old code and state
keep serving, and the swap, if still running, will not commit).
After the commit, :func:`upgrade_children` applies a changed child list.
"""

from __future__ import annotations

import collections
import functools
import gc
import hashlib
import importlib
import importlib.abc
import importlib.util
import io
import linecache
import logging
import marshal
import os
import pickle
import sys
import threading
import time
import traceback
import types
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from runtime.barrier import BARRIER
from runtime.child.guard import fresh_path_finders
from runtime.child.statecheck import check_state, declares_shape, shape_warnings
from runtime.childspec import ChildSpec
from runtime.errors import ReloadFailed

__all__ = [
    "AppFinder",
    "ModuleCode",
    "FINDER",
    "install_finder",
    "apply_reload",
    "cancel_reload",
    "failure_report",
    "live_servers",
    "reload_from_wire",
    "restore_states",
    "serving",
    "snapshot_states",
    "unload_module",
    "upgrade_children",
]

log = logging.getLogger("runtime.child.swap")


@dataclass(frozen=True)
class ModuleCode:
    """One compiled module as it crosses to the sandbox (plain data)."""

    name: str
    file: str
    code: bytes
    source: str = ""
    is_package: bool = False
    version: int = 0
    code_sha256: str = ""

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> ModuleCode:
        return cls(
            name=d["name"],
            file=d["file"],
            code=d["code"],
            source=d.get("source", ""),
            is_package=bool(d.get("is_package", False)),
            version=int(d.get("version", 0)),
            code_sha256=d.get("code_sha256", ""),
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "file": self.file,
            "code": self.code,
            "source": self.source,
            "is_package": self.is_package,
            "version": self.version,
            "code_sha256": self.code_sha256,
        }

    @classmethod
    def from_compiled(cls, m: Any, version: int = 0) -> ModuleCode:
        """From a host-side ``CompiledModule`` or ``ModuleVersion`` (duck-typed)."""
        source = m.source.decode("utf-8", "replace") if isinstance(m.source, bytes) else m.source
        return cls(
            name=m.name if hasattr(m, "name") else m.module,
            file=m.file,
            code=m.code,
            source=source or "",
            is_package=bool(m.is_package),
            version=version or getattr(m, "version", 0),
            code_sha256=m.code_sha256,
        )

    def code_object(self) -> types.CodeType:
        """Validate (checksum, type) and unmarshal: damaged code is refused, never run."""
        if self.code_sha256 and hashlib.sha256(self.code).hexdigest() != self.code_sha256:
            raise ImportError(f"compiled code of {self.name} ({self.file}) fails its checksum")
        try:
            code = marshal.loads(self.code)
        except (EOFError, ValueError, TypeError) as exc:
            raise ImportError(
                f"compiled code of {self.name} does not unmarshal ({exc}); it was compiled "
                "for another Python or damaged"
            ) from None
        if not isinstance(code, types.CodeType):
            raise ImportError(f"compiled artifact of {self.name} is not a code object")
        return code


class AppFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the app's modules from host-compiled code objects."""

    def __init__(self) -> None:
        self.modules: dict[str, ModuleCode] = {}
        #: Modules unloaded (:func:`unload_module`): importing one fails, rather than
        #: falling through to the unscanned file on disk.
        self.unloaded: set[str] = set()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        mc = self.modules.get(fullname)
        if mc is None:
            if fullname in self.unloaded:
                raise ModuleNotFoundError(
                    f"module {fullname!r} was unloaded from this sandbox; a reload or a "
                    "rollback loads it again", name=fullname)
            return None
        spec = importlib.util.spec_from_loader(
            fullname, self, origin=mc.file, is_package=mc.is_package
        )
        if spec is None:
            return None
        spec.has_location = True
        if mc.is_package:
            spec.submodule_search_locations = [os.path.dirname(mc.file)]
        return spec

    def create_module(self, spec: Any) -> None:
        return None  # the default module object

    def exec_module(self, module: types.ModuleType) -> None:
        mc = self.modules[module.__name__]
        code = mc.code_object()  # checked against code_sha256 when it has one
        module.__file__ = mc.file
        _remember_source(mc)
        _EXECUTED[module] = mc.code_sha256 or hashlib.sha256(mc.code).hexdigest()
        exec(code, module.__dict__)

    def get_source(self, fullname: str) -> str | None:
        mc = self.modules.get(fullname)
        return mc.source if mc is not None else None


#: The SHA-256 of the marshalled code each app module object was executed from.
_EXECUTED: weakref.WeakKeyDictionary[types.ModuleType, str] = weakref.WeakKeyDictionary()


def serving(names: Iterable[str]) -> dict[str, str | None]:
    """For each module name, the SHA-256 of the code of the module object that
    ``sys.modules`` holds now (None: not loaded, or not loaded by the app's finder).
    The host compares it with what it shipped after a reload (the ``installed`` of
    the ``reload`` op's report; the ``code_digests`` system op when no report came).

    >>> serving(["json"])
    {'json': None}
    """
    out: dict[str, str | None] = {}
    for name in list(names)[:10_000]:
        module = sys.modules.get(str(name))
        out[str(name)] = _EXECUTED.get(module) if module is not None else None
    return out


def _remember_source(mc: ModuleCode) -> None:
    """Tracebacks after a reload show the new source lines."""
    if mc.source:
        lines = mc.source.splitlines(keepends=True)
        linecache.cache[mc.file] = (len(mc.source), None, lines, mc.file)


FINDER = AppFinder()


def install_finder(modules: Iterable[ModuleCode]) -> None:
    """Put :data:`FINDER` first on ``sys.meta_path`` serving ``modules`` (at boot)."""
    for mc in modules:
        FINDER.modules[mc.name] = mc
    if FINDER not in sys.meta_path:
        sys.meta_path.insert(0, FINDER)
    fresh_path_finders()  # rather than invalidating each of the fork server's finders
    importlib.invalidate_caches()


def live_servers() -> list[Any]:
    """The GenServer actors alive in this process."""
    from runtime.genserver import SERVERS

    return [s for s in list(SERVERS) if s.impl is not None and _alive(s)]


def _alive(server: Any) -> bool:
    # ActorRef.is_alive without making a ref (this runs for every server of a reload)
    return server._exit_reason is None and not server.actor_stopped.is_set()


# -- carrying state over -----------------------------------------------------------------
#
# A state is copied by pickling it while sys.modules names the previous modules and
# unpickling it once the new ones are staged: instances of reloaded classes re-bind
# to the new classes by qualified name, and the copy code_change works on is not the
# object the old code still serves with, so a failed reload leaves every state
# exactly as it was. A state of scalars and live objects needs only a shallow copy.
# Objects that cannot or must not be copied (generators, lambdas, actor refs,
# threads, locks, events, queues, files, sockets, instances of classes that are no
# longer importable under their name) are carried over by reference, inside an
# otherwise copied state.

_KEEP_BY_REFERENCE: tuple[type, ...] = (
    types.GeneratorType,
    types.CoroutineType,
    types.AsyncGeneratorType,
    types.FrameType,
    types.TracebackType,
    types.CodeType,
)

#: Objects of classes from these modules stand for something live (an actor, a
#: thread, a queue, an event, a connection): copying one would make a second,
#: unconnected one, so they are carried by reference.
_LIVE_MODULES = frozenset({
    "runtime", "pykka", "threading", "_thread", "queue", "_queue", "asyncio",
    "concurrent", "multiprocessing", "_multiprocessing", "socket", "_socket", "ssl",
    "selectors", "select", "subprocess", "io", "_io", "weakref", "_weakref",
    "logging", "sqlite3", "_sqlite3",
})


def _is_live(cls: type) -> bool:
    return (cls.__module__ or "").partition(".")[0] in _LIVE_MODULES


def _importable(obj: Any) -> bool:
    """Whether ``obj`` (a function or class) is what its module and qualname name now."""
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    if module is None:
        return False
    try:
        return _resolve(module, obj.__qualname__) is obj
    except AttributeError:
        return False


class _StatePickler(pickle.Pickler):
    """Pickles what it can; the rest is kept by reference (``persistent_id``)."""

    def __init__(self, file: Any) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.kept: list[Any] = []
        self._decided: dict[type, bool] = {}  # class -> keep its instances by reference

    def persistent_id(self, obj: Any) -> Any:
        cls = type(obj)
        if cls in _ATOMIC or cls in _CONTAINERS:
            return None
        if cls is types.FunctionType:
            keep = not _importable(obj)  # lambdas, closures, local functions
        elif cls is types.ModuleType:
            return ("module", obj.__name__)  # re-bound to the module staged under that name
        else:
            decided = self._decided.get(cls)
            if decided is None:
                keep = issubclass(cls, _KEEP_BY_REFERENCE) or (
                    cls.__module__ != "builtins" and (_is_live(cls) or not _importable(cls))
                )
                self._decided[cls] = keep
            else:
                keep = decided
        if keep:
            self.kept.append(obj)
            return ("kept", len(self.kept) - 1)
        return None


_CONTAINERS: frozenset[type] = frozenset({list, dict, tuple, set, frozenset})


class _StateUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, kept: list[Any]) -> None:
        super().__init__(file)
        self.kept = kept

    def persistent_load(self, pid: Any) -> Any:
        kind, key = pid
        if kind == "module":
            return sys.modules[key]
        return self.kept[key]


@dataclass
class _Snapshot:
    """A state copied for the swap: ``data`` pickled, or ``value`` itself if it cannot be."""

    data: bytes | None = None
    kept: list[Any] | None = None
    value: Any = None
    problem: str | None = None


#: States of these types are immutable and hold no objects: nothing to copy or re-bind.
_ATOMIC: frozenset[type] = frozenset(
    {int, float, complex, bool, str, bytes, type(None), range, type(Ellipsis)}
)


class _Flat:
    """A dict or list of scalars and live objects, copied shallow when it is restored.

    The copy is made in the migration pass, not when the state is looked at: the
    state cannot change meanwhile (its actor is held), and the actors' objects are
    then touched once instead of twice (with 1,000 actors, each pass over their
    scattered objects costs about a millisecond of cache misses).
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def copy(self) -> Any:
        value = self.value
        return dict(value) if type(value) is dict else list(value)


def _flat_items(values: Iterable[Any]) -> bool:
    """Whether ``values`` are all scalars or live objects (kept by reference anyway)."""
    # set(map(type, ...)) runs in C: a list of 1,000 actor refs is one class to look at
    kinds = set(map(type, values))
    return kinds <= _ATOMIC or all(k in _ATOMIC or _is_live(k) for k in kinds)


_plain = _ATOMIC.issuperset


def _flat(state: Any) -> Any:
    """``state`` as a :class:`_Flat` if it is a dict/list holding only scalars and live
    objects (actor refs, locks, ...), itself if it is such a tuple, else None: a
    shallow copy is then all the copy it needs, much cheaper than a pickle round
    trip, and there is no object to re-bind."""
    kind = type(state)
    if kind is dict:
        if _plain(map(type, state)) and _flat_items(state.values()):
            return _Flat(state)
    elif kind is list or kind is tuple:
        if _flat_items(state):
            return _Flat(state) if kind is list else state
    return None


#: What :func:`_plain_snapshot` returns for a state only a pickle can copy.
_NEEDS_PICKLE = object()


def _plain_snapshot(state: Any) -> Any:
    """What to restore a copy of ``state`` from without a pickle (an immutable scalar
    is its own copy; see :func:`_flat`), or :data:`_NEEDS_PICKLE`."""
    if type(state) in _ATOMIC:
        return state
    flat = _flat(state)
    return _NEEDS_PICKLE if flat is None else flat


def _snapshot(state: Any) -> Any:
    """What to restore a copy of ``state`` from (see :func:`_restore`)."""
    snap = _plain_snapshot(state)
    return _pickled(state) if snap is _NEEDS_PICKLE else snap


def _pickled(state: Any) -> _Snapshot:
    """A pickled copy of ``state``; what cannot be pickled is kept by reference."""
    try:
        return _Snapshot(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:
        pass
    buf = io.BytesIO()
    pickler = _StatePickler(buf)
    try:
        pickler.dump(state)
    except Exception as exc:  # an object of a kind nobody foresaw: carry the state as is
        return _Snapshot(value=state, problem=f"{type(exc).__name__}: {exc}")
    return _Snapshot(buf.getvalue(), pickler.kept)


def _restore(snap: Any) -> Any:
    """A fresh copy of the state ``snap`` was taken of."""
    kind = type(snap)
    if kind is _Flat:
        return snap.copy()
    if kind is not _Snapshot:
        return snap
    if snap.data is None:
        return snap.value
    if snap.kept is None:
        return pickle.loads(snap.data)
    return _StateUnpickler(io.BytesIO(snap.data), snap.kept).load()


def _stale_code_in(state: Any, modules: Mapping[str, dict[str, Any]]) -> list[str]:
    """Functions and live generators of the old code that a state still holds.

    ``modules``: the globals of each module just staged, by name. A function (or a
    generator's frame) whose code comes from one of those modules but whose globals
    are not the staged module's runs the old code. Looks 4 levels deep, at most 100
    items per container: cheap, not exhaustive.
    """
    if type(state) in _ATOMIC:
        return []
    found: list[str] = []
    _walk_stale(state, modules, 0, set(), found)
    return found


_NO_ATTRS = (type, types.ModuleType, str, bytes, int, float)
_RUNNING = (types.GeneratorType, types.CoroutineType, types.AsyncGeneratorType)


def _is_stale(globs: Any, modules: Mapping[str, dict[str, Any]]) -> bool:
    name = globs.get("__name__") if isinstance(globs, dict) else None
    return isinstance(name, str) and name in modules and globs is not modules[name]


def _walk_stale(
    obj: Any, modules: Mapping[str, dict[str, Any]], depth: int, seen: set[int], found: list[str]
) -> None:
    if depth > 4 or len(found) >= 10 or type(obj) in _ATOMIC or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, types.FunctionType):
        if _is_stale(obj.__globals__, modules):
            found.append(f"function {obj.__qualname__}")
    elif isinstance(obj, types.MethodType):
        _walk_stale(obj.__func__, modules, depth, seen, found)
    elif isinstance(obj, _RUNNING):
        frame = getattr(obj, "gi_frame", None) or getattr(obj, "cr_frame", None) or \
            getattr(obj, "ag_frame", None)
        if frame is not None and _is_stale(frame.f_globals, modules):
            found.append(f"{type(obj).__name__.replace('_', ' ')} {obj.__qualname__}")
    elif isinstance(obj, dict):
        for v in list(obj.values())[:100]:
            _walk_stale(v, modules, depth + 1, seen, found)
    elif isinstance(obj, (list, tuple, set, frozenset, collections.deque)):
        for v in list(obj)[:100]:
            _walk_stale(v, modules, depth + 1, seen, found)
    elif not isinstance(obj, _NO_ATTRS) and not _is_live(type(obj)):
        attrs = getattr(obj, "__dict__", None)
        if isinstance(attrs, dict):
            for v in list(attrs.values())[:100]:
                _walk_stale(v, modules, depth + 1, seen, found)


def _instances_in(state: Any, modules: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``(where, object)`` for objects of classes from ``modules`` found in ``state``
    (4 levels deep, 100 items per container: cheap, not exhaustive)."""
    if type(state) in _ATOMIC:
        return []
    found: list[tuple[str, Any]] = []
    _walk_instances(state, modules, "state", 0, set(), found)
    return found


def _walk_instances(
    obj: Any, modules: Mapping[str, Any], where: str, depth: int, seen: set[int],
    found: list[tuple[str, Any]],
) -> None:
    if depth > 4 or len(found) >= 10 or type(obj) in _ATOMIC or id(obj) in seen:
        return
    seen.add(id(obj))
    cls = type(obj)
    if cls.__module__ in modules and not isinstance(obj, type):
        found.append((where, obj))
    if isinstance(obj, dict):
        for k, v in list(obj.items())[:100]:
            _walk_instances(v, modules, f"{where}[{k!r}]", depth + 1, seen, found)
    elif isinstance(obj, (list, tuple, collections.deque)):
        for i, v in enumerate(list(obj)[:100]):
            _walk_instances(v, modules, f"{where}[{i}]", depth + 1, seen, found)
    elif isinstance(obj, (set, frozenset)):
        for v in list(obj)[:100]:
            _walk_instances(v, modules, f"{where}{{...}}", depth + 1, seen, found)
    elif not isinstance(obj, _NO_ATTRS) and not _is_live(cls):
        attrs = getattr(obj, "__dict__", None)
        if isinstance(attrs, dict):
            for k, v in list(attrs.items())[:100]:
                _walk_instances(v, modules, f"{where}.{k}", depth + 1, seen, found)


def _resolve(module: types.ModuleType, qualname: str) -> Any:
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _new_class(old_cls: Any, actor: Any) -> Any:
    """The class named like ``old_cls`` in its freshly staged module."""
    module, qualname = old_cls.__module__, old_cls.__qualname__
    try:
        new_cls = _resolve(sys.modules[module], qualname)
    except AttributeError:
        raise LookupError(
            f"class {qualname} no longer exists in {module}, but actor {actor} runs it; "
            "keep the class or stop the actor first"
        ) from None
    if not isinstance(new_cls, type):
        raise TypeError(f"{module}.{qualname} is no longer a class")
    return new_cls


def _state_classes_in(names: Iterable[str]) -> bool:
    """Whether a loaded module of ``names`` defines a class whose objects an actor's
    state may hold: any class but a GenServer (whose objects are the actors' own
    ``impl``, never state), including classes nested in a GenServer."""
    from runtime.genserver import GenServer

    def plain(cls: type, name: str, depth: int) -> bool:
        if not issubclass(cls, GenServer):
            return True
        return depth < 3 and any(
            isinstance(v, type) and v.__module__ == name and plain(v, name, depth + 1)
            for v in vars(cls).values())

    for name in names:
        module = sys.modules.get(name)
        if module is None:
            continue  # new: nothing can hold its objects yet
        for value in list(vars(module).values()):
            if isinstance(value, type) and value.__module__ == name and plain(value, name, 0):
                return True
    return False


def _load_migrate(migrate: Any) -> Callable[[Any, Any, Any], Any] | None:
    """The migration function, unpickled here if it came as bytes (see hotreload)."""
    if migrate is None or callable(migrate):
        return migrate
    from runtime.wire.shipping import land

    fn = land(migrate, "migrate function")
    if not callable(fn):
        raise TypeError(f"migrate must be a function (old_state, old_vsn, new_vsn), got {fn!r}")
    return fn


def _attach(name: str, module: types.ModuleType | None) -> None:
    """Bind ``pkg.mod`` as attribute ``mod`` of ``pkg`` (or unbind it, for None)."""
    parent, _, child = name.rpartition(".")
    if not parent or parent not in sys.modules:
        return
    pkg = sys.modules[parent]
    if module is not None:
        setattr(pkg, child, module)
    elif isinstance(getattr(pkg, child, None), types.ModuleType):
        delattr(pkg, child)


def _attach_submodules(names: Iterable[str]) -> None:
    """After staging: every staged module is bound in its parent, and every staged
    package has its (still imported) submodules bound, as an import would leave them."""
    names = list(names)
    for name in names:
        if name in sys.modules:
            _attach(name, sys.modules[name])
    packages = {n for n in names if hasattr(sys.modules.get(n), "__path__")}
    if not packages:
        return
    for sub, module in list(sys.modules.items()):
        parent, _, child = sub.rpartition(".")
        if parent in packages and module is not None and not hasattr(sys.modules[parent], child):
            setattr(sys.modules[parent], child, module)


_VERDICT_LOCK = threading.Lock()
#: reload id -> "committed" | "failed" | "cancelled" (the last 256 reloads)
_VERDICTS: collections.OrderedDict[str, str] = collections.OrderedDict()


def _set_verdict(reload_id: str, verdict: str) -> None:
    _VERDICTS[reload_id] = verdict
    while len(_VERDICTS) > 256:
        _VERDICTS.popitem(last=False)


def cancel_reload(reload_id: str) -> str:
    """The host stopped waiting: cancel reload ``reload_id`` unless it committed.

    Returns the verdict, final either way: ``committed`` (too late to cancel),
    ``failed``, or ``cancelled`` (it will not commit, even if it is still running).

    >>> cancel_reload("doc-r1")
    'cancelled'
    """
    with _VERDICT_LOCK:
        verdict = _VERDICTS.get(reload_id)
        if verdict is None:
            verdict = "cancelled"
            _set_verdict(reload_id, verdict)
        return verdict


def _decide_commit(reload_id: str | None, deadline: float | None) -> None:
    """The point of no return: commit unless cancelled or late (raises TimeoutError)."""
    with _VERDICT_LOCK:
        if reload_id is not None and _VERDICTS.get(reload_id) == "cancelled":
            raise TimeoutError("the host cancelled the reload after its timeout")
        if deadline is not None and time.monotonic() > deadline:
            if reload_id is not None:
                _set_verdict(reload_id, "cancelled")
            raise TimeoutError("the swap did not reach its commit within the reload's timeout")
        if reload_id is not None:
            _set_verdict(reload_id, "committed")


def _unload(removed: Iterable[str]) -> None:
    """Drop modules deleted from the app; refused while an actor runs one of their classes."""
    for name in removed:
        holders = [s.actor_id for s in live_servers() if s.impl_cls.__module__ == name]
        if holders:
            raise LookupError(
                f"module {name} was deleted, but actor(s) {', '.join(map(str, holders))} run "
                "its classes; stop them first or restore the file")
        sys.modules.pop(name, None)
        FINDER.modules.pop(name, None)
        _attach(name, None)


class _Stager:
    """Stages each affected actor's new class, instance and migrated state and
    switches the actor to them, keeping what it had for :meth:`undo`: :meth:`stage`
    runs once per actor while every actor is held, so it is one call with the
    per-class work cached. Switching at once saves a second pass over 1,000
    actors for the commit (their objects, scattered over the heap, fetched from
    memory again: 0.3-1 ms on a loaded 2-vCPU VM). ``step`` and ``current`` (the
    server) say where a failure happened."""

    def __init__(self, changed: set[str], migrate_fn: Any, extra: Any) -> None:
        from runtime.genserver import GenServer

        self._default_code_change = GenServer.code_change
        self.changed = changed
        self.migrate_fn = migrate_fn
        self.extra = extra
        #: (server, class, instance, state) each switched actor had, in switch order.
        self.switched: list[tuple[Any, Any, Any, Any]] = []
        #: Switched actors whose ``trap_exit`` the new class changes: set only once the
        #: reload commits (exit signals read it on other threads, outside the barrier).
        self.traps: list[Any] = []
        self.shape_notes: list[str] = []
        self.step = "restore"  # where a failure happened (set by stage)
        self.current: Any = None
        self._resolved: dict[type, tuple[Any, Any, Any, bool, bool, bool, bool] | None] = {}
        self._last: Any = None  # actors of one class usually come in a row
        self._entry: Any = None

    def _resolve(
        self, server: Any, old_cls: Any
    ) -> tuple[Any, Any, Any, bool, bool, bool, bool] | None:
        """Per class, once: its new class, versions, whether it is migrated, whether it
        declares its state's shape, whether something will run that may change
        the state (a ``migrate`` function or a ``code_change`` of its own; only then
        does a flat state need its copy, and the result its shape checks), and the
        new class's ``trap_exit``. None: a class this reload staged (an actor a
        module body started), nothing to migrate."""
        if old_cls in self._resolved:
            return self._resolved[old_cls]
        new_cls = _new_class(old_cls, server.actor_id)
        entry = None
        if new_cls is not old_cls:
            migrating = old_cls.__module__ in self.changed
            copies = migrating and (self.migrate_fn is not None
                                    or new_cls.code_change is not self._default_code_change)
            entry = (new_cls, old_cls.vsn, new_cls.vsn, migrating, declares_shape(new_cls),
                     copies, new_cls.trap_exit)
        self._resolved[old_cls] = entry
        return entry

    def stage(self, server: Any, snap: Any, flat: bool = False) -> bool:
        """Stage ``server`` with its state restored from ``snap`` (``flat``: ``snap`` is
        the state itself, a dict of scalars, copied only if something may change it)
        and switch it over; False if it runs a class this reload staged. On failure,
        ``step`` and ``current`` say where, and ``server`` is as it was."""
        step = "resolve"  # a local: the hot path writes no attribute but the result
        try:
            old_cls = server.impl_cls
            if old_cls is self._last:
                entry = self._entry
            else:
                entry = self._entry = self._resolve(server, old_cls)
                self._last = old_cls
            if entry is None:
                return False
            new_cls, old_vsn, new_vsn, migrating, declared, copies, new_trap = entry
            step = "restore"
            if flat:  # a state nothing will change is its own copy
                state = dict(snap) if copies else snap
            elif type(snap) is _Flat:
                state = snap.copy() if copies else snap.value
            else:
                state = _restore(snap)
            impl = new_cls()
            impl.ref = server.impl.ref
            if copies:  # something may change the state: run it, then check the result
                if self.migrate_fn is not None:
                    step = "migrate"
                    state = self.migrate_fn(state, old_vsn, new_vsn)
                else:
                    step = "code_change"
                    state = impl.code_change(old_vsn, state, self.extra)
                step = "check_state"  # runtime/child/statecheck.py
                if declared:
                    check_state(impl, state, server.actor_id)
                elif not (type(state) is dict and type(server.state) is dict
                          and server.state.keys() <= state.keys()):
                    self.shape_notes += shape_warnings(server.actor_id, server.state, state)
            elif migrating and declared:
                # The default code_change returns the state as it is (not called): it
                # lost nothing, but must still be what the new class declares.
                step = "check_state"
                check_state(impl, state, server.actor_id)
            old_impl, old_state = server.impl, server.state
            self.switched.append((server, old_cls, old_impl, old_state))
            server.impl_cls = new_cls
            server.impl = impl
            server.state = state
            if server.trap_exit is not new_trap:
                self.traps.append(server)
            return True
        except BaseException:
            self.step, self.current = step, server
            raise

    def undo(self) -> None:
        """Put every switched actor back as it was (a reload that does not commit)."""
        for server, cls, impl, state in reversed(self.switched):
            server.impl_cls = cls
            server.impl = impl
            server.state = state
        self.switched.clear()
        self.traps.clear()


@contextmanager
def _code_before(old_modules: Mapping[str, types.ModuleType | None]) -> Iterator[None]:
    """``sys.modules`` names the modules' previous objects for the duration: a pickle
    taken then names the old classes by their names (and re-binds them to the new
    ones when it is loaded after)."""
    staged = {n: sys.modules.get(n) for n in old_modules}
    _name_modules(old_modules)
    try:
        yield
    finally:
        _name_modules(staged)


def _name_modules(modules: Mapping[str, types.ModuleType | None]) -> None:
    for n, m in modules.items():
        if m is None:
            sys.modules.pop(n, None)
        else:
            sys.modules[n] = m


def apply_reload(
    units: list[list[ModuleCode]],
    *,
    changed: Iterable[str] | None = None,
    migrate: Any = None,
    extra: Any = None,
    suspend_timeout: float = 5.0,
    removed: Iterable[str] = (),
    reload_id: str | None = None,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Swap the modules of ``units`` (in order) and migrate the affected actors' state.

    ``changed`` names the modules whose source changed (their actors get
    ``code_change``); the others in ``units`` are dependents re-staged so they bind
    the new names. ``migrate`` is a function ``(old_state, old_vsn, new_vsn)`` or its
    cloudpickle bytes. ``removed``: modules deleted from the app, unloaded. ``reload_id``
    and ``deadline`` (``time.monotonic()`` value): see :func:`cancel_reload`. Returns a
    report; raises ReloadFailed (naming the step, the module and, for per-actor steps,
    the actor) and changes nothing on failure.

    Steps: ``suspend`` (the barrier), ``stage`` (importing a new module), ``resolve``
    (an actor's class is gone from its new module), ``restore`` (a state does not
    unpickle against the new classes), ``code_change``, ``migrate``, ``check_state``
    (a migrated state fails what its class declares).
    """
    names = [mc.name for unit in units for mc in unit]
    removed = [n for n in removed if n not in names]
    changed_set = set(names if changed is None else changed)
    new_code = {mc.name: mc for unit in units for mc in unit}
    t0 = time.perf_counter()
    if not BARRIER.acquire_write(suspend_timeout):
        if reload_id is not None:
            with _VERDICT_LOCK:
                _set_verdict(reload_id, "failed")
        raise ReloadFailed(
            f"reload failed at step 'suspend': actors still busy after {suspend_timeout}s "
            "(a handler that does not return, or actors calling each other in a loop); "
            "nothing was changed",
            module=names[0] if names else None,
            step="suspend",
        )
    # No collection while the actors are held: a full one over a big heap (1,000
    # actors) would be paid by every suspended actor. It runs after the release.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        t_suspended = time.perf_counter()
        from runtime.genserver import SERVERS

        # Actors of other modules holding objects of reloaded classes: their state is
        # copied and restored too, which re-binds those objects to the new classes.
        # Only looked for when a reloaded module defines a class whose objects a
        # state can hold (not just GenServers): the walk costs every other actor.
        holdable = _state_classes_in(new_code)
        rebound: list[tuple[Any, Any]] = []
        old_modules = {n: sys.modules.get(n) for n in [*names, *removed]}
        old_finder = {n: FINDER.modules.get(n) for n in [*names, *removed]}
        old_unloaded = FINDER.unloaded & set(names)
        old_lines = {mc.file: linecache.cache.get(mc.file) for mc in new_code.values()}
        step, module, current = "stage", names[0] if names else None, None
        stager: _Stager | None = None
        pickled: list[tuple[Any, _Snapshot, bool]] = []  # (server, snapshot, migrated)
        try:
            if removed:
                step, module = "unload", removed[0]
                _unload(removed)
                step = "stage"
            importlib.invalidate_caches()  # new files added to the app become importable
            FINDER.modules.update(new_code)
            FINDER.unloaded -= new_code.keys()
            for unit in units:
                for mc in unit:
                    sys.modules.pop(mc.name, None)
                for mc in unit:
                    module = mc.name
                    if mc.name not in sys.modules:
                        importlib.import_module(mc.name)
            _attach_submodules(names)
            migrate_fn = None
            if migrate is not None:
                step, module = "migrate", None
                migrate_fn = _load_migrate(migrate)
            stager = _Stager(changed_set, migrate_fn, extra)
            deferred: list[Any] = []  # actors whose state only a pickle copies
            others: list[Any] = []
            # One pass over the servers: each actor of a reloaded module whose state
            # needs no pickle is migrated as it is met (its objects, scattered over the
            # heap, are fetched from memory once: with 1,000 actors each pass costs
            # about a millisecond of cache misses). Inlined (_alive, the common state
            # of scalars of _flat): this runs for every actor while all are held. The
            # weak references are copied in C (a WeakSet's own iterator is a Python
            # generator), and a class's module is looked up once per run of its actors.
            step = "actors"
            stage = stager.stage
            last_cls: Any = None
            mine = False
            for ref in SERVERS.data.copy():  # type: ignore[attr-defined]  # its weakrefs
                s = ref()
                if s is None or s.impl is None:
                    continue
                if s.impl_cls is not last_cls:
                    last_cls = s.impl_cls
                    mine = last_cls.__module__ in new_code
                if mine:
                    if s._exit_reason is None and not s.actor_stopped.is_set():
                        state = s.state
                        if type(state) is dict and _plain(map(type, state)) \
                                and _plain(map(type, state.values())):
                            stage(s, state, True)
                        else:
                            snap = _plain_snapshot(state)
                            if snap is _NEEDS_PICKLE:
                                deferred.append(s)
                            else:
                                stage(s, snap)
                elif holdable and _alive(s):
                    others.append(s)
            # Actors of other modules holding objects of reloaded classes: their state is
            # copied and restored too, which re-binds those objects to the new classes.
            # Only looked for when a reloaded module defines a class whose objects a
            # state can hold (not just GenServers): the walk costs every other actor.
            holders = [s for s in others if _instances_in(s.state, new_code)]
            if deferred or holders:
                step = "restore"
                with _code_before(old_modules):
                    deferred_snaps = [_pickled(s.state) for s in deferred]
                    holder_snaps = [_snapshot(s.state) for s in holders]
                step = "actors"
                for server, snap in zip(deferred, deferred_snaps):
                    if stager.stage(server, snap):
                        pickled.append((server, snap, True))
                for server, snap in zip(holders, holder_snaps):
                    step, current = "restore", server
                    rebound.append((server, _restore(snap)))
                    if type(snap) is _Snapshot:
                        pickled.append((server, snap, False))
            step, module, current = "commit", None, None
            _decide_commit(reload_id, deadline)
        except BaseException as exc:
            if stager is not None:
                stager.undo()
            if reload_id is not None:
                with _VERDICT_LOCK:
                    _VERDICTS.setdefault(reload_id, "failed")
            for n, old in old_modules.items():
                if old is None:
                    sys.modules.pop(n, None)
                else:
                    sys.modules[n] = old
                _attach(n, old)
            FINDER.unloaded |= old_unloaded
            for n, old_mc in old_finder.items():
                if old_mc is None:
                    FINDER.modules.pop(n, None)
                else:
                    FINDER.modules[n] = old_mc
            for file, entry_ in old_lines.items():
                if entry_ is None:
                    linecache.cache.pop(file, None)
                else:
                    linecache.cache[file] = entry_
            if step == "actors" and stager is not None:
                step, current = stager.step, stager.current
            actor = None
            if current is not None:
                module, actor = current.impl_cls.__module__, current.actor_id
            where = f" in module {module!r}" if module else ""
            if actor is not None and step in ("resolve", "restore", "code_change", "migrate",
                                              "check_state"):
                where += f" for actor {actor}"
            frames = traceback.extract_tb(exc.__traceback__)
            if frames:  # where the app's code raised (code_change, a module body, ...)
                where += f" at {frames[-1].filename}:{frames[-1].lineno}"
            raise ReloadFailed(
                f"reload failed at step {step!r}{where}: {type(exc).__name__}: {exc}; "
                "the previous code and state are still serving",
                module=module,
                step=step,
            ) from exc
        assert stager is not None  # set before anything that can reach the commit
        switched = stager.switched  # switched as they were staged (see _Stager)
        warnings: list[str] = list(stager.shape_notes)
        for server, state in rebound:
            server.state = state
        for server in stager.traps:
            server.trap_exit = server.impl_cls.trap_exit
        # Old code can only survive in what was not copied (a state copied whole, or
        # flat, re-bound every function by name and held no generator: they do not
        # pickle), so only the states that went through the state pickler need a look.
        staged_globals = {n: vars(sys.modules[n]) for n in names if n in sys.modules} \
            if pickled else {}
        for server, snap, migrated in pickled:
            if not migrated:
                continue
            if snap.problem:
                warnings.append(
                    f"actor {server.actor_id}: its state could not be copied ({snap.problem}); "
                    "it was carried over as is, so objects of reloaded classes in it keep "
                    "their old class"
                )
            suspects = server.state if snap.data is None else snap.kept
            for what in _stale_code_in(suspects, staged_globals) if suspects else ():
                warnings.append(
                    f"actor {server.actor_id} keeps {what} from the old code in its state "
                    "(it runs the old code until replaced)"
                )
        for server, snap, _ in pickled:
            if snap.data is not None and not snap.kept:
                continue  # copied whole: every object re-bound by its class's name
            for where, obj in _instances_in(server.state, new_code):
                if not _importable(type(obj)):
                    warnings.append(
                        f"actor {server.actor_id} holds an object of the old "
                        f"{type(obj).__module__}.{type(obj).__qualname__} at {where} (it could "
                        "not be copied to re-bind it: it keeps the old class)")
        t_done = time.perf_counter()
    finally:
        BARRIER.release_write()
        if gc_was_enabled:
            gc.enable()
    for w in warnings:
        log.warning(w)
    return {
        "modules": names,
        "removed": removed,
        "changed": sorted(changed_set & set(names)),
        "actors": len(switched),
        "rebound": [s.actor_id for s, _ in rebound],
        "warnings": warnings,
        "suspend_seconds": t_suspended - t0,
        "swap_seconds": t_done - t_suspended,
    }


def failure_report(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``fn()``'s report with ``ok`` True, or, when it raises ReloadFailed, a report
    with ``ok`` False and the step, module, error and traceback (what the host
    turns back into ReloadFailed)."""
    try:
        report = fn()
    except ReloadFailed as exc:
        cause = exc.__cause__
        return {
            "ok": False,
            "step": exc.step,
            "module": exc.module,
            "error": str(exc),
            "traceback": "".join(traceback.format_exception(cause)) if cause else "",
        }
    report["ok"] = True
    return report


def reload_from_wire(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The ``reload`` system op: a report dict, ``ok`` False with step/module on failure."""
    units = [[ModuleCode.from_wire(d) for d in unit] for unit in payload["units"]]
    # The deadline counts from receipt: the host waits longer than this for the verdict.
    timeout = payload.get("timeout")
    report = failure_report(lambda: apply_reload(
        units,
        changed=payload.get("changed"),
        migrate=payload.get("migrate"),
        extra=payload.get("extra"),
        suspend_timeout=float(payload.get("suspend_timeout", 5.0)),
        removed=payload.get("removed") or (),
        reload_id=payload.get("reload_id"),
        deadline=None if timeout is None else time.monotonic() + float(timeout),
    ))
    if report["ok"]:
        _LAST_SWAP["modules"] = frozenset(report["modules"])
        # What the host checks against what it shipped (sandbox/reload_ack.py): looked
        # up here, after the transaction returned, not taken from its report.
        report["installed"] = serving(report["modules"])
    return report


def unload_module(name: str, entry_module: str, *, suspend_timeout: float = 5.0) -> dict[str, Any]:
    """Remove app module ``name`` from this process: from ``sys.modules``, from its
    parent package and from what :data:`FINDER` serves.

    The host has checked that no other loaded module imports it; this refuses
    (ReloadFailed at step ``unload``) the entry module, a package with loaded
    submodules, and a module whose classes running actors use.
    """

    def refuse(why: str) -> ReloadFailed:
        return ReloadFailed(f"cannot unload module {name!r}: {why}; nothing was changed",
                            module=name, step="unload")

    if name not in FINDER.modules:
        raise refuse("it is not a module of this sandbox's app "
                     f"(loaded: {', '.join(sorted(FINDER.modules)) or 'none'})")
    if name == entry_module:
        raise refuse("it holds the app's entry; it is needed to restart the app")
    subs = sorted(m for m in FINDER.modules if m.startswith(name + "."))
    if subs:
        raise refuse(f"package with loaded submodules {', '.join(subs)}: unload them first")
    if not BARRIER.acquire_write(suspend_timeout):
        raise refuse(f"actors still busy after {suspend_timeout}s")
    try:
        users = sorted(str(s.actor_id) for s in live_servers() if s.impl_cls.__module__ == name)
        if users:
            raise refuse(f"actor {', '.join(users)} runs its code: stop the actor first "
                         "(drop it from the app's children and reload the entry)")
        FINDER.modules.pop(name, None)
        FINDER.unloaded.add(name)
        old = sys.modules.pop(name, None)
        if old is not None:
            _attach(name, None)
            linecache.cache.pop(getattr(old, "__file__", "") or "", None)
        importlib.invalidate_caches()
    finally:
        BARRIER.release_write()
    return {"module": name, "was_imported": old is not None}


#: The modules the last ``reload`` op swapped; :func:`upgrade_children` (called by
#: that op right after) skips the entry when its module was not among them.
_LAST_SWAP: dict[str, frozenset[str]] = {}


def snapshot_states() -> dict[str, bytes]:
    """``{registered name: pickled state}`` of the named GenServers (unpicklable skipped)."""
    from runtime.registry import registered, whereis

    out: dict[str, bytes] = {}
    with BARRIER.writing(5.0):
        for name in registered():
            ref = whereis(name)
            server = getattr(ref, "_actor", None) if ref is not None else None
            if server is None or not hasattr(server, "impl_cls") or server.impl is None:
                continue
            try:  # crosses to another process: everything must pickle
                out[name] = pickle.dumps(server.state, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                log.warning("state of %s cannot be pickled (%s); it restarts fresh", name, exc)
    return out


def restore_states(states: Mapping[str, bytes]) -> None:
    """Put states taken by :func:`snapshot_states` back into the actors of those names."""
    from runtime.registry import whereis

    with BARRIER.writing(5.0):
        for name, blob in states.items():
            ref = whereis(name)
            server = getattr(ref, "_actor", None) if ref is not None else None
            if server is not None and hasattr(server, "impl_cls"):
                server.state = pickle.loads(blob)


def _spec_key(spec: Any) -> Any:
    if spec is None:
        return None
    meta = spec.meta or {}
    return (meta.get("module"), meta.get("qualname"), meta.get("name"), meta.get("args"),
            spec.restart, spec.shutdown, spec.type)


def _apply_flags(root: Any, spec: Any) -> list[str]:
    """Give the running supervisor the spec's strategy and intensity (already validated
    by SupervisorSpec). Each is one attribute the supervisor reads when it next decides
    a restart, so setting it from here is atomic for that decision; the supervisor has
    no API for it (yet)."""
    sup = getattr(root, "_actor", None)
    changed = []
    for flag in ("strategy", "max_restarts", "max_seconds"):
        old, new = getattr(sup, flag, None), getattr(spec, flag)
        if sup is not None and old != new:
            setattr(sup, flag, new)
            changed.append(f"{flag}: {old} -> {new}")
    if changed:
        log.info("supervisor flags upgraded: %s", "; ".join(changed))
    return changed


def upgrade_children(root: Any, entry: str, args: tuple = ()) -> dict[str, list[str]]:
    """Apply a changed child list like an OTP release upgrade (after a committed swap).

    The entry is called again (when the reload re-staged its module, that is when it
    or a module it imports changed); children it no longer returns are stopped, new
    ones started, and ones whose spec changed (class, arguments, name, restart,
    shutdown) restarted. Untouched children keep running with their state. Changed
    supervisor flags (strategy, max_restarts, max_seconds of a returned
    ``SupervisorSpec``) are applied to the running root supervisor, as OTP's
    supervisor ``code_change`` does, and listed under ``flags``
    (``"strategy: one_for_one -> one_for_all"``).

    Never raises: the code swap has already committed, so what cannot be applied
    (the entry raises, a new child fails to start) is listed under ``failed`` as
    ``"id: error"`` and the rest goes on.
    """
    from runtime.actor import ActorRef
    from runtime.supervisor import SupervisorSpec

    report: dict[str, list[str]] = {"added": [], "removed": [], "changed": [], "failed": [],
                                    "flags": []}
    module_name, _, fn_name = entry.partition(":")
    swapped = _LAST_SWAP.pop("modules", None)
    if swapped is not None and module_name not in swapped:
        # Neither the entry's module nor anything it imports changed: its child list
        # is what it was (as in OTP, where a supervisor's children are only re-read
        # when its own module is part of the upgrade).
        return report
    try:
        result = getattr(sys.modules[module_name], fn_name)(*args)
        if isinstance(result, ActorRef):
            if result != root:
                result.stop()
            raise TypeError(
                "the entry starts its supervisor itself (returns an ActorRef): child specs "
                "cannot be compared; return a list of ChildSpec or a SupervisorSpec instead"
            )
        new_spec = SupervisorSpec.coerce(result)
        new_specs = new_spec.children
        # On this thread when the supervisor is idle: a reload that re-staged the entry
        # waits for no hand-off to and from it (about 0.17 ms on a loaded 2-vCPU VM).
        current = {c.id: c for c in root.which_children(run_here=True)}
        report["flags"] = _apply_flags(root, new_spec)
    except Exception as exc:
        report["failed"].append(f"{entry}: {type(exc).__name__}: {exc}")
        log.warning("child specs not upgraded: %s", report["failed"][-1])
        return report
    wanted = {s.id: s for s in new_specs}

    def attempt(child_id: str, bucket: str, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception as exc:
            report["failed"].append(f"{child_id}: {type(exc).__name__}: {exc}")
            log.warning("child spec upgrade: %s", report["failed"][-1])
        else:
            report[bucket].append(child_id)

    def stop(child_id: str) -> None:
        root.terminate_child(child_id)
        root.delete_child(child_id)

    def replace(spec: ChildSpec) -> None:
        stop(spec.id)
        root.start_child(spec)

    for child_id in current:
        if child_id not in wanted:
            attempt(child_id, "removed", functools.partial(stop, child_id))
    for spec in new_specs:
        child = current.get(spec.id)
        if child is None:
            attempt(spec.id, "added", functools.partial(root.start_child, spec))
        elif _spec_key(child.spec) != _spec_key(spec):
            attempt(spec.id, "changed", functools.partial(replace, spec))
    return report
