from django.core.management.base import BaseCommand, CommandError

from accounting.models import Tenant, TenantApiKey
from routing.explain import route_explain


class Command(BaseCommand):
    help = "Dry-run route selection: which deployments a request would try, in what order, and why."

    def add_arguments(self, parser):
        parser.add_argument("--tenant", required=True, help="Tenant slug.")
        parser.add_argument("--model", required=True, help="The model name a client would send.")
        parser.add_argument("--task", default="", help="Task, as metadata.task or X-Gateway-Task.")
        parser.add_argument("--tags", default="", help="Comma-separated tags.")
        parser.add_argument("--key", default="", help="Prefix of the tenant API key to act as.")
        parser.add_argument("--embeddings", action="store_true", help="Route an embeddings request.")

    def handle(self, *args, tenant: str, model: str, task: str, tags: str, key: str, embeddings: bool, **options):
        try:
            owner = Tenant.objects.get(slug=tenant)
        except Tenant.DoesNotExist as exc:
            raise CommandError(f"No tenant '{tenant}'.") from exc
        api_key = None
        if key:
            api_key = TenantApiKey.objects.filter(tenant=owner, prefix__startswith=key[:12]).first()
            if api_key is None:
                raise CommandError(f"Tenant '{tenant}' has no key starting with '{key}'.")
        explanation = route_explain(
            tenant=owner, model=model, task=task, api_key=api_key,
            tags=frozenset(t.strip() for t in tags.split(",") if t.strip()),
            mode="embedding" if embeddings else "chat",
        )
        for line in explanation.lines():
            self.stdout.write(line)
        if explanation.plan is None:
            raise CommandError(explanation.error)
