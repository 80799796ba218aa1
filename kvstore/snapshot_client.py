"""Receiving a snapshot stream: the client half of :class:`~kvstore.api.SnapshotRequest`.

A snapshot is a bulk transfer, so it gets a TCP connection of its own rather
than sharing the client's multiplexed one: TCP's flow control then paces the
member to the consumer, and other calls are not held up behind megabytes of
payload.  Get a :class:`SnapshotDownload` from
:meth:`kvstore.client.Client.snapshot`.
"""

from __future__ import annotations

import hashlib
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO

import msgspec
import trio

from kvstore import api
from kvstore.api import (
    ClientFrame,
    Error,
    ErrorCode,
    ResponseHeader,
    SnapshotInfo,
    SnapshotRequest,
    SnapshotResponse,
)
from kvstore.client import (
    TRY_ELSEWHERE,
    KvError,
    Unavailable,
    error_to_exception,
    normalize_endpoint,
)
from raft.framing import FrameError, FrameReader, encode_frame

if TYPE_CHECKING:
    from kvstore.client import Client

__all__ = ["SnapshotDownload", "SnapshotIntegrityError", "save_snapshot"]

_REQUEST_ID = 1


class SnapshotIntegrityError(KvError):
    """The stream broke its own promises: a size or SHA-256 that does not
    match what arrived, or messages out of order.  Nothing received can be trusted."""

    def __init__(self, message: str, *, endpoint: str = "") -> None:
        super().__init__(message, code=ErrorCode.INTERNAL, definite=True, endpoint=endpoint)


