"""Length-prefixed frames over a trio byte stream.

A frame is a 4-byte big-endian payload length followed by the payload.  The
length is checked against a hard maximum *before* any of the body is read, so a
peer cannot make us allocate more than ``max_frame`` bytes per connection.
"""

from __future__ import annotations

import struct

import trio

_HEADER = struct.Struct(">I")
HEADER_SIZE = _HEADER.size
_RECEIVE_CHUNK = 256 * 1024


class FrameError(Exception):
    """The peer broke the framing; the connection must be closed."""


class FrameTooLarge(FrameError):
    pass


class TruncatedFrame(FrameError):
    pass


def encode_frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload)) + payload


class FrameReader:
    """Reads whole frames from ``stream``."""

    def __init__(self, stream: trio.abc.ReceiveStream, max_frame: int) -> None:
        self._stream = stream
        self._max_frame = max_frame
        self._buffer = bytearray()

    async def read(self) -> bytes | None:
        """The next frame's payload, or ``None`` at a clean end of stream.

        Raises :class:`FrameTooLarge` for a length over the maximum and
        :class:`TruncatedFrame` if the stream ends inside a frame.
        """
        if not await self._fill(HEADER_SIZE):
            if self._buffer:
                raise TruncatedFrame("stream ended inside a frame header")
            return None
        (length,) = _HEADER.unpack_from(self._buffer)
        if length > self._max_frame:
            raise FrameTooLarge(f"frame of {length} bytes exceeds the {self._max_frame} limit")
        if not await self._fill(HEADER_SIZE + length):
            raise TruncatedFrame(f"stream ended inside a {length}-byte frame")
        payload = bytes(self._buffer[HEADER_SIZE : HEADER_SIZE + length])
        del self._buffer[: HEADER_SIZE + length]
        return payload

    async def _fill(self, size: int) -> bool:
        while len(self._buffer) < size:
            chunk = await self._stream.receive_some(_RECEIVE_CHUNK)
            if not chunk:
                return False
            self._buffer += chunk
        return True
