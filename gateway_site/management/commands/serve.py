"""`manage.py serve`: the production server, N ASGI workers on one socket (docs/deployment.md).

The workers run uvicorn (uvloop, httptools; `gateway_site/uvicorn_worker.py`), graceful on SIGTERM
and supervised (`gateway_site/supervisor.py`).
"""

import os

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from prometheus_client import multiprocess

from kernel import metrics
from gateway_site.supervisor import Supervisor, listening_socket


def _bind(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise CommandError(f"--bind takes HOST:PORT, not {value!r}.")
    return host, int(port)


def _metrics_process_dead(pid: int) -> None:
    """A worker is gone: drop its live gauges (in-flight requests) from the shared folder, which
    its own exit hook cannot do when it was killed."""
    multiprocess.mark_process_dead(pid, metrics.MULTIPROC_DIR)


class Command(BaseCommand):
    help = "Serve the gateway in production: N ASGI workers sharing one socket, graceful on SIGTERM."

    def add_arguments(self, parser):
        parser.add_argument(
            "--workers", type=int, default=2, help="worker processes (default: 2)",
        )
        parser.add_argument(
            "--bind", default=f"0.0.0.0:{os.environ.get('PORT', '8000')}",
            help="HOST:PORT to listen on (default: 0.0.0.0:$PORT, PORT defaulting to 8000)",
        )
        parser.add_argument(
            "--grace", type=float, default=None,
            help="seconds in-flight requests get on SIGTERM (default: GATEWAY_SHUTDOWN_GRACE_SECONDS)",
        )
        parser.add_argument("--no-collectstatic", action="store_true", help="skip collectstatic at start")
        parser.add_argument(
            "--proxy-headers", action="store_true",
            help="take the client address from X-Forwarded-For (only behind a proxy that sets it)",
        )
        parser.add_argument("--access-log", default=None, help="the access log: a file, or - for stdout")

    def handle(self, *args, workers: int, bind: str, grace, no_collectstatic: bool, proxy_headers: bool,
               access_log, **options):
        if workers < 1:
            raise CommandError("--workers must be at least 1.")
        host, port = _bind(bind)
        if not no_collectstatic:
            call_command("collectstatic", "--noinput", verbosity=0)
        on_exit = None
        if metrics.MULTIPROC_DIR:  # the workers' shared metrics folder (docs/observability.md)
            metrics.multiproc_dir_reset()
            on_exit = _metrics_process_dead
        env = os.environ.copy()
        if grace is not None:
            env["GATEWAY_SHUTDOWN_GRACE_SECONDS"] = str(grace)
        grace = settings.GATEWAY_SHUTDOWN_GRACE_SECONDS if grace is None else grace
        worker_args = ["--proxy-headers"] if proxy_headers else []
        if access_log:
            worker_args += ["--access-log", access_log]
        try:
            sock = listening_socket(host, port)
        except (OSError, ValueError) as exc:
            raise CommandError(f"Cannot listen on {host}:{port}: {exc}") from exc
        self.stdout.write(f"Serving on http://{host}:{sock.getsockname()[1]} with {workers} uvicorn workers")
        self.stdout.flush()
        code = Supervisor(
            sock=sock, workers=workers, worker_args=[*worker_args, "gateway_site.asgi:application"],
            grace=grace, env=env, on_exit=on_exit,
        ).run()
        if code:
            raise CommandError("The workers kept failing to start; see the log above.")
