"""Moving Raft messages between members: over TCP, or in memory for tests.

A transport never blocks the core: :meth:`Transport.send` writes each peer's
messages straight to its socket when it can (:mod:`raft.outbox`), else puts
them on a bounded per-peer queue (``queue_size`` writes, each the messages of
one call), and drops them (counting the drop and marking the peer unreachable)
when the queue is full.  Raft tolerates lost messages; a stalled core does not
tolerate a slow peer.

TCP wire format: length-prefixed frames (:mod:`raft.framing`).  The dialling
side first sends a :class:`PeerHello` naming the cluster and both member ids;
then every frame is one msgpack-encoded :data:`~raft.messages.Message`.  The
dialling socket is bound to the member's own listen host, so members on
127.0.0.11, .12 and .13 are told apart by address (and address-based firewall
rules cut exactly what they should).  A malformed frame closes that connection
with a logged reason; it never reaches the core and never stops the member.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Protocol

import msgspec
import trio

from raft.framing import FrameError, FrameReader, encode_frame
from raft.messages import Heartbeat, HeartbeatResponse, Message, decode_message, encode_message
from raft.observer import RaftObserver, RoundTripTimer
from raft.outbox import Outbox

log = logging.getLogger(__name__)

Address = tuple[str, int]

DEFAULT_MAX_FRAME = 16 * 1024 * 1024
"""Largest peer frame accepted: room for a 1 MiB batch or snapshot chunk many times over."""


class PeerHello(msgspec.Struct, array_like=True):
    cluster_id: int
    frm: int
    to: int
    metadata: bytes = b""
    """Opaque to Raft; the application's word about the sender (kvstore: its
    client address, so followers can point clients at the leader)."""
    address: str = ""
    """The sender's own peer listen address (``host:port``): a member that
    joins an existing cluster knows nobody until the leader dials it, and
    answers it there (see :attr:`TcpTransport.on_hello`)."""


_hello_decoder = msgspec.msgpack.Decoder(PeerHello)


class Inbox(Protocol):
    """Where a transport hands what it receives (the Raft node)."""

    def deliver(self, message: Message) -> None:
        """Queue one received message; never blocks."""
        ...

    def drained(self) -> None:
        """Act on the messages delivered so far (the node may take its turn
        right here, a lone fsync included); never awaits.  A transport calls
        it after each burst of deliveries (once it has no whole message left
        to deliver), so that one turn steps them all."""
        ...


class Transport(Protocol):
    def send(self, messages: list[Message]) -> None:
        """Queue ``messages`` for their recipients; never blocks."""
        ...

    async def run(
        self,
        inbox: Inbox,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Receive messages and hand them to ``inbox`` until cancelled."""
        ...


class PeerStats:
    """Counters per peer, for metrics and status."""

    def __init__(self) -> None:
        self.bytes_sent: Counter[int] = Counter()
        self.bytes_received: Counter[int] = Counter()
        self.dropped: Counter[int] = Counter()
        self.unreachable: set[int] = set()


