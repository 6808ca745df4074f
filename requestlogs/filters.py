"""The explorer's filters and page cursors, parsed from a query string with a clear message for
every bad value (never a 500), and applied to a UsageRecord queryset."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal, InvalidOperation

from django.db.models import F, Lookup, Q, QuerySet
from django.http import QueryDict

from kernel.errors import PROVIDER_ERROR_CLASSES, GatewayError

UTC = dt_timezone.utc
TEXT_LIMIT = 256  # the longest text filter (end users are 256 characters on the record)
ERROR_CLASS = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
CURSOR = re.compile(r"^(\d{1,19})\.(\d{1,19})$")
STATUSES = ("ok", "error", "cancelled")
# Text filters: (query parameter, label); each matches one field exactly (model: asked or served).
TEXT_FILTERS = (
    ("model", "Model"), ("provider", "Provider"), ("route", "Route"), ("tag", "Tag"),
    ("user", "End user"), ("variant", "Experiment variant"),
)
PARAMETERS = frozenset({
    "since", "until", "status", "key", "tenant", "min_cost", "min_latency", "request_id", "after", "before",
    *(name for name, _ in TEXT_FILTERS),
})


def error_classes() -> list[str]:
    """The error classes the gateway records, for the status filter's choices."""
    found, todo = set(PROVIDER_ERROR_CLASSES), [GatewayError]
    while todo:
        cls = todo.pop()
        found.add(cls.error_class)
        todo.extend(cls.__subclasses__())
    return sorted(found | {"budget_exceeded", "guardrail_blocked", "rate_limit_exceeded"})


class HasTag(Lookup):
    """`tags` (a JSON list) holds the tag: jsonb containment on PostgreSQL, `json_each` elsewhere."""

    lookup_name = "has_tag"

    def as_sql(self, compiler, connection):
        lhs, lhs_params = self.process_lhs(compiler, connection)
        return f"EXISTS (SELECT 1 FROM json_each({lhs}) WHERE json_each.value = %s)", [*lhs_params, self._tag]

    def as_postgresql(self, compiler, connection):
        lhs, lhs_params = self.process_lhs(compiler, connection)
        return f"{lhs} @> %s::jsonb", [*lhs_params, json.dumps([self._tag])]

    @property
    def _tag(self) -> str:
        # A lookup used as a filter expression gets its right-hand side resolved into a Value.
        return getattr(self.rhs, "value", self.rhs)


@dataclass(frozen=True)
class Cursor:
    """A row's place in the order (created_at, id), newest first: `<microseconds>.<id>` in a URL."""

    created_at: datetime
    id: int

    def __str__(self) -> str:
        delta = self.created_at - datetime(1970, 1, 1, tzinfo=UTC)
        return f"{delta // timedelta(microseconds=1)}.{self.id}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        match = CURSOR.match(text)
        if match is None:
            raise ValueError
        micros, row_id = int(match.group(1)), int(match.group(2))
        return cls(datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros), row_id)


