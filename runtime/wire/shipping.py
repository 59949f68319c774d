"""Functions shipped to a sandbox: ``Sandbox.run`` and hot reload's ``migrate``.

A function travels as cloudpickle bytes. One defined in a module the sandbox does
not have (a test module, the host application) is pickled by value, so the
sandbox can always load it; one of an app module goes by reference and runs the
sandbox's own (possibly newly staged) code. The sandbox unpickles the bytes inside
the operation, so a function it cannot load fails that operation with a clear
error instead of breaking the mailbox protocol.

>>> blob = ship(pow)
>>> land(blob)(2, 5)
32
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["ship", "land"]


def ship(fn: Any, app_modules: Iterable[str] = ()) -> bytes:
    """``fn`` (or any value holding functions) as cloudpickle bytes a sandbox can load."""
    import cloudpickle

    target = fn[0] if isinstance(fn, tuple) and fn else fn
    name = getattr(target, "__module__", None)
    module = sys.modules.get(name) if name else None
    by_value = (
        isinstance(target, types.FunctionType)
        and module is not None
        and name not in ("__main__", "builtins")
        and name not in set(app_modules)
    )
    if not by_value:
        return cloudpickle.dumps(fn)
    try:
        cloudpickle.register_pickle_by_value(module)
    except ValueError:  # a module cloudpickle refuses to pickle by value: try as is
        return cloudpickle.dumps(fn)
    try:
        return cloudpickle.dumps(fn)
    finally:
        cloudpickle.unregister_pickle_by_value(module)


def land(blob: bytes, what: str = "function") -> Any:
    """Load what :func:`ship` sent (inside the sandbox)."""
    import cloudpickle

    try:
        return cloudpickle.loads(blob)
    except Exception as exc:
        raise TypeError(
            f"the {what} sent to the sandbox cannot be loaded there ({type(exc).__name__}: "
            f"{exc}); define it in the app, or in a module the sandbox can import"
        ) from None


def _callable(fn: Any, what: str) -> Callable[..., Any]:
    if not callable(fn):
        raise TypeError(f"{what} must be callable, got {type(fn).__name__}")
    return fn
