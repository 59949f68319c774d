"""Import graph logic: SCCs (Tarjan), dependents, reload order. No actors involved."""

from __future__ import annotations

import random

import pytest

from actors.depgraph import dependents, normalize, reload_order, strongly_connected

pytestmark = pytest.mark.timeout(60)


def test_normalize_adds_leaves_and_drops_self_edges() -> None:
    assert normalize({"a": ["a", "b", "b"]}) == {"a": ["b"], "b": []}


def test_scc_chain_is_all_singletons_dependencies_first() -> None:
    assert strongly_connected({"a": ["b"], "b": ["c"], "c": []}) == [["c"], ["b"], ["a"]]


def test_scc_finds_cycles_of_two_and_three() -> None:
    comps = strongly_connected(
        {"a": ["b"], "b": ["a"], "x": ["y"], "y": ["z"], "z": ["x", "a"], "solo": []}
    )
    assert sorted(comps) == [["a", "b"], ["solo"], ["x", "y", "z"]]
    # the x-y-z cycle imports the a-b cycle, so it comes after it
    assert comps.index(["a", "b"]) < comps.index(["x", "y", "z"])


def test_self_import_is_not_a_cycle() -> None:
    plan = reload_order({"a": ["a"]}, ["a"])
    assert plan.units == [["a"]] and plan.cycles == []


def test_scc_is_iterative_for_deep_chains() -> None:
    n = 20_000  # far past the recursion limit
    graph = {f"m{i}": [f"m{i + 1}"] for i in range(n)}
    comps = strongly_connected(graph)
    assert len(comps) == n + 1 and comps[0] == [f"m{n}"] and comps[-1] == ["m0"]
    ring = {f"r{i}": [f"r{(i + 1) % 5000}"] for i in range(5000)}
    assert [len(c) for c in strongly_connected(ring)] == [5000]


def test_dependents_are_transitive_and_exclude_the_roots() -> None:
    graph = {"a": ["b"], "b": ["c"], "c": [], "d": ["c"], "x": []}
    assert dependents(graph, ["c"]) == {"a", "b", "d"}
    assert dependents(graph, ["a"]) == set()
    assert dependents(graph, ["not-there"]) == set()


def test_reload_order_chain_a_imports_b_imports_c() -> None:
    graph = {"a": ["b"], "b": ["c"], "c": []}
    assert reload_order(graph, ["c"]).units == [["c"], ["b"], ["a"]]
    plan = reload_order(graph, ["b"])
    assert plan.units == [["b"], ["a"]]
    assert plan.changed == ["b"] and plan.dependents == ["a"] and plan.cycles == []
    assert reload_order(graph, ["a"]).units == [["a"]]


def test_reload_order_cycle_is_one_unit_and_reported() -> None:
    graph = {"a": ["b"], "b": ["a"], "main": ["a"], "other": []}
    plan = reload_order(graph, ["b"])
    assert plan.units == [["a", "b"], ["main"]]
    assert plan.cycles == [["a", "b"]]
    assert plan.dependents == ["a", "main"]
    assert plan.modules == ["a", "b", "main"]


def test_reload_order_diamond_is_deterministic() -> None:
    graph = {"top": ["left", "right"], "left": ["base"], "right": ["base"], "base": []}
    for _ in range(3):
        assert reload_order(graph, ["base"]).units == [["base"], ["left"], ["right"], ["top"]]


def test_reload_order_of_several_changes_and_new_modules() -> None:
    graph = {"a": ["b"], "b": [], "c": []}
    plan = reload_order(graph, ["c", "b", "new"])
    assert plan.units == [["b"], ["a"], ["c"], ["new"]]
    assert plan.changed == ["b", "c", "new"]


def _reaches(graph: dict[str, list[str]], src: str, dst: str) -> bool:
    seen, todo = set(), [src]
    while todo:
        n = todo.pop()
        for d in graph[n]:
            if d == dst:
                return True
            if d not in seen:
                seen.add(d)
                todo.append(d)
    return False


@pytest.mark.parametrize("seed", range(25))
def test_reload_order_respects_every_edge_on_random_graphs(seed: int) -> None:
    rng = random.Random(seed)
    names = [f"m{i}" for i in range(rng.randint(2, 30))]
    graph = {n: [d for d in names if d != n and rng.random() < 0.12] for n in names}
    changed = rng.sample(names, rng.randint(1, 3))
    plan = reload_order(graph, changed)
    position = {m: i for i, unit in enumerate(plan.units) for m in unit}
    # exactly the changed modules and everything that (transitively) imports them
    expected = set(changed) | {n for n in names if any(_reaches(graph, n, c) for c in changed)}
    assert set(position) == expected
    assert sorted(plan.modules) == sorted(expected)  # each exactly once
    for n in expected:
        for d in graph[n]:
            if d in expected:
                assert position[d] <= position[n], (n, d)
    # a unit is exactly a strongly connected set: members reach each other both ways
    for unit in plan.units:
        for x in unit:
            for y in unit:
                if x != y:
                    assert _reaches(graph, x, y)
        assert (len(unit) > 1) == (unit in plan.cycles)
    for i, u in enumerate(plan.units):
        for v in plan.units[i + 1:]:
            assert not (_reaches(graph, u[0], v[0]) and _reaches(graph, v[0], u[0]))
