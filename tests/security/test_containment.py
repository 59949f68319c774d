"""The OS layer keeps every profile's effects inside the sandbox.

Each attack runs in ``high`` (through ``high-run``), ``medium`` and ``low``; the
outcome is judged from the host: a marker in a world-writable host directory, the
host's ``/dev/shm``, a listener on the host's loopback, an abstract unix socket
in the host's network namespace, a sibling's workdir. Under ``high`` and
``medium`` the guard refuses most of these already; under ``low`` (which lets
the code do all of them) only the OS layer stands in the way, so ``low`` is the
case that matters most here.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import uuid

import pytest
from conftest import OS_PROFILES, attempt

pytestmark = pytest.mark.timeout(90)

PROFILES = ["high-run", "medium", "low"]


def _try_write(paths: list[str]) -> list[str]:
    """Write each path by every ordinary means; return those that got written."""
    import os

    done = []
    for p in paths:
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o666)
            os.write(fd, b"pwned")
            os.close(fd)
            done.append(p)
        except Exception:  # noqa: BLE001 - refused or denied: both are fine here
            pass
    return done


def _connect_tcp(port: int) -> str:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            s.sendall(b"escaped")
        return "connected"
    except Exception as exc:  # noqa: BLE001
        return f"failed: {exc}"


def _connect_abstract(name: bytes) -> str:
    import socket

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(3)
            s.connect(name)
            s.sendall(b"escaped")
        return "connected"
    except Exception as exc:  # noqa: BLE001
        return f"failed: {exc}"


def _listen_tcp() -> int:
    """Bind a listener on the sandbox's loopback; leave it open (the test checks it
    cannot be reached from the host)."""
    import socket
    import sys

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    sys.modules["__main__"].__dict__.setdefault("_kept", []).append(s)
    return int(s.getsockname()[1])


def _accepted(listener: socket.socket) -> bool:
    listener.setblocking(False)
    ready, _, _ = select.select([listener], [], [], 0.5)
    if not ready:
        return False
    conn, _ = listener.accept()
    conn.close()
    return True


@pytest.mark.parametrize("profile", PROFILES)
def test_no_file_outside_the_workdir(world, profile):
    sb = world.sandbox(profile=profile)
    marker = world.marker(f"{profile}.txt")  # a 0777 directory under the host's /tmp
    shm = f"/dev/shm/sandbox-test-{uuid.uuid4().hex}"
    var_tmp = f"/var/tmp/sandbox-test-{uuid.uuid4().hex}"
    try:
        attempt(sb, _try_write, [str(marker), shm, var_tmp])
        assert not marker.exists(), f"{profile}: wrote into a world-writable host directory"
        assert not os.path.exists(shm), f"{profile}: wrote into the host's /dev/shm"
        assert not os.path.exists(var_tmp), f"{profile}: wrote into the host's /var/tmp"
    finally:
        for p in (shm, var_tmp):
            if os.path.exists(p):
                os.unlink(p)
    # The workdir itself stays writable in every profile.
    inside = str(world.workdir(sb) / "inside.txt")
    assert attempt(sb, _try_write, [inside]) == [inside]


@pytest.mark.parametrize("profile", PROFILES)
def test_host_loopback_is_unreachable(world, profile):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    try:
        sb = world.sandbox(profile=profile)
        got = attempt(sb, _connect_tcp, listener.getsockname()[1])
        assert got != "connected" and not _accepted(listener), f"{profile}: {got}"
    finally:
        listener.close()


@pytest.mark.parametrize("profile", PROFILES)
def test_host_abstract_socket_is_unreachable(world, profile):
    name = b"\0sandbox-test-" + uuid.uuid4().hex.encode()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(name)
    listener.listen(4)
    try:
        sb = world.sandbox(profile=profile)
        got = attempt(sb, _connect_abstract, name)
        assert got != "connected" and not _accepted(listener), f"{profile}: {got}"
    finally:
        listener.close()


def test_a_listener_in_low_is_not_on_the_host(world):
    sb = world.sandbox(profile="low")
    port = attempt(sb, _listen_tcp)
    assert isinstance(port, int), port
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=3).close()


def _leave_tmp_file(name: str) -> list[str]:
    """Through libc (no audit event where ctypes is allowed): the OS layer alone."""
    import ctypes
    import os

    libc = ctypes.CDLL(None, use_errno=True)
    made = []
    for d in ("/tmp", "/dev/shm", "/var/tmp"):
        fd = libc.open(os.path.join(d, name).encode(), os.O_WRONLY | os.O_CREAT, 0o666)
        if fd >= 0:
            libc.write(fd, b"left behind", 11)
            libc.close(fd)
            made.append(d)
    return made


def _look_for(name: str) -> list[str]:
    import ctypes
    import os

    libc = ctypes.CDLL(None, use_errno=True)
    return [d for d in ("/tmp", "/dev/shm", "/var/tmp")
            if libc.access(os.path.join(d, name).encode(), os.F_OK) == 0]


@pytest.mark.parametrize("profile", OS_PROFILES)
def test_temp_files_do_not_outlive_the_sandbox(world, profile):
    """Files left in /tmp, /dev/shm and /var/tmp live in the sandbox's own tmpfs:
    the host never sees them, and neither the sandbox's next process nor a new
    sandbox of the same id (the same kind of workdir and UID scheme) finds them."""
    name = f"left-{uuid.uuid4().hex}"
    sb = world.sandbox(profile=profile, id=f"tmpowner-{profile}")
    assert attempt(sb, _leave_tmp_file, name) == ["/tmp", "/dev/shm", "/var/tmp"]
    assert attempt(sb, _look_for, name) == ["/tmp", "/dev/shm", "/var/tmp"]  # they are real
    assert not any(os.path.exists(os.path.join(d, name)) for d in ("/tmp", "/dev/shm", "/var/tmp"))
    sb.restart()
    assert attempt(sb, _look_for, name) == []
    world.rt.destroy_sandbox(sb.id)
    again = world.sandbox(profile=profile, id=sb.id)
    assert attempt(again, _look_for, name) == []


def _sysv_shm(key: int, create: bool) -> int:
    """shmget through libc: the segment's id, or -errno."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    ipc_creat = 0o1000
    rc = libc.shmget(key, 4096, (ipc_creat | 0o666) if create else 0)
    return rc if rc >= 0 else -ctypes.get_errno()


