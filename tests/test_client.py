"""The client against fake members that speak the real protocol over loopback.

Each fake member is a real TCP listener on 127.0.0.1 (ephemeral port) decoding
:class:`~kvstore.api.ClientFrame` and answering :class:`~kvstore.api.ServerFrame`
through a per-test handler, so multiplexing, fail-over, retry safety, timeouts
and error mapping are exercised on real sockets.  Real time, short timeouts,
and events instead of sleeps.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress

import pytest
import trio
import trio.testing

from kvstore import api
from kvstore.api import Error, ErrorCode, KeyValue, ResponseHeader
from kvstore.client import (
    Client,
    CompactedError,
    Compare,
    InvalidRequest,
    KvError,
    NoLeaderError,
    Op,
    OutcomeUnknown,
    SyncClient,
    Unavailable,
    error_to_exception,
    normalize_endpoint,
)
from raft.framing import FrameReader, encode_frame

HEADER = ResponseHeader(cluster_id=1, member_id=1, revision=5, raft_term=2)

# -- A fake member --------------------------------------------------------------------


class Exchange:
    """One request as the fake member received it."""

    def __init__(
        self,
        member: FakeMember,
        stream: trio.SocketStream,
        request_id: int,
        request: api.Request,
        send_lock: trio.Lock,
        scope: trio.CancelScope,
    ) -> None:
        self.member = member
        self.request = request
        self._stream = stream
        self._request_id = request_id
        self._send_lock = send_lock
        self._scope = scope

    async def reply(self, response: api.Response | Error) -> None:
        frame = encode_frame(api.encode(api.ServerFrame(self._request_id, response)))
        async with self._send_lock:
            await self._stream.send_all(frame)

    async def reply_garbage(self) -> None:
        """A well-framed answer that is not a ServerFrame."""
        async with self._send_lock:
            await self._stream.send_all(encode_frame(b"\xc1\xc1\xc1"))

    async def hang_up(self) -> None:
        """Close the connection without answering (a crash after receiving)."""
        await trio.aclose_forcefully(self._stream)
        self._scope.cancel()


Handler = Callable[[Exchange], Awaitable[None]]


class FakeMember:
    def __init__(self, handler: Handler, name: str) -> None:
        self.handler = handler
        self.name = name
        self.endpoint = ""
        self.received: list[api.Request] = []
        self.connections = 0

    @classmethod
    async def start(cls, nursery: trio.Nursery, handler: Handler, name: str = "m") -> FakeMember:
        member = cls(handler, name)
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        member.endpoint = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        nursery.start_soon(trio.serve_listeners, member._serve, listeners)
        return member

    async def _serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        reader = FrameReader(stream, api.MAX_FRAME_BYTES)
        send_lock = trio.Lock()
        try:
            async with trio.open_nursery() as nursery:
                while (payload := await reader.read()) is not None:
                    frame = api.decode_client_frame(payload)
                    self.received.append(frame.request)
                    exchange = Exchange(
                        self,
                        stream,
                        frame.request_id,
                        frame.request,
                        send_lock,
                        nursery.cancel_scope,
                    )
                    nursery.start_soon(self._handle, exchange)
                nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client, or a test's handler, closed the connection
        finally:
            await trio.aclose_forcefully(stream)

    async def _handle(self, exchange: Exchange) -> None:
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):  # the client left
            await self.handler(exchange)


def answer_for(request: api.Request, name: str = "m") -> api.Response:
    """A plausible successful answer; a range returns ``b"v:" + key``."""
    match request:
        case api.RangeRequest(key=key):
            kv = KeyValue(key=key, create_revision=2, mod_revision=2, version=1, value=b"v:" + key)
            return api.RangeResponse(header=HEADER, kvs=[kv], count=1)
        case api.PutRequest():
            return api.PutResponse(header=HEADER)
        case api.DeleteRangeRequest():
            return api.DeleteRangeResponse(header=HEADER, deleted=1)
        case api.TxnRequest():
            return api.TxnResponse(header=HEADER, succeeded=True)
        case api.CompactionRequest():
            return api.CompactionResponse(header=HEADER)
        case api.StatusRequest():
            return api.StatusResponse(
                header=HEADER,
                name=name,
                leader=1,
                raft_term=2,
                raft_index=9,
                raft_applied_index=9,
                revision=5,
                compact_revision=0,
                keys=1,
            )
    raise AssertionError(request)


async def echo(exchange: Exchange) -> None:
    await exchange.reply(answer_for(exchange.request, exchange.member.name))


async def silent(exchange: Exchange) -> None:
    await trio.sleep_forever()


async def hang_up(exchange: Exchange) -> None:
    await exchange.hang_up()


def fails_with(code: ErrorCode, *, definite: bool = True, **fields: object) -> Handler:
    async def handler(exchange: Exchange) -> None:
        await exchange.reply(Error(code=code, message=f"fake {code}", definite=definite, **fields))  # type: ignore[arg-type]

    return handler


@contextmanager
def refusing_endpoint() -> Iterator[str]:
    """An endpoint that refuses connections: a bound socket that never listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def run(test: Callable[[trio.Nursery], Awaitable[None]]) -> None:
    async def main() -> None:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                await test(nursery)
                nursery.cancel_scope.cancel()

    trio.run(main)


