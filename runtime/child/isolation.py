"""OS-level isolation of a sandbox process: the layers that make the guarantees real.

Two halves:

- **Host side** (the manager, through :mod:`actors.containment`):
  :func:`detect` finds once per host process which layers this machine offers
  (root? namespaces? libseccomp? slirp4netns? a writable cgroup hierarchy?),
  :func:`missing_required` says which layers every sandbox needs are missing
  (creation then fails with :class:`IsolationUnavailable`), :func:`prepare`
  gives a new sandbox its own UID (the workdir is chowned to it) and cgroups,
  :func:`plan` turns a profile's groups and limits into the plain-data plan a
  child applies, and :func:`release` kills whatever is left in the sandbox's
  cgroups or runs under its UID, then removes the cgroups.
- **Child side**: :func:`apply` runs first thing in the sandbox process (after
  ``own_group()``, before the guard and any user code) and returns the layers it
  applied and, for each one it could not, the reason; :func:`check_required`
  (called by the boot before any user code) fails the boot when a layer the plan
  requires is not among them.

The OS layers are the same in every profile (:data:`REQUIRED_LAYERS` and
``seccomp``): a profile decides what code may do inside the sandbox, these keep
whatever it does there. Layers (names as listed in a sandbox's info under
``isolation``):

- ``rlimits``: RLIMIT_AS (the profile's memory on top of what the process had
  mapped at boot), RLIMIT_CPU (SIGXCPU at the soft limit, SIGKILL 2 s later),
  RLIMIT_NOFILE, RLIMIT_FSIZE (SIGXFSZ set back to its default: a file-size bomb
  ends the process, which the host sees), RLIMIT_CORE 0, and RLIMIT_NPROC when
  the sandbox has its own UID (it does not bind root);
- ``cgroup-pids`` / ``cgroup-memory``: the sandbox's own cgroup (v2, or v1 where
  that is what the host has) with ``pids.max`` and a memory ceiling; the host
  reads its member list to find everything the sandbox started, even processes
  that left its process group, and kills them all on destroy;
- ``netns``: a network namespace with only a loopback interface, every profile;
  with an allowlist (``net_allow``) also ``slirp4netns`` (a tap device relayed by
  slirp4netns, the host's loopback and DNS relay off) and ``nftables`` (a
  ruleset that lets out only the listed addresses and ports);
- ``ipcns``: an IPC namespace of its own;
- ``mountns``: a private mount namespace in which the host's tree is read-only,
  :data:`PRIVATE_TMP` are empty tmpfs of its own, the workdir is bound back
  read-write and the app directory read-only; and, when the Python installation
  (or the runtime) sits under a directory other users cannot search
  (``/root/.pyenv``, say), that directory is an empty read-only tmpfs with only
  those trees bound back in;
- ``uid``: a separate unprivileged UID/GID per sandbox (``UID_BASE`` + the
  workdir's inode number, so it is stable across restarts and unique while the
  sandbox exists), when the host runs as root;
- ``userns`` and ``pidns``, when the host is not root (:mod:`runtime.child.userns`):
  the fork server starts the sandbox as pid 2 of its own user and pid namespace
  (the host's UID mapped to 0), the layers above are made inside it, the mount
  view also hides what the host's UID could otherwise read
  (:func:`hidden_for_userns`) and gets the pid namespace's own ``/proc``, and
  every capability is dropped before ``no_new_privs`` and seccomp; RLIMIT_NPROC
  then counts the sandbox's user namespace alone (Linux 5.14+);
- ``seccomp``: the kernel filter of :mod:`runtime.child.seccomp`, loaded last
  (it denies the ``mount`` and ``unshare`` the layers above use);
- ``no_new_privs``, ``no_dumpable`` (no ptrace, no core, /proc files root-owned),
  ``pdeathsig`` (off: the fork server, the sandbox's parent, may die and be
  restarted without taking running sandboxes along; a sandbox ends on EOF of its
  channel, and the fork server kills its children's groups when the host goes).

The guard (``audit-hook``, :mod:`runtime.child.guard`) is installed after these, by
:mod:`runtime.child.boot`. Each thread of the sandbox gets a small stack
(:data:`THREAD_STACK`), so 1,000 actors fit under an address-space limit.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
from collections.abc import Callable
from typing import Any

from runtime.child import egress as _egress
from runtime.child import libc as _libc
from runtime.child import mounts as _mounts
from runtime.child import netns as _netns
from runtime.child.mounts import PRIVATE_TMP, TMPFS_OPTIONS
from runtime.child import seccomp as _seccomp
from runtime.child import uidscan as _uidscan
from runtime.child import userns as _userns
from runtime.errors import SandboxError

__all__ = [
    "CGROUP_PARENT",
    "LAYERS",
    "REQUIRED_LAYERS",
    "IsolationUnavailable",
    "check_required",
    "missing_required",
    "THREAD_STACK",
    "UID_BASE",
    "apply",
    "detect",
    "plan",
    "prepare",
    "release",
    "sandbox_pids",
]

#: Every layer name that can appear in a sandbox's ``isolation`` list, in order.
LAYERS = (
    "rlimits",
    "audit-hook",
    "userns",
    "pidns",
    "netns",
    "ipcns",
    "uid",
    "mountns",
    "seccomp",
    "no_new_privs",
    "no_dumpable",
    "pdeathsig",
    "cgroup-pids",
    "cgroup-memory",
)
#: First UID handed to sandboxes (well above any account a distribution creates).
UID_BASE = 200_000
_UID_MAX = 2**31 - 2
#: Stack reserved per thread in a sandbox (the default, 8 MiB, would make 1,000
#: actors reserve 8 GiB of address space).
THREAD_STACK = 256 * 1024
#: Tasks (threads count: the kernel's pids and NPROC counters count threads) a
#: sandbox may have at once; process counts are the resource monitor's business.
DEFAULT_TASKS = 4096
#: Directory (under the host's own cgroup) holding the sandboxes' cgroups.
CGROUP_PARENT = "sandbox-runtime"
#: OS layers every profile needs: creating a sandbox fails when one is missing.
REQUIRED_LAYERS = ("mountns", "ipcns", "netns")
#: Also needed when the host is not root: what stands in for the per-sandbox UID.
USERNS_LAYERS = ("userns", "pidns")
#: Room above the memory limit for the cgroup's ceiling: the resource monitor acts
#: at the limit; the kernel only steps in when that was not enough.
CGROUP_MEMORY_SLACK = 64 << 20

_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_SET_NO_NEW_PRIVS = 1, 4, 38
_M_ARENA_MAX = -8
_CLONE_NEWNS, _CLONE_NEWIPC = 0x00020000, 0x08000000


class IsolationUnavailable(SandboxError):
    """An OS layer the sandbox needs is missing (or failed to apply): it must not run.

    ``missing`` maps each layer to why, including what to install or change.

    >>> str(IsolationUnavailable({"seccomp": "install libseccomp2"}))[:46]
    'the sandbox needs OS layers this host lacks: s'
    """

    def __init__(self, missing: dict[str, str]) -> None:
        self.missing = dict(missing)
        shown = "; ".join(f"{k}: {v}" for k, v in sorted(self.missing.items()))
        super().__init__(f"the sandbox needs OS layers this host lacks: {shown}")


_HOW = {
    "mountns": "run the host as root on Linux (mount namespaces need CAP_SYS_ADMIN)",
    "ipcns": "run the host as root on Linux (IPC namespaces need CAP_SYS_ADMIN)",
    "netns": "run the host as root on Linux (network namespaces need CAP_SYS_ADMIN)",
    "seccomp": "install libseccomp (Debian/Ubuntu: apt-get install libseccomp2)",
    "slirp4netns": _egress.INSTALL["slirp4netns"],
    "nftables": _egress.INSTALL["nftables"],
}


def missing_required(*, egress: bool = False) -> dict[str, str]:
    """{layer: why and what to do} for each layer every sandbox needs (and, with
    ``egress``, the user-mode network) that this host cannot give; {} when all are there.

    >>> isinstance(missing_required(), dict)
    True
    """
    avail = detect()
    need = list(REQUIRED_LAYERS) + ["seccomp"] + (["slirp4netns", "nftables"] if egress else [])
    if _userns.needed():
        need = list(USERNS_LAYERS) + need
    out: dict[str, str] = {}
    for layer in need:
        why = avail.get(layer)
        if why is not None:
            # the user-namespace reason already says what to change
            how = "" if why == avail.get("userns") or "/dev/net/tun" in why else _HOW.get(layer, "")
            out[layer] = why if how and how in why else f"{why} ({how})" if how else why
    return out


# ------------------------------------------------------------------------------------
# Host side


_detected: dict[str, str | None] | None = None


def detect(*, refresh: bool = False) -> dict[str, str | None]:
    """Which optional layers this host offers: ``{layer: None}`` when available,
    ``{layer: "reason"}`` when not. Computed once per process.

    >>> sorted(detect())[:3]
    ['cgroup-memory', 'cgroup-pids', 'ipcns']
    """
    global _detected
    if _detected is not None and not refresh:
        return dict(_detected)
    out: dict[str, str | None] = {}
    linux = sys.platform.startswith("linux")
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    libc = _libc_reason()
    out["no_new_privs"] = out["no_dumpable"] = out["pdeathsig"] = (
        None if linux and libc is None else (libc or "not Linux")
    )
    if not linux:
        out["netns"] = out["uid"] = "not Linux"
    else:
        out["uid"] = None if root else "the host does not run as root (setuid needs it)"
        # Not root: every namespace comes through an unprivileged user namespace.
        blocker = None if root else (libc or _userns.unavailable())
        if not root:
            out["userns"] = out["pidns"] = blocker
        if blocker is not None:
            out["netns"] = blocker
        elif libc is not None:
            out["netns"] = libc
        elif not os.path.exists("/proc/self/ns/net"):
            out["netns"] = "the kernel has no network namespaces"
        else:
            out["netns"] = None
        for layer, ns in (("mountns", "mnt"), ("ipcns", "ipc")):
            if blocker is not None:
                out[layer] = blocker
            elif not os.path.exists(f"/proc/self/ns/{ns}"):
                out[layer] = f"the kernel has no {ns} namespaces"
            else:
                out[layer] = libc
    out["seccomp"] = _seccomp.unavailable() if linux else "not Linux"
    out["slirp4netns"] = None if shutil.which("slirp4netns") else (
        "slirp4netns is not installed (Debian/Ubuntu: apt-get install slirp4netns)"
    )
    if out["slirp4netns"] is None and linux and not root and not os.access(
            "/dev/net/tun", os.R_OK | os.W_OK):
        # root opens it whatever its mode; the user namespace's root is this user
        out["slirp4netns"] = (
            "/dev/net/tun is not readable and writable by this user, and slirp4netns "
            "needs it without root (chmod 0666 /dev/net/tun, the usual mode)")
    out["nftables"] = None if _find_lib("nftables") else (
        "libnftables is not installed (Debian/Ubuntu: apt-get install nftables)"
    )
    for ctl in ("pids", "memory"):
        where, why = _cgroup_base(ctl)
        out[f"cgroup-{ctl}"] = None if where is not None else why
    _detected = out
    return dict(out)


def _find_lib(name: str) -> str | None:
    try:
        import ctypes.util
    except ImportError:
        return None
    return ctypes.util.find_library(name)


def _libc_reason() -> str | None:
    try:
        import ctypes.util  # noqa: F401  (only checks that ctypes exists)
    except ImportError:
        return "ctypes is not available"
    return None


def _own_cgroups() -> dict[str, str]:
    """{controller or "" for v2: path of this process's cgroup}."""
    out: dict[str, str] = {}
    try:
        with open("/proc/self/cgroup", encoding="ascii") as fh:
            for line in fh:
                parts = line.rstrip("\n").split(":", 2)
                if len(parts) != 3:
                    continue
                _hid, ctls, path = parts
                if ctls == "":
                    out[""] = path
                for c in ctls.split(","):
                    if c:
                        out[c] = path
    except OSError:
        pass
    return out


def _v2_mount() -> str | None:
    for cand in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if os.path.exists(os.path.join(cand, "cgroup.controllers")):
            return cand
    return None


_bases: dict[str, tuple[str | None, str]] = {}


def _cgroup_base(ctl: str) -> tuple[str | None, str]:
    """(directory under which sandbox cgroups for ``ctl`` go, or None; reason)."""
    if ctl in _bases:
        return _bases[ctl]
    result: tuple[str | None, str] = (None, "no cgroup hierarchy")
    own = _own_cgroups()
    v2 = _v2_mount()
    try:
        if v2 is not None and "" in own:
            with open(os.path.join(v2, "cgroup.controllers")) as fh:
                available = fh.read().split()
            if ctl in available:
                mine = os.path.join(v2, own[""].lstrip("/"))
                base = os.path.join(mine, CGROUP_PARENT)
                os.makedirs(base, exist_ok=True)
                with open(os.path.join(base, "cgroup.controllers")) as fh:
                    have = fh.read().split()
                if ctl not in have:
                    with open(os.path.join(mine, "cgroup.subtree_control"), "w") as fh:
                        fh.write(f"+{ctl}")
                with open(os.path.join(base, "cgroup.subtree_control"), "w") as fh:
                    fh.write(f"+{ctl}")
                result = (base, "")
            else:
                result = (None, f"cgroup v2 has no {ctl} controller here")
        if result[0] is None and ctl in own:
            mount = f"/sys/fs/cgroup/{ctl}"
            if os.path.isdir(mount):
                base = os.path.join(mount, own[ctl].lstrip("/"), CGROUP_PARENT)
                os.makedirs(base, exist_ok=True)
                if not os.access(base, os.W_OK):
                    result = (None, f"cgroup {base} is not writable")
                else:
                    result = (base, "")
    except OSError as exc:
        result = (None, f"no writable {ctl} cgroup: {exc.strerror or exc}")
    _bases[ctl] = result
    return result


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:120]


