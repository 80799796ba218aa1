"""The kvstore client: several endpoints, fail-over, and retries only where safe.

Use it as an async context manager (it owns a nursery for its connection reader)::

    async with Client(["127.0.0.1:2379", "127.0.0.1:22379"]) as client:
        await client.put("greeting", "hello")
        print((await client.get("greeting")).kvs[0].value)

Non-async code uses :class:`SyncClient`, which has the same methods::

    with SyncClient("127.0.0.1:2379,127.0.0.1:22379") as client:
        client.put("greeting", "hello")

**Connection.**  One TCP connection at a time, opened lazily by the first
request; many concurrent calls share it, multiplexed by ``request_id``; at most
``max_in_flight`` calls are outstanding, the others wait their turn.

**Time.**  Every call is bounded by ``request_timeout`` *overall*: connecting,
waiting for a turn, fail-over, back-off and retries all count.  A member that
has no leader, or accepts connections and never answers, is not waited on for
longer than that.

**Fail-over.**  Endpoints are tried round-robin, from where the last one left
off; after every full round without success the client backs off (25 ms,
doubling up to 500 ms).  The client moves on when it cannot connect (each try
bounded by ``connect_timeout``), when the connection ends, when a read gets no
answer within a third of ``request_timeout``, when a request times out, and
when a member answers "try elsewhere" (``no_leader``, ``not_leader``,
``unavailable``, ``stopped``, ``timeout``, ``leader_changed``).  A ``not_leader``
answer naming the leader sends the client there next.

**Retries.**  A *read* (range, a txn of ranges only, status, lease
time-to-live and list) has no effect, so it is retried on any of those
failures; so is a lease keep-alive (renewing twice is renewing once).  A
*write* (put, delete, a txn with a write, compaction, lease grant and revoke)
is retried only when it **definitely did not happen**: it was
never written to a socket, or the member's error says ``definite=True``.  A
write sent on a connection that then ended, or still unanswered at the
deadline, or answered with an indefinite error, raises :class:`OutcomeUnknown`:
it may or may not have been applied, and the caller must find out (read it
back) before retrying.

**Leases.**  Keep-alive and time-to-live are served by the leader only; a
follower's ``not_leader`` answer names it and the client goes there.  For a
lease kept alive in the background, use :class:`kvstore.concurrency.Session`.

**Watches.**  :meth:`Client.watch` streams changes on the same connection as
every other call; a watch survives fail-over without a gap or a duplicate and
never blocks the connection on a slow consumer (see :class:`Watch`).

Every failure is a :class:`KvError` carrying ``code``, ``definite`` and
``message``.  Using a closed client raises :class:`trio.ClosedResourceError`.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import threading
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO, Concatenate, ParamSpec, TypeVar

import msgspec
import trio

from kvstore import api
from kvstore.api import (
    ClientFrame,
    CompactionRequest,
    CompactionResponse,
    DeleteRangeResponse,
    Error,
    ErrorCode,
    Event,
    LeaseGrantRequest,
    LeaseGrantResponse,
    LeaseKeepAliveRequest,
    LeaseKeepAliveResponse,
    LeaseLeasesRequest,
    LeaseLeasesResponse,
    LeaseRevokeRequest,
    LeaseRevokeResponse,
    LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
    MemberAddRequest,
    MemberAddResponse,
    MemberListRequest,
    MemberListResponse,
    MemberPromoteRequest,
    MemberPromoteResponse,
    MemberRemoveRequest,
    MemberRemoveResponse,
    MoveLeaderRequest,
    MoveLeaderResponse,
    PutResponse,
    RangeRequest,
    RangeResponse,
    Request,
    Response,
    SnapshotRequest,
    SortOrder,
    SortTarget,
    StatusRequest,
    StatusResponse,
    TxnRequest,
    TxnResponse,
    WatchCancelRequest,
    WatchCreateRequest,
    WatchProgressRequest,
    WatchResponse,
)
from kvstore.txn import Compare, Data, Op, key_range
from raft.framing import FrameError, FrameReader, encode_frame
from raft.outbox import Outbox

if TYPE_CHECKING:
    from kvstore.snapshot_client import SnapshotDownload

__all__ = [
    "Client",
    "CompactedError",
    "Compare",
    "InvalidRequest",
    "KvError",
    "NoLeaderError",
    "Op",
    "OutcomeUnknown",
    "SyncClient",
    "SyncWatch",
    "Unavailable",
    "Watch",
    "error_to_exception",
    "normalize_endpoint",
]

log = logging.getLogger(__name__)

# -- Errors ---------------------------------------------------------------------------


class KvError(Exception):
    """A failed request.  ``definite``: the operation certainly did not happen.

    ``endpoint`` is the member that answered (empty for client-side failures);
    ``leader`` is the leader's client address when the member named one.
    """

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode = ErrorCode.INTERNAL,
        definite: bool = True,
        endpoint: str = "",
        leader: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.definite = definite
        self.endpoint = endpoint
        self.leader = leader


class OutcomeUnknown(KvError):
    """A write that may or may not have been applied (never raised for reads)."""

    def __init__(
        self, message: str, *, code: ErrorCode = ErrorCode.TIMEOUT, endpoint: str = ""
    ) -> None:
        super().__init__(message, code=code, definite=False, endpoint=endpoint)


class InvalidRequest(KvError):
    """The request was rejected as it stands (bad argument, empty key, too large,
    too many ops, duplicate key, key or lease not found, future revision, ...)."""


class CompactedError(KvError):
    """The requested revision was compacted; ``compact_revision`` is the oldest kept.

    Raised by reads at a compacted revision and by a :class:`Watch` whose next
    revision was compacted: re-list (read at the latest revision) and watch
    again from the revision after that read.
    """

    compact_revision: int = 0

    @classmethod
    def at(cls, message: str, compact_revision: int, *, endpoint: str = "") -> CompactedError:
        exc = cls(message, code=ErrorCode.COMPACTED, endpoint=endpoint)
        exc.compact_revision = compact_revision
        return exc


class Unavailable(KvError):
    """The cluster could not serve the request in time (nothing reachable,
    member stopping, no answer).  Definite for reads and for unsent writes."""


class NoLeaderError(Unavailable):
    """The members reached had no leader (or were not it) until the deadline."""


_EXCEPTIONS: dict[ErrorCode, type[KvError]] = {
    ErrorCode.INVALID_ARGUMENT: InvalidRequest,
    ErrorCode.EMPTY_KEY: InvalidRequest,
    ErrorCode.REQUEST_TOO_LARGE: InvalidRequest,
    ErrorCode.TOO_MANY_OPS: InvalidRequest,
    ErrorCode.DUPLICATE_KEY: InvalidRequest,
    ErrorCode.KEY_NOT_FOUND: InvalidRequest,
    ErrorCode.FUTURE_REVISION: InvalidRequest,
    ErrorCode.LEASE_NOT_FOUND: InvalidRequest,
    ErrorCode.MALFORMED: InvalidRequest,
    ErrorCode.UNKNOWN_REQUEST: InvalidRequest,
    ErrorCode.MEMBER_NOT_FOUND: InvalidRequest,
    ErrorCode.MEMBER_EXISTS: InvalidRequest,
    ErrorCode.FAILED_PRECONDITION: InvalidRequest,
    ErrorCode.COMPACTED: CompactedError,
    ErrorCode.NO_LEADER: NoLeaderError,
    ErrorCode.NOT_LEADER: NoLeaderError,
    ErrorCode.TIMEOUT: Unavailable,
    ErrorCode.LEADER_CHANGED: Unavailable,
    ErrorCode.STOPPED: Unavailable,
    ErrorCode.UNAVAILABLE: Unavailable,
    ErrorCode.INTERNAL: KvError,
}

TRY_ELSEWHERE = frozenset(
    {
        ErrorCode.NO_LEADER,
        ErrorCode.NOT_LEADER,
        ErrorCode.UNAVAILABLE,
        ErrorCode.STOPPED,
        ErrorCode.TIMEOUT,
        ErrorCode.LEADER_CHANGED,
    }
)
"""Codes that say "this member cannot serve it now; another may"."""


def error_to_exception(error: Error, *, write: bool, endpoint: str = "") -> KvError:
    """The exception for ``error``: :class:`OutcomeUnknown` for an indefinite
    error on a write, else by code.  A failed read is always definite."""
    if write and not error.definite:
        return OutcomeUnknown(error.message, code=error.code, endpoint=endpoint)
    cls = _EXCEPTIONS.get(error.code, KvError)
    exc = cls(error.message, code=error.code, endpoint=endpoint, leader=error.leader)
    if isinstance(exc, CompactedError):
        exc.compact_revision = error.compact_revision
    return exc


# -- Endpoints ------------------------------------------------------------------------


def normalize_endpoint(endpoint: str) -> str:
    """``"host:port"`` from ``host:port``, ``scheme://host:port`` or ``[v6]:port``."""
    text = endpoint.strip()
    text = text.split("://", 1)[-1].rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad endpoint {endpoint!r}: expected host:port")
    return f"{host}:{int(port)}"


