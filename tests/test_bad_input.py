"""Nothing a client or a peer sends can stop a member: bad frames close that
connection with an error, bad requests get a definite error, and the member
goes on serving everyone else."""

from __future__ import annotations

import struct

import msgspec
import pytest
import trio

from kvstore import api
from kvstore.client import Client, InvalidRequest
from kvstore.testing import in_process_cluster
from raft.framing import FrameReader, encode_frame


async def open_raw(address: tuple[str, int]) -> tuple[trio.SocketStream, FrameReader]:
    stream = await trio.open_tcp_stream(*address)
    return stream, FrameReader(stream, api.MAX_FRAME_BYTES)


async def answer(reader: FrameReader) -> api.ServerFrame:
    with trio.fail_after(5):
        payload = await reader.read()
    assert payload is not None
    return api.decode_server_frame(payload)


async def closed(reader: FrameReader) -> bool:
    with trio.fail_after(5):
        return await reader.read() is None


def raw_request(request_id: int, request: dict[str, object]) -> bytes:
    return encode_frame(msgspec.msgpack.encode([request_id, request]))


def test_client_bytes_never_stop_a_member() -> None:
    async def main() -> None:
        async with in_process_cluster() as cluster, cluster.client() as client:
            address = cluster.clients["n1"]

            # A frame header announcing more than the limit: error, then closed,
            # before any of the body is read.
            stream, reader = await open_raw(address)
            await stream.send_all(struct.pack(">I", api.MAX_FRAME_BYTES + 1))
            error = (await answer(reader)).response
            assert isinstance(error, api.Error) and error.code is api.ErrorCode.MALFORMED
            assert await closed(reader)

            # Bytes that are not a request frame at all.
            stream, reader = await open_raw(address)
            await stream.send_all(encode_frame(b"\xc1\xff\x00garbage"))
            error = (await answer(reader)).response
            assert isinstance(error, api.Error) and error.definite
            assert await closed(reader)

            # Well-framed but unknown, malformed or too large: a definite error
            # for that request, and the connection goes on.
            stream, reader = await open_raw(address)
            await stream.send_all(raw_request(1, {"type": "launch_missiles"}))
            frame = await answer(reader)
            assert frame.request_id == 1 and isinstance(frame.response, api.Error)
            assert frame.response.code is api.ErrorCode.UNKNOWN_REQUEST
            await stream.send_all(raw_request(2, {"type": "put", "key": 42}))
            frame = await answer(reader)
            assert isinstance(frame.response, api.Error)
            assert frame.response.code is api.ErrorCode.MALFORMED and frame.response.definite
            big = {"type": "put", "key": b"k", "value": b"x" * (api.MAX_REQUEST_BYTES + 10)}
            await stream.send_all(raw_request(3, big))
            frame = await answer(reader)
            assert isinstance(frame.response, api.Error)
            assert frame.response.code is api.ErrorCode.REQUEST_TOO_LARGE
            await stream.send_all(raw_request(4, {"type": "range", "key": b"k"}))
            frame = await answer(reader)
            assert isinstance(frame.response, api.RangeResponse)
            assert not frame.response.kvs, "the oversized put changed nothing"

            # A connection dropped in the middle of a frame.
            stream, reader = await open_raw(address)
            await stream.send_all(struct.pack(">I", 100) + b"partial")
            await stream.aclose()

            with pytest.raises(InvalidRequest):
                await client.put("", "empty keys are refused")
            await client.put("still", "serving")
            assert (await client.get("still")).kvs[0].value == b"serving"

    trio.run(main)


def test_peer_bytes_never_stop_a_member() -> None:
    async def main() -> None:
        async with in_process_cluster() as cluster:
            for payload in (
                struct.pack(">I", 1 << 30),  # an absurd frame length
                encode_frame(b"not a hello"),
                encode_frame(msgspec.msgpack.encode([0, 1, 2])),  # wrong cluster
            ):
                with trio.fail_after(5):
                    stream = await trio.open_tcp_stream(*cluster.peers["n2"])
                    await stream.send_all(payload)
                    while await stream.receive_some(1024):
                        pass  # the member closes the connection
            async with Client(cluster.endpoints) as client:
                await client.put("after", "garbage")
                for name in cluster.names:
                    member = cluster.members[name]
                    with trio.fail_after(5):
                        while member.state.status().keys != 1:
                            await trio.sleep(0.01)

    trio.run(main)
