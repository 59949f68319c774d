"""Hot reload and rollback, host side: compile, plan, swap inside the sandbox, record.

1. The compiler actor compiles (and scans) what changed; errors stop here with
   :class:`~runtime.errors.CompileError` and nothing else happens.
2. The version manager says which modules really changed (same source, no new
   version) and the reload order: dependencies first, dependents re-staged so a
   ``from m import f`` binds the new ``f``, import cycles as one unit.
3. The sandbox swaps atomically (:mod:`runtime.swap`): on failure it keeps its old
   code and state and this raises :class:`~runtime.errors.ReloadFailed` naming the
   step and the module; the version history is left unchanged.
4. Only after the swap committed are the new versions recorded, and the sandbox's
   slot updated so a crash restart boots the new code.

Reloads of one sandbox never overlap: each holds the sandbox's reload lock.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import telemetry
from .errors import ReloadFailed, SandboxError, SecurityViolation
from .swap import ModuleCode

if TYPE_CHECKING:
    from .api import Runtime

__all__ = ["ReloadReport", "hot_reload", "rollback_module"]

COMPILE_TIMEOUT = 120.0


@dataclass
class ReloadReport:
    """What one reload (or rollback) did.

    ``modules``: every module swapped, in reload order (changed ones and their
    dependents); ``changed``: those whose source changed; ``versions``: the version
    now current for each changed module; ``cycles``: import cycles reloaded as one
    unit; ``actors``: actors migrated; ``children``: child specs added, removed or
    changed by the app's new entry.
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
    swap_seconds: float = 0.0
    at: float = 0.0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _overlay(app: str, workdir: str, source: Mapping[str, str]) -> str:
    """A copy of the app with some modules' source replaced (``hot_reload(source=...)``)."""
    target = tempfile.mkdtemp(prefix="overlay-", dir=workdir)
    shutil.copytree(app, target, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", ".git"))
    for module, text in source.items():
        rel = Path(*module.split("."))
        path = Path(target) / rel / "__init__.py" if (Path(target) / rel).is_dir() else \
            Path(target) / rel.with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return target


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

    Raises CompileError (nothing was swapped) or ReloadFailed (the sandbox still
    runs its previous code and state).
    """
    t0 = time.perf_counter()
    info = rt.get_sandbox_info(sandbox_id)
    if migrate is not None and info["profile"] == "high":
        raise SecurityViolation(
            f"sandbox {sandbox_id!r} runs under the 'high' profile, which cannot receive "
            "functions: use code_change in the new class instead of migrate="
        )
    slot = rt._slot(sandbox_id)
    compiler, versions = rt.component("compiler"), rt.component("versions")
    report = ReloadReport(sandbox=sandbox_id, at=time.time())
    meta = {"sandbox": sandbox_id, "runtime": rt.name}
    with slot.reload_lock, telemetry.span("sandbox.reload", meta) as span_md:
        rt._manager("set_status", sandbox_id, "reloading")
        overlay = None
        try:
            cache = rt._manager("cache_dir", sandbox_id)
            opts = {"profile": info["profile"], "cache_dir": cache, "timeout": COMPILE_TIMEOUT}
            if source:
                overlay = _overlay(info["path"], info["workdir"], source)
                result = compiler.invoke("compile_sandbox", overlay, **opts)
            elif changed_files is not None:
                result = compiler.invoke("incremental_compile", info["path"], list(changed_files), **opts)
            else:
                result = compiler.invoke("compile_sandbox", info["path"], **opts)
            report.diagnostics = [str(d) for d in result.diagnostics]
            result.raise_for_errors()
            if modules is not None:
                wanted = list(dict.fromkeys(modules))
                missing = [m for m in wanted if m not in result.modules]
                if missing:
                    raise ReloadFailed(
                        f"cannot reload {', '.join(missing)}: not a module of the app "
                        f"(modules: {', '.join(sorted(result.modules))})",
                        module=missing[0], step="plan",
                    )
            else:
                wanted = versions.invoke("changed_modules", sandbox_id, result)
            if not wanted:
                report.duration = time.perf_counter() - t0
                span_md.update(modules=[], changed=[])
                slot.last_reload = report.as_dict()
                return report
            plan = versions.invoke("calculate_reload_order", sandbox_id, wanted, pending=result)
            new_versions = versions.invoke(
                "record", sandbox_id, [result.modules[m] for m in wanted], dry_run=True
            )
            units = [
                [_code_for(m, result.modules, slot.modules, new_versions).to_wire() for m in unit]
                for unit in plan.units
            ]
            swap = _swap(rt, slot, sandbox_id, units, wanted, migrate, extra, timeout)
            report.versions = versions.invoke(
                "record", sandbox_id, [result.modules[m] for m in wanted]
            )
            for unit in plan.units:
                for m in unit:
                    slot.modules[m] = _code_for(m, result.modules, slot.modules, report.versions)
            report.modules, report.changed, report.cycles = plan.modules, list(wanted), plan.cycles
            report.actors, report.warnings = swap["actors"], swap["warnings"]
            report.children = swap.get("children", {})
            report.swap_seconds = swap.get("swap_seconds", 0.0)
            span_md.update(modules=report.modules, changed=report.changed, versions=report.versions)
        except BaseException as exc:
            report.ok, report.error = False, f"{type(exc).__name__}: {exc}"
            report.duration = time.perf_counter() - t0
            slot.last_reload = report.as_dict()
            raise
        finally:
            if overlay:
                shutil.rmtree(overlay, ignore_errors=True)
            _set_status_back(rt, sandbox_id)
    report.duration = time.perf_counter() - t0
    slot.last_reload = report.as_dict()
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
    with slot.reload_lock, telemetry.span("sandbox.rollback", meta):
        rt._manager("set_status", sandbox_id, "reloading")
        try:
            target = versions.invoke("get_version", sandbox_id, module, version)
            plan = versions.invoke("calculate_reload_order", sandbox_id, [module])
            chosen = {module: ModuleCode.from_compiled(target, version)}
            units = [[(chosen.get(m) or slot.modules[m]).to_wire() for m in unit] for unit in plan.units]
            swap = _swap(rt, slot, sandbox_id, units, [module], None, extra, timeout)
            versions.invoke("set_current", sandbox_id, module, version)
            slot.modules[module] = chosen[module]
            report.modules, report.changed, report.cycles = plan.modules, [module], plan.cycles
            report.versions = {module: version}
            report.actors, report.warnings = swap["actors"], swap["warnings"]
            report.children = swap.get("children", {})
            report.swap_seconds = swap.get("swap_seconds", 0.0)
        except BaseException as exc:
            report.ok, report.error = False, f"{type(exc).__name__}: {exc}"
            report.duration = time.perf_counter() - t0
            slot.last_reload = report.as_dict()
            raise
        finally:
            _set_status_back(rt, sandbox_id)
    report.duration = time.perf_counter() - t0
    slot.last_reload = report.as_dict()
    return report


def _code_for(
    name: str, compiled: Mapping[str, Any], current: Mapping[str, ModuleCode], versions: Mapping[str, int]
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
) -> dict[str, Any]:
    payload = {"units": units, "changed": changed, "migrate": migrate, "extra": extra,
               "suspend_timeout": min(timeout, 10.0)}
    proc = slot.get(timeout)
    result = proc.system("reload", payload, timeout=timeout)
    if not result.get("ok"):
        err = ReloadFailed(
            f"sandbox {sandbox_id!r}: {result.get('error')}",
            module=result.get("module"),
            step=result.get("step"),
        )
        err.remote_traceback = result.get("traceback", "")  # type: ignore[attr-defined]
        raise err
    return result


def _set_status_back(rt: Runtime, sandbox_id: str) -> None:
    try:
        rt._manager("set_status", sandbox_id, "running", "reloading")
    except SandboxError:
        pass  # destroyed meanwhile