def _traversable(path: str) -> str | None:
    """None if every ancestor of ``path`` can be searched by other users, else why not."""
    return _searchable(os.path.dirname(os.path.realpath(path)))


def _searchable(p: str) -> str | None:
    """:func:`_traversable` of a path whose parent is ``p`` (resolved)."""
    while True:
        try:
            mode = os.stat(p).st_mode
        except OSError as exc:
            return f"cannot stat {p}: {exc.strerror}"
        if not mode & 0o001:
            return f"{p} is not searchable by other users (mode {oct(mode & 0o777)})"
        if p == "/":
            return None
        p = os.path.dirname(p)


def _under(path: str, dirs: tuple[str, ...] | list[str]) -> bool:
    """Whether ``path`` is one of ``dirs`` or inside one.

    >>> _under("/tmp/ci/.venv", ("/tmp",)), _under("/tmpx", ("/tmp",))
    (True, False)
    """
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


def _outermost(paths: list[str], exclude: str | None = None) -> list[str]:
    """``paths`` without repeats and without those inside another one (or inside
    ``exclude``, the workdir, bound read-write anyway): binding one tree twice fails.

    >>> _outermost(["/tmp/a/b", "/tmp/a", "/tmp/a", "/tmp/w/x", "/tmp/c"], exclude="/tmp/w")
    ['/tmp/a', '/tmp/c']
    """
    out: list[str] = []
    for p in sorted(set(paths), key=lambda q: (len(q), q)):
        if exclude and _under(p, (exclude,)):
            continue
        if not _under(p, out):
            out.append(p)
    return out


