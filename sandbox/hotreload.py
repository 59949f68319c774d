"""Hot reload and rollback, host side: compile, plan, swap inside the sandbox, record.

1. The compiler actor compiles (and scans) what changed: the files whose bytes
   differ from the source the sandbox runs (or the ``changed_files`` given, or the
   ``source`` given, compiled in a copy of the app and made to name the app's
   files). Errors stop here with :class:`~runtime.errors.CompileError` and
   nothing else happens.
2. The version manager says which modules really changed (same source, no new
   version) and the reload order: dependencies first, dependents re-staged so a
   ``from m import f`` binds the new ``f``, import cycles as one unit.
3. The sandbox swaps atomically (:mod:`runtime.child.swap`): on failure it keeps its old
   code and state and this raises :class:`~runtime.errors.ReloadFailed` naming the
   step and the module; the version history is left unchanged.
4. Only after the swap committed are the new versions recorded, and the sandbox's
   slot updated so a crash restart boots the new code.

One truth about a reload: before the swap, a ``pending`` entry goes into the
reload journal (:mod:`actors.store`); the sandbox commits only before the reload's
deadline and only if the host has not cancelled it (:func:`runtime.child.swap.cancel_reload`).
The host waits ``timeout`` plus :data:`VERDICT_GRACE` for the report; if none
comes, it cancels and gets the sandbox's final verdict. The new versions, the
slot and the journal entry (``committed``) are written in one store transaction
only for a committed swap; anything else marks it ``failed`` and the old code
keeps serving. A host killed mid-reload leaves it ``pending``: the next start marks
it ``abandoned`` and boots the recorded (old) code, which is what ran.

Modules whose file was deleted are unloaded (``removed`` in the report), or the
reload is refused naming the modules that still import them.

A ``migrate`` function crosses to the sandbox as cloudpickle bytes, by value
unless it belongs to the app, and is loaded inside the swap: one the sandbox
cannot load fails that step cleanly.

Reloads of one sandbox never overlap: each holds the sandbox's reload lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import marshal
import os
import shutil
import tempfile
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from actors.config import compiler_options
from actors.containment import audit_warned
from runtime import logs, telemetry
from runtime.actor import ExitReason
from runtime.child.swap import ModuleCode
from runtime.errors import (
    ActorDead, ActorError, CallTimeout, ReloadFailed, SandboxError, SecurityViolation,
)
from runtime.wire.shipping import ship
from sandbox.reload_ack import shipped_digests, still_serving, verify_swap

if TYPE_CHECKING:
    from sandbox.api import Runtime

__all__ = ["ReloadReport", "check_arguments", "hot_reload", "rollback_module", "unload_module"]

COMPILE_TIMEOUT = 120.0
#: Seconds the host waits for the sandbox's verdict beyond the reload's timeout
#: (the sandbox never commits after its deadline, so a late reply is a failure).
VERDICT_GRACE = 5.0
#: Seconds a committed swap waits for a restarting version manager to record it.
RECORD_TIMEOUT = 30.0
#: Seconds a reload waits for the manager to mark the sandbox ``reloading``.
MANAGER_TIMEOUT = 60.0


@dataclass
class ReloadReport:
    """What one reload (or rollback) did.

    ``modules``: every module swapped, in reload order (changed ones and their
    dependents); ``changed``: those whose source changed; ``versions``: the version
    now current for each changed module; ``cycles``: import cycles reloaded as one
    unit; ``actors``: actors migrated; ``children``: child specs added, removed,
    changed or failed (``"id: error"``) by the app's new entry; ``warnings``: what
    the swap carried over but could not update (old functions or generators kept
    in an actor's state, child specs that could not be applied); ``duration``: API
    call to commit; ``suspend_seconds``: waiting for the actors to pause;
    ``swap_seconds``: actors held (staging, migration, commit); ``removed``: loaded
    modules whose file was deleted, unloaded by this reload (a reload is refused
    while a module that stays imports one; ``Sandbox.unload_module`` unloads a
    module whose file is still there, see :func:`unload_module`); ``journal``: the
    reload's journal id.
    """

    sandbox: str
    kind: str = "reload"
    ok: bool = True
    modules: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)
    cycles: list[list[str]] = field(default_factory=list)
    actors: int = 0
    warnings: list[str] = field(default_factory=list)
    diagnostics: list[str] = field(default_factory=list)
    children: dict[str, list[str]] = field(default_factory=dict)
    duration: float = 0.0
    suspend_seconds: float = 0.0
    swap_seconds: float = 0.0
    at: float = 0.0
    error: str | None = None
    removed: list[str] = field(default_factory=list)
    journal: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def check_arguments(sandbox_id: str, *, source: Any = None, modules: Any = None) -> None:
    """Refuse a ``source=`` or ``modules=`` of the wrong shape before anything runs:
    TypeError for the wrong types, ReloadFailed for a file name where a module name
    belongs. Both say what the parameter takes.

    >>> check_arguments("s1", source={"app": "x = 1"}, modules=["app"])
    >>> try:
    ...     check_arguments("s1", source={"app.py": "x = 1"})
    ... except ReloadFailed as exc:
    ...     print(str(exc).split("; ")[-1])
    'app.py' is not a module name: use 'app'
    >>> check_arguments("s1", modules="app")
    Traceback (most recent call last):
    ...
    TypeError: modules= takes module names, e.g. modules=['app'], not a str
    """
    shape = "source= maps module names to source text, e.g. source={'app': text}"
    if source is not None:
        if not isinstance(source, Mapping):
            raise TypeError(f"{shape}, not a {type(source).__name__}")
        for name, text in source.items():
            if not isinstance(name, str):
                raise TypeError(f"{shape}; got a {type(name).__name__} key {name!r}")
            # "app.py" would parse as module "py" of a package "app": a file name here
            if name.endswith(".py") or not all(p.isidentifier() for p in name.split(".")):
                fix = name.removesuffix(".py").replace("/", ".").replace(os.sep, ".")
                hint = f": use {fix!r}" if all(p.isidentifier() for p in fix.split(".")) else ""
                raise ReloadFailed(f"sandbox {sandbox_id!r}: {shape}; {name!r} is not a "
                                   f"module name{hint}", module=name, step="arguments")
            if not isinstance(text, str):
                raise TypeError(f"{shape}; the value for {name!r} is a {type(text).__name__}"
                                + (" (decode it first)" if isinstance(text, bytes) else ""))
    if modules is not None:
        if isinstance(modules, (str, bytes)) or not isinstance(modules, Iterable):
            raise TypeError("modules= takes module names, e.g. modules=['app'], not a "
                            f"{type(modules).__name__}")
        if isinstance(modules, (list, tuple, set, frozenset)):  # an iterator stays unread
            for name in modules:
                if not isinstance(name, str):
                    raise TypeError("modules= takes module names, e.g. modules=['app']; "
                                    f"got a {type(name).__name__} {name!r}")


def _overlay(app: str, workdir: str, source: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """A copy of the app with some modules' source replaced (``hot_reload(source=...)``).

    Returns the copy's directory and ``{file in the copy: file in the app}`` for the
    modules replaced.
    """
    target = tempfile.mkdtemp(prefix="overlay-", dir=workdir)
    shutil.copytree(app, target, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", ".git"))
    written: dict[str, str] = {}
    for module, text in source.items():
        rel = Path(*module.split("."))
        path = Path(target) / rel / "__init__.py" if (Path(target) / rel).is_dir() else \
            Path(target) / rel.with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written[str(path)] = os.path.join(os.path.abspath(app), str(path.relative_to(target)))
    return target, written


def _relocate_code(code: types.CodeType, file: str) -> types.CodeType:
    consts = tuple(_relocate_code(c, file) if isinstance(c, types.CodeType) else c
                   for c in code.co_consts)
    return code.replace(co_filename=file, co_consts=consts)


def _relocate(result: Any, overlay: str, app: str, files: Mapping[str, str]) -> None:
    """Make modules compiled in an overlay look compiled at their place in the app:
    ``__file__``, tracebacks and diagnostics name the app's files, not the overlay
    (which is removed once the reload is done)."""
    app = os.path.abspath(app)

    def real(path: str) -> str:
        if path in files:
            return files[path]
        return app + path[len(overlay):] if path.startswith(overlay) else path

    for name, m in list(result.modules.items()):
        file = real(m.file)
        if file == m.file:
            continue
        code = marshal.dumps(_relocate_code(marshal.loads(m.code), file))
        result.modules[name] = type(m).build(
            name, file, m.source, code, dependencies=m.dependencies,
            from_cache=m.from_cache, is_package=m.is_package,
        )
    for diags in (result.errors, result.warnings):
        diags[:] = [dataclasses.replace(d, file=real(d.file)) for d in diags]
    result.root = app


def hot_reload(
    rt: Runtime,
    sandbox_id: str,
    *,
    modules: Iterable[str] | None = None,
    source: Mapping[str, str] | None = None,
    migrate: Callable[[Any, Any, Any], Any] | None = None,
    extra: Any = None,
    changed_files: Iterable[str | os.PathLike[str]] | None = None,
    timeout: float = 30.0,
    compile_timeout: float | None = None,
    compile_memory_mb: int | None = None,
    compile_cpu_seconds: int | None = None,
    owner: Callable[[float], None] | None = None,
) -> ReloadReport:
    """Swap changed code into a running sandbox, keeping every actor's state.

    - ``modules``: reload only these modules (default: every module whose source
      changed on disk).
    - ``source``: ``{module: source text}`` to load instead of what is on disk.
    - ``migrate``: ``migrate(old_state, old_vsn, new_vsn) -> new_state`` used instead
      of each changed class's ``code_change`` (crosses to the sandbox by
      cloudpickle, so not under the ``high`` profile).
    - ``extra``: passed to ``code_change(old_vsn, state, extra)``.
    - ``changed_files``: compile only these files (the watcher's incremental path).
    - ``timeout``: seconds for the swap inside the sandbox (suspending the actors
      waits at most 10 of them).
    - ``compile_timeout``, ``compile_memory_mb``, ``compile_cpu_seconds``: this
      reload's compile limits (each module's wall time, the worker's memory, each
      module's CPU time); default: the sandbox's (``create_sandbox``), else the
      compiler's (10 s, 1 GiB, timeout + 1 s).
    - ``owner``: called with the sandbox's ``created_at`` from the reload's first
      round trip, before anything is compiled or swapped; it raises to refuse (a
      :class:`~sandbox.api.Sandbox` handle whose sandbox was replaced under its id).

    Raises CompileError (nothing was swapped) or ReloadFailed (the sandbox still
    runs its previous code and state).
    """
    check_arguments(sandbox_id, source=source, modules=modules)
    t0 = time.perf_counter()
    # One round trip to each component a reload needs (manager, compiler, versions
    # before the swap; versions and manager after). The reads and the compile run
    # on this thread when their component is idle (invoke_here): a reload's steps
    # run one after another, so a hand-off to a component's thread is pure wait (a
    # scheduler wake-up each way). The status marks go to the manager unwaited.
    ctx = rt._read("reload_context", sandbox_id, here=True)
    if owner is not None:
        owner(ctx.created_at)
    if migrate is not None and ctx.profile == "high":
        raise SecurityViolation(
            f"sandbox {sandbox_id!r} runs under the 'high' profile, which cannot receive "
            "functions: use code_change in the new class instead of migrate="
        )
    slot = ctx.slot
    compiler, versions = rt.component("compiler"), rt.component("versions")
    report = ReloadReport(sandbox=sandbox_id, at=time.time())
    meta = {"sandbox": sandbox_id, "runtime": rt.name}
    with slot.reload_lock, telemetry.span("sandbox.reload", meta) as span_md, \
            _recorded(rt, slot, report, t0) as marked:
        overlay = None
        removed: list[str] = []
        try:
            cache = ctx.cache_dir
            # In place when the compiler is idle: each module's compile is bounded by
            # its own limits (its time and CPU in the worker), as on the compiler's
            # thread; the timeout caps the wait for a compiler busy with another.
            compile_ = compiler.invoke_here
            opts: dict[str, Any] = {
                "profile": ctx.profile, "cache_dir": cache, "timeout": COMPILE_TIMEOUT,
                # the sandbox's compile options, unless this call overrides them
                **compiler_options(ctx.compile or {}, compile_timeout=compile_timeout,
                                   compile_memory_mb=compile_memory_mb,
                                   compile_cpu_seconds=compile_cpu_seconds),
            }
            if source:
                # Only the modules given are compiled (the rest of the copy is there
                # so their imports resolve), then made to look compiled in the app.
                overlay, written = _overlay(ctx.path, ctx.workdir, source)
                result = compile_("incremental_compile", overlay, list(written), **opts)
                _relocate(result, overlay, ctx.path, written)
            elif changed_files is not None:
                result = compile_(
                    "incremental_compile", ctx.path, list(changed_files), **opts
                )
            elif modules is not None:
                result = compile_("compile_sandbox", ctx.path, **opts)
            else:
                # Compile only the files whose bytes differ from the code the sandbox
                # runs (compared, never judged by mtime): no cache lookups for the rest.
                running = {n: (mc.file, mc.source) for n, mc in slot.modules.items()}
                result = compile_("compile_sandbox", ctx.path, running=running, **opts)
            report.diagnostics = [str(d) for d in result.diagnostics]
            audit_warned(rt.component("security"), sandbox_id, result)  # profile's warn groups
            result.raise_for_errors()
            # Deleted files: their modules are unloaded by this swap (or it is refused).
            removed = [] if source else _loaded_but_deleted(result, slot.modules)
            asked = None
            if modules is not None:
                asked = list(dict.fromkeys(modules))
                missing = [m for m in asked if m not in result.modules]
                if missing:
                    raise ReloadFailed(
                        f"cannot reload {', '.join(missing)}: not a module of the app "
                        f"(modules: {', '.join(sorted(result.modules))})",
                        module=missing[0], step="plan",
                    )
            # In place when the version manager is idle: its work is in memory, and a
            # reload's steps run one after another, so a hand-off is pure wait.
            proposal = versions.invoke_here("plan_reload", sandbox_id, result, modules=asked,
                                            removed=removed)  # actors/versions.py
            wanted, plan, new_versions = proposal.wanted, proposal.plan, proposal.versions
            if not wanted and not removed:
                span_md.update(modules=[], changed=[])
                return report
            _check_importers(proposal.graph, result.modules, removed)
            units = [
                [_code_for(m, result.modules, slot.modules, new_versions).to_wire() for m in unit]
                for unit in plan.units
            ]
            shipped = None if migrate is None else ship(migrate, set(slot.modules) | set(result.modules))
            marked()
            with _journal(rt, report, new_versions) as rid:
                if result.recompiled:
                    # The compile ran here, and left its cache entries unwritten: the
                    # compiler's thread writes them while this one waits for the swap.
                    with contextlib.suppress(ActorDead):  # ended since: it writes them as it ends
                        compiler.send("write_cache")
                swap, proc = _swap(rt, slot, sandbox_id, units, wanted, shipped, extra,
                                   timeout, removed=removed, reload_id=rid)
                report.versions = _record_committed(
                    rt, slot, "record", sandbox_id, [result.modules[m] for m in wanted],
                    journal=rid, removed=removed,
                )
            for unit in plan.units:
                for m in unit:
                    slot.modules[m] = _code_for(m, result.modules, slot.modules, report.versions)
            for m in removed:
                slot.modules.pop(m, None)
            _check_still_serving(slot, proc, report)
            report.modules, report.changed, report.cycles = plan.modules, list(wanted), plan.cycles
            report.removed = list(removed)
            _fill(report, swap)
            span_md.update(modules=report.modules, changed=report.changed, versions=report.versions)
        finally:
            if overlay:
                shutil.rmtree(overlay, ignore_errors=True)
    return report


def rollback_module(
    rt: Runtime,
    sandbox_id: str,
    module: str,
    version: int,
    *,
    extra: Any = None,
    timeout: float = 30.0,
) -> ReloadReport:
    """Swap a kept older (or newer) version of ``module`` back in; state is migrated.

    The target class's ``code_change`` gets the version being left as ``old_vsn``
    (greater than its own ``vsn`` for a downgrade). Its dependents are re-staged.
    """
    t0 = time.perf_counter()
    slot = rt._slot(sandbox_id)
    versions = rt.component("versions")
    report = ReloadReport(sandbox=sandbox_id, kind="rollback", at=time.time())
    meta = {"sandbox": sandbox_id, "runtime": rt.name, "module": module, "version": version}
    with slot.reload_lock, telemetry.span("sandbox.rollback", meta), \
            _recorded(rt, slot, report, t0) as marked:
        target = versions.invoke("get_version", sandbox_id, module, version)
        # pending: an unloaded module is not in the current graph, its version is
        plan = versions.invoke("calculate_reload_order", sandbox_id, [module],
                               pending={module: list(target.dependencies)})
        chosen = {module: ModuleCode.from_compiled(target, version)}
        units = [[(chosen.get(m) or slot.modules[m]).to_wire() for m in unit]
                 for unit in plan.units]
        marked()
        with _journal(rt, report, {module: version}) as rid:
            swap, proc = _swap(rt, slot, sandbox_id, units, [module], None, extra, timeout,
                               reload_id=rid)
            _record_committed(rt, slot, "set_current", sandbox_id, module, version, journal=rid)
        slot.modules[module] = chosen[module]
        _check_still_serving(slot, proc, report)
        report.modules, report.changed, report.cycles = plan.modules, [module], plan.cycles
        report.versions = {module: version}
        _fill(report, swap)
    return report


def unload_module(
    rt: Runtime, sandbox_id: str, module: str, *, timeout: float = 30.0
) -> ReloadReport:
    """Remove ``module`` from a running sandbox and from its current versions.

    Refused (:class:`~runtime.errors.ReloadFailed`, step ``unload``, nothing
    changed) while another loaded module imports it, for the app's entry module,
    a package with loaded submodules, or a module whose classes actors run. Its
    kept versions stay: ``rollback_module(module, version)`` loads it again.
    Returns a report of kind ``unload``.
    """
    t0 = time.perf_counter()
    slot = rt._slot(sandbox_id)
    versions = rt.component("versions")
    report = ReloadReport(sandbox=sandbox_id, kind="unload", at=time.time())
    meta = {"sandbox": sandbox_id, "runtime": rt.name, "module": module}
    with slot.reload_lock, telemetry.span("sandbox.unload", meta), \
            _recorded(rt, slot, report, t0) as marked:
        if module not in slot.modules:
            raise ReloadFailed(
                f"sandbox {sandbox_id!r} has no loaded module {module!r} "
                f"(loaded: {', '.join(sorted(slot.modules)) or 'none'})",
                module=module, step="unload")
        graph = versions.invoke("get_dependency_graph", sandbox_id)
        importers = sorted(m for m, deps in graph.items() if module in deps and m != module)
        if importers:
            raise ReloadFailed(
                f"cannot unload module {module!r} of sandbox {sandbox_id!r}: loaded module "
                f"{', '.join(importers)} import{'s' if len(importers) == 1 else ''} it; remove "
                "the import (and reload) or unload those first; nothing was changed",
                module=module, step="unload")
        marked()
        payload = {"module": module, "correlation_id": logs.current_id()}
        result = slot.get(timeout).system("unload_module", payload, timeout=timeout)
        if not result.get("ok"):
            raise ReloadFailed(f"sandbox {sandbox_id!r}: {result.get('error')}",
                               module=module, step=result.get("step") or "unload")
        _record_committed(rt, slot, "unload", sandbox_id, module)
        del slot.modules[module]  # a crash restart boots without it too
        report.modules, report.removed = [module], [module]
    return report


@contextmanager
def _recorded(
    rt: Runtime, slot: Any, report: ReloadReport, t0: float
) -> Iterator[Callable[[], None]]:
    """Status ``reloading`` for the duration; the outcome kept as the slot's last reload.

    Yields ``marked()``, which waits for the manager to have set the status (and
    raises what setting it raised): called before the swap, by when the manager
    has long answered, so the mark costs no wait of its own. Status changes go to
    the manager in order, so one set back when the body ends (not waited for) is
    seen by anything this thread asks the manager next.
    """
    sandbox_id = report.sandbox
    pending = rt.component("manager").send("set_status", sandbox_id, "reloading")
    try:
        yield lambda: pending.result(timeout=MANAGER_TIMEOUT)
    except BaseException as exc:
        report.ok, report.error = False, f"{type(exc).__name__}: {exc}"
        raise
    finally:
        report.duration = time.perf_counter() - t0
        slot.last_reload = report.as_dict()
        _set_status_back(rt, sandbox_id)


def _record_committed(rt: Runtime, slot: Any, op: str, *args: Any, **kwargs: Any) -> Any:
    """Record what the sandbox has committed. The version manager may be restarting:
    retried (``record`` and ``set_current`` are idempotent) until it answers, up to
    :data:`RECORD_TIMEOUT`; past that, the sandbox's process is restarted so that it
    runs the recorded code, and ReloadFailed says so."""
    deadline = time.monotonic() + RECORD_TIMEOUT
    while True:
        try:
            versions = rt.component("versions", timeout=max(0.1, deadline - time.monotonic()))
            # In place when it is idle: a store write (bounded by the store's own
            # lock timeout), with no hand-off to and from the version manager's thread.
            return versions.invoke_here(op, *args, **kwargs)
        except ActorError:
            pass  # it died during the call: its successor has read the store
        except SandboxError as exc:
            if type(exc) is not SandboxError:  # not "component not running": a real refusal
                raise
        if time.monotonic() > deadline:
            proc = slot.current()
            if proc is not None:
                proc.kill(ExitReason("exception", "reload committed but not recorded"))
            raise ReloadFailed(
                f"sandbox {args[0]!r}: the swap committed but the version manager did not "
                f"come back within {RECORD_TIMEOUT}s to record it; the sandbox was restarted "
                "with its previous code", step="record")


@contextmanager
def _journal(rt: Runtime, report: ReloadReport, versions: Mapping[str, int]) -> Iterator[str]:
    """A ``pending`` journal entry for the swap; ``failed`` unless the body committed it
    (the version manager closes it in the transaction that records the versions)."""
    store = rt.state.store
    rid = f"{report.sandbox}-{time.time_ns():x}"
    report.journal = rid
    if store is not None:
        store.journal_begin(rid, report.sandbox, report.kind, dict(versions))
    try:
        yield rid
    except BaseException as exc:
        if store is not None:
            store.journal_fail(rid, f"{type(exc).__name__}: {exc}")
        raise


def _check_importers(
    graph: Mapping[str, list[str]], compiled: Mapping[str, Any], removed: list[str]
) -> None:
    """Refuse to unload a deleted module that a module staying in the app still imports."""
    if not removed:
        return
    deps = {m: list(d) for m, d in graph.items()}
    deps.update({m: list(c.dependencies) for m, c in compiled.items()})
    for gone in removed:
        importers = sorted(m for m, d in deps.items() if gone in d and m not in removed)
        if importers:
            raise ReloadFailed(
                f"module {gone!r} was deleted but {', '.join(map(repr, importers))} still "
                f"import{'s' if len(importers) == 1 else ''} it: remove those imports or "
                "restore the file, then reload; nothing was changed",
                module=gone, step="plan",
            )


def _loaded_but_deleted(result: Any, current: Mapping[str, ModuleCode]) -> list[str]:
    """Loaded modules whose file is gone (what a reload cannot swap, only unload)."""
    gone = set(getattr(result, "removed", None) or ())
    gone |= {name for name, mc in current.items() if mc.file and not os.path.exists(mc.file)}
    return sorted(gone & set(current))


def _check_still_serving(slot: Any, proc: Any, report: ReloadReport) -> None:
    """The swap is recorded and ``slot.modules`` names its code: if the process that
    swapped has been replaced meanwhile, say so (reload_ack.still_serving restarts
    a replacement that may have booted the code recorded before)."""
    if not still_serving(slot, proc):
        report.warnings.append(
            "the sandbox's process restarted during the reload: it runs the new code, "
            "but its actors started afresh (their state was not kept)")


def _fill(report: ReloadReport, swap: Mapping[str, Any]) -> None:
    report.actors = swap["actors"]
    report.warnings += list(swap["warnings"])
    report.children = dict(swap.get("children") or {})
    report.warnings += [f"child spec not applied: {f}" for f in report.children.get("failed", [])]
    report.suspend_seconds = swap.get("suspend_seconds", 0.0)
    report.swap_seconds = swap.get("swap_seconds", 0.0)


def _code_for(
    name: str,
    compiled: Mapping[str, Any],
    current: Mapping[str, ModuleCode],
    versions: Mapping[str, int],
) -> ModuleCode:
    if name in compiled:
        return ModuleCode.from_compiled(compiled[name], versions.get(name, 0))
    return current[name]  # a dependent whose source did not change: re-staged as it is


def _swap(
    rt: Runtime,
    slot: Any,
    sandbox_id: str,
    units: list[list[dict[str, Any]]],
    changed: list[str],
    migrate: Any,
    extra: Any,
    timeout: float,
    *,
    reload_id: str,
    removed: list[str] | None = None,
) -> tuple[dict[str, Any], Any]:
    """Ask the sandbox to swap: its report and the process that made it (the verdict,
    whatever times out: see the module doc)."""
    payload = {"units": units, "changed": changed, "migrate": migrate, "extra": extra,
               "suspend_timeout": min(timeout, 10.0), "removed": removed or [],
               "reload_id": reload_id, "timeout": timeout}
    payload.update(correlation_id=logs.current_id(), log=logs.settings())  # runtime/logs.py
    proc = slot.get(timeout)
    try:
        result = proc.system("reload", payload, timeout=timeout + VERDICT_GRACE)
    except CallTimeout:
        try:
            verdict = proc.system("reload_cancel", reload_id, timeout=VERDICT_GRACE * 2)
        except SandboxError:
            # No verdict to be had: restart the process, which boots the recorded code.
            proc.kill(ExitReason("exception", "no verdict on a timed-out reload"))
            verdict = "abandoned (the sandbox did not answer and was restarted)"
        if verdict != "committed":
            raise ReloadFailed(
                f"sandbox {sandbox_id!r}: the swap did not finish within {timeout}s and was "
                f"{verdict} in the sandbox; the previous code and state keep serving "
                "(raise timeout= for a slow code_change)",
                module=changed[0] if changed else None, step="timeout",
            ) from None
        verify_swap(proc, sandbox_id, shipped_digests(units), None)
        return {"actors": 0, "warnings": [
            f"the sandbox committed the swap but its report did not arrive within {timeout}s"]
        }, proc
    if not result.get("ok"):
        err = ReloadFailed(
            f"sandbox {sandbox_id!r}: {result.get('error')}",
            module=result.get("module"),
            step=result.get("step"),
        )
        err.remote_traceback = result.get("traceback", "")  # type: ignore[attr-defined]
        raise err
    # Recorded only if the sandbox installed, and serves, exactly what was shipped.
    verify_swap(proc, sandbox_id, shipped_digests(units), result.get("installed", {}))
    return result, proc


def _set_status_back(rt: Runtime, sandbox_id: str) -> None:
    """Status ``running`` again (unless something else changed it meanwhile), not
    waited for: a sandbox destroyed meanwhile makes it a no-op."""
    try:
        rt.component("manager").send("set_status", sandbox_id, "running", "reloading")
    except SandboxError:
        pass  # destroyed meanwhile, or no manager running to tell
