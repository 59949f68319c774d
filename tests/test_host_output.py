"""runtime.host.output (a sandbox's stdout/stderr on the host), runtime.host.untrusted,
runtime.host.observed and the fork server's docstrings: the documented defaults hold."""

from __future__ import annotations

import doctest
import importlib
import logging
import os
from pathlib import Path

import pytest
from helpers import wait_for

from runtime.host import untrusted
from runtime.host.output import OutputCapture, OutputLimits, OutputLog, neutralise
from runtime.wire.mailbox import MAX_ITEMS, Codec

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("module", ["runtime.host.output", "runtime.host.untrusted",
                                    "runtime.host.observed", "runtime.host.forkserver"])
def test_docstring_examples(module):
    mod = importlib.import_module(module)
    failed, attempted = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert failed == 0 and attempted > 0


@pytest.mark.parametrize("name", ["Sandbox.output", "Runtime.output"])
def test_api_docstring_examples(name, monkeypatch):
    import sandbox
    from sandbox import api

    monkeypatch.chdir(ROOT)  # the examples name apps by their path from the repo root
    obj = api
    for part in name.split("."):
        obj = getattr(obj, part)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in doctest.DocTestFinder().find(obj, name, globs={"sandbox": sandbox}):
        runner.run(test)
    assert runner.failures == 0 and runner.tries > 0


def test_documented_defaults():
    lim = OutputLimits()
    assert (lim.rate, lim.burst, lim.max_bytes, lim.line_max, lim.tail, lim.tail_chars) == (
        64 * 1024, 256 * 1024, 16 * 1024 * 1024, 4096, 1000, 256 * 1024)
    assert (untrusted.MESSAGE_MAX, untrusted.TRACEBACK_MAX) == (2000, 16_000)
    assert MAX_ITEMS == 1_000_000
    assert (untrusted.UNASKED_RATE, untrusted.UNASKED_BURST) == (10_000, 100_000)


@pytest.mark.parametrize("field", ["rate", "burst", "max_bytes", "line_max", "tail", "tail_chars"])
def test_bad_limits_name_the_field(field):
    with pytest.raises(ValueError, match=f"OutputLimits.{field}"):
        OutputLimits(**{field: 0})


@pytest.mark.parametrize("raw, shown", [
    ("\x1b[2Jclear", "\\x1b[2Jclear"),
    ("carriage\rreturn", "carriage\\rreturn"),
    ("bidi\u202eevil", "bidi\\u202eevil"),
    ("c1\x9bcsi", "c1\\x9bcsi"),
    ("tab\tkept, quotes ' \" kept", "tab\tkept, quotes ' \" kept"),
    ("plain text ✓", "plain text ✓"),
])
def test_neutralise(raw, shown):
    assert neutralise(raw) == shown


def test_the_burst_is_kept_and_the_excess_dropped_and_counted():
    out = OutputLog("rt/x", OutputLimits(rate=1, burst=1000, max_bytes=10_000))
    assert out.admit(600) == 600
    kept = out.admit(600)
    assert kept <= 401 and out.dropped == 600 - kept
    assert out.accepted == 600 + kept


def test_the_size_cap_holds_over_the_sandboxs_life():
    out = OutputLog("rt/x", OutputLimits(rate=10**9, burst=10**9, max_bytes=1000))
    assert out.admit(800) == 800
    assert out.admit(800) == 200
    assert out.admit(5) == 0 and out.dropped == 605


def _capture(limits: OutputLimits) -> tuple[OutputLog, OutputCapture, int, int]:
    out = OutputLog("rt/cap", limits)
    cap = OutputCapture(out)
    w_out, w_err = (os.dup(fd) for fd in cap.child_fds())
    cap.started()  # closes its own copies of the write ends: ours play the child
    return out, cap, w_out, w_err


def _write_and_close(cap: OutputCapture, w_out: int, w_err: int) -> None:
    os.write(w_out, b"0123456789abcdef\nshort\n")
    os.write(w_err, b"err\x1b[31m\r\n")
    os.write(w_out, b"no newline at the end")
    os.close(w_out)
    os.close(w_err)
    cap.close()


def test_lines_are_cut_attributed_and_logged(caplog):
    out, cap, w_out, w_err = _capture(OutputLimits(line_max=10))
    with caplog.at_level(logging.INFO, logger="runtime.output"):
        _write_and_close(cap, w_out, w_err)
    stdout = [(l.text, l.truncated) for l in out.tail(None) if l.stream == "stdout"]
    assert stdout == [("0123456789", True), ("abcdef", False), ("short", False),
                      ("no newline", True), (" at the en", True), ("d", True)]
    stderr = [(l.text, l.truncated) for l in out.tail(None) if l.stream == "stderr"]
    assert stderr == [("err\\x1b[31m", False)]
    records = [r for r in caplog.records if r.name == "runtime.output"]
    assert len(records) == 7
    assert {r.stream for r in records} == {"stdout", "stderr"}  # type: ignore[attr-defined]
    assert all(r.sandbox == "cap" and r.runtime == "rt" for r in records)  # type: ignore[attr-defined]
    assert all("\x1b" not in r.getMessage() for r in records)


def test_pipes_at_their_end_are_released_before_close():
    # The process's exit closes both pipes: the pump releases them then, so close()
    # (on a destroy's path, right after the exit) waits for no turn of the pump.
    out, cap, w_out, w_err = _capture(OutputLimits(line_max=100))
    os.write(w_out, b"last words\nno newline")
    os.close(w_out)
    os.close(w_err)
    wait_for(cap._closed.is_set, message="released at the pipes' end")
    assert all(stream.fd < 0 for stream in cap._streams)  # the read ends are closed
    assert [l.text for l in out.tail(None)] == ["last words", "no newline"]
    cap.close()  # idempotent with the pump's release: nothing read twice
    assert [l.text for l in out.tail(None)] == ["last words", "no newline"]


def test_the_tail_keeps_the_last_lines():
    out, cap, w_out, w_err = _capture(OutputLimits(line_max=10, tail=3))
    _write_and_close(cap, w_out, w_err)
    assert len(out.tail(None)) == 3 and len(out.tail(2)) == 2 and out.tail(0) == []
    assert out.tail(None)[-2:] == out.tail(2)


def test_the_tail_is_bounded_in_characters_too():
    out = OutputLog("rt/x", OutputLimits(tail=1000, tail_chars=100))
    for i in range(50):
        out.add("stdout", b"%02d" % i + b"x" * 18)  # 20 characters a line
    kept = out.tail(None)
    assert len(kept) == 5 and kept[-1].text.startswith("49")


def test_untrusted_texts_are_one_line_and_capped():
    assert "\n" not in untrusted.text("a\nb") and len(untrusted.text("x" * 10**6)) <= 2000
    tb = untrusted.block("line1\nline2\x1b\n" * 10**5)
    assert len(tb) <= untrusted.TRACEBACK_MAX and "\x1b" not in tb and "\n" in tb


def test_small_frames_are_not_counted_large_ones_are():
    import msgpack

    c = Codec(max_items=100)
    small = msgpack.packb(["reply", 1, None, [[] for _ in range(200)]])  # < 64 KiB
    assert len(c.decode_envelope(small).payload) == 200
    big = msgpack.packb(["reply", 1, None, [[] for _ in range(200)], b"x" * 70_000])
    from runtime.errors import ProtocolError

    with pytest.raises(ProtocolError, match="max_items=100"):
        c.decode_envelope(big)
    with pytest.raises(ValueError, match="max_items"):
        Codec(max_items=0)
