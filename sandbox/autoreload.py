"""Auto-reload, host side: switch a sandbox's file watch on and off, report its reloads.

The watcher component (``actors/watcher.py``) does the watching; this module is
the part of the public API behind :meth:`Runtime.enable_auto_reload`,
:meth:`Runtime.disable_auto_reload` and :meth:`Runtime.watch_status`, and the
watcher's child spec under the root supervisor.

Whether a sandbox is watched is recorded in its process slot (``slot.watch``:
the watch options while auto-reload is on). The slot outlives a crash of the
watcher, which re-establishes every watch from it when it restarts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from actors.config import WatchOptions, compiler_options
from runtime.childspec import ChildSpec
from runtime.errors import SandboxError

if TYPE_CHECKING:
    from runtime.actor import ActorRef
    from sandbox.api import Runtime

__all__ = ["disable_auto_reload", "enable_auto_reload", "watch_status", "watcher_child"]

WATCH_TIMEOUT = 60.0  # the first watch of a big tree hashes every file


def watcher_child(
    rt: Runtime,
    component: Callable[[str], Any],
    started: Callable[[str, Callable[[], ActorRef]], Callable[[], ActorRef]],
    backend: str = "auto",
) -> ChildSpec:
    """The watcher's child spec: reloads go through ``rt.hot_reload``; at each start
    it watches the sandboxes whose slot says so (read from the ``sandboxes``
    supervisor, never from the manager, which calls the watcher)."""
    from actors.watcher import WatcherActor, watch_specs

    def reload(sandbox_id: str, files: list[str]) -> Any:
        return rt.hot_reload(sandbox_id, changed_files=files)

    def prepare(sandbox_id: str, files: list[str]) -> Any:
        # Compile what was just saved into the sandbox's compile cache while the
        # debounce waits for more saves: the reload's compile then hits the cache.
        info = rt.get_sandbox_info(sandbox_id)
        return rt.component("compiler").invoke(
            "incremental_compile", info["path"], files, profile=info["profile"],
            cache_dir=rt._manager("cache_dir", sandbox_id), timeout=WATCH_TIMEOUT,
            **compiler_options(info.get("compile") or {}),
        )

    def start() -> ActorRef:
        return WatcherActor.start(
            runtime_id=rt.name,
            reload=reload,
            prepare=prepare,
            sandboxes=lambda: watch_specs(component("sandboxes"), rt.base_dir),
            backend=backend,
            name=f"{rt.name}/watcher",
        )

    return ChildSpec("watcher", start=started("watcher", start), shutdown=10.0)


def enable_auto_reload(rt: Runtime, sandbox_id: str, **options: Any) -> dict[str, Any]:
    """Watch the sandbox's directory and hot-reload it on every save.

    ``options`` override the sandbox's ``watch`` options (``patterns``, ``ignore``,
    ``debounce``, ``max_files``). Returns the watch's status; raises
    :class:`~runtime.errors.ConfigError` for a bad option and ``WatchError`` when
    the directory cannot be watched (for instance more files than ``max_files``),
    leaving auto-reload as it was.
    """
    info = rt.get_sandbox_info(sandbox_id)
    opts = WatchOptions.build(info.get("watch") or {})
    if options:
        opts = opts.replace(**options)
    slot = rt._slot(sandbox_id)
    before = slot.watch
    slot.watch = opts  # first, so a watcher restarting meanwhile picks it up
    try:
        return rt.component("watcher").invoke(
            "watch", sandbox_id, info["path"], options=opts,
            exclude=(info["workdir"], rt._manager("cache_dir", sandbox_id)),
            timeout=WATCH_TIMEOUT,
        )
    except BaseException:
        slot.watch = before
        raise


def disable_auto_reload(rt: Runtime, sandbox_id: str) -> bool:
    """Stop watching the sandbox's directory; returns whether it was watched.

    A reload already running finishes; a follow-up queued behind it is dropped.
    """
    slot = rt._slot(sandbox_id)
    slot.watch = None
    try:
        return bool(rt.component("watcher").invoke("unwatch", sandbox_id, timeout=WATCH_TIMEOUT))
    except SandboxError:
        return False  # not running: when it restarts it will not watch this one


def watch_status(rt: Runtime, sandbox_id: str) -> dict[str, Any]:
    """Auto-reload of a sandbox, and its last reload.

    Keys: ``sandbox``; ``auto_reload`` (on or off); ``watching`` (the watcher has
    the watch now); ``watch``: the watcher's view (path, backend, files watched,
    changes seen and dropped as unchanged, reloads and failures, whether a reload
    runs now or a follow-up is queued, the last outcome), None when not watched;
    ``last_reload``: the record of the last reload or rollback, manual or
    automatic (``Runtime.reload_status``: ``at``, ``modules``, ``changed``,
    ``versions``, ``duration``, ``ok``, ``error``, ``diagnostics``), None before
    the first.
    """
    info = rt.get_sandbox_info(sandbox_id)
    last = rt._slot(sandbox_id).last_reload
    watch = None
    try:
        watch = rt.component("watcher").invoke("status", sandbox_id)
    except SandboxError:
        pass
    return {
        "sandbox": sandbox_id,
        "auto_reload": info.get("auto_reload", False),
        "watching": watch is not None,
        "watch": watch,
        "last_reload": dict(last) if last else None,
    }