def _host_shm_keys() -> set[int]:
    with open("/proc/sysvipc/shm") as fh:
        return {int(line.split()[0]) for line in list(fh)[1:] if line.strip()}


@pytest.mark.parametrize("profile", OS_PROFILES)
def test_ipc_objects_left_behind_are_neither_the_hosts_nor_the_next_sandboxs(world, profile):
    """A System V shared memory segment lives in the sandbox's IPC namespace: not in
    the host's (``/proc/sysvipc/shm`` read by the host), gone with the process."""
    key = 0x5A000000 + int(uuid.uuid4().hex[:5], 16)
    sb = world.sandbox(profile=profile, id=f"ipc-{profile}")
    assert attempt(sb, _sysv_shm, key, True) >= 0
    assert attempt(sb, _sysv_shm, key, False) >= 0  # it is there, for the sandbox
    assert key not in _host_shm_keys()
    sb.restart()
    assert attempt(sb, _sysv_shm, key, False) == -errno.ENOENT


def _write_sibling(path: str) -> str:
    try:
        with open(path, "w") as fh:
            fh.write("pwned")
        return "written"
    except Exception as exc:  # noqa: BLE001
        return f"failed: {exc}"


@pytest.mark.parametrize("profile", PROFILES)
def test_sibling_workdir_is_out_of_reach(world, profile):
    victim = world.sandbox(profile="low")
    target = world.workdir(victim) / "planted.txt"
    sb = world.sandbox(profile=profile)
    got = attempt(sb, _write_sibling, str(target))
    assert got != "written" and not target.exists(), f"{profile}: {got}"
    assert victim.call("counter", "incr") == 1


