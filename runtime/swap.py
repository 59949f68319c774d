"""Loading app code inside a sandbox, and swapping it atomically while actors run.

The host compiles every module (see ``actors/compiler.py``) and sends the code
objects; the sandbox never reads its app's source or ``__pycache__`` from disk.
:class:`AppFinder`, first on ``sys.meta_path``, serves the app's modules from
that code, so what runs is exactly what was compiled and scanned.

A hot reload (:func:`apply_reload`) is one transaction:

1. suspend: take the write side of the code barrier; every actor finishes the
   message it is handling and the next ones wait in their mailboxes;
2. snapshot each affected actor's state (pickled, so instances of reloaded
   classes re-bind by qualified name to the new classes on restore);
3. stage: drop the reloaded modules from ``sys.modules`` and import them afresh, in
   reload order (a cycle is one unit), into new module objects: names deleted from
   the source do not linger, ``from m import f`` in a dependent sees the new ``f``,
   ``lru_cache`` and decorator wrappers are new;
4. migrate: each affected actor's state goes through the new class's
   ``code_change(old_vsn, state, extra)`` (or the ``migrate`` function given);
5. commit: each actor gets its new code object and state; release the barrier.

Any failure in 3 or 4 puts the previous modules back in ``sys.modules`` and leaves
every actor's code and state untouched, then raises
:class:`~runtime.errors.ReloadFailed` naming the step and the module.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.abc
import importlib.util
import linecache
import logging
import marshal
import os
import pickle
import sys
import time
import traceback
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .barrier import BARRIER
from .errors import ReloadFailed

__all__ = [
    "AppFinder",
    "ModuleCode",
    "FINDER",
    "install_finder",
    "apply_reload",
    "live_servers",
    "reload_from_wire",
    "restore_states",
    "snapshot_states",
    "upgrade_children",
]

log = logging.getLogger("runtime.swap")


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

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        mc = self.modules.get(fullname)
        if mc is None:
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
        code = mc.code_object()
        module.__file__ = mc.file
        _remember_source(mc)
        exec(code, module.__dict__)

    def get_source(self, fullname: str) -> str | None:
        mc = self.modules.get(fullname)
        return mc.source if mc is not None else None


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
    importlib.invalidate_caches()


def live_servers() -> list[Any]:
    """The GenServer actors alive in this process."""
    from .genserver import SERVERS

    return [s for s in list(SERVERS) if s.impl is not None and s.ref.is_alive()]


def _snapshot(state: Any) -> tuple[bool, Any]:
    try:
        return True, pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # locks, sockets, open files...: the object itself is carried over
        return False, state


def _restore(snap: tuple[bool, Any]) -> Any:
    pickled, value = snap
    return pickle.loads(value) if pickled else value


def _stale_code_in(state: Any, files: set[str], depth: int = 0) -> list[str]:
    """Functions or generators from reloaded files kept in state (they keep old code)."""
    found: list[str] = []
    if depth > 3:
        return found
    if isinstance(state, types.FunctionType) and state.__code__.co_filename in files:
        found.append(f"function {state.__qualname__}")
    elif isinstance(state, types.GeneratorType) and state.gi_code.co_filename in files:
        found.append(f"generator {state.__qualname__}")
    elif isinstance(state, dict):
        for v in list(state.values())[:100]:
            found += _stale_code_in(v, files, depth + 1)
    elif isinstance(state, (list, tuple, set, frozenset)):
        for v in list(state)[:100]:
            found += _stale_code_in(v, files, depth + 1)
    return found


def _resolve(module: types.ModuleType, qualname: str) -> Any:
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def apply_reload(
    units: list[list[ModuleCode]],
    *,
    changed: Iterable[str] | None = None,
    migrate: Callable[[Any, Any, Any], Any] | None = None,
    extra: Any = None,
    suspend_timeout: float = 5.0,
) -> dict[str, Any]:
    """Swap the modules of ``units`` (in order) and migrate the affected actors' state.

    ``changed`` names the modules whose source changed (their actors get
    ``code_change``); the others in ``units`` are dependents re-staged so they bind
    the new names. Returns a report; raises ReloadFailed and changes nothing on failure.
    """
    names = [mc.name for unit in units for mc in unit]
    changed_set = set(names if changed is None else changed)
    new_code = {mc.name: mc for unit in units for mc in unit}
    t0 = time.perf_counter()
    with BARRIER.writing(suspend_timeout):
        t_suspended = time.perf_counter()
        servers = [s for s in live_servers() if s.impl_cls.__module__ in new_code]
        snaps = {id(s): _snapshot(s.state) for s in servers}
        old_modules = {n: sys.modules.get(n) for n in names}
        old_finder = {n: FINDER.modules.get(n) for n in names}
        old_lines = {mc.file: linecache.cache.get(mc.file) for mc in new_code.values()}
        step, module = "stage", names[0] if names else None
        staged: list[tuple[Any, type, Any, Any]] = []
        try:
            importlib.invalidate_caches()  # new files added to the app become importable
            FINDER.modules.update(new_code)
            for unit in units:
                for mc in unit:
                    sys.modules.pop(mc.name, None)
                for mc in unit:
                    module = mc.name
                    if mc.name not in sys.modules:
                        importlib.import_module(mc.name)
            step = "migrate"
            for server in servers:
                module = server.impl_cls.__module__
                qualname = server.impl_cls.__qualname__
                try:
                    new_cls = _resolve(sys.modules[module], qualname)
                except AttributeError:
                    raise LookupError(
                        f"class {qualname} no longer exists in {module}, but actor "
                        f"{server.actor_id} runs it; keep the class or stop the actor first"
                    ) from None
                state = _restore(snaps[id(server)])
                old_vsn, new_vsn = server.impl_cls.vsn, new_cls.vsn
                impl = new_cls()
                impl.ref = server.ref
                if module in changed_set:
                    if migrate is not None:
                        step = "migrate function"
                        state = migrate(state, old_vsn, new_vsn)
                    else:
                        step = "code_change"
                        state = impl.code_change(old_vsn, state, extra)
                staged.append((server, new_cls, impl, state))
        except BaseException as exc:
            for n, old in old_modules.items():
                if old is None:
                    sys.modules.pop(n, None)
                else:
                    sys.modules[n] = old
                    _rebind_parent(n, old)
            for n, old_mc in old_finder.items():
                if old_mc is None:
                    FINDER.modules.pop(n, None)
                else:
                    FINDER.modules[n] = old_mc
            for file, entry in old_lines.items():
                if entry is None:
                    linecache.cache.pop(file, None)
                else:
                    linecache.cache[file] = entry
            raise ReloadFailed(
                f"reload failed at step {step!r} in module {module!r}: {type(exc).__name__}: {exc}; "
                "the previous code and state are still serving",
                module=module,
                step=step,
            ) from exc
        files = {mc.file for mc in new_code.values()}
        warnings: list[str] = []
        for server, new_cls, impl, state in staged:
            server.impl_cls = new_cls
            server.impl = impl
            server.state = state
            for what in _stale_code_in(state, files):
                warnings.append(f"actor {server.actor_id} keeps {what} from the old code in its state")
        t_done = time.perf_counter()
    for w in warnings:
        log.warning(w)
    return {
        "modules": names,
        "changed": sorted(changed_set & set(names)),
        "actors": len(staged),
        "warnings": warnings,
        "suspend_seconds": t_suspended - t0,
        "swap_seconds": t_done - t_suspended,
    }


def _rebind_parent(name: str, module: types.ModuleType) -> None:
    """Importing ``pkg.mod`` sets attribute ``mod`` on ``pkg``: put the old one back too."""
    parent, _, child = name.rpartition(".")
    if parent and parent in sys.modules:
        setattr(sys.modules[parent], child, module)


def reload_from_wire(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The ``reload`` system op: a report dict, ``ok`` False with step/module on failure."""
    units = [[ModuleCode.from_wire(d) for d in unit] for unit in payload["units"]]
    try:
        report = apply_reload(
            units,
            changed=payload.get("changed"),
            migrate=payload.get("migrate"),
            extra=payload.get("extra"),
            suspend_timeout=float(payload.get("suspend_timeout", 5.0)),
        )
    except ReloadFailed as exc:
        cause = exc.__cause__
        return {
            "ok": False,
            "step": exc.step,
            "module": exc.module,
            "error": str(exc),
            "traceback": "".join(traceback.format_exception(cause)) if cause else "",
        }
    except TimeoutError as exc:
        return {"ok": False, "step": "suspend", "module": None, "error": str(exc), "traceback": ""}
    report["ok"] = True
    return report


