"""Coordination recipes on the client: sessions, locks with fencing tokens, elections.

Everything here is built from the public client API (txn, range, watch,
leases) the way etcd's ``concurrency`` package is, so the server needs no
special support and any client can inspect the keys involved.

* :class:`Session`: a lease kept alive in the background, with a way to learn
  that it was lost.
* :class:`Mutex`: a distributed lock whose holder gets a **fencing token**.
* :class:`Election`: campaign, proclaim, leader, observe, resign.

Read the :class:`Mutex` docstring before relying on a lock for correctness.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import TypeVar

import trio

from kvstore import api
from kvstore.api import ErrorCode, EventType, KeyValue, SortOrder, SortTarget
from kvstore.client import Client, CompactedError, InvalidRequest, KvError
from kvstore.txn import Compare, Data, Op, to_bytes

__all__ = [
    "ConcurrencyError",
    "Election",
    "LockLost",
    "Mutex",
    "NotLeader",
    "Session",
    "SessionExpired",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


class ConcurrencyError(Exception):
    """Base of the errors of this module."""


class SessionExpired(ConcurrencyError):
    """The session's lease is gone (expired, revoked, or no longer kept alive),
    so nothing attached to it can be relied on."""


class LockLost(SessionExpired):
    """:meth:`Mutex.lock` waited its turn but its key was gone by then (its
    session expired meanwhile): the lock was **not** acquired."""


class NotLeader(ConcurrencyError):
    """The election call needs leadership this candidate does not hold."""


# -- Session ------------------------------------------------------------------------------


class Session:
    """A lease kept alive in the background for as long as the session is open.

    ::

        async with Session(client, ttl=10) as session:
            await client.put("me", "here", lease=session.lease_id)
            ...   # "me" exists until the session closes or is lost

    Entering grants a lease of ``ttl`` seconds (the server may raise it to its
    minimum), or adopts ``lease_id`` if given; a background task in the
    client's nursery renews it every third of its TTL.

    :attr:`lost` is set as soon as the session can no longer be relied on:
    a keep-alive said the lease is gone, no keep-alive succeeded for a whole
    TTL (measured on this process's clock from the moment the last successful
    one was *sent*, so the session gives up no later than the server could
    expire the lease), or the session was closed or orphaned.  Code that acts
    under a session's protection (a lock, a leadership) should stop when it
    is set; :meth:`wait_lost` waits for it.

    :meth:`close` (leaving the ``async with`` block) stops the keep-alives and
    revokes the lease, deleting every key attached to it; :meth:`orphan` only
    stops the keep-alives, so the lease expires after its TTL.
    """

    def __init__(self, client: Client, ttl: int = 60, *, lease_id: int = 0) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self.client = client
        self.ttl = ttl
        """The TTL in seconds: as asked, then as granted."""
        self.lease_id = lease_id
        self.lost = trio.Event()
        self._expires_at = -math.inf
        self._scope: trio.CancelScope | None = None
        self._closed = False

    async def start(self) -> Session:
        """Grant (or adopt) the lease and start keeping it alive.  ``async
        with`` does this.  Raises :class:`SessionExpired` if an adopted lease
        does not exist, and the client's errors if the grant fails."""
        if self._scope is not None:
            raise RuntimeError("a Session can be started only once")
        sent = trio.current_time()
        if self.lease_id:
            response = await self.client.lease_keep_alive_once(self.lease_id)
            if response.ttl <= 0:
                raise SessionExpired(f"lease {self.lease_id:x} does not exist")
            self.ttl = response.ttl
        else:
            granted = await self.client.lease_grant(self.ttl)
            self.lease_id, self.ttl = granted.id, granted.ttl
        self._expires_at = sent + self.ttl
        self._scope = self.client.start_background_task(
            self._keep_alive, name=f"session {self.lease_id:x}"
        )
        return self

    @property
    def is_lost(self) -> bool:
        return self.lost.is_set()

    async def wait_lost(self) -> None:
        """Return once the session is lost (see :attr:`lost`)."""
        await self.lost.wait()

    def orphan(self) -> None:
        """Stop keeping the lease alive without revoking it: it expires after
        its TTL (unless someone else keeps it alive).  Sets :attr:`lost`."""
        if self._scope is not None:
            self._scope.cancel()
        self.lost.set()

    async def close(self) -> None:
        """Stop the keep-alives and revoke the lease, deleting its keys.
        Idempotent.  Best effort: if the revoke fails the lease still expires
        after its TTL, which is logged, not raised."""
        if self._closed:
            return
        self._closed = True
        was_lost = self.lost.is_set()
        self.orphan()
        if not self.lease_id or self.client.closed:
            return
        try:
            with trio.CancelScope(shield=True):
                await self.client.lease_revoke(self.lease_id)
        except InvalidRequest:
            pass  # already gone
        except (KvError, trio.ClosedResourceError) as exc:
            if not was_lost:
                log.warning(
                    "could not revoke lease %x (it expires in %ss): %s",
                    self.lease_id,
                    self.ttl,
                    exc,
                )

    async def __aenter__(self) -> Session:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _keep_alive(self) -> None:
        try:
            while True:
                # Renew a third of a TTL after the last successful renewal was sent.
                await trio.sleep_until(self._expires_at - self.ttl * 2 / 3)
                outcome = await self._renew()
                if outcome == "lost":
                    return
                if outcome == "retry":
                    await trio.sleep(min(self.ttl / 10, 0.1))
        finally:
            self.lost.set()

    async def _renew(self) -> str:
        """One keep-alive: ``renewed``, ``retry`` (failed; the lease may live),
        or ``lost`` (surely or presumably gone)."""
        sent = trio.current_time()
        with trio.move_on_after(self._expires_at - sent):
            try:
                response = await self.client.lease_keep_alive_once(self.lease_id)
            except InvalidRequest:
                log.warning("session %x lost: the lease no longer exists", self.lease_id)
                return "lost"
            except trio.ClosedResourceError:
                return "lost"
            except KvError as exc:
                log.info("session %x: keep-alive failed, retrying: %s", self.lease_id, exc)
                return "retry" if trio.current_time() < self._expires_at else "lost"
            if response.ttl <= 0:
                log.warning("session %x lost: the lease has expired", self.lease_id)
                return "lost"
            self._expires_at = sent + response.ttl
            return "renewed"
        log.warning("session %x lost: no keep-alive succeeded for a whole TTL", self.lease_id)
        return "lost"


