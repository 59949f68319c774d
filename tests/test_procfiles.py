"""The monitor's /proc files, kept open and re-read in place; its USS turns.

Real processes only: a child Python that allocates when asked, read by a real
:class:`actors.procfiles.ProcFiles` and a real resource monitor (ticked by hand).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from actors.monitor import USS_TURNS_KEPT, ResourceMonitorActor
from actors.procfiles import ProcFiles
from sandbox.testing import leaks, snapshot, wait_for

pytestmark = pytest.mark.timeout(30)

GROWER = ("import sys\nheld = []\nprint('up', flush=True)\nfor line in sys.stdin:\n"
          "    held.append(b'x' * (16 << 20))\n    print('grown', flush=True)\n")


@pytest.fixture
def grower() -> Iterator[subprocess.Popen[str]]:
    """A child that allocates and touches 16 MiB for each line it reads."""
    before = snapshot()
    p = subprocess.Popen([sys.executable, "-c", GROWER], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline() == "up\n"
        yield p
    finally:
        p.kill()
        p.communicate()
    assert leaks(before) == []


def grow(p: subprocess.Popen[str]) -> None:
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write("more\n")
    p.stdin.flush()
    assert p.stdout.readline() == "grown\n"


def rss_pages(stat: bytes) -> int:
    return int(stat[stat.rindex(b")") + 2:].split()[21])


def test_a_file_kept_open_reads_fresh_content_until_its_process_is_gone(grower):
    files = ProcFiles()
    before = rss_pages(files.read(grower.pid, "stat"))
    grow(grower)
    assert rss_pages(files.read(grower.pid, "stat")) >= before + (16 << 20) // 4096 // 2
    assert files.open_count() == 1  # the same descriptor, read again
    grower.kill()
    grower.wait()
    with pytest.raises(OSError):  # reaped: the pid's files are gone, the fd is closed
        files.read(grower.pid, "stat")
    assert files.open_count() == 0


def test_keep_only_and_close_release_the_descriptors(grower):
    import os

    files = ProcFiles()
    files.read(grower.pid, "stat")
    files.read(os.getpid(), "stat")
    files.keep_only({os.getpid()})
    assert files.open_count() == 1
    files.close()
    assert files.open_count() == 0
    assert files.read(os.getpid(), "stat")  # usable again
    files.close()


class _Proc:
    def __init__(self, pid: int) -> None:
        self.pid = pid


class _Slot:
    """What the monitor reads of a sandbox (its current process): here a plain child."""

    security = None

    def __init__(self, pid: int) -> None:
        self._proc = _Proc(pid)
        self.started_at = 0.0

    def current(self) -> Any:
        return self._proc


def test_the_monitor_rereads_uss_when_rss_moves_and_closes_files_it_no_longer_needs(grower):
    ref = ResourceMonitorActor.start(autostart=False, uss_every=1, runtime_id="procfiles-test")
    try:
        ref.invoke("register", "grower", _Slot(grower.pid))
        ref.invoke("sample_now")
        first = ref.invoke("usage", "grower")["uss"]
        assert first > 0
        monitor: Any = ref._actor
        kept = []
        for _ in range(USS_TURNS_KEPT + 1):  # idle: RSS unmoved, USS reads skipped ...
            ref.invoke("sample_now")
            kept.append(monitor.watches["grower"].uss_kept)
        assert kept == [*range(1, USS_TURNS_KEPT + 1), 0]  # ... up to 9 turns in a row
        assert ref.invoke("usage", "grower")["uss"] > 0
        grow(grower)
        wait_for(lambda: ref.invoke("sample_now") and
                 ref.invoke("usage", "grower")["uss"] >= first + (8 << 20), 10)
        assert monitor._files.open_count() == 2  # the monitor's own: stat and children
        ref.invoke("unregister", "grower")
        ref.invoke("sample_now")
        assert monitor._files.open_count() == 0
    finally:
        ref.stop()


def test_a_new_sandbox_waits_for_its_uss_turn_unless_sample_now_asks(grower):
    """The sampler reads a new process's USS (its dearest read) on the sandbox's turn,
    not at its first tick: a burst of creates spreads those reads over the ticks."""
    ref = ResourceMonitorActor.start(interval=0.01, uss_every=1000, runtime_id="procfiles-turn")
    try:
        ref.invoke("register", "grower", _Slot(grower.pid))
        wait_for(lambda: ref.invoke("stats")["ticks"] >= 3
                 and (ref.invoke("usage", "grower") or {}).get("sampled"), 10)
        usage = ref.invoke("usage", "grower")
        assert usage["rss"] > 0 and usage["uss"] is None  # its turn is tick 999
        ref.invoke("sample_now")  # asked for: a USS never read is read now
        assert ref.invoke("usage", "grower")["uss"] > 0
    finally:
        ref.stop()
