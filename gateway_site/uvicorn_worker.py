"""One ASGI worker process on uvicorn (uvloop, httptools), with the graceful SIGTERM of the daphne one.

`manage.py serve` starts these (`make run` starts one daphne worker, `gateway_site/worker.py`).
Both end the same way (`graceful.worker_drain`): stop listening, refuse
new requests, let in-flight ones finish for `GATEWAY_SHUTDOWN_GRACE_SECONDS`, cut what is left
(each cut request recorded as `cancelled`), wait for the usage records still being written, stop.
uvicorn's own SIGTERM handling would close every idle connection at once and give in-flight
requests a fixed timeout without recording what it cancels, so this worker installs its own
handlers. A second SIGINT stops at once; repeated SIGTERMs are ignored.

What it measured against daphne (docs/performance.md): about a fifth less CPU per request.

    python -m gateway_site.uvicorn_worker --fd N [--proxy-headers] [--access-log FILE|-] APP
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from kernel.graceful import CUT_SECONDS, FIRST_ON_CONNECTION
from gateway_site.supervisor import (
    PARENT_CHECK_SECONDS, supervisor_gone, supervisor_pid, worker_imports_skip, worker_ready,
)

logger = logging.getLogger("gateway_site.worker")

# WebSocket messages above this close the socket with 1009, as daphne's limit did.
WS_MAX_MESSAGE_BYTES = 1024 * 1024


class MarkingHttpToolsProtocol(HttpToolsProtocol):
    """httptools' protocol, marking the first request of each connection for the drain
    (`graceful.FIRST_ON_CONNECTION`)."""

    def on_headers_complete(self) -> None:
        if self.cycle is None:  # no request before this one on the connection
            self.scope[FIRST_ON_CONNECTION] = True
        super().on_headers_complete()


class GracefulUvicorn(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, *, grace: float) -> None:
        super().__init__(config)
        self.grace = grace
        self.stopping = False
        self.parent_pid = supervisor_pid()
        self._own_tasks: set[asyncio.Task] = set()
        self._replaying: asyncio.Task | None = None

    @contextlib.contextmanager
    def capture_signals(self):
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.graceful_stop, signum)
        try:
            yield
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)

    async def startup(self, sockets=None) -> None:
        self._own_tasks.add(asyncio.current_task())
        await super().startup(sockets=sockets)
        if not self.started:
            return
        if self.parent_pid:
            self._own_tasks.add(asyncio.ensure_future(self._parent_check()))
        from routing.journal import replay_loop  # once Django is set up

        self._replaying = asyncio.ensure_future(replay_loop())  # the records of workers that died
        self._own_tasks.add(self._replaying)
        worker_ready()

    async def _parent_check(self) -> None:
        while not self.stopping:
            await asyncio.sleep(PARENT_CHECK_SECONDS)
            if supervisor_gone(self.parent_pid):
                self.graceful_stop(signal.SIGTERM)

    def graceful_stop(self, signum: int) -> None:
        if self.stopping:
            if signum == signal.SIGINT:
                logger.warning("second interrupt: stopping now")
                self.force_exit = self.should_exit = True
            return
        self.stopping = True
        self._own_tasks.add(asyncio.ensure_future(self._drain()))

    async def _drain(self) -> None:
        from kernel.graceful import worker_drain

        if self._replaying is not None:
            self._replaying.cancel()
        for server in getattr(self, "servers", []):
            server.close()  # stop listening; the other workers keep the shared socket open
        await worker_drain(grace=self.grace, keep=self._own_tasks)
        self.should_exit = True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A gateway ASGI worker: uvicorn with a graceful SIGTERM")
    parser.add_argument("--fd", type=int, required=True, help="serve on this inherited listening socket")
    parser.add_argument("--proxy-headers", action="store_true",
                        help="take the client address from X-Forwarded-For (only behind a proxy that sets it)")
    parser.add_argument("--access-log", default=None, help="a file, or - for stdout")
    parser.add_argument("application", help="the ASGI application, module:attribute")
    args = parser.parse_args(argv)
    worker_imports_skip()

    # The application first: it sets Django up, whose LOGGING then carries uvicorn's own loggers.
    config = uvicorn.Config(
        args.application, loop="uvloop", http=MarkingHttpToolsProtocol, ws="websockets-sansio", lifespan="off",
        log_config=None, access_log=args.access_log is not None,
        proxy_headers=args.proxy_headers, forwarded_allow_ips="*" if args.proxy_headers else None,
        server_header=False, ws_max_size=WS_MAX_MESSAGE_BYTES,
        # After the drain only idle connections are left; bound the wait for their goodbyes.
        timeout_graceful_shutdown=int(CUT_SECONDS),
    )
    config.load()
    from django.conf import settings

    config.timeout_keep_alive = settings.GATEWAY_KEEP_ALIVE_SECONDS
    if args.access_log:
        from kernel.logs import PlainFormatter

        handler = (logging.StreamHandler(sys.stdout) if args.access_log == "-"
                   else logging.FileHandler(args.access_log))
        # uvicorn writes the path with its query string: a key sent as `?api_key=` is blanked.
        handler.setFormatter(PlainFormatter("%(message)s"))
        access = logging.getLogger("uvicorn.access")
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False
    # The inherited descriptor itself (family and type read from it), not a copy: stopping
    # listening must close this process's last reference to the shared socket.
    sock = socket.socket(fileno=args.fd)
    GracefulUvicorn(config, grace=float(settings.GATEWAY_SHUTDOWN_GRACE_SECONDS)).run(sockets=[sock])


if __name__ == "__main__":
    main()
