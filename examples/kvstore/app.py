"""A key-value store with a pool of workers that compute over it.

``store`` holds the data; ``worker-N`` actors answer queries by calling the store;
``stats`` (a module the store imports) formats summaries, so a change to
``stats.py`` must reach the store's code on reload.
"""

from store import Store
from worker import Worker

from runtime.supervisor import SupervisorSpec

POOL_SIZE = 3


def children():
    specs = [Store.child_spec(name="store")]
    specs += [Worker.child_spec(i, name=f"worker-{i}", id=f"worker-{i}") for i in range(POOL_SIZE)]
    return SupervisorSpec(specs, strategy="rest_for_one", max_restarts=5, max_seconds=10)
