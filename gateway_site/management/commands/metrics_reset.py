"""Empty PROMETHEUS_MULTIPROC_DIR before the gateway's workers start (docs/observability.md)."""

from django.core.management.base import BaseCommand, CommandError

from kernel import metrics


class Command(BaseCommand):
    help = "Empty PROMETHEUS_MULTIPROC_DIR; run it before starting the workers, never while they run."

    def handle(self, *args, **options):
        if not metrics.MULTIPROC_DIR:
            raise CommandError("PROMETHEUS_MULTIPROC_DIR is not set: metrics live in each process's memory.")
        removed = metrics.multiproc_dir_reset()
        self.stdout.write(f"{metrics.MULTIPROC_DIR}: {removed} metrics files removed")
