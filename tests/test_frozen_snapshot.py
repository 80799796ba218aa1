"""Snapshots taken off the event loop: a frozen state encodes, later and in
another thread, to exactly the snapshot of the state at its index, whatever
was applied since; and the chunked encoding equals encoding in one go."""

from __future__ import annotations

import threading
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.api import (
    CompactionRequest,
    DeleteRangeRequest,
    LeaseGrantRequest,
    LeaseRevokeRequest,
    PutRequest,
    TxnRequest,
)
from kvstore.commands import Command, WriteRequest, encode_command
from kvstore.state_machine import (
    _MAGIC,
    _PREAMBLE,
    _SNAPSHOT_ENCODE_CHUNK,
    SNAPSHOT_FORMAT,
    KVStateMachine,
    _Snapshot,
    _snapshot_encoder,
)


def _one_shot_snapshot(machine: KVStateMachine) -> bytes:
    """The snapshot encoded in one call, as it was before chunking."""
    body = _snapshot_encoder.encode(
        _Snapshot(
            machine.applied_index,
            machine.store.dump(),
            machine.leases.records(),
            machine.members,
        )
    )
    return _PREAMBLE.pack(_MAGIC, SNAPSHOT_FORMAT, zlib.crc32(body)) + body


def _apply_all(machine: KVStateMachine, requests: list[WriteRequest]) -> None:
    for request in requests:
        index = machine.applied_index + 1
        machine.apply(index, encode_command(Command(1, index, request)))


def _puts(n: int, start: int = 0, keys: int = 1_000_000) -> list[WriteRequest]:
    return [PutRequest(key=b"k%07d" % ((start + i) % keys), value=b"v" * 20) for i in range(n)]


@pytest.mark.parametrize(
    "versions",
    [
        0,
        1,
        15,
        16,
        _SNAPSHOT_ENCODE_CHUNK - 1,
        _SNAPSHOT_ENCODE_CHUNK,
        _SNAPSHOT_ENCODE_CHUNK + 1,
        65_535,
        65_536,
        70_000,
    ],
)
def test_chunked_encoding_equals_one_shot(versions: int) -> None:
    machine = KVStateMachine()
    _apply_all(machine, _puts(versions, keys=40_000))
    snapshot = machine.snapshot()
    assert snapshot == _one_shot_snapshot(machine)
    restored = KVStateMachine.from_snapshot(snapshot)
    assert restored.snapshot() == snapshot


_writes = st.one_of(
    st.builds(
        PutRequest,
        key=st.sampled_from([b"a", b"b", b"c", b"d"]),
        value=st.binary(max_size=4),
    ),
    st.builds(DeleteRangeRequest, key=st.sampled_from([b"a", b"b"]), range_end=st.just(b"c")),
    st.builds(
        TxnRequest,
        success=st.lists(
            st.builds(PutRequest, key=st.sampled_from([b"a", b"x"]), value=st.just(b"t")),
            max_size=2,
            unique_by=lambda put: put.key,
        ),
    ),
    st.builds(LeaseGrantRequest, id=st.integers(1, 3), ttl=st.just(10)),
    st.builds(LeaseRevokeRequest, id=st.integers(1, 3)),
)


@settings(max_examples=60, deadline=None)
@given(
    before=st.lists(_writes, max_size=30),
    compact_before=st.booleans(),
    after=st.lists(_writes, max_size=30),
    compact_after=st.booleans(),
)
def test_frozen_state_encodes_the_state_at_its_index(
    before: list[WriteRequest],
    compact_before: bool,
    after: list[WriteRequest],
    compact_after: bool,
) -> None:
    """Freeze, go on applying (writes, deletes, txns, leases, compactions),
    then encode: the bytes are those of a machine that stopped at the freeze."""
    machine = KVStateMachine()
    reference = KVStateMachine()
    for target in (machine, reference):
        _apply_all(target, before)
        if compact_before:
            _apply_all(target, [CompactionRequest(revision=target.store.revision)])
    frozen = machine.capture()
    assert frozen.index == reference.applied_index
    _apply_all(machine, after)
    if compact_after:
        _apply_all(machine, [CompactionRequest(revision=machine.store.revision)])
    assert frozen.encode() == reference.snapshot()


def test_encoding_in_a_thread_while_applying_goes_on() -> None:
    """The frozen state is encoded by a worker thread while the owner keeps
    applying and compacting: the result is still the state at the freeze."""
    machine = KVStateMachine()
    _apply_all(machine, _puts(30_000, keys=10_000))
    reference = KVStateMachine.from_snapshot(machine.snapshot())
    frozen = machine.capture()
    encoded: list[bytes] = []
    worker = threading.Thread(target=lambda: encoded.append(frozen.encode()))
    worker.start()
    applied = 0
    while worker.is_alive() or applied < 2_000:
        _apply_all(machine, _puts(100, start=30_000 + applied, keys=10_000))
        applied += 100
        if applied % 1_000 == 0:
            _apply_all(machine, [CompactionRequest(revision=machine.store.revision - 50)])
    worker.join()
    assert encoded == [reference.snapshot()]
    assert machine.applied_index > frozen.index
