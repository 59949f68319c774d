"""``batch_create`` is one batch: one manager turn for every spec, one result per spec in
order, a spec that fails fails alone and leaves nothing, each create its own operation.

Real runtimes and real child processes throughout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psutil
import pytest

import sandbox
from actors.manager import ManagerActor
from runtime import logs
from runtime.errors import ConfigError, SandboxExists, SecurityViolation
from runtime.host import forkserver

pytestmark = pytest.mark.timeout(120)

COUNTER = Path(__file__).resolve().parent.parent / "examples" / "counter"

REFUSED = """
def children():
    return __import__("o" + "s")
"""

DIES = """
def children():
    raise RuntimeError("this app does not start")
"""


def _app(tmp_path: Path, name: str, source: str) -> Path:
    app = tmp_path / name
    app.mkdir()
    (app / "app.py").write_text(source)
    return app


def _count_create_turns(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many configs each create turn of the manager was given."""
    turns: list[int] = []
    original = ManagerActor.op_create

    def op_create(self: ManagerActor, configs: Any, *args: Any, **kwargs: Any) -> Any:
        turns.append(len(configs))
        return original(self, configs, *args, **kwargs)

    monkeypatch.setattr(ManagerActor, "op_create", op_create)
    return turns


def _ops(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[tuple[str, str | None]]]:
    """Each sandbox id's ops-log lines: (started or ended, correlation id)."""
    seen: dict[str, list[tuple[str, str | None]]] = {}
    started, ended = logs.operation_started, logs.operation_ended

    def on_start(name: str, sandbox_id: Any) -> None:
        seen.setdefault(sandbox_id, []).append(("started", logs.current_id()))
        started(name, sandbox_id)

    def on_end(name: str, sandbox_id: Any, *args: Any) -> None:
        seen.setdefault(sandbox_id, []).append(("ended", logs.current_id()))
        ended(name, sandbox_id, *args)

    monkeypatch.setattr(logs, "operation_started", on_start)
    monkeypatch.setattr(logs, "operation_ended", on_end)
    return seen


def _children() -> set[int]:
    return {p.pid for p in psutil.Process(forkserver.ensure_running()).children()}


def test_a_batch_is_one_manager_turn_with_one_result_per_spec_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    refused = _app(tmp_path, "refused", REFUSED)
    dies = _app(tmp_path, "dies", DIES)
    turns = _count_create_turns(monkeypatch)
    ops = _ops(monkeypatch)
    specs: list[dict[str, Any]] = [
        {"id": "a", "path": COUNTER},
        {"id": "nopath", "path": tmp_path / "missing"},  # refused before the manager
        {"id": "a", "path": COUNTER},  # its id taken by the first
        {"id": "refused", "path": refused, "entry": "app:children"},  # the scan refuses it
        {"id": "dies", "path": dies, "entry": "app:children"},  # its child dies at boot
        {"id": "b", "path": COUNTER, "bogus": 1},  # an unknown option
        {"id": "c", "path": COUNTER},
    ]
    with sandbox.start(name="bc-order") as rt:
        before = _children()
        results = rt.batch_create(specs)
        assert turns == [5]  # a, a, refused, dies, c: one turn; the rest never got there
        assert [r.id for r in results] == ["a", "nopath", "a", "refused", "dies", "b", "c"]
        assert [r.ok for r in results] == [True, False, False, False, False, False, True]
        assert isinstance(results[1].error, ConfigError)
        assert isinstance(results[2].error, SandboxExists)
        assert isinstance(results[3].error, SecurityViolation)
        assert results[4].error is not None
        assert isinstance(results[5].error, ConfigError)
        assert results[0].value.call("counter", "incr") == 1
        assert results[6].value.call("counter", "incr") == 1
        # the failed ones left nothing: no entry, directory, version record, watch, child
        assert sorted(s["id"] for s in rt.list_sandboxes()) == ["a", "c"]
        workdir = Path(rt.get_sandbox_info("a")["workdir"])
        assert sorted(p.name.split("-")[0] for p in workdir.parent.iterdir()) == ["a", "c"]
        assert sorted(rt.component("versions").invoke("sandboxes")) == ["a", "c"]
        monitor = rt.component("monitor")
        assert monitor.invoke("usage", "refused") is None
        assert monitor.invoke("usage", "dies") is None
        assert len(_children() - before) == 2
        # each spec is its own operation in the ops log: one start and one end, one id
        for sid in ("nopath", "refused", "dies", "b", "c"):
            (started, cid), (ended, same) = ops[sid]
            assert (started, ended) == ("started", "ended") and cid is not None and cid == same
        assert [what for what, _cid in ops["a"]] == ["started", "started", "ended", "ended"]
        assert len({cid for _what, cid in ops["a"]}) == 2  # two specs of that id, two operations
        assert len({ops[sid][0][1] for sid in ("nopath", "refused", "dies", "b", "c")}) == 5


def test_a_lone_create_is_a_batch_of_one(monkeypatch: pytest.MonkeyPatch) -> None:
    turns = _count_create_turns(monkeypatch)
    with sandbox.start(name="bc-lone") as rt:
        sb = rt.create_sandbox("one", COUNTER)
        assert sb.call("counter", "incr") == 1
        with pytest.raises(SandboxExists):
            rt.create_sandbox("one", COUNTER)
        assert turns == [1, 1]
        assert rt.get_sandbox_info("one")["status"] == "running"


def test_a_batch_larger_than_its_workers_creates_every_sandbox(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Creates past the first ``workers`` get their child when a thread takes them up."""
    turns = _count_create_turns(monkeypatch)
    with sandbox.start(name="bc-workers") as rt:
        results = rt.batch_create([{"id": f"w{i}", "path": COUNTER} for i in range(7)],
                                  workers=2)
        assert turns == [7]
        assert all(r.ok for r in results), results
        assert [r.value.call("counter", "incr") for r in results] == [1] * 7
        assert [r.id for r in rt.batch_destroy([r.id for r in results]) if r.ok] == [
            f"w{i}" for i in range(7)]
