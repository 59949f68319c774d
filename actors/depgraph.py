"""Import graphs: strongly connected components and reload order. Pure functions, no actors.

A graph maps each module to the modules it imports (its dependencies). Reloading
a module means re-running every module that imported names from it, so the plan
for a change covers the changed modules and all their dependents, transitively,
ordered dependencies first. Modules in an import cycle cannot be ordered: they form
one unit, reloaded together (Tarjan's strongly connected components).

>>> graph = {"a": ["b"], "b": ["c"], "c": []}
>>> reload_order(graph, ["c"]).units
[['c'], ['b'], ['a']]
>>> plan = reload_order({"a": ["b"], "b": ["a"], "m": ["a"]}, ["a"])
>>> plan.units, plan.cycles
([['a', 'b'], ['m']], [['a', 'b']])
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["ReloadPlan", "strongly_connected", "dependents", "reload_order", "normalize"]

Graph = Mapping[str, Iterable[str]]


@dataclass
class ReloadPlan:
    """The order in which to reload modules after a change.

    ``units``: lists of module names, dependencies before dependents; a unit of
    several modules is an import cycle, to be reloaded together (its names sorted).
    ``cycles``: the units that are cycles. ``changed``: the modules asked for;
    ``dependents``: those added because they import a changed module, transitively.

    >>> ReloadPlan([["b"], ["a"]], changed=["b"], dependents=["a"]).modules
    ['b', 'a']
    """

    units: list[list[str]] = field(default_factory=list)
    cycles: list[list[str]] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    dependents: list[str] = field(default_factory=list)

    @property
    def modules(self) -> list[str]:
        """Every module of the plan, flattened, in reload order."""
        return [m for unit in self.units for m in unit]


def normalize(graph: Graph) -> dict[str, list[str]]:
    """Every node as a key (dependencies that are not keys become leaves), no self-edges.

    >>> normalize({"a": ["a", "b"]})
    {'a': ['b'], 'b': []}
    """
    out: dict[str, list[str]] = {}
    for node, deps in graph.items():
        out.setdefault(node, [])
        for d in deps:
            out.setdefault(d, [])
    for node, deps in graph.items():
        out[node] = sorted({d for d in deps if d != node})
    return out


def strongly_connected(graph: Graph) -> list[list[str]]:
    """Tarjan's SCCs, each sorted; a component comes after every component it depends on.

    Iterative, so a chain of 10,000 imports does not hit the recursion limit.

    >>> strongly_connected({"a": ["b"], "b": ["a", "c"], "c": []})
    [['c'], ['a', 'b']]
    """
    g = normalize(graph)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(g):
        if root in index:
            continue
        # Each frame: (node, iterator position into its sorted dependencies).
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            deps = g[node]
            if i < len(deps):
                work.append((node, i + 1))
                d = deps[i]
                if d not in index:
                    work.append((d, 0))
                elif d in on_stack:
                    low[node] = min(low[node], index[d])
                continue
            # All dependencies done: close the component if node is its root.
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                out.append(sorted(comp))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return out


def dependents(graph: Graph, roots: Iterable[str]) -> set[str]:
    """Every module that imports one of ``roots``, directly or not (roots excluded).

    >>> sorted(dependents({"a": ["b"], "b": ["c"], "x": []}, ["c"]))
    ['a', 'b']
    """
    g = normalize(graph)
    reverse: dict[str, list[str]] = {n: [] for n in g}
    for node, deps in g.items():
        for d in deps:
            reverse[d].append(node)
    seen: set[str] = set()
    todo = [r for r in roots if r in reverse]
    start = set(todo)
    while todo:
        n = todo.pop()
        for user in reverse[n]:
            if user not in seen:
                seen.add(user)
                todo.append(user)
    return seen - start


def reload_order(graph: Graph, changed: Iterable[str]) -> ReloadPlan:
    """The plan to reload ``changed`` and everything that depends on it.

    Units are ordered dependencies first; among units free to go in any order, the
    one whose first name sorts lowest goes first, so plans are deterministic.

    >>> reload_order({"a": ["b", "c"], "b": ["c"], "c": [], "z": []}, ["c"]).units
    [['c'], ['b'], ['a']]
    """
    g = normalize(graph)
    changed_list = sorted(set(changed))
    for c in changed_list:
        g.setdefault(c, [])
    extra = dependents(g, changed_list)
    affected = set(changed_list) | extra
    # A cycle through a changed module lies entirely inside ``affected`` (each of
    # its members imports the changed one, transitively), so the SCCs of the
    # induced subgraph are the right units.
    sub = {n: [d for d in g[n] if d in affected] for n in affected}
    comps = strongly_connected(sub)
    comp_of = {m: i for i, comp in enumerate(comps) for m in comp}
    # Kahn's algorithm over the condensation, smallest name first.
    waiting = [0] * len(comps)
    users: list[set[int]] = [set() for _ in comps]
    for n, deps in sub.items():
        for d in deps:
            a, b = comp_of[n], comp_of[d]
            if a != b and a not in users[b]:
                users[b].add(a)
                waiting[a] += 1
    ready = [(comps[i][0], i) for i in range(len(comps)) if waiting[i] == 0]
    heapq.heapify(ready)
    units: list[list[str]] = []
    while ready:
        _, i = heapq.heappop(ready)
        units.append(comps[i])
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, (comps[u][0], u))
    cycles = [u for u in units if len(u) > 1]
    return ReloadPlan(units, cycles, changed_list, sorted(extra))
