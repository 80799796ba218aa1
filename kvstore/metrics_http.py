"""The member's HTTP port (``--listen-metrics``): ``/metrics`` and ``/health``.

* ``GET /metrics``: the member's registry in the Prometheus text format.
* ``GET /health``: ``{"health": "true", "reason": ""}`` with 200 when the member
  knows a leader and serves a linearizable read within the health timeout,
  else ``{"health": "false", "reason": "..."}`` with 503 (etcd's shape).

HTTP/1.1 with keep-alive, parsed by h11 (sans-I/O) over trio streams.  What a
client sends can never stop the member: a request that is not HTTP gets 400, a
header block over :data:`MAX_HEADER_BYTES` 431, a body over
:data:`MAX_BODY_BYTES` 413 (these requests have no use for one), and then the
connection is closed; an unknown path gets 404 and any method but GET and
HEAD 405.  A connection must deliver each request within
:data:`REQUEST_TIMEOUT` seconds (idle keep-alive time included), at most
:data:`MAX_CONNECTIONS` are served at once (further ones are closed at once),
and an unexpected failure in one connection is logged and closes only that one.
"""

from __future__ import annotations

import contextlib
import json
import logging
from http import HTTPStatus
from typing import TYPE_CHECKING

import h11
import trio
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from kvstore.health import DEFAULT_TIMEOUT, check_health

if TYPE_CHECKING:
    from kvstore.config import Address
    from kvstore.server import Member

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 8 * 1024
"""Largest request line plus headers accepted."""
MAX_BODY_BYTES = 1024
"""Largest request body accepted (GET needs none)."""
REQUEST_TIMEOUT = 10.0
"""Seconds to receive a whole request, and to send a response."""
MAX_CONNECTIONS = 64
"""Connections served at once."""
LINGER_SECONDS = 1.0
LINGER_BYTES = 256 * 1024
"""How long, and how much, to read and discard after refusing a request."""
_RECEIVE_CHUNK = 4096
_SERVER_HEADER = ("Server", "kvstore")


class _Reject(Exception):
    """Answer with ``status`` and close the connection."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


async def serve_metrics(
    member: Member,
    address: Address,
    *,
    health_timeout: float = DEFAULT_TIMEOUT,
    task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``address`` and serve ``/metrics`` and ``/health`` until cancelled;
    reports the bound address (the real port when ``address`` asks for port 0)."""
    listeners = await trio.open_tcp_listeners(address[1], host=address[0])
    bound = listeners[0].socket.getsockname()
    slots = trio.Semaphore(MAX_CONNECTIONS)

    async def serve(stream: trio.SocketStream) -> None:
        try:
            slots.acquire_nowait()
        except trio.WouldBlock:
            await trio.aclose_forcefully(stream)
            return
        try:
            await _HttpConnection(member, stream, health_timeout).serve()
        except Exception:
            log.exception("metrics connection failed")
        finally:
            slots.release()

    task_status.started((address[0], bound[1]))
    await trio.serve_listeners(serve, listeners)


