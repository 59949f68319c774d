"""State snapshots and the state check of reloads, in real sandboxes (issue 17).

``Sandbox.snapshot()`` takes the named actors' states as plain data;
``Sandbox.restore()`` puts them back through the reload barrier, all or nothing,
with ``code_change`` when the snapshot's ``vsn`` differs; a reload whose migrated
state fails the class's declared shape is refused at step ``check_state``.
"""

from __future__ import annotations

import json
import re

import msgpack
import pytest
from helpers import write

from runtime.errors import ReloadFailed
from sandbox.statesnapshot import SnapshotError, StateSnapshot

pytestmark = pytest.mark.timeout(90)

APP = """
import counter


def children():
    return [counter.Counter.child_spec(name="counter"),
            counter.Counter.child_spec(name="other")]
"""

COUNTER = """
import fractions

from runtime.genserver import GenServer


class Counter(GenServer):
    vsn = {vsn}
    {declaration}

    def init(self):
        return {{"count": 0, "label": "v1"}}

    def handle_call(self, request, state):
        if request == "incr":
            state = {{**state, "count": state["count"] + 1}}
            return state["count"], state
        if request == "get":
            return state, state
        if request == "odd":  # a state that is not plain data
            return None, {{**state, "third": fractions.Fraction(1, 3)}}
        raise ValueError(request)

    def code_change(self, old_vsn, state, extra):
        {code_change}
"""


def counter(vsn: int = 1, declaration: str = "", code_change: str = "return state") -> str:
    return COUNTER.format(vsn=vsn, declaration=declaration, code_change=code_change)


def make(sandbox_factory, source: str | None = None, **options):
    return sandbox_factory({"app.py": APP, "counter.py": source or counter()}, **options)


# -- snapshot and restore ------------------------------------------------------------------


def test_snapshot_is_plain_data_and_restore_puts_it_back(sandbox_factory):
    sb = make(sandbox_factory, profile="high")  # high: no pickle anywhere
    for _ in range(3):
        sb.call("counter", "incr")
    snap = sb.snapshot()
    assert snap.sandbox == sb.id
    assert snap.states() == {"counter": {"count": 3, "label": "v1"},
                             "other": {"count": 0, "label": "v1"}}
    assert snap.actors["counter"].vsn == 1 and snap.actors["counter"].cls == "Counter"
    kept = json.loads(json.dumps(snap.to_dict()))  # the user may keep it anywhere
    msgpack.packb(snap.to_dict())

    sb.call("counter", "incr")
    sb.call("other", "incr")
    report = sb.restore(kept)
    assert report.actors == 2 and report.migrated == [] and report.warnings == []
    assert sb.call("counter", "get") == {"count": 3, "label": "v1"}
    assert sb.call("other", "get") == {"count": 0, "label": "v1"}
    assert StateSnapshot.from_dict(kept) == snap


def test_a_state_that_is_not_plain_data(sandbox_factory):
    """Under high it is refused, naming the actor; where pickle is allowed it is
    carried as opaque pickled bytes and restored."""
    high = make(sandbox_factory, profile="high")
    high.call("counter", "odd")
    with pytest.raises(SnapshotError, match="actor counter .*does not allow pickle"):
        high.snapshot()

    low = make(sandbox_factory, profile="low")
    low.call("counter", "odd")
    snap = low.snapshot()
    assert snap.actors["counter"].pickled and "counter" not in snap.states()
    low.call("counter", "incr")
    low.restore(snap)
    assert low.call("counter", "incr") == 1, "the count of the snapshot, 0, restored"


def test_restore_after_an_upgrade_runs_code_change(sandbox_factory):
    sb = make(sandbox_factory)
    sb.call("counter", "incr")
    snap = sb.snapshot()
    write(sb, "counter.py", counter(
        2, code_change='return {**state, "label": f"from {old_vsn} with {extra}"}'))
    sb.hot_reload(extra="reload")
    report = sb.restore(snap, extra="restore")
    assert sorted(report.migrated) == ["counter", "other"]
    assert sb.call("counter", "get") == {"count": 1, "label": "from 1 with restore"}


@pytest.mark.parametrize("break_it, step", [
    ("code_change", "code_change"),
    ("unknown actor", "resolve"),
])
def test_a_failing_restore_changes_no_actor(sandbox_factory, break_it, step):
    sb = make(sandbox_factory)
    snap = sb.snapshot().to_dict()
    if break_it == "code_change":
        # "other" would restore fine, "counter" fails: neither is restored.
        snap["actors"]["counter"]["vsn"] = 0
        write(sb, "counter.py", counter(1, code_change=(
            'if old_vsn == 0:\n            raise ValueError("cannot migrate from 0")\n'
            '        return state')))
        sb.hot_reload()
    else:
        snap["actors"]["ghost"] = dict(snap["actors"]["counter"])
    sb.call("counter", "incr")
    sb.call("other", "incr")
    with pytest.raises(ReloadFailed) as err:
        sb.restore(snap)
    assert err.value.step == step
    assert ("counter" if step == "code_change" else "ghost") in str(err.value)
    assert sb.call("counter", "get")["count"] == 1 and sb.call("other", "get")["count"] == 1


# -- the state check of reloads ------------------------------------------------------------


@pytest.mark.parametrize("declaration, missing", [
    ('state_keys = ("count", "label")', "'label'"),
    ("def check_state(self, state):\n"
     "        return None if 'label' in state else 'needs a label'", "needs a label"),
])
def test_reload_refused_when_the_migrated_state_fails_its_declaration(
    sandbox_factory, declaration, missing
):
    sb = make(sandbox_factory)
    sb.call("counter", "incr")
    write(sb, "counter.py", counter(
        2, declaration, code_change='return {"count": state["count"]}'))
    with pytest.raises(ReloadFailed) as err:
        sb.hot_reload()
    assert err.value.step == "check_state" and err.value.module == "counter"
    assert re.search(r"state of actor (counter|other)#\d+ ", str(err.value))
    assert missing in str(err.value)
    assert sb.call("counter", "get") == {"count": 1, "label": "v1"}, "old state serving"
    assert sb.module_versions() == {"app": 1, "counter": 1}


def test_declared_shape_that_holds_reloads_quietly(sandbox_factory):
    sb = make(sandbox_factory)
    write(sb, "counter.py", counter(2, 'state_keys = ("count", "label")'))
    report = sb.hot_reload()
    assert report.ok and report.warnings == []


def test_undeclared_state_that_lost_keys_is_a_warning(sandbox_factory):
    sb = make(sandbox_factory)
    write(sb, "counter.py", counter(2, code_change='return {"count": state["count"]}'))
    report = sb.hot_reload()
    assert report.ok
    lost = [w for w in report.warnings if "lost key 'label'" in w]
    assert len(lost) == 2 and any(w.startswith("actor counter#") for w in lost)
    assert sb.call("counter", "get") == {"count": 0}