def _host_port(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


def _parse_endpoints(endpoints: str | Iterable[str]) -> list[str]:
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    parsed = list(dict.fromkeys(normalize_endpoint(e) for e in items if e.strip()))
    if not parsed:
        raise ValueError("no endpoints given")
    return parsed


def _is_read(request: Request) -> bool:
    """Whether ``request`` may be repeated without changing the outcome: reads,
    and lease keep-alives (renewing twice is renewing once)."""
    if isinstance(
        request,
        RangeRequest
        | StatusRequest
        | LeaseKeepAliveRequest
        | LeaseTimeToLiveRequest
        | LeaseLeasesRequest
        | SnapshotRequest
        | MemberListRequest
        | MoveLeaderRequest,
    ):
        return True
    if isinstance(request, TxnRequest):
        return all(_is_read(op) for op in itertools.chain(request.success, request.failure))
    return False


# -- One connection -------------------------------------------------------------------


class _NotSent(Exception):
    """The request was certainly not written: safe to retry anywhere."""


class _Lost(Exception):
    """The connection ended after the request may have been written."""


class _Slot:
    """Where the reader task leaves one request's answer for its caller.

    The caller sleeps in :meth:`wait` (trio's lowest-level park: no event or
    lock per request); :meth:`settle` wakes it.  ``answer`` stays None when the
    connection ended first; ``sent`` says whether the request's bytes had been
    handed to the socket by then.
    """

    __slots__ = ("answer", "sent", "settled", "task")

    def __init__(self) -> None:
        self.answer: Response | Error | None = None
        self.settled = False
        self.sent = False
        self.task: trio.lowlevel.Task | None = None

    def settle(self, answer: Response | Error | None) -> None:
        if self.settled:
            return
        self.settled = True
        self.answer = answer
        task, self.task = self.task, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    async def wait(self) -> None:
        if self.settled:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        self.task = trio.lowlevel.current_task()

        def abort(raise_cancel: object) -> trio.lowlevel.Abort:
            self.task = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)


