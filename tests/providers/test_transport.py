"""The adapters' HTTP transport (providers/transport.py) against a raw TCP server that misbehaves
on cue: what a provider sent reaches the gateway, failures keep their class, nothing is shared."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
import pytest

from providers.http import http_client
from providers.transport import AiohttpTransport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)
    return head


class RawServer:
    """One handler per connection; records every request head and counts connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.heads: list[bytes] = []
        self.connections = 0

    async def __aenter__(self) -> str:
        async def serve(reader, writer):
            self.connections += 1
            try:
                await self.handler(self, reader, writer)
            finally:
                writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        self.server.close()


def client(**timeouts: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=AiohttpTransport(limits=httpx.Limits(max_connections=10, keepalive_expiry=30)),
        timeout=httpx.Timeout(timeouts.get("read", 5.0), connect=2.0),
    )


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)


STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


async def test_a_stream_is_relayed_as_it_arrives():
    second_allowed = asyncio.Event()

    async def handler(server, reader, writer):
        await read_request(reader)
        writer.write(STREAM_HEAD + chunked(b"data: one\n\n"))
        await writer.drain()
        await second_allowed.wait()  # only once the client has the first piece
        writer.write(chunked(b"data: two\n\n") + b"0\r\n\r\n")
        await writer.drain()

    async with RawServer(handler) as url, client() as http:
        async with http.stream("POST", url, json={}) as response:
            pieces = response.aiter_bytes()
            assert await anext(pieces) == b"data: one\n\n"
            second_allowed.set()
            assert [piece async for piece in pieces] == [b"data: two\n\n"]


async def test_bytes_received_before_a_cut_are_delivered_before_the_error():
    first_read = asyncio.Event()

    async def handler(server, reader, writer):
        await read_request(reader)
        writer.write(STREAM_HEAD + chunked(b"data: 1\n\n"))
        await writer.drain()
        await first_read.wait()
        # Two more events, then the cut (no end-of-body chunk), while the client is busy.
        writer.write(chunked(b"data: 2\n\n", b"data: 3\n\n"))
        await writer.drain()

    async with RawServer(handler) as url, client() as http:
        received = []
        with pytest.raises(httpx.TransportError) as raised:
            async with http.stream("POST", url, json={}) as response:
                async for piece in response.aiter_bytes():
                    received.append(piece)
                    first_read.set()
                    await asyncio.sleep(0.2)  # a slow client: the rest and the cut land meanwhile
        assert b"".join(received) == b"data: 1\n\ndata: 2\n\ndata: 3\n\n"
        assert not isinstance(raised.value, httpx.TimeoutException)


async def test_refused_connection_is_a_connect_error_not_a_timeout():
    async with RawServer(lambda *args: asyncio.sleep(0)) as url:
        pass  # closed: nothing listens on that port any more
    async with client() as http:
        with pytest.raises(httpx.ConnectError):
            await http.post(url, json={})


async def test_silence_is_a_read_timeout():
    async def handler(server, reader, writer):
        await read_request(reader)
        await asyncio.sleep(5)

    async with RawServer(handler) as url, client(read=0.3) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(url, json={})


async def test_a_connection_closed_before_the_answer_is_a_protocol_error():
    async def handler(server, reader, writer):
        await read_request(reader)

    async with RawServer(handler) as url, client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post(url, json={})


async def test_connections_are_reused_unless_a_body_was_left_half_read():
    async def handler(server, reader, writer):
        while True:
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(STREAM_HEAD + chunked(b"data: a\n\n"))
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(chunked(b"data: b\n\n") + b"0\r\n\r\n")
            await writer.drain()

    server = RawServer(handler)
    async with server as url, client() as http:
        for _ in range(3):
            response = await http.post(url, json={})
            assert response.text == "data: a\n\ndata: b\n\n"
        assert server.connections == 1
        async with http.stream("POST", url, json={}) as response:
            assert await anext(response.aiter_bytes()) == b"data: a\n\n"
        # The rest of that body was still coming: its connection is closed, not handed out again.
        response = await http.post(url, json={})
        assert response.text == "data: a\n\ndata: b\n\n"
        assert server.connections == 2


async def test_the_gateway_client_keeps_no_provider_cookie():
    async def handler(server, reader, writer):
        while True:
            try:
                server.heads.append(await read_request(reader))
            except asyncio.IncompleteReadError:
                return
            writer.write(b"HTTP/1.1 200 OK\r\nset-cookie: session=tenant-a; Path=/\r\ncontent-length: 2\r\n\r\n{}")
            await writer.drain()

    server = RawServer(handler)
    async with server as url:
        http = http_client()
        await http.post(url, json={})
        await http.post(url, json={})
    assert len(server.heads) == 2
    assert b"cookie" not in server.heads[1].lower().replace(b"set-cookie", b"")
