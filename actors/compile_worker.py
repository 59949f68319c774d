"""The compile worker: a long-lived child process that parses, scans, compiles, marshals.

Compiling untrusted source is not free: CPython's parser and compiler can be made
to use minutes of CPU or gigabytes of memory by a few hundred kilobytes of source
(quadratic f-string parsing, huge literals). So the host never compiles user code
itself; it sends each module to this worker and waits with a deadline. The worker
runs with ``RLIMIT_AS`` (memory) and a per-request ``RLIMIT_CPU``; when a request
overruns its wall-clock timeout the host kills the worker's process group and
starts a fresh worker for the next module.

Host side: :class:`CompileWorker`. Worker side: :func:`main`, run as
``python -I -S compile_worker.py`` (isolated: no environment, no site, so the
worker starts in ~20 ms and sees only the ``sys.path`` the host sends it).

Wire format, both ways, over the worker's stdin/stdout: ``!II`` (header length,
blob length), a JSON header, then the blob (source bytes one way, marshalled code
the other). JSON and raw bytes, not pickle, come back from the worker: the host
does not unpickle what a process handling untrusted input produced.

>>> w = CompileWorker()
>>> reply = w.compile(b"x = 1", filename="/app/m.py", profile="medium", timeout=10)
>>> reply.status, reply.code[:1] != b""
('ok', True)
>>> w.close()
"""

from __future__ import annotations

import ast
import base64
import importlib.util
import json
import marshal
import os
import select
import signal
import struct
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CompileWorker", "WorkerReply", "WorkerError", "Cancelled", "main"]

_FRAME = struct.Struct("!II")
#: Largest reply the host accepts (a 500 kB module marshals to far less).
MAX_REPLY_BYTES = 256 << 20
DEFAULT_MEMORY_LIMIT = 1 << 30  # 1 GiB of address space
_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class WorkerError(Exception):
    """The worker could not be started or set up (not a per-module failure)."""


@dataclass
class WorkerReply:
    """What the worker said about one module.

    ``status``: ``ok`` (``code`` holds the marshalled module), ``error`` (syntax
    error or blocked by the scanner; deterministic, so cacheable), ``timeout``,
    ``limit`` (memory or CPU limit hit) or ``crash`` (the worker died).
    ``diagnostics`` are plain dicts (see :class:`~actors.compilation.Diagnostic`).
    """

    status: str
    diagnostics: list[dict[str, Any]] = field(default_factory=list)
    imports: list[dict[str, Any]] = field(default_factory=list)
    code: bytes = b""
    elapsed: float = 0.0

    @property
    def cacheable(self) -> bool:
        return self.status in ("ok", "error")


class _Dead(Exception):
    pass


class _Timeout(Exception):
    pass


class Cancelled(Exception):
    """The compile was abandoned because its owner is stopping (the worker was killed)."""


#: How often a waiting compile checks whether it was cancelled.
_POLL = 0.05


def _encode(header: dict[str, Any], blob: bytes = b"") -> bytes:
    h = json.dumps(header, separators=(",", ":")).encode()
    return _FRAME.pack(len(h), len(blob)) + h + blob


