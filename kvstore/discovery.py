"""Service discovery: instances register under a prefix with a session lease.

::

    registry = ServiceRegistry(client)
    async with await registry.register("billing", "b-1", "10.0.0.5:8080", {"zone": "a"}):
        ...                                    # registered while this block runs

    instances = await registry.list("billing")          # {"b-1": Instance(...)}
    async for change in registry.watch("billing"):      # added / updated / removed
        ...

An instance is the key ``<service_prefix><service>/<instance_id>`` with the
JSON value ``{"address": ..., "metadata": {...}}``, attached to a
:class:`~kvstore.concurrency.Session` lease: when the registering process
stops renewing it (it exits, crashes, or is cut off for a TTL), the lease
expires and the instance disappears, and watchers see it removed.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import trio

from kvstore.api import EventType, KeyValue
from kvstore.client import Client, CompactedError
from kvstore.concurrency import Session

__all__ = ["ChangeKind", "Instance", "Registration", "ServiceChange", "ServiceRegistry"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Instance:
    """One registered instance of a service."""

    service: str
    instance_id: str
    address: str
    metadata: dict[str, Any] = field(default_factory=dict)
    revision: int = 0
    """The revision of its last registration or update (``mod_revision``)."""
    lease: int = 0


class ChangeKind(enum.StrEnum):
    ADDED = "added"
    UPDATED = "updated"
    REMOVED = "removed"


@dataclass(frozen=True)
class ServiceChange:
    """An instance was added, updated (new address or metadata) or removed.
    For ``removed``, ``instance`` is how it was last seen."""

    kind: ChangeKind
    instance: Instance

    @property
    def instance_id(self) -> str:
        return self.instance.instance_id


def _check_name(what: str, name: str) -> None:
    if not name or "/" in name:
        raise ValueError(f"a {what} must be non-empty and contain no '/': {name!r}")


class Registration:
    """A registered instance; :meth:`close` (or leaving ``async with``)
    deregisters it.  :attr:`lost` is set if its lease was lost, after which
    the instance is no longer listed."""

    def __init__(
        self, registry: ServiceRegistry, key: bytes, instance: Instance, session: Session, own: bool
    ) -> None:
        self.registry = registry
        self.key = key
        self.instance = instance
        self.session = session
        self._own_session = own
        self._closed = False

    @property
    def lost(self) -> trio.Event:
        return self.session.lost

    async def close(self) -> None:
        """Deregister: revoke the registration's own session (deleting the key
        with it), or delete the key if the session was given by the caller.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._own_session:
            await self.session.close()
        else:
            await self.registry.client.delete(self.key)

    async def __aenter__(self) -> Registration:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class ServiceRegistry:
    """Register, list and watch service instances under ``service_prefix``."""

    def __init__(self, client: Client, service_prefix: str = "services/") -> None:
        if not service_prefix.endswith("/"):
            service_prefix += "/"
        self.client = client
        self.service_prefix = service_prefix

    def _service_prefix(self, service: str) -> bytes:
        _check_name("service name", service)
        return f"{self.service_prefix}{service}/".encode()

    def key(self, service: str, instance_id: str) -> bytes:
        """The key of one instance."""
        _check_name("instance id", instance_id)
        return self._service_prefix(service) + instance_id.encode()

    async def register(
        self,
        service: str,
        instance_id: str,
        address: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        ttl: int = 10,
        session: Session | None = None,
    ) -> Registration:
        """Register ``instance_id`` of ``service`` at ``address``, with
        JSON-serializable ``metadata``, until the returned handle is closed or
        the lease is lost.  By default the registration has a session of its
        own with ``ttl`` seconds; pass ``session`` to share one (then closing
        the handle deletes the key and leaves the session alone).  Registering
        an existing instance id replaces it."""
        key = self.key(service, instance_id)
        value = json.dumps({"address": address, "metadata": dict(metadata or {})})
        own = session is None
        active = await Session(self.client, ttl).start() if session is None else session
        try:
            response = await self.client.put(key, value, lease=active.lease_id)
        except BaseException:
            if own:
                await active.close()
            raise
        instance = Instance(
            service,
            instance_id,
            address,
            dict(metadata or {}),
            response.header.revision,
            active.lease_id,
        )
        return Registration(self, key, instance, active, own)

    def _decode(self, service: str, kv: KeyValue) -> Instance | None:
        prefix = self._service_prefix(service)
        instance_id = kv.key[len(prefix) :].decode(errors="replace")
        try:
            value = json.loads(kv.value)
            address = value["address"]
            metadata = value.get("metadata") or {}
            if not isinstance(address, str) or not isinstance(metadata, dict):
                raise TypeError("address must be a string and metadata an object")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring a malformed instance %r: %s", kv.key, exc)
            return None
        return Instance(service, instance_id, address, metadata, kv.mod_revision, kv.lease)

    async def _snapshot(self, service: str) -> tuple[dict[str, Instance], int]:
        response = await self.client.get(self._service_prefix(service), prefix=True)
        instances = {
            instance.instance_id: instance
            for kv in response.kvs
            if (instance := self._decode(service, kv)) is not None
        }
        return instances, response.header.revision

    async def list(self, service: str) -> dict[str, Instance]:
        """The instances of ``service`` now (a linearizable read), by id."""
        instances, _ = await self._snapshot(service)
        return instances

    async def watch(self, service: str) -> AsyncGenerator[ServiceChange, None]:
        """Every change to ``service``'s instances: first one ``added`` per
        instance present now, then each addition, update and removal as it
        happens, in revision order, never repeated or skipped.

        Survives client fail-over like any watch.  If history it needs was
        compacted, it re-lists and yields the difference between what it had
        and what is there now, then goes on.  Runs until closed (use
        ``contextlib.aclosing``).
        """
        known: dict[str, Instance] = {}
        prefix = self._service_prefix(service)
        while True:
            current, revision = await self._snapshot(service)
            for change in _diff(known, current):
                yield change
            known = current
            try:
                async with self.client.watch(
                    prefix, prefix=True, start_revision=revision + 1
                ) as watch:
                    async for response in watch:
                        for event in response.events:
                            update = self._apply(service, known, event.type, event.kv)
                            if update is not None:
                                yield update
            except CompactedError:
                log.info("service watch on %r was compacted; re-listing", service)
                continue
            return

    def _apply(
        self, service: str, known: dict[str, Instance], kind: EventType, kv: KeyValue
    ) -> ServiceChange | None:
        instance_id = kv.key[len(self._service_prefix(service)) :].decode(errors="replace")
        if kind is EventType.DELETE:
            gone = known.pop(instance_id, None)
            return None if gone is None else ServiceChange(ChangeKind.REMOVED, gone)
        instance = self._decode(service, kv)
        if instance is None:
            gone = known.pop(instance_id, None)
            return None if gone is None else ServiceChange(ChangeKind.REMOVED, gone)
        before = known.get(instance_id)
        known[instance_id] = instance
        if before is None:
            return ServiceChange(ChangeKind.ADDED, instance)
        if (before.address, before.metadata) == (instance.address, instance.metadata):
            return None  # re-registered as it was (e.g. a new lease): nothing to tell
        return ServiceChange(ChangeKind.UPDATED, instance)


def _diff(before: dict[str, Instance], after: dict[str, Instance]) -> list[ServiceChange]:
    changes = [
        ServiceChange(ChangeKind.REMOVED, instance)
        for instance_id, instance in before.items()
        if instance_id not in after
    ]
    for instance_id, instance in after.items():
        old = before.get(instance_id)
        if old is None:
            changes.append(ServiceChange(ChangeKind.ADDED, instance))
        elif (old.address, old.metadata) != (instance.address, instance.metadata):
            changes.append(ServiceChange(ChangeKind.UPDATED, instance))
    return changes
