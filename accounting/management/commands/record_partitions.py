from django.core.management.base import BaseCommand, CommandError

from accounting.partitions import AHEAD, partitioned, partitions, partitions_drop, partitions_ensure


class Command(BaseCommand):
    help = (
        "Make the usage records' monthly partitions (this month and the next ones) and, with "
        "--retention-months, drop the ones older than that many months (PostgreSQL; rollups stay)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--ahead", type=int, default=AHEAD, help=f"Months made ahead of this one (default {AHEAD}).")
        parser.add_argument(
            "--retention-months", type=int, default=0,
            help="Keep the raw records of this many months, this one included; 0 (default) keeps them all.",
        )

    def handle(self, *args, ahead: int, retention_months: int, **options):
        if ahead < 0 or retention_months < 0:
            raise CommandError("--ahead and --retention-months are numbers of months, 0 or more.")
        if not partitioned():
            self.stdout.write("The usage records are one table here (SQLite): nothing to do.")
            return
        for name in partitions_ensure(ahead=ahead):
            self.stdout.write(f"made {name}")
        for name in partitions_drop(retention_months=retention_months):
            self.stdout.write(f"dropped {name}")
        self.stdout.write("partitions: " + ", ".join(name for name, _ in partitions()))
