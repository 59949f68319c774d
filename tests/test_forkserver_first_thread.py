"""The fork server starts and ends one thread before its first fork
(``forkserver._first_thread``), so no child's first thread pays a process's
one-time thread set-up; it forks single-threaded all the same (a user namespace
can only be made by a single-threaded process)."""

from __future__ import annotations

import os
import socket
from multiprocessing.connection import wait

import pytest
from helpers import wait_for

from runtime.host import forkserver

pytestmark = pytest.mark.timeout(60)


def _report(sock: socket.socket) -> None:
    from runtime.host import forkserver as fs

    sock.sendall(b"1" if fs._FIRST_THREAD_ENDED else b"0")
    sock.close()


def test_children_come_from_a_server_that_ended_its_first_thread() -> None:
    mine, theirs = socket.socketpair()
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        child = forkserver.spawn(_report, (), fds=(theirs.fileno(), null, null))
        theirs.close()
        assert mine.recv(1) == b"1"
        assert wait([child.sentinel], 10)
        child.close()
    finally:
        os.close(null)
        mine.close()


def test_the_server_serves_single_threaded() -> None:
    pid = forkserver.ensure_running()
    # (its first thread may still be leaving the kernel just after the server started)
    wait_for(lambda: os.listdir(f"/proc/{pid}/task") == [str(pid)],
             message="the fork server has more than one thread")