# -- Multiplexing ---------------------------------------------------------------------


def test_concurrent_requests_share_one_connection_and_may_be_answered_out_of_order() -> None:
    n = 50
    arrived: list[int] = []
    all_arrived = trio.Event()
    turn = [trio.Event() for _ in range(n)]
    answered: list[int] = []

    async def reverse_order(exchange: Exchange) -> None:
        assert isinstance(exchange.request, api.RangeRequest)
        i = int(exchange.request.key[1:])
        arrived.append(i)
        if len(arrived) == n:
            all_arrived.set()
            turn[n - 1].set()
        await turn[i].wait()
        await exchange.reply(answer_for(exchange.request))
        answered.append(i)
        if i:
            turn[i - 1].set()

    async def test(nursery: trio.Nursery) -> None:
        member = await FakeMember.start(nursery, reverse_order)
        values: dict[int, bytes] = {}
        async with Client([member.endpoint]) as client:

            async def get(i: int) -> None:
                values[i] = (await client.get(f"k{i}")).kvs[0].value

            async with trio.open_nursery() as requests:
                for i in range(n):
                    requests.start_soon(get, i)
        assert values == {i: f"v:k{i}".encode() for i in range(n)}
        assert answered == list(reversed(range(n)))
        assert member.connections == 1

    run(test)


def test_in_flight_requests_are_bounded() -> None:
    rounds, bound = 3, 2
    held: list[trio.Event] = []

    async def hold(exchange: Exchange) -> None:
        held.append(release := trio.Event())
        await release.wait()
        await echo(exchange)

    async def test(nursery: trio.Nursery) -> None:
        member = await FakeMember.start(nursery, hold)
        client = Client([member.endpoint], max_in_flight=bound)
        async with client, trio.open_nursery() as requests:
            for i in range(rounds * bound):
                requests.start_soon(client.get, f"k{i}")
            for _ in range(rounds):
                await trio.testing.wait_all_tasks_blocked(cushion=0.02)
                assert len(held) == bound  # the others wait in the client
                for release in held:
                    release.set()
                held.clear()
        assert len(member.received) == rounds * bound

    run(test)


# -- Fail-over and retry safety -------------------------------------------------------


def test_refused_connection_fails_over_to_the_next_endpoint() -> None:
    async def test(nursery: trio.Nursery) -> None:
        member = await FakeMember.start(nursery, echo)
        with refusing_endpoint() as dead:
            async with Client([dead, member.endpoint], request_timeout=1.0) as client:
                await client.put("k", "v")
                assert client.endpoint == member.endpoint

    run(test)


def test_definite_no_leader_fails_over_and_the_write_is_retried() -> None:
    async def test(nursery: trio.Nursery) -> None:
        a = await FakeMember.start(nursery, fails_with(ErrorCode.NO_LEADER))
        b = await FakeMember.start(nursery, echo)
        async with Client([a.endpoint, b.endpoint], request_timeout=1.0) as client:
            response = await client.put("k", "v")
        assert response.header.revision == 5
        assert len(a.received) == len(b.received) == 1

    run(test)


