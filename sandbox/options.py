"""The keyword options of ``create_sandbox`` (and of ``start``), written once for
every runtime that takes them.

:meth:`sandbox.Runtime.create_sandbox` spells each option out as a real keyword
parameter (the reference, with its defaults). The runtimes that pass the options
on (asyncio, the control clients, the cluster) take ``**options:
Unpack[CreateOptions]``: mypy checks the names and types there as for the
reference, and :func:`create_options` refuses a misspelt name at run time.
``tests/test_typing.py`` keeps the reference and :class:`CreateOptions` the same.
:class:`StartOptions` does the same for :func:`sandbox.start` and
:func:`sandbox.start_async`, :class:`ReloadOptions` for ``hot_reload`` (the
asyncio runtime's and sandbox's).

>>> create_options({"profile": "low", "max_restarts": 2})
{'profile': 'low', 'max_restarts': 2}
>>> create_options({"profle": "low"})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
TypeError: create_sandbox() got an unexpected option 'profle' (did you mean 'profile'?); ...
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypedDict

from actors.config import AlertThresholds, Limits, WatchOptions

__all__ = ["ClusterCreateOptions", "CreateOptions", "ReloadOptions", "StartOptions",
           "create_options"]


class ClusterCreateOptions(TypedDict, total=False):
    """The options of ``create_sandbox`` that a cluster runtime takes too (see
    :meth:`sandbox.Runtime.create_sandbox` for each one's meaning and default)."""

    entry: str
    profile: str
    limits: Limits | Mapping[str, Any] | None
    restart: str
    max_restarts: int
    max_seconds: float
    env: Mapping[str, str] | None
    shutdown: float
    watch: WatchOptions | Mapping[str, Any] | None
    net_allow: Iterable[str]


class CreateOptions(ClusterCreateOptions, total=False):
    """Every keyword option of :meth:`sandbox.Runtime.create_sandbox` (a ``TypedDict``,
    for ``**options: Unpack[CreateOptions]``)."""

    auto_reload: bool
    compile_timeout: float | None
    compile_memory_mb: int | None
    compile_cpu_seconds: int | None
    alerts: AlertThresholds | Mapping[str, Any] | None


class StartOptions(TypedDict, total=False):
    """The keyword options of :func:`sandbox.start` for a runtime on this host (all but
    ``cluster`` and ``ray_address``); see ``start`` for each one's meaning and default."""

    name: str | None
    base_dir: str | os.PathLike[str] | None
    max_restarts: int
    max_seconds: float
    history: int
    monitor_interval: float
    audit_path: str | os.PathLike[str] | None
    watch_backend: str
    http: tuple[str, int] | None
    alerts: AlertThresholds | Mapping[str, Any] | None
    alert_webhook: str | Mapping[str, Any] | None
    state_dir: str | os.PathLike[str] | None
    listen: str | None
    token_file: str | os.PathLike[str] | None
    tls: tuple[str | os.PathLike[str], str | os.PathLike[str]] | None


class ReloadOptions(TypedDict, total=False):
    """The keyword options of :meth:`sandbox.Runtime.hot_reload` (see it for each one's
    meaning and default)."""

    modules: Iterable[str] | None
    source: Mapping[str, str] | None
    migrate: Callable[[Any, Any, Any], Any] | None
    extra: Any
    changed_files: Iterable[str] | None
    timeout: float
    compile_timeout: float | None
    compile_memory_mb: int | None
    compile_cpu_seconds: int | None


def create_options(given: Mapping[str, Any], *, allowed: type = CreateOptions,
                   function: str = "create_sandbox") -> dict[str, Any]:
    """``given`` as a dict, once every name in it is an option of ``allowed`` (a
    TypedDict above); else TypeError naming the first unknown one and the options.

    >>> create_options({"auto_reload": True}, allowed=ClusterCreateOptions)
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: create_sandbox() got an unexpected option 'auto_reload'; the options: entry, ...
    """
    known = list(allowed.__annotations__)
    for name in given:
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"{function}() got an unexpected option {name!r}{hint}; the "
                            f"options: {', '.join(known)}")
    return dict(given)
