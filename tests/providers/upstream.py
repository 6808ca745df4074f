"""A scripted provider over real sockets, for the adapters' wire tests.

The adapters are tested through the client production uses (`providers.transport`), against a
local HTTP/1.1 server that answers what each test scripts, in the providers' documented formats
(the bodies under `fixtures/`):

    route = upstream.post(f"{UPSTREAM.url}/v1/chat/completions").respond(200, json=body)
    ... await adapter.chat(payload, target) ...
    assert sent_json(route) == {...}

A reply is sent whole (`json`, `content`, `text`), or streamed (`stream`: each piece its own
HTTP chunk, written and flushed in turn), then ended, cut (`cut=True`: the connection closed
before the last chunk), or left hanging (`stall=True`: nothing more until the test ends). A
request is recorded as an `httpx.Request` (used only as a value: method, URL, headers, body).

One server per test process (`UPSTREAM`), serving on a thread of its own, so the targets' URLs can
be module constants; the `upstream` fixture clears its routes around each test.
"""

from __future__ import annotations

import contextlib
import json as jsonlib
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import httpx

STALL_LIMIT_SECONDS = 30  # a stalled reply gives up by then, if its test did not end it


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    stream: list[bytes] | None = None
    cut: bool = False
    stall: bool = False
    hang_up: bool = False  # close the connection without any answer

    @classmethod
    def of(
        cls,
        status: int = 200,
        *,
        json: object = None,
        content: bytes | None = None,
        text: str | None = None,
        headers: dict[str, str] | None = None,
        stream: list[bytes] | None = None,
        cut: bool = False,
        stall: bool = False,
    ) -> Reply:
        headers = dict(headers or {})
        body = b""
        if json is not None:
            body = jsonlib.dumps(json).encode()
            headers.setdefault("content-type", "application/json")
        elif text is not None:
            body = text.encode()
            headers.setdefault("content-type", "text/plain; charset=utf-8")
        elif content is not None:
            body = content
        return cls(status, headers, body, stream, cut, stall)


class Calls(list):
    @property
    def last(self) -> Call:
        return self[-1]


@dataclass
class Call:
    request: httpx.Request


class Route:
    def __init__(self, method: str, url: str) -> None:
        parts = urlsplit(url)
        self.method = method
        self.path = parts.path
        self.params = dict(parse_qsl(parts.query))
        self.calls = Calls()
        self._replies: list[Reply] = [Reply(404)]
        self._repeat_last = True

    def matches(self, method: str, path: str, params: dict[str, str]) -> bool:
        return (
            method == self.method and path == self.path
            and all(params.get(name) == value for name, value in self.params.items())
        )

    def respond(self, status: int = 200, **reply) -> Route:
        """Answer every request so."""
        self._replies = [Reply.of(status, **reply)]
        return self

    def respond_in_turn(self, *replies: Reply) -> Route:
        """Answer the first request with the first reply, the next with the next..."""
        self._replies = list(replies)
        return self

    def hang_up(self) -> Route:
        """Read the request, then close the connection without answering."""
        self._replies = [Reply(hang_up=True)]
        return self

    def silence(self) -> Route:
        """Read the request and never answer (until the test ends)."""
        self._replies = [Reply(stall=True, hang_up=True)]
        return self

    @property
    def called(self) -> bool:
        return bool(self.calls)

    @property
    def call_count(self) -> int:
        return len(self.calls)

    def next_reply(self) -> Reply:
        index = min(len(self.calls) - 1, len(self._replies) - 1)
        return self._replies[index]


class Upstream:
    def __init__(self) -> None:
        self.routes: list[Route] = []
        self.calls = Calls()
        self.released = threading.Event()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def post(self, url: str) -> Route:
        route = Route("POST", url)
        with self.lock:
            self.routes.append(route)
        return route

    def reset(self) -> None:
        """Forget the routes and calls; replies left stalled end."""
        with self.lock:
            self.routes.clear()
            self.calls.clear()
            self.released.set()
            self.released = threading.Event()

    def route_for(self, method: str, target: str, request: httpx.Request) -> tuple[Route | None, Reply]:
        parts = urlsplit(target)
        params = dict(parse_qsl(parts.query))
        with self.lock:
            self.calls.append(Call(request))
            for route in reversed(self.routes):  # the latest route for a URL wins
                if route.matches(method, parts.path, params):
                    route.calls.append(Call(request))
                    return route, route.next_reply()
        return None, Reply.of(404, json={"error": f"no route for {method} {target}"})


def _handler(upstream: Upstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            # A request through a proxy names its whole URL (absolute-form), others only the path.
            url = self.path if self.path.startswith("http") else f"{upstream.url}{self.path}"
            request = httpx.Request(self.command, url, headers=list(self.headers.items()), content=body)
            released = upstream.released
            _, reply = upstream.route_for(self.command, self.path, request)
            if reply.hang_up:
                if reply.stall:
                    released.wait(STALL_LIMIT_SECONDS)
                self.close_connection = True
                return
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if reply.stream is None and not reply.stall:
                self.send_header("content-length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)
                return
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for piece in reply.stream or ([reply.body] if reply.body else []):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
            if reply.stall:
                released.wait(STALL_LIMIT_SECONDS)
            if reply.cut or reply.stall:
                self.close_connection = True
                with contextlib.suppress(OSError):  # the client may have gone already
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(b"0\r\n\r\n")

        def log_message(self, *args) -> None:
            pass

    return Handler


UPSTREAM = Upstream()


def refused_url() -> str:
    """A URL on which nothing listens: connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


class Unanswered:
    """A listening socket whose backlog is full: a connection attempt waits, then times out."""

    def __enter__(self) -> str:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        address = self.listener.getsockname()
        self.filler = socket.create_connection(address)  # takes the one place in the queue
        return f"http://127.0.0.1:{address[1]}"

    def __exit__(self, *exc) -> None:
        self.filler.close()
        self.listener.close()