def test_not_leader_with_a_leader_address_goes_there_next() -> None:
    async def test(nursery: trio.Nursery) -> None:
        c = await FakeMember.start(nursery, echo)
        a = await FakeMember.start(nursery, fails_with(ErrorCode.NOT_LEADER, leader=c.endpoint))
        b = await FakeMember.start(nursery, echo)
        async with Client([a.endpoint, b.endpoint, c.endpoint], request_timeout=1.0) as client:
            await client.put("k", "v")
            assert client.endpoint == c.endpoint
        assert b.connections == 0

    run(test)


def test_failing_over_lets_requests_in_flight_on_the_old_connection_finish() -> None:
    put_arrived, finish_put = trio.Event(), trio.Event()

    async def slow_puts_refused_gets(exchange: Exchange) -> None:
        if isinstance(exchange.request, api.PutRequest):
            put_arrived.set()
            await finish_put.wait()
            await echo(exchange)
        else:
            await fails_with(ErrorCode.NOT_LEADER)(exchange)

    async def test(nursery: trio.Nursery) -> None:
        a = await FakeMember.start(nursery, slow_puts_refused_gets)
        b = await FakeMember.start(nursery, echo)
        client = Client([a.endpoint, b.endpoint], request_timeout=1.0)
        async with client, trio.open_nursery() as requests:
            requests.start_soon(client.put, "k", "v")
            await put_arrived.wait()
            await client.get("k")  # not_leader: the client moves to B ...
            assert client.endpoint == b.endpoint
            finish_put.set()  # ... and the put still gets its answer from A
        assert a.connections == 1 and b.received == [Op.get("k")]

    run(test)


def test_write_is_not_retried_when_the_connection_dies_after_sending() -> None:
    async def test(nursery: trio.Nursery) -> None:
        a = await FakeMember.start(nursery, hang_up)
        b = await FakeMember.start(nursery, echo)
        async with Client([a.endpoint, b.endpoint], request_timeout=1.0) as client:
            with pytest.raises(OutcomeUnknown) as caught:
                await client.put("k", "v")
        assert caught.value.definite is False
        assert a.received == [Op.put("k", "v")]
        assert b.received == []

    run(test)


def test_read_is_retried_when_the_connection_dies() -> None:
    async def test(nursery: trio.Nursery) -> None:
        a = await FakeMember.start(nursery, hang_up)
        b = await FakeMember.start(nursery, echo)
        async with Client([a.endpoint, b.endpoint], request_timeout=1.0) as client:
            assert (await client.get("k")).kvs[0].value == b"v:k"
            # A txn of reads only is a read too.
            assert (await client.txn([], [Op.get("k")])).succeeded
        assert len(a.received) == 1

    run(test)


async def garbage(exchange: Exchange) -> None:
    await exchange.reply_garbage()


def test_a_malformed_answer_ends_that_connection_only() -> None:
    """Bytes from a member that do not decode end the connection (a read goes
    elsewhere, a write is outcome-unknown); nothing escapes the client."""

    async def test(nursery: trio.Nursery) -> None:
        a = await FakeMember.start(nursery, garbage)
        b = await FakeMember.start(nursery, echo)
        async with Client([a.endpoint, b.endpoint], request_timeout=1.0) as client:
            assert (await client.get("k")).kvs[0].value == b"v:k"
        async with Client([a.endpoint, b.endpoint], request_timeout=1.0) as client:
            with pytest.raises(OutcomeUnknown):
                await client.put("k", "v")
            assert (await client.get("k")).kvs[0].value == b"v:k"

    run(test)


def test_indefinite_error_on_a_write_is_outcome_unknown_and_not_retried() -> None:
    async def test(nursery: trio.Nursery) -> None:
        a = await FakeMember.start(nursery, fails_with(ErrorCode.TIMEOUT, definite=False))
        b = await FakeMember.start(nursery, echo)
        async with Client([a.endpoint, b.endpoint], request_timeout=1.0) as client:
            with pytest.raises(OutcomeUnknown) as caught:
                await client.delete("k")
            assert caught.value.code is ErrorCode.TIMEOUT
            assert b.received == []
            await client.get("k")  # a read with the same answer is retried elsewhere
        assert b.received == [Op.get("k")]

    run(test)


