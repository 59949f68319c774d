"""Sandbox configuration: every option checked up front, with errors that say what to do.

>>> cfg = SandboxConfig.build("demo", "examples/counter")
>>> cfg.entry, cfg.restart, cfg.profile
('app:children', 'permanent', 'medium')
>>> SandboxConfig.build("bad/id", "examples/counter")
Traceback (most recent call last):
...
runtime.errors.ConfigError: invalid id='bad/id': expected 1-64 characters from letters, digits, '.', '_' and '-', not starting with '.' or '-'
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from actors import astparse
from runtime.childspec import RESTART_TYPES
from runtime.errors import ConfigError

__all__ = [
    "AlertThresholds",
    "Limits",
    "SandboxConfig",
    "WatchOptions",
    "PROFILES",
    "compiler_options",
    "validate_id",
]

PROFILES: tuple[str, ...] = ("high", "medium", "low")
#: What the resource monitor may do when a sandbox reaches a limit.
LIMIT_ACTIONS: tuple[str, ...] = ("restart", "terminate")
#: Custom profile names registered with a security controller (any runtime of
#: this process); the controller of the sandbox's own runtime has the last word.
_custom_profiles: set[str] = set()


def register_profile_name(name: str) -> None:
    """Let :class:`SandboxConfig` accept ``name`` (called by the security controller)."""
    _custom_profiles.add(name)


def profile_names() -> tuple[str, ...]:
    """The built-in profiles, then the registered custom ones.

    >>> profile_names()[:3]
    ('high', 'medium', 'low')
    """
    return PROFILES + tuple(sorted(_custom_profiles - set(PROFILES)))
_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")
_ENTRY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def validate_id(sandbox_id: object) -> str:
    """Check that a sandbox id is a string safe to use in paths and process names.

    >>> validate_id("counter-1")
    'counter-1'
    """
    if not isinstance(sandbox_id, str) or not _ID.match(sandbox_id) or ".." in sandbox_id:
        raise ConfigError(
            "id",
            sandbox_id,
            "1-64 characters from letters, digits, '.', '_' and '-', not starting with '.' or '-'",
        )
    return sandbox_id


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandbox; ``None`` means no limit.

    - ``memory_mb``: address space of the sandbox process (RLIMIT_AS).
    - ``cpu_seconds``: CPU time of one call's handler (RLIMIT_CPU, re-armed per call by the monitor).
    - ``open_files``: file descriptors (RLIMIT_NOFILE).
    - ``file_size_mb``: largest file it may write (RLIMIT_FSIZE).
    - ``processes``: processes in its tree (enforced by the resource monitor).
    - ``cpu_percent``: CPU share of its tree (100 = one core), sustained over
      ``cpu_window`` seconds (default 5) (resource monitor).
    - ``run_seconds``: wall time of one ``Sandbox.run`` call.
    - ``call_seconds``: the handler deadline: wall time from sending a call to
      its reply; past it the sandbox's process is killed and restarted (or, with
      ``action="terminate"``, stopped), whether or not the caller still waits.
    - ``action``: what the resource monitor does when a limit is reached:
      ``"restart"`` (default) or ``"terminate"``.

    >>> Limits.build({"memory_mb": 256}).memory_mb
    256
    """

    memory_mb: int | None = None
    cpu_seconds: int | None = None
    open_files: int | None = None
    file_size_mb: int | None = None
    processes: int | None = None
    cpu_percent: int | None = None
    cpu_window: int | None = None
    run_seconds: int | None = None
    call_seconds: int | None = None
    action: str = "restart"

    @classmethod
    def build(cls, value: Limits | dict[str, Any] | None) -> Limits:
        if value is None:
            return cls()
        if isinstance(value, Limits):
            return value
        if not isinstance(value, dict):
            raise ConfigError("limits", value, "a dict of limits or a Limits instance")
        known = {f.name for f in fields(cls)}
        for key, v in value.items():
            if key not in known:
                raise ConfigError(f"limits.{key}", v, f"one of the limits {', '.join(sorted(known))}")
            if key == "action":
                if v not in LIMIT_ACTIONS:
                    raise ConfigError("limits.action", v, f"one of {', '.join(LIMIT_ACTIONS)}")
                continue
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise ConfigError(f"limits.{key}", v, "a positive integer or None")
        return cls(**value)

    def as_dict(self) -> dict[str, int | None]:
        return _plain_fields(self)


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _plain_fields(obj: Any) -> dict[str, Any]:
    """``{field: value}`` of a frozen config dataclass, not copied: what
    :func:`dataclasses.asdict` gives for fields of immutable values (numbers,
    strings, tuples of them), at a tenth of its cost (it deep-copies; every
    create turns its limits into a dict three times and its config once).

    >>> _plain_fields(Limits(memory_mb=64))["memory_mb"]
    64
    """
    names = _FIELD_NAMES.get(type(obj))
    if names is None:
        names = _FIELD_NAMES[type(obj)] = tuple(f.name for f in fields(obj))
    return {name: getattr(obj, name) for name in names}