class TcpTransport:
    def __init__(
        self,
        node_id: int,
        listen: Address,
        peers: dict[int, Address],
        *,
        cluster_id: int = 0,
        queue_size: int = 4096,
        max_frame: int = DEFAULT_MAX_FRAME,
        backoff_min: float = 0.02,
        backoff_max: float = 1.0,
        metadata: bytes = b"",
        observer: RaftObserver | None = None,
    ) -> None:
        self.node_id = node_id
        self.metadata = metadata
        self.peer_metadata: dict[int, bytes] = {}
        """What each peer said about itself when it connected to us."""
        self.listen = listen
        self.cluster_id = cluster_id
        self.stats = PeerStats()
        self._round_trips = RoundTripTimer((observer or RaftObserver()).peer_round_trip)
        self._peers: dict[int, Address] = {}
        self._outboxes: dict[int, Outbox] = {}
        self._scopes: dict[int, trio.CancelScope] = {}
        self._queue_size = queue_size
        self._max_frame = max_frame
        self._backoff = (backoff_min, backoff_max)
        self._nursery: trio.Nursery | None = None
        self._inbox: Inbox | None = None
        self._pending_peers = dict(peers)
        self.bound_port = listen[1]
        self.on_hello: Callable[[int, str], None] | None = None
        """Called with a peer's id and advertised peer address whenever it
        connects to us (the application may add it with :meth:`set_peers`)."""

    @property
    def peers(self) -> dict[int, Address]:
        """The peers messages are sent to now."""
        return dict(self._peers) if self._nursery is not None else dict(self._pending_peers)

    # -- Sending ----------------------------------------------------------------------

    def send(self, messages: list[Message]) -> None:
        by_peer: dict[int, list[bytes]] = {}
        for message in messages:
            to = message.to
            if to not in self._outboxes:
                self.stats.dropped[to] += 1
                continue
            if type(message) is Heartbeat:
                self._round_trips.sent(to)
            by_peer.setdefault(to, []).append(encode_frame(encode_message(message)))
        for peer, frames in by_peer.items():
            outbox = self._outboxes[peer]
            if len(outbox) < self._queue_size:
                data = frames[0] if len(frames) == 1 else b"".join(frames)
                outbox.put(data)
                self.stats.bytes_sent[peer] += len(data)
            else:
                self.stats.dropped[peer] += len(frames)
                self.stats.unreachable.add(peer)
                self._round_trips.lost(peer)

    def set_peers(self, peers: dict[int, Address]) -> None:
        """Start talking to new peers and stop talking to removed ones."""
        if self._nursery is None:
            self._pending_peers = dict(peers)
            return
        for peer in list(self._peers):
            if peer not in peers or peers[peer] != self._peers[peer]:
                self._scopes.pop(peer).cancel()
                del self._outboxes[peer]
                del self._peers[peer]
        for peer, address in peers.items():
            if peer != self.node_id and peer not in self._peers:
                self._start_sender(peer, address)

    async def _receive_messages(self, reader: FrameReader, peer: int) -> None:
        """Deliver ``peer``'s messages until its connection ends; drained
        after each burst (and at the end, for a burst cut short)."""
        inbox = self._inbox
        assert inbox is not None
        try:
            while (payload := await reader.read()) is not None:
                self.stats.bytes_received[peer] += len(payload) + 4
                message = decode_message(payload)
                if message.frm != peer or message.to != self.node_id:
                    raise FrameError(f"message {message.frm}->{message.to} on the link from {peer}")
                inbox.deliver(message)
                if type(message) is HeartbeatResponse:
                    self._round_trips.answered(peer)
                if not reader.has_buffered_frame():
                    inbox.drained()
        finally:
            inbox.drained()

    def _start_sender(self, peer: int, address: Address) -> None:
        assert self._nursery is not None
        outbox = Outbox()
        scope = trio.CancelScope()
        self._peers[peer] = address
        self._outboxes[peer] = outbox
        self._scopes[peer] = scope
        self._nursery.start_soon(self._sender, peer, address, outbox, scope)

    async def _sender(
        self,
        peer: int,
        address: Address,
        outbox: Outbox,
        scope: trio.CancelScope,
    ) -> None:
        backoff = self._backoff[0]
        with scope:
            while True:
                try:
                    stream = await trio.open_tcp_stream(*address, local_address=self.listen[0])
                except OSError as error:
                    self.stats.unreachable.add(peer)
                    log.debug(
                        "node %d: cannot reach %d at %s: %s", self.node_id, peer, address, error
                    )
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, self._backoff[1])
                    continue
                backoff = self._backoff[0]
                try:
                    async with stream:
                        hello = PeerHello(
                            cluster_id=self.cluster_id,
                            frm=self.node_id,
                            to=peer,
                            metadata=self.metadata,
                            address=f"{self.listen[0]}:{self.bound_port}",
                        )
                        await stream.send_all(encode_frame(msgspec.msgpack.encode(hello)))
                        self.stats.unreachable.discard(peer)
                        await outbox.pump(stream)
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as error:
                    self.stats.unreachable.add(peer)
                    self._round_trips.lost(peer)
                    log.debug("node %d: connection to %d lost: %s", self.node_id, peer, error)
                    await trio.sleep(backoff)

    # -- Receiving --------------------------------------------------------------------

    async def run(
        self,
        inbox: Inbox,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Receive messages and hand them to ``inbox`` until cancelled; a
        connection's receiver says :meth:`Inbox.drained` once it has
        delivered every whole frame it has read."""
        self._inbox = inbox
        listeners = await trio.open_tcp_listeners(self.listen[1], host=self.listen[0])
        self.bound_port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(trio.serve_listeners, self._handle_connection, listeners)
            self.set_peers(self._pending_peers)
            task_status.started()

    async def _handle_connection(self, stream: trio.SocketStream) -> None:
        reader = FrameReader(stream, self._max_frame)
        peer = 0
        async with stream:
            try:
                first = await reader.read()
                if first is None:
                    return
                hello = _hello_decoder.decode(first)
                if hello.to != self.node_id or hello.cluster_id != self.cluster_id:
                    log.warning(
                        "node %d: refusing peer connection for node %d of cluster %d",
                        self.node_id,
                        hello.to,
                        hello.cluster_id,
                    )
                    return
                peer = hello.frm
                self.peer_metadata[peer] = hello.metadata
                if self.on_hello is not None and hello.address:
                    self.on_hello(peer, hello.address)
                await self._receive_messages(reader, peer)
            except (FrameError, msgspec.DecodeError) as error:
                log.warning(
                    "node %d: closing connection from peer %d: %s", self.node_id, peer, error
                )
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                return
