import argparse

from django.core.management.base import BaseCommand

from providers.fake import serve
from providers.fake.directives import directive_normalize
from providers.fake.errors import ApiError


def _directive_arg(value: str) -> str:
    """Check `--directive` while parsing arguments, so a typo stops the command at once."""
    try:
        return directive_normalize(text=value)
    except ApiError as error:
        raise argparse.ArgumentTypeError(error.message) from None


class Command(BaseCommand):
    help = (
        "Run the fake OpenAI/Anthropic provider on daphne (see docs/fake-provider.md). "
        "Stops cleanly on SIGINT or SIGTERM."
    )
    # A test double that must start fast and needs no database.
    requires_system_checks = []
    requires_migrations_checks = False

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=9100, help="0 picks a free port.")
        parser.add_argument("--latency-ms", type=int, default=0,
                            help="Delay before every answer's headers.")
        parser.add_argument("--chunk-delay-ms", type=int, default=0,
                            help="Delay between streamed content chunks.")
        parser.add_argument("--api-key", default=None,
                            help="Accept only this key (default: any non-empty key).")
        parser.add_argument("--directive", default="", type=_directive_arg,
                            help='Server-wide directive applied to every request, e.g. '
                                 '"status=500 retry_after=1" (see PUT /_fake/directive).')

    def handle(self, *args, host, port, latency_ms, chunk_delay_ms, api_key, directive,
               **options):
        try:
            serve(host=host, port=port, latency_ms=latency_ms, chunk_delay_ms=chunk_delay_ms,
                  api_key=api_key, directive=directive,
                  ready=lambda bound: self._announce(host=host, port=bound))
        except KeyboardInterrupt:
            pass  # Ctrl-C before the reactor took over the signal: still a clean stop

    def _announce(self, *, host: str, port: int) -> None:
        """Print the one line that tests and scripts wait for, only once the port is bound."""
        shown = f"[{host}]" if ":" in host else host
        self.stdout.write(f"fake provider listening on http://{shown}:{port}")
        self.stdout.flush()
