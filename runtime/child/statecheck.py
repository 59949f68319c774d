"""Checking an actor's state after it was migrated (reload, rollback, snapshot restore).

A GenServer may declare what its state must look like, in either (or both) of
two ways:

- ``state_keys``: a class attribute listing the keys a dict state must have;
- ``check_state(self, state)``: a method returning ``None`` (or ``True``) when the
  state is fine, else a string or a list of strings saying what is wrong (raising
  fails the check too, with the exception's message).

A migrated state that fails its class's declaration is refused before the swap
commits (:class:`StateCheckFailed`, reported by the swap as ``ReloadFailed`` at
step ``check_state``). A class that declares nothing gets warnings instead, when
a dict state lost keys or a tuple state changed size: the two mistakes a
``code_change`` most often makes silently.

>>> class Counter:
...     state_keys = ("count", "label")
>>> check_state(Counter(), {"count": 1}, "counter")
Traceback (most recent call last):
...
runtime.child.statecheck.StateCheckFailed: state of actor counter is missing key 'label'
>>> shape_warnings("counter", {"count": 1, "label": "x"}, {"count": 1})
["actor counter: the migrated state lost key 'label' (declare state_keys or check_state to refuse such a reload)"]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["StateCheckFailed", "check_state", "declares_shape", "shape_warnings"]


class StateCheckFailed(ValueError):
    """A migrated state does not have the shape its class declares."""


def declares_shape(cls: type) -> bool:
    """Whether ``cls`` declares its state's shape (``state_keys`` or ``check_state``)."""
    return getattr(cls, "state_keys", None) is not None or callable(
        getattr(cls, "check_state", None)
    )


def _keys(names: list[str]) -> str:
    quoted = ", ".join(repr(k) for k in names)
    return f"key{'s' if len(names) != 1 else ''} {quoted}"


def check_state(impl: Any, state: Any, actor: str) -> None:
    """Raise :class:`StateCheckFailed` naming ``actor`` and what is missing or wrong,
    if ``state`` fails the declaration of ``impl``'s class; else return."""
    problems: list[str] = []
    keys = getattr(type(impl), "state_keys", None)
    if keys is not None:
        wanted = [keys] if isinstance(keys, str) else list(keys)
        if not isinstance(state, Mapping):
            problems.append(
                f"is a {type(state).__name__}, not a dict with {_keys(wanted)}"
            )
        else:
            missing = [k for k in wanted if k not in state]
            if missing:
                problems.append(f"is missing {_keys(missing)}")
    hook = getattr(impl, "check_state", None)
    if callable(hook):
        try:
            verdict = hook(state)
        except Exception as exc:
            verdict = f"{type(exc).__name__}: {exc}"
        if verdict is False:
            problems.append("fails check_state")
        elif isinstance(verdict, str):
            problems.append(verdict)
        elif verdict not in (None, True):
            problems.extend(str(v) for v in verdict)
    if problems:
        raise StateCheckFailed(f"state of actor {actor} " + "; ".join(problems))


def shape_warnings(actor: str, old: Any, new: Any) -> list[str]:
    """Warnings for an undeclared state: a dict that lost keys, a tuple that changed size."""
    hint = "(declare state_keys or check_state to refuse such a reload)"
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        lost = [k for k in old if k not in new]
        if lost:
            return [f"actor {actor}: the migrated state lost {_keys(lost)} {hint}"]
    elif isinstance(old, tuple) and isinstance(new, tuple) and len(old) != len(new):
        return [
            f"actor {actor}: the migrated state is a tuple of {len(new)} items, "
            f"it had {len(old)} {hint}"
        ]
    elif isinstance(old, Mapping) and not isinstance(new, Mapping):
        return [f"actor {actor}: the migrated state is a {type(new).__name__}, it was a dict "
                f"{hint}"]
    return []