class _HttpConnection:
    def __init__(self, member: Member, stream: trio.SocketStream, health_timeout: float) -> None:
        self._member = member
        self._stream = stream
        self._health_timeout = health_timeout
        self._http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)

    async def serve(self) -> None:
        gone = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
        async with self._stream:
            with contextlib.suppress(*gone):
                await self._serve_requests()

    async def _serve_requests(self) -> None:
        http = self._http
        while True:
            try:
                with trio.move_on_after(REQUEST_TIMEOUT):
                    request = await self._read_request()
                    if request is None:
                        return
                    await self._answer(request)
                    if http.our_state is not h11.DONE or http.their_state is not h11.DONE:
                        return
                    http.start_next_cycle()
                    continue
                return  # too slow: close
            except _Reject as reject:
                with trio.move_on_after(REQUEST_TIMEOUT):
                    await self._reject(reject)
                return

    async def _read_request(self) -> h11.Request | None:
        """The next request, its body read and discarded; ``None`` when the
        client closed the connection between requests."""
        request = await self._next_event()
        if isinstance(request, h11.ConnectionClosed):
            return None
        if not isinstance(request, h11.Request):
            raise _Reject(400, "expected a request")
        for name, value in request.headers:
            if name == b"content-length" and int(value) > MAX_BODY_BYTES:
                raise _Reject(413, f"request body over {MAX_BODY_BYTES} bytes")
        body = 0
        while True:
            event = await self._next_event()
            if isinstance(event, h11.EndOfMessage):
                return request
            if isinstance(event, h11.Data):
                body += len(event.data)
                if body > MAX_BODY_BYTES:
                    raise _Reject(413, f"request body over {MAX_BODY_BYTES} bytes")
            else:
                raise _Reject(400, "incomplete request")

    async def _next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        http = self._http
        while True:
            try:
                event = http.next_event()
            except h11.RemoteProtocolError as error:
                raise _Reject(error.error_status_hint, str(error)) from None
            if event is not h11.NEED_DATA:
                return event
            data = await self._stream.receive_some(_RECEIVE_CHUNK)
            try:
                http.receive_data(data)
            except h11.RemoteProtocolError as error:
                raise _Reject(error.error_status_hint, str(error)) from None

    async def _answer(self, request: h11.Request) -> None:
        target = request.target.split(b"?", 1)[0]
        method = request.method
        if target not in (b"/metrics", b"/health"):
            await self._send(request, 404, "text/plain; charset=utf-8", b"not found\n")
            return
        if method not in (b"GET", b"HEAD"):
            await self._send(
                request,
                405,
                "text/plain; charset=utf-8",
                b"method not allowed\n",
                [("Allow", "GET, HEAD")],
            )
            return
        if target == b"/metrics":
            page = generate_latest(self._member.metrics.registry)
            await self._send(request, 200, CONTENT_TYPE_LATEST, page)
            return
        health = await check_health(self._member, self._health_timeout)
        body = json.dumps(
            {"health": "true" if health.healthy else "false", "reason": health.reason}
        ).encode()
        await self._send(request, 200 if health.healthy else 503, "application/json", body)

    async def _send(
        self,
        request: h11.Request,
        status: int,
        content_type: str,
        body: bytes,
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        headers = [
            _SERVER_HEADER,
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            *(extra or []),
        ]
        http = self._http
        data = http.send(h11.Response(status_code=status, headers=headers, reason=_phrase(status)))
        if request.method != b"HEAD":
            data += http.send(h11.Data(data=body))
        data += http.send(h11.EndOfMessage())
        await self._stream.send_all(data)

    async def _reject(self, reject: _Reject) -> None:
        """Answer an unusable request (if the protocol state still allows) and stop."""
        http = self._http
        if http.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = f"{reject.reason}\n".encode()
        headers = [
            _SERVER_HEADER,
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ]
        try:
            response = h11.Response(
                status_code=reject.status, headers=headers, reason=_phrase(reject.status)
            )
            data = http.send(response)
            data += http.send(h11.Data(data=body))
            data += http.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            return
        await self._stream.send_all(data)
        await self._linger()

    async def _linger(self) -> None:
        """Close gently after refusing a request whose rest is still arriving.

        Closing a socket with unread input makes the kernel send a reset,
        which can destroy the error response before the client reads it; so
        stop sending, then read and discard what the client still sends, for
        at most :data:`LINGER_SECONDS` and :data:`LINGER_BYTES`.
        """
        await self._stream.send_eof()
        drained = 0
        with trio.move_on_after(LINGER_SECONDS):
            while drained < LINGER_BYTES:
                chunk = await self._stream.receive_some(_RECEIVE_CHUNK)
                if not chunk:
                    return
                drained += len(chunk)


def _phrase(status: int) -> bytes:
    return HTTPStatus(status).phrase.encode()
