"""Text a sandbox sends about itself, made safe to show: neutralised and capped.

Exception messages, tracebacks, exit notes, actor names and isolation reports
cross the channel from a sandbox, so they are hostile input: they may hold
terminal escapes, forged log lines or megabytes of text. Before they reach a log,
an exception, ``last_error``, the CLI or a terminal, the host passes them through
:func:`text` (one line) or :func:`block` (a traceback: newlines kept, each line
neutralised, the tail kept since the last frames matter most).

>>> text("boom\\x1b[2J" + "x" * 5000)[:13]
'boom\\\\x1b[2Jxx'
>>> len(text("x" * 5000)) <= MESSAGE_MAX
True
>>> block("Traceback:\\n  line\\x07\\n").splitlines()
['Traceback:', '  line\\\\x07']
"""

from __future__ import annotations

import time
from typing import Any

from runtime.host.output import neutralise

__all__ = [
    "MESSAGE_MAX",
    "NAME_MAX",
    "TRACEBACK_MAX",
    "UNASKED_BURST",
    "UNASKED_RATE",
    "Budget",
    "block",
    "name",
    "text",
]

#: Characters kept of a sandbox's exception message or exit note.
MESSAGE_MAX = 2000
#: Characters kept of a sandbox's traceback (its last ones).
TRACEBACK_MAX = 16_000
#: Characters kept of a name a sandbox reports (actor, layer, error type).
NAME_MAX = 200
#: Frames a sandbox may send that no call asked for (notices, late or bogus
#: replies): per second sustained, and at once. Past them it is flooding its host
#: (each frame costs the host a decode and a dispatch) and is stopped.
UNASKED_RATE = 10_000
UNASKED_BURST = 100_000


def _cut(value: str, limit: int) -> str:
    if len(value) <= limit:
        return value
    keep = max(limit - 30, 0)
    return value[:keep] + f" [cut {len(value) - keep} chars]"


def text(value: Any, limit: int = MESSAGE_MAX) -> str:
    """One line of a sandbox's text: ``str(value)`` neutralised (newlines escaped)
    and cut to ``limit`` characters.

    >>> text("a\\nb")
    'a\\\\nb'
    """
    raw = value if isinstance(value, str) else str(value)
    return _cut(neutralise(raw[: limit * 4]), limit)


def name(value: Any) -> str:
    """A short identifier a sandbox reports (cut to :data:`NAME_MAX`).

    >>> name("counter")
    'counter'
    """
    return text(value, NAME_MAX)


def block(value: Any, limit: int = TRACEBACK_MAX) -> str:
    """A multi-line text (a traceback): each line neutralised, the last ``limit``
    characters kept.

    >>> block("x" * 20, 10)
    '[cut] xxxx'
    """
    raw = value if isinstance(value, str) else str(value)
    raw = raw[-limit * 4:]
    out = "\n".join(neutralise(line) for line in raw.split("\n"))
    if len(out) > limit:
        out = "[cut] " + out[len(out) - limit + 6:]
    return out


class Budget:
    """A token bucket: :meth:`take` is False once ``burst`` is spent faster than
    ``rate`` per second refills it. Not thread-safe (one reader at a time).

    >>> b = Budget(rate=1, burst=2)
    >>> b.take(), b.take(), b.take()
    (True, True, False)
    """

    __slots__ = ("rate", "burst", "_tokens", "_stamp")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = time.monotonic()

    def take(self, n: float = 1.0) -> bool:
        tokens = self._tokens - n
        if tokens < 0:
            now = time.monotonic()
            tokens = min(self.burst, tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if tokens < 0:
                self._tokens = tokens + n  # refused: nothing taken
                return False
        self._tokens = tokens
        return True
