"""The counter app: one GenServer holding a number.

Run it with ``sandbox run examples/counter``; the entry is ``app:children``.
"""

from counter import Counter


def children():
    return [Counter.child_spec(name="counter")]
