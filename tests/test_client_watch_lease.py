"""The client's watches and lease calls against fake members on loopback.

The fake members share one :class:`History` (the "committed log" of events)
and serve watches from it the way a member does: a ``created`` response whose
header revision is the current one, then every event from the start revision,
one response per revision, then live events.  Members can be killed (their
listener and connections closed), made to replay *more* than asked for (to
prove the client drops duplicates), to cancel a watch as compacted, or to
answer keep-alives with ``not_leader``.  Real sockets, real time, short
timeouts, events instead of sleeps.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import msgspec
import pytest
import trio
import trio.testing

from kvstore import api
from kvstore.api import Error, ErrorCode, Event, EventType, KeyValue, ResponseHeader
from kvstore.client import (
    Client,
    CompactedError,
    InvalidRequest,
    SyncClient,
    Unavailable,
    Watch,
)
from raft.framing import FrameReader, encode_frame

# -- The shared history and the fake members --------------------------------------------


class History:
    """Committed revisions and their events, shared by every fake member."""

    def __init__(self) -> None:
        self.revision = 1
        self.batches: list[tuple[int, list[Event]]] = []
        self.changed = trio.Event()
        """Set (and replaced) on every new revision."""

    def put(self, key: bytes, value: bytes = b"v") -> int:
        self.revision += 1
        kv = KeyValue(key, self.revision, self.revision, 1, value)
        self.batches.append((self.revision, [Event(EventType.PUT, kv)]))
        self.changed.set()
        self.changed = trio.Event()
        return self.revision

    def txn(self, *keys: bytes) -> int:
        """One revision with several events."""
        self.revision += 1
        events = [
            Event(EventType.PUT, KeyValue(key, self.revision, self.revision, 1, b"t"))
            for key in keys
        ]
        self.batches.append((self.revision, events))
        self.changed.set()
        self.changed = trio.Event()
        return self.revision

    def since(self, revision: int) -> list[tuple[int, list[Event]]]:
        return [batch for batch in self.batches if batch[0] >= revision]


def header(revision: int) -> ResponseHeader:
    return ResponseHeader(cluster_id=1, member_id=1, revision=revision, raft_term=2)


@dataclass
class MemberWatch:
    request_id: int
    request: api.WatchCreateRequest
    canceled: bool = False
    progress: bool = False


Handler = Callable[["FakeMember", api.Request], Awaitable[api.Response | Error]]
Sender = Callable[[int, api.Response | Error], Awaitable[None]]


async def plain_answers(member: FakeMember, request: api.Request) -> api.Response | Error:
    """Plausible answers for the KV and lease requests."""
    h = header(member.history.revision)
    match request:
        case api.RangeRequest(key=key):
            kv = KeyValue(key, 2, 2, 1, b"v:" + member.name.encode())
            return api.RangeResponse(header=h, kvs=[kv], count=1)
        case api.PutRequest():
            return api.PutResponse(header=h)
        case api.LeaseGrantRequest(ttl=ttl, id=lease_id):
            return api.LeaseGrantResponse(header=h, id=lease_id or 0x1234, ttl=max(ttl, 2))
        case api.LeaseRevokeRequest():
            return api.LeaseRevokeResponse(header=h)
        case api.LeaseKeepAliveRequest(id=lease_id):
            return api.LeaseKeepAliveResponse(header=h, id=lease_id, ttl=7)
        case api.LeaseTimeToLiveRequest(id=lease_id, keys=keys):
            return api.LeaseTimeToLiveResponse(
                header=h, id=lease_id, ttl=5, granted_ttl=7, keys=[b"a"] if keys else []
            )
        case api.LeaseLeasesRequest():
            return api.LeaseLeasesResponse(header=h, leases=[1, 2])
    raise AssertionError(request)


@dataclass
class FakeMember:
    history: History
    name: str
    handler: Handler = plain_answers
    replay_slack: int = 0
    """Replay this many revisions before the start asked for (a sloppy member)."""
    compact_revision: int = 0
    endpoint: str = ""
    received: list[api.Request] = field(default_factory=list)
    watches: list[MemberWatch] = field(default_factory=list)
    connections: int = 0
    _scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    _wake: trio.Event = field(default_factory=trio.Event)
    watch_created: trio.Event = field(default_factory=trio.Event)

    @classmethod
    async def start(
        cls, nursery: trio.Nursery, history: History, name: str, **kw: object
    ) -> FakeMember:
        member = cls(history, name, **kw)  # type: ignore[arg-type]
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        member.endpoint = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"

        async def serve() -> None:
            with member._scope:
                await trio.serve_listeners(member._serve, listeners)

        nursery.start_soon(serve)
        return member

    def _poke(self) -> None:
        self._wake.set()
        self._wake = trio.Event()

    def kill(self) -> None:
        """Close the listener and every connection, as a crash would."""
        self._scope.cancel()

    def created_watches(self) -> list[api.WatchCreateRequest]:
        return [r for r in self.received if isinstance(r, api.WatchCreateRequest)]

    async def _serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        reader = FrameReader(stream, api.MAX_FRAME_BYTES)
        lock = trio.Lock()

        async def send(request_id: int, response: api.Response | Error) -> None:
            async with lock:
                await stream.send_all(
                    encode_frame(api.encode(api.ServerFrame(request_id, response)))
                )

        mine: dict[int, MemberWatch] = {}
        try:
            async with trio.open_nursery() as nursery:
                while (payload := await reader.read()) is not None:
                    frame = api.decode_client_frame(payload)
                    request = frame.request
                    self.received.append(request)
                    if isinstance(request, api.WatchCreateRequest):
                        watch = mine[frame.request_id] = MemberWatch(frame.request_id, request)
                        self.watches.append(watch)
                        nursery.start_soon(self._watch, send, watch)
                    elif isinstance(request, api.WatchCancelRequest):
                        if request.watch_id in mine:
                            mine[request.watch_id].canceled = True
                        self._poke()
                        ack = api.WatchResponse(header=header(0), watch_id=request.watch_id)
                        await send(frame.request_id, ack)
                    elif isinstance(request, api.WatchProgressRequest):
                        for watch in mine.values():
                            watch.progress = True
                        self._poke()
                    else:
                        nursery.start_soon(self._answer, send, frame.request_id, request)
                nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def _answer(self, send: Sender, rid: int, req: api.Request) -> None:
        await send(rid, await self.handler(self, req))

    async def _watch(self, send: Sender, watch: MemberWatch) -> None:
        history, rid = self.history, watch.request_id
        start = watch.request.start_revision
        if start and self.compact_revision and start <= self.compact_revision:
            await send(
                rid,
                api.WatchResponse(
                    header=header(history.revision),
                    watch_id=rid,
                    canceled=True,
                    compact_revision=self.compact_revision,
                    cancel_reason="required revision has been compacted",
                ),
            )
            return
        # Where a watch "from now" starts is fixed before it is reported
        # created (as a member does): a write the client makes once it has
        # the created response must be seen.
        following = max(1, start - self.replay_slack) if start else history.revision + 1
        await send(
            rid, api.WatchResponse(header=header(history.revision), watch_id=rid, created=True)
        )
        self.watch_created.set()
        while True:
            # Take the wake-up events before looking, so no change is missed.
            changed, poked = history.changed, self._wake
            pending = history.since(following)
            for revision, all_events in pending:
                following = revision + 1
                events = [e for e in all_events if _matches(watch.request, e.kv.key)]
                if events:
                    response = api.WatchResponse(
                        header=header(revision), watch_id=rid, events=events
                    )
                    await send(rid, response)
            if watch.canceled:
                response = api.WatchResponse(header=header(history.revision), watch_id=rid)
                await send(rid, msgspec.structs.replace(response, canceled=True))
                return
            if watch.progress:
                watch.progress = False  # every event up to following - 1 was sent
                await send(rid, api.WatchResponse(header=header(following - 1), watch_id=rid))
                continue
            if pending:
                continue
            async with trio.open_nursery() as wait:

                async def until(event: trio.Event) -> None:
                    await event.wait()
                    wait.cancel_scope.cancel()

                wait.start_soon(until, changed)
                wait.start_soon(until, poked)


def _matches(request: api.WatchCreateRequest, key: bytes) -> bool:
    if not request.range_end:
        return key == request.key
    return request.key <= key and (request.range_end == b"\0" or key < request.range_end)


def run(test: Callable[[trio.Nursery, History], Awaitable[None]]) -> None:
    async def main() -> None:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                await test(nursery, History())
                nursery.cancel_scope.cancel()

    trio.run(main)


def revisions(responses: list[api.WatchResponse]) -> list[int]:
    return [event.kv.mod_revision for response in responses for event in response.events]


async def take(watch: Watch, n_events: int) -> list[api.WatchResponse]:
    """Responses from ``watch`` until ``n_events`` events have arrived."""
    taken: list[api.WatchResponse] = []
    async for response in watch:
        taken.append(response)
        if sum(len(r.events) for r in taken) >= n_events:
            break
    return taken


# -- Multiplexing and backpressure --------------------------------------------------------


def test_watch_and_requests_share_one_connection() -> None:
    async def test(nursery: trio.Nursery, history: History) -> None:
        member = await FakeMember.start(nursery, history, "a")
        async with (
            Client([member.endpoint], request_timeout=1.0) as client,
            client.watch("k", prefix=True) as one,
            client.watch("j") as two,
        ):
            history.put(b"k1")
            assert (await client.get("x")).kvs[0].value == b"v:a"
            history.txn(b"k2", b"k3")
            history.put(b"j")
            got_one = await take(one, 3)
            got_two = await take(two, 1)
        # Every event of one revision arrives in one response, in order.
        assert [[e.kv.key for e in r.events] for r in got_one] == [[b"k1"], [b"k2", b"k3"]]
        assert revisions(got_two) == [4]
        assert member.connections == 1

    run(test)


def test_a_slow_consumer_blocks_nothing_and_loses_nothing() -> None:
    """A full buffer cancels the member's watch and re-creates it from the
    revision after the last buffered once the consumer catches up."""

    async def test(nursery: trio.Nursery, history: History) -> None:
        member = await FakeMember.start(nursery, history, "a")
        async with (
            Client([member.endpoint], request_timeout=1.0) as client,
            client.watch("k", max_buffered=4) as watch,
        ):
            written = [history.put(b"k") for _ in range(20)]
            # Nobody iterates yet, and other requests go on regardless.
            await trio.testing.wait_all_tasks_blocked(cushion=0.02)
            assert (await client.get("x")).kvs
            received = revisions(await take(watch, 20))
        assert received == written
        assert watch.resumes >= 1
        starts = [r.start_revision for r in member.created_watches()]
        assert starts[0] == 0 and all(start > 0 for start in starts[1:])
        assert sum(isinstance(r, api.WatchCancelRequest) for r in member.received) >= 1
        assert member.connections == 1

    run(test)


# -- Fail-over ---------------------------------------------------------------------------


def test_watch_resumes_on_another_member_without_gap_or_duplicate() -> None:
    async def test(nursery: trio.Nursery, history: History) -> None:
        a = await FakeMember.start(nursery, history, "a")
        # B replays three revisions more than it is asked for.
        b = await FakeMember.start(nursery, history, "b", replay_slack=3)
        first = [history.put(b"k") for _ in range(3)]  # revisions 2..4
        async with (
            Client([a.endpoint, b.endpoint], request_timeout=1.0) as client,
            client.watch("k", start_revision=2) as watch,
        ):
            got = await take(watch, 3)
            assert revisions(got) == first
            a.kill()
            rest = [history.put(b"k") for _ in range(3)]  # written while failing over
            await b.watch_created.wait()
            rest.append(history.put(b"k"))
            got += await take(watch, 4)
        assert revisions(got) == first + rest
        assert [r.start_revision for r in b.created_watches()] == [first[-1] + 1]
        assert watch.resumes == 1

    run(test)


def test_watch_from_now_resumes_from_the_revision_it_was_created_at() -> None:
    async def test(nursery: trio.Nursery, history: History) -> None:
        a = await FakeMember.start(nursery, history, "a")
        b = await FakeMember.start(nursery, history, "b", replay_slack=5)
        for _ in range(4):
            history.put(b"k")  # history before the watch: never delivered
        async with (
            Client([a.endpoint, b.endpoint], request_timeout=1.0) as client,
            client.watch("k") as watch,
        ):
            created_at = history.revision
            a.kill()  # before any event
            later = [history.put(b"k"), history.put(b"k")]
            got = await take(watch, 2)
        assert revisions(got) == later
        assert [r.start_revision for r in b.created_watches()] == [created_at + 1]

    run(test)


def test_a_member_that_cancels_a_watch_unasked_is_left_for_another() -> None:
    async def test(nursery: trio.Nursery, history: History) -> None:
        a = await FakeMember.start(nursery, history, "a")
        b = await FakeMember.start(nursery, history, "b")
        async with (
            Client([a.endpoint, b.endpoint], request_timeout=1.0) as client,
            client.watch("k") as watch,
        ):
            first = history.put(b"k")
            assert revisions(await take(watch, 1)) == [first]
            a.watches[0].canceled = True  # as a member cut off from its leader does
            history.put(b"other")  # wakes A's watch, which sends canceled
            await b.watch_created.wait()
            second = history.put(b"k")
            assert revisions(await take(watch, 1)) == [second]
        assert b.created_watches()[0].start_revision == first + 1

    run(test)


# -- Compaction, errors, cancel, progress ----------------------------------------------------


def test_compacted_start_raises_compacted_error_from_async_with() -> None:
    async def test(nursery: trio.Nursery, history: History) -> None:
        member = await FakeMember.start(nursery, history, "a", compact_revision=9)
        async with Client([member.endpoint], request_timeout=1.0) as client:
            with pytest.raises(CompactedError) as caught:
                async with client.watch("k", start_revision=3):
                    pass
        assert caught.value.compact_revision == 9 and caught.value.definite

    run(test)


def test_compaction_during_an_outage_is_raised_after_the_events_received() -> None:
    async def test(nursery: trio.Nursery, history: History) -> None:
        a = await FakeMember.start(nursery, history, "a")
        b = await FakeMember.start(nursery, history, "b", compact_revision=50)
        async with (
            Client([a.endpoint, b.endpoint], request_timeout=1.0) as client,
            client.watch("k") as watch,
        ):
            one, two = history.put(b"k"), history.put(b"k")
            await trio.testing.wait_all_tasks_blocked(cushion=0.02)  # both buffered
            a.kill()
            received: list[int] = []
            with pytest.raises(CompactedError) as caught:
                async for response in watch:
                    received += revisions([response])
        assert received == [one, two]
        assert caught.value.compact_revision == 50

    run(test)


def test_an_invalid_watch_is_raised_from_async_with() -> None:
    async def test(nursery: trio.Nursery, history: History) -> None:
        member = await FakeMember.start(nursery, history, "a")
        serve_watch = member._watch

        async def reject(send: Sender, watch: MemberWatch) -> None:
            error = Error(code=ErrorCode.EMPTY_KEY, message="key is empty", definite=True)
            await send(watch.request_id, error)

        async with Client([member.endpoint], request_timeout=1.0) as client:
            member._watch = reject  # type: ignore[method-assign]
            with pytest.raises(InvalidRequest):
                async with client.watch("k"):
                    pass
            member._watch = serve_watch  # type: ignore[method-assign]
            async with client.watch("k"):  # the client is none the worse
                pass
        assert len(member.created_watches()) == 2

    run(test)


def test_closing_a_watch_cancels_it_on_the_member_and_ends_iteration() -> None:
    async def test(nursery: trio.Nursery, history: History) -> None:
        member = await FakeMember.start(nursery, history, "a")
        # A creation slower than the attempt timeout (a third of this) would
        # be cancelled and retried: one cancel more, on a loaded machine.
        async with Client([member.endpoint], request_timeout=3.0) as client:
            watch = client.watch("k")
            async with watch:
                history.put(b"k")
                await take(watch, 1)
            assert await watch.next() is None
            assert [response async for response in watch] == []
            await trio.testing.wait_all_tasks_blocked(cushion=0.02)
        cancels = [r for r in member.received if isinstance(r, api.WatchCancelRequest)]
        assert [c.watch_id for c in cancels] == [member.watches[0].request_id]

    run(test)


def test_progress_request_yields_a_bookmark_after_the_events_before_it() -> None:
    async def test(nursery: trio.Nursery, history: History) -> None:
        member = await FakeMember.start(nursery, history, "a")
        async with (
            Client([member.endpoint], request_timeout=1.0) as client,
            client.watch("k") as watch,
        ):
            put = history.put(b"k")
            history.put(b"unwatched")
            await watch.request_progress()
            got = [await watch.next(), await watch.next()]
        assert got[0] is not None and revisions([got[0]]) == [put]
        assert got[1] is not None and not got[1].events
        assert got[1].header.revision == history.revision
        assert watch.next_revision == history.revision + 1
        assert member.connections == 1

    run(test)


def test_watch_on_a_closed_client_raises_closed() -> None:
    async def test(nursery: trio.Nursery, history: History) -> None:
        member = await FakeMember.start(nursery, history, "a")
        async with Client([member.endpoint], request_timeout=1.0) as client:
            watch = await client.watch("k").start()
            await client.aclose()
            with pytest.raises(trio.ClosedResourceError):
                await watch.next()

    run(test)


def test_watch_that_cannot_be_created_in_time_is_unavailable() -> None:
    async def test(nursery: trio.Nursery, history: History) -> None:
        member = await FakeMember.start(nursery, history, "a")

        async def never(send: Sender, watch: MemberWatch) -> None:
            await trio.sleep_forever()

        member._watch = never  # type: ignore[method-assign]
        async with Client([member.endpoint], request_timeout=0.3) as client:
            with pytest.raises(Unavailable):
                await client.watch("k").start()

    run(test)


# -- Leases ------------------------------------------------------------------------------


def test_keep_alive_and_time_to_live_follow_a_not_leader_hint() -> None:
    async def test(nursery: trio.Nursery, history: History) -> None:
        leader = await FakeMember.start(nursery, history, "leader")

        async def follower(member: FakeMember, request: api.Request) -> api.Response | Error:
            if isinstance(request, api.LeaseKeepAliveRequest | api.LeaseTimeToLiveRequest):
                return Error(
                    code=ErrorCode.NOT_LEADER,
                    message="served by the leader",
                    definite=True,
                    leader=leader.endpoint,
                )
            return await plain_answers(member, request)

        a = await FakeMember.start(nursery, history, "a", handler=follower)
        b = await FakeMember.start(nursery, history, "b", handler=follower)
        async with Client([a.endpoint, b.endpoint, leader.endpoint], request_timeout=1.0) as client:
            assert (await client.get("k")).kvs[0].value == b"v:a"
            response = await client.lease_keep_alive_once(42)
            assert (response.id, response.ttl) == (42, 7)
            assert client.endpoint == leader.endpoint
            ttl = await client.lease_time_to_live(42, keys=True)
            assert (ttl.ttl, ttl.granted_ttl, ttl.keys) == (5, 7, [b"a"])
        assert b.connections == 0
        assert a.received == [api.RangeRequest(key=b"k"), api.LeaseKeepAliveRequest(id=42)]

    run(test)


def test_lease_calls_send_the_expected_requests() -> None:
    async def test(nursery: trio.Nursery, history: History) -> None:
        member = await FakeMember.start(nursery, history, "a")
        async with Client([member.endpoint], request_timeout=1.0) as client:
            granted = await client.lease_grant(1)
            assert (granted.id, granted.ttl) == (0x1234, 2)
            await client.lease_grant(10, id=99)
            await client.put("k", "v", lease=granted.id)
            await client.lease_revoke(granted.id)
            assert (await client.lease_leases()).leases == [1, 2]
        assert member.received == [
            api.LeaseGrantRequest(ttl=1),
            api.LeaseGrantRequest(ttl=10, id=99),
            api.PutRequest(key=b"k", value=b"v", lease=0x1234),
            api.LeaseRevokeRequest(id=0x1234),
            api.LeaseLeasesRequest(),
        ]

    run(test)


def test_a_lost_keep_alive_is_retried_but_a_lost_grant_is_outcome_unknown() -> None:
    from kvstore.client import OutcomeUnknown

    async def test(nursery: trio.Nursery, history: History) -> None:
        async def hang_up_once(member: FakeMember, request: api.Request) -> api.Response | Error:
            member.kill()
            await trio.sleep_forever()
            raise AssertionError

        a = await FakeMember.start(nursery, history, "a", handler=hang_up_once)
        b = await FakeMember.start(nursery, history, "b")
        async with Client([a.endpoint, b.endpoint], request_timeout=1.0) as client:
            assert (await client.lease_keep_alive_once(5)).ttl == 7
        c = await FakeMember.start(nursery, history, "c", handler=hang_up_once)
        async with Client([c.endpoint, b.endpoint], request_timeout=1.0) as client:
            with pytest.raises(OutcomeUnknown):
                await client.lease_grant(5)

    run(test)


# -- The blocking client ------------------------------------------------------------------


def test_sync_client_watch_and_leases() -> None:
    def blocking(endpoint: str, history: History, token: trio.lowlevel.TrioToken) -> None:
        with SyncClient([endpoint], request_timeout=1.0) as client:
            assert client.lease_grant(3).id == 0x1234
            assert client.lease_keep_alive_once(0x1234).ttl == 7
            with client.watch("k") as watch:
                trio.from_thread.run_sync(history.put, b"k", trio_token=token)
                for response in watch:
                    assert [e.kv.key for e in response.events] == [b"k"]
                    break

    async def test(nursery: trio.Nursery, history: History) -> None:
        member = await FakeMember.start(nursery, history, "a")
        token = trio.lowlevel.current_trio_token()
        await trio.to_thread.run_sync(blocking, member.endpoint, history, token)

    run(test)
    assert not [t for t in threading.enumerate() if t.name == "kvstore-client"]