def _per_path(fn: Callable[[], list[str]]) -> Callable[[], list[str]]:
    """``fn`` computed once per value of ``sys.path`` (a copy each time): the
    installation's directories, resolved, cost 0.2-0.4 ms of each sandbox's start."""
    memo: dict[tuple[str, ...], list[str]] = {}

    @functools.wraps(fn)
    def cached() -> list[str]:
        key = tuple(sys.path)
        if key not in memo:
            memo.clear()
            memo[key] = fn()
        return list(memo[key])

    return cached


@_per_path
def _package_roots() -> list[str]:
    """Where the sandbox's own imports come from: the installed packages and the
    directory holding ``runtime`` (an app's modules come from the host's finder)."""
    import sysconfig

    paths = sysconfig.get_paths()
    roots = [paths.get("purelib"), paths.get("platlib"),
             os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))]
    return [os.path.realpath(r) for r in roots if r and os.path.isdir(r)]


@_per_path
def code_roots() -> list[str]:
    """Directories a sandbox must be able to read code from: the Python
    installation, site-packages and the runtime itself (resolved)."""
    import sysconfig

    paths = sysconfig.get_paths()
    roots = [paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")]
    roots += [p for p in sys.path if p and os.path.isabs(p)]
    # the directory holding the ``runtime`` package (this file is runtime/child/isolation.py)
    roots.append(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    out: list[str] = []
    for r in roots:
        if r and os.path.isdir(r):
            rp = os.path.realpath(r)
            if rp not in out:
                out.append(rp)
    return out


def _blocked_ancestor(path: str) -> str | None:
    """The topmost ancestor of ``path`` (or itself) others cannot search, if any."""
    parts = path.strip("/").split("/")
    cur = ""
    for part in parts:
        cur = cur + "/" + part
        try:
            if not os.stat(cur).st_mode & 0o001:
                return cur
        except OSError:
            return None
    return None


def exposures(paths: list[str]) -> list[tuple[str, list[str]]]:
    """[(directory others cannot search, [paths under it to bind back])].

    >>> exposures(["/definitely/not/there"])
    []
    """
    groups: dict[str, list[str]] = {}
    for p in sorted(set(paths)):
        blocked = _blocked_ancestor(p)
        if blocked is None or blocked == p:
            continue
        lst = groups.setdefault(blocked, [])
        if not any(p == q or p.startswith(q.rstrip("/") + "/") for q in lst):
            lst.append(p)
    return sorted(groups.items())


def hidden_for_userns(workdir: str, keep: list[str]) -> list[tuple[str, list[str]]]:
    """[(directory, [paths under it to bind back read-only])] that a sandbox of a
    non-root host must not see: the directory holding the runtime's workdirs (its
    siblings') and compile cache, the host user's home and its runtime directory (``/run/user/UID``:
    its session bus, its systemd manager). ``keep`` (the code the sandbox
    imports, the app) is bound back; the workdir is bound back read-write by the
    mount step itself.

    >>> all(h != "/" and not h.startswith("/tmp") for h, _ in hidden_for_userns("/tmp/a/s1", []))
    True
    """
    import pwd

    # the workdir's grandparent: the directory given as base_dir, which holds
    # the runtime's directory of workdirs and its compile cache
    cands = [os.path.dirname(os.path.dirname(os.path.realpath(workdir))),
             f"/run/user/{os.getuid()}"]
    try:
        cands.append(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:
        pass
    if os.environ.get("HOME"):
        cands.append(os.environ["HOME"])
    roots = [os.path.realpath(k) for k in keep if os.path.isdir(k)]
    # Under a private tmpfs a directory is hidden already, unless it sits in code
    # bound back from there (a checkout in /tmp holding the home or base_dir).
    hide = _outermost([
        os.path.realpath(c) for c in cands
        if os.path.isdir(c) and os.path.realpath(c) != "/"
        and (not _under(os.path.realpath(c), PRIVATE_TMP)
             or any(_under(os.path.realpath(c), (r,)) for r in roots if _under(r, PRIVATE_TMP)))
    ])
    # A directory that is itself one of ``keep`` (a home that is the project, the
    # virtualenv's parent) stays: it would be bound back whole anyway.
    return [(h, _outermost([r for r in roots if _under(r, (h,))], exclude=workdir))
            for h in hide if h not in roots]


#: The directory prepare makes in a workdir (the sandbox's TMPDIR).
_WORKDIR_TMP = "tmp"


def prepare(
    workdir: str,
    key: str,
    *,
    tmpdir: bool = True,
    group: str = "",
) -> dict[str, Any]:
    """Give a new sandbox its UID and cgroups (host side, as root); returns its state.

    ``key`` names the sandbox's cgroups (``group``/``key`` under
    :data:`CGROUP_PARENT`). The state is plain data: ``uid``/``gid`` (or None),
    ``cgroups`` ({controller: directory}), ``skipped`` ({layer: reason}).
    The workdir (and its ``tmp``) is chowned to the UID and made private; its
    parent made searchable (not listable) by others so the UID can reach it.
    """
    avail = detect()
    state: dict[str, Any] = {"uid": None, "gid": None, "cgroups": {}, "skipped": {}}
    wd = os.path.realpath(workdir)
    state["workdir"] = wd
    if tmpdir:
        os.makedirs(os.path.join(wd, _WORKDIR_TMP), mode=0o700, exist_ok=True)
    if avail.get("uid") is None:
        parent = os.path.dirname(wd)
        try:
            mode = os.stat(parent).st_mode
            if not mode & 0o001:
                os.chmod(parent, (mode & 0o7777) | 0o011)  # searchable, not listable
        except OSError:
            pass
        why = _searchable(parent)  # wd is resolved: its parent too
        if why is None:
            uid = UID_BASE + os.stat(wd).st_ino
            if uid > _UID_MAX:
                uid = UID_BASE + os.stat(wd).st_ino % (_UID_MAX - UID_BASE)
            for root, dirs, files in os.walk(wd):  # new: only our own files are here
                for name in dirs + files:
                    os.lchown(os.path.join(root, name), uid, uid)
            os.lchown(wd, uid, uid)
            os.chmod(wd, 0o700)
            state["uid"] = state["gid"] = uid
        else:
            state["skipped"]["uid"] = why
    else:
        state["skipped"]["uid"] = avail["uid"]
    for ctl in ("pids", "memory"):
        layer = f"cgroup-{ctl}"
        if avail.get(layer) is not None:
            state["skipped"][layer] = avail[layer]
            continue
        base, why = _cgroup_base(ctl)
        if base is None:
            state["skipped"][layer] = why
            continue
        d = os.path.join(base, _safe(group), _safe(key)) if group else os.path.join(base, _safe(key))
        try:
            try:
                os.mkdir(d)  # its group's directory is there but for the first sandbox
            except FileNotFoundError:
                os.makedirs(d, exist_ok=True)
            except FileExistsError:
                pass
            state["cgroups"][ctl] = d
        except OSError as exc:
            state["skipped"][layer] = f"cannot create {d}: {exc.strerror or exc}"
    return state


def set_cgroup_limits(state: dict[str, Any], *, tasks: int | None, memory: int | None) -> None:
    """Write the ceilings into the sandbox's cgroups (host side)."""
    for ctl, d in (state.get("cgroups") or {}).items():
        v2 = os.path.exists(os.path.join(d, "cgroup.controllers"))
        if ctl == "pids":
            files = [("pids.max", "max" if tasks is None else str(tasks))]
        else:
            value = None if memory is None else memory + CGROUP_MEMORY_SLACK
            if v2:
                files = [("memory.max", "max" if value is None else str(value))]
            else:
                files = [("memory.limit_in_bytes", "-1" if value is None else str(value))]
        for name, setting in files:
            # os.open/os.write, as in _join_cgroup: no file object and text codec
            # for one short write (two per create, on its path).
            try:
                fd = os.open(os.path.join(d, name), os.O_WRONLY)
                try:
                    os.write(fd, setting.encode())
                finally:
                    os.close(fd)
            except OSError:
                pass


def plan(
    *,
    allow: set[str] | frozenset[str] | list[str],
    limits: dict[str, Any],
    state: dict[str, Any] | None = None,
    net_allow: list[Any] | tuple[Any, ...] = (),
    env_allow: list[str] | tuple[str, ...] = (),
    tasks: int = DEFAULT_TASKS,
    read_only: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    """The plain-data plan :func:`apply` carries out in the child.

    ``allow``: the profile's operation groups; ``limits``: ``memory_mb``,
    ``cpu_seconds``, ``open_files``, ``file_size_mb`` (None: no limit);
    ``state``: from :func:`prepare`; ``net_allow``: ``host:port`` addresses the
    sandbox may reach outside (egress through slirp4netns; never the host's
    loopback); ``read_only``: host paths bound back read-only when they sit under
    a private tmpfs (the app's directory under ``/tmp``, say).

    Every profile gets the same OS layers (:data:`REQUIRED_LAYERS`, a seccomp
    filter); profiles differ in what the filter denies (``execve`` unless the
    profile allows ``subprocess``) and in the guard, not in the OS view.

    >>> p = plan(allow={"math"}, limits={"memory_mb": 64}, state=None)
    >>> p["rlimits"]["as_extra"], p["rlimits"]["core"]
    (67108864, 0)
    """
    state = state or {"uid": None, "gid": None, "cgroups": {}, "skipped": {}}
    avail = detect()
    skipped = dict(state.get("skipped") or {})
    mb = 1 << 20

    def lim(key: str, scale: int = 1) -> int | None:
        v = limits.get(key)
        return None if v is None else int(v) * scale

    require = list(REQUIRED_LAYERS) + ["seccomp"]
    userns = _userns.needed()
    if userns:
        require = list(USERNS_LAYERS) + require
    if net_allow:
        require += ["slirp4netns", "nftables"]
    for layer in require:
        if avail.get(layer) is not None:
            skipped[layer] = avail[layer]
    netns = avail.get("netns") is None
    wd = state.get("workdir")
    mounts = None
    if avail.get("mountns") is None and wd:
        mounts = {
            "workdir": wd,
            "tmpfs": list(PRIVATE_TMP),
            "tmpfs_options": TMPFS_OPTIONS,
            # Only what a private tmpfs hides is bound back: the rest of the host's
            # tree is read-only in the sandbox's view already (two mounts fewer,
            # 0.2 ms of a start, for an app outside /tmp). Code the sandbox imports
            # (the runtime, a virtualenv) may live there too, say a checkout in /tmp.
            "read_only": _outermost(
                [r for r in map(os.path.realpath, read_only)
                 if _under(r, PRIVATE_TMP) and os.path.isdir(r)]
                + [r for r in _package_roots() if _under(r, PRIVATE_TMP)],
                exclude=wd),
        }
    uid = state.get("uid")
    expose: list[tuple[str, list[str]]] = []
    if uid is not None:
        expose = exposures(code_roots())
        if expose and avail.get("mountns") is not None:
            skipped["uid"] = (
                f"{expose[0][0]} hides the Python installation from other users and "
                "no mount namespace can be made to expose it"
            )
            uid = None
    elif userns and mounts is not None:
        # Every sandbox runs as the host's own UID: what the UID kept from it on
        # the root path (siblings' workdirs, the host user's files) is hidden.
        mounts["proc"] = True
        expose = hidden_for_userns(str(wd), code_roots() + list(read_only))
    return {
        "rlimits": {
            "as_extra": lim("memory_mb", mb),
            "cpu": lim("cpu_seconds"),
            "nofile": lim("open_files"),
            "fsize": lim("file_size_mb", mb),
            "core": 0,
            # per user namespace too (Linux 5.14+): the sandbox's own count
            "nproc": tasks if uid is not None or userns else None,
        },
        "netns": netns,
        # a fresh namespace from the fork server's pool will do (runtime.child.netns);
        # not where slirp4netns joins the sandbox's or a user namespace must own it
        "netns_pool": netns and not net_allow and not (userns and avail.get("userns") is None),
        "ipcns": avail.get("ipcns") is None,
        "userns": userns and avail.get("userns") is None,
        # what the sandbox compares its own namespaces with (the host's)
        "host_ns": {ns: _ns_inode("self", ns) for ns in ("user", "pid")} if userns else None,
        "mounts": mounts,
        "seccomp": None if avail.get("seccomp") is not None else {
            "deny_exec": "subprocess" not in set(allow),
        },
        "egress": [list(a) for a in net_allow],
        "require": require,
        "uid": uid,
        "gid": state.get("gid") if uid is not None else None,
        "expose": [[d, list(ps)] for d, ps in expose],
        "cgroups": sorted((state.get("cgroups") or {}).items()),
        "no_new_privs": avail.get("no_new_privs") is None,
        # Not in a user namespace: the host (its owner) reads the sandbox's /proc
        # to see its layers, which a non-dumpable process's mm (made in the host's
        # namespace) refuses; its siblings cannot reach it (pid namespace, seccomp).
        "no_dumpable": avail.get("no_dumpable") is None and not userns,
        "pdeathsig": None,  # see the module docstring: the fork server may be restarted
        "thread_stack": THREAD_STACK,
        "arena_max": 2,
        "env_allow": list(env_allow),
        "skipped": skipped,
    }


def sandbox_pids(state: dict[str, Any] | None) -> list[int] | None:
    """Pids in the sandbox's cgroup (None if it has none)."""
    cg = (state or {}).get("cgroups") or {}
    d = cg.get("pids") or cg.get("memory")
    if not d:
        return None
    try:
        with open(os.path.join(d, "cgroup.procs"), encoding="ascii") as fh:
            return [int(x) for x in fh.read().split()]
    except (OSError, ValueError):
        return None


#: The ``/proc`` passes that find processes by UID, shared by destroys side by side.
_uid_scans = _uidscan.UidScans()


def _cgroup_members(state: dict[str, Any]) -> set[int]:
    """The pids in any of the sandbox's cgroups."""
    pids: set[int] = set()
    for d in (state.get("cgroups") or {}).values():
        pids.update(_members(d))
    return pids


def _members(cgroup: str) -> list[int]:
    """The pids in one cgroup (none if it cannot be read)."""
    try:  # a system call each, no file object: a destroy reads these 1-3 times
        fd = os.open(os.path.join(cgroup, "cgroup.procs"), os.O_RDONLY)
        try:
            data = b""
            while chunk := os.read(fd, 65536):
                data += chunk
        finally:
            os.close(fd)
        return [int(x) for x in data.split()]
    except (OSError, ValueError):
        return []


def _kill_all(pids: set[int]) -> list[int]:
    import signal

    pids.discard(os.getpid())
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return sorted(pids)


def kill_leftovers(state: dict[str, Any] | None, *, by_uid: bool = False) -> list[int]:
    """SIGKILL every process in the sandbox's cgroups (and, with ``by_uid``, every
    process running under its UID); returns the pids signalled."""
    state = state or {}
    pids = _cgroup_members(state)
    uid = state.get("uid")
    if by_uid and uid is not None:
        pids.update(_uid_scans.pids(uid))  # a pass shared with destroys beside this one
    return _kill_all(pids)


def in_cgroups(state: dict[str, Any] | None, pid: int) -> bool:
    """Whether process ``pid`` is in one of the sandbox's cgroups (the host's own
    reading of their member lists, up to the first that lists it)."""
    return any(pid in _members(d) for d in ((state or {}).get("cgroups") or {}).values())


#: Passes :func:`kill_strays` makes at most for one sandbox (each kills what the
#: last one found; strays forking as fast as they are killed outlast them).
_STRAY_PASSES = 64


def kill_strays(state: dict[str, Any] | None, member: int | None,
                since: int | None = None) -> list[int] | None:
    """While the sandbox's process ``member`` stops (destroy, host side): SIGKILL
    every process under the sandbox's UID outside its cgroups; returns their pids,
    or None when this cannot stand for :func:`release`'s pass over the UID.

    ``member``: the sandbox's process, found in its cgroups (:func:`in_cgroups`)
    while it ran; None if it was not (or had exited). ``since``: when it started
    (boot clock ticks, :func:`runtime.child.uidscan.start_ticks`). A process in
    the cgroups joined them before anything else ran in it, so everything it
    starts is born there and cannot leave (the cgroup files are root's): a process
    under the UID outside them (a stray) was left by an earlier process of the
    sandbox, and existed when ``member`` started. So a pass over ``/proc`` that
    started after ``since`` and found no stray proves there is none (the last
    pass, shared with other destroys, :class:`~runtime.child.uidscan.UidScans`);
    a stray it shows is looked for again in a fresh pass, and pids are killed
    only from fresh passes, which are repeated until one finds nothing new (what
    a stray forked meanwhile). None (no UID, no cgroup, ``member`` None, a pass
    that failed, or strays still new after :data:`_STRAY_PASSES` passes):
    ``release(state)`` makes the pass after the exit.
    """
    state = state or {}
    uid = state.get("uid")
    if uid is None or member is None or not state.get("cgroups"):
        return None
    fresh = since is None
    killed: set[int] = set()
    try:
        under = _uid_scans.pids(uid) if since is None else _uid_scans.since(uid, since)
        for _ in range(_STRAY_PASSES):
            # Read after the pass: a process it saw inside a cgroup is still listed
            # there or gone (``member`` too, once it exited); the rest was outside.
            # A pass that saw nothing under the UID but ``member`` needs no reading.
            strays = set(under) - killed - {member}
            if strays:
                strays -= _cgroup_members(state)
            if not strays:
                return sorted(killed)
            if fresh:  # kill only what a pass made now shows: a pid may be reused
                killed.update(_kill_all(strays))
            fresh = True
            under = _uid_scans.pids(uid)
    except OSError:  # /proc could not be read: release's own pass says why
        return None
    return None  # still new ones: no verdict, release makes its pass too


def remove_workdir(workdir: str) -> None:
    """Remove a sandbox's workdir (host side, once nothing runs under its UID): as
    :func:`prepare` left it (an empty ``tmp`` inside) in two system calls, else the
    whole tree, whatever the sandbox made of it. Each directory's removal waits in
    the kernel on some filesystems (a discard of its block: 0.15-0.4 ms), and on a
    destroy's path every system call of a longer walk waits for the GIL again."""
    try:
        os.rmdir(os.path.join(workdir, _WORKDIR_TMP))  # not a symlink's target: ENOTDIR
        os.rmdir(workdir)
        return
    except OSError:  # gone already, or more in it: the whole walk
        pass
    shutil.rmtree(workdir, ignore_errors=True)


def release(state: dict[str, Any] | None, *, timeout: float = 5.0,
            strays_killed: bool = False) -> list[int]:
    """At destroy (host side): kill what is left of the sandbox, remove its cgroups.

    ``strays_killed``: :func:`kill_strays` vouched for the processes under the
    UID outside the cgroups, so only the cgroups' members are looked for here,
    and only in a cgroup that is not empty: its removal fails while it has a
    member (no read of an empty cgroup's member list on a destroy's path).
    Returns the pids that were still there.
    """
    import time

    state = state or {}
    killed = set() if strays_killed else set(kill_leftovers(state, by_uid=True))
    deadline = time.monotonic() + timeout
    for d in (state.get("cgroups") or {}).values():
        while True:
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:
                # Members left, or still exiting: kill them (again: a fork may have
                # raced us), then try again.
                if time.monotonic() > deadline:
                    break
                killed.update(kill_leftovers({"cgroups": {"x": d}}))
                _pause(0.01)
    return sorted(killed)


def release_group(group: str) -> None:
    """Remove a runtime's cgroup directories (after all its sandboxes are gone)."""
    for ctl in ("pids", "memory"):
        base, _why = _bases.get(ctl, (None, ""))
        if base is None:
            continue
        d = os.path.join(base, _safe(group))
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            sub = os.path.join(d, name)
            if os.path.isdir(sub):
                release({"cgroups": {ctl: sub}}, timeout=2.0)
        try:
            os.rmdir(d)
        except OSError:
            pass


def _pause(seconds: float) -> None:
    import select

    select.select([], [], [], seconds)


# ------------------------------------------------------------------------------------
# Child side


def apply(p: dict[str, Any] | None) -> tuple[list[str], dict[str, str]]:
    """Apply plan ``p`` to this (fresh, single-threaded) sandbox process.

    Returns (layers applied, {layer: reason} for those skipped or failed). Never
    raises for a layer that cannot be applied; ctypes is unloaded again afterwards
    so the sandbox's own ``import ctypes`` is an import like any other.
    """
    if not p:
        return [], {}
    applied: list[str] = []
    skipped: dict[str, str] = dict(p.get("skipped") or {})
    libc = None

    def need_libc() -> Any:
        nonlocal libc
        if libc is None:
            libc = _libc.libc()  # the fork server's handle (runtime.child.libc)
        return libc

    def prctl(option: int, arg: int) -> None:
        import ctypes

        lc = need_libc()
        if lc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    # cgroups first: joined as root, before anything else runs.
    for ctl, d in p.get("cgroups") or ():
        try:
            _join_cgroup(d)
            applied.append(f"cgroup-{ctl}")
        except OSError as exc:
            skipped[f"cgroup-{ctl}"] = f"joining {d}: {exc.strerror or exc}"
    if p.get("userns"):
        _check_userns(p.get("host_ns") or {}, applied, skipped)  # made by the fork server
    _namespaces(p, need_libc, applied, skipped)
    if "userns" in applied:
        try:
            _userns.drop_capabilities()  # the layers above were the last use of them
        except OSError as exc:
            applied.remove("userns")
            skipped["userns"] = f"dropping the capabilities failed: {exc}"
    if p.get("arena_max"):
        try:
            need_libc().mallopt(_M_ARENA_MAX, int(p["arena_max"]))
        except Exception:
            pass
    if p.get("no_new_privs"):
        try:
            prctl(_PR_SET_NO_NEW_PRIVS, 1)
            applied.append("no_new_privs")
        except Exception as exc:
            skipped["no_new_privs"] = str(exc)
    uid, gid = p.get("uid"), p.get("gid")
    if uid is not None and p.get("expose") and "mountns" not in applied:
        skipped["uid"] = "the Python installation cannot be exposed to it without a mount namespace"
        uid = None
    if uid is not None and gid is not None:
        try:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            applied.append("uid")
        except OSError as exc:
            skipped["uid"] = f"setuid({uid}) failed: {exc.strerror or exc}"
    if p.get("no_dumpable"):
        try:
            prctl(_PR_SET_DUMPABLE, 0)
            applied.append("no_dumpable")
        except Exception as exc:
            skipped["no_dumpable"] = str(exc)
    sig = p.get("pdeathsig")
    if sig:
        try:
            parent = os.getppid()
            prctl(_PR_SET_PDEATHSIG, int(sig))
            if parent == 1 or os.getppid() != parent:  # the parent died meanwhile
                os.kill(os.getpid(), int(sig))
            applied.append("pdeathsig")
        except Exception as exc:
            skipped["pdeathsig"] = str(exc)
    if p.get("seccomp") is not None:
        # Last: the filter denies mount, unshare and (maybe) execve, which the
        # layers above needed; nothing after this point does.
        try:
            deny_exec = bool(p["seccomp"].get("deny_exec"))
            # Where exec is denied (high, medium) a denied call is fatal: SIGSYS,
            # which the host counts from the exit status (actors/containment.py).
            _seccomp.install(deny_exec=deny_exec, fatal=deny_exec, libc=need_libc())
            applied.append("seccomp")
        except OSError as exc:
            skipped["seccomp"] = str(exc)
    if libc is not None:
        # Unloaded even when the forkserver preloaded it: the sandbox's own
        # ``import ctypes`` must be an import its guard sees, not a dict lookup.
        libc = None
        for name in _preloaded_ctypes or _ctypes_modules():
            sys.modules.pop(name, None)
    try:
        _rlimits(p.get("rlimits") or {})
        applied.append("rlimits")
    except (OSError, ValueError) as exc:
        skipped["rlimits"] = f"setrlimit failed: {exc}"
    try:
        import threading

        threading.stack_size(int(p.get("thread_stack") or THREAD_STACK))
    except (ValueError, RuntimeError):
        pass
    _scrub_env(p.get("env_allow"))
    return applied, skipped


#: The ctypes modules the fork server holds (:func:`note_preloaded`): a sandbox
#: unloads these names without a pass over ``sys.modules``, which would write to
#: the page of every module's name (0.3 MiB of copied pages per sandbox, measured).
#: Between the fork and the unloading only the runtime's own layers run, and they
#: import no ctypes module the server has not (``ctypes``, ``ctypes.util``).
_preloaded_ctypes: tuple[str, ...] = ()


def _ctypes_modules() -> tuple[str, ...]:
    """The names of the ctypes modules loaded in this process.

    >>> "_ctypes" in _ctypes_modules()
    True
    """
    names = [m for m in sys.modules if m == "ctypes" or m.startswith("ctypes.")]
    return (*names, "_ctypes")


def note_preloaded() -> None:
    """Called once by the fork server after its preload: makes the C library handle
    every sandbox's layers use (:func:`runtime.child.libc.libc`), then notes the
    ctypes modules (see :data:`_preloaded_ctypes`)."""
    global _preloaded_ctypes
    _libc.prepare()
    _preloaded_ctypes = _ctypes_modules()


def _join_cgroup(d: str) -> None:
    """Move this (single-threaded) process into cgroup directory ``d``.

    On cgroup v1 the process writes ``0`` (itself) to ``tasks``: moving one thread
    that is the caller skips the global threadgroup lock, whose first writer after a
    quiet spell waits for an RCU grace period (5-16 ms measured on a 2-vCPU VM,
    against 0.3-0.5 ms this way; ``benchmarks/bench_profiles.py``). The process has
    no other thread yet, so this moves all of it, and the threads it starts are born
    in the cgroup. cgroup v2 has no such file for a domain cgroup: ``cgroup.procs``.
    """
    # os.open/os.write rather than open(): no file object, buffer and text codec
    # made (and their pages written) in every sandbox for one short write.
    try:
        fd = os.open(os.path.join(d, "tasks"), os.O_WRONLY)
        data = b"0"
    except FileNotFoundError:
        fd = os.open(os.path.join(d, "cgroup.procs"), os.O_WRONLY)
        data = str(os.getpid()).encode()
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def check_required(p: dict[str, Any] | None, applied: list[str], skipped: dict[str, str]) -> None:
    """Raise :class:`IsolationUnavailable` unless every layer plan ``p`` requires was
    applied (called by the boot before any user code, so the host gets the reason
    in the boot failure).

    >>> check_required({"require": ["netns"]}, ["netns"], {})
    >>> try:
    ...     check_required({"require": ["netns"]}, [], {"netns": "no root"})
    ... except IsolationUnavailable as exc:
    ...     print(exc)
    the sandbox needs OS layers this host lacks: netns: no root
    """
    need = (p or {}).get("require") or ()
    missing = {k: skipped.get(k, "not applied") for k in need if k not in applied}
    if missing:
        raise IsolationUnavailable(missing)


def _namespaces(
    p: dict[str, Any], need_libc: Any, applied: list[str], skipped: dict[str, str]
) -> None:
    """Private network, IPC and mount namespaces (as root, before the UID changes)."""
    import ctypes

    flags = 0
    # A fresh namespace of the fork server's pool, entered before anything ran
    # (runtime.child.netns), loopback up: nothing left to do for it.
    pooled = bool(p.get("netns")) and _netns.entered
    if p.get("netns") and not pooled:
        flags |= _CLONE_NEWNET
    if p.get("ipcns"):
        flags |= _CLONE_NEWIPC
    mounts = p.get("mounts")
    if mounts or p.get("expose"):
        flags |= _CLONE_NEWNS
    if pooled:
        applied.append("netns")
    if not flags:
        return
    libc = need_libc()
    egress = None
    if p.get("egress") and flags & _CLONE_NEWNET:
        try:
            egress = _egress.start(p["egress"])
        except Exception as exc:
            skipped["slirp4netns"] = skipped["nftables"] = f"egress set-up failed: {exc}"
    if libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        why = f"unshare failed: {os.strerror(err)}"
        for layer in ("ipcns", "mountns") if pooled else ("netns", "ipcns", "mountns"):
            skipped[layer] = why
        if egress is not None:
            _egress.kill_helper(egress["pid"])
        return
    if p.get("ipcns"):
        applied.append("ipcns")
    if flags & _CLONE_NEWNET:
        try:
            _netns.loopback_up()
            applied.append("netns")
        except Exception as exc:
            skipped["netns"] = f"network namespace set-up failed: {exc}"
        if egress is not None:
            try:
                p["hosts"] = _egress.finish(egress)
                applied += ["slirp4netns", "nftables"]
            except Exception as exc:
                skipped["slirp4netns"] = skipped["nftables"] = f"egress set-up failed: {exc}"
                _egress.kill_helper(egress["pid"])
    if flags & _CLONE_NEWNS:
        try:
            _mounts.private_view(libc, mounts or {}, p.get("expose") or [], p.get("hosts"))
            applied.append("mountns")
        except Exception as exc:
            skipped["mountns"] = f"private mount view failed: {exc}"


def _ns_inode(pid: str, ns: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{ns}").st_ino
    except OSError:
        return None


def _check_userns(host: dict[str, Any], applied: list[str], skipped: dict[str, str]) -> None:
    """Whether this process really is in a user and a pid namespace other than the
    host's (``host``: their inode numbers, from the plan)."""
    for layer, ns in (("userns", "user"), ("pidns", "pid")):
        mine = _ns_inode("self", ns)
        if mine is not None and host.get(ns) is not None and mine != host[ns]:
            applied.append(layer)
        else:
            skipped.setdefault(layer, "the fork server did not start the sandbox in its own "
                                      f"{ns} namespace")


def _rlimits(r: dict[str, Any]) -> None:
    import resource
    import _signal  # type: ignore[import-not-found]  # no enum lookups (signal's wrapper)
    import signal

    def lower(res: int, soft: int, hard: int | None = None) -> None:
        hard = soft if hard is None else hard
        cur_soft, cur_hard = resource.getrlimit(res)
        if cur_hard != resource.RLIM_INFINITY:
            hard = min(hard, cur_hard)
            soft = min(soft, hard)
        resource.setrlimit(res, (soft, hard))

    if r.get("as_extra"):
        mapped = _mapped_bytes()
        lower(resource.RLIMIT_AS, mapped + int(r["as_extra"]))
    if r.get("cpu"):
        lower(resource.RLIMIT_CPU, int(r["cpu"]), int(r["cpu"]) + 2)
    if r.get("nofile"):
        lower(resource.RLIMIT_NOFILE, int(r["nofile"]))
    if r.get("fsize"):
        lower(resource.RLIMIT_FSIZE, int(r["fsize"]))
        # Python ignores SIGXFSZ (writes then fail with EFBIG); the default action
        # ends the process, which the host sees and records as a limit reached.
        _signal.signal(signal.SIGXFSZ, _signal.SIG_DFL)
    if r.get("core") is not None:
        lower(resource.RLIMIT_CORE, int(r["core"]))
    if r.get("nproc"):
        lower(resource.RLIMIT_NPROC, int(r["nproc"]))


def _mapped_bytes() -> int:
    """The process's virtual size now (what it had mapped before user code).

    os.open/os.read, as in :func:`_join_cgroup`: ``open()``'s file object, buffer
    and their first use in a fresh sandbox were a third of the rlimits step: in
    forks of a preloaded process the step went from 0.20-0.22 ms (78-88 page
    faults) to 0.15-0.17 ms (65-69) this way."""
    try:
        fd = os.open("/proc/self/statm", os.O_RDONLY)
        try:
            data = os.read(fd, 256)
        finally:
            os.close(fd)
        return int(data.split(None, 1)[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _scrub_env(allow: Any) -> None:
    if allow is None:
        return
    keep = set(allow)
    for key in list(os.environ):
        if key not in keep:
            del os.environ[key]