def _globs(option: str, value: Any, *, allow_empty: bool) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(option, value, "a list of glob patterns such as ['*.py']")
    if not value and not allow_empty:
        raise ConfigError(option, value, "at least one glob pattern such as '*.py'")
    return tuple(value)


@dataclass(frozen=True)
class WatchOptions:
    """How the watcher follows a sandbox's directory when auto-reload is on.

    - ``patterns``: file-name globs of the sources to watch (default ``*.py``).
    - ``ignore``: more globs to ignore, matched against file and directory names,
      on top of the built-in ones (``__pycache__``, ``.git``, editor swap and
      backup files; see ``actors/watchfilter.py``).
    - ``debounce``: seconds of quiet after the last event before the changed files
      are reloaded as one batch (default 0.02).
    - ``max_files``: the most source files one sandbox may have watched.

    >>> WatchOptions.build({"debounce": 0.05}).debounce
    0.05
    >>> try:
    ...     WatchOptions.build({"debounce": -1})
    ... except ConfigError as exc:
    ...     print(exc)
    invalid watch.debounce=-1: expected a number of seconds between 0 and 10
    """

    patterns: tuple[str, ...] = ("*.py",)
    ignore: tuple[str, ...] = ()
    debounce: float = 0.02
    max_files: int = 10_000

    @classmethod
    def build(cls, value: WatchOptions | dict[str, Any] | None) -> WatchOptions:
        if value is None:
            return cls()
        if isinstance(value, WatchOptions):
            return value
        if not isinstance(value, dict):
            raise ConfigError("watch", value, "a dict of watch options or a WatchOptions instance")
        known = {f.name for f in fields(cls)}
        for key, v in value.items():
            if key not in known:
                raise ConfigError(f"watch.{key}", v, f"one of the watch options {', '.join(sorted(known))}")
        patterns = _globs("watch.patterns", value.get("patterns", cls.patterns), allow_empty=False)
        ignore = _globs("watch.ignore", value.get("ignore", cls.ignore), allow_empty=True)
        debounce = value.get("debounce", cls.debounce)
        if isinstance(debounce, bool) or not isinstance(debounce, (int, float)) or not 0 <= debounce <= 10:
            raise ConfigError("watch.debounce", debounce, "a number of seconds between 0 and 10")
        max_files = value.get("max_files", cls.max_files)
        if isinstance(max_files, bool) or not isinstance(max_files, int) or max_files < 1:
            raise ConfigError("watch.max_files", max_files, "an integer >= 1")
        return cls(patterns, ignore, float(debounce), max_files)

    def replace(self, **changes: Any) -> WatchOptions:
        """A validated copy with some options changed.

        >>> WatchOptions().replace(max_files=5).max_files
        5
        """
        return WatchOptions.build({**asdict(self), **changes})

    def as_dict(self) -> dict[str, Any]:
        return _plain_fields(self)


