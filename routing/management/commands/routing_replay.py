from django.core.management.base import BaseCommand, CommandError

from routing.models import Strategy
from routing.replay import ReplayError, route_group_find, routing_replay


class Command(BaseCommand):
    help = (
        "Estimate from the logged traffic and its propensities (inverse propensity scoring) the mean rating "
        "and cost per request a routing strategy would have had on a route (docs/routing.md)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--route", required=True, help="The route: its route group's (or rule's) name.")
        parser.add_argument("--days", type=int, default=7, help="How many days of traffic to replay (7).")
        parser.add_argument("--strategy", choices=Strategy.values, help="The strategy to evaluate (the route's).")
        parser.add_argument("--lambda", dest="lam", type=float,
                            help="best_rated: rating points per dollar (the route's).")

    def handle(self, *args, route: str, days: int, strategy: str | None, lam: float | None, **options):
        try:
            result = routing_replay(group=route_group_find(route), days=days, strategy=strategy, lam=lam)
        except ReplayError as exc:
            raise CommandError(str(exc)) from exc
        for line in result.lines():
            self.stdout.write(line)
