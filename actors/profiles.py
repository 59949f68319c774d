"""Security profiles: what a sandbox may do, as plain data.

A :class:`Profile` names the *operation groups* a sandbox may use (``subprocess``,
``network_client``, ``file_write_workdir``, ...), the modules it may not import,
its default resource limits, how much of what it does goes to the audit log, and
the thresholds of containment. Three are built in:

- ``high``: no network, no processes, no native code (ctypes), no pickle and no
  ``run()``, no writes outside the sandbox's workdir, no reads outside it either
  (imports still read the Python installation's code), no introspection (frames,
  ``gc``), and dunder names banned in string literals by the static scan.
- ``medium``: like ``high``, but ``run()`` is allowed and the sandbox may read any
  file of the Python installation and of its own app directory.
- ``low``: permissive inside the sandbox: ordinary operations (processes,
  sockets, files, pickle, ``eval``) work, and their effects stay inside it (the
  OS layers are the same in every profile: a read-only host tree but for the
  workdir, private ``/tmp``, its own network and IPC namespaces, a seccomp
  filter; see :mod:`runtime.child.isolation`). Signalling processes outside the
  sandbox's own process group and adding audit hooks stay refused.

Custom profiles derive from one of them::

    >>> p = custom_profile("net", base="high", allow=["network_client"])
    >>> "network_client" in p.allow, "socket" in p.blocked()
    (True, False)
    >>> try:
    ...     custom_profile("bad", allow=["netwrk"])
    ... except ConfigError as exc:
    ...     print(str(exc)[:60])
    invalid profile.allow='netwrk': expected operation groups fr

The same profile drives both layers: :func:`actors.scan.scan_source` (the static
scan before a module loads) and :meth:`Profile.guard_policy`, the plain-data policy
handed to :func:`runtime.child.guard.install_guard` in the sandbox process. Neither layer
is a proof of containment; see ``docs/security.md``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from actors.config import Limits
from runtime.errors import ConfigError

__all__ = [
    "AUDIT_LEVELS",
    "BUILTIN_PROFILES",
    "GROUPS",
    "GROUP_MODULES",
    "Profile",
    "custom_profile",
    "get_builtin",
    "python_roots",
    "split_addr",
]

#: Operation groups and what each one grants. A group missing from a profile's
#: ``allow`` blocks its modules (``GROUP_MODULES``) in the scan and in the guard,
#: and the guard refuses the runtime events it covers.
GROUPS: dict[str, str] = {
    "actors": "use the runtime's actor API (GenServer, Supervisor, ...)",
    "math": "math, decimal, fractions, statistics, random",
    "text": "re, string, json, csv, textwrap, unicodedata",
    "time": "time, datetime, zoneinfo (and reading the time zone database)",
    "file_read": "read files under the profile's read roots (the workdir always)",
    "file_read_any": "read any file",
    "file_write_workdir": "create and write files inside the sandbox's workdir",
    "file_write_any": "write files anywhere",
    "network_client": "open outgoing connections, resolve names",
    "network_server": "bind and listen on sockets",
    "subprocess": "start processes (subprocess, os.system, os.fork, os.exec*, posix_spawn)",
    "native": "native code: ctypes, cffi, extension modules shipped with the app",
    "pickle": "unpickle and unmarshal data in user code",
    "introspection": "frames, gc.get_objects/get_referrers, tracing, inspect, signal handlers",
    "dynamic_code": "eval, exec, compile, runpy, building code objects",
    "signal_any": "send signals to processes outside the sandbox's own process group",
}

#: Modules blocked when their group is not allowed (a name blocks its submodules).
GROUP_MODULES: dict[str, tuple[str, ...]] = {
    "actors": ("runtime",),
    "math": ("math", "cmath", "decimal", "fractions", "statistics", "random", "numbers"),
    "text": ("re", "string", "json", "csv", "textwrap", "unicodedata", "difflib"),
    "time": ("time", "datetime", "zoneinfo", "calendar"),
    "file_read": (),
    "file_read_any": (),
    "file_write_workdir": (),
    "file_write_any": (),
    "network_client": (
        "socket",
        "_socket",
        "ssl",
        "_ssl",
        "http.client",
        "urllib.request",
        "urllib3",
        "requests",
        "httpx",
        "aiohttp",
        "ftplib",
        "smtplib",
        "poplib",
        "imaplib",
        "nntplib",
        "telnetlib",
        "xmlrpc.client",
        "webbrowser",
        "paramiko",
    ),
    "network_server": ("socketserver", "http.server", "xmlrpc.server", "wsgiref.simple_server"),
    "subprocess": (
        "subprocess",
        "_posixsubprocess",
        "pty",
        "multiprocessing",
        "_multiprocessing",
        "concurrent.futures.process",
        "pexpect",
        "sh",
        "plumbum",
    ),
    "native": ("ctypes", "_ctypes", "cffi", "_cffi_backend", "_xxsubinterpreters"),
    "pickle": ("pickle", "_pickle", "cPickle", "cloudpickle", "dill", "shelve", "marshal"),
    "introspection": (
        "gc",
        "inspect",
        "pdb",
        "bdb",
        "trace",
        "faulthandler",
        "tracemalloc",
        "signal",
        "_signal",
    ),
    "dynamic_code": (
        "builtins",
        "runpy",
        "code",
        "codeop",
        "imp",
        "_imp",
        "zipimport",
        "importlib._bootstrap",
        "importlib._bootstrap_external",
        "_frozen_importlib",
        "_frozen_importlib_external",
    ),
    "signal_any": (),
}

AUDIT_LEVELS = ("full", "basic", "none")

#: Symbolic read roots: ``workdir``, ``app`` (the app's directory), ``python``
#: (the installation: stdlib and site-packages), ``zoneinfo`` (time zone data),
#: ``*`` (anywhere), or an absolute path.
READ_ROOT_TOKENS = ("workdir", "app", "python", "zoneinfo", "*")

#: Environment variables a sandbox keeps by default (the rest is scrubbed).
DEFAULT_ENV_ALLOW = (
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "PYTHONHASHSEED",
    "PYTHONIOENCODING",
    "PYTHONUNBUFFERED",
)

#: Files every profile may read (and /dev/null write): what ordinary code touches.
DEV_FILES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/dev/full")

#: Suffixes the import system reads from the Python installation: allowed even
#: under profiles that may not read the installation's other files.
CODE_SUFFIXES = (".py", ".pyc", ".pyi", ".so", ".pth", ".zip", ".egg")

_ZONEINFO = ("/usr/share/zoneinfo", "/usr/lib/python3/dist-packages/tzdata", "/etc/localtime")


@dataclass(frozen=True)
class Profile:
    """One security profile: plain data, validated at construction.

    - ``name``: the profile's name.
    - ``allow``: the operation groups it may use (see :data:`GROUPS`).
    - ``warn``: operation groups it may use but that are reported: the static scan
      lists their use as warnings (the module still loads), the audit log records
      them, and the guard lets them through and reports them.
    - ``blocked_modules``: modules blocked beyond those of the denied groups.
    - ``unblocked_modules``: modules allowed although a denied group lists them.
    - ``limits``: default resource limits (:class:`actors.config.Limits`).
    - ``audit``: ``full`` (refusals, scan findings and notable allowed events),
      ``basic`` (refusals, blocked modules, containment), ``none`` (nothing is
      written; refusals still count towards the threshold).
    - ``allow_run``: whether ``Sandbox.run(fn)`` (cloudpickle) is accepted.
    - ``read_roots``: where the ``file_read`` group may read: tokens from
      ``workdir``, ``app``, ``python``, ``zoneinfo``, ``*`` or absolute paths.
    - ``violation_threshold``: refusals after which the sandbox is terminated and
      quarantined (``None``: never).
    - ``net_allow``: ``"host:port"`` addresses outside the sandbox it may reach
      (``port`` ``0`` or ``*``: any port), through slirp4netns and an nftables
      allowlist in its network namespace, and let through by the guard even
      without the network groups; nothing else outside is reachable.
    - ``ban_dunder_strings``: the scan treats dunder names in string literals, and
      computed ``getattr`` names, as errors.
    - ``env_allow``: environment variables the sandbox keeps.

    >>> high = get_builtin("high")
    >>> high.allows("subprocess"), high.allow_run, high.audit
    (False, False, 'full')
    >>> Profile.derive("high", name="high-net", net_allow=("127.0.0.1:8080",)).net_allow
    ('127.0.0.1:8080',)
    """

    name: str
    allow: frozenset[str]
    blocked_modules: tuple[str, ...] = ()
    unblocked_modules: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    audit: str = "basic"
    allow_run: bool = False
    read_roots: tuple[str, ...] = ("workdir",)
    violation_threshold: int | None = 3
    net_allow: tuple[str, ...] = ()
    ban_dunder_strings: bool = False
    env_allow: tuple[str, ...] = DEFAULT_ENV_ALLOW
    description: str = ""
    warn: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        # Normalise containers first (so lists and sets are accepted), then check.
        object.__setattr__(self, "allow", frozenset(_strings("allow", self.allow)))
        object.__setattr__(self, "warn", frozenset(_strings("warn", self.warn)))
        for name in (
            "blocked_modules",
            "unblocked_modules",
            "read_roots",
            "net_allow",
            "env_allow",
        ):
            object.__setattr__(self, name, tuple(_strings(name, getattr(self, name))))
        object.__setattr__(self, "limits", _limits(self.limits))
        _validate(self)

    # -- queries ---------------------------------------------------------------------
    def allows(self, group: str) -> bool:
        """Whether operation group ``group`` is allowed.

        >>> get_builtin("low").allows("network_client")
        True
        """
        return group in self.allow

    def warns(self, group: str) -> bool:
        """Whether operation group ``group`` is allowed but reported (``warn``).

        >>> custom_profile("w", base="high", warn=["network_server"]).warns("network_server")
        True
        """
        return group in self.warn

    def warned_group(self, module: str) -> str | None:
        """The ``warn`` group whose modules include ``module`` (dotted), if any.

        >>> custom_profile("w", base="high", warn=["network_server"]).warned_group("http.server")
        'network_server'
        """
        parts = module.split(".")
        prefixes = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
        for group in sorted(self.warn):
            if prefixes & set(GROUP_MODULES.get(group, ())):
                return group
        return None

    def blocked(self) -> frozenset[str]:
        """Every module this profile blocks (a name also blocks its submodules).

        Built on first use and kept (the profile is frozen): a scan asks once per
        import and dotted name it checks.

        >>> sorted(get_builtin("high").blocked())[:3]
        ['_cffi_backend', '_ctypes', '_frozen_importlib']
        """
        kept: frozenset[str] | None = self.__dict__.get("_blocked")
        if kept is None:
            names = {m for g, mods in GROUP_MODULES.items()
                     if g not in self.allow and g not in self.warn for m in mods}
            names |= set(self.blocked_modules)
            kept = frozenset(names - set(self.unblocked_modules))
            object.__setattr__(self, "_blocked", kept)  # not a field: eq, hash, dict as before
        return kept

    def is_blocked(self, module: str) -> bool:
        """Whether importing ``module`` (dotted) is blocked.

        >>> p = get_builtin("high"); p.is_blocked("os"), p.is_blocked("urllib.request")
        (False, True)
        """
        blocked = self.blocked()
        parts = module.split(".")
        return any(".".join(parts[:i]) in blocked for i in range(1, len(parts) + 1))

    # -- construction ----------------------------------------------------------------
    @classmethod
    def derive(cls, base: Profile | str, **changes: Any) -> Profile:
        """A copy of ``base`` (a Profile or a built-in's name) with ``changes`` applied.

        Field values replace the base's; the result is validated, and a bad field or
        value raises :class:`~runtime.errors.ConfigError` naming it.

        >>> Profile.derive("medium", name="m2", audit="full").audit
        'full'
        >>> try:
        ...     Profile.derive("medium", colour="red")
        ... except ConfigError as exc:
        ...     print(exc.option, exc.value)
        profile.colour red
        """
        base_profile = get_builtin(base) if isinstance(base, str) else base
        if not isinstance(base_profile, Profile):
            raise ConfigError("profile.base", base, "a Profile or a built-in profile name")
        known = {f.name for f in fields(cls)}
        for key, value in changes.items():
            if key not in known:
                raise ConfigError(
                    f"profile.{key}", value, f"one of the profile fields {', '.join(sorted(known))}"
                )
        return replace(base_profile, **changes)

    # -- plain data ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain data (msgpack/JSON-safe).

        >>> Profile.from_dict(get_builtin("low").to_dict()) == get_builtin("low")
        True
        """
        return {
            "name": self.name,
            "allow": sorted(self.allow),
            "blocked_modules": list(self.blocked_modules),
            "unblocked_modules": list(self.unblocked_modules),
            "limits": self.limits.as_dict(),
            "audit": self.audit,
            "allow_run": self.allow_run,
            "read_roots": list(self.read_roots),
            "violation_threshold": self.violation_threshold,
            "net_allow": list(self.net_allow),
            "ban_dunder_strings": self.ban_dunder_strings,
            "env_allow": list(self.env_allow),
            "description": self.description,
            "warn": sorted(self.warn),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Profile:
        """The inverse of :meth:`to_dict`; unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise ConfigError("profile", data, "a Profile or a dict of profile fields")
        known = {f.name for f in fields(cls)}
        for key, value in data.items():
            if key not in known:
                raise ConfigError(
                    f"profile.{key}", value, f"one of the profile fields {', '.join(sorted(known))}"
                )
        if "name" not in data or "allow" not in data:
            raise ConfigError("profile", dict(data), "a dict with at least 'name' and 'allow'")
        return cls(**dict(data))

    def guard_policy(
        self, workdir: str | os.PathLike[str], app_dir: str | os.PathLike[str]
    ) -> dict[str, Any]:
        """The runtime guard's policy for a sandbox with this profile: plain data.

        ``workdir`` is the sandbox's private directory, ``app_dir`` its code. The
        result crosses the process boundary (msgpack) and is what
        :func:`runtime.child.guard.install_guard` takes.

        >>> pol = get_builtin("high").guard_policy("/tmp/wd", "/tmp/app")
        >>> pol["profile"], pol["write_roots"], "subprocess" in pol["allow"]
        ('high', ['/tmp/wd'], False)
        """
        wd = os.path.realpath(os.fspath(workdir))
        app = os.path.realpath(os.fspath(app_dir))
        py = python_roots()
        runtime_dir = _runtime_dir()
        read_any = "file_read_any" in self.allow or (
            "file_read" in self.allow and "*" in self.read_roots
        )
        read: list[str] = [wd]
        if "file_read" in self.allow:
            for token in self.read_roots:
                if token == "workdir" or token == "*":
                    continue
                if token == "app":
                    read.append(app)
                elif token == "python":
                    read.extend(py)
                elif token == "zoneinfo":
                    read.extend(_ZONEINFO)
                else:
                    read.append(os.path.realpath(token))
        if "time" in self.allow:
            read.extend(_ZONEINFO)
        if "file_write_any" in self.allow:
            write: list[str] = ["/"]
        elif "file_write_workdir" in self.allow:
            write = [wd]
        else:
            write = []
        return {
            "version": 1,
            "profile": self.name,
            # warned groups are let through at run time, and reported ("warned")
            "allow": sorted(self.allow | self.warn),
            "warn": sorted(self.warn),
            "workdir": wd,
            "app_dir": app,
            "read_any": read_any,
            "read_roots": _dedup(read),
            "write_roots": write,
            "code_roots": _dedup(py + [runtime_dir, app]),
            "code_suffixes": list(CODE_SUFFIXES),
            "trusted_code_roots": _dedup(py + [runtime_dir]),
            "untrusted_roots": _dedup([wd, app]),
            "dev_files": list(DEV_FILES),
            "blocked_modules": sorted(self.blocked()),
            "net_allow": [list(split_addr(a)) for a in self.net_allow],
            "protected_modules": ["runtime"],
            "audit": self.audit,
            "report_allowed": self.audit == "full",
        }


def _strings(what: str, value: Any) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ConfigError(f"profile.{what}", value, "a list of strings")
    out = []
    for item in value:
        if not isinstance(item, str) or not item:
            raise ConfigError(f"profile.{what}", item, "a non-empty string")
        out.append(item)
    return out


def _limits(value: Any) -> Limits:
    try:
        return Limits.build(value)
    except ConfigError as exc:
        raise ConfigError(f"profile.{exc.option}", exc.value, exc.accepted) from None


def split_addr(addr: str) -> tuple[str, int]:
    """``"host:port"`` as ``(host, port)``; port ``*`` is 0 (any port).

    >>> split_addr("api.example.com:443"), split_addr("[::1]:*")
    (('api.example.com', 443), ('::1', 0))
    """
    host, sep, port = addr.rpartition(":")
    if not sep or not host:
        raise ConfigError("profile.net_allow", addr, "'host:port' (port 0 or '*' for any port)")
    host = host.strip("[]")  # [::1]:80
    if port == "*":
        return host, 0
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(
            "profile.net_allow", addr, "'host:port' with a port from 0 to 65535 or '*'"
        )
    return host, int(port)


def _validate(p: Profile) -> None:
    if (
        not isinstance(p.name, str)
        or not p.name
        or len(p.name) > 64
        or not all(c.isalnum() or c in "._-" for c in p.name)
    ):
        raise ConfigError(
            "profile.name", p.name, "1-64 characters from letters, digits, '.', '_' and '-'"
        )
    for what, groups in (("allow", p.allow), ("warn", p.warn)):
        for group in sorted(groups):
            if group not in GROUPS:
                raise ConfigError(
                    f"profile.{what}", group, f"operation groups from {', '.join(sorted(GROUPS))}"
                )
    both = p.allow & p.warn
    if both:
        raise ConfigError("profile.warn", sorted(both)[0],
                          "groups not also in allow (a group is allowed, warned or denied)")
    for mod in p.blocked_modules + p.unblocked_modules:
        if not all(part.isidentifier() for part in mod.split(".")):
            raise ConfigError(
                "profile.blocked_modules", mod, "dotted module names, e.g. 'urllib.request'"
            )
    if p.audit not in AUDIT_LEVELS:
        raise ConfigError("profile.audit", p.audit, f"one of {', '.join(AUDIT_LEVELS)}")
    for name in ("allow_run", "ban_dunder_strings"):
        if not isinstance(getattr(p, name), bool):
            raise ConfigError(f"profile.{name}", getattr(p, name), "True or False")
    t = p.violation_threshold
    if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 1):
        raise ConfigError("profile.violation_threshold", t, "a positive integer or None")
    for root in p.read_roots:
        if root not in READ_ROOT_TOKENS and not os.path.isabs(root):
            raise ConfigError(
                "profile.read_roots",
                root,
                f"one of {', '.join(READ_ROOT_TOKENS)} or an absolute path",
            )
    for addr in p.net_allow:
        split_addr(addr)
    for var in p.env_allow:
        if "=" in var:
            raise ConfigError("profile.env_allow", var, "environment variable names")
    if not isinstance(p.description, str):
        raise ConfigError("profile.description", p.description, "a string")


def _dedup(items: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(item, None)
    return list(seen)


_python_roots: list[str] | None = None


def python_roots() -> list[str]:
    """The directories of the Python installation (stdlib, site-packages), resolved.

    >>> any(r.endswith("python3.11") or "site-packages" in r for r in python_roots())
    True
    """
    global _python_roots
    if _python_roots is None:
        import sysconfig

        paths = sysconfig.get_paths()
        roots = [paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")]
        roots += [p for p in sys.path if p and ("site-packages" in p or "dist-packages" in p)]
        _python_roots = _dedup(os.path.realpath(r) for r in roots if r and os.path.isdir(r))
    return list(_python_roots)


def _runtime_dir() -> str:
    import runtime

    return os.path.realpath(os.path.dirname(runtime.__file__))


_ALL = frozenset(GROUPS)
_SAFE = frozenset({"actors", "math", "text", "time", "file_read", "file_write_workdir"})

#: The built-in profiles, by name.
BUILTIN_PROFILES: dict[str, Profile] = {
    "high": Profile(
        name="high",
        allow=_SAFE,
        limits=Limits(
            memory_mb=512, cpu_seconds=10, open_files=64, file_size_mb=16, processes=1,
            call_seconds=30,
        ),
        audit="full",
        allow_run=False,
        read_roots=("workdir",),
        violation_threshold=3,
        ban_dunder_strings=True,
        description="untrusted code: no network, processes, native code, pickle or run(); "
        "files only in the workdir",
    ),
    "medium": Profile(
        name="medium",
        allow=_SAFE,
        limits=Limits(
            memory_mb=1024, cpu_seconds=300, open_files=256, file_size_mb=64, processes=1
        ),
        audit="basic",
        allow_run=True,
        read_roots=("workdir", "app", "python"),
        violation_threshold=5,
        description="like high, but run() is allowed and the Python installation and the "
        "app directory are readable",
    ),
    "low": Profile(
        name="low",
        allow=_ALL - {"signal_any"},
        limits=Limits(
            memory_mb=2048, cpu_seconds=None, open_files=1024, file_size_mb=1024, processes=64
        ),
        audit="basic",
        allow_run=True,
        read_roots=("*",),
        violation_threshold=10,
        description="trusted code: ordinary operations work inside the sandbox, whose OS "
        "layers keep their effects there; the guard still refuses signals outside the "
        "sandbox and new audit hooks",
    ),
}


def get_builtin(name: str) -> Profile:
    """A built-in profile by name.

    >>> get_builtin("medium").allow_run
    True
    """
    try:
        return BUILTIN_PROFILES[name]
    except (KeyError, TypeError):
        raise ConfigError("profile", name, f"one of {', '.join(BUILTIN_PROFILES)}") from None


def custom_profile(
    name: str,
    base: Profile | str = "high",
    *,
    allow: Iterable[str] = (),
    deny: Iterable[str] = (),
    warn: Iterable[str] = (),
    block_modules: Iterable[str] = (),
    unblock_modules: Iterable[str] = (),
    **changes: Any,
) -> Profile:
    """A new profile from ``base``: groups added (``allow``), removed (``deny``) or
    allowed but reported (``warn``: scan warnings that do not block, audit records,
    guard reports), modules blocked or unblocked, and any other field replaced
    (``changes``).

    Built-in names cannot be reused. Raises :class:`~runtime.errors.ConfigError`
    naming the bad field and value.

    >>> p = custom_profile("calc", base="medium", deny=["file_write_workdir"], audit="full")
    >>> p.allows("file_write_workdir"), p.audit, p.allow_run
    (False, 'full', True)
    >>> try:
    ...     custom_profile("high")
    ... except ConfigError as exc:
    ...     print(exc.accepted)
    a name that is not a built-in profile (high, medium, low)
    """
    if name in BUILTIN_PROFILES:
        raise ConfigError(
            "profile.name",
            name,
            f"a name that is not a built-in profile ({', '.join(BUILTIN_PROFILES)})",
        )
    base_profile = get_builtin(base) if isinstance(base, str) else base
    if not isinstance(base_profile, Profile):
        raise ConfigError("profile.base", base, "a Profile or a built-in profile name")
    add, remove, warned = _strings("allow", allow), _strings("deny", deny), _strings("warn", warn)
    for what, groups in (("allow", add), ("deny", remove), ("warn", warned)):
        for g in groups:
            if g not in GROUPS:
                raise ConfigError(
                    f"profile.{what}", g, f"operation groups from {', '.join(sorted(GROUPS))}"
                )
    both = set(add) & set(remove)
    if both:
        raise ConfigError("profile.deny", sorted(both)[0], "groups not also listed in allow")
    clash = set(warned) & (set(add) | set(remove))
    if clash:
        raise ConfigError("profile.warn", sorted(clash)[0],
                          "groups not also listed in allow or deny")
    allowed = (set(base_profile.allow) | set(add)) - set(remove) - set(warned)
    warn_groups = (set(base_profile.warn) - set(add) - set(remove)) | set(warned)
    blocked = _dedup([*base_profile.blocked_modules, *_strings("block_modules", block_modules)])
    unblocked = _dedup(
        [*base_profile.unblocked_modules, *_strings("unblock_modules", unblock_modules)]
    )
    desc = changes.pop("description", f"derived from {base_profile.name}")
    return Profile.derive(
        base_profile,
        name=name,
        allow=frozenset(allowed),
        warn=frozenset(warn_groups),
        blocked_modules=tuple(m for m in blocked if m not in unblocked),
        unblocked_modules=tuple(unblocked),
        description=desc,
        **changes,
    )