# -- Bounded time ---------------------------------------------------------------------


def test_requests_to_a_member_that_never_answers_are_bounded() -> None:
    async def test(nursery: trio.Nursery) -> None:
        member = await FakeMember.start(nursery, silent)
        async with Client([member.endpoint], request_timeout=0.3) as client:
            start = trio.current_time()
            with pytest.raises(OutcomeUnknown):
                await client.put("k", "v")
            with pytest.raises(Unavailable) as caught:
                await client.get("k")
            assert caught.value.definite
            assert 0.6 <= trio.current_time() - start < 1.2

    run(test)


def test_no_leader_anywhere_fails_definitely_at_the_deadline() -> None:
    async def test(nursery: trio.Nursery) -> None:
        a = await FakeMember.start(nursery, fails_with(ErrorCode.NO_LEADER))
        b = await FakeMember.start(nursery, fails_with(ErrorCode.NOT_LEADER))
        async with Client([a.endpoint, b.endpoint], request_timeout=0.3) as client:
            start = trio.current_time()
            with pytest.raises(NoLeaderError) as caught:
                await client.put("k", "v")
            assert caught.value.definite
            assert trio.current_time() - start < 0.6
        assert len(a.received) >= 2 and len(b.received) >= 2  # kept trying, with back-off

    run(test)


def test_nothing_reachable_is_unavailable_and_definite() -> None:
    async def test(nursery: trio.Nursery) -> None:
        with refusing_endpoint() as one, refusing_endpoint() as two:
            async with Client([one, two], request_timeout=0.3) as client:
                with pytest.raises(Unavailable) as caught:
                    await client.put("k", "v")
        assert caught.value.definite
        assert one in caught.value.message and two in caught.value.message

    run(test)


def test_a_read_moves_on_from_a_member_that_accepts_but_never_answers() -> None:
    async def test(nursery: trio.Nursery) -> None:
        a = await FakeMember.start(nursery, silent)
        b = await FakeMember.start(nursery, echo)
        async with Client([a.endpoint, b.endpoint], request_timeout=0.9) as client:
            start = trio.current_time()
            await client.get("k")
            assert trio.current_time() - start < 0.6  # a third of the timeout, then B
            assert client.endpoint == b.endpoint

    run(test)


# -- Errors, builders, limits ---------------------------------------------------------


def test_compacted_maps_to_compacted_error_with_the_revision() -> None:
    async def test(nursery: trio.Nursery) -> None:
        a = await FakeMember.start(nursery, fails_with(ErrorCode.COMPACTED, compact_revision=7))
        async with Client([a.endpoint], request_timeout=1.0) as client:
            with pytest.raises(CompactedError) as caught:
                await client.get("k", revision=3)
        assert caught.value.compact_revision == 7
        assert caught.value.definite and caught.value.code is ErrorCode.COMPACTED
        assert len(a.received) == 1

    run(test)


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_error_code_maps_to_an_exception(code: ErrorCode) -> None:
    definite = error_to_exception(Error(code=code, message="m", definite=True), write=True)
    assert isinstance(definite, KvError) and not isinstance(definite, OutcomeUnknown)
    assert definite.code is code and definite.definite
    unknown = error_to_exception(Error(code=code, message="m", definite=False), write=True)
    assert isinstance(unknown, OutcomeUnknown) and not unknown.definite
    read = error_to_exception(Error(code=code, message="m", definite=False), write=False)
    assert not isinstance(read, OutcomeUnknown) and read.definite
    if code in (ErrorCode.EMPTY_KEY, ErrorCode.DUPLICATE_KEY, ErrorCode.LEASE_NOT_FOUND):
        assert isinstance(definite, InvalidRequest)


