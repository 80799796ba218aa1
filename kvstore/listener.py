"""Serving client connections: framing, decoding, multiplexing, bad input.

Each connection carries many requests at once: every :class:`~kvstore.api.ClientFrame`
is answered by one :class:`~kvstore.api.ServerFrame` with the same
``request_id``, in completion order.  Nothing a client sends can stop the
member: a frame over the size limit or one that is not a frame at all closes
that connection (after an error frame with request id 0); a well-framed but
malformed or unknown request gets a definite error and the connection goes on.

Per request the work is kept small, since a busy member serves thousands a
second on one core: a request the handler can answer at once (a serializable
read, a status) is answered inline; the linearizable reads that arrive
together share one task and one ReadIndex wait; the puts, deletes and txns
that arrive together are proposed at once, in one turn of the Raft node, and
answered by a callback when applied (no task waits for them); the rest get a
task each.  Answers are written together, in one system call per batch:
straight to the socket for a lone request, else by the connection's writer
task (:class:`~raft.outbox.Outbox`).  A request holds one of the connection's
``max_inflight`` slots until its answer is handed to the socket, so a client
that sends without reading stalls its own connection, nothing else.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing, suppress
from typing import TYPE_CHECKING, Protocol

import msgspec
import trio

from kvstore import api
from kvstore.api import Error, ErrorCode, Request, Response, ServerFrame
from raft.framing import FrameError, FrameReader, encode_frame
from raft.outbox import Outbox

if TYPE_CHECKING:
    from kvstore.commands import WriteRequest
    from kvstore.config import Address
    from kvstore.watch_stream import WatchStream

log = logging.getLogger(__name__)

_BATCHED_WRITES = (api.PutRequest, api.DeleteRangeRequest, api.TxnRequest)

_KNOWN_REQUEST_TYPES = {
    tag for member in Request.__args__ if isinstance(tag := member.__struct_config__.tag, str)
}


class RequestHandler(Protocol):
    async def handle(self, request: Request) -> Response | Error: ...

    def answer_now(self, request: Request) -> Response | Error | None:
        """The answer if it needs no waiting, else None (then use :meth:`handle`)."""
        ...

    async def read_linearizable(self, requests: list[api.RangeRequest]) -> list[Response | Error]:
        """Answers to linearizable reads, in order, after one shared ReadIndex wait."""
        ...

    def submit_writes(
        self, requests: list[WriteRequest], on_answers: Callable[[list[Response | Error]], None]
    ) -> None:
        """Propose writes together, now; ``on_answers`` gets their answers, in
        order, once (from another task, without blocking)."""
        ...

    def open_watch(self, request: api.WatchCreateRequest) -> WatchStream | Error: ...

    def snapshot(
        self, request: api.SnapshotRequest
    ) -> AsyncGenerator[api.SnapshotResponse | Error, None]: ...


RequestObserver = Callable[[Request, Response | Error, float], None]
"""Told of every answered request, with the seconds it took (metrics)."""


def _ignore(request: Request, response: Response | Error, seconds: float) -> None:
    pass


class _Envelope(msgspec.Struct, array_like=True):
    request_id: int
    request: msgspec.Raw


_envelope_decoder = msgspec.msgpack.Decoder(_Envelope)
_request_decoder = msgspec.msgpack.Decoder(Request)


def decode_request(raw: bytes) -> Request | Error:
    """A request, or the definite error that explains why it is not one."""
    try:
        request: Request = _request_decoder.decode(raw)
        return request
    except msgspec.DecodeError as error:
        kind = _request_type(raw)
        if kind is not None and kind not in _KNOWN_REQUEST_TYPES:
            return Error(
                code=ErrorCode.UNKNOWN_REQUEST,
                message=f"unknown request type {kind!r}",
                definite=True,
            )
        return Error(code=ErrorCode.MALFORMED, message=f"malformed request: {error}", definite=True)


def _request_type(raw: bytes) -> str | None:
    try:
        value = msgspec.msgpack.decode(raw)
    except msgspec.DecodeError:
        return None
    if isinstance(value, dict):
        kind = value.get("type")
        return kind if isinstance(kind, str) else None
    return None


async def serve_clients(
    handler: RequestHandler,
    address: Address,
    max_inflight: int,
    observe: RequestObserver = _ignore,
    *,
    task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``address`` and serve every connection; reports the bound address.
    ``observe`` is told of every answered request (not watches)."""
    listeners = await trio.open_tcp_listeners(address[1], host=address[0])
    bound = listeners[0].socket.getsockname()
    task_status.started((address[0], bound[1]))

    async def serve(stream: trio.SocketStream) -> None:
        await _Connection(handler, stream, max_inflight, observe).serve()

    await trio.serve_listeners(serve, listeners)