# -- Helpers --------------------------------------------------------------------------------


def _prefix(name: Data) -> bytes:
    raw = to_bytes(name)
    if not raw:
        raise ValueError("a lock or election needs a name")
    return raw if raw.endswith(b"/") else raw + b"/"


async def _unless_lost(session: Session, fn: Callable[[], Awaitable[T]]) -> T:
    """``await fn()``, unless the session is lost first: then raise
    :class:`SessionExpired`.  ``fn``'s own exceptions propagate unwrapped."""
    if session.lost.is_set():
        raise SessionExpired(f"session {session.lease_id:x} is lost")
    result: list[T] = []
    error: list[BaseException] = []
    async with trio.open_nursery() as nursery:

        async def watch_session() -> None:
            await session.lost.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch_session)
        try:
            result.append(await fn())
        except Exception as exc:
            error.append(exc)
        nursery.cancel_scope.cancel()
    if error:
        raise error[0]
    if not result:
        raise SessionExpired(f"session {session.lease_id:x} was lost while waiting")
    return result[0]


async def _wait_for_delete(client: Client, key: bytes, after_revision: int) -> None:
    """Return once ``key`` is deleted in a revision after ``after_revision``
    (or was already, if history is compacted: the caller re-reads)."""
    try:
        async with client.watch(key, start_revision=after_revision + 1, no_put=True) as watch:
            async for response in watch:
                if any(event.type is EventType.DELETE for event in response.events):
                    return
    except CompactedError:
        return


async def _wait_predecessors(client: Client, prefix: bytes, my_revision: int) -> None:
    """Wait until no key under ``prefix`` was created before ``my_revision``.

    Watches only the immediate predecessor (the newest key older than mine),
    so a release wakes one waiter, not all of them; after each deletion it
    looks again, since the predecessor may have left before its turn.
    """
    while True:
        response = await client.get(
            prefix,
            prefix=True,
            sort_target=SortTarget.CREATE,
            sort_order=SortOrder.DESCEND,
            limit=1,
            max_create_revision=my_revision - 1,
            keys_only=True,
        )
        if not response.kvs:
            return
        await _wait_for_delete(client, response.kvs[0].key, response.header.revision)


