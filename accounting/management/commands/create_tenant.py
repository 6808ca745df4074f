from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.core.validators import validate_slug

from accounting.models import Tenant
from accounting.services import tenant_create


class Command(BaseCommand):
    help = "Create a tenant."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--name", default="")

    def handle(self, *args, slug: str, name: str, **options):
        try:
            validate_slug(slug)
        except ValidationError as exc:
            raise CommandError(f"'{slug}' is not a valid slug (letters, digits, - and _).") from exc
        if Tenant.objects.filter(slug=slug).exists():
            raise CommandError(f"Tenant '{slug}' already exists.")
        tenant = tenant_create(slug=slug, name=name)
        self.stdout.write(f"Created tenant {tenant.slug}.")