def test_txn_builders_send_the_expected_request() -> None:
    async def test(nursery: trio.Nursery) -> None:
        member = await FakeMember.start(nursery, echo)
        async with Client([member.endpoint], request_timeout=1.0) as client:
            await client.txn(
                [Compare.value("k") == "v", Compare.version(b"k") > 0, Compare.lease("k") != 0],
                [Op.put("k", "w", prev_kv=True), Op.delete("dir/", prefix=True)],
                [Op.get("", from_key=True, limit=2)],
            )
        target, result = api.CompareTarget, api.CompareResult
        assert member.received == [
            api.TxnRequest(
                compare=[
                    api.Compare(key=b"k", target=target.VALUE, value=b"v"),
                    api.Compare(key=b"k", target=target.VERSION, result=result.GREATER, value=0),
                    api.Compare(key=b"k", target=target.LEASE, result=result.NOT_EQUAL, value=0),
                ],
                success=[
                    api.PutRequest(key=b"k", value=b"w", prev_kv=True),
                    api.DeleteRangeRequest(key=b"dir/", range_end=b"dir0"),
                ],
                failure=[api.RangeRequest(key=b"\0", range_end=b"\0", limit=2)],
            )
        ]

    run(test)


def test_builders_reject_mismatched_operands_and_conflicting_ranges() -> None:
    with pytest.raises(TypeError):
        Compare.version("k") == b"1"  # noqa: B015
    with pytest.raises(TypeError):
        Compare.value("k") == 1  # noqa: B015
    with pytest.raises(ValueError):
        Op.get("a", "b", prefix=True)
    assert Op.get("a", "b") == api.RangeRequest(key=b"a", range_end=b"b")
    assert normalize_endpoint("http://127.0.0.1:2379/") == "127.0.0.1:2379"
    with pytest.raises(ValueError):
        Client("127.0.0.1")


def test_oversized_request_is_rejected_locally_and_the_connection_survives() -> None:
    async def test(nursery: trio.Nursery) -> None:
        member = await FakeMember.start(nursery, echo)
        async with Client([member.endpoint], request_timeout=1.0) as client:
            await client.get("k")
            with pytest.raises(InvalidRequest) as caught:
                await client.put("k", b"x" * api.MAX_FRAME_BYTES)
            assert caught.value.code is ErrorCode.REQUEST_TOO_LARGE
            await client.get("k")
        assert member.connections == 1 and len(member.received) == 2

    run(test)


def test_status_asks_the_named_endpoint() -> None:
    async def test(nursery: trio.Nursery) -> None:
        a = await FakeMember.start(nursery, echo, name="a")
        b = await FakeMember.start(nursery, echo, name="b")
        async with Client([a.endpoint, b.endpoint], request_timeout=1.0) as client:
            assert (await client.status()).name == "a"
            assert (await client.status(b.endpoint)).name == "b"
            assert client.endpoint == a.endpoint
            with refusing_endpoint() as dead, pytest.raises(Unavailable):
                await client.status(dead)

    run(test)


def test_a_closed_client_refuses_requests() -> None:
    async def test(nursery: trio.Nursery) -> None:
        member = await FakeMember.start(nursery, echo)
        async with Client([member.endpoint]) as client:
            await client.get("k")
            await client.aclose()
            with pytest.raises(trio.ClosedResourceError):
                await client.get("k")

    run(test)


# -- The blocking client --------------------------------------------------------------


def test_sync_client_round_trip_and_thread_exit() -> None:
    def blocking(endpoint: str, compacting: str) -> None:
        with SyncClient([endpoint, compacting], request_timeout=1.0) as client:
            assert client.put("k", "v").header.revision == 5
            assert client.get("k").kvs[0].value == b"v:k"
            assert client.status(compacting).name == "c"
        with SyncClient(compacting, request_timeout=1.0) as client, pytest.raises(CompactedError):
            client.get("k", revision=1)

    async def test(nursery: trio.Nursery) -> None:
        member = await FakeMember.start(nursery, echo)

        async def status_or_compacted(exchange: Exchange) -> None:
            if isinstance(exchange.request, api.StatusRequest):
                await echo(exchange)
            else:
                await fails_with(ErrorCode.COMPACTED, compact_revision=3)(exchange)

        compacting = await FakeMember.start(nursery, status_or_compacted, name="c")
        await trio.to_thread.run_sync(blocking, member.endpoint, compacting.endpoint)

    run(test)
    assert not [t for t in threading.enumerate() if t.name == "kvstore-client"]