class CompileWorker:
    """Host-side handle on the worker process; starts it lazily, replaces it when it dies.

    Not thread-safe: the compiler actor uses it from its own thread only.

    ``scanner_blob`` is the pickled security scanner (or ``b""`` for none);
    ``memory_limit`` is the worker's ``RLIMIT_AS`` in bytes.
    """

    def __init__(
        self,
        *,
        scanner_blob: bytes = b"",
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
        sys_path: list[str] | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.scanner_blob = scanner_blob
        self.memory_limit = memory_limit
        self.sys_path = list(sys_path if sys_path is not None else sys.path)
        self._on_event = on_event or (lambda _e, _md: None)
        self._proc: subprocess.Popen[bytes] | None = None
        self._cancelled: Callable[[], bool] = lambda: False
        self.started = 0  # how many worker processes this handle has started

    @property
    def pid(self) -> int | None:
        """Pid of the live worker, or None when none runs (it starts on the next compile)."""
        p = self._proc
        return p.pid if p is not None and p.poll() is None else None

    # -- lifecycle -------------------------------------------------------------------
    def _spawn(self, timeout: float) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", os.path.abspath(__file__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
            # Its own process group: the host kills the whole group on timeout (a
            # scanner might have started helpers), and ^C in a terminal does not
            # reach it directly.
            start_new_session=True,
        )
        self._proc = proc
        self.started += 1
        init = {
            "op": "init",
            "sys_path": [p for p in self.sys_path if p] + [_PROJECT_ROOT],
            "memory_limit": self.memory_limit,
        }
        deadline = time.monotonic() + max(timeout, 5.0)
        try:
            self._send(_encode(init, self.scanner_blob), deadline)
            header, _ = self._receive(deadline)
        except (_Dead, _Timeout) as exc:
            self._kill()
            raise WorkerError(f"the compile worker did not start ({type(exc).__name__})") from None
        if not header.get("ok"):
            self._kill()
            raise WorkerError(f"the compile worker could not be set up: {header.get('error')}")
        self._on_event("compile.worker_started", {"pid": proc.pid})
        return proc

    def close(self) -> None:
        """Stop the worker: EOF on its stdin asks it to exit; killed if it does not."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin:
                proc.stdin.close()
            proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            _killpg(proc)
            proc.wait()
        finally:
            if proc.stdout:
                proc.stdout.close()

    def _kill(self) -> int | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        _killpg(proc)
        rc = proc.wait()
        for f in (proc.stdin, proc.stdout):
            try:
                if f:
                    f.close()
            except OSError:
                pass
        return rc

    # -- I/O with deadlines ----------------------------------------------------------
    def _send(self, data: bytes, deadline: float) -> None:
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        fd = proc.stdin.fileno()
        view = memoryview(data)
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Timeout
            _, w, _ = select.select([], [fd], [], remaining)
            if not w:
                raise _Timeout
            try:
                n = os.write(fd, view[: 1 << 20])
            except (BrokenPipeError, ConnectionResetError):
                raise _Dead from None
            view = view[n:]

    def _read_exact(self, n: int, deadline: float) -> bytes:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        fd = proc.stdout.fileno()
        buf = bytearray()
        while len(buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Timeout
            # Wake up now and then so a stopping owner need not wait out the timeout.
            r, _, _ = select.select([fd], [], [], min(remaining, _POLL))
            if not r:
                if self._cancelled():
                    raise Cancelled
                continue
            chunk = os.read(fd, min(n - len(buf), 1 << 20))
            if not chunk:
                raise _Dead
            buf += chunk
        return bytes(buf)

    def _receive(self, deadline: float) -> tuple[dict[str, Any], bytes]:
        hlen, blen = _FRAME.unpack(self._read_exact(_FRAME.size, deadline))
        if hlen + blen > MAX_REPLY_BYTES:
            raise _Dead  # a worker that says this much is broken; replace it
        header = json.loads(self._read_exact(hlen, deadline))
        return header, self._read_exact(blen, deadline)

    # -- the one operation -----------------------------------------------------------
    def compile(
        self,
        source: bytes,
        *,
        filename: str,
        profile: str,
        timeout: float,
        cpu_seconds: int | None = None,
        optimize: int = 0,
        cancelled: Callable[[], bool] | None = None,
        profile_blob: bytes | None = None,
    ) -> WorkerReply:
        """Parse, scan, compile and marshal ``source`` in the worker, within ``timeout``.

        Never raises for a bad module: timeouts, limits and crashes come back as a
        reply with an error diagnostic. Raises :class:`WorkerError` only if a worker
        cannot be started at all, and :class:`Cancelled` (after killing the worker)
        when ``cancelled()`` turns true while it waits.

        ``profile`` is the profile's name; ``profile_blob``, if given, is a pickled
        profile object handed to the scanner instead of the name.
        """
        self._cancelled = cancelled or (lambda: False)
        header: dict[str, Any] = {"profile": profile}
        if profile_blob is not None:
            header["profile_pickle"] = base64.b64encode(profile_blob).decode()
        try:
            return self._compile(source, filename, header, timeout, cpu_seconds, optimize)
        except Cancelled:
            self._kill()
            raise

    def _compile(
        self, source: bytes, filename: str, profile: dict[str, Any], timeout: float,
        cpu_seconds: int | None, optimize: int,
    ) -> WorkerReply:
        start = time.monotonic()
        cpu = cpu_seconds if cpu_seconds is not None else int(timeout) + 1
        request = _encode(
            {"op": "compile", "filename": filename, "cpu_seconds": cpu, "optimize": optimize,
             **profile},
            source,
        )
        for attempt in (1, 2):
            if self._proc is None or self._proc.poll() is not None:
                if self._proc is not None:  # died between requests: replace quietly
                    self._kill()
                self._spawn(timeout)
            deadline = time.monotonic() + timeout
            try:
                self._send(request, deadline)
            except _Dead:
                # It died while idle (killed from outside?): one retry on a fresh one.
                self._kill()
                if attempt == 1:
                    continue
                return self._failure("crash", filename, start, "the compile worker died")
            except _Timeout:
                return self._timed_out(filename, timeout, start)
            try:
                header, blob = self._receive(deadline)
            except _Timeout:
                return self._timed_out(filename, timeout, start)
            except (_Dead, ValueError):
                rc = self._kill()
                return self._died(filename, rc, start)
            if header.get("retire"):
                self.close()  # it hit its memory limit: start clean next time
            return WorkerReply(
                status=header["status"],
                diagnostics=header.get("diagnostics", []),
                imports=header.get("imports", []),
                code=blob,
                elapsed=time.monotonic() - start,
            )
        raise AssertionError("unreachable")

    def _timed_out(self, filename: str, timeout: float, start: float) -> WorkerReply:
        self._kill()
        self._on_event("compile.worker_killed", {"file": filename, "why": "timeout"})
        return self._failure(
            "timeout", filename, start,
            f"compiling took longer than {timeout:g}s; the compile worker was stopped",
            "very large or deeply nested expressions and huge f-strings compile slowly: "
            "split the module, or raise the compile timeout",
        )

    def _died(self, filename: str, rc: int | None, start: float) -> WorkerReply:
        if rc is not None and rc < 0 and -rc in (signal.SIGXCPU, signal.SIGKILL):
            why = "CPU time" if -rc == signal.SIGXCPU else "memory (killed by the system)"
            self._on_event("compile.worker_killed", {"file": filename, "why": "limit"})
            return self._failure(
                "limit", filename, start,
                f"compiling exceeded the worker's {why} limit; the compile worker was stopped",
                "simplify the module (very large or deeply nested expressions)",
            )
        self._on_event("compile.worker_killed", {"file": filename, "why": f"exit {rc}"})
        return self._failure(
            "crash", filename, start, f"the compile worker died (exit status {rc})"
        )

    @staticmethod
    def _failure(
        status: str, filename: str, start: float, message: str, hint: str | None = None
    ) -> WorkerReply:
        diag = {"file": filename, "line": 1, "col": 1, "severity": "error",
                "code": status if status != "crash" else "worker-crash",
                "message": message, "hint": hint}
        return WorkerReply(status=status, diagnostics=[diag], elapsed=time.monotonic() - start)


def _killpg(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------------------------
# Worker side. Everything below runs in the worker process.
# ---------------------------------------------------------------------------------

_SYNTAX_CODES = {
    "IndentationError": "indentation-error",
    "TabError": "tab-error",
}


def _plain(finding: Any, filename: str) -> dict[str, Any]:
    """A scanner finding as a JSON-safe dict (the host turns it into a Diagnostic)."""
    if hasattr(finding, "to_dict"):
        d = dict(finding.to_dict())
    elif isinstance(finding, dict):
        d = dict(finding)
    else:
        d = {k: getattr(finding, k) for k in (
            "file", "filename", "line", "lineno", "col", "column", "col_offset", "severity",
            "level", "code", "rule_id", "rule", "message", "msg", "hint",
        ) if getattr(finding, k, None) is not None}
        if "message" not in d and "msg" not in d:
            d["message"] = str(finding)
    d.setdefault("file", filename)
    return {k: (v if isinstance(v, int | str | type(None)) else str(v)) for k, v in d.items()}


def _limit(filename: str, what: str) -> dict[str, Any]:
    return {"file": filename, "line": 1, "col": 1, "severity": "error", "code": "limit",
            "message": f"the module is too {what} to compile within the worker's limits",
            "hint": "split very large or deeply nested expressions into smaller parts"}


def _syntax(exc: SyntaxError, filename: str) -> dict[str, Any]:
    return {
        "file": filename,
        "line": exc.lineno or 1,
        "col": max(exc.offset or 1, 1),
        "severity": "error",
        "code": _SYNTAX_CODES.get(type(exc).__name__, "syntax-error"),
        "message": exc.msg,
        "hint": None,  # the host adds one (actors.compilation.syntax_hint)
        "kind": type(exc).__name__,
    }


def _compile_one(
    source: bytes, filename: str, profile: Any, optimize: int, scanner: Any
) -> tuple[dict[str, Any], bytes]:
    from actors.importscan import extract_imports

    def reply(status: str, diags: list[dict[str, Any]], imports: list[Any] | None = None,
              **extra: Any) -> dict[str, Any]:
        return {"status": status, "diagnostics": diags, "imports": imports or [], **extra}

    try:
        # Decode first, as the import system does (PEP 263 cookie, BOM, universal
        # newlines): SyntaxError offsets are then characters, not bytes, so the
        # column in the diagnostic is the one an editor shows.
        text = importlib.util.decode_source(source)
    except SyntaxError as exc:  # a bad or unknown coding cookie
        return reply("error", [_syntax(exc, filename)]), b""
    except UnicodeDecodeError as exc:
        line = source.count(b"\n", 0, exc.start) + 1
        col = exc.start - (source.rfind(b"\n", 0, exc.start) + 1) + 1
        return reply("error", [{
            "file": filename, "line": line, "col": col, "severity": "error",
            "code": "encoding-error",
            "message": f"the source is not valid {exc.encoding}: {exc.reason}",
            "hint": "save the file as UTF-8, or declare its encoding in a "
                    "'# -*- coding: ... -*-' line",
        }]), b""
    try:
        tree = ast.parse(text, filename)
    except SyntaxError as exc:
        return reply("error", [_syntax(exc, filename)]), b""
    except ValueError as exc:  # NUL bytes on some Python versions
        return reply("error", [{"file": filename, "line": 1, "col": 1, "severity": "error",
                                "code": "syntax-error", "message": str(exc), "hint": None,
                                "kind": "SyntaxError"}]), b""
    except RecursionError:
        return reply("limit", [_limit(filename, "deeply nested")]), b""
    imports = extract_imports(tree, source)
    findings: list[dict[str, Any]] = []
    if scanner is not None:
        try:
            # A scanner that takes the tree checks the one compiled below, parsed once.
            extra = {"tree": tree} if getattr(scanner, "accepts_tree", False) else {}
            findings = [_plain(f, filename)
                        for f in (scanner(source, filename, profile, **extra) or [])]
        except Exception as exc:  # fail closed: an unscanned module does not load
            findings = [{"file": filename, "line": 1, "col": 1, "severity": "error",
                         "code": "scanner-error",
                         "message": f"the security scan failed: {type(exc).__name__}: {exc}",
                         "hint": "this is a bug in the security scanner, not in the module"}]
    if any(str(f.get("severity", "error")).lower() not in ("warning", "info") for f in findings):
        return reply("error", findings, imports), b""
    try:
        code = compile(tree, filename, "exec", dont_inherit=True, optimize=optimize)
    except SyntaxError as exc:  # symbol-table errors: 'return' outside function, ...
        return reply("error", findings + [_syntax(exc, filename)], imports), b""
    except RecursionError:
        return reply("limit", [_limit(filename, "deeply nested")], imports), b""
    del tree
    return reply("ok", findings, imports), marshal.dumps(code)


def _read_exact(f: Any, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _read_frame(f: Any) -> tuple[dict[str, Any], bytes] | None:
    head = _read_exact(f, _FRAME.size)
    if head is None:
        return None
    hlen, blen = _FRAME.unpack(head)
    h = _read_exact(f, hlen)
    b = _read_exact(f, blen)
    if h is None or b is None:
        return None
    return json.loads(h), b


def _set_cpu_budget(seconds: int) -> None:
    """Let this request use ``seconds`` more CPU; the kernel sends SIGXCPU past that."""
    import resource

    used = resource.getrusage(resource.RUSAGE_SELF)
    spent = int(used.ru_utime + used.ru_stime) + 1
    _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = spent + max(seconds, 1)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def main() -> None:
    """The worker loop: init (sys.path, scanner, rlimits), then one compile per request."""
    import pickle
    import resource

    # The protocol owns private copies of fds 0/1; the real 0/1 point elsewhere so a
    # chatty scanner (print) cannot corrupt the frames.
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)

    def send(header: dict[str, Any], blob: bytes = b"") -> None:
        proto_out.write(_encode(header, blob))
        proto_out.flush()

    frame = _read_frame(proto_in)
    if frame is None:
        return
    init, scanner_blob = frame
    sys.path[:] = init["sys_path"]
    try:
        scanner = pickle.loads(scanner_blob) if scanner_blob else None
        import actors.importscan  # noqa: F401  (imported before the memory cap)

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        limit = int(init["memory_limit"])
        if limit > 0:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except BaseException as exc:
        send({"ok": False, "error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"})
        return
    send({"ok": True, "pid": os.getpid()})
    profiles: dict[str, Any] = {}  # pickled profile -> object, unpickled once

    while True:
        frame = _read_frame(proto_in)
        if frame is None:
            return  # the host closed our stdin (or died): exit
        header, source = frame
        filename = header["filename"]
        _set_cpu_budget(int(header.get("cpu_seconds", 11)))
        retire = False
        try:
            profile: Any = header["profile"]
            blob = header.get("profile_pickle")
            if blob is not None:
                if blob not in profiles:
                    profiles[blob] = pickle.loads(base64.b64decode(blob))
                profile = profiles[blob]
            reply, code = _compile_one(
                source, filename, profile, int(header.get("optimize", 0)), scanner
            )
        except MemoryError:
            reply, code, retire = {"status": "limit", "diagnostics": [_limit(filename, "large")],
                                   "imports": []}, b"", True
        del source
        if retire:
            reply["retire"] = True
        send(reply, code)
        if retire:
            return


if __name__ == "__main__":
    main()
