"""Bytes waiting to go out on one TCP connection, written without a task
switch when possible.

Writing is on the path of every request: the client's request, the leader's
append to each follower, each follower's answer, the member's reply.  Handing
every write to a writer task costs a task switch, and a trio ``send_all`` a
checkpoint more, which on a lone client's write add up to a good share of its
latency.  So :meth:`Outbox.put` writes straight to the socket (one
non-blocking ``write``) when nothing is queued ahead and no write is under
way; only when the socket would block, or the connection is not up, does data
queue for the connection's writer task (:meth:`Outbox.pump`), which writes
everything queued in one ``send_all``.

Direct writes are for lone messages only.  Under load, going through the
pump is what keeps writes batched (whatever queued meanwhile goes out in one
call, and the receiver then reads it together and handles it as one batch),
and measured throughput drops by a quarter without it.  So a put is written
directly only after a quiet spell (nothing put for ``cork_seconds``) and only
if the caller allows it (``may_write_now``: a client or member passes whether
this is the only request in flight on the connection).

Order: data is written directly only when the queue is empty and the pump is
not writing, so bytes reach the socket in the order they were put.  Data
written in part leaves its rest at the head of the queue; if the connection
ends before the rest is written, the rest is discarded (never written to the
next connection, where it would be garbage).

Callers that must know when their bytes may have left (a client deciding
whether a request is safe to retry) pass ``tokens`` with each put: a put that
reaches the socket at once says so by returning ``True``; for one that queues,
``on_taken(tokens)`` is called when the pump takes it to write.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable

import trio

DEFAULT_CORK_SECONDS = 0.0005


class Outbox:
    def __init__(
        self,
        on_taken: Callable[[int], None] | None = None,
        cork_seconds: float = DEFAULT_CORK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._on_taken = on_taken
        self._cork_seconds = cork_seconds
        self._clock = clock
        """Seconds, for the quiet spell (cheaper than ``trio.current_time``,
        which matters on this path)."""
        self._direct_after = -math.inf
        """The end of the quiet spell needed before a direct write: the last
        put plus ``cork_seconds``."""
        self._chunks: deque[bytes] = deque()
        self._tokens = 0
        """Sum of the tokens of the queued chunks."""
        self._socket: trio.socket.SocketType | None = None
        """The connection's socket while :meth:`pump` runs."""
        self._writing = False
        self._partial_head = False
        """The head of the queue is the rest of a chunk partly written on the
        current connection."""
        self._broken = False
        """A direct write failed: the pump must end this connection."""
        self._ended = False
        """The pump ran and ended: the connection is gone."""
        self._ready = trio.Event()
        self._idle = trio.Event()
        """Set whenever the queue is empty and nothing is being written."""
        self._idle.set()

    def __len__(self) -> int:
        """Chunks waiting in the queue."""
        return len(self._chunks)

    def put(self, data: bytes, tokens: int = 0, *, may_write_now: bool = True) -> bool:
        """Write ``data`` now if the caller allows it, nothing is ahead of
        it, nothing was put in the last ``cork_seconds``, and the socket takes
        it (all or part); else queue it.  Returns whether bytes of it went to
        the socket now; if not, ``on_taken(tokens)`` follows when the pump
        takes it."""
        now = self._clock()
        quiet, self._direct_after = now >= self._direct_after, now + self._cork_seconds
        if (
            quiet
            and may_write_now
            and self._socket is not None
            and not self._chunks
            and not self._writing
        ):
            written = self._write_now(data)
            if written:
                if written < len(data):
                    self._queue(data[written:], 0)
                    self._partial_head = True
                return True
        self._queue(data, tokens)
        return False

    async def drained(self) -> None:
        """Return once everything put so far is written; raises
        :class:`trio.BrokenResourceError` if the connection has ended (what
        was put may or may not have been written)."""
        while True:
            if self._ended:
                raise trio.BrokenResourceError("connection ended")
            if not self._chunks and not self._writing:
                return
            await self._idle.wait()

    async def pump(self, stream: trio.SocketStream) -> None:
        """Write what queues to ``stream`` until the connection fails (raising
        :class:`trio.BrokenResourceError` or ``OSError``); meanwhile
        :meth:`put` may write to its socket directly."""
        self._socket, self._broken, self._ended = stream.socket, False, False
        try:
            while True:
                while not self._chunks:
                    if self._broken:
                        raise trio.BrokenResourceError("a direct write failed")
                    self._idle.set()
                    await self._ready.wait()
                    self._ready = trio.Event()
                chunks, tokens = self._chunks, self._tokens
                self._chunks, self._tokens = deque(), 0
                self._partial_head = False
                if tokens and self._on_taken is not None:
                    self._on_taken(tokens)
                self._writing = True
                try:
                    await stream.send_all(chunks[0] if len(chunks) == 1 else b"".join(chunks))
                finally:
                    self._writing = False
        finally:
            self._socket, self._ended = None, True
            if self._partial_head:
                self._chunks.popleft()
                self._partial_head = False
            self._idle.set()  # wake drained(), which sees the connection gone

    def _queue(self, data: bytes, tokens: int) -> None:
        self._chunks.append(data)
        self._tokens += tokens
        if self._idle.is_set():
            self._idle = trio.Event()
        self._ready.set()

    def _write_now(self, data: bytes) -> int:
        """Bytes of ``data`` the socket took without blocking (0 if none)."""
        assert self._socket is not None
        fd = self._socket.fileno()
        if fd < 0:  # closed under us: the pump finds out
            self._broken = True
            return 0
        try:
            return os.write(fd, data)
        except BlockingIOError:
            return 0
        except OSError:
            # Broken: the pump notices on its next wake and ends the connection.
            self._broken = True
            return 0
