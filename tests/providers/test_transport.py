"""The upstream HTTP client (providers/transport.py) against a raw TCP server that misbehaves on
cue: what a provider sent reaches the gateway, failures keep their class, nothing is shared."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Awaitable, Callable

import pytest

from providers.http import http_client
from providers.transport import Timeouts, UpstreamClient, UpstreamError, UpstreamTimeout
from tests.providers.upstream import Unanswered

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


def client(*, read: float = 5.0, connect: float = 2.0, pool: float = 5.0, connections: int = 10) -> UpstreamClient:
    return UpstreamClient(
        timeouts=Timeouts(connect=connect, read=read, pool=pool), max_connections=connections
    )


async def post(http: UpstreamClient, url: str, *, stream: bool = False):
    response = await http.post(url, content=b"{}", headers={"content-type": "application/json"})
    if not stream:
        await response.aread()
    return response


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)


STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


async def loop_turns(count: int = 20) -> None:
    """Let the event loop go round `count` times: each round reads the sockets that are ready once
    (the bytes, then the end of a closed connection, then its `connection_lost`)."""
    for _ in range(count):
        await asyncio.sleep(0)


async def test_a_stream_is_relayed_as_it_arrives():
    second_allowed = asyncio.Event()

    async def handler(server, reader, writer):
        await read_request(reader)
        writer.write(STREAM_HEAD + chunked(b"data: one\n\n"))
        await writer.drain()
        await second_allowed.wait()  # only once the client has the first piece
        writer.write(chunked(b"data: two\n\n") + b"0\r\n\r\n")
        await writer.drain()

    http = client()
    async with RawServer(handler) as url:
        response = await post(http, url, stream=True)
        pieces = response.aiter_bytes()
        assert await anext(pieces) == b"data: one\n\n"
        second_allowed.set()
        assert [piece async for piece in pieces] == [b"data: two\n\n"]
        await response.aclose()
    await http.aclose()


async def test_bytes_received_before_a_cut_are_delivered_before_the_error():
    first_read, cut = asyncio.Event(), asyncio.Event()

    async def handler(server, reader, writer):
        await read_request(reader)
        writer.write(STREAM_HEAD + chunked(b"data: 1\n\n"))
        await writer.drain()
        await first_read.wait()
        # Two more events, then the cut (no end-of-body chunk), while the client is busy.
        writer.write(chunked(b"data: 2\n\n", b"data: 3\n\n"))
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        cut.set()

    http = client()
    async with RawServer(handler) as url:
        response = await post(http, url, stream=True)
        received = []
        with pytest.raises(UpstreamError) as raised:
            async for piece in response.aiter_bytes():
                received.append(piece)
                first_read.set()
                # A busy consumer: the rest and the cut reach the client meanwhile.
                await cut.wait()
                await loop_turns()
        await response.aclose()
    await http.aclose()
    assert b"".join(received) == b"data: 1\n\ndata: 2\n\ndata: 3\n\n"
    assert not isinstance(raised.value, UpstreamTimeout)
    assert raised.value.kind == "RemoteProtocolError"


async def test_refused_connection_is_a_connect_error_not_a_timeout():
    async with RawServer(lambda *args: asyncio.sleep(0)) as url:
        pass  # closed: nothing listens on that port any more
    http = client()
    with pytest.raises(UpstreamError) as raised:
        await post(http, url)
    await http.aclose()
    assert not isinstance(raised.value, UpstreamTimeout)
    assert raised.value.kind == "ConnectError"


async def test_a_connection_not_accepted_is_a_connect_timeout():
    http = client(connect=0.3)
    with Unanswered() as url, pytest.raises(UpstreamTimeout) as raised:
        await post(http, url)
    await http.aclose()
    assert raised.value.kind == "ConnectTimeout"


async def test_silence_is_a_read_timeout():
    async def handler(server, reader, writer):
        await read_request(reader)
        await asyncio.Event().wait()  # never answers

    http = client(read=0.3)
    async with RawServer(handler) as url:
        with pytest.raises(UpstreamTimeout) as raised:
            await post(http, url)
    await http.aclose()
    assert raised.value.kind == "ReadTimeout"


async def test_waiting_for_a_free_connection_is_a_timeout():
    async def handler(server, reader, writer):
        await read_request(reader)
        writer.write(STREAM_HEAD + chunked(b"data: a\n\n"))
        await writer.drain()
        await asyncio.Event().wait()  # the body never ends: its connection stays taken

    http = client(pool=0.3, connections=1)
    async with RawServer(handler) as url:
        holding = await post(http, url, stream=True)
        with pytest.raises(UpstreamTimeout):
            await post(http, url)
        await holding.aclose()
    await http.aclose()


async def test_a_connection_closed_before_the_answer_is_a_connection_failure():
    async def handler(server, reader, writer):
        await read_request(reader)

    http = client()
    async with RawServer(handler) as url:
        with pytest.raises(UpstreamError) as raised:
            await post(http, url)
    await http.aclose()
    assert not isinstance(raised.value, UpstreamTimeout)
    assert raised.value.kind == "RemoteProtocolError"


async def test_connections_are_reused_unless_a_body_was_left_half_read():
    body_end = asyncio.Event()

    async def handler(server, reader, writer):
        while True:
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(STREAM_HEAD + chunked(b"data: a\n\n"))
            await writer.drain()
            await body_end.wait()
            writer.write(chunked(b"data: b\n\n") + b"0\r\n\r\n")
            await writer.drain()

    server = RawServer(handler)
    http = client()
    async with server as url:
        body_end.set()
        for _ in range(3):
            response = await post(http, url)
            assert response.content == b"data: a\n\ndata: b\n\n"
        assert server.connections == 1
        body_end.clear()
        response = await post(http, url, stream=True)
        assert await anext(response.aiter_bytes()) == b"data: a\n\n"
        await response.aclose()
        # The rest of that body was still coming: its connection is closed, not handed out again.
        body_end.set()
        response = await post(http, url)
        assert response.content == b"data: a\n\ndata: b\n\n"
        assert server.connections == 2
    await http.aclose()


async def test_redirects_are_answers_and_bodies_are_not_decoded():
    compressed = gzip.compress(b'{"ok": true}')

    async def handler(server, reader, writer):
        server.heads.append(await read_request(reader))
        writer.write(
            b"HTTP/1.1 307 Temporary Redirect\r\nlocation: /elsewhere\r\ncontent-encoding: gzip\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(compressed), compressed)
        )
        await writer.drain()

    server = RawServer(handler)
    http = client()
    async with server as url:
        response = await post(http, url)
    await http.aclose()
    assert response.status_code == 307
    assert response.content == compressed
    assert len(server.heads) == 1
    assert b"accept-encoding: identity" in server.heads[0].lower()


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
        await post(http, url)
        await post(http, url)
    assert len(server.heads) == 2
    assert b"cookie" not in server.heads[1].lower().replace(b"set-cookie", b"")


async def test_a_proxy_named_by_the_environment_carries_the_requests(monkeypatch):
    async def handler(server, reader, writer):
        server.heads.append(await read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
        await writer.drain()

    proxy = RawServer(handler)
    async with proxy as proxy_url:
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        http = client()
        response = await post(http, "http://provider.invalid/v1/chat/completions")
        await http.aclose()
    assert response.content == b"{}"
    assert proxy.heads[0].startswith(b"POST http://provider.invalid/v1/chat/completions HTTP/1.1")
