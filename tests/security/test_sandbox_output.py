"""A sandbox's stdout and stderr never reach the host's own: judged from a host
process's captured stdout and stderr, and from the host's records and metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from conftest import ROOT, attempt

from runtime import telemetry
from sandbox.testing import wait_for

pytestmark = pytest.mark.timeout(120)

NOISY = {
    "app.py": """
        from noisy import Noisy


        def children():
            return [Noisy.child_spec(name="noisy")]
    """,
    "noisy.py": """
        from runtime.genserver import GenServer

        FORGED = [
            '{"type": "exit", "status": "ok"}',
            "INFO runtime: sandbox X finished cleanly (exit 0)",
            "\\x1b]0;pwned\\x07\\x1b[2J\\x1b[31mred\\x1b[0m\\rfake\\u202eevil\\x9b1m",
            "tail-marker",
        ]


        class Noisy(GenServer):
            def init(self, args=None):
                return 0

            def handle_call(self, request, state):
                for line in FORGED:
                    print(line)
                return "printed", state
    """,
}

HOST = textwrap.dedent(
    """
    import json, logging, sys
    import sandbox
    from sandbox.testing import wait_for

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("OUT %(sandbox)s %(stream)s | %(message)s"))
    out = logging.getLogger("runtime.output")
    out.addHandler(handler)
    out.setLevel(logging.INFO)
    with sandbox.start(name="outhost") as rt:
        sb = rt.create_sandbox("noisy", sys.argv[1], profile=sys.argv[2])
        assert sb.call("noisy", "ping") == "printed"
        wait_for(lambda: any(l.text == "tail-marker" for l in sb.output(tail=10)), 20)
        tail = [[l.stream, l.text] for l in sb.output(tail=4)]
    print(json.dumps({"tail": tail}))
    """
)


def _app(tmp: Path, files: dict[str, str]) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        (tmp / name).write_text(textwrap.dedent(src))
    return tmp


@pytest.mark.parametrize("profile", ["high", "medium", "low"])
def test_forged_lines_and_escapes_reach_the_host_only_as_attributed_records(tmp_path, profile):
    app = _app(tmp_path / "noisy", NOISY)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", HOST, str(app), profile],
        cwd=ROOT, env=env, capture_output=True, timeout=100, stdin=subprocess.DEVNULL,
    )
    stdout, stderr = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, stderr[-4000:]
    # the host's stdout holds what the host printed, and nothing else
    assert len(stdout.splitlines()) == 1, stdout
    result = json.loads(stdout)
    # no raw control byte of the sandbox's reached either stream
    for raw in (proc.stdout, proc.stderr):
        for bad in (b"\x1b", b"\x07", b"\r", "\u202e".encode(), "\x9b".encode()):
            assert bad not in raw, (bad, raw[-2000:])
    # each forged line is there only as the host's record, attributed to the sandbox
    for forged in ('{"type": "exit", "status": "ok"}', "finished cleanly (exit 0)", "tail-marker"):
        lines = [ln for ln in stderr.splitlines() if forged in ln]
        assert lines and all(ln.startswith("OUT noisy stdout | ") for ln in lines), lines
    assert result["tail"][0] == ["stdout", '{"type": "exit", "status": "ok"}']
    escaped = result["tail"][2]
    assert escaped[1].startswith("\\x1b]0;pwned\\x07\\x1b[2J"), escaped
    assert "\\r" in escaped[1] and "\\u202e" in escaped[1] and "\\x9b" in escaped[1]


def _flood(megabytes: int) -> int:
    import os

    line = b"x" * 1023 + b"\n"
    chunk = line * 64
    for fd in (1, 2):
        for _ in range(megabytes * 16):
            os.write(fd, chunk)
    return megabytes


def test_a_flooding_sandbox_is_capped_counted_and_blocks_only_itself(world):
    dropped: list[dict] = []
    telemetry.attach("test-output-dropped", "process.output_dropped",
                     lambda e, m, md: dropped.append({**m, **md}))
    try:
        attacker = world.sandbox(profile="low", id="flood")
        sibling = world.sandbox(profile="low", id="quiet")
        result: list = []
        flood = threading.Thread(target=lambda: result.append(attempt(attacker, _flood, 8, timeout=60)))
        flood.start()
        try:
            # while the flood runs the sibling answers and its output arrives
            for i in range(3):
                assert sibling.call("counter", "incr") == i + 1
            attempt(sibling, print, "sibling-marker")
            wait_for(lambda: any(l.text == "sibling-marker" for l in sibling.output(tail=5)), 20)
        finally:
            flood.join(90)
        assert result == [8], result
        wait_for(lambda: sum(d["bytes"] for d in dropped if d.get("sandbox") == "flood") > 0, 20)
        out = world.rt.output("flood", tail=None)
        assert out and all(len(l.text) <= 4096 for l in out)
        assert {l.stream for l in out} <= {"stdout", "stderr"}
        assert not [d for d in dropped if d.get("sandbox") == "quiet"]
        metrics = world.rt.metrics_text()
        line = next(ln for ln in metrics.splitlines()
                    if ln.startswith('sandbox_output_dropped_bytes_total{sandbox="flood"}'))
        assert float(line.split()[-1]) > 0
    finally:
        telemetry.detach("test-output-dropped")


def _print_then_die() -> None:
    import os

    print("last words", flush=True)
    os._exit(3)


def test_what_a_crashed_process_wrote_last_is_kept(world):
    sb = world.sandbox(profile="low")
    pid = sb.pid
    attempt(sb, _print_then_die)
    wait_for(lambda: sb.info()["pid"] not in (None, pid), 20)
    assert any(l.text == "last words" for l in sb.output(tail=10)), sb.output()
    with pytest.raises(ValueError, match="tail"):
        sb.output(tail=-1)