def snapshot_states() -> dict[str, bytes]:
    """``{registered name: pickled state}`` of the named GenServers (unpicklable skipped)."""
    from .registry import registered, whereis

    out: dict[str, bytes] = {}
    with BARRIER.writing(5.0):
        for name in registered():
            ref = whereis(name)
            server = getattr(ref, "_actor", None) if ref is not None else None
            if server is None or not hasattr(server, "impl_cls") or server.impl is None:
                continue
            pickled, value = _snapshot(server.state)
            if pickled:
                out[name] = value
            else:
                log.warning("state of %s cannot be pickled; it restarts fresh", name)
    return out


def restore_states(states: Mapping[str, bytes]) -> None:
    """Put states taken by :func:`snapshot_states` back into the actors of those names."""
    from .registry import whereis

    with BARRIER.writing(5.0):
        for name, blob in states.items():
            ref = whereis(name)
            server = getattr(ref, "_actor", None) if ref is not None else None
            if server is not None and hasattr(server, "impl_cls"):
                server.state = pickle.loads(blob)


def _spec_key(spec: Any) -> Any:
    meta = spec.meta or {}
    return (meta.get("module"), meta.get("qualname"), meta.get("name"), meta.get("args"),
            spec.restart, spec.shutdown, spec.type)


def upgrade_children(root: Any, entry: str, args: tuple = ()) -> dict[str, list[str]]:
    """Apply a changed child list like an OTP release upgrade.

    The entry is called again; children it no longer returns are stopped, new ones
    started, and ones whose spec changed (class, arguments, restart, ...) restarted.
    Untouched children keep running with their state.
    """
    from .supervisor import SupervisorSpec

    module_name, _, fn_name = entry.partition(":")
    result = getattr(sys.modules[module_name], fn_name)(*args)
    new_specs = SupervisorSpec.coerce(result).children
    current = {c.id: c for c in root.which_children()}
    wanted = {s.id: s for s in new_specs}
    report: dict[str, list[str]] = {"added": [], "removed": [], "changed": []}
    for child_id, child in current.items():
        if child_id not in wanted:
            root.terminate_child(child_id)
            root.delete_child(child_id)
            report["removed"].append(child_id)
    for spec in new_specs:
        child = current.get(spec.id)
        if child is None:
            root.start_child(spec)
            report["added"].append(spec.id)
        elif _spec_key(child.spec) != _spec_key(spec):
            root.terminate_child(spec.id)
            root.delete_child(spec.id)
            root.start_child(spec)
            report["changed"].append(spec.id)
    return report
