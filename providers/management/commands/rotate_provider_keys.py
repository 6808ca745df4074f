from cryptography.fernet import InvalidToken
from django.core.management.base import BaseCommand, CommandError

from providers.services import provider_keys_rotate


class Command(BaseCommand):
    help = "Re-encrypt every provider key under the first GATEWAY_ENCRYPTION_KEY."

    def handle(self, *args, **options):
        try:
            count = provider_keys_rotate()
        except InvalidToken as exc:  # all or nothing: the transaction rolled back
            raise CommandError(
                "A provider key cannot be decrypted with any GATEWAY_ENCRYPTION_KEY given; nothing was "
                "re-encrypted. Keep the old key in the list (new key first) until the rotation is done."
            ) from exc
        self.stdout.write(f"Re-encrypted {count} provider key(s).")
