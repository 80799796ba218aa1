"""Groups of proposed writes: answered once, when the last one settles, when
the member gives up on them, or at their deadline."""

from __future__ import annotations

import trio
import trio.testing

from kvstore.api import Error, ErrorCode
from kvstore.pending_writes import PendingWrites, WriteGroup

OK = Error(code=ErrorCode.INTERNAL, message="stands in for a response", definite=True)


def test_a_group_is_answered_once_when_its_last_write_settles() -> None:
    writes = PendingWrites()
    answered: list[WriteGroup] = []
    group = writes.open_group([1, 2], term=3, deadline=10.0, on_finished=answered.append)
    writes.settle(1, OK)
    assert answered == [] and len(writes) == 2
    writes.settle(2, OK)
    writes.settle(2, OK)  # late duplicates change nothing
    assert answered == [group] and len(writes) == 0
    assert [w.response for w in group.writes] == [OK, OK]
    assert not group.timed_out


def test_an_empty_group_is_answered_at_once() -> None:
    writes = PendingWrites()
    answered: list[WriteGroup] = []
    writes.open_group([], term=1, deadline=10.0, on_finished=answered.append)
    assert len(answered) == 1


def test_writes_of_older_terms_are_given_up_on() -> None:
    writes = PendingWrites()
    answered: list[WriteGroup] = []
    old = writes.open_group([1], term=2, deadline=10.0, on_finished=answered.append)
    new = writes.open_group([2], term=3, deadline=10.0, on_finished=answered.append)
    writes.give_up_older_than(3)
    assert answered == [old]
    assert old.writes[0].settled and old.writes[0].response is None
    writes.give_up_all()
    assert answered == [old, new]


def test_groups_still_unanswered_at_their_deadline_time_out() -> None:
    async def main() -> None:
        writes = PendingWrites()
        answered: list[tuple[float, WriteGroup]] = []

        def record(group: WriteGroup) -> None:
            answered.append((trio.current_time(), group))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writes.expire)
            quick = writes.open_group([1], term=1, deadline=1.0, on_finished=record)
            slow = writes.open_group([2], term=1, deadline=2.0, on_finished=record)
            await trio.sleep(0.5)
            writes.settle(1, OK)
            await trio.sleep(5)
            assert [(at, group) for at, group in answered] == [(0.5, quick), (2.0, slow)]
            assert slow.timed_out and not slow.writes[0].settled and not quick.timed_out
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
