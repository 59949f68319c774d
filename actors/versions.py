"""The version manager actor: per sandbox and module, the versions loaded, and the import graph.

Each module keeps its last ``history`` versions (default 10). A version records
the source and code checksums, when it was recorded, its app dependencies, its
size, and the code and source themselves, so a rollback can load it again without
the file. Version numbers increase per module and are never reused, even once
older versions have been evicted. Recording source identical to the current
version makes no new version.

The version manager only keeps the books: the hot-reload swap calls
``record`` once a swap has committed (``dry_run=True`` first, to learn the version
numbers to pass to ``code_change``), and ``set_current`` once a rollback swap has
committed, so a failed swap leaves the history unchanged.

With a ``store`` (:class:`actors.store.Store`), every change is written to it
first, in one transaction (closing the reload's journal entry when one is named),
and a restarted version manager reads everything back: history, numbering and the
log survive its crash and a host restart.

>>> from actors.compilation import CompiledModule
>>> import marshal
>>> def mod(name, src, deps=()):
...     return CompiledModule.build(name, f"/app/{name}.py", src,
...                                 marshal.dumps(compile(src, name, "exec")), dependencies=deps)
>>> ref = VersionManagerActor.start()
>>> ref.invoke("record", "sb", [mod("a", b"import b", ("b",)), mod("b", b"x = 1")])
{'a': 1, 'b': 1}
>>> ref.invoke("record", "sb", [mod("b", b"x = 2")])
{'b': 2}
>>> ref.invoke("calculate_reload_order", "sb", ["b"]).units
[['b'], ['a']]
>>> _ = ref.stop()
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from actors.compilation import CompilationResult, CompiledModule
from actors.depgraph import ReloadPlan, reload_order
from actors.store import Store, StoredVersion
from runtime import telemetry
from runtime.component import Component
from runtime.errors import ConfigError, SandboxError, SandboxNotFound

__all__ = [
    "VersionManagerActor",
    "ReloadProposal",
    "ModuleVersion",
    "VersionEvent",
    "VersionNotFound",
    "DEFAULT_HISTORY",
]

DEFAULT_HISTORY = 10


class VersionNotFound(SandboxError, KeyError):
    """A module, or a version of it, is not (or no longer) kept.

    ``kept`` lists the version numbers still available for rollback.
    """

    def __init__(
        self, sandbox_id: str, module: str, version: int | None, kept: list[int], message: str
    ) -> None:
        self.sandbox_id = sandbox_id
        self.module = module
        self.version = version
        self.kept = kept
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


@dataclass(frozen=True)
class ModuleVersion:
    """One recorded version of a module: what identifies it, and its code and source.

    >>> v = ModuleVersion("m", 1, "s" * 64, "c" * 64, 0.0, (), 5, "/app/m.py")
    >>> v.info()["version"]
    1
    """

    module: str
    version: int
    source_sha256: str
    code_sha256: str
    loaded_at: float
    dependencies: tuple[str, ...]
    size: int
    file: str
    is_package: bool = False
    code: bytes = field(default=b"", repr=False)
    source: bytes = field(default=b"", repr=False)

    def info(self) -> dict[str, Any]:
        """Everything but code and source (for listings, JSON, the CLI)."""
        return {
            "module": self.module,
            "version": self.version,
            "source_sha256": self.source_sha256,
            "code_sha256": self.code_sha256,
            "loaded_at": self.loaded_at,
            "dependencies": list(self.dependencies),
            "size": self.size,
            "file": self.file,
            "is_package": self.is_package,
        }

    def to_compiled(self) -> CompiledModule:
        """This version as a compiled module again, ready for the swap (rollback)."""
        return CompiledModule(
            name=self.module,
            file=self.file,
            code=self.code,
            source_sha256=self.source_sha256,
            code_sha256=self.code_sha256,
            dependencies=self.dependencies,
            from_cache=True,
            size=self.size,
            is_package=self.is_package,
            source=self.source,
        )


@dataclass(frozen=True)
class VersionEvent:
    """One entry of a sandbox's version log: a version ``recorded``, made ``current``, or
    ``unloaded`` (``version`` 0, ``previous`` the one that was current)."""

    at: float
    module: str
    action: str
    version: int
    previous: int | None


@dataclass
class _History:
    versions: OrderedDict[int, ModuleVersion] = field(default_factory=OrderedDict)
    current: int = 0
    last: int = 0  # highest number ever given out: numbers are never reused

    def kept(self) -> list[int]:
        return list(self.versions)

    def live(self) -> ModuleVersion | None:
        """The current version; None for a module removed from the app."""
        return self.versions.get(self.current) if self.current else None


@dataclass
class _Sandbox:
    modules: dict[str, _History] = field(default_factory=dict)
    log: deque[VersionEvent] = field(default_factory=lambda: deque(maxlen=1000))


@dataclass(frozen=True)
class ReloadProposal:
    """What one reload needs from the version manager, in one call (``plan_reload``).

    ``wanted``: the modules to swap whose source changed (or those asked for);
    ``graph``: the current import graph (``{module: [dependency]}``); ``plan``: the
    reload order of ``wanted`` and their dependents (None when nothing is wanted);
    ``versions``: the number each wanted module will get once recorded (for
    ``code_change``), nothing recorded yet.
    """

    wanted: list[str]
    graph: dict[str, list[str]]
    plan: ReloadPlan | None
    versions: dict[str, int]


def _as_modules(compiled: Any) -> list[CompiledModule]:
    if isinstance(compiled, CompilationResult):
        compiled = compiled.modules
    if isinstance(compiled, CompiledModule):
        return [compiled]
    if isinstance(compiled, Mapping):
        compiled = compiled.values()
    mods = list(compiled)
    for m in mods:
        if not isinstance(m, CompiledModule):
            raise SandboxError(
                "record takes CompiledModule objects (or a CompilationResult), "
                f"got {type(m).__name__}"
            )
    return mods


class VersionManagerActor(Component):
    """Keeps module versions and import graphs per sandbox.

    ``history``: versions kept per module (default 10).

    Operations (``ref.invoke(name, ...)``):

    - ``record(sandbox_id, compiled_modules, *, dry_run=False, journal=None, removed=()) -> {module: version}``
    - ``changed_modules(sandbox_id, compiled_modules) -> [module]`` (source differs from current)
    - ``get_current_version(sandbox_id, module) -> ModuleVersion``
    - ``current_code(sandbox_id) -> {module: ModuleVersion}`` (what a restart boots)
    - ``list_module_versions(sandbox_id, module) -> [ModuleVersion]`` (oldest first)
    - ``get_version(sandbox_id, module, version) -> ModuleVersion`` (with code and source)
    - ``set_current(sandbox_id, module, version) -> ModuleVersion``
    - ``get_version_history(sandbox_id, module=None) -> [VersionEvent]``
    - ``get_dependency_graph(sandbox_id) -> {module: [dependency]}``
    - ``calculate_reload_order(sandbox_id, modules, *, pending=None) -> ReloadPlan``
    - ``plan_reload(sandbox_id, compiled, *, modules=None) -> ReloadProposal`` (the
      four above a reload needs, in one round trip)
    - ``unload(sandbox_id, module) -> [kept version]`` (no current version; history kept)
    - ``forget(sandbox_id) -> bool``; ``forget_many(ids) -> [bool]`` (a batch destroy's,
      one store transaction)
    - ``sandboxes() -> [sandbox_id]``
    """

    def __init__(
        self, *, history: int = DEFAULT_HISTORY, name: str | None = None, store: Store | None = None
    ) -> None:
        super().__init__(name=name or "versions")
        if not (isinstance(history, int) and history >= 1):
            raise ConfigError("history", history, "an int >= 1 (versions kept per module)")
        self.history = history
        self.store = store
        self._sandboxes: dict[str, _Sandbox] = {}
        if store is not None:
            self._load(store)

    def _load(self, store: Store) -> None:
        """Rebuild the books from the store (after a crash, or a host restart)."""
        for sandbox_id, module, current, last in store.modules():
            sb = self._sandboxes.setdefault(sandbox_id, _Sandbox())
            sb.modules[module] = _History(current=current, last=last)
        for v in store.versions():
            h = self._sandboxes[v.sandbox].modules[v.module]
            h.versions[v.version] = ModuleVersion(
                module=v.module, version=v.version, source_sha256=v.source_sha256,
                code_sha256=v.code_sha256, loaded_at=v.loaded_at, dependencies=v.dependencies,
                size=v.size, file=v.file, is_package=v.is_package, code=v.code, source=v.source,
            )
        for sandbox_id, sb in self._sandboxes.items():
            sb.log.extend(VersionEvent(*row) for row in store.version_log(sandbox_id))

    # -- lookups ---------------------------------------------------------------------
    def _sandbox(self, sandbox_id: str) -> _Sandbox:
        sb = self._sandboxes.get(sandbox_id)
        if sb is None:
            raise SandboxNotFound(sandbox_id, list(self._sandboxes))
        return sb

    def _module(self, sandbox_id: str, module: str) -> _History:
        sb = self._sandbox(sandbox_id)
        h = sb.modules.get(module)
        if h is None:
            known = ", ".join(sorted(sb.modules)) or "none"
            raise VersionNotFound(
                sandbox_id, module, None, [],
                f"sandbox {sandbox_id!r} has no recorded versions of module {module!r}; "
                f"recorded modules: {known}",
            )
        return h

    def _version(self, sandbox_id: str, module: str, version: int) -> ModuleVersion:
        h = self._module(sandbox_id, module)
        v = h.versions.get(version)
        if v is not None:
            return v
        kept = h.kept()
        span = f"{kept[0]}..{kept[-1]}" if len(kept) > 1 else str(kept[0])
        if isinstance(version, int) and 0 < version < kept[0]:
            why = (f"version {version} was evicted: only the last {self.history} versions are "
                   f"kept (versions {span})")
        else:
            why = f"there is no version {version!r} (kept versions: {span})"
        raise VersionNotFound(
            sandbox_id, module, version, kept,
            f"module {module!r} of sandbox {sandbox_id!r}: {why}",
        )

    # -- operations ------------------------------------------------------------------
    def op_record(
        self,
        sandbox_id: str,
        compiled_modules: Any,
        *,
        dry_run: bool = False,
        journal: str | None = None,
        removed: Iterable[str] = (),
    ) -> dict[str, int]:
        """Record newly loaded modules; returns each module's version (new or existing).

        Source identical to the current version (same sha256) makes no new version.
        With ``dry_run=True`` nothing changes: the result says which numbers a
        record would give (for ``code_change(old_vsn, ...)`` before the swap).
        ``journal``: the reload's journal entry, marked committed in the same
        store transaction; ``removed``: modules deleted from the app by the same
        reload (no longer current, their numbers stay taken).

        >>> # versions = ref.invoke("record", "sb1", result)   # after the swap committed
        """
        mods = _as_modules(compiled_modules)
        sb = self._sandboxes.get(sandbox_id)
        if sb is None:
            sb = _Sandbox()
            if not dry_run:
                self._sandboxes[sandbox_id] = sb
        out: dict[str, int] = {}
        now = time.time()
        fresh: list[ModuleVersion] = []
        for m in mods:
            h = sb.modules.get(m.name) or _History()
            cur = h.live()
            if cur is not None and cur.source_sha256 == m.source_sha256:
                out[m.name] = cur.version
                continue
            out[m.name] = number = h.last + 1
            fresh.append(ModuleVersion(
                module=m.name, version=number, source_sha256=m.source_sha256,
                code_sha256=m.code_sha256, loaded_at=now, dependencies=tuple(m.dependencies),
                size=m.size, file=m.file, is_package=m.is_package, code=m.code, source=m.source,
            ))
        if dry_run:
            return out
        removed = [m for m in removed if m in sb.modules and sb.modules[m].current]
        if self.store is not None:  # durable first: memory follows a committed write
            self.store.record_versions(
                sandbox_id, [_stored(sandbox_id, v) for v in fresh], keep=self.history,
                journal=journal, removed=removed)
        for gone in removed:
            sb.log.append(VersionEvent(now, gone, "removed", 0, sb.modules[gone].current))
            sb.modules[gone].current = 0
        for v in fresh:
            h = sb.modules.setdefault(v.module, _History())
            h.versions[v.version] = v
            previous = h.current or None
            h.last = h.current = v.version
            while len(h.versions) > self.history:
                h.versions.popitem(last=False)
            sb.log.append(VersionEvent(now, v.module, "recorded", v.version, previous))
        new = len(fresh)
        if not dry_run:
            telemetry.execute(
                "versions.record", {"modules": len(mods), "new_versions": new},
                {"sandbox": sandbox_id},
            )
        return out

    def op_changed_modules(self, sandbox_id: str, compiled_modules: Any) -> list[str]:
        """The modules whose source differs from their current version (or are new)."""
        sb = self._sandboxes.get(sandbox_id) or _Sandbox()
        out = []
        for m in _as_modules(compiled_modules):
            h = sb.modules.get(m.name)
            cur = h.live() if h else None
            if cur is None or cur.source_sha256 != m.source_sha256:
                out.append(m.name)
        return sorted(out)

    def op_get_current_version(self, sandbox_id: str, module: str) -> ModuleVersion:
        """The version of ``module`` the sandbox runs now."""
        h = self._module(sandbox_id, module)
        cur = h.live()
        if cur is None:
            raise VersionNotFound(
                sandbox_id, module, None, h.kept(),
                f"module {module!r} of sandbox {sandbox_id!r} is unloaded (or was removed from "
                f"the app); kept versions {h.kept()} (rollback_module loads one again)")
        return cur

    def op_current_code(self, sandbox_id: str) -> dict[str, ModuleVersion]:
        """``{module: current version}`` with code: what a restart of the sandbox boots."""
        sb = self._sandboxes.get(sandbox_id) or _Sandbox()
        return {n: v for n, h in sb.modules.items() if (v := h.live()) is not None}

    def op_list_module_versions(self, sandbox_id: str, module: str) -> list[ModuleVersion]:
        """The kept versions of ``module``, oldest first."""
        return list(self._module(sandbox_id, module).versions.values())

    def op_get_version(self, sandbox_id: str, module: str, version: int) -> ModuleVersion:
        """One kept version, with its code and source (what a rollback loads).

        Raises :class:`VersionNotFound` naming the kept versions if it was evicted.
        """
        return self._version(sandbox_id, module, version)

    def op_set_current(
        self, sandbox_id: str, module: str, version: int, *, journal: str | None = None
    ) -> ModuleVersion:
        """Mark a kept version as the one running (call after a rollback swap committed)."""
        v = self._version(sandbox_id, module, version)
        h = self._module(sandbox_id, module)
        if self.store is not None:
            self.store.set_current(sandbox_id, module, version, journal=journal)
        if h.current != version:
            previous, h.current = h.current, version
            self._sandboxes[sandbox_id].log.append(
                VersionEvent(time.time(), module, "current", version, previous)
            )
            telemetry.execute(
                "versions.set_current", {"count": 1},
                {"sandbox": sandbox_id, "module": module, "version": version,
                 "previous": previous},
            )
        return v

    def op_get_version_history(
        self, sandbox_id: str, module: str | None = None
    ) -> list[VersionEvent]:
        """What happened, oldest first: versions recorded and made current (last 1,000)."""
        sb = self._sandbox(sandbox_id)
        if module is not None:
            self._module(sandbox_id, module)
            return [e for e in sb.log if e.module == module]
        return list(sb.log)

    def op_get_dependency_graph(self, sandbox_id: str) -> dict[str, list[str]]:
        """``{module: [app modules it imports]}`` for the current versions."""
        sb = self._sandbox(sandbox_id)
        return self._graph(sb)

    @staticmethod
    def _graph(sb: _Sandbox) -> dict[str, list[str]]:
        graph = {}
        for name, h in sb.modules.items():
            cur = h.live()
            if cur is not None:
                graph[name] = list(cur.dependencies)
        return graph

    def op_calculate_reload_order(
        self,
        sandbox_id: str,
        modules: Iterable[str],
        *,
        pending: Any = None,
    ) -> ReloadPlan:
        """The reload plan for ``modules`` and their dependents, dependencies first.

        ``pending``: modules compiled but not yet recorded (a CompilationResult, a
        mapping of name to CompiledModule or to dependency names): their new
        imports are used instead of the recorded ones, and new modules are known.

        >>> # plan = ref.invoke("calculate_reload_order", "sb1", ["b"], pending=result)
        """
        sb = self._sandboxes.get(sandbox_id)
        if sb is None:
            if pending is None:
                raise SandboxNotFound(sandbox_id, list(self._sandboxes))
            sb = _Sandbox()
        graph = self._graph(sb)
        if isinstance(pending, CompilationResult):
            pending = pending.modules
        for name, deps in (pending or {}).items():
            graph[name] = list(deps.dependencies if isinstance(deps, CompiledModule) else deps)
        wanted = sorted(set(modules))
        unknown = [m for m in wanted if m not in graph]
        if unknown:
            raise VersionNotFound(
                sandbox_id, unknown[0], None, [],
                f"sandbox {sandbox_id!r} has no module {', '.join(map(repr, unknown))}: "
                "record it, or pass its compile result as pending=",
            )
        # Only edges between modules of the app: a recorded dependency that is gone
        # (file deleted) is not reloaded.
        graph = {n: [d for d in deps if d in graph] for n, deps in graph.items()}
        return reload_order(graph, wanted)

    def op_plan_reload(
        self,
        sandbox_id: str,
        compiled: CompilationResult | Mapping[str, CompiledModule],
        *,
        modules: Iterable[str] | None = None,
        removed: Iterable[str] = (),
    ) -> ReloadProposal:
        """``changed_modules`` (unless ``modules`` names them), ``get_dependency_graph``,
        ``calculate_reload_order`` and a dry-run ``record`` of a compile result, as one
        operation: a hot reload asks the version manager once before its swap.
        With nothing wanted and nothing ``removed``, only ``wanted`` is filled in.

        >>> # proposal = ref.invoke("plan_reload", "sb1", result)
        """
        wanted = (self.op_changed_modules(sandbox_id, compiled) if modules is None
                  else list(modules))
        if not wanted and not list(removed):
            return ReloadProposal([], {}, None, {})
        graph = self.op_get_dependency_graph(sandbox_id)
        plan = self.op_calculate_reload_order(sandbox_id, wanted, pending=compiled)
        by_name = compiled.modules if isinstance(compiled, CompilationResult) else compiled
        numbers = self.op_record(sandbox_id, [by_name[m] for m in wanted], dry_run=True)
        return ReloadProposal(wanted, graph, plan, numbers)

    def op_unload(self, sandbox_id: str, module: str) -> list[int]:
        """Mark ``module`` as no longer loaded (``Sandbox.unload_module``): it leaves the
        current versions and the dependency graph; its kept versions stay, so a
        rollback loads it again. Returns the kept version numbers."""
        h = self._module(sandbox_id, module)
        if h.current:
            if self.store is not None:
                self.store.record_versions(sandbox_id, [], keep=self.history, removed=[module])
            previous, h.current = h.current, 0
            self._sandboxes[sandbox_id].log.append(
                VersionEvent(time.time(), module, "unloaded", 0, previous)
            )
            telemetry.execute("versions.unload", {"count": 1},
                              {"sandbox": sandbox_id, "module": module, "previous": previous})
        return h.kept()

    def op_forget(self, sandbox_id: str) -> bool:
        """Drop everything about a sandbox (destroyed); returns whether it was known."""
        return self.op_forget_many([sandbox_id])[0]

    def op_forget_many(self, sandbox_ids: list[str]) -> list[bool]:
        """:meth:`op_forget` of each sandbox (a batch destroy), one store transaction
        for all; returns whether each was known."""
        if self.store is not None:
            self.store.delete_sandboxes(sandbox_ids)
        return [self._sandboxes.pop(sid, None) is not None for sid in sandbox_ids]

    def op_sandboxes(self) -> list[str]:
        """Ids of the sandboxes with recorded versions."""
        return sorted(self._sandboxes)


def _stored(sandbox_id: str, v: ModuleVersion) -> StoredVersion:
    return StoredVersion(
        sandbox_id, v.module, v.version, v.source_sha256, v.code_sha256, v.loaded_at,
        v.dependencies, v.size, v.file, v.is_package, v.code, v.source,
    )
