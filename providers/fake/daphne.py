"""Running the fake on daphne: `serve()`, and a Server that really drops a crashed connection."""

from __future__ import annotations

import logging
from collections.abc import Callable

from providers.fake.app import build_app
from providers.fake.errors import FakeConnectionDrop
from providers.fake.exchange import HOLD_LIMIT_S


def _daphne_server_class() -> type:
    """daphne's Server, made to drop the connection when the app crashes mid-response.

    Stock daphne 4.2 notices a crashed app only in a once-a-second checker, which then tries to
    send a 500 page; on a response that has already started that raises, the checker never runs
    again, and the client waits forever on a chunked body that never ends. `disconnect_after`
    needs the connection cut at once, so this closes the transport as soon as the app's future
    fails (flushing what was already written), and marks the connection gone so the checker
    leaves it alone.
    """
    import daphne.server  # first: it installs the asyncio Twisted reactor

    from kernel.reason_phrases import reason_phrases_complete

    reason_phrases_complete()  # "429 Too Many Requests", not "429 Unknown Status"

    class AbortingServer(daphne.server.Server):
        def create_application(self, protocol, scope):
            queue = super().create_application(protocol, scope)
            instance = self.connections.get(protocol, {}).get("application_instance")
            if instance is not None:
                instance.add_done_callback(lambda future: self._drop_if_crashed(protocol, future))
            return queue

        async def handle_reply(self, protocol, message):
            # Whether the response has started, in the connection's own entry, for the check below.
            if message.get("type") == "http.response.start" and protocol in self.connections:
                self.connections[protocol]["fake_response_started"] = True
            await super().handle_reply(protocol, message)

        def _drop_if_crashed(self, protocol, future) -> None:
            if future.cancelled() or future.exception() is None:
                return
            started = self.connections.get(protocol, {}).get("fake_response_started", False)
            if not (started or isinstance(future.exception(), FakeConnectionDrop)):
                return  # nothing sent yet: daphne's own 500 page is right
            if protocol.channel is not None and protocol.channel.transport is not None:
                protocol.channel.transport.loseConnection()
            if protocol in self.connections:
                self.protocol_disconnected(protocol)

    return AbortingServer


def _quiet_drops(record: logging.LogRecord) -> bool:
    """Keep deliberate connection drops out of daphne's 'Exception inside application' log."""
    return not (record.exc_info and isinstance(record.exc_info[1], FakeConnectionDrop))


def serve(
    *, host: str, port: int, latency_ms: int = 0, chunk_delay_ms: int = 0,
    api_key: str | None = None, directive: str = "", ready: Callable[[int], None] | None = None,
) -> None:
    """Run the fake on daphne until SIGINT or SIGTERM, then return.

    `port=0` picks a free port. `ready(port)` is called with the bound port once the socket is
    listening, so a caller can announce it without a race. `directive` is the starting
    server-wide directive. Raises ValueError for a bad directive (before anything starts) and
    OSError if it cannot listen.
    """
    app = build_app(latency_ms=latency_ms, chunk_delay_ms=chunk_delay_ms, api_key=api_key,
                    directive=directive)
    server_class = _daphne_server_class()
    from daphne.endpoints import build_endpoint_description_strings

    logging.getLogger("daphne.server").addFilter(_quiet_drops)
    server = server_class(
        app,
        endpoints=build_endpoint_description_strings(host=host, port=port),
        signal_handlers=True,
        # Above our own hold limit: daphne would otherwise end a stalled stream *cleanly*.
        http_timeout=int(HOLD_LIMIT_S) + 60,
        application_close_timeout=5,
        verbosity=0,
    )
    if ready is not None:
        server.ready_callable = lambda: ready(server.listening_addresses[0][1])
    server.run()
    if server.abort_start:
        raise OSError(f"fake provider could not listen on {host}:{port}")