def _escape_by_path_symlink_and_dir_fd(target_dir: str) -> list[str]:
    """Write into ``target_dir`` straight, through a symlink in the workdir, and with
    ``dir_fd``; return the ways that worked."""
    import os

    worked = []
    try:
        with open(os.path.join(target_dir, "direct.txt"), "w") as fh:
            fh.write("pwned")
        worked.append("direct")
    except Exception:  # noqa: BLE001
        pass
    try:
        os.symlink(target_dir, "escape")
        with open(os.path.join("escape", "via-symlink.txt"), "w") as fh:
            fh.write("pwned")
        worked.append("symlink")
    except Exception:  # noqa: BLE001
        pass
    try:
        d = os.open(target_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fd = os.open("via-dir-fd.txt", os.O_WRONLY | os.O_CREAT, 0o666, dir_fd=d)
            os.write(fd, b"pwned")
            os.close(fd)
            worked.append("dir_fd")
        finally:
            os.close(d)
    except Exception:  # noqa: BLE001
        pass
    return worked


@pytest.mark.parametrize("profile", PROFILES)
def test_world_writable_host_dir_outside_tmp_stays_untouched(world, profile):
    """A 0777 directory on the host's root file system (not under a private tmpfs):
    only the read-only mount stands between it and a ``low`` sandbox."""
    import shutil
    import tempfile

    base = "/srv" if os.path.isdir("/srv") else None
    if base is None or not os.access(base, os.W_OK):
        pytest.skip("no writable /srv to make a world-writable host directory in")
    target = tempfile.mkdtemp(prefix="sandbox-test-", dir=base)
    os.chmod(target, 0o777)
    try:
        sb = world.sandbox(profile=profile)
        got = attempt(sb, _escape_by_path_symlink_and_dir_fd, target)
        assert os.listdir(target) == [], f"{profile}: {got}"
    finally:
        shutil.rmtree(target, ignore_errors=True)


def _reach_unix_paths(stream_path: str, dgram_path: str) -> dict[str, int]:
    """Through libc (no audit event where ctypes is allowed): connect a stream
    socket to one host socket file, and send a datagram to another from a datagram
    socketpair (which can address any path). Returns each step's result or -errno."""
    import ctypes
    import socket as _s

    libc = ctypes.CDLL(None, use_errno=True)

    def addr(path: str) -> bytes:
        return _s.AF_UNIX.to_bytes(2, "little") + path.encode() + b"\0"

    out: dict[str, int] = {}
    fd = libc.socket(_s.AF_UNIX, _s.SOCK_STREAM, 0)
    out["socket"] = fd if fd >= 0 else -ctypes.get_errno()
    if fd >= 0:
        a = addr(stream_path)
        rc = libc.connect(fd, a, len(a))
        out["connect"] = rc if rc >= 0 else -ctypes.get_errno()
        if rc == 0:
            libc.send(fd, b"escaped", 7, 0)
        libc.close(fd)
    pair = (ctypes.c_int * 2)()
    rc = libc.socketpair(_s.AF_UNIX, _s.SOCK_DGRAM, 0, pair)
    out["socketpair"] = rc if rc >= 0 else -ctypes.get_errno()
    if rc == 0:
        a = addr(dgram_path)
        sent = libc.sendto(pair[0], b"escaped", 7, 0, a, len(a))
        out["sendto"] = sent if sent >= 0 else -ctypes.get_errno()
        libc.close(pair[0])
        libc.close(pair[1])
    return out


@pytest.mark.parametrize("profile", OS_PROFILES)
def test_host_socket_files_are_unreachable(world, profile):
    """A socket file of the host (a service's in ``/run``, ``/dev/log``, the D-Bus
    bus) sits on the read-only host view, and a read-only mount does not stop
    ``connect`` or a datagram: the kernel filter refuses the unix sockets that
    could reach one. Judged on the host: nothing accepted, nothing received."""
    base = "/run" if os.access("/run", os.W_OK) else None
    if base is None:
        pytest.skip("needs a writable /run to put a host socket outside the private temp dirs")
    import tempfile

    d = tempfile.mkdtemp(prefix="sandbox-test-", dir=base)
    os.chmod(d, 0o777)
    stream_path, dgram_path = os.path.join(d, "s.sock"), os.path.join(d, "d.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        listener.bind(stream_path)
        listener.listen(4)
        dgram.bind(dgram_path)
        dgram.setblocking(False)
        for p in (stream_path, dgram_path):
            os.chmod(p, 0o777)
        sb = world.sandbox(profile=profile)
        got = attempt(sb, _reach_unix_paths, stream_path, dgram_path)
        assert not _accepted(listener), f"{profile}: {got}"
        with pytest.raises(BlockingIOError):
            dgram.recv(64)
        assert got == {"socket": -errno.EPERM, "socketpair": -errno.EPERM}, got
        assert sb.call("counter", "incr") == 1  # stream socketpairs (its channel) work
    finally:
        listener.close()
        dgram.close()
        for p in (stream_path, dgram_path):
            if os.path.exists(p):
                os.unlink(p)
        os.rmdir(d)
