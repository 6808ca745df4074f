from django.core.management.base import BaseCommand

from providers.services import provider_keys_rotate


class Command(BaseCommand):
    help = "Re-encrypt every provider key under the first GATEWAY_ENCRYPTION_KEY."

    def handle(self, *args, **options):
        self.stdout.write(f"Re-encrypted {provider_keys_rotate()} provider key(s).")
