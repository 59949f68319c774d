"""The compiler actor: turns an app directory into validated, cached, marshalled modules.

For each module: read the bytes, look the content hash up in the cache; on a miss,
send the source to the compile worker (a separate process with a timeout and
memory/CPU limits, see :mod:`actors.compile_worker`), which parses it, runs the
security scanner on it, compiles and marshals it. The host then validates the
artifact (magic, checksum, unmarshals to a code object), stores it in the cache,
and resolves the module's imports to its app dependencies, warning about imports
that name nothing.

>>> import tempfile, pathlib
>>> with tempfile.TemporaryDirectory() as d:
...     _ = (pathlib.Path(d) / "app.py").write_text("import helper\\nx = 1\\n")
...     _ = (pathlib.Path(d) / "helper.py").write_text("y = 2\\n")
...     ref = CompilerActor.start()
...     try:
...         r = ref.invoke("compile_sandbox", d)
...     finally:
...         _ = ref.stop()
>>> r.ok, sorted(r.modules), r.modules["app"].dependencies
(True, ['app', 'helper'], ('helper',))

The security hook is ``scanner(source_bytes, filename, profile) -> list[Diagnostic]``
(dicts or objects with similar fields are accepted). It runs in the worker, for
every module that parses; an error-severity finding blocks the module. It must be
picklable (cloudpickle: a module-level function, a lambda, an instance of a
module-level class). A scanner whose rules change should expose a ``cache_token``
attribute that changes with them; otherwise its pickled form and its module's
source are hashed into the cache key. A scanner with a true ``accepts_tree``
attribute is also given ``tree=``, the worker's parsed module (the tree that is
compiled), so the module is not parsed twice.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import cloudpickle

from actors.appfiles import AppFile, discover_modules, is_ignored, module_name
from actors.compilation import CompilationResult, CompiledModule, Diagnostic, syntax_hint
from actors.compile_cache import CacheEntry, CompileCache
from actors.compile_worker import (
    DEFAULT_MEMORY_LIMIT,
    Cancelled,
    CompileWorker,
    WorkerError,
    WorkerReply,
)
from actors.importscan import Resolution, is_installed_factory, resolve
from runtime import telemetry
from runtime.component import Component, ComponentRef
from runtime.errors import CompileError, ConfigError

__all__ = ["CompilerActor", "Scanner", "DEFAULT_TIMEOUT"]

log = logging.getLogger("runtime.compiler")

Scanner = Callable[[bytes, str, str], list[Any]]

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_SOURCE = 8 << 20  # 8 MiB of source per module


def _scanner_token(scanner: Scanner | None, blob: bytes) -> str:
    """What identifies the scanner's rules in the cache key."""
    if scanner is None:
        return "none"
    token = getattr(scanner, "cache_token", None)
    if token is not None:
        return f"token:{token}"
    h = hashlib.sha256(blob)
    # cloudpickle pickles importable functions by reference: hash their module's
    # source too, so an edited rule set does not hit entries scanned by the old one.
    mod = sys.modules.get(getattr(scanner, "__module__", None) or type(scanner).__module__)
    file = getattr(mod, "__file__", None)
    if file:
        try:
            h.update(Path(file).read_bytes())
        except OSError:
            pass
    return f"sha256:{h.hexdigest()}"


@dataclass(frozen=True)
class _Profile:
    """A security profile as the compiler handles it: by name, or a profile object.

    A name (``"high"``) is passed to the scanner as is. An object (a custom
    profile) is pickled to the worker and handed to the scanner there; its
    ``to_dict()`` (or pickled form) goes into the cache key.
    """

    name: str
    key: str
    blob: bytes | None = None

    @classmethod
    def of(cls, profile: Any) -> _Profile:
        if isinstance(profile, str):
            if not profile:
                raise ConfigError("profile", profile, "a profile name or a profile object")
            return cls(profile, profile)
        if profile is None:
            raise ConfigError("profile", profile, "a profile name or a profile object")
        try:
            blob = cloudpickle.dumps(profile)
        except Exception as exc:
            raise ConfigError("profile", profile, f"a picklable profile ({exc})") from None
        if hasattr(profile, "to_dict"):
            ident = json.dumps(profile.to_dict(), sort_keys=True, default=str).encode()
        else:
            ident = blob
        name = str(getattr(profile, "name", type(profile).__name__))
        return cls(name, f"{name}:{hashlib.sha256(ident).hexdigest()}", blob)