async def _txn_in_session(
    session: Session,
    compare: Sequence[api.Compare],
    success: Sequence[api.RequestOp],
    failure: Sequence[api.RequestOp] = (),
) -> api.TxnResponse:
    """A txn whose puts attach to ``session``'s lease; :class:`SessionExpired`
    if the lease is gone (the store refuses a put with an unknown lease)."""
    try:
        return await session.client.txn(compare, success, failure)
    except InvalidRequest as exc:
        if exc.code is ErrorCode.LEASE_NOT_FOUND:
            session.lost.set()
            raise SessionExpired(f"session {session.lease_id:x}: the lease is gone") from exc
        raise


async def _delete_quietly(client: Client, key: bytes, create_revision: int) -> None:
    """Delete ``key`` if it is still the one created at ``create_revision``;
    shielded (it runs while cancelling) and best effort."""
    with trio.CancelScope(shield=True), trio.move_on_after(client.request_timeout):
        try:
            await client.txn([Compare.create_revision(key) == create_revision], [Op.delete(key)])
        except (KvError, trio.ClosedResourceError) as exc:
            log.info("could not delete %r (its lease will expire): %s", key, exc)


# -- Mutex -----------------------------------------------------------------------------------


class Mutex:
    """A distributed lock, etcd's algorithm, with a fencing token.

    ::

        async with Session(client, ttl=10) as session:
            mutex = Mutex(session, "locks/report")
            async with mutex:
                token = mutex.fencing_token
                await storage.write(data, token)          # storage rejects old tokens
                # or, for data in the store itself:
                await client.txn([mutex.is_owner()], [Op.put("report", data)])

    **How it works.**  Each contender puts a key ``<name>/<hex lease id>``
    attached to its session's lease, in a txn that creates it only if absent.
    The owner is the key with the lowest ``create_revision``, so the lock is
    handed out in arrival order.  A waiter watches only its immediate
    predecessor (the newest key older than its own) for deletion, so a release
    wakes one waiter, not every one.  When no older key is left, it reads its
    own key again: if the key is gone (its session expired while it waited),
    :meth:`lock` raises :class:`LockLost` instead of pretending to hold the
    lock (the bug of etcd#11456).  A holder that crashes or is cut off stops
    renewing its lease; the lease expires and its key is deleted, and the
    next waiter proceeds.

    **A lock alone does not give mutual exclusion.**  Holding the lock means
    "my key was the oldest when I last looked".  A holder can be paused (GC,
    swapping, SIGSTOP) or cut off by a partition for longer than its TTL; its
    lease then expires and another process acquires the lock, while the first
    one, on waking, still believes it holds it and goes on writing.  No client
    side check closes that window: the check and the write are never atomic,
    and the pause can fall between them (Jepsen, etcd 3.4.3; Kleppmann, "How
    to do distributed locking").

    **The fencing token closes it.**  :attr:`fencing_token` is the lock key's
    ``create_revision``: it is unique to one acquisition and strictly greater
    for every later acquisition of the same lock.  Pass it with every write to
    the protected resource, and make the resource remember the highest token
    it has accepted and reject lower ones: a paused former holder's writes are
    then refused.  When the protected data lives in this store, make each
    write a txn conditional on :meth:`is_owner`: the store itself checks,
    atomically with the write, that the lock key is still the one this
    acquisition created.
    """

    def __init__(self, session: Session, name: Data) -> None:
        self.session = session
        self.client = session.client
        self.prefix = _prefix(name)
        self._revision = 0

    @property
    def key(self) -> bytes:
        """This contender's key: ``<prefix><hex lease id>``."""
        return self.prefix + f"{self.session.lease_id:x}".encode()

    @property
    def fencing_token(self) -> int:
        """The lock key's ``create_revision``: strictly greater for every later
        acquisition of this lock.  Raises if the lock is not held."""
        if not self._revision:
            raise RuntimeError("the lock is not held")
        return self._revision

    @property
    def held(self) -> bool:
        """Whether :meth:`lock` succeeded and :meth:`unlock` was not called yet
        (a local view: see the class docstring)."""
        return self._revision != 0

    def is_owner(self) -> api.Compare:
        """A txn compare that holds only while this acquisition owns the lock
        (its key exists with the create revision it got).  Make writes that
        need the lock conditional on it."""
        return Compare.create_revision(self.key) == self.fencing_token

    async def _enqueue(self) -> tuple[int, KeyValue | None, bool]:
        """Put my key if absent: (my create revision, the owner, whether I created it)."""
        key = self.key
        first = Op.get(
            self.prefix, prefix=True, sort_target=SortTarget.CREATE, limit=1, keys_only=True
        )
        response = await _txn_in_session(
            self.session,
            [Compare.create_revision(key) == 0],
            [Op.put(key, b"", lease=self.session.lease_id), first],
            [Op.get(key), first],
        )
        if response.succeeded:
            revision = response.header.revision
        else:
            mine = response.responses[0]
            assert isinstance(mine, api.RangeResponse)
            revision = mine.kvs[0].create_revision
        owners = response.responses[1]
        assert isinstance(owners, api.RangeResponse)
        return revision, owners.kvs[0] if owners.kvs else None, response.succeeded

    async def try_lock(self) -> bool:
        """Take the lock if it is free, without waiting.  True if taken; False
        (and nothing left behind) if someone else holds it."""
        if self.session.lost.is_set():
            raise LockLost(f"session {self.session.lease_id:x} is lost")
        try:
            revision, owner, created = await self._enqueue()
        except SessionExpired as lost:
            raise LockLost(f"lock {self.prefix!r}: {lost}") from lost
        if owner is not None and owner.create_revision == revision:
            self._revision = revision
            return True
        if created:
            await _delete_quietly(self.client, self.key, revision)
        return False

    async def lock(self) -> None:
        """Wait for the lock, in arrival order, and take it.

        Raises :class:`LockLost` (a :class:`SessionExpired`) if the session
        was lost before the lock was acquired; then the lock was *not*
        acquired.  If cancelled while waiting, the key is removed again.
        """
        if self.session.lost.is_set():
            raise LockLost(f"session {self.session.lease_id:x} is lost")
        # If this raises OutcomeUnknown the key may exist: the lease removes it.
        try:
            revision, owner, _ = await self._enqueue()
        except SessionExpired as lost:
            raise LockLost(f"lock {self.prefix!r}: {lost}") from lost
        try:
            if owner is None or owner.create_revision != revision:
                await _unless_lost(
                    self.session, lambda: _wait_predecessors(self.client, self.prefix, revision)
                )
            # The etcd#11456 check: my key must still be the one I queued with.
            mine = await self.client.get(self.key)
            if not mine.kvs or mine.kvs[0].create_revision != revision:
                raise LockLost(
                    f"lock {self.prefix!r}: key {self.key!r} is gone (its session expired)"
                    " before the lock was acquired"
                )
            if self.session.is_lost:
                raise SessionExpired(f"session {self.session.lease_id:x} is lost")
        except SessionExpired as lost:
            await _delete_quietly(self.client, self.key, revision)
            if isinstance(lost, LockLost):
                raise
            raise LockLost(
                f"lock {self.prefix!r}: session {self.session.lease_id:x} was lost"
                " before the lock was acquired"
            ) from lost
        except BaseException:
            await _delete_quietly(self.client, self.key, revision)
            raise
        self._revision = revision

    async def unlock(self) -> None:
        """Release the lock (delete my key, if still mine).  Idempotent."""
        if not self._revision:
            return
        revision, self._revision = self._revision, 0
        await self.client.txn(
            [Compare.create_revision(self.key) == revision], [Op.delete(self.key)]
        )

    async def __aenter__(self) -> Mutex:
        await self.lock()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.unlock()
        except (KvError, trio.ClosedResourceError) as error:
            if exc is None:
                raise
            log.warning("could not release %r (its lease will expire): %s", self.key, error)


