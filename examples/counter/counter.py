"""A counter that survives hot reloads: its count is the actor's state."""

from runtime.genserver import GenServer


class Counter(GenServer):
    vsn = 1

    def init(self, start=0):
        return start

    def handle_call(self, request, state):
        if request == "get":
            return state, state
        if request == "incr":
            return state + 1, state + 1
        if isinstance(request, (list, tuple)) and request and request[0] == "add":
            return state + request[1], state + request[1]
        if request == "crash":
            raise RuntimeError("asked to crash")
        raise ValueError(f"unknown request {request!r}; try 'get', 'incr' or ('add', n)")

    def handle_cast(self, request, state):
        if request == "incr":
            return state + 1
        if request == "crash":
            raise RuntimeError("asked to crash")
        return state
