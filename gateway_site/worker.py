"""One ASGI worker process: daphne with a graceful SIGTERM.

Daphne's own SIGTERM/SIGINT handling stops the reactor at once, and its "before shutdown" trigger
(`Server.kill_all_applications`) cancels every running application instance ("Killed N pending
application instances"): streams end mid-body and work that the cancelled views left in other
tasks (usage records) dies with the event loop. This worker installs its own handlers instead:

1. stop listening;
2. `graceful.drain.begin()`: refuse new requests on open connections, let in-flight ones finish;
3. after `GATEWAY_SHUTDOWN_GRACE_SECONDS`, `graceful.drain.expire()` cuts what is left (each cut
   request is recorded as `cancelled`, and its client gets a clean ending);
4. wait for the tasks that are still writing usage records, then stop the reactor.

A second SIGINT (Ctrl-C twice) stops at once; repeated SIGTERMs are ignored.

Run it as `python -m gateway_site.worker [daphne options] gateway_site.asgi:application`; it takes
daphne's command-line options. `manage.py run_demo` (`make run`) starts one; `manage.py serve`
supervises uvicorn workers instead (`gateway_site/uvicorn_worker.py`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from daphne.cli import CommandLineInterface  # installs the asyncio reactor: import it first
from daphne.server import Server

from kernel.graceful import FIRST_ON_CONNECTION
from kernel.reason_phrases import reason_phrases_complete
from kernel.redact import secrets_redact
from gateway_site.supervisor import worker_imports_skip, worker_ready

logger = logging.getLogger("gateway_site.worker")

reason_phrases_complete()  # "429 Too Many Requests", not "429 Unknown Status" (kernel/reason_phrases.py)


class GracefulServer(Server):
    """daphne's Server with the graceful stop above instead of its immediate one."""

    def __init__(self, *args, **kwargs):
        kwargs["signal_handlers"] = False  # ours are installed just before the reactor runs
        super().__init__(*args, **kwargs)
        self.ready_callable = self._ready
        self.ports = []
        self._replaying: asyncio.Future | None = None
        self.stopping = False

    def listen_success(self, port):
        self.ports.append(port)
        super().listen_success(port)

    def _ready(self) -> None:
        loop = asyncio.get_event_loop()
        loop.add_signal_handler(signal.SIGTERM, self.graceful_stop, signal.SIGTERM)
        loop.add_signal_handler(signal.SIGINT, self.graceful_stop, signal.SIGINT)
        from routing.journal import replay_loop

        self._replaying = asyncio.ensure_future(replay_loop())  # records of workers that died
        worker_ready()

    def graceful_stop(self, signum: int) -> None:
        if self.stopping:
            if signum == signal.SIGINT:
                logger.warning("second interrupt: stopping now")
                self.stop()
            return
        self.stopping = True
        asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        from django.conf import settings

        from kernel.graceful import worker_drain

        for port in self.ports:
            port.stopListening()
        keep = set()
        if self._replaying is not None:
            self._replaying.cancel()
            keep.add(self._replaying)
        await worker_drain(grace=float(settings.GATEWAY_SHUTDOWN_GRACE_SECONDS), keep=keep)
        self.stop()

    def log_action(self, protocol, action, details):
        # daphne's access log writes the request's whole URI: a key sent as `?api_key=` is blanked.
        if "path" in details:
            details = {**details, "path": secrets_redact(str(details["path"]))}
        super().log_action(protocol, action, details)

    def create_application(self, protocol, scope):
        channel = getattr(protocol, "channel", None)  # an HTTP request's connection
        if scope["type"] == "http" and channel is not None and not getattr(channel, "gateway_served", False):
            channel.gateway_served = True
            scope[FIRST_ON_CONNECTION] = True
        return super().create_application(protocol, scope)

    def kill_all_applications(self):
        # daphne's version assumes every connection has an application instance; after a drain
        # only connections without one (idle keep-alives) can be left.
        for details in self.connections.values():
            details.setdefault("application_instance", _finished())
        return super().kill_all_applications()


def _finished() -> asyncio.Future:
    future = asyncio.get_event_loop().create_future()
    future.set_result(None)
    return future


class WorkerCommandLine(CommandLineInterface):
    description = "A gateway ASGI worker: daphne with a graceful SIGTERM"
    server_class = GracefulServer


def main() -> None:
    worker_imports_skip()
    WorkerCommandLine().run(sys.argv[1:])


if __name__ == "__main__":
    main()
