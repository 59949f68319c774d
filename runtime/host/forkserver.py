"""The multiprocessing context every sandbox process is started from.

Sandboxes are started by a *forkserver*: a small, single-threaded server process
that imports the runtime once (``runtime.child.boot`` and what it needs are preloaded)
and forks a fresh child for every request. The host itself never calls plain
``fork()``: the host has threads (actors, readers), and forking a threaded process
copies locks in whatever state other threads left them.

Things to know:

- The forkserver is **process-global**: one per host process, started on the first
  :func:`context` ``.Process(...).start()``, shared by every sandbox, and alive as
  long as the host (it exits when the host does, once its children are gone).
  It is not a child of any sandbox and is not stopped between sandboxes.
- It shows up as a child process of the host (``python -c "from multiprocessing.
  forkserver import main; ..."``), next to multiprocessing's resource tracker;
  sandbox processes are *its* children, i.e. grandchildren of the host.
  :func:`helper_pids` names both helpers so tests can tell them apart from leaks.
- Preloading only takes effect if this module configures the context before the
  forkserver is first started, and if ``runtime`` is importable from the
  forkserver's ``sys.path`` (the host's environment: ``PYTHONPATH``, the working
  directory, an installed package). If it is not, children still work; they just
  import the runtime themselves and use more private memory.
- Unlike a plain ``forkserver`` Process, a process started with :func:`start`
  does not re-import the host's ``__main__`` module in the child: a sandbox runs
  the runtime and its app, never the host's script (which would cost memory, run
  the host's top-level code, and fail without an ``if __name__ == "__main__":``
  guard). Its target must therefore live in an importable module.

>>> context().get_start_method()
'forkserver'
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable
from multiprocessing import spawn
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

__all__ = ["PRELOAD", "context", "helper_pids", "server_pid", "start"]

#: Modules imported once by the forkserver, shared (copy-on-write) by every child.
#: What every sandbox needs is imported once, here, so its pages are shared
#: copy-on-write instead of costing each sandbox its own copy (measured: 6.4 MiB
#: USS per isolated sandbox without the last three, 5.1 MiB with them): the
#: GenServer every app imports, ``ctypes`` for the isolation layers (prctl and
#: unshare; Python 3.11's ``os`` has neither) and ``resource`` for the rlimits.
PRELOAD: list[str] = ["runtime.child.boot", "runtime.genserver", "ctypes", "resource"]

_lock = threading.Lock()
_context: BaseContext | None = None


def context() -> BaseContext:
    """The ``forkserver`` multiprocessing context, with the runtime preloaded.

    Thread-safe; configures the preload list once per host process.

    >>> context() is context()
    True
    """
    global _context
    ctx = _context
    if ctx is not None:
        return ctx
    with _lock:
        if _context is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(list(PRELOAD))
            _install_main_filter()
            _context = ctx
        return _context


_launching = threading.local()


def _install_main_filter() -> None:
    """Make multiprocessing leave the host's ``__main__`` out of a sandbox's start data.

    ``spawn.get_preparation_data`` is wrapped once; the wrapper only changes
    anything in a thread that is inside :func:`start`, so every other use of
    multiprocessing in the host behaves as usual.
    """
    original = spawn.get_preparation_data
    if getattr(original, "_sandbox_main_filter", False):
        return

    def get_preparation_data(name: str) -> dict[str, Any]:
        data = original(name)
        if getattr(_launching, "active", False):
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
        return data

    get_preparation_data._sandbox_main_filter = True  # type: ignore[attr-defined]
    spawn.get_preparation_data = get_preparation_data


def start(target: Callable[..., Any], args: tuple = (), *, name: str | None = None) -> BaseProcess:
    """Start ``target(*args)`` in a child of the forkserver; returns the started Process.

    Arguments are pickled to the child; sockets and other fds travel as fds
    (multiprocessing passes them to the forkserver over SCM_RIGHTS).
    """
    proc = context().Process(target=target, args=args, name=name)  # type: ignore[attr-defined]  # ForkServerContext has it; typeshed types context() as BaseContext
    _launching.active = True
    try:
        proc.start()
    finally:
        _launching.active = False
    return proc


def server_pid() -> int | None:
    """Pid of the running forkserver, or None if it has not been started yet.

    >>> server_pid() is None or isinstance(server_pid(), int)
    True
    """
    from multiprocessing import forkserver

    return getattr(forkserver._forkserver, "_forkserver_pid", None)


def helper_pids() -> set[int]:
    """Pids of multiprocessing's helper processes (forkserver, resource tracker).

    They are process-global and live as long as the host; everything else among
    the host's child processes is a sandbox (or a leak).

    >>> isinstance(helper_pids(), set)
    True
    """
    from multiprocessing import resource_tracker

    pids = {server_pid(), getattr(resource_tracker._resource_tracker, "_pid", None)}
    pids.discard(None)
    return pids  # type: ignore[return-value]
