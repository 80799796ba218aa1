"""The watch hub: who watches what, and which events each has yet to receive.

Sans-I/O, like the state machine it sits beside.  The member calls
:meth:`WatchHub.on_apply` with the events of every applied revision, in order;
each watch's consumer calls :meth:`WatchHub.take` for what it may send next.

Guarantees (etcd's ``api_guarantees``): events arrive in revision order, every
event of one revision in one batch, none skipped, none repeated.  A watch is
*synced* while its events are queued as they are applied.  Its queue is
bounded: a consumer that falls further behind stops being fed live events and
becomes *unsynced*; once it has drained its queue it is caught up from the
store's history, revision by revision, and then synced again.  If history it
needs has been compacted meanwhile, it is cancelled with the compacted
revision, so the client can re-list and resume from there: slow watchers are
never silently skipped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from kvstore.api import Error, ErrorCode, Event, EventType, WatchCreateRequest
from kvstore.mvcc import MVCCStore, key_range

Batch = tuple[int, list[Event]]
"""The (filtered) events of one revision."""


@dataclass(frozen=True)
class Cancellation:
    reason: str
    compact_revision: int = 0


@dataclass
class Watcher:
    id: int
    request: WatchCreateRequest
    low: bytes
    high: bytes | None
    next_revision: int
    """The first revision whose events have not yet been queued or taken."""
    synced: bool
    queue: deque[Batch] = field(default_factory=deque)
    queued_events: int = 0
    cancellation: Cancellation | None = None
    notify: Callable[[], None] = lambda: None
    """Called when there is something new to take."""

    def matches(self, key: bytes) -> bool:
        return key >= self.low and (self.high is None or key < self.high)

    def select(self, events: list[Event]) -> list[Event]:
        """This watch's view of one revision's events: its keys, its filters,
        and prev_kv only if asked for."""
        request = self.request
        selected: list[Event] = []
        for event in events:
            if not self.matches(event.kv.key):
                continue
            if (event.type is EventType.PUT and request.no_put) or (
                event.type is EventType.DELETE and request.no_delete
            ):
                continue
            if not request.prev_kv and event.prev_kv is not None:
                event = Event(event.type, event.kv)
            selected.append(event)
        return selected


class WatchHub:
    def __init__(
        self,
        store: Callable[[], MVCCStore],
        max_queued_events: int = 4096,
        catch_up_revisions: int = 256,
    ) -> None:
        self._store = store
        self._watchers: dict[int, Watcher] = {}
        self.max_queued_events = max_queued_events
        self.catch_up_revisions = catch_up_revisions
        self.slow_watchers = 0
        """How many times a watch fell behind and was switched to catching up."""
        self.events_sent = 0
        """Events handed to watch streams for sending (their consumers count them)."""

    def __len__(self) -> int:
        return len(self._watchers)

    def create(self, watch_id: int, request: WatchCreateRequest) -> Watcher:
        """Register a watch starting at ``request.start_revision`` (0 = the next revision)."""
        store = self._store()
        current = store.revision
        start = request.start_revision or current + 1
        low, high = key_range(request.key, request.range_end)
        watcher = Watcher(watch_id, request, low, high, start, synced=start > current)
        if not watcher.synced and store.compact_revision and start <= store.compact_revision:
            watcher.cancellation = Cancellation(
                "required revision has been compacted", store.compact_revision
            )
        self._watchers[watch_id] = watcher
        return watcher

    def cancel(self, watch_id: int, reason: str) -> None:
        watcher = self._watchers.get(watch_id)
        if watcher is not None and watcher.cancellation is None:
            watcher.cancellation = Cancellation(reason)
            watcher.notify()

    def wake_all(self) -> None:
        """Have every watch look again (for instance because the member lost its leader)."""
        for watcher in self._watchers.values():
            watcher.notify()

    def remove(self, watch_id: int) -> None:
        self._watchers.pop(watch_id, None)

    def on_apply(self, revision: int, events: list[Event]) -> None:
        """The events of ``revision``, just applied."""
        for watcher in self._watchers.values():
            if not watcher.synced or watcher.next_revision > revision:
                continue
            if watcher.queued_events >= self.max_queued_events:
                # Stop feeding it; it catches up from history once drained.
                watcher.synced = False
                self.slow_watchers += 1
                continue
            selected = watcher.select(events)
            watcher.next_revision = revision + 1
            if selected:
                watcher.queue.append((revision, selected))
                watcher.queued_events += len(selected)
                watcher.notify()

    def on_restore(self) -> None:
        """The store was replaced by a snapshot: every watch catches up from
        its history (or is cancelled if that history is gone)."""
        for watcher in self._watchers.values():
            watcher.synced = False
            watcher.notify()

    def take(self, watcher: Watcher) -> list[Batch] | Cancellation:
        """What ``watcher`` may send now, in order (possibly nothing)."""
        if watcher.cancellation is not None:
            return watcher.cancellation
        if watcher.queue:
            batches = list(watcher.queue)
            watcher.queue.clear()
            watcher.queued_events = 0
            return batches
        if watcher.synced:
            return []
        return self._catch_up(watcher)

    def progress(self, watcher: Watcher) -> int | None:
        """A revision every event up to which ``watcher`` has been handed, if
        it is synced with nothing queued (a progress notification may say so)."""
        if watcher.synced and not watcher.queue and watcher.cancellation is None:
            return self._store().revision
        return None

    def _catch_up(self, watcher: Watcher) -> list[Batch] | Cancellation:
        store = self._store()
        current = store.revision
        end = min(current, watcher.next_revision + self.catch_up_revisions - 1)
        if watcher.next_revision > current:
            watcher.synced = True
            return []
        request = watcher.request
        history = store.events_since(
            watcher.next_revision, request.key, request.range_end or b"", end
        )
        if isinstance(history, Error):
            compact = history.compact_revision if history.code is ErrorCode.COMPACTED else 0
            watcher.cancellation = Cancellation(history.message, compact)
            return watcher.cancellation
        batches: list[Batch] = []
        for event in history:
            revision = event.kv.mod_revision
            if batches and batches[-1][0] == revision:
                batches[-1][1].append(event)
            else:
                batches.append((revision, [event]))
        watcher.next_revision = end + 1
        if end == current:
            watcher.synced = True  # no await between this read and the next on_apply
        return [
            (revision, selected)
            for revision, events in batches
            if (selected := watcher.select(events))
        ]
