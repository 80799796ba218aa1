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
        self._start = 0
        """Where the unread part of ``_buffer`` begins (consumed bytes are
        dropped in bulk, not after every frame)."""

    async def read(self) -> bytes | None:
        """The next frame's payload, or ``None`` at a clean end of stream.

        Raises :class:`FrameTooLarge` for a length over the maximum and
        :class:`TruncatedFrame` if the stream ends inside a frame.
        """
        while True:
            payload = self.read_buffered()
            if payload is not None:
                return payload
            chunk = await self._stream.receive_some(_RECEIVE_CHUNK)
            if not chunk:
                unread = len(self._buffer) - self._start
                if unread == 0:
                    return None
                if unread < HEADER_SIZE:
                    raise TruncatedFrame("stream ended inside a frame header")
                (length,) = _HEADER.unpack_from(self._buffer, self._start)
                raise TruncatedFrame(f"stream ended inside a {length}-byte frame")
            if self._start:
                del self._buffer[: self._start]
                self._start = 0
            self._buffer += chunk

    def has_buffered_frame(self) -> bool:
        """Is a whole frame already received (so :meth:`read` returns at once)?"""
        buffer, start = self._buffer, self._start
        if len(buffer) - start < HEADER_SIZE:
            return False
        length: int = _HEADER.unpack_from(buffer, start)[0]
        return start + HEADER_SIZE + length <= len(buffer)

    def read_buffered(self) -> bytes | None:
        """The next frame's payload if it is already received whole, else
        ``None``; never waits.  Raises :class:`FrameTooLarge` as :meth:`read`."""
        buffer, start = self._buffer, self._start
        available = len(buffer) - start
        if available < HEADER_SIZE:
            return None
        (length,) = _HEADER.unpack_from(buffer, start)
        if length > self._max_frame:
            raise FrameTooLarge(f"frame of {length} bytes exceeds the {self._max_frame} limit")
        end = start + HEADER_SIZE + length
        if end > len(buffer):
            return None
        payload = bytes(memoryview(buffer)[start + HEADER_SIZE : end])
        if end == len(buffer):
            buffer.clear()
            self._start = 0
        else:
            self._start = end
        return payload
