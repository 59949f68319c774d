"""Ray as a context baseline: an actor method call (``ray.get(actor.echo.remote(x))``).

Installed with the ``bench`` extra (``pip install -e ".[bench]"``); when it is not
installed the figures that use it are left out, with a note. Ray is started for the
benchmark alone (``ray.init(address="local", num_cpus=1, include_dashboard=False)``:
its own single-node cluster, even if another one runs on the machine) and shut
down after it.
"""

from __future__ import annotations

from typing import Any

try:
    import ray
except ImportError:  # the bench extra is not installed
    ray = None


class RayEcho:
    """An echo actor in a Ray worker process, called through ``ray.get``."""

    def __init__(self) -> None:
        if ray is None:
            raise RuntimeError("ray is not installed (pip install -e '.[bench]')")
        self._owns = not ray.is_initialized()
        if self._owns:
            # address="local": a cluster of its own, never one someone else runs here.
            ray.init(address="local", num_cpus=1, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)

        @ray.remote(num_cpus=0)
        class Echo:
            def echo(self, x: Any) -> Any:
                return x

        self.actor = Echo.remote()
        ray.get(self.actor.echo.remote("ready"), timeout=60)

    def call(self, payload: Any) -> Any:
        return ray.get(self.actor.echo.remote(payload), timeout=30)

    def close(self) -> None:
        try:
            ray.kill(self.actor)
        finally:
            if self._owns:
                ray.shutdown()


def available() -> bool:
    return ray is not None
