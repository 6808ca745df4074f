import sys

import yaml
from django.core.management.base import BaseCommand, CommandError

from gateway_site.configuration import ConfigError, config_import


class Command(BaseCommand):
    help = "Upsert providers, models, provider keys and tenants from a YAML file (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("file", help="YAML file; '-' reads standard input.")

    def handle(self, *args, file: str, **options):
        try:
            if file == "-":
                data = yaml.safe_load(sys.stdin.read())
            else:
                with open(file, encoding="utf-8") as handle:
                    data = yaml.safe_load(handle)
        except OSError as exc:
            raise CommandError(f"Cannot read {file}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise CommandError(f"{file} is not valid YAML: {exc}") from exc
        try:
            counts = config_import(data)
        except ConfigError as exc:
            raise CommandError(f"{file}: {exc}") from exc
        summary = ", ".join(f"{count} {name.replace('_', ' ')}" for name, count in counts.items())
        self.stdout.write(f"Imported {summary}.")