@dataclass(frozen=True)
class AlertThresholds:
    """When the runtime raises an alert (``sandbox/alerts.py``), per runtime or per sandbox.

    - ``warn_at``: fraction of a resource limit at which the resource monitor warns
      (``limit.warning``) and a "near limit" alert fires (default 0.8).
    - ``restarts`` within ``window`` seconds: restarts after crashes, of a sandbox's
      process or of its actors, that make a restart storm (default 5 in 60 s).
    - ``flaps`` within ``flap_window`` seconds: process restarts after crashes that
      make a sandbox flapping (default 3 in 300 s). A requested restart is neither.
    - ``error_repeats``: occurrences of one error pattern that make it recurring (3).
    - ``reload_failures``: failed reloads or rollbacks within ``window`` (default 1).
    - ``repeat_after``: seconds before the same alert of the same sandbox is sent again.

    >>> AlertThresholds.build({"restarts": 10}, base=AlertThresholds(warn_at=0.9)).warn_at
    0.9
    >>> try:
    ...     AlertThresholds.build({"warn_at": 2})
    ... except ConfigError as exc:
    ...     print(exc)
    invalid alerts.warn_at=2: expected a fraction of the limit, > 0 and <= 1
    """

    warn_at: float = 0.8
    restarts: int = 5
    window: float = 60.0
    flaps: int = 3
    flap_window: float = 300.0
    error_repeats: int = 3
    reload_failures: int = 1
    repeat_after: float = 300.0

    @classmethod
    def build(
        cls, value: AlertThresholds | dict[str, Any] | None, base: AlertThresholds | None = None
    ) -> AlertThresholds:
        """Validate ``value`` (a dict of the thresholds to change, over ``base``)."""
        base = base or cls()
        if value is None:
            return base
        if isinstance(value, AlertThresholds):
            return value
        if not isinstance(value, dict):
            raise ConfigError("alerts", value, "a dict of alert thresholds or an AlertThresholds")
        known = {f.name: f.type for f in fields(cls)}
        for key, v in value.items():
            if key not in known:
                raise ConfigError(f"alerts.{key}", v,
                                  f"one of the alert thresholds {', '.join(sorted(known))}")
            if key == "warn_at":
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
                    raise ConfigError("alerts.warn_at", v, "a fraction of the limit, > 0 and <= 1")
            elif known[key] == "int":
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise ConfigError(f"alerts.{key}", v, "an integer >= 1")
            elif isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise ConfigError(f"alerts.{key}", v, "a number of seconds > 0")
        changes: dict[str, Any] = {k: (v if known[k] == "int" else float(v))
                                   for k, v in value.items()}
        return replace(base, **changes)

    def as_dict(self) -> dict[str, Any]:
        return _plain_fields(self)


