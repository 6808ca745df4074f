from django.core.management.base import BaseCommand, CommandError

from accounting.models import Tenant
from accounting.services import api_key_create
from audit.services import audit_record


class Command(BaseCommand):
    help = "Create an API key for a tenant. The key is printed once, alone on the last line."

    def add_arguments(self, parser):
        parser.add_argument("tenant", help="Tenant slug.")
        parser.add_argument("--name", default="default")
        parser.add_argument("--models", default="", help="Comma-separated aliases; empty allows all.")

    def handle(self, *args, tenant: str, name: str, models: str, **options):
        try:
            owner = Tenant.objects.get(slug=tenant)
        except Tenant.DoesNotExist as exc:
            raise CommandError(f"No tenant '{tenant}'. Create it with: manage.py create_tenant {tenant}") from exc
        allowed = [item.strip() for item in models.split(",") if item.strip()]
        key, raw_key = api_key_create(tenant=owner, name=name, allowed_models=allowed)
        audit_record(action="created", obj=key, via="command", actor="manage.py create_api_key",
                     changed_fields=["tenant", "name", "allowed_models"])
        scope = ", ".join(key.allowed_models) or "all models"
        self.stdout.write(f"Created API key {key.prefix}… '{key.name}' for {owner.slug} ({scope}).")
        self.stdout.write(raw_key)
