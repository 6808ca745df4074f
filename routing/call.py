"""What the pipeline knows about one gateway request: routing's own object.

The pipeline (`routing.pipeline`, with `routing.relay` and `routing.record`) fills it from the
values the other apps' steps return (a guard result, a cache decision, a reservation); no module
outside `routing` writes into it (`tests/test_layers.py` checks)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from dataclasses import dataclass, field

from accounting import tokens
from accounting.auth import ApiKeyContext
from accounting.budgets import BudgetLimit, Reservation
from accounting.quotas import Charge
from accounting.services import RecordWrite
from caching.services import CacheDecision
from guardrails.selectors import RuleSet
from kernel import request_ids
from providers.adapters import Units, Usage
from providers.selectors import Deployment
from routing.attempts import AttemptLog
from routing.media import MediaKind
from routing.selection import RoutePlan


def _chat_prompt_tokens(payload: dict) -> int:
    return tokens.prompt_tokens(payload.get("messages") or [])


def _embedding_prompt_tokens(payload: dict) -> int:
    return tokens.embedding_input_tokens(payload.get("input"))


@dataclass
class Call:
    """What the pipeline knows about one gateway request, from arrival to its UsageRecord."""

    endpoint: str
    response_prefix: str = "chatcmpl-"
    request_id: uuid.UUID = field(default_factory=request_ids.request_id_take)  # the UsageRecord's, unique
    started: float = field(default_factory=time.perf_counter)
    auth: ApiKeyContext | None = None
    payload: dict = field(default_factory=dict)
    requested_model: str = ""
    stream: bool = False
    plan: RoutePlan | None = None
    deployment: Deployment | None = None
    log: AttemptLog = field(default_factory=AttemptLog)
    usage: Usage | None = None  # the provider's final counts
    # What the provider has counted so far in a stream (`usage_so_far` of its chunks, OpenAI's usage
    # shape, a side it has not reported left out), for a stream that ends before its final usage.
    usage_so_far: dict = field(default_factory=dict)
    accepted: bool = False  # the provider answered the request with a success status (streams)
    ttft_ms: int | None = None
    recorded: bool = False
    prompt_estimate: int | None = None
    budgets: tuple[BudgetLimit, ...] = ()
    reservation: Reservation | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)
    charge: Charge | None = None
    cost_usd: Decimal = Decimal("0")
    schema: dict | None = None  # the JSON schema the answer must satisfy (response_format)
    tool_called: bool = False
    recorded_tokens: tuple[int, int] = (0, 0)
    task: str = ""
    tags: tuple[str, ...] = ()
    conversation_id: str = ""
    # A legacy text completion's own fields (`providers.adapters.text_completions`), set by its door.
    text_completion: dict | None = None
    cache: CacheDecision | None = None  # the cache's decision, when the cache takes part
    guard: RuleSet | None = None  # the tenant's guardrail rules, once the input was checked
    guard_events: list[dict] = field(default_factory=list)  # the checks append; written with the record
    media: MediaKind | None = None  # the media endpoint served (images, audio, moderations, rerank)
    units: Units | None = None  # what the provider billed besides tokens
    # The client's x-request-id when valid, else the request id: returned, logged, sent upstream.
    correlation_id: str = field(default_factory=request_ids.correlation_id)
    answer: dict | None = None  # the body answered (not a stream), once the pipeline has it
    # A caller's hook, awaited once with the request's record just before it is written (the record
    # step): a batch line keeps its answer and its record with it, so that a worker that dies
    # between the record and the line's finish loses neither (`batches.runner`). None for live
    # requests, whose client has its answer or nothing.
    keep: Callable[[Call, RecordWrite], Awaitable[None]] | None = None

    @property
    def has_response_id(self) -> bool:
        """Whether the answer carries the request's response id (chat answers; not embeddings or
        the media endpoints), which the record keeps."""
        return self.endpoint != "embeddings" and self.media is None

    @property
    def response_id(self) -> str:
        return f"{self.response_prefix}{self.request_id.hex}"

    def estimated_prompt_tokens(self) -> int:
        """Prompt tokens counted by the gateway (once per request): for limits, budgets, guardrails,
        and the record when the provider reported none."""
        if self.prompt_estimate is None:
            self.prompt_estimate = self.prompt_tokens_counter()(self.payload)
        return self.prompt_estimate

    def prompt_tokens_counter(self) -> Callable[[dict], int]:
        """How the prompt tokens of a request body of this call's endpoint are counted."""
        return _embedding_prompt_tokens if self.endpoint == "embeddings" else _chat_prompt_tokens

    def choices_billed(self) -> int:
        """The answers a provider may generate and bill for this request: `n` (of each prompt of
        a text completion, or `best_of` when it asks for more)."""
        choices = self.payload.get("n") or 1
        if self.text_completion is not None:
            choices = max(choices, self.text_completion.get("best_of") or 1)
            choices *= max(len(self.payload.get("messages") or ()), 1)
        return choices

    def elapsed_ms(self) -> int:
        return int((time.perf_counter() - self.started) * 1000)

    def headers(self) -> dict[str, str]:
        headers = {"x-request-id": self.correlation_id or str(self.request_id),
                   "x-gateway-request-id": str(self.request_id)}
        if self.deployment is not None:
            headers["x-gateway-provider"] = self.deployment.target.provider_name
            headers["x-gateway-model"] = self.deployment.target.upstream_model
        if self.log.attempts:
            headers["x-gateway-attempts"] = str(self.log.attempts)
        if self.plan is not None and self.plan.rule:
            headers["x-gateway-route"] = self.plan.rule
        if self.plan is not None and self.plan.experiment:
            headers["x-gateway-variant"] = f"{self.plan.experiment}/{self.plan.variant}"
        if self.cache is not None:
            name, value = self.cache.header
            headers[name] = value
        headers.update(self.extra_headers)
        return headers

    def served_by(self, deployment: Deployment) -> None:
        self.deployment = deployment