#: Workers with a sandbox's own memory limit kept besides the default one.
_MAX_EXTRA_WORKERS = 2
#: The message a compiler sends itself to write the cache entries of an operation.
_WRITE_CACHE = "write-cache"


@dataclass(frozen=True)
class _Budget:
    """What one compile may use: wall time, worker memory and CPU time per module."""

    timeout: float
    memory_limit: int
    cpu_limit: int | None

    @classmethod
    def of(
        cls, actor: CompilerActor, timeout: float | None, memory_limit: int | None,
        cpu_limit: int | None,
    ) -> _Budget:
        """The call's values where given, else the compiler's own."""
        for name, value in (("memory_limit", memory_limit), ("cpu_limit", cpu_limit)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value <= 0):
                raise ConfigError(name, value, "a positive integer or None")
        return cls(
            float(timeout) if timeout is not None else actor.timeout,
            memory_limit if memory_limit is not None else actor._worker.memory_limit,
            cpu_limit if cpu_limit is not None else actor.cpu_limit,
        )


class CompilerActor(Component):
    """Compiles sandbox apps; one compile at a time, in its own thread.

    Options: ``scanner`` (security hook, default none), ``timeout`` (seconds per
    module, default 10), ``memory_limit`` (the worker's RLIMIT_AS, default 1 GiB),
    ``cpu_limit`` (CPU seconds per module, default ``timeout`` + 1), ``cache_dir``
    (default: a private temporary directory removed when the actor stops; callers
    should pass the sandbox's own cache directory), ``cache_secret`` (HMAC key for
    cache entries), ``max_source_bytes`` (bigger modules are refused).

    Operations (``ref.invoke(name, ...)``; pass ``timeout=`` to ``invoke`` for big
    apps, the default call timeout is 5 s):

    - ``compile_sandbox(path, *, profile="medium", cache_dir=None, compile_timeout=None,
      memory_limit=None, cpu_limit=None, running=None)``
    - ``compile_file(path, *, app_root=None, profile=..., cache_dir=..., compile_timeout=...,
      memory_limit=..., cpu_limit=...)``
    - ``incremental_compile(path, changed_files, *, profile=..., cache_dir=...,
      compile_timeout=..., memory_limit=..., cpu_limit=...)``

    ``compile_timeout``, ``memory_limit`` (bytes) and ``cpu_limit`` (seconds) given
    to an operation replace the actor's own for that compile (a sandbox's compile
    options, see :func:`actors.config.compiler_options`).
    - ``status()``: worker pid, workers started, cache directory, counters.
    - ``clear_cache(cache_dir=None)``: remove every entry; returns how many.

    Each returns a :class:`~actors.compilation.CompilationResult`; compile errors
    are in the result (``result.raise_for_errors()`` turns them into CompileError).
    """

    def __init__(
        self,
        *,
        scanner: Scanner | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
        cpu_limit: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_secret: bytes | None = None,
        max_source_bytes: int = DEFAULT_MAX_SOURCE,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name or "compiler")
        if not (isinstance(timeout, int | float) and timeout > 0):
            raise ConfigError("timeout", timeout, "a number of seconds > 0")
        if not (isinstance(memory_limit, int) and memory_limit >= 0):
            raise ConfigError("memory_limit", memory_limit, "bytes >= 0 (0: no limit)")
        if scanner is not None and not callable(scanner):
            raise ConfigError("scanner", scanner, "a callable scan(source, filename, profile)")
        try:
            # Pickled here, in the caller's thread, so a scanner that cannot cross
            # to the worker is refused at start, not at the first compile.
            blob = cloudpickle.dumps(scanner) if scanner is not None else b""
        except Exception as exc:
            raise ConfigError("scanner", scanner, f"a picklable callable ({exc})") from None
        self.timeout = float(timeout)
        self.cpu_limit = cpu_limit
        self.max_source_bytes = max_source_bytes
        self._scanner_token = _scanner_token(scanner, blob)
        self._default_cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._owned_dir: Path | None = None
        self._cache_secret = cache_secret
        self._caches: dict[Path, CompileCache] = {}
        self._worker = CompileWorker(
            scanner_blob=blob,
            memory_limit=memory_limit,
            on_event=lambda event, md: telemetry.execute(event, {"count": 1}, md),
        )
        self._extra_workers: dict[int, CompileWorker] = {}
        self.stats = {"compiled": 0, "cached": 0, "killed": 0}
        #: Cache entries of this operation, written once its caller has the result.
        self._unwritten: list[Callable[[], None]] = []

    # -- lifecycle -------------------------------------------------------------------
    def on_init(self) -> None:
        if self._default_cache_dir is None:
            self._owned_dir = Path(tempfile.mkdtemp(prefix="sandbox-compile-cache-"))
            self._default_cache_dir = self._owned_dir

    def on_info(self, message: Any) -> None:
        if message == _WRITE_CACHE:
            self._write_cache()
        else:
            super().on_info(message)

    def on_exit(self, reason: Any) -> None:
        self._write_cache()
        self._worker.close()
        for worker in self._extra_workers.values():
            worker.close()
        if self._owned_dir is not None:
            shutil.rmtree(self._owned_dir, ignore_errors=True)

    def _stopping(self) -> bool:
        # Set by ref.stop() from another thread. A compile can outlast stop()'s
        # grace period (timeout 10 s > shutdown 5 s); if the thread were abandoned,
        # on_exit would never stop the worker. Checked while waiting on the worker.
        return self._stop_request is not None

    # -- operations ------------------------------------------------------------------
    def op_compile_sandbox(
        self,
        path: str | os.PathLike[str],
        *,
        profile: Any = "medium",
        cache_dir: str | os.PathLike[str] | None = None,
        compile_timeout: float | None = None,
        memory_limit: int | None = None,
        cpu_limit: int | None = None,
        running: Mapping[str, tuple[str, str]] | None = None,
    ) -> CompilationResult:
        """Compile every module of the app at ``path``.

        ``running`` (``{module: (file, source)}``, what a sandbox runs): only the
        modules whose file's bytes are not that source, new ones included, read and
        compared, never judged by mtime (a hot reload's default: one discovery of the
        app serves the comparison and the compile).

        >>> # ref.invoke("compile_sandbox", "examples/counter", cache_dir=workdir + "/cache")
        """
        root, cache, app = self._app(path, cache_dir)
        todo = list(app.values()) if running is None else \
            [f for name, f in app.items() if _differs(f, running.get(name))]
        return self._run("compile_sandbox", path, root, app, todo, profile,
                         cache, _Budget.of(self, compile_timeout, memory_limit, cpu_limit))

    def op_compile_file(
        self,
        path: str | os.PathLike[str],
        *,
        app_root: str | os.PathLike[str] | None = None,
        profile: Any = "medium",
        cache_dir: str | os.PathLike[str] | None = None,
        compile_timeout: float | None = None,
        memory_limit: int | None = None,
        cpu_limit: int | None = None,
    ) -> CompilationResult:
        """Compile one file, named relative to ``app_root`` (default: its directory).

        >>> # ref.invoke("compile_file", "app/pkg/mod.py", app_root="app").modules["pkg.mod"]
        """
        file = Path(path)
        shown_root = Path(app_root) if app_root is not None else file.parent
        root = self._app_root(shown_root)
        target = (Path(os.path.abspath(file)))
        named = module_name(root, target)
        if named is None or not target.is_file():
            raise CompileError(
                f"{file} is not a module file under {shown_root}: expected an existing "
                ".py file with an importable name inside the app root"
            )
        cache = self._cache(cache_dir, root)
        app = discover_modules(root, exclude=[cache.directory])
        one = AppFile(named[0], target, named[1])
        app.setdefault(one.name, one)
        return self._run("compile_file", shown_root, root, app, [one], profile, cache,
                         _Budget.of(self, compile_timeout, memory_limit, cpu_limit))

    def op_incremental_compile(
        self,
        path: str | os.PathLike[str],
        changed_files: Iterable[str | os.PathLike[str]],
        *,
        profile: Any = "medium",
        cache_dir: str | os.PathLike[str] | None = None,
        compile_timeout: float | None = None,
        memory_limit: int | None = None,
        cpu_limit: int | None = None,
    ) -> CompilationResult:
        """Compile only ``changed_files`` (absolute, or relative to ``path``).

        Files that no longer exist are listed in ``result.removed`` (as module
        names); files that are not modules of the app are ignored. Dependencies are
        resolved against the whole app as it is now.

        >>> # ref.invoke("incremental_compile", app, ["pkg/mod.py"]).recompiled
        """
        root, cache, app = self._app(path, cache_dir)
        todo: dict[str, AppFile] = {}
        removed: list[str] = []
        for f in changed_files:
            p = Path(f)
            p = Path(os.path.abspath(p if p.is_absolute() else root / p))
            named = module_name(root, p)
            if named is None or is_ignored(root, p, [cache.directory]):
                continue
            name = named[0]
            if name in app and app[name].path == p:
                todo[name] = app[name]
            elif not p.exists() and name not in app:
                removed.append(name)
        result = self._run("incremental_compile", path, root, app, list(todo.values()), profile,
                           cache, _Budget.of(self, compile_timeout, memory_limit, cpu_limit))
        result.removed = sorted(set(removed))
        return result

    def op_write_cache(self) -> None:
        """Write the cache entries a compile run in place (``invoke_here``) left
        unwritten: asked by its caller once it has time to spare (a hot reload: while
        the sandbox swaps). Any other operation writes them first too."""
        self._write_cache()

    def op_status(self) -> dict[str, Any]:
        """Worker and cache state, for operators and tests (entries of the operations
        before it are written)."""
        self._write_cache()
        return {
            "worker_pid": self._worker.pid,
            "workers_started": self._worker.started,
            "cache_dir": str(self._default_cache_dir),
            "timeout": self.timeout,
            # the default worker first, then those of sandboxes with their own memory limit
            "workers": [{"pid": w.pid, "memory_limit": w.memory_limit}
                        for w in (self._worker, *self._extra_workers.values())],
            "corrupt_entries": sum(c.corrupt for c in self._caches.values()),
            **self.stats,
        }

    def op_clear_cache(self, cache_dir: str | os.PathLike[str] | None = None) -> int:
        """Remove every entry of a cache directory (default: the actor's); returns the count."""
        self._write_cache()
        d = Path(cache_dir) if cache_dir is not None else self._default_cache_dir
        assert d is not None
        return self._cache(d, None).clear()

    # -- the work --------------------------------------------------------------------
    @staticmethod
    def _app_root(path: str | os.PathLike[str]) -> Path:
        root = Path(os.path.abspath(path))
        if not root.is_dir():
            raise CompileError(f"app directory {path} does not exist or is not a directory")
        return root

    def _app(
        self, path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None
    ) -> tuple[Path, CompileCache, dict[str, AppFile]]:
        """The app's root, its compile cache, and its modules (the cache left out)."""
        root = self._app_root(path)
        cache = self._cache(cache_dir, root)
        return root, cache, discover_modules(root, exclude=[cache.directory])

    def _cache(self, cache_dir: str | os.PathLike[str] | None, root: Path | None) -> CompileCache:
        d = Path(os.path.abspath(cache_dir)) if cache_dir is not None else self._default_cache_dir
        assert d is not None
        cache = self._caches.get(d)
        if cache is None:
            try:
                cache = CompileCache(d, secret=self._cache_secret)
            except OSError as exc:
                raise CompileError(f"cannot use compile cache directory {d}: {exc}") from None
            self._caches[d] = cache
        return cache

    def _run(
        self,
        op: str,
        shown: str | os.PathLike[str],
        root: Path,
        app: dict[str, AppFile],
        files: list[AppFile],
        profile: Any,
        cache: CompileCache,
        budget: _Budget,
    ) -> CompilationResult:
        self._write_cache()  # an earlier operation's entries, if this one came first
        try:
            cache.ensure_directory()  # its entries are written after the answer (_write_later)
        except OSError as exc:
            log.warning("cannot create compile cache directory %s: %s", cache.directory, exc)
        prof = _Profile.of(profile)
        start = time.monotonic()
        result = CompilationResult(root=str(shown), profile=prof.name)
        names = frozenset(app)
        installed = is_installed_factory()  # per compile: packages may get installed
        with telemetry.span(
            "compile", {"path": str(shown), "op": op, "profile": prof.name}
        ) as extra:
            for f in sorted(files, key=lambda f: f.name):
                display = str(Path(shown) / f.path.relative_to(root))
                self._one(f, display, names, prof, cache, budget, installed, result)
            result.duration = time.monotonic() - start
            extra.update(
                modules=len(result.modules),
                cached=len(result.cached),
                compiled=len(result.recompiled),
                errors=len(result.errors),
                warnings=len(result.warnings),
            )
        return result

    def _one(
        self,
        f: AppFile,
        display: str,
        app_names: frozenset[str],
        profile: _Profile,
        cache: CompileCache,
        budget: _Budget,
        installed: Callable[[str], bool],
        result: CompilationResult,
    ) -> None:
        filename = str(f.path)  # absolute: baked into the code, for tracebacks
        try:
            size = f.path.stat().st_size
            if size > self.max_source_bytes:
                self._fail(result, f.name, Diagnostic(
                    display, 1, 1, "error", "limit",
                    f"the module is {size} bytes, over the {self.max_source_bytes}-byte limit",
                    "split it into smaller modules"))
                return
            source = f.path.read_bytes()
        except OSError as exc:
            self._fail(result, f.name, Diagnostic(
                display, 1, 1, "error", "read-error", f"cannot read the module: {exc}"))
            return
        key = cache.key(source=source, filename=filename, profile=profile.key,
                        scanner_token=self._scanner_token)
        entry = cache.load(key, source=source, filename=filename)
        from_cache = entry is not None
        if entry is None:
            reply = self._compile_in_worker(source, filename, profile, budget)
            entry = CacheEntry(reply.status, reply.diagnostics, reply.imports, reply.code)
            if reply.status == "ok":
                problem = self._validate(reply.code, filename)
                if problem:
                    entry = CacheEntry("error", [{
                        "file": filename, "line": 1, "col": 1, "severity": "error",
                        "code": "invalid-artifact", "message": problem}], reply.imports)
            # Cache only deterministic outcomes: not timeouts or limits (the machine
            # may just be busy), not a scanner crash, not an artifact that failed
            # validation.
            transient = any(d.get("code") == "scanner-error" for d in entry.diagnostics)
            if reply.cacheable and entry.status == reply.status and not transient:
                self._write_later(functools.partial(
                    cache.store, key, entry, source=source, filename=filename, recreate=False))
            self.stats["compiled"] += 1
        else:
            self.stats["cached"] += 1

        diags = [self._diagnostic(d, filename, display) for d in entry.diagnostics]
        res = resolve(f.name, f.is_package, entry.imports, app_names, is_installed=installed)
        diags += self._import_diagnostics(res, display, app_names)
        errors = [d for d in diags if d.is_error]
        result.warnings.extend(d for d in diags if not d.is_error)
        if errors or entry.status != "ok":
            if not errors:  # defensive: a failed status always carries a reason
                errors = [Diagnostic(display, 1, 1, "error", entry.status, "compile failed")]
            self._fail(result, f.name, *errors)
            return
        result.modules[f.name] = CompiledModule.build(
            f.name, filename, source, entry.code,
            dependencies=res.dependencies, from_cache=from_cache, is_package=f.is_package,
        )

    def _write_later(self, write: Callable[[], None]) -> None:
        """Write a cache entry once the caller has the compile's result: the write
        (a temporary file and a rename) is off a hot reload's critical path. The
        next message this actor handles writes it (or stop does), so an operation
        asked after this one finds it, ``status`` included. An operation run on its
        caller's thread (``invoke_here``, a hot reload's compile) sends no message
        for it: the caller knows when this actor's thread may write without holding
        it up, and asks for it then (``write_cache``; a hot reload: while it waits
        for the sandbox's swap); else the next operation writes it first."""
        if not self._unwritten and self._inline_thread is None:
            self.ref.tell(_WRITE_CACHE)
        self._unwritten.append(write)

    def _write_cache(self) -> None:
        writes, self._unwritten = self._unwritten, []
        for write in writes:
            write()

    def _worker_for(self, memory_limit: int) -> CompileWorker:
        """The worker with this memory limit (RLIMIT_AS is set once per worker process):
        the default one, or one of a few more kept for sandboxes with their own limit."""
        if memory_limit == self._worker.memory_limit:
            return self._worker
        worker = self._extra_workers.pop(memory_limit, None)
        if worker is None:
            worker = CompileWorker(scanner_blob=self._worker.scanner_blob,
                                   memory_limit=memory_limit, on_event=self._worker._on_event)
        self._extra_workers[memory_limit] = worker  # most recently used last
        while len(self._extra_workers) > _MAX_EXTRA_WORKERS:
            oldest = next(iter(self._extra_workers))
            self._extra_workers.pop(oldest).close()
        return worker

    def _compile_in_worker(
        self, source: bytes, filename: str, profile: _Profile, budget: _Budget
    ) -> WorkerReply:
        try:
            reply = self._worker_for(budget.memory_limit).compile(
                source, filename=filename, profile=profile.name, timeout=budget.timeout,
                cpu_seconds=budget.cpu_limit, cancelled=self._stopping,
                profile_blob=profile.blob,
            )
        except WorkerError as exc:
            # Cannot run untrusted compiles anywhere else: refuse the whole compile.
            raise CompileError(str(exc)) from None
        except Cancelled:
            raise CompileError(
                f"compile of {filename} abandoned: the compiler is stopping"
            ) from None
        if reply.status in ("timeout", "limit", "crash"):
            self.stats["killed"] += 1
        return reply

    @staticmethod
    def _validate(code: bytes, filename: str) -> str | None:
        """Check a fresh artifact before it goes anywhere; returns the problem or None."""
        import marshal
        import types

        try:
            obj = marshal.loads(code)
        except (EOFError, ValueError, TypeError) as exc:
            return f"the compiled code does not unmarshal: {exc}"
        if not isinstance(obj, types.CodeType) or obj.co_filename != filename:
            return "the compiled artifact is not a code object for this file"
        return None

    @staticmethod
    def _fail(result: CompilationResult, name: str, *diags: Diagnostic) -> None:
        result.errors.extend(diags)
        if name not in result.failed:
            result.failed.append(name)

    @staticmethod
    def _diagnostic(d: dict[str, Any], filename: str, display: str) -> Diagnostic:
        diag = Diagnostic.coerce(d, display)
        changes: dict[str, Any] = {}
        if diag.file == filename:
            changes["file"] = display
        if diag.hint is None and "kind" in d:
            changes["hint"] = syntax_hint(str(d["kind"]), diag.message)
        if changes:
            diag = Diagnostic(**{**diag.to_dict(), **changes})
        return diag

    @staticmethod
    def _import_diagnostics(
        res: Resolution, display: str, app_names: frozenset[str]
    ) -> list[Diagnostic]:
        import difflib

        out = []
        for rec, name in res.unknown:
            pool = sorted(set(sys.stdlib_module_names) | set(app_names))
            close = difflib.get_close_matches(name, pool, n=1)
            hint = (f"did you mean {close[0]!r}? " if close else "") + (
                f"add {name.replace('.', '/')}.py to the app, or install the package "
                f"that provides {name.split('.')[0]!r} in the sandbox's environment"
            )
            out.append(Diagnostic(
                display, rec["line"], rec["col"], "warning", "unknown-import",
                f"no module named {name!r} in the app or installed", hint))
        for rec in res.bad_relative:
            dots = "." * rec["level"]
            out.append(Diagnostic(
                display, rec["line"], rec["col"], "warning", "bad-relative-import",
                f"relative import '{dots}{rec['module'] or ''}' goes above the app's "
                "top-level package (ImportError when it runs)",
                "use an absolute import, or move the module into a package"))
        return out


def _differs(f: AppFile, running: tuple[str, str] | None) -> bool:
    """Whether module file ``f`` is not ``running`` (``(file, source)``), or unreadable
    (the compile then reports why)."""
    if running is None or running[0] != str(f.path):
        return True
    try:
        with open(f.path, "rb") as fh:
            data = fh.read()
    except OSError:
        return True
    return data != running[1].encode("utf-8")


def check(path: str | os.PathLike[str], **options: Any) -> CompilationResult:
    """Compile an app once with a throwaway compiler (for ``sandbox check PATH``).

    >>> # for d in check("examples/counter").diagnostics: print(d)
    """
    ref = cast(ComponentRef, CompilerActor.start(**options))
    try:
        return ref.invoke("compile_sandbox", path, timeout=None)
    finally:
        ref.stop()
