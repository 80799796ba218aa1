"""The outbox: direct writes when nothing is ahead, a queue and a writer task
otherwise, bytes always in order, a partly written chunk never carried over
to the next connection."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator

import pytest
import trio

from raft.outbox import Outbox


def _pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return trio.SocketStream(a), trio.SocketStream(b)


async def _read_exactly(stream: trio.SocketStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        assert chunk, "stream ended early"
        data += chunk
    return bytes(data)


@contextlib.asynccontextmanager
async def _pumping(outbox: Outbox) -> AsyncIterator[tuple[trio.SocketStream, trio.SocketStream]]:
    """A fresh connection (writer, reader) that ``outbox`` pumps, idle when
    the body starts; the pump stops on exit."""
    writer, reader = _pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.pump, writer)
        await trio.testing.wait_all_tasks_blocked()
        yield writer, reader
        nursery.cancel_scope.cancel()


def _fill(stream: trio.SocketStream) -> bytes:
    """Write to ``stream`` until its socket would block; returns what was written."""
    written = 0
    while True:
        try:
            written += os.write(stream.socket.fileno(), b"f" * 65536)
        except BlockingIOError:
            return b"f" * written


def test_a_put_with_nothing_ahead_is_written_at_once() -> None:
    async def main() -> None:
        taken: list[int] = []
        outbox = Outbox(on_taken=taken.append)
        async with _pumping(outbox) as (_, reader):
            assert outbox.put(b"hello", tokens=1)
            assert len(outbox) == 0
            assert await _read_exactly(reader, 5) == b"hello"
            assert taken == []  # written directly: the caller accounts for it

    trio.run(main)


def test_a_burst_is_batched_and_a_lone_put_later_goes_straight_out() -> None:
    async def main() -> None:
        outbox = Outbox(cork_seconds=0.001, clock=trio.current_time)
        async with _pumping(outbox) as (_, reader):
            assert outbox.put(b"a")  # straight out
            assert [outbox.put(b"b"), outbox.put(b"c")] == [False, False]  # corked: queued
            assert await _read_exactly(reader, 3) == b"abc"
            await trio.sleep(0.002)
            assert outbox.put(b"d")
            assert await _read_exactly(reader, 1) == b"d"
            # A stream of puts closer together than the cork: all via the pump.
            for letter in b"efg":
                await trio.sleep(0.0006)
                assert not outbox.put(bytes([letter]))
                await outbox.drained()
            assert await _read_exactly(reader, 3) == b"efg"

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_puts_behind_a_blocked_socket_queue_and_go_out_in_order() -> None:
    async def main() -> None:
        taken: list[int] = []
        outbox = Outbox(on_taken=taken.append)
        async with _pumping(outbox) as (writer, reader):
            filler = _fill(writer)
            chunks = [bytes([65 + n]) * 3000 for n in range(5)]
            results = [outbox.put(chunk, tokens=1) for chunk in chunks]
            assert results == [False] * 5  # the socket took nothing: all queued
            assert len(outbox) == 5
            received = await _read_exactly(reader, len(filler) + 15000)
            assert received == filler + b"".join(chunks)
            await outbox.drained()
            assert sum(taken) == 5

    trio.run(main)


def test_puts_before_the_connection_wait_for_it() -> None:
    async def main() -> None:
        taken: list[int] = []
        outbox = Outbox(on_taken=taken.append)
        assert not outbox.put(b"early", tokens=2)
        writer, reader = _pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.pump, writer)
            assert await _read_exactly(reader, 5) == b"early"
            assert taken == [2]
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_the_rest_of_a_partly_written_chunk_is_not_sent_on_the_next_connection() -> None:
    async def main() -> None:
        outbox = Outbox()
        async with _pumping(outbox) as (_, first_reader):
            big = b"p" * 1_000_000
            assert outbox.put(big)  # some of it went out, the rest queued
            assert len(outbox) == 1
        # The pump stopped: the connection ended.
        assert not outbox.put(b"whole")  # no connection: queued
        second, second_reader = _pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.pump, second)
            assert await _read_exactly(second_reader, 5) == b"whole"
            with trio.move_on_after(0.05):
                extra = await second_reader.receive_some(10)
                pytest.fail(f"unexpected bytes on the new connection: {extra[:20]!r}")
            nursery.cancel_scope.cancel()
        del first_reader

    trio.run(main)


def test_drained_raises_once_the_connection_is_gone() -> None:
    async def main() -> None:
        outbox = Outbox()
        writer, reader = _pair()

        async def pump() -> None:
            with contextlib.suppress(trio.BrokenResourceError, OSError):
                await outbox.pump(writer)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump)
            await trio.testing.wait_all_tasks_blocked()
            _fill(writer)
            outbox.put(b"stuck")
            await reader.aclose()  # the peer goes away: the pump's write fails
            with pytest.raises(trio.BrokenResourceError):
                with trio.fail_after(5):
                    await outbox.drained()
            nursery.cancel_scope.cancel()

    trio.run(main)