@dataclass(frozen=True)
class SandboxConfig:
    """Everything needed to (re)create one sandbox; plain data, kept across restarts."""

    id: str
    path: str
    entry: str = "app:children"
    profile: str = "medium"
    limits: Limits = field(default_factory=Limits)
    restart: str = "permanent"
    max_restarts: int = 3
    max_seconds: float = 5.0
    env: dict[str, str] = field(default_factory=dict)
    auto_reload: bool = False
    shutdown: float = 5.0
    #: How auto-reload watches the app (used when ``auto_reload`` is on).
    watch: WatchOptions = field(default_factory=WatchOptions)
    #: ``"host:port"`` addresses the sandbox may reach outside (on top of its
    #: profile's ``net_allow``; port ``0`` or ``*``: any port): egress through
    #: slirp4netns, never to the host's loopback.
    net_allow: tuple[str, ...] = ()
    #: Alert thresholds of this sandbox (None: the runtime's).
    alerts: AlertThresholds | None = None
    #: Seconds one module's compile may take (None: the compiler's default, 10 s).
    compile_timeout: float | None = None
    #: Memory of the compile worker, MiB (None: the compiler's default, 1 GiB).
    compile_memory_mb: int | None = None
    #: CPU seconds one module's compile may use (None: the compile timeout + 1).
    compile_cpu_seconds: int | None = None

    @classmethod
    def build(cls, sandbox_id: Any, path: Any, **options: Any) -> SandboxConfig:
        """Validate every option and return the config, or raise :class:`ConfigError`."""
        known = {f.name for f in fields(cls)} - {"id", "path"}
        for key, value in options.items():
            if key not in known:
                raise ConfigError(key, value, f"one of the options {', '.join(sorted(known))}")
        validate_id(sandbox_id)
        app_dir = _check_path(path)
        entry = options.get("entry", cls.entry)
        if not isinstance(entry, str) or not _ENTRY.match(entry):
            raise ConfigError("entry", entry, "'module:function', e.g. 'app:children'")
        _check_entry(app_dir, entry)
        profile = options.get("profile", cls.profile)
        if not isinstance(profile, str) or profile not in profile_names():
            raise ConfigError(
                "profile",
                profile,
                f"one of {', '.join(profile_names())} (a custom profile must be registered "
                "first: rt.register_profile(custom_profile(...)))",
            )
        restart = options.get("restart", cls.restart)
        if restart not in RESTART_TYPES:
            raise ConfigError("restart", restart, f"one of {', '.join(RESTART_TYPES)}")
        max_restarts = options.get("max_restarts", cls.max_restarts)
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
            raise ConfigError("max_restarts", max_restarts, "an integer >= 0")
        for name in ("max_seconds", "shutdown"):
            value = options.get(name, getattr(cls, name))
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(name, value, "a number of seconds > 0")
        env = options.get("env", {}) or {}
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise ConfigError("env", env, "a dict of str to str")
        net_allow = _net_allow(options.get("net_allow", ()))
        auto_reload = options.get("auto_reload", cls.auto_reload)
        if not isinstance(auto_reload, bool):
            raise ConfigError("auto_reload", auto_reload, "True or False")
        compile_timeout = options.get("compile_timeout")
        if compile_timeout is not None and (
            isinstance(compile_timeout, bool) or not isinstance(compile_timeout, (int, float))
            or not 0 < compile_timeout <= 3600
        ):
            raise ConfigError("compile_timeout", compile_timeout,
                              "a number of seconds > 0 and <= 3600, or None")
        for name in ("compile_memory_mb", "compile_cpu_seconds"):
            value = options.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value <= 0):
                raise ConfigError(name, value, "a positive integer or None")
        if options.get("compile_memory_mb") is not None and options["compile_memory_mb"] < 64:
            raise ConfigError("compile_memory_mb", options["compile_memory_mb"],
                              "at least 64 (MiB): the compile worker itself needs about 40")
        return cls(
            id=sandbox_id,
            path=str(app_dir),
            entry=entry,
            profile=profile,
            limits=Limits.build(options.get("limits")),
            restart=restart,
            max_restarts=max_restarts,
            max_seconds=float(options.get("max_seconds", cls.max_seconds)),
            env=dict(env),
            auto_reload=auto_reload,
            shutdown=float(options.get("shutdown", cls.shutdown)),
            watch=WatchOptions.build(options.get("watch")),
            net_allow=net_allow,
            alerts=(None if options.get("alerts") is None
                    else AlertThresholds.build(options["alerts"])),
            compile_timeout=float(compile_timeout) if compile_timeout is not None else None,
            compile_memory_mb=options.get("compile_memory_mb"),
            compile_cpu_seconds=options.get("compile_cpu_seconds"),
        )

    def compile_settings(self) -> dict[str, Any]:
        """The sandbox's compile options, as given (None: the compiler's default).

        >>> SandboxConfig.build("c", "examples/counter", compile_timeout=30).compile_settings()
        {'compile_timeout': 30.0, 'compile_memory_mb': None, 'compile_cpu_seconds': None}
        """
        return {"compile_timeout": self.compile_timeout,
                "compile_memory_mb": self.compile_memory_mb,
                "compile_cpu_seconds": self.compile_cpu_seconds}

    def as_dict(self) -> dict[str, Any]:
        d = _plain_fields(self)
        d["env"] = dict(self.env)
        d["limits"] = self.limits.as_dict()
        d["watch"] = self.watch.as_dict()
        d["alerts"] = self.alerts.as_dict() if self.alerts is not None else None
        return d


