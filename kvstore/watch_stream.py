"""One watch as a stream of :class:`~kvstore.api.WatchResponse` messages.

The listener pulls :meth:`WatchStream.next` and writes each response to the
client's connection; writing is the backpressure (a slow client makes its
watch fall behind in the hub, which then catches it up from history).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import trio

from kvstore.api import ResponseHeader, WatchResponse
from kvstore.watch import Cancellation, Watcher, WatchHub

HeaderFactory = Callable[[int], ResponseHeader]


class WatchStream:
    def __init__(
        self,
        hub: WatchHub,
        watcher: Watcher,
        header: HeaderFactory,
        current_revision: Callable[[], int],
        has_leader: Callable[[], bool],
        progress_interval: float,
        leaderless_limit: float,
    ) -> None:
        self._hub = hub
        self._watcher = watcher
        self._header = header
        self._current_revision = current_revision
        self._has_leader = has_leader
        self._progress_interval = progress_interval
        self._leaderless_limit = leaderless_limit
        self._changed = trio.Event()
        self._created_sent = False
        self._progress_requested = False
        self.finished = False
        watcher.notify = self._wake

    @property
    def watch_id(self) -> int:
        return self._watcher.id

    def _wake(self) -> None:
        self._changed.set()

    def request_progress(self) -> None:
        self._progress_requested = True
        self._wake()

    def cancel(self, reason: str) -> None:
        self._hub.cancel(self._watcher.id, reason)

    def close(self) -> None:
        self._hub.remove(self._watcher.id)

    async def next(self) -> WatchResponse:
        """The next message: ``created`` first, then events or progress, and
        finally ``canceled`` (after which the stream is finished)."""
        watch_id = self._watcher.id
        if not self._created_sent:
            self._created_sent = True
            if self._watcher.cancellation is not None:  # e.g. its start is compacted
                return self._finish(self._watcher.cancellation)
            return WatchResponse(
                header=self._header(self._current_revision()), watch_id=watch_id, created=True
            )
        leaderless_since: float | None = None
        while True:
            taken = self._hub.take(self._watcher)
            if isinstance(taken, Cancellation):
                return self._finish(taken)
            if taken:
                events = [event for _, batch in taken for event in batch]
                self._hub.events_sent += len(events)
                return WatchResponse(
                    header=self._header(self._current_revision()),
                    watch_id=watch_id,
                    events=events,
                )
            if not self._watcher.synced:
                await trio.lowlevel.checkpoint()  # catching up: keep going
                continue
            if self._progress_requested:
                bookmark = self._hub.progress(self._watcher)
                if bookmark is not None:
                    self._progress_requested = False
                    return WatchResponse(header=self._header(bookmark), watch_id=watch_id)
            if self._has_leader():
                leaderless_since = None
            else:
                now = trio.current_time()
                leaderless_since = leaderless_since if leaderless_since is not None else now
                if now - leaderless_since >= self._leaderless_limit:
                    # A member cut off from the leader would stall the watch
                    # silently (etcd#8673): let the client resume elsewhere.
                    self.cancel("the member has no leader")
                    continue
            self._changed = trio.Event()
            wait = self._progress_interval if self._watcher.request.progress_notify else math.inf
            if leaderless_since is not None:
                # The member wakes every watch when it loses its leader; from
                # then on, look again until the limit is reached.
                wait = min(wait, self._leaderless_limit / 4)
            with trio.move_on_after(wait) as scope:
                await self._changed.wait()
            if scope.cancelled_caught and self._watcher.request.progress_notify:
                self._progress_requested = True

    def _finish(self, cancellation: Cancellation) -> WatchResponse:
        self.finished = True
        self.close()
        return WatchResponse(
            header=self._header(self._current_revision()),
            watch_id=self._watcher.id,
            canceled=True,
            compact_revision=cancellation.compact_revision,
            cancel_reason=cancellation.reason,
        )
