"""The kernel layer behind the audit hook: a seccomp filter for the sandbox process.

The audit hook (:mod:`runtime.child.guard`) sees what Python reports; code that
gets past it (rebinding ``subprocess.sys`` so no event fires, calling
``_posixsubprocess.fork_exec`` or raw ``syscall`` through native code) still
meets this filter, which the kernel enforces on every thread of the process and
on everything it forks, and which cannot be removed.

The filter is built through libseccomp (the maintained C library that Docker,
systemd and others use, present on every Debian system because apt depends on
it), called with ctypes: the PyPI bindings are either for the system Python only
or unmaintained, and libseccomp does the parts that are easy to get wrong by hand
(architecture checks, the x32 ABI, syscall numbers). It is built once, in the fork
server (:func:`prepare`), exported as a BPF program, and each sandbox loads that
program with one ``seccomp(2)`` call (:func:`install`).

What it denies (``clone3`` gets ``ENOSYS`` so the C library falls back to
``clone``, whose flags the filter can see):

- always (every profile): :data:`ALWAYS_DENIED` (tracing other processes,
  reading or writing their memory, namespaces and mounts, kernel keyrings,
  modules, BPF, perf events, userfaultfd, io_uring, personality changes, ...),
  ``clone`` with any ``CLONE_NEW*`` flag, ``ioctl(TIOCSTI)`` (typing into a
  terminal), ``setpgid`` into an existing process group (the sandbox shares its
  host's session, so that could be the host's), and unix sockets that could reach the host's: ``socket(AF_UNIX)``
  and datagram ``socketpair`` (a datagram socket can ``sendto`` any path).
  These fail with ``EPERM`` in every profile, never kill: a read-only mount
  does not stop ``connect`` to a socket file (``/run/dbus``, ``/dev/log``, a
  service's socket in ``/run``), and the C library tries some on its own
  (nscd, ``syslog``) and must fall back quietly. Stream socketpairs (the
  channel, asyncio's self-pipe, ``multiprocessing.Pipe``) stay allowed: they are
  connected for good;
- when the profile does not allow ``subprocess``: :data:`EXEC_DENIED`
  (``execve``, ``execveat``), and :data:`FORK_DENIED` with ``clone`` without
  ``CLONE_THREAD`` (a new process rather than a thread): no program can be
  run, however it is asked for.

How: with ``fatal`` (``high``, ``medium``: profiles without ``subprocess``) a
denied call kills the whole process at once (``SECCOMP_RET_KILL_PROCESS``): no
handler runs, nothing in the sandbox can hide it, and the host reads
``SIGSYS`` from the exit status it gets from the fork server, which it counts
as a refusal towards quarantine (:mod:`actors.containment`). Forks are killed
too in that mode, so the call cannot be made from a child process the host
does not reap. Without ``fatal`` (``low``, whose code may run programs) a denied
call fails with ``EPERM``.

>>> "ptrace" in ALWAYS_DENIED and "execve" in EXEC_DENIED
True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import signal
from typing import Any

from runtime.child.libc import libc as _libc

__all__ = [
    "ALWAYS_DENIED",
    "EXEC_DENIED",
    "FORK_DENIED",
    "KILL_SIGNAL",
    "SeccompError",
    "install",
    "prepare",
    "program",
    "unavailable",
]

#: Syscalls no sandbox needs, denied in every profile.
ALWAYS_DENIED: tuple[str, ...] = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "process_madvise",
    "pidfd_getfd",
    "kcmp",
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "open_by_handle_at",
    "name_to_handle_at",
    "bpf",
    "keyctl",
    "add_key",
    "request_key",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "perf_event_open",
    "userfaultfd",
    "personality",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "swapon",
    "swapoff",
    "reboot",
    "acct",
    "quotactl",
    "syslog",
    "iopl",
    "ioperm",
    "lookup_dcookie",
    "uselib",
    "vhangup",
)
#: Syscalls that start a program: denied when the profile does not allow subprocess.
EXEC_DENIED: tuple[str, ...] = ("execve", "execveat")
#: Syscalls that start a process, killed with ``fatal`` (``clone`` is filtered on
#: its flags: a thread, ``CLONE_THREAD``, is not a process).
FORK_DENIED: tuple[str, ...] = ("fork", "vfork")
#: What a process killed by the filter dies of, as the host sees it.
KILL_SIGNAL = signal.SIGSYS

_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_ACT_KILL_PROCESS = 0x80000000
_SCMP_ACT_ERRNO = 0x00050000
_PR_SET_NO_NEW_PRIVS = 38
_SECCOMP_SET_MODE_FILTER, _SECCOMP_FILTER_FLAG_TSYNC = 1, 1
_BPF_INSN_SIZE = 8  # struct sock_filter
_SCMP_CMP_NE, _SCMP_CMP_EQ, _SCMP_CMP_MASKED_EQ = 1, 4, 7
_CLONE_NEW = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
    "CLONE_NEWTIME": 0x00000080,
}
_CLONE_THREAD = 0x00010000
_TIOCSTI = 0x5412
_AF_UNIX = 1
#: Socket types that are datagrams in the unix family (``SOCK_RAW`` is taken as one).
_SOCK_DGRAM_LIKE = (2, 3)
_SOCK_TYPE_MASK = 0xF
_INSTALL_HINT = "install libseccomp (Debian/Ubuntu: apt-get install libseccomp2)"


class SeccompError(OSError):
    """The filter could not be built or loaded (the sandbox must not start)."""


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_lib: Any = None


def _libseccomp() -> Any:
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError as exc:
            raise SeccompError(errno.ENOENT, f"libseccomp not found ({exc}): {_INSTALL_HINT}")
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.POINTER(_ArgCmp),
        ]
        _lib = lib
    return _lib


def unavailable() -> str | None:
    """None when a filter can be installed here, else why not (and what to install).

    >>> unavailable() is None or "libseccomp" in unavailable()
    True
    """
    try:
        _libseccomp()
    except SeccompError as exc:
        return exc.strerror
    return None


def install(*, deny_exec: bool, fatal: bool = False, libc: Any = None) -> list[str]:
    """Load the filter into this process (irreversible); returns the syscalls denied.

    ``deny_exec``: no program may be run (nor, with ``fatal``, a process forked).
    ``fatal``: a denied call kills the process with :data:`KILL_SIGNAL` instead of
    failing with ``EPERM``. ``libc``: the caller's C library handle, if it has one
    (a new one is made otherwise). Raises :class:`SeccompError` when it cannot be
    loaded: a sandbox whose profile needs the filter must not run without it.

    The program comes from :func:`program` (built once per process, and once in
    the fork server for every sandbox: :func:`prepare`, which also makes the
    ``sock_fprog`` the kernel reads and looks up the system call's number); loading
    it is one system call, with the thread-sync flag so it covers every thread of
    the process.

    Example (in a throw-away child process only: the filter is for good)::

        install(deny_exec=True)               # os.execv(...) fails with EPERM
        install(deny_exec=True, fatal=True)   # os.fork() ends the process: SIGSYS
    """
    fprog, denied = _loadable(deny_exec=deny_exec, fatal=fatal)
    nr = _syscall_nr()
    lc = libc if libc is not None else _libc()
    # What seccomp_load does first (libseccomp's default): without no_new_privs an
    # unprivileged process may not load a filter, and nothing it executes may gain
    # privileges past it.
    if lc.prctl(_PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise SeccompError(err, f"prctl(PR_SET_NO_NEW_PRIVS) failed: {errno.errorcode.get(err, err)}")
    rc = lc.syscall(ctypes.c_long(nr), ctypes.c_uint(_SECCOMP_SET_MODE_FILTER),
                    ctypes.c_uint(_SECCOMP_FILTER_FLAG_TSYNC), ctypes.byref(fprog))
    if rc != 0:  # -1 and errno, or the id of a thread that could not be synced
        err = ctypes.get_errno() if rc < 0 else errno.EBUSY
        raise SeccompError(err, f"loading the seccomp filter failed: {errno.errorcode.get(err, err)}")
    return list(denied)


def _loadable(*, deny_exec: bool, fatal: bool) -> tuple[Any, tuple[str, ...]]:
    """:func:`program` as the ``sock_fprog`` that ``seccomp(2)`` reads, made once per
    process like the program (in the fork server: :func:`prepare`). The kernel
    only reads it, so every sandbox loads the server's copy without writing to its
    pages. With the number looked up once and the caller's C library handle, the
    layer's step in a fork of a prepared process went from 0.33-0.34 ms (94 page
    faults) to 0.18 ms (50): the structures, the lookup and two ``CDLL`` handles
    were made in each sandbox."""
    key = (deny_exec, fatal)
    made = _fprogs.get(key)
    if made is None:
        bpf, denied = program(deny_exec=deny_exec, fatal=fatal)
        buf = ctypes.create_string_buffer(bpf, len(bpf))
        fprog = _SockFprog(len(bpf) // _BPF_INSN_SIZE, ctypes.cast(buf, ctypes.c_void_p))
        made = _fprogs[key] = (fprog, buf, denied)  # buf: the memory fprog points at
    return made[0], made[2]


def _syscall_nr() -> int:
    """``seccomp(2)``'s number on this architecture (libseccomp's table), looked up once."""
    global _nr
    if _nr is None:
        _nr = int(_libseccomp().seccomp_syscall_resolve_name(b"seccomp"))
    return _nr


def program(*, deny_exec: bool, fatal: bool) -> tuple[bytes, tuple[str, ...]]:
    """The filter of :func:`install` as a BPF program (and the syscalls it denies).

    Built by libseccomp once per process and kept: building it (70 rules,
    resolved and compiled) was half of the layer's cost in each sandbox's start
    (0.47-0.67 ms, now 0.25-0.28 ms: ``bench_profiles``), loading the
    built program takes one system call.
    """
    key = (deny_exec, fatal)
    built = _programs.get(key)
    if built is None:
        built = _programs[key] = _build(deny_exec=deny_exec, fatal=fatal)
    return built


def prepare() -> None:
    """Build the programs of every profile now (the fork server, before it forks:
    its children find them built, in pages they share). Nothing if libseccomp is
    missing: the sandbox then fails to start, with the reason, as before."""
    for deny_exec, fatal in ((True, True), (False, False)):
        try:
            _loadable(deny_exec=deny_exec, fatal=fatal)
        except SeccompError:
            return
    _syscall_nr()


def _build(*, deny_exec: bool, fatal: bool) -> tuple[bytes, tuple[str, ...]]:
    lib = _libseccomp()
    ctx = lib.seccomp_init(_SCMP_ACT_ALLOW)
    if not ctx:
        raise SeccompError(errno.ENOMEM, "seccomp_init failed")
    denied: list[str] = []
    try:
        deny = _SCMP_ACT_KILL_PROCESS if fatal else _SCMP_ACT_ERRNO | errno.EPERM

        def rule(name: str, action: int, *cmps: _ArgCmp) -> None:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:  # not a syscall on this architecture (iopl on arm64, say)
                return
            arr = (_ArgCmp * len(cmps))(*cmps) if cmps else None
            rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr)
            if rc < 0:
                raise SeccompError(-rc, f"seccomp rule for {name}: {errno.errorcode.get(-rc, rc)}")
            denied.append(name)

        for name in ALWAYS_DENIED + (EXEC_DENIED if deny_exec else ()):
            rule(name, deny)
        if deny_exec and fatal:
            for name in FORK_DENIED:
                rule(name, deny)
            rule("clone", deny, _ArgCmp(0, _SCMP_CMP_MASKED_EQ, _CLONE_THREAD, 0))
        # clone3 passes its flags in memory the filter cannot read: make the C
        # library fall back to clone, whose flags it can.
        rule("clone3", _SCMP_ACT_ERRNO | errno.ENOSYS)
        for flag in _CLONE_NEW.values():
            rule("clone", deny, _ArgCmp(0, _SCMP_CMP_MASKED_EQ, flag, flag))
        rule("ioctl", deny, _ArgCmp(1, _SCMP_CMP_EQ, _TIOCSTI, 0))
        refuse = _SCMP_ACT_ERRNO | errno.EPERM
        # A group of its own (pgid 0) only: the sandbox shares its host's session
        # (runtime.child.boot.own_group), where joining an existing group, the
        # host's, would put the host in reach of a kill(0) or killpg.
        rule("setpgid", refuse, _ArgCmp(1, _SCMP_CMP_NE, 0, 0))
        rule("socket", refuse, _ArgCmp(0, _SCMP_CMP_EQ, _AF_UNIX, 0))
        for kind in _SOCK_DGRAM_LIKE:
            rule("socketpair", refuse, _ArgCmp(0, _SCMP_CMP_EQ, _AF_UNIX, 0),
                 _ArgCmp(1, _SCMP_CMP_MASKED_EQ, _SOCK_TYPE_MASK, kind))
        fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
        try:
            rc = lib.seccomp_export_bpf(ctx, fd)
            if rc < 0:
                raise SeccompError(-rc, f"seccomp_export_bpf failed: {errno.errorcode.get(-rc, rc)}")
            size = os.fstat(fd).st_size
            bpf = os.pread(fd, size, 0)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)
    if not bpf or len(bpf) % _BPF_INSN_SIZE:
        raise SeccompError(errno.EINVAL, f"libseccomp exported a malformed program ({len(bpf)} bytes)")
    return bpf, tuple(sorted(set(denied)))


_programs: dict[tuple[bool, bool], tuple[bytes, tuple[str, ...]]] = {}
#: :func:`_loadable`'s structures (with the buffers they point at), per program.
_fprogs: dict[tuple[bool, bool], tuple[Any, Any, tuple[str, ...]]] = {}
_nr: int | None = None


# Loaded when the module is imported: in the fork server (which preloads the boot
# module and so this one) the library's pages are then shared by every sandbox
# instead of being mapped again, privately, by each.
try:
    _libseccomp()
except SeccompError:
    pass
