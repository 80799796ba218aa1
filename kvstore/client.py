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

**Retries.**  A *read* (range, a txn of ranges only, status) has no effect, so it
is retried on any of those failures.  A *write* (put, delete, a txn with a
write, compaction) is retried only when it **definitely did not happen**: it was
never written to a socket, or the member's error says ``definite=True``.  A
write sent on a connection that then ended, or still unanswered at the
deadline, or answered with an indefinite error, raises :class:`OutcomeUnknown`:
it may or may not have been applied, and the caller must find out (read it
back) before retrying.

Every failure is a :class:`KvError` carrying ``code``, ``definite`` and
``message``.  Using a closed client raises :class:`trio.ClosedResourceError`.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass
from types import TracebackType
from typing import Concatenate, ParamSpec, TypeVar

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
    PutResponse,
    RangeRequest,
    RangeResponse,
    Request,
    Response,
    SortOrder,
    SortTarget,
    StatusRequest,
    StatusResponse,
    TxnRequest,
    TxnResponse,
)
from kvstore.txn import Compare, Data, Op
from raft.framing import FrameError, FrameReader, encode_frame

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
    "Unavailable",
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
    """The requested revision was compacted; ``compact_revision`` is the oldest kept."""

    compact_revision: int = 0


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
    ErrorCode.COMPACTED: CompactedError,
    ErrorCode.NO_LEADER: NoLeaderError,
    ErrorCode.NOT_LEADER: NoLeaderError,
    ErrorCode.TIMEOUT: Unavailable,
    ErrorCode.LEADER_CHANGED: Unavailable,
    ErrorCode.STOPPED: Unavailable,
    ErrorCode.UNAVAILABLE: Unavailable,
    ErrorCode.INTERNAL: KvError,
}

_TRY_ELSEWHERE = frozenset(
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
    if isinstance(request, RangeRequest | StatusRequest):
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
    __slots__ = ("answer", "event")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.answer: Response | Error | None = None


class _Connection:
    """One TCP connection to one member.  :meth:`run` (a task in the client's
    nursery) reads every :class:`~kvstore.api.ServerFrame` and wakes the waiter
    of its ``request_id``; answers for requests nobody waits for are dropped."""

    def __init__(self, endpoint: str, stream: trio.SocketStream) -> None:
        self.endpoint = endpoint
        self._stream = stream
        self._reader = FrameReader(stream, api.MAX_FRAME_BYTES)
        self._send_lock = trio.Lock()
        self._outbox: list[bytes] = []
        self._pending: dict[int, _Slot] = {}
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
                while (payload := await self._reader.read()) is not None:
                    frame = api.decode_server_frame(payload)
                    slot = self._pending.get(frame.request_id)
                    if slot is not None and slot.answer is None:
                        slot.answer = frame.response
                        slot.event.set()
        except (FrameError, msgspec.DecodeError, trio.BrokenResourceError, OSError) as exc:
            log.info("connection to %s failed: %s", self.endpoint, exc)
        finally:
            self.close()
            await trio.aclose_forcefully(self._stream)

    def close(self) -> None:
        """End the connection now; waiters of sent requests get :class:`_Lost`."""
        self.dead = True
        self._scope.cancel()
        for slot in self._pending.values():
            slot.event.set()

    def retire(self) -> None:
        """Take no new requests; close once the outstanding ones are answered."""
        self.retired = True
        if not self._pending:
            self.close()

    async def roundtrip(self, request: Request, on_send: Callable[[], None]) -> Response | Error:
        """Send ``request`` and wait for its answer.

        ``on_send`` is called just before the first byte may leave.  Raises
        :class:`_NotSent` if the connection was dead before that, :class:`_Lost`
        if it died after.  Cancellation while sending closes the connection (a
        partial frame would corrupt it); cancellation while waiting does not.
        """
        request_id = next(self._ids)
        payload = encode_frame(api.encode(ClientFrame(request_id, request)))
        if len(payload) > api.MAX_FRAME_BYTES:
            raise InvalidRequest(
                f"request of {len(payload)} bytes exceeds the {api.MAX_FRAME_BYTES}-byte limit",
                code=ErrorCode.REQUEST_TOO_LARGE,
            )
        if self.dead:
            raise _NotSent
        slot = self._pending[request_id] = _Slot()
        try:
            on_send()
            # Frames queue up while one write is under way; whoever takes the
            # lock next writes them all at once (one system call for many).
            self._outbox.append(payload)
            async with self._send_lock:
                if self._outbox:
                    data = b"".join(self._outbox)
                    self._outbox.clear()
                    try:
                        await self._stream.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                        self.close()
                        raise _Lost from exc
                    except BaseException:
                        self.close()
                        raise
            await slot.event.wait()
            if slot.answer is None:
                raise _Lost
            return slot.answer
        finally:
            del self._pending[request_id]
            if self.retired and not self._pending:
                self.close()


# -- The client -----------------------------------------------------------------------


@dataclass
class _Retry:
    """A failed attempt that is safe to repeat elsewhere."""

    reason: str
    leader: str = ""
    error: KvError | None = None


class _Call:
    """One request's book-keeping across its attempts."""

    def __init__(self, request: Request) -> None:
        self.request = request
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
        self._closed = False

    @property
    def endpoints(self) -> list[str]:
        return list(self._endpoints)

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
        for conn in list(self._connections):
            conn.close()
        await trio.lowlevel.checkpoint()

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

    # -- Requests, retries and fail-over ------------------------------------------------

    async def request(self, request: Request) -> Response:
        """Send any request with the retry rules of the module docstring."""
        call = _Call(request)
        with trio.move_on_after(self._request_timeout):
            async with self._in_flight:
                return await self._call(call)
        if call.unanswered is not None:
            self._fail_over(call.unanswered)  # a member that does not answer is suspect
        raise call.give_up(self._request_timeout)

    async def _call(self, call: _Call) -> Response:
        while True:
            conn = await self._connection(call)
            outcome = await self._attempt(conn, call)
            if not isinstance(outcome, _Retry):
                return outcome
            log.debug("%s failed on %s: %s", type(call.request).__name__, conn.endpoint, outcome)
            if outcome.error is not None:
                call.last_error = outcome.error
            self._fail_over(conn, outcome.leader)
            await trio.sleep(call.failed(conn.endpoint, outcome.reason, len(self._endpoints)))

    async def _attempt(self, conn: _Connection, call: _Call) -> Response | _Retry:
        """One try on ``conn``: the response, a safe retry, or an exception."""
        timeout = self._read_attempt_timeout if not call.write else math.inf
        with trio.move_on_after(timeout):
            try:
                answer = await conn.roundtrip(call.request, functools.partial(call.mark_sent, conn))
            except _NotSent:
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
                if answer.code in _TRY_ELSEWHERE and not isinstance(exc, OutcomeUnknown):
                    return _Retry(answer.message, answer.leader, exc)
                raise exc
            return answer
        call.unanswered = None  # only reads have an attempt timeout
        return _Retry(f"no answer within {timeout:g}s")

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
