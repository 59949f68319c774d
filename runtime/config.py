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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .childspec import RESTART_TYPES
from .errors import ConfigError

__all__ = ["Limits", "SandboxConfig", "PROFILES", "validate_id"]

PROFILES: tuple[str, ...] = ("high", "medium", "low")
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
    - ``cpu_seconds``: CPU time (RLIMIT_CPU).
    - ``open_files``: file descriptors (RLIMIT_NOFILE).
    - ``file_size_mb``: largest file it may write (RLIMIT_FSIZE).
    - ``processes``: processes in its tree (enforced by the resource monitor).

    >>> Limits.build({"memory_mb": 256}).memory_mb
    256
    """

    memory_mb: int | None = None
    cpu_seconds: int | None = None
    open_files: int | None = None
    file_size_mb: int | None = None
    processes: int | None = None

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
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise ConfigError(f"limits.{key}", v, "a positive integer or None")
        return cls(**value)

    def as_dict(self) -> dict[str, int | None]:
        return asdict(self)


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
        if profile not in PROFILES:
            raise ConfigError("profile", profile, f"one of {', '.join(PROFILES)}")
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
        auto_reload = options.get("auto_reload", cls.auto_reload)
        if not isinstance(auto_reload, bool):
            raise ConfigError("auto_reload", auto_reload, "True or False")
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
        )

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["limits"] = self.limits.as_dict()
        return d


def _check_path(path: Any) -> Path:
    if not isinstance(path, (str, Path)):
        raise ConfigError("path", path, "a path to the app's directory")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ConfigError("path", str(path), "an existing directory holding the app's modules")
    return p.resolve()


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
    try:
        tree = ast.parse(source_file.read_bytes(), filename=str(source_file))
    except SyntaxError as exc:
        from .errors import CompileError

        raise CompileError(
            f"{exc.filename}:{exc.lineno}:{exc.offset}: {exc.msg}",
            [{"file": exc.filename, "line": exc.lineno, "col": exc.offset, "message": exc.msg}],
        ) from None
    defined = {
        node.name
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    } | {
        t.id
        for node in tree.body
        if isinstance(node, ast.Assign)
        for t in node.targets
        if isinstance(t, ast.Name)
    }
    if func not in defined:
        raise ConfigError("entry", entry, f"a function {func!r} defined in {source_file}")
