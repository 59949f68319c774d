"""The runtime guard: a PEP 578 audit hook that refuses what a sandbox's profile forbids.

It runs inside the sandbox process. :func:`install_guard` is called once, after
the process has become its own process group leader and set up its working
directory, and before any user code is imported::

    from runtime.child.guard import install_guard
    handle = install_guard(policy, on_violation=send_audit_event_to_host)

``policy`` is plain data (built on the host by
:meth:`actors.profiles.Profile.guard_policy`, carried over msgpack);
``on_violation(event)`` is called with a plain dict for every refusal
(``{"event", "detail", "action": "refused", "group", "profile", "pid", "ts"}``) and,
under audit level ``full``, for notable events the profile allows
(``"action": "allowed"``). A refused operation raises :class:`PermissionError` in
the code that attempted it, with a message naming the operation and the profile.

What it refuses (unless the profile's groups allow it):

- processes: ``subprocess.Popen``, ``os.system``, ``os.exec*``, ``os.posix_spawn*``,
  ``os.fork``/``os.forkpty`` (and ``_posixsubprocess.fork_exec``, which raises no
  audit event, by replacing it);
- network: ``socket.connect``/``sendto``/``sendmsg`` (client), ``socket.bind``
  (server), name resolution, raw and packet sockets, except the policy's
  ``net_allow`` addresses and Unix sockets inside the workdir;
- files: ``open`` (and ``os.open``, ``sqlite3.connect``) for writing outside the
  workdir and for reading outside the read roots (symlinks and ``..`` resolved
  first), directory listing, and ``os.remove/rename/link/symlink/mkdir/rmdir/
  chmod/chown/utime/truncate/*xattr`` outside the workdir; device files other
  than /dev/null, /dev/zero, /dev/urandom, ... are never opened;
- native code: every ``ctypes.*`` event, extension modules outside the Python
  installation, sub-interpreters;
- imports of blocked modules (by ``import`` statement, ``__import__`` or
  ``importlib.import_module``) unless the import comes from the stdlib or the
  runtime itself;
- introspection from user code: ``sys._getframe``, ``sys._current_frames``,
  ``sys.settrace``/``setprofile``, ``gc.get_objects``/``get_referrers``/
  ``get_referents``, reading ``tb_frame``/``gi_frame``/``cr_frame``/``ag_frame``;
  rebinding ``__class__``/``__code__``/``__defaults__`` of the runtime's objects;
  code objects forged with a stdlib file name; unpickling and unmarshalling in
  user code;
- always, whatever the profile: ``sys.addaudithook`` (after installation), signals
  to processes outside the sandbox's own process group (unless ``signal_any``),
  raising a resource limit's hard value, ``TIOCSTI`` terminal injection.

Not a proof. An audit hook runs in the same process as the code it watches: it
sees only operations that raise audit events, it can be raced by threads
(a path checked, then swapped for a symlink before the open), and code that gets
hold of the hook's own frame can tamper with it. Known gaps: modules imported
before installation cannot be import-blocked (their operations still are);
``signal.pidfd_send_signal`` and ``os.setsid`` raise no events; a host name in
``connect`` is resolved before the hook sees the call; a signal handler receives
the current frame. The boundary that holds is the process (rlimits, separate
UID, network namespace, no_new_privs); this guard is one layer in front of it.

Overhead: events are dispatched by one dict lookup; an event the policy does not
care about costs a Python call and returns (dict operations, calls and the like
raise no events at all). Resolved directories, and the verdicts for existing
regular files, are cached; the caches are dropped whenever the sandbox renames,
links, removes or creates a symlink, which are the only ways (without processes
or native code, which disable the caches) a checked path can start pointing
elsewhere. A repeated ``open`` of a workdir file then costs a dict lookup; a
first one an ``lstat`` more.

This module imports only the standard library: it is loaded in every sandbox.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any, NoReturn

__all__ = ["GuardHandle", "fresh_path_finders", "install_guard", "policy_errors", "seal_imports"]

_installed = False


class GuardHandle:
    """What :func:`install_guard` returns: read-only facts about the installed guard.

    - ``profile``: the profile's name.
    - ``preloaded_blocked``: blocked modules that were already imported when the
      guard was installed: the guard cannot refuse importing them (their
      operations are still refused).
    - ``refusals()``: how many operations the guard has refused so far.
    """

    __slots__ = ("profile", "preloaded_blocked", "_count")

    def __init__(
        self, profile: str, preloaded_blocked: tuple[str, ...], count: Callable[[], int]
    ) -> None:
        self.profile = profile
        self.preloaded_blocked = preloaded_blocked
        self._count = count

    def refusals(self) -> int:
        return self._count()

    def __repr__(self) -> str:
        return f"<GuardHandle profile={self.profile!r} refusals={self.refusals()}>"


_REQUIRED = ("profile", "workdir", "allow", "write_roots", "read_roots")


def policy_errors(policy: Any) -> list[str]:
    """What is wrong with ``policy`` (empty when it can be installed).

    >>> policy_errors({"profile": "x", "allow": [], "read_roots": []})
    ['policy has no workdir', 'policy has no write_roots']
    """
    if not isinstance(policy, Mapping):
        return [f"policy must be a dict, not {type(policy).__name__}"]
    problems = [f"policy has no {k}" for k in _REQUIRED if k not in policy]
    for key in (
        "write_roots",
        "read_roots",
        "code_roots",
        "trusted_code_roots",
        "untrusted_roots",
        "dev_files",
        "blocked_modules",
        "allow",
        "protected_modules",
        "code_suffixes",
    ):
        value = policy.get(key, [])
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            problems.append(f"policy {key} must be a list of strings")
    for key in ("write_roots", "read_roots", "code_roots", "trusted_code_roots", "untrusted_roots"):
        for root in policy.get(key, []) or []:
            if isinstance(root, str) and not root.startswith("/"):
                problems.append(f"policy {key} entry {root!r} is not an absolute path")
    return problems


def install_guard(
    policy: Mapping[str, Any],
    on_violation: Callable[[dict[str, Any]], None] | None = None,
) -> GuardHandle:
    """Install the audit hook for ``policy``; refusals are reported to ``on_violation``.

    Call it once per process, before user code runs. Raises ``ValueError`` for a
    malformed policy and ``RuntimeError`` if a guard is already installed (a
    second hook could only be added by the code the first one guards).

    ``on_violation`` runs in the thread that attempted the operation, inside the
    audit hook: keep it short and do not raise (exceptions are swallowed). It is
    not called again for events its own work raises.

    Example, in a fresh process (the hook cannot be removed)::

        handle = install_guard(Profile.guard_policy(...), on_violation=print)
        os.system("true")   # PermissionError: os.system refused by security profile 'high' ...
    """
    global _installed, _PREPARED
    if _installed:
        raise RuntimeError("a runtime guard is already installed in this process")
    problems = policy_errors(policy)
    if problems:
        raise ValueError("invalid guard policy: " + "; ".join(problems))
    real = _resolver()  # the same directories come up several times below
    if "dynamic_code" not in policy["allow"]:
        _seal_imports([policy["workdir"], *policy.get("untrusted_roots", ())], real)
    configure, _PREPARED = _PREPARED or _make(), None  # taken: nothing else may configure it
    hook, handle = configure(dict(policy), on_violation, real)
    sys.addaudithook(hook)
    _installed = True
    return handle


class _LoadsNothing:
    """The path-entry finder for a directory no module may be imported from."""

    __slots__ = ()

    def find_spec(self, fullname: str, target: Any = None) -> None:
        return None

    def invalidate_caches(self) -> None:
        pass


def seal_imports(roots: list[str]) -> None:
    """Make files under ``roots`` (the workdir, the app directory) unimportable.

    Under profiles that forbid dynamic code only scanned code may run: the app's
    modules come from the app finder (compiled by the host after the scan), so
    no file on disk under these roots, least of all one the sandbox wrote at run
    time, may be found by the path-based import system. The roots (and ``''``,
    the current directory) leave ``sys.path``, and a path hook put first answers
    for any entry under them, however it is spelt (symlinks resolved), with a
    finder that finds nothing, even when code adds such an entry back later.

    Example (in a sandbox process)::

        seal_imports(["/srv/sandboxes/s1-abc"])
        import evil   # ModuleNotFoundError, although /srv/sandboxes/s1-abc/evil.py exists
    """
    _seal_imports(roots, os.path.realpath)


def _resolver() -> Callable[[str], str]:
    """``os.path.realpath`` that resolves each path once: for one installation, in
    which nothing else runs (the roots, ``sys.path``'s entries, several times each)."""
    real = os.path.realpath
    seen: dict[str, str] = {}

    def resolve(path: str) -> str:
        got = seen.get(path)
        if got is None:
            got = seen[path] = real(path)
        return got

    return resolve


def _seal_imports(roots: list[str], resolve: Callable[[str], str]) -> None:
    """:func:`seal_imports`, ``resolve`` used for what is resolved now (the hook
    resolves each entry it is asked about when asked)."""
    real = os.path.realpath
    sealed = tuple(dict.fromkeys(resolve(r).rstrip("/") + "/" for r in roots if r))

    def under(entry: Any, real: Callable[[str], str] = real) -> bool:
        try:
            path = real(os.fsdecode(entry) or ".")
        except (TypeError, ValueError, OSError):
            return True  # an entry that is not a path is not a place to load code from
        return (path.rstrip("/") + "/").startswith(sealed)

    def hook(entry: Any) -> _LoadsNothing:
        if under(entry):
            return _LoadsNothing()
        raise ImportError("not a sealed directory")  # the next hook handles it

    sys.path[:] = [p for p in sys.path if p and not under(p, resolve)]
    sys.path_hooks.insert(0, hook)
    fresh_path_finders()


#: The import system's per-directory finders as the fork server left them. A sandbox
#: that starts afresh (:func:`fresh_path_finders`) keeps them referenced here: freeing
#: them, with their directory listings, would write to those pages of the server's in
#: every sandbox, copying them (0.7 MiB per ``high`` sandbox, measured).
_SERVER_FINDERS = sys.path_importer_cache


def fresh_path_finders() -> None:
    """Start the import system on an empty finder cache, as ``clear()`` would, without
    freeing the finders it had (see :data:`_SERVER_FINDERS`): every directory is
    looked at again, on the first import that needs it."""
    sys.path_importer_cache = {}


class _Refused:
    """Stands in for a function that starts processes without an audit event.

    It raises an audit event of its own (so the guard refuses and reports it),
    and refuses anyway if that event was let through. It holds no reference to
    the guard's state.
    """

    __slots__ = ("_what",)

    def __init__(self, what: str) -> None:
        self._what = what

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        sys.audit(self._what, "")
        raise PermissionError(f"{self._what} refused by the sandbox guard")


# ------------------------------------------------------------------------------------
# Everything below is built once per guard, in _make(). The hook and its helpers are
# closures over values captured when they are made (before any user code runs, in the
# fork server for a sandbox): user code that later monkeypatches os, posixpath,
# builtins or this module does not change what the hook calls.

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_TIOCSTI, _TIOCLINUX = 0x5412, 0x541C
_FRAME_ATTRS = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame"})
_PROTECTED_ATTRS = frozenset(
    {
        "__class__",
        "__code__",
        "__defaults__",
        "__kwdefaults__",
        "__bases__",
        "__dict__",
        "__globals__",
    }
)
# Functions in the stdlib that hand a frame to *their* caller: when one of them
# triggers a frame event, the verdict depends on who called it.
_HANDOUT = frozenset(
    {
        "currentframe",
        "stack",
        "trace",
        "getouterframes",
        "getinnerframes",
        "walk_tb",
        "walk_stack",
        "<lambda>",
        "_call_with_frames_removed",
        "get_stack",
        "_task_get_stack",
        "print_stack",
        "format_stack",
        "extract_stack",
        "getframeinfo",
    }
)
# The import machinery: skipped when looking for the code that asked for an import.
_MACHINERY_NAMES = ("importlib", "imp.py", "pkgutil.py", "runpy.py", "zipimport")
_WHY = {
    "import": "the profile blocks this module",
    "guard": "no profile allows it",
    "limits": "no profile allows it",
    "terminal": "no profile allows it",
}
_PROC_EVENTS = (
    "subprocess.Popen",
    "os.system",
    "os.exec",
    "os.posix_spawn",
    "os.fork",
    "os.forkpty",
    "os.spawn",
)
_CTYPES_EVENTS = (
    "ctypes.dlopen",
    "ctypes.dlsym",
    "ctypes.dlsym/handle",
    "ctypes.addressof",
    "ctypes.call_function",
    "ctypes.cdata",
    "ctypes.cdata/buffer",
    "ctypes.create_string_buffer",
    "ctypes.create_unicode_buffer",
    "ctypes.get_errno",
    "ctypes.set_errno",
    "ctypes.string_at",
    "ctypes.wstring_at",
    "ctypes.PyObj_FromPtr",
    "ctypes.get_last_error",
    "ctypes.set_last_error",
    "ctypes.seh_exception",
    "ctypes.set_exception",
)
_INTROSPECTION_EVENTS = (
    "sys._getframe",
    "sys._current_frames",
    "sys._current_exceptions",
    "gc.get_objects",
    "gc.get_referrers",
    "gc.get_referents",
)


def _make() -> Callable[
    [dict[str, Any], Callable[[dict[str, Any]], None] | None, Callable[[str], str]],
    tuple[Any, GuardHandle],
]:
    """The guard's functions, over a policy not yet given: returns ``configure``, which
    fills the policy in (once) and returns the hook and its handle.

    Longer than a screen: the hook and its helpers are closures over one scope, so
    that what they call is fixed when they are made (see above). Made in the fork
    server (:data:`_PREPARED`), they are shared by every sandbox's process: a sandbox
    only fills in its policy, instead of making ~60 functions and their cells (those
    objects, and the references they take, cost each idle ``high`` sandbox 0.1-0.15 MiB
    of private pages, measured). ``configure`` assigns every policy value the
    functions read under ``nonlocal`` (tests/test_guard.py checks that none is missed:
    a placeholder left in force would be a check against nothing).
    """
    import _thread
    import stat as _statmod
    import time as _timemod

    # -- captured primitives ---------------------------------------------------------
    _type, _int, _str, _bytes, _len = type, int, str, bytes, len
    _tuple, _list, _float, _bool, _NoneType = tuple, list, float, bool, type(None)
    _issubclass, _repr, _obj_repr = issubclass, repr, object.__repr__
    _PermissionError, _OSError, _ValueError = PermissionError, OSError, ValueError
    _str_getitem, _bytes_getitem, _full = str.__getitem__, bytes.__getitem__, slice(None)
    _lstat, _stat, _readlink, _getcwd = os.lstat, os.stat, os.readlink, os.getcwd
    _getpid, _getpgid, _getframe = os.getpid, os.getpgid, sys._getframe
    _get_ident, _now = _thread.get_ident, _timemod.time
    S_ISLNK, S_ISDIR, S_ISCHR, S_ISBLK, S_ISREG = (
        _statmod.S_ISLNK,
        _statmod.S_ISDIR,
        _statmod.S_ISCHR,
        _statmod.S_ISBLK,
        _statmod.S_ISREG,
    )
    fsenc = sys.getfilesystemencoding()
    type_getattribute = type.__getattribute__
    FunctionType = _type(_make)
    try:
        import pathlib

        safe_pathlike: tuple[type, ...] = (pathlib.PosixPath, pathlib.PurePosixPath)
    except Exception:  # pragma: no cover - pathlib is always there
        safe_pathlike = ()
    DirEntry = os.DirEntry
    CodeType = _type(_make.__code__)
    import io

    _open = io.open

    try:
        import resource

        getrlimit, RLIM_INF = resource.getrlimit, resource.RLIM_INFINITY
    except ImportError:  # pragma: no cover - not on Linux
        getrlimit, RLIM_INF = None, -1
    try:
        import _socket

        sock_family = _socket.socket.family.__get__
        AF_UNIX, AF_INET, AF_INET6 = _socket.AF_UNIX, _socket.AF_INET, _socket.AF_INET6
        SOCK_RAW = _socket.SOCK_RAW
    except Exception:  # pragma: no cover
        sock_family, AF_UNIX, AF_INET, AF_INET6, SOCK_RAW = None, 1, 2, 10, 3

    # -- the policy, frozen: filled in once, by configure() below ---------------------
    # Placeholders until then (the hook is only handed out by configure()).
    configured = False
    profile, sealed_wd, own_pid, own_pgid = "", "", 0, 0
    allow: frozenset[str] = frozenset()
    write_any = read_any = report_allowed = cache_ok = False
    none: tuple[str, ...] = ("\0",)  # a prefix no path starts with
    write_exact = read_exact = code_exact = list_dirs = dev_files = blocked = frozenset(none)
    protected_exact = warned = net_hosts = blocked_dirs = blocked_rels = frozenset(none)
    write_pfx = read_pfx = code_pfx = trusted_pfx = untrusted_pfx = protected = none
    code_suffixes = none
    dev_ok_f: frozenset[int] = frozenset()
    net_allow: frozenset[tuple[str, int]] = frozenset()
    on_violation: Callable[[dict[str, Any]], None] | None = None
    no_handlers: dict[str, Callable[[str, tuple], None]] = {}
    get = no_handlers.get  # the table of handlers, looked up by event

    # -- mutable state (only the hook touches it) ------------------------------------
    dcache: dict[str, str] = {}  # directory as given -> resolved directory
    ok_write: dict[str, bool] = {}  # absolute path -> allowed (existing regular files)
    ok_read: dict[str, bool] = {}
    cwd_box: list[str | None] = [None]
    trusted_cache: dict[str, bool] = {}
    checking: set[int] = set()  # threads inside a caller check (our own frame reads)
    reporting: set[int] = set()  # threads inside on_violation
    count = [0]

    # -- reporting -------------------------------------------------------------------
    def srepr(x: Any, depth: int = 0) -> str:
        """repr() that never runs user code: only exact builtin types are shown."""
        t = _type(x)
        if t is _str or t is _bytes or t is _int or t is _float or t is _bool or t is _NoneType:
            r = _repr(x)
        elif (t is _tuple or t is _list) and depth < 2:
            inner = ", ".join(srepr(i, depth + 1) for i in x[:8])
            r = ("(%s)" if t is _tuple else "[%s]") % (inner + (", ..." if _len(x) > 8 else ""))
        else:
            r = _obj_repr(x)
        return r if _len(r) <= 300 else r[:297] + "..."

    def report(event: str, detail: str, action: str, group: str) -> None:
        if on_violation is None:
            return
        tid = _get_ident()
        if tid in reporting:
            return
        reporting.add(tid)
        try:
            on_violation(
                {
                    "event": event,
                    "detail": detail,
                    "action": action,
                    "group": group,
                    "profile": profile,
                    "pid": own_pid,
                    "ts": _now(),
                }
            )
        except Exception:
            pass
        finally:
            reporting.discard(tid)

    def refuse(event: str, group: str, detail: str) -> NoReturn:
        count[0] += 1
        report(event, detail, "refused", group)
        why = _WHY.get(group) or f"the profile does not allow {group}"
        raise _PermissionError(f"{event} refused by security profile {profile!r}: {detail} ({why})")

    def allowed(event: str, group: str, detail: str) -> None:
        if group in warned:
            report(event, detail, "warned", group)
        elif report_allowed:
            report(event, detail, "allowed", group)

    # -- paths -----------------------------------------------------------------------
    def as_path(p: Any) -> str | None:
        t = _type(p)
        if t is _str:
            return p
        if t is _bytes:
            return p.decode(fsenc, "surrogateescape")
        if t in safe_pathlike:
            return _str(p)
        if t is DirEntry:
            return as_path(p.path)
        # Subclasses: copy the underlying data without calling any of their methods.
        if _issubclass(t, _str):
            return _str_getitem(p, _full)
        if _issubclass(t, _bytes):
            return _bytes_getitem(p, _full).decode(fsenc, "surrogateescape")
        return None

    def cwd() -> str:
        c = cwd_box[0]
        if c is None:
            c = cwd_box[0] = _getcwd()
        return c

    def realpath(path: str) -> str:
        """Resolve symlinks and '..' the way the kernel will (components left to right)."""
        resolved = ""
        pending = path.split("/")
        pending.reverse()
        links = 0
        while pending:
            name = pending.pop()
            if not name or name == ".":
                continue
            if name == "..":
                resolved = resolved[: resolved.rfind("/")] if resolved else ""
                continue
            candidate = resolved + "/" + name
            try:
                st = _lstat(candidate)
            except (_OSError, _ValueError):
                resolved = candidate  # does not exist (yet): kept literally
                continue
            if not S_ISLNK(st.st_mode):
                resolved = candidate
                continue
            links += 1
            if links > 40:
                raise _OSError(40, "too many levels of symbolic links", path)
            target = _readlink(candidate)
            if target.startswith("/"):
                resolved = ""
            parts = target.split("/")
            parts.reverse()
            pending.extend(parts)
        return resolved or "/"

    def resolve(p: str, dir_fd: Any = None, follow: bool = True) -> tuple[str, Any]:
        """(real path, stat of the final target or None if it does not exist).

        ``follow=False`` is for calls that act on a symlink itself (unlink,
        rename, symlink, rmdir): the final component is then not followed.
        """
        if p[:1] != "/":
            if _type(dir_fd) is _int and dir_fd >= 0:
                base = _readlink(f"/proc/self/fd/{dir_fd}")
            else:
                base = cwd()
            p = base + "/" + p
        i = p.rfind("/")
        head, tail = p[:i] or "/", p[i + 1 :]
        if not tail or tail == "." or tail == "..":
            full = realpath(p)
            follow = True
        else:
            rd = dcache.get(head)
            if rd is None:
                rd = realpath(head)
                if cache_ok:
                    if _len(dcache) >= 2048:
                        dcache.clear()
                    dcache[head] = rd
            full = rd + "/" + tail if rd != "/" else "/" + tail
        try:
            st = _lstat(full)
        except (_OSError, _ValueError):
            return full, None
        if S_ISLNK(st.st_mode):
            if not follow:
                return full, None
            full = realpath(full)
            try:
                return full, _stat(full)
            except (_OSError, _ValueError):
                return full, None
        return full, st

    def inside(path: str, exact: frozenset[str], pfx: tuple[str, ...]) -> bool:
        return path in exact or path.startswith(pfx)

    def device_ok(st: Any) -> bool:
        if st is None:
            return True
        mode = st.st_mode
        if S_ISBLK(mode):
            return False
        return not S_ISCHR(mode) or st.st_rdev in dev_ok_f

    def drop_caches() -> None:
        dcache.clear()
        ok_write.clear()
        ok_read.clear()

    def check_write(event: str, raw: Any, dir_fd: Any = None, follow: bool = True) -> Any:
        """Refuse unless writing ``raw`` is allowed; returns the target's stat (or None)."""
        if _type(raw) is _int:
            return  # an open descriptor: it was checked when it was opened
        p = as_path(raw)
        if p is None:
            refuse(
                event,
                "file_write_workdir",
                f"a path of type {_type(raw).__name__} cannot be checked",
            )
        try:
            full, st = resolve(p, dir_fd, follow)
        except (_OSError, _ValueError) as exc:
            refuse(event, "file_write_workdir", f"cannot resolve {srepr(p)}: {getattr(exc, 'strerror', None) or exc}")
        if not device_ok(st):
            refuse(event, "file_write_any", f"{srepr(full)} is a device")
        if write_any or inside(full, write_exact, write_pfx) or full == "/dev/null":
            return st
        refuse(event, "file_write_any", f"writing {srepr(full)} (outside the workdir)")

    def check_read(
        event: str, raw: Any, dir_fd: Any = None, listing: bool = False, os_open: bool = False
    ) -> Any:
        """Refuse unless reading ``raw`` is allowed; returns the target's stat (or None)."""
        if raw is None or _type(raw) is _int:
            return None  # None: the working directory; int: an open descriptor
        p = as_path(raw)
        if p is None:
            refuse(event, "file_read", f"a path of type {_type(raw).__name__} cannot be checked")
        try:
            full, st = resolve(p, dir_fd)
        except (_OSError, _ValueError) as exc:
            refuse(event, "file_read", f"cannot resolve {srepr(p)}: {getattr(exc, 'strerror', None) or exc}")
        if read_any:
            return st
        if not device_ok(st):
            refuse(event, "file_read_any", f"{srepr(full)} is a device")
        if inside(full, write_exact, write_pfx):
            return st
        is_dir = st is not None and S_ISDIR(st.st_mode)
        if os_open and is_dir:
            # A directory descriptor outside the workdir would let dir_fd= calls
            # (which the audit events describe only by a relative name) escape.
            refuse(event, "file_read_any", f"opening directory {srepr(full)} outside the workdir")
        if inside(full, read_exact, read_pfx) or full in dev_files:
            return st
        if inside(full, code_exact, code_pfx) and (
            is_dir or listing or full.endswith(code_suffixes)
        ):
            return st  # the import system reading code
        if listing and full in list_dirs:
            return st
        refuse(event, "file_read", f"reading {srepr(full)} (outside the allowed roots)")

    # -- callers ---------------------------------------------------------------------
    def trusted_file(fn: Any) -> bool:
        if _type(fn) is not _str:
            return False
        r = trusted_cache.get(fn)
        if r is None:
            r = (fn.startswith("<frozen ") or fn.startswith(trusted_pfx)) and not fn.startswith(
                untrusted_pfx
            )
            if _len(trusted_cache) > 4096:
                trusted_cache.clear()
            trusted_cache[fn] = r
        return r

    def is_machinery(fn: str) -> bool:
        if fn.startswith("<frozen importlib") or fn.startswith("<frozen zipimport"):
            return True
        if not trusted_file(fn):
            return False
        for name in _MACHINERY_NAMES:
            if name in fn:
                return True
        return False

    def untrusted_caller(depth: int, skip_machinery: bool = False) -> bool:
        """Whether the code that triggered the event is user code.

        Walks out from the frame ``depth`` levels up; frames of stdlib helpers
        that hand frames to their caller, and (for imports) of the import
        machinery, are looked through. Our own frame reads raise events too:
        those are recognised by the thread being inside a check, and allowed.
        """
        tid = _get_ident()
        if tid in checking:
            return False
        checking.add(tid)
        try:
            f: FrameType | None = _getframe(depth + 1)
            while f is not None:
                code = f.f_code
                fn = code.co_filename
                if skip_machinery and is_machinery(fn):
                    f = f.f_back
                    continue
                if not trusted_file(fn):
                    return True
                if code.co_name in _HANDOUT:
                    f = f.f_back
                    continue
                return False
            return False
        finally:
            checking.discard(tid)

    # -- handlers: fn(event, args); return to allow, raise to refuse ----------------

    def on_open(event: str, args: tuple) -> None:
        # The one hot handler: every open() of the sandbox comes here. A path
        # already checked (an existing regular file) is a dict lookup.
        path, flags = args[0], args[2]
        t = _type(path)
        if t is _int:
            return
        write = _type(flags) is _int and flags & _WRITE_FLAGS
        cache = ok_write if write else ok_read
        key = None
        if t is _str and cache_ok:
            key = path if path[:1] == "/" else (cwd_box[0] or cwd()) + "/" + path
            if key in cache:
                return
        if write:
            st = check_write(event, path)
        else:
            st = check_read(event, path, os_open=args[1] is None)
        if key is not None and st is not None and S_ISREG(st.st_mode):
            if _len(cache) >= 4096:
                cache.clear()
            cache[key] = True

    def on_listing(event: str, args: tuple) -> None:
        check_read(event, args[0] if args else None, listing=True)

    def on_write1(event: str, args: tuple) -> None:
        # os.mkdir(path, mode, dir_fd), os.rmdir(path, dir_fd), os.remove(path, dir_fd),
        # os.chmod(path, mode, dir_fd), os.chown(path, uid, gid, dir_fd), ...
        dir_fd = (
            args[-1]
            if event in ("os.mkdir", "os.rmdir", "os.remove", "os.chmod", "os.chown", "os.utime")
            else None
        )
        if event in ("os.remove", "os.rmdir"):
            check_write(event, args[0], dir_fd, follow=False)
            drop_caches()
        else:
            check_write(event, args[0], dir_fd)

    def on_write2(event: str, args: tuple) -> None:
        # os.rename(src, dst, src_dir_fd, dst_dir_fd), os.link(...): both ends write.
        # rename acts on the names themselves; link follows its source by default.
        check_write(event, args[0], args[2] if _len(args) > 2 else None, follow=event == "os.link")
        check_write(event, args[1], args[3] if _len(args) > 3 else None, follow=False)
        drop_caches()

    def on_symlink(event: str, args: tuple) -> None:
        # The target is only a string; opening through the link resolves it later.
        check_write(event, args[1], args[2] if _len(args) > 2 else None, follow=False)
        drop_caches()

    def on_chdir(event: str, args: tuple) -> None:
        cwd_box[0] = None

    def on_sqlite(event: str, args: tuple) -> None:
        db = args[0]
        p = as_path(db) if _type(db) is not _int else None
        if p is None:
            refuse(
                event,
                "file_write_workdir",
                f"a database of type {_type(db).__name__} cannot be checked",
            )
        if p in ("", ":memory:"):
            return
        if p.startswith("file:"):
            p = p[5:].split("?", 1)[0]
            if p in ("", ":memory:"):
                return
        check_write(event, p)

    def on_process(event: str, args: tuple) -> None:
        detail = srepr(args[0]) if args and args[0] != "" else event
        if event == "subprocess.Popen" and _len(args) > 1:
            detail = srepr(args[1])
        if "subprocess" in allow:
            allowed(event, "subprocess", detail)
            return
        refuse(event, "subprocess", f"starting processes: {detail}")

    # The group the sandbox was given (runtime.child.boot.own_group), not the one
    # it is in now: it shares its host's session, where a process could move to
    # another group (the kernel filter refuses that too, runtime.child.seccomp).
    # own_group(0): whether the sandbox is still in it (a kill(0) names its group).
    def own_group(pid: int) -> bool:
        try:
            return pid == own_pid or _getpgid(pid) == own_pgid
        except _OSError:
            return False

    def on_kill(event: str, args: tuple) -> None:
        pid, sig = args[0], args[1]
        if "signal_any" in allow or _type(pid) is not _int:
            return
        if event == "os.killpg":
            ok = own_group(0) if pid == 0 else pid == own_pgid
        elif pid == 0:
            ok = own_group(0)
        elif pid == -1:
            ok = False
        elif pid < 0:
            ok = -pid == own_pgid
        else:
            ok = own_group(pid)
        if not ok:
            refuse(
                event,
                "signal_any",
                f"signal {srepr(sig)} to pid {pid} (outside the sandbox's process group)",
            )

    def on_rlimit(event: str, args: tuple) -> None:
        if event == "resource.prlimit":
            pid, res, limits = args[0], args[1], args[2] if _len(args) > 2 else None
            if pid not in (0, own_pid):
                refuse(event, "signal_any", f"changing the limits of pid {srepr(pid)}")
        else:
            res, limits = args[0], args[1]
        if limits is None or getrlimit is None:
            return
        if (
            _type(limits) not in (_tuple, _list)
            or _len(limits) != 2
            or _type(limits[1]) is not _int
        ):
            refuse(event, "limits", f"limits {srepr(limits)} cannot be checked")
        cur_hard = getrlimit(res)[1]
        new_hard = limits[1]
        raising = cur_hard != RLIM_INF and (new_hard == RLIM_INF or new_hard > cur_hard)
        if raising:
            refuse(
                event,
                "limits",
                f"raising the hard limit of resource {res} from {cur_hard} to {new_hard}",
            )

    def on_ioctl(event: str, args: tuple) -> None:
        if _len(args) > 1 and _type(args[1]) is _int and args[1] in (_TIOCSTI, _TIOCLINUX):
            refuse(event, "terminal", f"ioctl {srepr(args[1])} (terminal input injection)")

    def net_ok(sock: Any, addr: Any, server: bool) -> tuple[bool, str, str]:
        group = "network_server" if server else "network_client"
        if group in allow:
            return True, group, srepr(addr)
        try:
            fam = sock_family(sock) if sock_family is not None else AF_INET
        except Exception:
            fam = -1
        if fam == AF_UNIX:
            p = as_path(addr)
            if p is None or p[:1] == "\0" or not p:
                return False, group, f"unix socket {srepr(addr)}"
            try:
                full, _st = resolve(p)
            except (_OSError, _ValueError):
                return False, group, f"unix socket {srepr(addr)}"
            return (
                write_any or inside(full, write_exact, write_pfx),
                group,
                f"unix socket {srepr(full)}",
            )
        if fam in (AF_INET, AF_INET6) and _type(addr) is _tuple and _len(addr) >= 2:
            host, port = addr[0], addr[1]
            if _type(host) is _str and _type(port) is _int:
                return (host, port) in net_allow or (host, 0) in net_allow, group, f"{host}:{port}"
        return False, group, srepr(addr)

    def on_connect(event: str, args: tuple) -> None:
        sock, addr = args[0], args[1] if _len(args) > 1 else None
        if addr is None:  # sendmsg on a connected socket
            return
        ok, group, detail = net_ok(sock, addr, server=event == "socket.bind")
        if ok:
            allowed(event, group, detail)
            return
        refuse(event, group, f"address {detail}")

    def on_socket_new(event: str, args: tuple) -> None:
        if "network_client" in allow or "network_server" in allow:
            return
        family = args[1] if _len(args) > 1 else None
        stype = args[2] if _len(args) > 2 else None
        if family in (-1, AF_UNIX, AF_INET, AF_INET6) and stype != SOCK_RAW:
            return
        refuse(event, "network_client", f"socket family {srepr(family)} type {srepr(stype)}")

    def on_resolve(event: str, args: tuple) -> None:
        if "network_client" in allow:
            return
        host = args[0] if args else None
        if _type(host) is _str and host in net_hosts:
            return
        refuse(event, "network_client", f"name resolution of {srepr(host)}")

    def on_always(event: str, args: tuple) -> None:
        refuse(event, "guard", "the guard's own hooks cannot be extended or removed")

    def on_native(event: str, args: tuple) -> None:
        if "native" in allow:
            return
        refuse(event, "native", srepr(args[0]) if args else "native code")

    def on_subinterp(event: str, args: tuple) -> None:
        if "native" not in allow:
            refuse(event, "native", "a sub-interpreter would run without this guard")

    def on_introspect(event: str, args: tuple) -> None:
        if "introspection" in allow or not untrusted_caller(2):
            return
        refuse(event, "introspection", "frame and object-graph access from sandbox code")

    def on_trace(event: str, args: tuple) -> None:
        if "introspection" in allow:
            return
        refuse(event, "introspection", "trace and profile functions receive frames")

    def on_getattr(event: str, args: tuple) -> None:
        # Exact str first: membership tests must not run a str subclass's __hash__.
        if (
            _len(args) > 1
            and _type(args[1]) is _str
            and args[1] in _FRAME_ATTRS
            and "introspection" not in allow
        ):
            if untrusted_caller(2):
                refuse(event, "introspection", f"reading {args[1]} of {_type(args[0]).__name__}")

    def owner_module(obj: Any) -> str | None:
        t = _type(obj)
        if t is FunctionType:
            m = obj.__module__
        elif _issubclass(t, type):
            try:
                m = type_getattribute(obj, "__module__")
            except Exception:
                return None
        else:
            try:
                m = type_getattribute(t, "__module__")
            except Exception:
                return None
        return m if _type(m) is _str else None

    def on_setattr(event: str, args: tuple) -> None:
        if "introspection" in allow or _len(args) < 2:
            return
        name = args[1]
        if _type(name) is not _str:
            if not _issubclass(_type(name), _str):
                return
            name = _str_getitem(name, _full)  # an exact copy: no __hash__ of theirs runs
        if name not in _PROTECTED_ATTRS:
            return
        m = owner_module(args[0])
        if (
            m is not None
            and (m in protected_exact or m.startswith(protected))
            and untrusted_caller(2)
        ):
            refuse(event, "introspection", f"rebinding {name} of the runtime's {m} objects")

    def forged_name(fn: Any) -> bool:
        return _type(fn) is _str and (
            fn.startswith("<frozen")
            or (fn.startswith(trusted_pfx) and not fn.startswith(untrusted_pfx))
        )

    def on_compile(event: str, args: tuple) -> None:
        if "introspection" in allow or _len(args) < 2 or not forged_name(args[1]):
            return
        # A real stdlib source compiled by the import system (no .pyc) is fine; any
        # other source under a stdlib name would be trusted by the frame checks.
        src, fn = args[0], args[1]
        if fn.startswith("<frozen"):
            refuse(event, "introspection", f"compiling code named {srepr(fn)}")
        try:
            with _open(fn, "rb") as fh:
                data = fh.read()
        except _OSError:
            data = None
        if _type(src) is _str:
            src = src.encode("utf-8", "surrogatepass")
        if data is None or _type(src) is not _bytes or src != data:
            refuse(
                event, "introspection", f"compiling code named {srepr(fn)} that is not that file"
            )

    def on_code_new(event: str, args: tuple) -> None:
        if "introspection" in allow or _len(args) < 2 or not forged_name(args[1]):
            return
        if untrusted_caller(2):
            refuse(event, "introspection", f"building a code object named {srepr(args[1])}")

    def on_unpickle(event: str, args: tuple) -> None:
        if "pickle" in allow or not untrusted_caller(2):
            return
        what = (
            srepr(args[0]) + "." + srepr(args[1])
            if event == "pickle.find_class" and _len(args) > 1
            else ""
        )
        refuse(event, "pickle", f"deserialising in sandbox code {what}".rstrip())

    def module_blocked(name: Any) -> bool:
        if _type(name) is not _str:
            return False
        if name in blocked:
            return True
        i = name.find(".")
        while i != -1:
            if name[:i] in blocked:
                return True
            i = name.find(".", i + 1)
        return False

    def on_import(event: str, args: tuple) -> None:
        name = args[0] if args else None
        filename: Any = args[1] if _len(args) > 1 else None  # narrowed by _type() below
        if _type(filename) is _str and "native" not in allow and filename.endswith(".so"):
            try:
                fn = realpath(filename) if filename.startswith("/") else filename
            except (_OSError, _ValueError):
                fn = filename
            if not fn.startswith(trusted_pfx) or fn.startswith(untrusted_pfx):
                refuse(event, "native", f"loading the extension module {srepr(filename)}")
        if module_blocked(name) and untrusted_caller(2, skip_machinery=True):
            refuse(event, "import", f"importing {name}")

    def on_exec(event: str, args: tuple) -> None:
        code: Any = args[0] if args else None  # narrowed by _type() below
        fn = code.co_filename if _type(code) is CodeType else None
        if blocked_file(fn) and untrusted_caller(2, skip_machinery=True):
            refuse(event, "import", f"importing the blocked module in {srepr(fn)}")
        if not sealed_wd or _type(fn) is not _str:
            return
        name: str = fn  # type: ignore[assignment]  # a str: checked just above
        if name.startswith("/") and not (
            name.startswith(trusted_pfx) and not name.startswith(untrusted_pfx)
        ):
            try:
                full = realpath(name)
            except (_OSError, _ValueError):
                full = name
            if full.startswith(sealed_wd):
                refuse(event, "dynamic_code", f"running code from the workdir ({srepr(fn)})")

    def on_breakpoint(event: str, args: tuple) -> None:
        if "introspection" not in allow:
            refuse(event, "introspection", "debuggers")

    def blocked_file(fn: Any) -> bool:
        """Whether ``fn`` is ``<directory>/<relative name>`` of those two sets."""
        if _type(fn) is not _str:
            return False
        cut = fn.find("/", 1)
        while cut > 0:
            if fn[cut + 1:] in blocked_rels and fn[:cut] in blocked_dirs:
                return True
            cut = fn.find("/", cut + 1)
        return False

    def hook(event: str, args: tuple) -> None:
        # The hot path: most events are not in the table.
        h = get(event)
        if h is not None:
            h(event, args)

    def refusals() -> int:
        return count[0]

    def configure(
        policy: dict[str, Any],
        report_to: Callable[[dict[str, Any]], None] | None,
        real: Callable[[str], str],
    ) -> tuple[Any, GuardHandle]:
        """Fill in this guard's policy (once) and return its hook and handle."""
        nonlocal profile, allow, write_any, read_any, write_exact, write_pfx, read_exact
        nonlocal read_pfx, code_exact, code_pfx, trusted_pfx, untrusted_pfx, sealed_wd
        nonlocal code_suffixes, list_dirs, dev_files, dev_ok_f, blocked, protected
        nonlocal protected_exact, net_allow, net_hosts, report_allowed, warned, own_pid, own_pgid
        nonlocal blocked_dirs, blocked_rels, cache_ok, on_violation, get, configured
        if configured:
            raise RuntimeError("this guard is already configured")
        configured = True
        on_violation = report_to
        # The policy, frozen.
        profile = _str(policy["profile"])
        allow = frozenset(policy.get("allow", ()))

        def roots(key: str) -> tuple[str, ...]:
            return _tuple(dict.fromkeys(real(r) for r in policy.get(key, ()) or ()))

        write_roots, read_roots, code_roots = (
            roots("write_roots"),
            roots("read_roots"),
            roots("code_roots"),
        )
        trusted_roots, untrusted_roots = roots("trusted_code_roots"), roots("untrusted_roots")
        write_any = "/" in write_roots
        read_any = _bool(policy.get("read_any")) or write_any or "/" in read_roots

        def prefixes(rs: tuple[str, ...]) -> tuple[str, ...]:
            return _tuple(r.rstrip("/") + "/" for r in rs) or ("\0",)

        write_exact, write_pfx = frozenset(write_roots), prefixes(write_roots)
        read_exact, read_pfx = frozenset(read_roots), prefixes(read_roots)
        code_exact, code_pfx = frozenset(code_roots), prefixes(code_roots)
        trusted_pfx, untrusted_pfx = prefixes(trusted_roots), prefixes(untrusted_roots)
        # Files the sandbox writes may never run as code where dynamic code is denied.
        sealed_wd = (
            real(policy["workdir"]).rstrip("/") + "/"
            if "dynamic_code" not in policy["allow"]
            else ""
        )
        code_suffixes = _tuple(policy.get("code_suffixes") or (".py", ".pyc", ".so"))
        # sys.path entries may be listed by the import system even when they are not
        # readable roots (it treats a refused listing as empty, but we would log it).
        list_dirs = frozenset(real(p) for p in sys.path if p and p.startswith("/"))
        dev_files = frozenset(policy.get("dev_files") or ())
        dev_ok: set[int] = set()
        for dev in dev_files:
            try:
                st = os.stat(dev)
                if S_ISCHR(st.st_mode):
                    dev_ok.add(st.st_rdev)
            except OSError:
                pass
        dev_ok_f = frozenset(dev_ok)
        # The app's own top-level modules shadow stdlib names (an app may have its own
        # "code.py"): importing those by name is not importing the blocked module.
        app_modules: set[str] = set()
        app_dir = policy.get("app_dir")
        given = policy.get("app_modules")
        if isinstance(given, (list, tuple)):
            # Named by the host (the sandbox may not be able to list its app directory:
            # its code is served from memory, and it may run under its own UID).
            app_modules.update(m.split(".")[0] for m in given if isinstance(m, str))
        elif isinstance(app_dir, str) and os.path.isdir(app_dir):
            try:
                entries = os.listdir(app_dir)
            except OSError:
                entries = []
            for entry in entries:
                if entry.endswith(".py"):
                    app_modules.add(entry[:-3])
                elif os.path.isfile(os.path.join(app_dir, entry, "__init__.py")):
                    app_modules.add(entry)
        blocked = frozenset(
            m for m in policy.get("blocked_modules") or () if m.split(".")[0] not in app_modules
        )
        protected = _tuple(m + "." for m in policy.get("protected_modules") or ()) or ("\0",)
        protected_exact = frozenset(policy.get("protected_modules") or ())
        net_allow = frozenset((_str(h), _int(p)) for h, p in (policy.get("net_allow") or ()))
        net_hosts = frozenset(h for h, _p in net_allow)
        report_allowed = _bool(policy.get("report_allowed"))
        warned = frozenset(policy.get("warn") or ())  # allowed, but always reported
        own_pid = _getpid()
        own_pgid = _getpgid(0)

        # Files whose execution means a blocked module is being imported (catches
        # importlib.import_module, which raises no "import" event for source modules).
        # Kept as (directories, relative file names) rather than their product: a set
        # of every pair cost each sandbox ~0.2 MiB and its building time at install.
        entries = [p for p in sys.path if p]
        blocked_dirs = frozenset(entries + [real(p) for p in entries] + list(code_roots))
        blocked_rels = frozenset(
            f"{mod.replace('.', '/')}{tail}" for mod in blocked for tail in (".py", "/__init__.py")
        )

        preloaded = _tuple(sorted(m for m in blocked if m in sys.modules))

        # Path caches are sound only while every change to the file system that could
        # turn a checked path into a symlink raises an audit event that drops them;
        # child processes and native code would not, so they disable caching.
        cache_ok = "subprocess" not in allow and "native" not in allow

        # -- handlers: fn(event, args); return to allow, raise to refuse ------------
        handlers: dict[str, Callable[[str, tuple], None]] = {}
        for ev in _PROC_EVENTS:
            handlers[ev] = on_process
        for ev in _CTYPES_EVENTS:
            handlers[ev] = on_native
        for ev in _INTROSPECTION_EVENTS:
            handlers[ev] = on_introspect
        handlers.update(
            {
                "sys.settrace": on_trace,
                "sys.setprofile": on_trace,
                "object.__getattr__": on_getattr,
                "object.__setattr__": on_setattr,
                "object.__delattr__": on_setattr,
                "compile": on_compile,
                "code.__new__": on_code_new,
                "marshal.loads": on_unpickle,
                "marshal.load": on_unpickle,
                "pickle.find_class": on_unpickle,
                "import": on_import,
                "sys.addaudithook": on_always,
                "cpython.PyInterpreterState_New": on_subinterp,
                "builtins.breakpoint": on_breakpoint,
                "pdb.Pdb": on_breakpoint,
                "os.kill": on_kill,
                "os.killpg": on_kill,
                "resource.setrlimit": on_rlimit,
                "resource.prlimit": on_rlimit,
                "fcntl.ioctl": on_ioctl,
                "socket.connect": on_connect,
                "socket.sendto": on_connect,
                "socket.sendmsg": on_connect,
                "socket.bind": on_connect,
                "socket.__new__": on_socket_new,
                "socket.getaddrinfo": on_resolve,
                "socket.gethostbyname": on_resolve,
                "socket.gethostbyaddr": on_resolve,
                "socket.getnameinfo": on_resolve,
                "socket.sethostname": on_always,
                "os.chdir": on_chdir,
            }
        )
        if blocked_rels:
            handlers["exec"] = on_exec
        if not (read_any and write_any):
            handlers.update(
                {
                    "open": on_open,
                    "os.listdir": on_listing,
                    "os.scandir": on_listing,
                    "os.listxattr": on_listing,
                    "os.getxattr": on_listing,
                    "os.mkdir": on_write1,
                    "os.rmdir": on_write1,
                    "os.remove": on_write1,
                    "os.chmod": on_write1,
                    "os.chown": on_write1,
                    "os.utime": on_write1,
                    "os.truncate": on_write1,
                    "os.setxattr": on_write1,
                    "os.removexattr": on_write1,
                    "os.rename": on_write2,
                    "os.link": on_write2,
                    "os.symlink": on_symlink,
                    "sqlite3.connect": on_sqlite,
                }
            )
        else:
            handlers["os.symlink"] = handlers["os.rename"] = on_chdir  # nothing cached to drop
        if "introspection" in allow:
            for ev in (
                *_INTROSPECTION_EVENTS,
                "sys.settrace",
                "sys.setprofile",
                "object.__getattr__",
                "object.__setattr__",
                "object.__delattr__",
                "compile",
                "code.__new__",
                "builtins.breakpoint",
                "pdb.Pdb",
            ):
                handlers.pop(ev, None)
        if "pickle" in allow:
            for ev in ("marshal.loads", "marshal.load", "pickle.find_class"):
                handlers.pop(ev, None)

        get = handlers.get

        # _posixsubprocess.fork_exec starts processes without raising an audit event:
        # replace it (a fresh import of the extension is refused as a blocked import).
        if "subprocess" not in allow:
            try:
                import _posixsubprocess

                refused = _Refused("_posixsubprocess.fork_exec")
                _posixsubprocess.fork_exec = refused
                # subprocess keeps a reference of its own (``_fork_exec``) when loaded.
                sp = sys.modules.get("subprocess")
                if sp is not None and getattr(sp, "_fork_exec", None) is not None:
                    sp._fork_exec = refused  # type: ignore[attr-defined]
                handlers["_posixsubprocess.fork_exec"] = on_process
            except ImportError:  # pragma: no cover
                pass
        # Bytecode caches would be written next to the app's modules, outside the
        # workdir: refused, and reported as violations the app did not commit.
        if not write_any:
            sys.dont_write_bytecode = True

        return hook, GuardHandle(profile, preloaded, refusals)

    return configure


#: The guard's functions made at import, in the fork server, so that every sandbox
#: shares them (see :func:`_make`). :func:`install_guard` takes them: once the guard
#: is installed no reference to them is left where the sandbox's code could reach it.
_PREPARED: Callable[..., tuple[Any, GuardHandle]] | None = _make()
