"""A call run in place (``ServerActor.call_here``) while its server ends.

The in-place path puts the caller's sink in the pending set without the actor's
``_life`` lock and checks for an ending afterwards; ``_finish`` pops the sinks it
fails one by one. Whichever ends first, the caller is answered exactly once. The
interleavings are forced in one thread: the pending set runs the other side's
step right after the sink goes in.
"""

from __future__ import annotations

from typing import Any

import pytest

from runtime import NOREPLY, ExitReason, GenServer
from runtime.errors import ActorDead
from runtime.genserver import NOT_HERE

pytestmark = pytest.mark.timeout(30)


class Echo(GenServer):
    def init(self, arg: Any = None) -> int:
        return 0

    def handle_call(self, request: Any, state: int) -> tuple[Any, int]:
        return ("handled", request), state + 1


class Sink:
    def __init__(self) -> None:
        self.answers: list[tuple[str, Any]] = []

    def set_result(self, value: Any) -> None:
        self.answers.append(("result", value))

    def set_exception(self, exc: BaseException) -> None:
        self.answers.append(("exception", exc))


class _OnAdd(set):
    """A pending set that runs ``then`` right after a sink goes in."""

    def __init__(self, then: Any) -> None:
        super().__init__()
        self.then = then

    def add(self, item: Any) -> None:
        super().add(item)
        then, self.then = self.then, None
        if then is not None:
            then()


def test_an_idle_server_answers_in_place_and_keeps_no_pending_entry():
    ref = Echo.start()
    try:
        actor, sink = ref._actor, Sink()
        assert actor.call_here("x", sink) == ("handled", "x")
        assert actor.state == 1 and not actor._pending and sink.answers == []
    finally:
        ref.stop()


def test_a_server_killed_as_the_call_comes_in_answers_it_once_with_actor_dead():
    # Another thread kills the server between the sink going in and the check:
    # _finish fails the sink, the handler does not run, nothing else answers it.
    ref = Echo.start()
    actor, sink = ref._actor, Sink()
    actor._pending = _OnAdd(lambda: actor._kill(ExitReason.killed("test")))
    assert actor.call_here("x", sink) is NOREPLY
    assert [kind for kind, _ in sink.answers] == ["exception"]
    assert isinstance(sink.answers[0][1], ActorDead)
    assert actor.state == 0  # the handler never ran


def test_a_server_starting_to_end_as_the_call_comes_in_leaves_it_to_the_general_path():
    # The ending has begun (nothing failed yet): the sink is taken back out and the
    # call goes the general way (which says ActorDead, or waits for a restart).
    ref = Echo.start()
    actor, sink = ref._actor, Sink()
    actor._pending = _OnAdd(lambda: setattr(actor, "_exiting", True))
    assert actor.call_here("x", sink) is NOT_HERE
    assert not actor._pending and sink.answers == [] and actor.state == 0
    actor._kill(ExitReason.killed("test"))
    assert sink.answers == []  # not pending: the ending does not answer it either
