"""Serve the embedded demo: the fake provider and the gateway's ASGI server, side by side."""

import os
import signal
import subprocess
import sys

from django.core.management.base import BaseCommand, CommandError


def demo_welcome(base: str) -> str:
    """Where everything is, and a first request with the key that seed_demo printed."""
    doors = [
        ("Front door", "/"), ("Admin (user admin)", "/admin/"), ("Dashboards", "/dashboard/"),
        ("Demo tenant", "/dashboard/demo/"), ("Request logs", "/dashboard/demo/requests/"),
        ("Feedback", "/dashboard/demo/feedback/"), ("Playground", "/playground/"),
        ("API docs", "/api/docs/"), ("API base URL", "/v1"),
    ]
    width = max(len(name) for name, _ in doors) + 2
    lines = [f"  {name + ':':<{width}}{base}{path}" for name, path in doors]
    curl = (
        f"  curl {base}/v1/chat/completions -H \"Authorization: Bearer $KEY\" "
        "-H 'Content-Type: application/json' "
        "-d '{\"model\": \"gpt-4o-mini\", \"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}'"
    )
    return "\n".join([f"Gateway on {base}", *lines, "With KEY exported (the export line above):", curl])


class Command(BaseCommand):
    help = "Start the bundled fake provider and the gateway (daphne) until interrupted."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 8000)))
        parser.add_argument("--fake-port", type=int, default=9100)

    def handle(self, *args, host: str, port: int, fake_port: int, **options):
        fake = self._start_fake(fake_port)
        # Rollups, budget alerts and clean-ups: one worker with an embedded beat scheduler (its
        # start-up banner left out: the terminal shows the demo's own lines).
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "gateway_site", "--quiet", "worker", "-B", "--pool=solo",
             "--loglevel=warning"]
        )
        # One worker of the production server (gateway_site/worker.py): daphne, graceful on SIGTERM.
        gateway = subprocess.Popen(
            # daphne's own access line repeats the gateway's (gateway.access), so it is not written.
            [sys.executable, "-m", "gateway_site.worker", "-b", host, "-p", str(port), "--access-log", os.devnull,
             "gateway_site.asgi:application"]
        )
        self.stdout.write(demo_welcome(f"http://{host}:{port}"))
        self.stdout.flush()
        # SIGTERM, not SIGINT: a shell starting us in the background has its children ignore SIGINT.
        signal.signal(signal.SIGTERM, lambda signum, frame: gateway.terminate())
        try:
            code = gateway.wait()
        except KeyboardInterrupt:
            code = gateway.wait()
        finally:
            for process in (gateway, worker, fake):
                if process.poll() is None:
                    process.terminate()
                    process.wait(timeout=10)
        if code not in (0, -signal.SIGINT, -signal.SIGTERM):
            raise CommandError(f"The gateway server exited with status {code}.")

    def _start_fake(self, port: int) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "fake_provider", "--port", str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = process.stdout.readline()
        if "listening" not in line:
            process.kill()
            raise CommandError(f"The fake provider did not start on port {port} (is the port taken?).")
        self.stdout.write(line.strip())
        return process