@dataclass
class Filters:
    """What the query string asks for; `errors` maps a parameter to what is wrong with it."""

    since: datetime | None = None
    until: datetime | None = None
    status: str = ""
    key: int | None = None
    no_key: bool = False
    tenant: str = ""
    min_cost: Decimal | None = None
    min_latency: int | None = None
    request_id: uuid.UUID | None = None
    text: dict[str, str] = field(default_factory=dict)
    after: Cursor | None = None
    before: Cursor | None = None
    errors: dict[str, str] = field(default_factory=dict)

    def indexed(self) -> Q:
        """The conditions an index of the records serves (with the tenant and the time order):
        the time range, the key, the end user, the request id, and failed requests only (the
        partial index of errors) when the status asks for a failure."""
        lookups = {
            "created_at__gte": self.since, "created_at__lt": self.until, "api_key_id": self.key,
            "request_id": self.request_id, "end_user": self.text.get("user"),
        }
        condition = Q(**{name: value for name, value in lookups.items() if value is not None})
        if self.no_key:
            condition &= Q(api_key__isnull=True)
        if self.status and self.status != "ok":
            condition &= ~Q(status="success")
        return condition

    def scanned(self) -> Q | None:
        """The conditions checked on each row read in time order (None: there are none)."""
        lookups = {"cost_usd__gte": self.min_cost, "latency_ms__gte": self.min_latency}
        if self.status == "ok":
            lookups["status"] = "success"
        elif self.status in ("error", "cancelled"):
            lookups["status"] = self.status
        elif self.status:
            lookups["error_class"] = self.status
        conditions = [Q(**{name: value}) for name, value in lookups.items() if value is not None]
        conditions += [self._text_condition(name, value) for name, value in self.text.items() if name != "user"]
        if not conditions:
            return None
        combined = conditions[0]
        for condition in conditions[1:]:
            combined &= condition
        return combined

    @staticmethod
    def _text_condition(name: str, value: str) -> Q:
        if name == "model":
            return Q(requested_model=value) | Q(served_model=value)
        if name == "tag":
            return Q(HasTag(F("tags"), value))
        return Q(**{{"provider": "provider_name", "user": "end_user"}.get(name, name): value})

    def query(self, **changes: str) -> str:
        """This filter set as a query string, with `changes` (an empty value drops a parameter)."""
        params = QueryDict(mutable=True)
        values = {
            "since": _time_text(self.since), "until": _time_text(self.until), "status": self.status,
            "key": "none" if self.no_key else (str(self.key) if self.key is not None else ""),
            "tenant": self.tenant,
            "min_cost": format(self.min_cost, "f") if self.min_cost is not None else "",
            "min_latency": str(self.min_latency) if self.min_latency is not None else "",
            "request_id": str(self.request_id) if self.request_id else "", **self.text, **changes,
        }
        for name, value in values.items():
            if value:
                params[name] = value
        return params.urlencode()


def filters_parse(query: QueryDict, *, operator: bool = False) -> Filters:
    """The filters of a query string; each bad value is named in `errors` and not applied."""
    filters = Filters()
    get = {name: query.get(name, "").strip() for name in PARAMETERS}
    for name in ("since", "until"):
        if get[name]:
            _set(filters, name, get[name], _time, "a date or time such as 2026-12-07 or 2026-12-07T14:30 (UTC)")
    if filters.since and filters.until and filters.since >= filters.until:
        filters.errors["until"] = "must be later than since"
    if get["status"]:
        if get["status"] in STATUSES or ERROR_CLASS.match(get["status"]):
            filters.status = get["status"]
        else:
            filters.errors["status"] = "use ok, error, cancelled or an error class such as rate_limited"
    if get["key"] == "none":
        filters.no_key = True
    elif get["key"]:
        _set(filters, "key", get["key"], _whole, "an API key's id (a whole number), or none")
    if get["tenant"] and operator:
        filters.tenant = get["tenant"][:TEXT_LIMIT]
    if get["min_cost"]:
        _set(filters, "min_cost", get["min_cost"], _amount, "an amount in USD, such as 0.01")
    if get["min_latency"]:
        _set(filters, "min_latency", get["min_latency"], _whole, "milliseconds, a whole number")
    if get["request_id"]:
        _set(filters, "request_id", get["request_id"], uuid.UUID,
             "a request id such as 3f2c8a9e-5b1d-4c7a-9e2f-0a1b2c3d4e5f (the x-gateway-request-id header)")
    for name, label in TEXT_FILTERS:
        if get[name]:
            if len(get[name]) > TEXT_LIMIT:
                filters.errors[name] = f"{label} is at most {TEXT_LIMIT} characters"
            else:
                filters.text[name] = get[name]
    for name in ("after", "before"):
        if get[name]:
            _set(filters, name, get[name], Cursor.parse, "a page link from this page (it was changed)")
    return filters


def _set(filters: Filters, name: str, text: str, parse, expected: str) -> None:
    try:
        setattr(filters, name, parse(text))
    except (ValueError, ArithmeticError):
        filters.errors[name] = f"{text[:60]!r} is not {expected}"


def _time(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace(" ", "T", 1) if len(text) > 10 else text)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _time_text(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%dT%H:%M") if value is not None and value.second == 0 else (
        value.isoformat() if value is not None else "")


def _whole(text: str) -> int:
    if not text.isdigit() or len(text) > 12:
        raise ValueError
    return int(text)


def _amount(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation as exc:
        raise ValueError from exc
    if not value.is_finite() or value < 0 or value > Decimal("1e6"):
        raise ValueError
    return value