class SnapshotDownload:
    """One snapshot stream from one member::

        async with client.snapshot() as download:
            print(download.info.revision, download.info.size)
            async for chunk in download:
                file.write(chunk)
        print(download.sha256.hex())    # verified against every byte received

    **Entering** connects to a member (the given endpoint, or else the
    client's endpoints from the one it is connected to, failing over as
    :class:`~kvstore.client.Client` does for reads) and waits for the stream's
    first message; within the client's ``request_timeout`` overall, or it
    raises :class:`~kvstore.client.Unavailable` (or what the member answered,
    e.g. :class:`~kvstore.client.NoLeaderError`).

    **Iterating** yields the payload's chunks (:class:`bytes`) in order.  It
    ends normally only once the whole payload arrived and its size and SHA-256
    match the stream's; otherwise it raises :class:`SnapshotIntegrityError`.
    A member that falls silent for ``request_timeout``, or a connection that
    ends early, raises :class:`~kvstore.client.Unavailable`: a snapshot has no
    effect, so the caller may simply start again.  No payload is ever
    silently cut short.
    """

    def __init__(
        self,
        client: Client,
        request: SnapshotRequest,
        endpoint: str | None = None,
    ) -> None:
        self._client = client
        self._request = request
        self._endpoint = normalize_endpoint(endpoint) if endpoint is not None else None
        self._timeout = client.request_timeout
        self._stream: trio.SocketStream | None = None
        self._reader: FrameReader | None = None
        self._digest = hashlib.sha256()
        self._received = 0
        self._finished = False
        self.endpoint = ""
        """The member serving the stream (once entered)."""
        self.header = ResponseHeader()
        """The header of the stream's first message: cluster, member, revision, term."""
        self.info: SnapshotInfo | None = None
        """What the stream holds (once entered)."""
        self.sha256 = b""
        """The SHA-256 of the payload, once it has all arrived and been verified."""

    # -- Entering ---------------------------------------------------------------------

    async def __aenter__(self) -> SnapshotDownload:
        candidates = [self._endpoint] if self._endpoint is not None else self._order()
        reasons: dict[str, str] = {}
        last_error: KvError | None = None
        failures = 0
        with trio.move_on_after(self._timeout):
            while True:
                for endpoint in candidates:
                    try:
                        await self._start(endpoint)
                        return self
                    except _TryElsewhere as retry:
                        reasons[endpoint] = retry.reason
                        last_error = retry.error or last_error
                failures += 1
                await trio.sleep(min(0.5, 0.025 * 2.0 ** (failures - 1)))
        where = "; ".join(f"{e}: {r}" for e, r in reasons.items()) or "no attempt finished"
        if last_error is not None:
            raise type(last_error)(
                f"{last_error.message} (gave up after {self._timeout:g}s: {where})",
                code=last_error.code,
                endpoint=last_error.endpoint,
            )
        raise Unavailable(
            f"no endpoint served a snapshot within {self._timeout:g}s ({where})",
            code=ErrorCode.UNAVAILABLE,
        )

    def _order(self) -> list[str]:
        """The client's endpoints, starting from the one it is connected to."""
        endpoints = self._client.endpoints
        current = self._client.endpoint
        start = endpoints.index(current) if current in endpoints else 0
        return endpoints[start:] + endpoints[:start]

    async def _start(self, endpoint: str) -> None:
        host, _, port = endpoint.rpartition(":")
        try:
            with trio.fail_after(self._client.connect_timeout):
                stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
        except (OSError, trio.TooSlowError) as exc:
            raise _TryElsewhere(str(exc) or "connect timed out") from None
        try:
            frame = encode_frame(api.encode(ClientFrame(_REQUEST_ID, self._request)))
            await stream.send_all(frame)
            reader = FrameReader(stream, api.MAX_FRAME_BYTES)
            self._stream, self._reader, self.endpoint = stream, reader, endpoint
            first = await self._next_message()
        except _TryElsewhere:
            await self._close()
            raise
        except Unavailable as exc:
            await self._close()
            raise _TryElsewhere(exc.message) from None
        except BaseException:
            await self._close()
            raise
        if first.info is None or first.blob or first.sha256:
            await self._close()
            raise SnapshotIntegrityError(
                f"{endpoint} began the snapshot stream without its info", endpoint=endpoint
            )
        self.header, self.info = first.header, first.info

    # -- Reading ----------------------------------------------------------------------

    async def _next_message(self) -> SnapshotResponse:
        """The next message; raises the member's error, or :class:`Unavailable`
        if the connection ends or falls silent."""
        reader, endpoint = self._reader, self.endpoint
        assert reader is not None
        try:
            with trio.fail_after(self._timeout):
                payload = await reader.read()
        except trio.TooSlowError:
            raise Unavailable(
                f"{endpoint} sent nothing for {self._timeout:g}s during the snapshot",
                endpoint=endpoint,
            ) from None
        except (OSError, trio.BrokenResourceError, FrameError) as exc:
            message = f"snapshot from {endpoint} failed: {exc}"
            raise Unavailable(message, endpoint=endpoint) from None
        if payload is None:
            raise Unavailable(
                f"{endpoint} closed the connection during the snapshot", endpoint=endpoint
            )
        try:
            frame = api.decode_server_frame(payload)
        except msgspec.DecodeError as exc:
            raise KvError(f"{endpoint} sent a malformed answer: {exc}", endpoint=endpoint) from None
        response = frame.response
        if isinstance(response, Error):
            exc_ = error_to_exception(response, write=False, endpoint=endpoint)
            if response.code in TRY_ELSEWHERE and self.info is None:
                raise _TryElsewhere(response.message, exc_)
            raise exc_
        if frame.request_id != _REQUEST_ID or not isinstance(response, SnapshotResponse):
            raise SnapshotIntegrityError(
                f"{endpoint} sent a {type(response).__name__} in a snapshot stream",
                endpoint=endpoint,
            )
        return response

    def __aiter__(self) -> SnapshotDownload:
        return self

    async def __anext__(self) -> bytes:
        info = self.info
        if info is None:
            raise RuntimeError("enter the download (async with) before iterating it")
        if self._finished:
            raise StopAsyncIteration
        try:
            message = await self._next_message()
            if message.sha256:
                self._verify_end(info, message)
            else:
                self._check_chunk(info, message)
        except BaseException:
            await self._close()
            raise
        if self._finished:
            await self._close()
            raise StopAsyncIteration
        self._digest.update(message.blob)
        self._received += len(message.blob)
        return message.blob

    def _check_chunk(self, info: SnapshotInfo, message: SnapshotResponse) -> None:
        received = self._received + len(message.blob)
        if message.info is not None or received > info.size:
            raise SnapshotIntegrityError(
                f"{self.endpoint} sent more than the {info.size} bytes it announced",
                endpoint=self.endpoint,
            )
        if message.remaining_bytes != info.size - received:
            raise SnapshotIntegrityError(
                f"{self.endpoint}'s snapshot stream skipped or repeated bytes "
                f"({received} received, {message.remaining_bytes} said to remain of {info.size})",
                endpoint=self.endpoint,
            )

    def _verify_end(self, info: SnapshotInfo, message: SnapshotResponse) -> None:
        if self._received != info.size:
            raise SnapshotIntegrityError(
                f"snapshot from {self.endpoint} ended after {self._received} of {info.size} bytes",
                endpoint=self.endpoint,
            )
        digest = self._digest.digest()
        if message.sha256 != digest:
            raise SnapshotIntegrityError(
                f"snapshot from {self.endpoint} fails its SHA-256 check "
                f"(sent {message.sha256.hex()}, received bytes hash to {digest.hex()})",
                endpoint=self.endpoint,
            )
        self.sha256 = digest
        self._finished = True

    async def _close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await trio.aclose_forcefully(stream)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()


class _TryElsewhere(Exception):
    """This member cannot serve the snapshot now; another may."""

    def __init__(self, reason: str, error: KvError | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


async def save_snapshot(
    client: Client,
    file: BinaryIO,
    endpoint: str | None = None,
    *,
    serializable: bool = False,
    chunk_bytes: int = 0,
) -> SnapshotDownload:
    """Write a verified snapshot's payload to ``file`` (see
    :meth:`kvstore.client.Client.save_snapshot`)."""
    request = SnapshotRequest(chunk_bytes=chunk_bytes, serializable=serializable)
    async with SnapshotDownload(client, request, endpoint) as download:
        async for chunk in download:
            file.write(chunk)
    return download
