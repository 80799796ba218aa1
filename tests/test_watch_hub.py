"""The watch hub and the lessor, sans-I/O: model-based tests with a fake clock.

The hub is driven by a real state machine (random writes, compactions, slow
consumers); the model of what each watch must receive is the store's own
committed history.  Every watch must see exactly the events of its keys from
its start revision, in order, each revision whole, none repeated or skipped,
or be cancelled with the compacted revision when history it needed is gone.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from kvstore.api import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    Error,
    ErrorCode,
    Event,
    EventType,
    KeyValue,
    LeaseGrantRequest,
    LeaseRevokeRequest,
    PutRequest,
    RangeRequest,
    TxnRequest,
    TxnResponse,
    WatchCreateRequest,
)
from kvstore.commands import Command, encode_command
from kvstore.lease import LeaseRecord, LeaseTable, Lessor
from kvstore.state_machine import KVStateMachine
from kvstore.watch import Cancellation, WatchHub

KEYS = [b"a", b"b", b"c", b"d"]


class HubMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = KVStateMachine()
        self.hub = WatchHub(lambda: self.state.store, max_queued_events=3, catch_up_revisions=2)
        self.index = 0
        self.received: dict[int, list[Event]] = {}
        self.revisions: dict[int, list[int]] = {}
        self.cancelled: dict[int, Cancellation] = {}
        self.specs: dict[int, WatchCreateRequest] = {}
        self.watchers: dict[int, object] = {}
        self.next_id = 1

    def apply(self, request: PutRequest | DeleteRangeRequest | TxnRequest) -> None:
        self.index += 1
        result = self.state.apply(self.index, encode_command(Command(1, self.index, request)))
        assert result is not None
        if result.events:
            self.hub.on_apply(result.events[0].kv.mod_revision, result.events)

    @initialize()
    def seed(self) -> None:
        self.apply(PutRequest(key=b"a", value=b"0"))

    @rule(key=st.sampled_from(KEYS), value=st.binary(max_size=2))
    def put(self, key: bytes, value: bytes) -> None:
        self.apply(PutRequest(key=key, value=value))

    @rule(key=st.sampled_from(KEYS))
    def delete(self, key: bytes) -> None:
        self.apply(DeleteRangeRequest(key=key))

    @rule(keys=st.lists(st.sampled_from(KEYS), min_size=2, max_size=3, unique=True))
    def txn(self, keys: list[bytes]) -> None:
        self.apply(TxnRequest(success=[PutRequest(key=k, value=b"t") for k in keys]))

    @rule(back=st.integers(0, 3))
    def compact(self, back: int) -> None:
        revision = self.state.store.revision - back
        if revision > self.state.store.compact_revision:
            self.state.store.compact(revision)

    @rule(
        key=st.sampled_from(KEYS),
        prefix=st.booleans(),
        back=st.integers(0, 6),
        prev_kv=st.booleans(),
        no_delete=st.booleans(),
    )
    def watch(self, key: bytes, prefix: bool, back: int, prev_kv: bool, no_delete: bool) -> None:
        start = max(1, self.state.store.revision + 1 - back) if back else 0
        request = WatchCreateRequest(
            key=b"" if prefix else key,
            range_end=b"\0" if prefix else b"",
            start_revision=start,
            prev_kv=prev_kv,
            no_delete=no_delete,
        )
        if prefix:
            request = WatchCreateRequest(
                key=b"a",
                range_end=b"\0",
                start_revision=start,
                prev_kv=prev_kv,
                no_delete=no_delete,
            )
        watch_id = self.next_id
        self.next_id += 1
        self.watchers[watch_id] = self.hub.create(watch_id, request)
        self.specs[watch_id] = WatchCreateRequest(
            key=request.key,
            range_end=request.range_end,
            start_revision=start or self.state.store.revision + 1,
            prev_kv=prev_kv,
            no_delete=no_delete,
        )
        self.received[watch_id] = []
        self.revisions[watch_id] = []

    @precondition(lambda self: self.watchers)
    @rule(data=st.data())
    def consume(self, data: st.DataObject) -> None:
        watch_id = data.draw(st.sampled_from(sorted(self.watchers)))
        taken = self.hub.take(self.watchers[watch_id])  # type: ignore[arg-type]
        if isinstance(taken, Cancellation):
            self.cancelled[watch_id] = taken
            self.hub.remove(watch_id)
            del self.watchers[watch_id]
            return
        for revision, events in taken:
            assert events, "empty batches are never handed out"
            assert all(event.kv.mod_revision == revision for event in events)
            self.revisions[watch_id].append(revision)
            self.received[watch_id].extend(events)

    @invariant()
    def every_watch_saw_exactly_the_committed_history(self) -> None:
        for watch_id, spec in self.specs.items():
            revisions = self.revisions[watch_id]
            assert revisions == sorted(set(revisions)), "revisions out of order or split"
            got = self.received[watch_id]
            if watch_id in self.cancelled:
                cancellation = self.cancelled[watch_id]
                assert cancellation.compact_revision >= spec.start_revision
                continue
            last = revisions[-1] if revisions else spec.start_revision - 1
            history = self.state.store.events_since(
                spec.start_revision, spec.key, spec.range_end, last
            )
            if not isinstance(history, list):
                continue  # compacted since: the delivered prefix was checked earlier
            expected = [
                event if spec.prev_kv else Event(event.type, event.kv)
                for event in history
                if not (spec.no_delete and event.type is EventType.DELETE)
            ]
            assert got == expected


HubMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40)
TestWatchHub = HubMachine.TestCase


def test_slow_watcher_is_caught_up_from_history_not_skipped() -> None:
    state = KVStateMachine()
    hub = WatchHub(lambda: state.store, max_queued_events=2, catch_up_revisions=3)
    watcher = hub.create(1, WatchCreateRequest(key=b"k"))
    for index in range(1, 11):
        result = state.apply(
            index, encode_command(Command(1, index, PutRequest(key=b"k", value=b"%d" % index)))
        )
        assert result is not None
        hub.on_apply(result.events[0].kv.mod_revision, result.events)
    assert hub.slow_watchers == 1
    seen: list[bytes] = []
    while True:
        taken = hub.take(watcher)
        assert not isinstance(taken, Cancellation)
        if not taken:
            break
        seen.extend(event.kv.value for _, events in taken for event in events)
    assert seen == [b"%d" % n for n in range(1, 11)]
    assert watcher.synced


def test_watch_below_compaction_is_cancelled_with_the_compact_revision() -> None:
    state = KVStateMachine()
    for index in range(1, 6):
        state.apply(index, encode_command(Command(1, index, PutRequest(key=b"k", value=b"v"))))
    state.store.compact(4)
    hub = WatchHub(lambda: state.store)
    watcher = hub.create(1, WatchCreateRequest(key=b"k", start_revision=2))
    taken = hub.take(watcher)
    assert isinstance(taken, Cancellation) and taken.compact_revision == 4


# -- The lessor, with a fake clock -------------------------------------------------------


def test_lessor_expires_after_ttl_and_not_before() -> None:
    lessor = Lessor()
    lessor.promote([], now=0.0, extend=0.5)
    lessor.granted(7, ttl=10, now=0.0)
    assert lessor.expired(9.9) == []
    assert lessor.renew(7, now=5.0) == 10
    assert lessor.expired(14.9) == []
    assert lessor.expired(15.0) == [7]
    lessor.revoked(7)
    assert lessor.expired(100.0) == []


def test_new_leader_extends_every_lease_by_an_election_timeout() -> None:
    lessor = Lessor()
    lessor.promote([LeaseRecord(1, 5), LeaseRecord(2, 8)], now=100.0, extend=1.0)
    assert lessor.remaining(1, 100.0) == 6
    assert lessor.expired(105.9) == []
    assert lessor.expired(106.0) == [1]
    lessor.revoked(1)
    assert lessor.expired(109.0) == [2]
    lessor.demote()
    assert lessor.renew(2, 110.0) is None
    assert not lessor.primary


def test_an_unrevoked_expiry_is_retried() -> None:
    lessor = Lessor()
    lessor.promote([LeaseRecord(3, 2)], now=0.0, extend=0.0)
    assert lessor.expired(2.0) == [3]
    assert lessor.expired(2.5) == []
    assert lessor.expired(3.0) == [3]  # the revoke did not land: asked again


def test_a_lease_being_revoked_is_not_renewed() -> None:
    """Once reported expired (its revoke is on its way through Raft), a lease
    is not renewed: a keep-alive that arrives late, e.g. after the leader was
    paused, must not be told the lease has a full TTL ahead (found by the
    jepsen_like lease workload under the pause nemesis)."""
    lessor = Lessor()
    lessor.promote([LeaseRecord(3, 2)], now=0.0, extend=0.0)
    assert lessor.renew(3, now=1.5) == 2
    assert lessor.expired(3.5) == [3]
    assert lessor.renew(3, now=3.6) is None
    assert lessor.expired(4.5) == [3]  # the revoke is still retried until it lands
    lessor.revoked(3)
    assert lessor.renew(3, now=4.6) is None
    lessor.promote([LeaseRecord(3, 2)], now=10.0, extend=0.0)  # a new leader knows it afresh
    assert lessor.renew(3, now=10.5) == 2


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["grant", "renew", "tick"]), st.integers(1, 4), st.integers(1, 5)
        ),
        max_size=40,
    )
)
def test_lessor_model(operations: list[tuple[str, int, int]]) -> None:
    """Against a dict of deadlines: a lease is reported expired exactly when its
    deadline has passed, and never before."""
    lessor = Lessor()
    lessor.promote([], now=0.0, extend=0.0)
    deadlines: dict[int, float] = {}
    ttls: dict[int, int] = {}
    now = 0.0
    for operation, lease_id, amount in operations:
        if operation == "grant" and lease_id not in ttls:
            lessor.granted(lease_id, amount, now)
            ttls[lease_id], deadlines[lease_id] = amount, now + amount
        elif operation == "renew":
            assert lessor.renew(lease_id, now) == ttls.get(lease_id)
            if lease_id in ttls:
                deadlines[lease_id] = now + ttls[lease_id]
        elif operation == "tick":
            now += amount / 2
            expired = lessor.expired(now)
            assert sorted(expired) == sorted(i for i, d in deadlines.items() if d <= now)
            for lease_id in expired:
                lessor.revoked(lease_id)
                del deadlines[lease_id], ttls[lease_id]


def test_lease_table_follows_key_attachments() -> None:
    table = LeaseTable()
    table.grant(1, 10)
    table.grant(2, 10)

    def kv(key: bytes, lease: int) -> KeyValue:
        return KeyValue(key, 2, 2, 1, b"", lease)

    table.track([Event(EventType.PUT, kv(b"x", 1))])
    table.track([Event(EventType.PUT, kv(b"y", 1))])
    assert table.keys(1) == [b"x", b"y"]
    table.track([Event(EventType.PUT, kv(b"x", 2), kv(b"x", 1))])
    assert table.keys(1) == [b"y"] and table.keys(2) == [b"x"]
    table.track([Event(EventType.DELETE, KeyValue(b"y", 0, 3, 0), kv(b"y", 1))])
    assert table.keys(1) == []
    assert table.revoke(2) == [b"x"]
    assert 2 not in table


def test_a_txn_checks_leases_only_on_the_branch_it_takes() -> None:
    state = KVStateMachine()
    index = 0

    def apply(request: object) -> object:
        nonlocal index
        index += 1
        result = state.apply(index, encode_command(Command(1, index, request)))  # type: ignore[arg-type]
        assert result is not None
        return result.response

    apply(LeaseGrantRequest(id=5, ttl=10))
    apply(LeaseRevokeRequest(id=5))
    response = apply(
        TxnRequest(
            compare=[
                Compare(
                    key=b"absent",
                    target=CompareTarget.VERSION,
                    result=CompareResult.GREATER,
                    value=0,
                )
            ],
            success=[PutRequest(key=b"k", value=b"v", lease=5)],
            failure=[RangeRequest(key=b"k")],
        )
    )
    assert isinstance(response, TxnResponse) and not response.succeeded
    taken = apply(TxnRequest(success=[PutRequest(key=b"k", value=b"v", lease=5)]))
    assert isinstance(taken, Error) and taken.code is ErrorCode.LEASE_NOT_FOUND
    assert state.store.get(b"k") is None