class _Connection:
    def __init__(
        self,
        handler: RequestHandler,
        stream: trio.SocketStream,
        max_inflight: int,
        observe: RequestObserver = _ignore,
    ) -> None:
        self._handler = handler
        self._observe = observe
        self._stream = stream
        self._outbox = Outbox(on_taken=self._release_slots)
        self._answers: list[bytes] = []
        """Encoded answers not yet handed to the outbox (see :meth:`_deliver`)."""
        self._answer_slots = 0
        """Slots held by ``_answers``: freed once the outbox takes them."""
        self._watches: dict[int, WatchStream] = {}
        self._max_inflight = max_inflight
        self._slots = trio.Semaphore(max_inflight)
        try:
            self._peer = str(stream.socket.getpeername())
        except OSError:
            self._peer = "?"

    async def serve(self) -> None:
        reader = FrameReader(self._stream, api.MAX_FRAME_BYTES)
        async with self._stream, trio.open_nursery() as nursery:
            nursery.start_soon(self._write_loop, nursery.cancel_scope)
            try:
                await self._read_loop(reader, nursery)
            except FrameError as error:
                log.info("client %s: closing connection: %s", self._peer, error)
                with trio.move_on_after(1):
                    await self._send(
                        0, Error(code=ErrorCode.MALFORMED, message=str(error), definite=True)
                    )
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            nursery.cancel_scope.cancel()

    async def _read_loop(self, reader: FrameReader, nursery: trio.Nursery) -> None:
        handler = self._handler
        reads: list[tuple[int, api.RangeRequest, float]] = []
        writes: list[tuple[int, WriteRequest, float]] = []
        """Linearizable reads, and writes, received together: one task for each list."""
        while True:
            payload = reader.read_buffered()
            if payload is None:
                self._deliver()  # the inline answers to the frames read so far
                if reads:
                    nursery.start_soon(self._answer_reads, reads)
                    reads = []
                if writes:
                    self._submit_writes(writes)
                    writes = []
                payload = await reader.read()
                if payload is None:
                    return
            try:
                envelope = _envelope_decoder.decode(payload)
            except msgspec.DecodeError as error:
                raise FrameError(f"not a request frame: {error}") from None
            request_id = envelope.request_id
            if len(payload) > api.MAX_REQUEST_BYTES:
                await self._send(
                    request_id,
                    Error(
                        code=ErrorCode.REQUEST_TOO_LARGE,
                        message=f"request of {len(payload)} bytes exceeds {api.MAX_REQUEST_BYTES}",
                        definite=True,
                    ),
                )
                continue
            request = decode_request(envelope.request)
            if isinstance(request, Error):
                await self._send(request_id, request)
            elif isinstance(request, api.WatchCreateRequest):
                await self._open_watch(request_id, request, nursery)
            elif isinstance(request, api.WatchCancelRequest):
                stream = self._watches.get(request.watch_id)
                if stream is not None:
                    stream.cancel("canceled by the client")
                ack = api.WatchResponse(
                    header=api.ResponseHeader(), watch_id=request.watch_id, canceled=True
                )
                await self._send(request_id, ack)
            elif isinstance(request, api.WatchProgressRequest):
                for stream in self._watches.values():
                    stream.request_progress()
                ack = api.WatchResponse(header=api.ResponseHeader(), watch_id=0)
                await self._send(request_id, ack)
            elif isinstance(request, api.SnapshotRequest):
                await self._slots.acquire()
                nursery.start_soon(self._stream_snapshot, request_id, request)
            else:
                try:
                    self._slots.acquire_nowait()
                except trio.WouldBlock:
                    self._deliver()
                    if reads:  # they hold slots: let them finish
                        nursery.start_soon(self._answer_reads, reads)
                        reads = []
                    if writes:
                        self._submit_writes(writes)
                        writes = []
                    await self._slots.acquire()
                started = time.perf_counter()
                answer = handler.answer_now(request)
                if answer is not None:
                    self._queue(request_id, answer, request, started)  # sent once the
                    # frames received together are read
                elif isinstance(request, api.RangeRequest):
                    reads.append((request_id, request, started))
                elif isinstance(request, _BATCHED_WRITES):
                    writes.append((request_id, request, started))
                else:
                    nursery.start_soon(self._answer, request_id, request, started)

    async def _open_watch(
        self, request_id: int, request: api.WatchCreateRequest, nursery: trio.Nursery
    ) -> None:
        """Watch ``request``; its responses carry ``request_id``, its watch id."""
        stream = self._handler.open_watch(request)
        if isinstance(stream, Error):
            await self._send(request_id, stream)
            return
        if request_id in self._watches:
            stream.close()
            await self._send(
                request_id,
                Error(
                    code=ErrorCode.INVALID_ARGUMENT,
                    message=f"request id {request_id} is already a watch on this connection",
                    definite=True,
                ),
            )
            return
        self._watches[request_id] = stream
        nursery.start_soon(self._pump_watch, request_id, stream)

    async def _pump_watch(self, request_id: int, stream: WatchStream) -> None:
        try:
            while not stream.finished:
                response = await stream.next()
                await self._send(request_id, msgspec.structs.replace(response, watch_id=request_id))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            stream.close()
            self._watches.pop(request_id, None)

    async def _answer(self, request_id: int, request: Request, started: float) -> None:
        try:
            response = await self._handler.handle(request)
        except Exception:
            log.exception("client %s: request %d failed", self._peer, request_id)
            response = Error(code=ErrorCode.INTERNAL, message="internal error", definite=False)
        self._queue(request_id, response, request, started)
        self._deliver()

    async def _answer_reads(self, reads: list[tuple[int, api.RangeRequest, float]]) -> None:
        """Answer linearizable reads received together, after one shared wait;
        if that fails unexpectedly, each gets a (definite) internal error."""
        try:
            responses = await self._handler.read_linearizable([request for _, request, _ in reads])
        except Exception:
            log.exception("client %s: %d reads failed", self._peer, len(reads))
            error = Error(code=ErrorCode.INTERNAL, message="internal error", definite=True)
            responses = [error] * len(reads)
        self._answer_all(reads, responses)

    def _submit_writes(self, writes: list[tuple[int, WriteRequest, float]]) -> None:
        """Propose ``writes`` now (the node sees them in its next turn); their
        answers go out as soon as the member has them, with no task of ours
        waiting for them."""

        def answered(answers: list[Response | Error]) -> None:
            # Called from the member's tasks (usually a Raft turn): a bug
            # here must cost this connection its answers, not the member.
            try:
                self._answer_all(writes, answers)
            except Exception:
                log.exception("client %s: answering %d writes failed", self._peer, len(writes))
                self._stream_broken()

        self._handler.submit_writes([request for _, request, _ in writes], answered)

    def _answer_all(
        self, batch: Sequence[tuple[int, Request, float]], responses: list[Response | Error]
    ) -> None:
        """Queue the answers to requests received together, and send them in one write."""
        for (request_id, request, started), response in zip(batch, responses, strict=True):
            self._queue(request_id, response, request, started)
        self._deliver()

    def _queue(
        self, request_id: int, response: Response | Error, request: Request, started: float
    ) -> None:
        """Queue the answer to a request that holds a slot (freed once the
        answer is written), and tell the observer how long it took."""
        self._observe(request, response, time.perf_counter() - started)
        self._answers.append(encode_frame(api.encode(ServerFrame(request_id, response))))
        self._answer_slots += 1

    def _deliver(self) -> None:
        """Hand the queued answers to the outbox, in one write."""
        answers = self._answers
        if not answers:
            return
        data = answers[0] if len(answers) == 1 else b"".join(answers)
        slots, self._answers, self._answer_slots = self._answer_slots, [], 0
        # Answers to every request in flight on the connection go straight
        # out; with others still in flight, the writer task batches them.
        alone = self._max_inflight - self._slots.value == slots
        if self._outbox.put(data, tokens=slots, may_write_now=alone):
            self._release_slots(slots)

    def _stream_broken(self) -> None:
        """Give up on the connection: its read loop sees it end, and so does the client."""
        with suppress(OSError):
            self._stream.socket.shutdown(socket.SHUT_RDWR)

    def _release_slots(self, count: int) -> None:
        for _ in range(count):
            self._slots.release()

    async def _write_loop(self, connection_scope: trio.CancelScope) -> None:
        try:
            await self._outbox.pump(self._stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            connection_scope.cancel()

    async def _stream_snapshot(self, request_id: int, request: api.SnapshotRequest) -> None:
        """Send every message of the snapshot stream, each once the previous
        one is written (a slow client slows the stream, memory stays bounded)."""
        try:
            try:
                async with aclosing(self._handler.snapshot(request)) as messages:
                    async for message in messages:
                        await self._send(request_id, message)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                raise
            except Exception:
                log.exception("client %s: snapshot %d failed", self._peer, request_id)
                error = Error(code=ErrorCode.INTERNAL, message="snapshot failed", definite=True)
                await self._send(request_id, error)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self._slots.release()

    async def _send(self, request_id: int, response: Response | Error) -> None:
        """Write one frame now, with whatever else is queued (returns once
        written: for watch streams, writing is the backpressure)."""
        self._answers.append(encode_frame(api.encode(ServerFrame(request_id, response))))
        self._deliver()
        await self._outbox.drained()
