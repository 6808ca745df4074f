from datetime import datetime
from datetime import timezone as dt_timezone
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from accounting.prices import (
    CATALOGUE,
    CatalogueError,
    catalogue_load,
    price_changes,
    prices_load,
)


class Command(BaseCommand):
    help = "Apply the price catalogue (accounting/data/prices.yaml) to matching provider models."

    def add_arguments(self, parser):
        parser.add_argument("--file", default=str(CATALOGUE), help="Another catalogue file.")
        parser.add_argument("--effective-from", help="ISO date or datetime (UTC); default now.")
        parser.add_argument("--dry-run", action="store_true", help="Show the changes, write nothing.")

    def handle(self, *args, file: str, effective_from: str | None, dry_run: bool, **options):
        try:
            catalogue = catalogue_load(Path(file))
        except CatalogueError as exc:
            raise CommandError(str(exc)) from exc
        when = self._when(effective_from)
        if dry_run:
            changes = price_changes(catalogue=catalogue, when=when)
        else:
            changes = prices_load(catalogue=catalogue, effective_from=when)
        for change in changes:
            price = change.price
            self.stdout.write(
                f"{change.model}: input {price.input} output {price.output} cached "
                f"{price.cached_input if price.cached_input is not None else '-'}"
                + "".join(f" {key} {value}" for key, value in price.units.items())
                + f" (from {change.catalogue_key})"
            )
        verb = "Would change" if dry_run else "Changed"
        self.stdout.write(f"{verb} {len(changes)} model price(s), effective {when.isoformat()}.")

    def _when(self, value: str | None) -> datetime:
        if not value:
            return timezone.now()
        try:
            when = datetime.fromisoformat(value)
        except ValueError as exc:
            raise CommandError(f"--effective-from: '{value}' is not an ISO date or datetime.") from exc
        return when if when.tzinfo else when.replace(tzinfo=dt_timezone.utc)
