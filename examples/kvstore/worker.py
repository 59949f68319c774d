"""Pool workers: answer queries by calling the store (an actor-to-actor call)."""

from runtime.genserver import GenServer
from runtime.registry import whereis


class Worker(GenServer):
    vsn = 1

    def init(self, index):
        return {"index": index, "served": 0}

    def handle_call(self, request, state):
        if request[0] == "sum_keys":
            store = whereis("store")
            total = sum(store.call(("get", k)) or 0 for k in request[1])
            state = {**state, "served": state["served"] + 1}
            return total, state
        if request[0] == "served":
            return state["served"], state
        raise ValueError(f"unknown query {request[0]!r}; use sum_keys or served")
