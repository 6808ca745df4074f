from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from audit.services import audit_record
from operators.services import staff_token_create


class Command(BaseCommand):
    help = (
        "Create an operator API token for a staff user. The token is printed once, alone on the last line. "
        "It acts with the user's permissions: a superuser may do everything, a member of 'Gateway viewers' "
        "only read, of 'Gateway operators' also change the configuration (docs/operator-api.md)."
    )

    def add_arguments(self, parser):
        parser.add_argument("username", help="An active staff user (createsuperuser makes one; a staff user "
                            "needs a group or permissions in the admin to do anything with the token).")
        parser.add_argument("--name", default="default")

    def handle(self, *args, username: str, name: str, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user '{username}'. Create one with: manage.py createsuperuser")
        try:
            token, raw = staff_token_create(user=user, name=name)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        audit_record(action="created", obj=token, via="command", actor="manage.py create_staff_token",
                     changed_fields=["user", "name"])
        self.stdout.write(f"Created staff token {token.prefix}… '{token.name}' for {username}.")
        self.stdout.write(raw)
