"""One HTTP exchange over raw ASGI: read the body, send the answer, notice the client leaving."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import parse_qs
from collections.abc import Callable

from providers.fake.ledger import LedgerEntry

HOLD_LIMIT_S = 300.0


class Exchange:
    """One HTTP request and its response, with an ear on the client going away."""

    def __init__(self, scope: dict, receive: Callable, send: Callable) -> None:
        self.method, self.path = scope["method"], scope["path"].rstrip("/") or "/"
        self.query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()}
        self.params: dict[str, str] = {}  # a pattern route's path parameters
        self.headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
        }
        self.body = b""
        self.left = asyncio.Event()
        self.left_at: float | None = None  # time.time() when the client was seen leaving
        self.finished = False  # the last body message is out
        self.entry: LedgerEntry | None = None  # a chat or embeddings request's ledger entry
        self._receive, self._send = receive, send
        self._listener: asyncio.Task | None = None

    async def open(self) -> bool:
        """Read the body, then listen for http.disconnect; False if the client already left."""
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                return False
            self.body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self._listener = asyncio.ensure_future(self._await_leave())
        return True

    async def _await_leave(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        if not self.finished:  # a server may say "disconnect" once the answer is complete
            self.left_at = time.time()
        self.left.set()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()

    async def hold(self) -> None:
        """Send nothing until the client gives up (bounded, so a forgotten test cannot leak)."""
        try:
            await asyncio.wait_for(self.left.wait(), HOLD_LIMIT_S)
        except TimeoutError:
            pass

    async def pause(self, seconds: float) -> bool:
        """Wait `seconds` (at least one turn of the event loop, so a disconnect already queued
        is seen), less if the client leaves; False when it has left."""
        if seconds <= 0:
            await asyncio.sleep(0)
        elif not self.left.is_set():
            try:
                await asyncio.wait_for(self.left.wait(), seconds)
            except TimeoutError:
                pass
        return not self.left.is_set()

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        await self._send({"type": "http.response.start", "status": status, "headers": raw})

    async def write(self, data: bytes, *, more: bool = True) -> bool:
        """Send one body message; each is its own ASGI message so streams really stream."""
        self.finished = not more
        await self._send({"type": "http.response.body", "body": data, "more_body": more})
        return not self.left.is_set()

    async def respond(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        length = [("content-type", "application/json"), ("content-length", str(len(body)))]
        await self.start(status, length + headers)
        await self.write(body, more=False)