def _net_allow(value: Any) -> tuple[str, ...]:
    """``net_allow`` checked: ``"host:port"`` strings, port 0-65535 or ``*``.

    >>> _net_allow(["api.example.com:443"])
    ('api.example.com:443',)
    """
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ConfigError("net_allow", value, "a list of 'host:port' strings")
    for addr in value:
        host, sep, port = addr.rpartition(":") if isinstance(addr, str) else ("", "", "")
        ok_port = port == "*" or (port.isdigit() and 0 <= int(port) <= 65535)
        if not sep or not host.strip("[]") or not ok_port:
            raise ConfigError(
                "net_allow", addr, "'host:port' with a port from 0 to 65535 or '*'"
            )
    return tuple(value)


def _check_path(path: Any) -> Path:
    if not isinstance(path, (str, Path)):
        raise ConfigError("path", path, "a path to the app's directory")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ConfigError("path", str(path), "an existing directory holding the app's modules")
    return p.resolve()


#: Top-level names of entry modules, by file and its stat identity (inode, size,
#: mtime, ctime): every create of an app checks its entry, and parsing the module
#: each time was most of building a config (0.27 ms of 0.28 for examples/counter).
_entry_names: dict[tuple[str, int, int, int, int], frozenset[str]] = {}
_ENTRY_NAMES_KEPT = 256


def _top_level_names(source_file: Path) -> frozenset[str]:
    """The functions, classes and names assigned at the top level of a module; raises
    CompileError on a syntax error."""
    st = source_file.stat()
    key = (str(source_file), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    names = _entry_names.get(key)
    if names is not None:
        return names
    try:
        tree = astparse.parse(source_file.read_bytes(), str(source_file))
    except SyntaxError as exc:
        from runtime.errors import CompileError

        raise CompileError(
            f"{exc.filename}:{exc.lineno}:{exc.offset}: {exc.msg}",
            [{"file": exc.filename, "line": exc.lineno, "col": exc.offset, "message": exc.msg}],
        ) from None
    names = frozenset(
        node.name
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    ) | frozenset(
        t.id
        for node in tree.body
        if isinstance(node, ast.Assign)
        for t in node.targets
        if isinstance(t, ast.Name)
    )
    if len(_entry_names) >= _ENTRY_NAMES_KEPT:
        _entry_names.clear()
    _entry_names[key] = names
    return names


def _check_entry(app_dir: Path, entry: str) -> None:
    """The entry module must exist in the app and define the entry function at top level."""
    module, func = entry.split(":")
    rel = Path(*module.split("."))
    candidates = [app_dir / rel.with_suffix(".py"), app_dir / rel / "__init__.py"]
    source_file = next((c for c in candidates if c.is_file()), None)
    if source_file is None:
        raise ConfigError(
            "entry", entry, f"a module of the app: neither {candidates[0]} nor {candidates[1]} exists"
        )
    defined = _top_level_names(source_file)
    if func not in defined:
        raise ConfigError("entry", entry, f"a function {func!r} defined in {source_file}")


def compiler_options(settings: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """The compiler's keyword arguments for a sandbox's compile options
    (:meth:`SandboxConfig.compile_settings`), with a call's overrides (``None``
    leaves the sandbox's value): only what is set is passed.

    >>> compiler_options({"compile_timeout": 30.0, "compile_memory_mb": 256},
    ...                  compile_timeout=5)
    {'compile_timeout': 5, 'memory_limit': 268435456}
    """
    merged = {**settings, **{k: v for k, v in overrides.items() if v is not None}}
    out: dict[str, Any] = {}
    if merged.get("compile_timeout") is not None:
        out["compile_timeout"] = merged["compile_timeout"]
    if merged.get("compile_memory_mb") is not None:
        out["memory_limit"] = int(merged["compile_memory_mb"]) << 20
    if merged.get("compile_cpu_seconds") is not None:
        out["cpu_limit"] = int(merged["compile_cpu_seconds"])
    return out