# -- Election ---------------------------------------------------------------------------------


class Election:
    """Leader election under ``name``, etcd's algorithm.

    ::

        async with Session(client, ttl=10) as session:
            election = Election(session, "jobs/scheduler")
            await election.campaign(b"host-a:8080")   # returns once leader
            ...                                       # lead while not session.lost
            await election.resign()

    Each candidate puts ``<name>/<hex lease id>`` with its value, attached to
    its session's lease; the leader is the candidate with the lowest
    ``create_revision``.  A candidate waits for its immediate predecessor
    only.  A leader whose session is lost (crash, partition, expiry) loses
    its key, and the next candidate takes over.  Like a lock, leadership can
    be lost without the former leader noticing in time: guard writes made as
    leader with :meth:`is_leader_compare` in a txn, or a fencing token
    (:attr:`revision`).
    """

    def __init__(self, session: Session, name: Data) -> None:
        self.session = session
        self.client = session.client
        self.prefix = _prefix(name)
        self._revision = 0

    @property
    def key(self) -> bytes:
        return self.prefix + f"{self.session.lease_id:x}".encode()

    @property
    def revision(self) -> int:
        """My key's create revision while leader (a fencing token), else 0."""
        return self._revision

    @property
    def is_leader(self) -> bool:
        """Whether :meth:`campaign` won and :meth:`resign` was not called (local view)."""
        return self._revision != 0

    def is_leader_compare(self) -> api.Compare:
        """A txn compare that holds only while this leadership lasts."""
        if not self._revision:
            raise NotLeader("not the leader")
        return Compare.create_revision(self.key) == self._revision

    async def campaign(self, value: Data) -> None:
        """Become a candidate with ``value``; return once leader.

        Raises :class:`SessionExpired` if the session is lost first.  If
        cancelled while waiting, the candidacy is withdrawn.
        """
        if self.session.lost.is_set():
            raise SessionExpired(f"session {self.session.lease_id:x} is lost")
        key, raw = self.key, to_bytes(value)
        response = await _txn_in_session(
            self.session,
            [Compare.create_revision(key) == 0],
            [Op.put(key, raw, lease=self.session.lease_id)],
            [Op.get(key)],
        )
        if response.succeeded:
            revision = response.header.revision
        else:
            existing = response.responses[0]
            assert isinstance(existing, api.RangeResponse)
            revision = existing.kvs[0].create_revision
            if existing.kvs[0].value != raw:
                await self._put_value(revision, raw)
        try:
            await _unless_lost(
                self.session, lambda: _wait_predecessors(self.client, self.prefix, revision)
            )
            mine = await self.client.get(key)
            if not mine.kvs or mine.kvs[0].create_revision != revision or self.session.is_lost:
                raise SessionExpired(
                    f"election {self.prefix!r}: key {key!r} is gone (its session expired)"
                    " before leadership was won"
                )
        except BaseException:
            await _delete_quietly(self.client, key, revision)
            raise
        self._revision = revision

    async def proclaim(self, value: Data) -> None:
        """Change the leader's value, without an election.  Raises
        :class:`NotLeader` unless this candidate is (still) the leader."""
        if not self._revision:
            raise NotLeader("proclaim needs leadership: campaign first")
        await self._put_value(self._revision, to_bytes(value))

    async def _put_value(self, revision: int, value: bytes) -> None:
        try:
            response = await _txn_in_session(
                self.session,
                [Compare.create_revision(self.key) == revision],
                [Op.put(self.key, value, lease=self.session.lease_id)],
            )
        except SessionExpired as lost:
            self._revision = 0
            raise NotLeader(f"election {self.prefix!r}: {lost}") from lost
        if not response.succeeded:
            self._revision = 0
            raise NotLeader(f"election {self.prefix!r}: my key is gone (session expired)")

    async def resign(self) -> None:
        """Give up leadership (delete my key, if still mine).  Idempotent."""
        if not self._revision:
            return
        revision, self._revision = self._revision, 0
        await self.client.txn(
            [Compare.create_revision(self.key) == revision], [Op.delete(self.key)]
        )

    async def leader(self) -> KeyValue | None:
        """The current leader's key and value, or None if nobody leads."""
        response = await self.client.get(
            self.prefix, prefix=True, sort_target=SortTarget.CREATE, limit=1
        )
        return response.kvs[0] if response.kvs else None

    async def observe(self) -> AsyncGenerator[KeyValue, None]:
        """The leader now (if any), then the leader each time it changes (a
        new leader, or a new value proclaimed).  Nothing is yielded while
        nobody leads.  Runs until closed; use ``contextlib.aclosing`` (or
        break out and let it be collected) to stop::

            async with aclosing(election.observe()) as leaders:
                async for leader in leaders:
                    print(leader.value)

        Survives fail-over like any watch; if history it needs was compacted
        it re-reads the candidates and goes on.
        """
        last: tuple[bytes, int, bytes] | None = None
        while True:
            response = await self.client.get(self.prefix, prefix=True)
            candidates = {kv.key: kv for kv in response.kvs}
            try:
                async with self.client.watch(
                    self.prefix, prefix=True, start_revision=response.header.revision + 1
                ) as watch:
                    while True:
                        current = min(
                            candidates.values(), key=lambda kv: kv.create_revision, default=None
                        )
                        if current is not None:
                            identity = (current.key, current.create_revision, current.value)
                            if identity != last:
                                last = identity
                                yield current
                        update = await watch.next()
                        if update is None:
                            return
                        for event in update.events:
                            if event.type is EventType.DELETE:
                                candidates.pop(event.kv.key, None)
                            else:
                                candidates[event.kv.key] = event.kv
            except CompactedError:
                continue
