"""An in-process network of transports, for tests of the trio driver that run
under ``trio.testing.MockClock`` (real sockets and a jumping clock don't mix)."""

from __future__ import annotations

import trio

from raft.messages import Message
from raft.transport import Inbox


class MemoryNetwork:
    """Connects :class:`MemoryTransport` s; links can be cut one way or both."""

    def __init__(self) -> None:
        self._members: dict[int, Inbox] = {}
        self.blocked: set[tuple[int, int]] = set()
        self.delivered = 0

    def transport(self, node_id: int) -> MemoryTransport:
        return MemoryTransport(self, node_id)

    def isolate(self, node: int) -> None:
        for other in self._members:
            if other != node:
                self.blocked |= {(node, other), (other, node)}

    def heal(self) -> None:
        self.blocked.clear()

    def _send(self, message: Message) -> None:
        inbox = self._members.get(message.to)
        if inbox is not None and (message.frm, message.to) not in self.blocked:
            self.delivered += 1
            inbox.deliver(message)
            inbox.drained()


class MemoryTransport:
    def __init__(self, network: MemoryNetwork, node_id: int) -> None:
        self._network = network
        self.node_id = node_id

    def send(self, messages: list[Message]) -> None:
        for message in messages:
            self._network._send(message)

    async def run(
        self, inbox: Inbox, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Register ``inbox`` until cancelled.  Each message is delivered
        (and drained) in the sender's task, in the middle of its send."""
        self._network._members[self.node_id] = inbox
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            del self._network._members[self.node_id]