class _Connection:
    """One TCP connection to one member.  :meth:`run` (a task in the client's
    nursery) reads every :class:`~kvstore.api.ServerFrame` and wakes the waiter
    of its ``request_id``; answers for requests nobody waits for are dropped.

    A lone request (nothing else in flight on the connection) is written to
    the socket at once; otherwise requests queue in an
    :class:`~raft.outbox.Outbox`, whose writer task sends everything queued in
    one system call, so concurrent callers never wait on each other to write.
    """

    def __init__(self, endpoint: str, stream: trio.SocketStream) -> None:
        self.endpoint = endpoint
        self._stream = stream
        self._reader = FrameReader(stream, api.MAX_FRAME_BYTES)
        self._outbox = Outbox(on_taken=self._mark_sent)
        self._unsent: deque[_Slot] = deque()
        """Slots of the requests queued in the outbox, in order."""
        self._pending: dict[int, _Slot] = {}
        self._streams: dict[int, Callable[[Response | Error | None], None]] = {}
        self._ids = itertools.count(1)
        self._scope = trio.CancelScope()
        self.dead = False
        self.retired = False

    @property
    def usable(self) -> bool:
        return not (self.dead or self.retired)

    async def run(self) -> None:
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_loop, nursery.cancel_scope)
                    await self._read_loop()
                    nursery.cancel_scope.cancel()
        finally:
            self.close()
            await trio.aclose_forcefully(self._stream)

    async def _read_loop(self) -> None:
        """Route answers until the connection ends (cleanly or not)."""
        pending, streams, reader = self._pending, self._streams, self._reader
        decode = api.decode_server_frame
        try:
            while (payload := await reader.read()) is not None:
                frame = decode(payload)
                sink = streams.get(frame.request_id)
                if sink is not None:
                    sink(frame.response)  # never blocks: see Watch._feed
                    continue
                slot = pending.get(frame.request_id)
                if slot is not None:
                    slot.settle(frame.response)
        except (FrameError, msgspec.DecodeError, trio.BrokenResourceError, OSError) as exc:
            log.info("connection to %s failed: %s", self.endpoint, exc)

    async def _write_loop(self, connection_scope: trio.CancelScope) -> None:
        try:
            await self._outbox.pump(self._stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.info("connection to %s failed: %s", self.endpoint, exc)
        connection_scope.cancel()  # the run task closes the connection

    def _mark_sent(self, count: int) -> None:
        """The outbox took the next ``count`` queued requests to write."""
        for _ in range(count):
            self._unsent.popleft().sent = True

    def close(self) -> None:
        """End the connection now; waiters of sent requests get :class:`_Lost`,
        of unsent ones :class:`_NotSent`."""
        self.dead = True
        self._scope.cancel()
        for slot in self._pending.values():
            slot.settle(None)
        streams, self._streams = self._streams, {}
        for sink in streams.values():
            sink(None)

    def retire(self) -> None:
        """Take no new requests; close once the outstanding ones are answered."""
        self.retired = True
        if not self._pending:
            self.close()

    async def roundtrip(self, request: Request, on_send: Callable[[], None]) -> Response | Error:
        """Send ``request`` and wait for its answer.

        ``on_send`` is called once the request is queued: from then on its
        bytes may leave.  Raises :class:`_NotSent` if the connection was dead
        before the bytes went to the socket, :class:`_Lost` if it died after.
        Cancellation does not affect the connection (the writer task sends
        whole frames).
        """
        request_id = next(self._ids)
        payload = _encode_request(request_id, request)
        if self.dead:
            raise _NotSent
        slot = self._pending[request_id] = _Slot()
        try:
            on_send()
            # A lone request goes straight out; with others in flight, the
            # writer task batches them (see raft.outbox).
            if self._outbox.put(payload, tokens=1, may_write_now=len(self._pending) == 1):
                slot.sent = True
            else:
                self._unsent.append(slot)
            await slot.wait()
            if slot.answer is None:
                raise _Lost if slot.sent else _NotSent
            return slot.answer
        finally:
            del self._pending[request_id]
            if self.retired and not self._pending:
                self.close()

    def new_stream(self, sink: Callable[[Response | Error | None], None]) -> int:
        """Reserve a request id whose every answer goes to ``sink`` (called
        from the reader task: it must not block), until :meth:`end_stream`.
        ``sink(None)`` means the connection ended.  Raises :class:`_NotSent`
        if the connection is already dead."""
        if self.dead:
            raise _NotSent
        request_id = next(self._ids)
        self._streams[request_id] = sink
        return request_id

    def end_stream(self, request_id: int) -> None:
        """Stop routing answers for ``request_id``; later ones are dropped."""
        self._streams.pop(request_id, None)

    async def send(self, request: Request, request_id: int | None = None) -> None:
        """Write ``request`` without waiting for an answer (one is dropped if it
        comes, unless ``request_id`` is a stream's); returns once it is written.
        Raises :class:`_NotSent` or :class:`_Lost` like :meth:`roundtrip`."""
        if request_id is None:
            request_id = next(self._ids)
        payload = _encode_request(request_id, request)
        if self.dead:
            raise _NotSent
        self._outbox.put(payload)
        try:
            await self._outbox.drained()
        except trio.BrokenResourceError:
            raise _Lost from None


def _encode_request(request_id: int, request: Request) -> bytes:
    payload = encode_frame(api.encode(ClientFrame(request_id, request)))
    if len(payload) > api.MAX_FRAME_BYTES:
        raise InvalidRequest(
            f"request of {len(payload)} bytes exceeds the {api.MAX_FRAME_BYTES}-byte limit",
            code=ErrorCode.REQUEST_TOO_LARGE,
        )
    return payload


# -- The client -----------------------------------------------------------------------


@dataclass
class _Retry:
    """A failed attempt that is safe to repeat elsewhere."""

    reason: str
    leader: str = ""
    error: KvError | None = None


class _DeadlineReached(Exception):
    """A call's overall deadline passed (turned into the call's error by
    :meth:`Client.request`)."""


class _Call:
    """One request's book-keeping across its attempts."""

    def __init__(self, request: Request, deadline: float = math.inf) -> None:
        self.request = request
        self.deadline = deadline
        self.write = not _is_read(request)
        self.failures = 0
        self.reasons: dict[str, str] = {}
        self.last_error: KvError | None = None
        self.unanswered: _Connection | None = None
        """The connection this request was last sent on, until it answers."""

    def mark_sent(self, conn: _Connection) -> None:
        self.unanswered = conn

    def failed(self, endpoint: str, reason: str, n_endpoints: int) -> float:
        """Record a failed attempt; the back-off before the next one."""
        self.reasons[endpoint] = reason
        self.failures += 1
        if self.failures % n_endpoints:
            return 0.0
        return min(0.5, 0.025 * 2.0 ** (self.failures // n_endpoints - 1))

    def give_up(self, timeout: float) -> KvError:
        """The exception for a call still unfinished at its deadline."""
        where = "; ".join(f"{e}: {r}" for e, r in self.reasons.items())
        if self.write and self.unanswered is not None:
            endpoint = self.unanswered.endpoint
            return OutcomeUnknown(
                f"no answer from {endpoint} within {timeout:g}s; the write may have been applied",
                endpoint=endpoint,
            )
        if self.last_error is not None:
            error = self.last_error
            message = f"{error.message} (gave up after {timeout:g}s: {where})"
            return type(error)(message, code=error.code, endpoint=error.endpoint)
        return Unavailable(
            f"no endpoint answered within {timeout:g}s ({where or 'no attempt finished'})",
            code=ErrorCode.UNAVAILABLE,
        )


R = TypeVar("R", bound=Response)


def _expect(response: Response, kind: type[R]) -> R:
    if not isinstance(response, kind):
        raise KvError(f"expected a {kind.__name__}, got {type(response).__name__}", definite=False)
    return response


class Client:
    """A trio client over ``endpoints`` (a list of ``"host:port"``, or one
    comma-separated string).  Enter it with ``async with``; see the module
    docstring for what is retried and what is definite.

    ``request_timeout`` bounds each call overall; ``connect_timeout`` each
    connection attempt; ``max_in_flight`` the calls outstanding at once.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        request_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        max_in_flight: int = 1024,
    ) -> None:
        self._endpoints = _parse_endpoints(endpoints)
        self._request_timeout = request_timeout
        self._read_attempt_timeout = request_timeout / 3
        self._connect_timeout = connect_timeout
        self._in_flight = trio.Semaphore(max_in_flight)
        self._connect_lock = trio.Lock()
        self._conn: _Connection | None = None
        self._connections: set[_Connection] = set()
        self._next = 0
        self._hint = ""
        self._stack: AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None
        self._background: set[trio.CancelScope] = set()
        self._closed = False

    @property
    def endpoints(self) -> list[str]:
        return list(self._endpoints)

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    @property
    def request_timeout(self) -> float:
        """The bound on each call, in seconds."""
        return self._request_timeout

    @property
    def connect_timeout(self) -> float:
        """The bound on each connection attempt, in seconds."""
        return self._connect_timeout

    @property
    def endpoint(self) -> str | None:
        """The member the client is connected to now, if any."""
        conn = self._conn
        return conn.endpoint if conn is not None and conn.usable else None

    async def __aenter__(self) -> Client:
        if self._stack is not None or self._closed:
            raise RuntimeError("a Client can be entered only once")
        async with AsyncExitStack() as stack:
            self._nursery = await stack.enter_async_context(trio.open_nursery())
            stack.push_async_callback(self.aclose)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._stack is not None
        # The block's own exception must not pass through the nursery, which
        # would wrap it in an ExceptionGroup: close first, then let it propagate.
        await self._stack.__aexit__(None, None, None)
        return None

    async def aclose(self) -> None:
        """Close the connection.  Idempotent.  Calls in flight fail: unsent ones
        with :class:`trio.ClosedResourceError`, sent writes with :class:`OutcomeUnknown`."""
        self._closed = True
        for scope in list(self._background):
            scope.cancel()
        for conn in list(self._connections):
            conn.close()
        await trio.lowlevel.checkpoint()

    def start_background_task(
        self, async_fn: Callable[[], Awaitable[object]], *, name: str | None = None
    ) -> trio.CancelScope:
        """Run ``async_fn()`` in the client's nursery, for work that must outlive
        one call (a watch, a session's keep-alives).  It is cancelled when the
        client closes, or earlier through the returned scope.  It must not
        raise: an exception would tear the client down."""
        if self._nursery is None or self._closed:
            raise trio.ClosedResourceError("the client is closed or not entered")
        scope = trio.CancelScope()
        self._background.add(scope)

        async def run() -> None:
            try:
                with scope:
                    await async_fn()
            finally:
                self._background.discard(scope)

        self._nursery.start_soon(run, name=name or async_fn)
        return scope

    # -- KV API -----------------------------------------------------------------------

    async def put(
        self,
        key: Data,
        value: Data = b"",
        *,
        lease: int = 0,
        prev_kv: bool = False,
        ignore_value: bool = False,
        ignore_lease: bool = False,
    ) -> PutResponse:
        request = Op.put(
            key,
            value,
            lease=lease,
            prev_kv=prev_kv,
            ignore_value=ignore_value,
            ignore_lease=ignore_lease,
        )
        return _expect(await self.request(request), PutResponse)

    async def get(
        self,
        key: Data,
        range_end: Data | None = None,
        *,
        prefix: bool = False,
        from_key: bool = False,
        limit: int = 0,
        revision: int = 0,
        sort_order: SortOrder = SortOrder.NONE,
        sort_target: SortTarget = SortTarget.KEY,
        serializable: bool = False,
        keys_only: bool = False,
        count_only: bool = False,
        min_mod_revision: int = 0,
        max_mod_revision: int = 0,
        min_create_revision: int = 0,
        max_create_revision: int = 0,
    ) -> RangeResponse:
        """Read ``key``, ``[key, range_end)``, a ``prefix`` or every key ``>= key``
        (``from_key``).  Linearizable unless ``serializable``."""
        request = Op.get(
            key,
            range_end,
            prefix=prefix,
            from_key=from_key,
            limit=limit,
            revision=revision,
            sort_order=sort_order,
            sort_target=sort_target,
            serializable=serializable,
            keys_only=keys_only,
            count_only=count_only,
            min_mod_revision=min_mod_revision,
            max_mod_revision=max_mod_revision,
            min_create_revision=min_create_revision,
            max_create_revision=max_create_revision,
        )
        return _expect(await self.request(request), RangeResponse)

    async def delete(
        self,
        key: Data,
        range_end: Data | None = None,
        *,
        prefix: bool = False,
        from_key: bool = False,
        prev_kv: bool = False,
    ) -> DeleteRangeResponse:
        request = Op.delete(key, range_end, prefix=prefix, from_key=from_key, prev_kv=prev_kv)
        return _expect(await self.request(request), DeleteRangeResponse)

    async def txn(
        self,
        compare: Iterable[api.Compare],
        success: Iterable[api.RequestOp] = (),
        failure: Iterable[api.RequestOp] = (),
    ) -> TxnResponse:
        """If every compare holds run ``success``, else ``failure``, atomically.
        Build the parts with :class:`Compare` and :class:`Op`."""
        return _expect(await self.request(Op.txn(compare, success, failure)), TxnResponse)

    async def compact(self, revision: int, physical: bool = False) -> CompactionResponse:
        request = CompactionRequest(revision=revision, physical=physical)
        return _expect(await self.request(request), CompactionResponse)

    async def status(self, endpoint: str | None = None) -> StatusResponse:
        """The status of ``endpoint``, asked on a connection of its own and never
        failed over; by default of the member the client is connected to."""
        if endpoint is None:
            return _expect(await self.request(StatusRequest()), StatusResponse)
        endpoint = normalize_endpoint(endpoint)
        with trio.move_on_after(self._request_timeout):
            answer = await self._ask_once(endpoint, StatusRequest())
            if isinstance(answer, Error):
                raise error_to_exception(answer, write=False, endpoint=endpoint)
            return _expect(answer, StatusResponse)
        raise Unavailable(f"{endpoint} did not answer within {self._request_timeout:g}s")

    # -- Leases -------------------------------------------------------------------------

    async def lease_grant(self, ttl: int, id: int = 0) -> LeaseGrantResponse:
        """Grant a lease of ``ttl`` seconds; the server raises a TTL below its
        minimum (1.5 election timeouts) and picks the id if ``id`` is 0.  The
        answer has the id and the TTL actually granted.  Not retried once sent
        (a retry could grant a second lease): may raise :class:`OutcomeUnknown`."""
        request = LeaseGrantRequest(ttl=ttl, id=id)
        return _expect(await self.request(request), LeaseGrantResponse)

    async def lease_revoke(self, id: int) -> LeaseRevokeResponse:
        """Revoke lease ``id``; every key attached to it is deleted in one
        revision.  Raises :class:`InvalidRequest` (``lease_not_found``) if it
        does not exist."""
        return _expect(await self.request(LeaseRevokeRequest(id=id)), LeaseRevokeResponse)

    async def lease_keep_alive_once(self, id: int) -> LeaseKeepAliveResponse:
        """Renew lease ``id`` for its whole TTL once.  The answer's ``ttl`` is 0
        if the lease has expired or never existed.  Only the leader serves it;
        the client follows a ``not_leader`` answer there, and retries freely
        (renewing twice is harmless)."""
        request = LeaseKeepAliveRequest(id=id)
        return _expect(await self.request(request), LeaseKeepAliveResponse)

    async def lease_time_to_live(self, id: int, keys: bool = False) -> LeaseTimeToLiveResponse:
        """Seconds lease ``id`` has left (``ttl == -1``: expired or unknown),
        its granted TTL and, with ``keys``, the keys attached.  Served by the
        leader, like keep-alives."""
        request = LeaseTimeToLiveRequest(id=id, keys=keys)
        return _expect(await self.request(request), LeaseTimeToLiveResponse)

    async def lease_leases(self) -> LeaseLeasesResponse:
        """The ids of every live lease."""
        return _expect(await self.request(LeaseLeasesRequest()), LeaseLeasesResponse)

    # -- Membership ---------------------------------------------------------------------

    async def member_add(
        self, name: str, peer_url: str, *, learner: bool = False
    ) -> MemberAddResponse:
        """Add a member that will listen for peers on ``peer_url``
        (``host:port``); the answer has its new id and the cluster id to start
        it with (``--initial-cluster-state existing``).  Not retried once sent:
        may raise :class:`OutcomeUnknown`."""
        request = MemberAddRequest(name=name, peer_url=peer_url, is_learner=learner)
        return _expect(await self.request(request), MemberAddResponse)

    async def member_remove(self, id: int) -> MemberRemoveResponse:
        """Remove member ``id`` (removing the leader hands leadership over first)."""
        return _expect(await self.request(MemberRemoveRequest(id=id)), MemberRemoveResponse)

    async def member_promote(self, id: int) -> MemberPromoteResponse:
        """Make learner ``id`` a voter; :class:`InvalidRequest`
        (``failed_precondition``) until it has caught up with the leader."""
        return _expect(await self.request(MemberPromoteRequest(id=id)), MemberPromoteResponse)

    async def member_list(self, linearizable: bool = True) -> MemberListResponse:
        request = MemberListRequest(linearizable=linearizable)
        return _expect(await self.request(request), MemberListResponse)

    async def move_leader(self, target_id: int) -> MoveLeaderResponse:
        """Hand leadership to voter ``target_id``; returns once it leads."""
        return _expect(
            await self.request(MoveLeaderRequest(target_id=target_id)), MoveLeaderResponse
        )

    # -- Watch --------------------------------------------------------------------------

    def watch(
        self,
        key: Data,
        range_end: Data | None = None,
        *,
        prefix: bool = False,
        from_key: bool = False,
        start_revision: int = 0,
        prev_kv: bool = False,
        no_put: bool = False,
        no_delete: bool = False,
        progress_notify: bool = False,
        max_buffered: int = 256,
    ) -> Watch:
        """Watch ``key``, ``[key, range_end)``, a ``prefix`` or every key
        ``>= key`` (``from_key``) from ``start_revision`` (inclusive; 0 = the
        revision after the one current when the watch is created).

        Returns a :class:`Watch`: enter it with ``async with`` (which returns
        once the member has created the watch, so every write made after that
        is seen) and iterate it for :class:`~kvstore.api.WatchResponse`
        batches.  See :class:`Watch` for fail-over, ordering and backpressure.
        """
        start, end = key_range(key, range_end, prefix=prefix, from_key=from_key)
        if start_revision < 0:
            raise ValueError("start_revision must not be negative")
        if max_buffered < 1:
            raise ValueError("max_buffered must be at least 1")
        request = WatchCreateRequest(
            key=start,
            range_end=end,
            start_revision=start_revision,
            prev_kv=prev_kv,
            no_put=no_put,
            no_delete=no_delete,
            progress_notify=progress_notify,
        )
        return Watch(self, request, max_buffered)

    # -- Snapshots ----------------------------------------------------------------------

    def snapshot(
        self, endpoint: str | None = None, *, serializable: bool = False, chunk_bytes: int = 0
    ) -> SnapshotDownload:
        """A consistent copy of a member's whole KV state, streamed in chunks
        and verified against its SHA-256 (see :class:`~kvstore.snapshot_client.SnapshotDownload`):
        ``async with client.snapshot() as download: async for chunk in download: ...``.

        ``endpoint`` picks the member (default: any, with fail-over).  The copy
        holds every write acknowledged before the call unless ``serializable``.
        """
        from kvstore.snapshot_client import SnapshotDownload  # it builds on this module

        request = SnapshotRequest(chunk_bytes=chunk_bytes, serializable=serializable)
        return SnapshotDownload(self, request, endpoint)

    async def save_snapshot(
        self,
        file: BinaryIO,
        endpoint: str | None = None,
        *,
        serializable: bool = False,
        chunk_bytes: int = 0,
    ) -> SnapshotDownload:
        """Write a snapshot's payload (the state machine's snapshot bytes) to
        ``file`` and return the finished download (``info``, ``header``,
        verified ``sha256``).  On any failure ``file`` holds a partial payload:
        the caller discards it.  For a backup file use :func:`kvstore.backup.save_backup`."""
        from kvstore.snapshot_client import save_snapshot  # it builds on this module

        return await save_snapshot(
            self, file, endpoint, serializable=serializable, chunk_bytes=chunk_bytes
        )

    # -- Requests, retries and fail-over ------------------------------------------------

    async def request(self, request: Request) -> Response:
        """Send any request with the retry rules of the module docstring."""
        call = _Call(request, trio.current_time() + self._request_timeout)
        try:
            return await self._call(call)
        except _DeadlineReached:
            pass
        if call.unanswered is not None:
            self._fail_over(call.unanswered)  # a member that does not answer is suspect
        raise call.give_up(self._request_timeout)

    async def _call(self, call: _Call) -> Response:
        """Attempts until one answers; :class:`_DeadlineReached` at the deadline.

        The common case (a free turn, a live connection, one attempt) costs one
        cancel scope: the others are entered only on the slow paths."""
        in_flight = self._in_flight
        try:
            in_flight.acquire_nowait()
        except trio.WouldBlock:
            with trio.move_on_at(call.deadline):
                await in_flight.acquire()
            if trio.current_time() >= call.deadline:
                raise _DeadlineReached from None
        try:
            while True:
                conn = self._conn
                if conn is None or not conn.usable:
                    with trio.move_on_at(call.deadline):
                        conn = await self._connection(call)
                    if trio.current_time() >= call.deadline:
                        raise _DeadlineReached
                    assert conn is not None
                outcome = await self._attempt(conn, call)
                if not isinstance(outcome, _Retry):
                    return outcome
                log.debug(
                    "%s failed on %s: %s", type(call.request).__name__, conn.endpoint, outcome
                )
                if outcome.error is not None:
                    call.last_error = outcome.error
                self._fail_over(conn, outcome.leader)
                pause = call.failed(conn.endpoint, outcome.reason, len(self._endpoints))
                if trio.current_time() + pause >= call.deadline:
                    await trio.sleep_until(call.deadline)
                    raise _DeadlineReached
                await trio.sleep(pause)
        finally:
            in_flight.release()

    async def _attempt(self, conn: _Connection, call: _Call) -> Response | _Retry:
        """One try on ``conn``: the response, a safe retry, or an exception
        (:class:`_DeadlineReached` when the call's deadline passes)."""
        deadline = call.deadline
        if not call.write:
            deadline = min(deadline, trio.current_time() + self._read_attempt_timeout)
        with trio.move_on_at(deadline):
            try:
                answer = await conn.roundtrip(call.request, functools.partial(call.mark_sent, conn))
            except _NotSent:
                call.unanswered = None
                return _Retry("connection closed")
            except _Lost:
                call.unanswered = None
                if call.write:
                    raise OutcomeUnknown(
                        f"connection to {conn.endpoint} lost after the request was sent; "
                        "it may have been applied",
                        code=ErrorCode.UNAVAILABLE,
                        endpoint=conn.endpoint,
                    ) from None
                return _Retry("connection lost")
            call.unanswered = None
            if isinstance(answer, Error):
                exc = error_to_exception(answer, write=call.write, endpoint=conn.endpoint)
                if answer.code in TRY_ELSEWHERE and not isinstance(exc, OutcomeUnknown):
                    return _Retry(answer.message, answer.leader, exc)
                raise exc
            return answer
        if trio.current_time() >= call.deadline:
            raise _DeadlineReached
        call.unanswered = None  # only reads have an attempt timeout
        return _Retry(f"no answer within {self._read_attempt_timeout:g}s")

    async def _connection(self, call: _Call) -> _Connection:
        """The current connection, or a new one to the next endpoint to try."""
        if self._nursery is None:
            raise RuntimeError("use the client inside `async with Client(...)`")
        async with self._connect_lock:
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("the client is closed")
                if self._conn is not None and self._conn.usable:
                    return self._conn
                if self._conn is not None:
                    self._fail_over(self._conn)  # it died under us
                endpoint, self._hint = self._hint or self._endpoints[self._next], ""
                try:
                    with trio.fail_after(self._connect_timeout):
                        stream = await trio.open_tcp_stream(*_host_port(endpoint))
                except (OSError, trio.TooSlowError) as exc:
                    self._advance_past(endpoint)
                    reason = str(exc) or "connect timed out"
                    await trio.sleep(call.failed(endpoint, reason, len(self._endpoints)))
                    continue
                if self._closed:
                    await trio.aclose_forcefully(stream)
                    continue
                self._conn = _Connection(endpoint, stream)
                self._connections.add(self._conn)
                self._nursery.start_soon(self._run_connection, self._conn)
                log.debug("connected to %s", endpoint)

    async def _run_connection(self, conn: _Connection) -> None:
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)

    def _advance_past(self, endpoint: str) -> None:
        if endpoint in self._endpoints:
            self._next = (self._endpoints.index(endpoint) + 1) % len(self._endpoints)

    def _fail_over(self, conn: _Connection, leader: str = "") -> None:
        """Send new requests elsewhere than ``conn``: to ``leader`` if named,
        else to the endpoint after it.  A no-op if that already happened."""
        if conn is not self._conn:
            return
        conn.retire()
        self._conn = None
        self._advance_past(conn.endpoint)
        if leader:
            try:
                self._hint = normalize_endpoint(leader)
            except ValueError:
                log.warning("ignoring a malformed leader address %r", leader)

    async def _ask_once(self, endpoint: str, request: Request) -> Response | Error:
        """``request`` on a connection of its own to ``endpoint``; no retries."""
        try:
            with trio.fail_after(self._connect_timeout):
                stream = await trio.open_tcp_stream(*_host_port(endpoint))
            async with stream:
                await stream.send_all(encode_frame(api.encode(ClientFrame(1, request))))
                payload = await FrameReader(stream, api.MAX_FRAME_BYTES).read()
                if payload is None:
                    raise FrameError("connection closed before the answer")
                return api.decode_server_frame(payload).response
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, FrameError) as exc:
            raise Unavailable(f"{endpoint}: {exc or 'connect timed out'}") from exc
        except msgspec.DecodeError as exc:
            raise KvError(f"{endpoint} sent a malformed answer: {exc}") from exc


# -- Watches --------------------------------------------------------------------------


class _Attempt:
    """One server-side watch: a create request on one connection, until it ends."""

    __slots__ = ("answer", "conn", "created", "ended", "outcome", "watch_id")

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn
        self.watch_id = 0
        self.created = trio.Event()
        self.ended = trio.Event()
        self.outcome = ""
        """Why it ended: ``lost``, ``overflow``, ``canceled`` or ``error``."""
        self.answer: WatchResponse | Error | None = None

    def end(self, outcome: str, answer: WatchResponse | Error | None = None) -> None:
        if not self.ended.is_set():
            self.outcome, self.answer = outcome, answer
            self.ended.set()


class Watch:
    """A watch that survives fail-over.  Get one from :meth:`Client.watch`::

        async with client.watch("config/", prefix=True) as watch:
            async for response in watch:          # a WatchResponse per batch
                for event in response.events:
                    ...

    **What you get.**  Iterating yields :class:`~kvstore.api.WatchResponse`
    values that have events (every event of one revision is in the same
    response; a response may hold several revisions), in revision order, each
    event exactly once; and *progress notifications* (no events: every event
    up to ``header.revision`` has been yielded), after :meth:`request_progress`
    or, with ``progress_notify``, when the watch is idle.  ``watch_id`` is the
    id of the member's watch of the moment and changes on resume.
    :meth:`events` yields the events one by one instead.

    **Fail-over.**  The watch lives on the client's connection, multiplexed
    with other requests and watches.  When that connection ends, the member
    cancels the watch (e.g. because it lost its leader) or does not create it
    in time, the client fails over like any request and re-creates the watch
    from the revision after the last one it received (or, if none yet, from
    the original start; for a watch "from now", from the revision after the
    one current when it was first created).  Any event at or below the last
    received revision is dropped, so a member that replays too much causes no
    duplicate, and asking from exactly the next revision leaves no gap.  It
    keeps retrying, with back-off, until it works or the watch is closed.

    **Backpressure.**  Responses wait in a buffer of ``max_buffered``
    responses until iterated.  The connection's reader never blocks on a slow
    consumer (other requests and watches go on): when the buffer is full, the
    client cancels the member's watch and, once the consumer has drained half
    the buffer, re-creates it from the revision after the last one buffered,
    so the member replays the rest from its history.  Nothing is skipped.

    **Compaction.**  If history the watch needs was compacted (the start
    revision, or the resume point after a long outage), the events received so
    far are yielded and then :class:`CompactedError` is raised with
    ``compact_revision``: re-list, and watch again from after that read.
    Other errors that cannot be fixed by failing over (an invalid request) are
    raised the same way, or by ``async with`` if the watch was never created.

    One task should iterate a watch at a time.  :meth:`aclose` (or leaving the
    ``async with`` block) cancels it on the member; iteration then ends.
    """

    def __init__(self, client: Client, request: WatchCreateRequest, max_buffered: int) -> None:
        self._client = client
        self._request = request
        self._max_buffered = max_buffered
        self._buffer: deque[WatchResponse] = deque()
        self._next_revision = request.start_revision
        """The first revision not yet received (0: "now", before creation)."""
        self._items = trio.lowlevel.ParkingLot()
        self._room = trio.lowlevel.ParkingLot()
        self._ready = trio.Event()
        self._created_once = False
        self._attempt: _Attempt | None = None
        self._progress_owed = False
        self._error: BaseException | None = None
        self._finished = False
        self._closed = False
        self._scope: trio.CancelScope | None = None
        self.resumes = 0
        """How many times the watch was re-created (fail-over or backpressure)."""

    @property
    def request(self) -> WatchCreateRequest:
        """What was asked for (``start_revision`` as originally given)."""
        return self._request

    @property
    def next_revision(self) -> int:
        """The first revision whose events have not been received: where the
        watch resumes from.  0 until a watch "from now" has been created."""
        return self._next_revision

    # -- Life cycle ---------------------------------------------------------------------

    async def start(self) -> Watch:
        """Create the watch on a member; return once it is created.  ``async
        with`` does this.  Raises :class:`Unavailable` if that does not happen
        within the client's ``request_timeout``, or the error that stopped it."""
        if self._scope is not None:
            raise RuntimeError("a Watch can be started only once")
        client = self._client
        self._scope = client.start_background_task(self._run, name=f"watch {self._request.key!r}")
        with trio.move_on_after(client._request_timeout):
            await self._ready.wait()
        if not self._ready.is_set() or (self._error is not None and not self._created_once):
            error = self._error
            await self.aclose()
            if error is not None:
                raise error
            raise Unavailable(
                f"the watch was not created within {client._request_timeout:g}s",
                code=ErrorCode.UNAVAILABLE,
            )
        return self

    async def aclose(self) -> None:
        """Cancel the watch (on the member too, if its connection is alive) and
        end iteration.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._scope is not None:
            self._scope.cancel()
        attempt, self._attempt = self._attempt, None
        self._finish()
        if attempt is not None and not attempt.ended.is_set():
            attempt.end("closed")
            attempt.conn.end_stream(attempt.watch_id)
            with trio.CancelScope(shield=True), suppress(_NotSent, _Lost):
                await self._send_bounded(
                    attempt.conn, WatchCancelRequest(watch_id=attempt.watch_id)
                )
        await trio.lowlevel.checkpoint()

    cancel = aclose

    async def __aenter__(self) -> Watch:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def request_progress(self) -> None:
        """Ask for a progress notification: a response with no events, yielded
        after every event up to its ``header.revision``.  If the watch is being
        re-created just now, the request is made once it is."""
        attempt = self._attempt
        if attempt is None or not attempt.created.is_set() or attempt.ended.is_set():
            self._progress_owed = True
            return
        try:
            await attempt.conn.send(WatchProgressRequest())
        except (_NotSent, _Lost):
            self._progress_owed = True

    # -- Iteration ----------------------------------------------------------------------

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> WatchResponse:
        response = await self.next()
        if response is None:
            raise StopAsyncIteration
        return response

    async def next(self) -> WatchResponse | None:
        """The next response; None once the watch is closed.  Raises the error
        that ended the watch (e.g. :class:`CompactedError`) after the responses
        received before it."""
        if self._scope is None:
            raise RuntimeError("start the watch first: `async with client.watch(...)`")
        while True:
            if self._buffer:
                response = self._buffer.popleft()
                if len(self._buffer) <= self._max_buffered // 2:
                    self._room.unpark_all()
                return response
            if self._closed:
                return None
            if self._finished:
                if self._error is not None:
                    raise self._error
                return None
            await self._items.park()

    async def events(self) -> AsyncGenerator[Event, None]:
        """The events alone, one by one (progress notifications are skipped)."""
        async for response in self:
            for event in response.events:
                yield event

    # -- The member's side: fed by the connection reader -----------------------------------

    def _feed(self, attempt: _Attempt, answer: Response | Error | None) -> None:
        """One answer for ``attempt`` (None: its connection ended).  Called by
        the connection's reader task, so it never blocks: a full buffer ends
        the attempt (to be re-created later) instead."""
        if attempt.ended.is_set():
            return
        if answer is None:
            attempt.end("lost")
            return
        if isinstance(answer, Error):
            attempt.end("error", answer)
            return
        if not isinstance(answer, WatchResponse):
            message = f"a watch got a {type(answer).__name__}"
            attempt.end("error", Error(code=ErrorCode.INTERNAL, message=message, definite=True))
            return
        if answer.created:
            if self._next_revision == 0:
                # "From now" means after this revision, wherever we resume.
                self._next_revision = answer.header.revision + 1
            attempt.created.set()
        fresh = [event for event in answer.events if event.kv.mod_revision >= self._next_revision]
        if fresh:
            if not self._accept(attempt, answer, fresh):
                return
            self._next_revision = fresh[-1].kv.mod_revision + 1
        elif not (answer.events or answer.created or answer.canceled):
            # A progress notification: every event up to this revision was sent.
            # A member behind what we already received says less than we know:
            # every event up to the revision before our next one was received.
            bookmark = max(answer.header.revision, self._next_revision - 1)
            if bookmark > answer.header.revision:
                header = msgspec.structs.replace(answer.header, revision=bookmark)
                answer = msgspec.structs.replace(answer, header=header)
            if not self._accept(attempt, answer, []):
                self._progress_owed = True
                return
            self._next_revision = bookmark + 1
        if answer.canceled:
            attempt.end("canceled", answer)

    def _accept(self, attempt: _Attempt, answer: WatchResponse, events: list[Event]) -> bool:
        if len(self._buffer) >= self._max_buffered:
            attempt.end("overflow")
            return False
        if len(events) != len(answer.events):
            answer = msgspec.structs.replace(answer, events=events)
        if answer.created or answer.canceled:
            answer = msgspec.structs.replace(answer, created=False, canceled=False)
        self._buffer.append(answer)
        self._items.unpark_all()
        return True

    def _finish(self, error: BaseException | None = None) -> None:
        if not self._finished:
            self._finished = True
            self._error = error
        self._ready.set()
        self._items.unpark_all()

    # -- Keeping a member's watch going ---------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._maintain()
        except Exception as exc:  # handed to the consumer, never to the client's nursery
            self._finish(exc)
        except trio.Cancelled:
            if self._client._closed and not self._closed:
                self._finish(trio.ClosedResourceError("the client is closed"))
            raise

    async def _maintain(self) -> None:
        client = self._client
        call = _Call(self._request)
        while True:
            await self._wait_for_room()
            conn = await client._connection(call)
            attempt = _Attempt(conn)
            request = msgspec.structs.replace(self._request, start_revision=self._next_revision)
            try:
                attempt.watch_id = conn.new_stream(functools.partial(self._feed, attempt))
                self._attempt = attempt
                # Not cancelled halfway (a partial frame would kill the connection).
                with trio.CancelScope(shield=True):
                    await self._send_bounded(conn, request, attempt.watch_id)
            except (_NotSent, _Lost):
                attempt.end("lost")
            with trio.move_on_after(client._read_attempt_timeout):
                await _first(attempt.created, attempt.ended)
            if not attempt.created.is_set() and not attempt.ended.is_set():
                attempt.end("timeout")
                await self._cancel_on_member(attempt)
            if attempt.created.is_set() and not attempt.ended.is_set():
                call = _Call(self._request)  # a success: start back-off afresh
                self._created_once = True
                self._ready.set()
                if self._progress_owed:
                    self._progress_owed = False
                    await self.request_progress()
            await attempt.ended.wait()
            conn.end_stream(attempt.watch_id)
            self._attempt = None
            reason = await self._after(attempt)
            self.resumes += 1
            log.debug("watch resumes from %d: %s", self._next_revision, reason)
            if reason != "backpressure":
                await trio.sleep(call.failed(conn.endpoint, reason, len(client._endpoints)))

    async def _after(self, attempt: _Attempt) -> str:
        """Deal with how ``attempt`` ended: raise if the watch cannot go on,
        else return why it must be re-created."""
        client, conn, answer = self._client, attempt.conn, attempt.answer
        if attempt.outcome == "overflow":
            await self._cancel_on_member(attempt)
            return "backpressure"
        if isinstance(answer, WatchResponse):  # canceled by the member
            if answer.compact_revision:
                reason = answer.cancel_reason or "compacted"
                raise CompactedError.at(
                    f"watch from revision {self._next_revision}: {reason}"
                    f" (oldest revision kept: {answer.compact_revision})",
                    answer.compact_revision,
                    endpoint=conn.endpoint,
                )
            # A member that gives up on a watch unasked (e.g. it lost its
            # leader) is no place to re-create it.
            client._fail_over(conn)
            return f"canceled by the member: {answer.cancel_reason or 'no reason given'}"
        if isinstance(answer, Error):
            exc = error_to_exception(answer, write=False, endpoint=conn.endpoint)
            if answer.code not in TRY_ELSEWHERE:
                raise exc
            client._fail_over(conn, answer.leader)
            return answer.message
        client._fail_over(conn)
        return "no answer" if attempt.outcome == "timeout" else "connection lost"

    async def _cancel_on_member(self, attempt: _Attempt) -> None:
        attempt.conn.end_stream(attempt.watch_id)
        with suppress(_NotSent, _Lost):
            await self._send_bounded(attempt.conn, WatchCancelRequest(watch_id=attempt.watch_id))

    async def _send_bounded(
        self, conn: _Connection, request: Request, request_id: int | None = None
    ) -> None:
        """Send on ``conn``; a member that takes no bytes for ``connect_timeout``
        costs the connection, not a hang."""
        with trio.move_on_after(self._client._connect_timeout) as scope:
            await conn.send(request, request_id)
        if scope.cancelled_caught:
            conn.close()
            raise _Lost

    async def _wait_for_room(self) -> None:
        while len(self._buffer) > self._max_buffered // 2:
            await self._room.park()


async def _first(*events: trio.Event) -> None:
    """Return once any of ``events`` is set."""
    if any(event.is_set() for event in events):
        return
    async with trio.open_nursery() as nursery:

        async def wait(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel()

        for event in events:
            nursery.start_soon(wait, event)


# -- Blocking wrapper -----------------------------------------------------------------

P = ParamSpec("P")
T = TypeVar("T")


def _blocking(
    method: Callable[Concatenate[Client, P], Awaitable[T]],
) -> Callable[Concatenate[SyncClient, P], T]:
    def call(self: SyncClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(functools.partial(method, self._client, *args, **kwargs))

    functools.update_wrapper(call, method)
    return call


class SyncClient:
    """A blocking :class:`Client` for non-async code, with the same methods and
    rules.  It runs a trio loop in a daemon thread until :meth:`close`::

        with SyncClient(["127.0.0.1:2379"]) as client:
            client.put("k", "v")

    Methods may be called from any thread except the client's own.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        request_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        max_in_flight: int = 1024,
    ) -> None:
        self._client = Client(
            endpoints,
            request_timeout=request_timeout,
            connect_timeout=connect_timeout,
            max_in_flight=max_in_flight,
        )
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(
            target=trio.run, args=(self._main,), name="kvstore-client", daemon=True
        )
        self._thread.start()
        self._ready.wait()

    async def _main(self) -> None:
        try:
            async with self._client:
                self._stop = trio.Event()
                self._token = trio.lowlevel.current_trio_token()
                self._ready.set()
                await self._stop.wait()
        finally:
            self._ready.set()

    def _run(self, fn: Callable[[], Awaitable[T]]) -> T:
        if self._token is None or not self._thread.is_alive():
            raise trio.ClosedResourceError("the client is closed")
        result: T = trio.from_thread.run(fn, trio_token=self._token)
        return result

    def close(self) -> None:
        """Stop the client and its thread.  Idempotent."""
        if self._token is not None and self._stop is not None and self._thread.is_alive():
            with suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def endpoint(self) -> str | None:
        return self._client.endpoint

    put = _blocking(Client.put)
    get = _blocking(Client.get)
    delete = _blocking(Client.delete)
    txn = _blocking(Client.txn)
    compact = _blocking(Client.compact)
    status = _blocking(Client.status)
    request = _blocking(Client.request)
    lease_grant = _blocking(Client.lease_grant)
    lease_revoke = _blocking(Client.lease_revoke)
    lease_keep_alive_once = _blocking(Client.lease_keep_alive_once)
    lease_time_to_live = _blocking(Client.lease_time_to_live)
    lease_leases = _blocking(Client.lease_leases)
    save_snapshot = _blocking(Client.save_snapshot)
    member_add = _blocking(Client.member_add)
    member_remove = _blocking(Client.member_remove)
    member_promote = _blocking(Client.member_promote)
    member_list = _blocking(Client.member_list)
    move_leader = _blocking(Client.move_leader)

    def watch(
        self,
        key: Data,
        range_end: Data | None = None,
        *,
        prefix: bool = False,
        from_key: bool = False,
        start_revision: int = 0,
        prev_kv: bool = False,
        no_put: bool = False,
        no_delete: bool = False,
        progress_notify: bool = False,
        max_buffered: int = 256,
    ) -> SyncWatch:
        """A blocking :meth:`Client.watch`: use ``with client.watch(...) as w:``
        and iterate ``w`` (each step blocks until the next response)."""
        watch = self._client.watch(
            key,
            range_end,
            prefix=prefix,
            from_key=from_key,
            start_revision=start_revision,
            prev_kv=prev_kv,
            no_put=no_put,
            no_delete=no_delete,
            progress_notify=progress_notify,
            max_buffered=max_buffered,
        )
        return SyncWatch(self, watch)


class SyncWatch:
    """A :class:`Watch` for blocking code (from :meth:`SyncClient.watch`), with
    the same guarantees.  Iterating yields :class:`~kvstore.api.WatchResponse`
    values and raises what the watch raises (e.g. :class:`CompactedError`)."""

    def __init__(self, client: SyncClient, watch: Watch) -> None:
        self._client = client
        self.watch = watch

    def __enter__(self) -> SyncWatch:
        self._client._run(self.watch.start)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[WatchResponse]:
        while (response := self._client._run(self.watch.next)) is not None:
            yield response

    def request_progress(self) -> None:
        self._client._run(self.watch.request_progress)

    def close(self) -> None:
        """Cancel the watch.  Idempotent; a no-op once the client is closed."""
        with suppress(trio.ClosedResourceError):
            self._client._run(self.watch.aclose)
