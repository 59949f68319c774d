"""The store: a dict as state, plus a summary computed by the ``stats`` module."""

from stats import summarize

from runtime.genserver import GenServer


class Store(GenServer):
    vsn = 1

    def init(self):
        return {}

    def handle_call(self, request, state):
        op = request[0]
        if op == "put":
            _, key, value = request
            return "ok", {**state, key: value}
        if op == "get":
            return state.get(request[1]), state
        if op == "delete":
            return state.pop(request[1], None), state
        if op == "summary":
            return summarize(state), state
        raise ValueError(f"unknown operation {op!r}; use put, get, delete or summary")
