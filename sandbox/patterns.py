"""Error patterns: recurring errors of a runtime grouped by fingerprint.

Every crash the runtime sees (a sandbox process that ended abnormally, an actor
inside a sandbox restarted by its supervisor) is reduced to a fingerprint of
three parts: the exception type, the location (the innermost ``file:line in
function`` of its traceback, when it has one) and the message with what varies
between occurrences replaced (numbers, quoted strings, addresses). Occurrences
with the same fingerprint are one :class:`ErrorPattern`: a count, first and last
seen, the sandboxes affected, and the category and remedy of
:mod:`runtime.recovery`.

>>> patterns = ErrorPatterns()
>>> for n in (1, 2, 3):
...     p = patterns.record("s1", "ZeroDivisionError: division by zero", traceback=(
...         'Traceback (most recent call last):\\n'
...         '  File "/work/app/worker.py", line 12, in handle_call\\n'
...         '    return 1 / 0\\n'
...         'ZeroDivisionError: division by zero\\n'))
>>> p.count, p.type, p.location, p.category
(3, 'ZeroDivisionError', 'app/worker.py:12 in handle_call', 'runtime')
>>> normalise("user 42 not found in 'db-7' at 0x7f3a2c")
'user <n> not found in <str> at <addr>'
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from runtime.recovery import describe

__all__ = ["ErrorPattern", "ErrorPatterns", "fingerprint", "normalise", "MAX_PATTERNS"]

#: Patterns kept per runtime; past it the one seen least recently is forgotten
#: (bounded memory and bounded label cardinality of the metric).
MAX_PATTERNS = 200

_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)')
_TYPE = re.compile(r"^\s*(?:\w+: )??(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|"
                   r"Exceeded|Violation|Failed|Timeout|Dead|Found|Exists|Warning))\s*:")
_LAST_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*)(?::|$)")
_VARIABLE = [
    (re.compile(r"0x[0-9a-fA-F]+"), "<addr>"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"), "<uuid>"),
    (re.compile(r"'[^'\n]*'|\"[^\"\n]*\""), "<str>"),
    # a number standing alone or with a unit ("2.5s"), not one inside a name ("E1Error")
    (re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:e[-+]?\d+)?"), "<n>"),
]


def normalise(message: str) -> str:
    """``message`` with what varies between occurrences replaced, at most 200 characters.

    >>> normalise('KeyError: "k-1"')
    'KeyError: <str>'
    """
    text = " ".join(message.split())
    for pattern, repl in _VARIABLE:
        text = pattern.sub(repl, text)
    return text[:200]


def fingerprint(type_: str, location: str | None, message: str) -> str:
    """A short stable id of (type, location, normalised message).

    >>> fingerprint("ValueError", None, "bad") == fingerprint("ValueError", None, "bad")
    True
    """
    raw = f"{type_}\x00{location or ''}\x00{message}".encode()
    return hashlib.sha1(raw, usedforsecurity=False).hexdigest()[:12]


def _location(tb: str | None) -> str | None:
    frames = _FRAME.findall(tb or "")
    if not frames:
        return None
    file, line, func = frames[-1]
    # the last two path parts: a sandbox's work directory differs per runtime
    short = "/".join(file.replace("\\", "/").split("/")[-2:])
    return f"{short}:{line} in {func}"


def _split(message: str, tb: str | None, kind: str | None) -> tuple[str, str]:
    """(exception type, its message) of an error reported as text."""
    if tb:
        last = tb.strip().splitlines()[-1] if tb.strip() else ""
        m = _LAST_LINE.match(last)
        if m:
            return m.group("type").rsplit(".", 1)[-1], last[len(m.group("type")):].lstrip(": ")
    m = _TYPE.match(message)
    if m:
        rest = message[m.end():].strip()
        return m.group("type").rsplit(".", 1)[-1], rest
    return (kind or "error"), message


@dataclass
class ErrorPattern:
    """One recurring error: what it is, how often, where, and what to do about it."""

    fingerprint: str
    type: str
    location: str | None
    message: str
    category: str
    recovery: str
    remedy: str
    count: int = 0
    first_seen: float = 0.0
    last_seen: float = 0.0
    #: sandbox id -> occurrences there
    sandboxes: dict[str, int] = field(default_factory=dict)
    #: the last occurrence's own message, before normalising
    example: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ErrorPatterns:
    """The error patterns of one runtime; thread-safe."""

    def __init__(self, max_patterns: int = MAX_PATTERNS) -> None:
        self.max_patterns = max_patterns
        self._lock = threading.Lock()
        self._patterns: dict[str, ErrorPattern] = {}

    def record(
        self, sandbox: str, message: str, *, traceback: str | None = None,
        kind: str | None = None, at: float | None = None,
    ) -> ErrorPattern:
        """Count one occurrence; returns its pattern (a copy).

        ``message`` is ``"Type: text"`` as errors cross the wire (or an exit
        reason's text with ``kind`` naming it); ``traceback`` the formatted
        traceback when there is one.
        """
        type_, text = _split(message, traceback, kind)
        location = _location(traceback)
        norm = normalise(text)
        fp = fingerprint(type_, location, norm)
        now = time.time() if at is None else at
        with self._lock:
            p = self._patterns.get(fp)
            if p is None:
                info = describe({"kind": type_, "message": message})
                if len(self._patterns) >= self.max_patterns:
                    oldest = min(self._patterns.values(), key=lambda q: q.last_seen)
                    del self._patterns[oldest.fingerprint]
                p = ErrorPattern(fp, type_, location, norm, info["category"], info["recovery"],
                                 info["remedy"], first_seen=now)
                self._patterns[fp] = p
            p.count += 1
            p.last_seen = now
            p.sandboxes[sandbox] = p.sandboxes.get(sandbox, 0) + 1
            p.example = message[:500]
            return ErrorPattern(**{**asdict(p), "sandboxes": dict(p.sandboxes)})

    def patterns(self, sandbox: str | None = None, min_count: int = 1) -> list[ErrorPattern]:
        """Copies, most frequent first; only those seen in ``sandbox`` if given."""
        with self._lock:
            found = [ErrorPattern(**{**asdict(p), "sandboxes": dict(p.sandboxes)})
                     for p in self._patterns.values()
                     if p.count >= min_count and (sandbox is None or sandbox in p.sandboxes)]
        return sorted(found, key=lambda p: (-p.count, -p.last_seen))
