"""Work shared out over a few threads, the caller's among them.

A batch's parts (a batch of creates, the removals after a batch of destroys) run
on up to N threads where the calling thread is one of them: a batch of one starts
no thread, and each thread takes the next part as it is free.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

__all__ = ["share_out"]


def share_out(
    fn: Callable[[int], None],
    count: int,
    threads: int,
    submit: Callable[[Callable[[], None]], Future[Any]],
    *,
    here: Callable[[Callable[[], None]], Any] | None = None,
) -> None:
    """``fn(i)`` for each ``i`` in ``range(count)`` (``fn`` raises nothing), on up to
    ``threads`` threads: the caller's, and up to ``threads - 1`` more started with
    ``submit`` (a pool's; one that raises RuntimeError, a pool shut down, is not
    used and the others do its share); returns when every part is done. ``here``
    runs the caller's share (``contextvars.Context().run``: in an empty context).

    >>> from concurrent.futures import ThreadPoolExecutor
    >>> done = []
    >>> with ThreadPoolExecutor(2) as pool:
    ...     share_out(done.append, 5, 3, pool.submit)
    >>> sorted(done)
    [0, 1, 2, 3, 4]
    """
    left = iter(range(count))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                i = next(left, None)
            if i is None:
                return
            fn(i)

    helpers: list[Future[Any]] = []
    for _ in range(min(threads, count) - 1):
        try:
            helpers.append(submit(work))
        except RuntimeError:
            break
    if here is None:
        work()
    else:
        here(work)
    for helper in helpers:
        helper.result()
