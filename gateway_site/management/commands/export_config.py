import yaml
from django.core.management.base import BaseCommand

from gateway_site.configuration import config_export


class Command(BaseCommand):
    help = "Print the configuration as YAML for import_config. Secrets are never exported."

    def handle(self, *args, **options):
        self.stdout.write(yaml.safe_dump(config_export(), sort_keys=False), ending="")
