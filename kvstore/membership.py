"""The cluster's member table, as replicated through the log.

Raft's configuration (``raft.membership``) knows member ids only.  The member
table adds what a member needs to reach and describe the others: names and
peer addresses, who is a learner, and every id ever removed (ids are never
reused: a removed member's id is refused forever).

Every Raft conf-change entry carries the *whole* table after the change in its
context, so the table in effect is always that of the newest conf change
applied (or of the latest snapshot, or, before any change, the bootstrap table
every initial member computes from ``--initial-cluster``).  A member that joins
an existing cluster learns the whole table from the entry that added it.

Sans-I/O: nothing here touches the network, the disk or Raft.
"""

from __future__ import annotations

import hashlib
import secrets

import msgspec


class MemberRecord(msgspec.Struct, array_like=True, frozen=True):
    id: int
    name: str
    peer_address: str
    """``host:port`` other members dial."""
    learner: bool = False


class MemberTable(msgspec.Struct, array_like=True, frozen=True):
    members: tuple[MemberRecord, ...] = ()
    removed: tuple[int, ...] = ()
    """Ids removed from the cluster, never to be used again."""

    def get(self, member_id: int) -> MemberRecord | None:
        for member in self.members:
            if member.id == member_id:
                return member
        return None

    def ids(self) -> set[int]:
        return {member.id for member in self.members}

    def with_added(self, member: MemberRecord) -> MemberTable:
        members = tuple(sorted((*self.members, member), key=lambda m: m.id))
        return MemberTable(members, self.removed)

    def with_promoted(self, member_id: int) -> MemberTable:
        members = tuple(
            msgspec.structs.replace(m, learner=False) if m.id == member_id else m
            for m in self.members
        )
        return MemberTable(members, self.removed)

    def without(self, member_id: int) -> MemberTable:
        members = tuple(m for m in self.members if m.id != member_id)
        return MemberTable(members, tuple(sorted({*self.removed, member_id})))


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(MemberTable)


def encode_table(table: MemberTable) -> bytes:
    return _encoder.encode(table)


def decode_table(data: bytes) -> MemberTable | None:
    """The table in a conf change's context, or None if there is none (or it is
    not one: the entry then leaves the table as it was)."""
    if not data:
        return None
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError:
        return None


def new_member_id(name: str, peer_address: str, cluster_token: str, taken: set[int]) -> int:
    """A fresh 63-bit id for a member being added: a hash of its name, peer
    address, the cluster token and a random nonce (as etcd mixes in the time),
    never one in ``taken`` (current and removed ids)."""
    while True:
        nonce = secrets.token_hex(8)
        text = "\0".join(("added-member", cluster_token, name, peer_address, nonce))
        digest = hashlib.sha256(text.encode()).digest()
        member_id = int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)
        if member_id and member_id not in taken:
            return member_id
