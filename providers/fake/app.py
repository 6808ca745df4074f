"""The fake as a pure-ASGI app: routing, the endpoints, and the timing and faults they share.

No Django import, so tests can run it in-process under `httpx.ASGITransport`; `serve()` in
providers/fake/daphne.py runs it as a real server.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from providers.fake.anthropic import AnthropicDialect
from providers.fake.azure import AzureDialect
from providers.fake.cohere import CohereDialect, embed_body, embed_parse
from providers.fake.content import completion_build, request_id_new, tokens_count
from providers.fake.dialect import Dialect, dumps
from providers.fake.directives import (
    directive_build,
    directive_extract,
    directive_normalize,
)
from providers.fake.errors import ApiError, FakeConnectionDrop
from providers.fake.exchange import Exchange
from providers.fake.gemini import GEMINI, GEMINI_ROUTES
from providers.fake import media
from providers.fake.respond import (
    Settings,
    billing_due,
    body_send,
    before_response,
    error_send,
    json_body,
    stream_send,
)
from providers.fake.openai_text import OpenAITextDialect
from providers.fake.openai import (
    OpenAIDialect,
    embedding_inputs,
    embedding_item,
    embedding_options,
)

OPENAI, ANTHROPIC, TEXT = OpenAIDialect(), AnthropicDialect(), OpenAITextDialect()
COHERE, AZURE = CohereDialect(), AzureDialect()


# --- endpoints --------------------------------------------------------------------------------


async def _chat(*, ex: Exchange, settings: Settings, dialect: Dialect) -> None:
    dialect.authenticate(headers=ex.headers, api_key=settings.api_key)
    header = ex.headers.get("x-fake-directive", "")
    request = dialect.parse(body=json_body(ex=ex), header_directive=header,
                            server_directive=settings.directive)
    directive = request.directive
    if not await before_response(ex=ex, settings=settings, dialect=dialect, directive=directive,
                                  tokens=request.prompt_tokens):
        return
    completion = completion_build(request=request, id_prefix=dialect.id_prefix)
    billing_due(ex=ex, prompt_tokens=request.prompt_tokens, completion=completion)
    if request.stream:
        await stream_send(ex=ex, settings=settings, frames=dialect.frames(completion=completion),
                           directive=directive)
    else:
        await body_send(ex=ex, dialect=dialect, payload=dialect.render(completion=completion),
                         directive=directive)


async def _text_completions(*, ex: Exchange, settings: Settings, dialect: Dialect) -> None:
    """OpenAI's legacy `POST /v1/completions` (providers/fake/openai_text.py)."""
    dialect.authenticate(headers=ex.headers, api_key=settings.api_key)
    request = TEXT.parse_text(body=json_body(ex=ex), header_directive=ex.headers.get("x-fake-directive", ""),
                              server_directive=settings.directive)
    directive = request.prompts[-1].directive
    if not await before_response(ex=ex, settings=settings, dialect=dialect, directive=directive,
                                  tokens=request.prompt_tokens):
        return
    completion = TEXT.text_build(request=request)
    billing_due(ex=ex, prompt_tokens=request.prompt_tokens, completion=completion)
    if completion.request.stream:
        await stream_send(ex=ex, settings=settings, directive=directive,
                          frames=TEXT.text_frames(completion=completion, request=request))
    else:
        await body_send(ex=ex, dialect=dialect, directive=directive,
                        payload=TEXT.text_render(completion=completion, request=request))


async def _embeddings(*, ex: Exchange, settings: Settings, dialect: Dialect) -> None:
    dialect.authenticate(headers=ex.headers, api_key=settings.api_key)
    body = json_body(ex=ex)
    model, dimensions, encoding = embedding_options(body=body)
    inputs = embedding_inputs(value=body.get("input"))
    last_text = next((i for i in reversed(inputs) if isinstance(i, str)), "")
    directive = directive_build(header=ex.headers.get("x-fake-directive", ""),
                                message=directive_extract(text=last_text)[1],
                                server=settings.directive)
    tokens = sum(len(i) if isinstance(i, list) else tokens_count(text=i) for i in inputs)
    if not await before_response(ex=ex, settings=settings, dialect=dialect, directive=directive,
                                  tokens=tokens):
        return
    billing_due(ex=ex, prompt_tokens=tokens)
    payload = {"object": "list", "model": model, "data": [
        embedding_item(model=model, item=item, dimensions=dimensions, encoding=encoding, index=i)
        for i, item in enumerate(inputs)]}
    if not directive.no_usage:
        payload["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    await body_send(ex=ex, dialect=dialect, payload=payload, directive=directive)


async def _cohere_embed(*, ex: Exchange, settings: Settings, dialect: Dialect) -> None:
    """Cohere's Embed v2; the directive comes from the header or the last text."""
    dialect.authenticate(headers=ex.headers, api_key=settings.api_key)
    model, texts, dimensions = embed_parse(body=json_body(ex=ex))
    directive = directive_build(header=ex.headers.get("x-fake-directive", ""),
                                message=directive_extract(text=texts[-1])[1],
                                server=settings.directive)
    tokens = sum(tokens_count(text=text) for text in texts)
    if not await before_response(ex=ex, settings=settings, dialect=dialect, directive=directive,
                                  tokens=tokens):
        return
    billing_due(ex=ex, prompt_tokens=tokens)
    payload = embed_body(model=model, texts=texts, dimensions=dimensions,
                         tokens=None if directive.no_usage else tokens)
    await body_send(ex=ex, dialect=dialect, payload=payload, directive=directive)


def _azure(handler: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """An Azure OpenAI deployment route: `?api-version=` is required (400 without it), and the
    deployment named in the path is the model, whatever the body says."""

    async def deployment(*, ex: Exchange, settings: Settings, dialect: Dialect) -> None:
        dialect.authenticate(headers=ex.headers, api_key=settings.api_key)
        if not ex.query.get("api-version"):
            raise ApiError(400, "The api-version query parameter (?api-version=) is required for "
                           "all requests.", code="MissingApiVersionParameter")
        ex.body = dumps({**json_body(ex=ex), "model": ex.params["deployment"]})
        await handler(ex=ex, settings=settings, dialect=dialect)

    return deployment


async def _count_tokens(*, ex: Exchange, settings: Settings, dialect: Dialect) -> None:
    """Anthropic's `POST /v1/messages/count_tokens`: the input tokens `/v1/messages` would bill for
    the same body (no `max_tokens` needed), free, as Anthropic's."""
    dialect.authenticate(headers=ex.headers, api_key=settings.api_key)
    request = dialect.parse(body={**json_body(ex=ex), "max_tokens": 1}, header_directive="")
    await ex.respond(200, dumps({"input_tokens": request.prompt_tokens}), [])


async def _models(*, ex: Exchange, settings: Settings, dialect: Dialect) -> None:
    dialect.authenticate(headers=ex.headers, api_key=settings.api_key)
    await ex.respond(200, dumps(dialect.models()), [(dialect.request_id_header, request_id_new())])


async def _stats(*, ex: Exchange, settings: Settings, dialect: Dialect) -> None:
    await ex.respond(200, dumps({**settings.stats, "usage": settings.ledger.usage}), [])


async def _reset(*, ex: Exchange, settings: Settings, dialect: Dialect) -> None:
    settings.stats.update(requests=0, by_path={})
    settings.ledger.reset()
    settings.directive = ""
    await _stats(ex=ex, settings=settings, dialect=dialect)


async def _ledger_get(*, ex: Exchange, settings: Settings, dialect: Dialect) -> None:
    """Every chat and embeddings request kept (the oldest first), or those `?request_id=` names."""
    entries = settings.ledger.listing(request_id=ex.query.get("request_id"))
    await ex.respond(200, dumps({"data": entries}), [])


async def _ledger_delete(*, ex: Exchange, settings: Settings, dialect: Dialect) -> None:
    settings.ledger.clear()
    await _ledger_get(ex=ex, settings=settings, dialect=dialect)


async def _directive_get(*, ex: Exchange, settings: Settings, dialect: Dialect) -> None:
    await ex.respond(200, dumps({"directive": settings.directive}), [])


async def _directive_put(*, ex: Exchange, settings: Settings, dialect: Dialect) -> None:
    """Set the server-wide directive from `{"directive": "status=500 ..."}`; "" clears it."""
    text = json_body(ex=ex).get("directive")
    if not isinstance(text, str):
        raise ApiError(400, "Expected a JSON body like {\"directive\": \"status=500\"}.",
                       param="directive")
    settings.directive = directive_normalize(text=text)  # a bad word is a 400, nothing changes
    await _directive_get(ex=ex, settings=settings, dialect=dialect)


async def _directive_delete(*, ex: Exchange, settings: Settings, dialect: Dialect) -> None:
    settings.directive = ""
    await _directive_get(ex=ex, settings=settings, dialect=dialect)


Handler = Callable[..., Awaitable[None]]  # called as handler(ex=, settings=, dialect=)
ROUTES: dict[tuple[str, str], Handler] = {
    ("POST", "/v1/chat/completions"): _chat,
    ("POST", "/v1/completions"): _text_completions,
    ("POST", "/v1/messages"): _chat,
    ("POST", "/v1/messages/count_tokens"): _count_tokens,
    ("POST", "/v1/embeddings"): _embeddings,
    ("GET", "/v1/models"): _models,
    ("POST", "/v1/images/generations"): media.images,
    ("POST", "/v1/audio/transcriptions"): media.transcription(translate=False),
    ("POST", "/v1/audio/translations"): media.transcription(translate=True),
    ("POST", "/v1/audio/speech"): media.speech,
    ("POST", "/v1/moderations"): media.moderations,
    ("POST", "/v1/rerank"): media.rerank(version=1),
    ("POST", "/rerank"): media.tei_rerank,
    ("GET", "/_fake/stats"): _stats,
    ("POST", "/_fake/reset"): _reset,
    ("GET", "/_fake/ledger"): _ledger_get,
    ("DELETE", "/_fake/ledger"): _ledger_delete,
    ("GET", "/_fake/directive"): _directive_get,
    ("PUT", "/_fake/directive"): _directive_put,
    ("DELETE", "/_fake/directive"): _directive_delete,
}


@dataclass(frozen=True)
class PatternRoute:
    """A route with parameters in its path (`/v1beta/models/{model}:generateContent`); its named
    groups land in `ex.params`. `dialect`, when set, is the wire format of the route."""

    method: str
    pattern: re.Pattern
    handler: Handler
    dialect: Dialect | None = None


# Vendors whose paths carry parameters (Gemini, Azure...) add their routes here.
PATTERN_ROUTES: list[PatternRoute] = []
PATTERN_ROUTES += [PatternRoute(method, pattern, handler, GEMINI)
                   for method, pattern, handler in GEMINI_ROUTES]
# Cohere's paths hold no parameters, but are routed here to force its dialect.
PATTERN_ROUTES += [
    PatternRoute("POST", re.compile(r"/v2/chat"), _chat, COHERE),
    PatternRoute("POST", re.compile(r"/v2/embed"), _cohere_embed, COHERE),
    PatternRoute("POST", re.compile(r"/v2/rerank"), media.rerank(version=2), COHERE),
    PatternRoute("GET", re.compile(r"/_fake/images/(?P<name>[0-9a-f]+-\d+)\.png"), media.image_get),
    PatternRoute("POST", re.compile(r"/openai/deployments/(?P<deployment>[^/]+)/images/generations"),
                 _azure(media.images), AZURE),
    PatternRoute("POST", re.compile(r"/openai/deployments/(?P<deployment>[^/]+)/audio/speech"),
                 _azure(media.speech), AZURE),
    PatternRoute("POST", re.compile(r"/openai/deployments/(?P<deployment>[^/]+)/moderations"),
                 _azure(media.moderations), AZURE),
    PatternRoute("POST", re.compile(r"/openai/deployments/(?P<deployment>[^/]+)/chat/completions"),
                 _azure(_chat), AZURE),
    PatternRoute("POST", re.compile(r"/openai/deployments/(?P<deployment>[^/]+)/completions"),
                 _azure(_text_completions), AZURE),
    PatternRoute("POST", re.compile(r"/openai/deployments/(?P<deployment>[^/]+)/embeddings"),
                 _azure(_embeddings), AZURE),
]


def _route_for(*, ex: Exchange) -> tuple[Handler | None, Dialect]:
    handler = ROUTES.get((ex.method, ex.path))
    if handler is not None:
        return handler, _dialect_for(ex=ex)
    for route in PATTERN_ROUTES:
        match = route.pattern.fullmatch(ex.path)
        if match and route.method == ex.method:
            ex.params = match.groupdict()
            return route.handler, route.dialect or _dialect_for(ex=ex)
    return None, _dialect_for(ex=ex)


def _dialect_for(*, ex: Exchange) -> Dialect:
    """Anthropic for its paths and for clients that send its headers; OpenAI otherwise."""
    anthropic_headers = "anthropic-version" in ex.headers or (
        "x-api-key" in ex.headers and "authorization" not in ex.headers)
    return ANTHROPIC if ex.path.startswith("/v1/messages") or anthropic_headers else OPENAI


def _count(*, stats: dict, path: str) -> None:
    if not path.startswith("/_fake/"):
        stats["requests"] += 1
        stats["by_path"][path] = stats["by_path"].get(path, 0) + 1


def _entry_open(*, ex: Exchange, settings: Settings) -> None:
    """A chat or embeddings request (every POST outside /_fake/) gets its ledger entry; the
    model and stream flag are the request's as sent until the handler has parsed it."""
    try:
        body = json.loads(ex.body)
    except ValueError:
        body = None
    body = body if isinstance(body, dict) else {}
    model = ex.params.get("model") or ex.params.get("deployment") or body.get("model")
    ex.entry = settings.ledger.open(
        request_id=ex.headers.get("x-request-id"), path=ex.path,
        model=model if isinstance(model, str) else None, stream=body.get("stream") is True,
        received_at=time.time())


def _entry_close(*, ex: Exchange, ended: str | None) -> None:
    """How the request ended: `ended` when the handler raised, else completed if the whole answer
    went out, or the client left first (during the latency, a hold or the stream)."""
    if ex.entry is not None:
        ex.entry.client_left_at = ex.left_at
        ex.entry.ended = ended or ("completed" if ex.finished else "client_left")


async def _dispatch(*, ex: Exchange, settings: Settings) -> None:
    _count(stats=settings.stats, path=ex.path)
    handler, dialect = _route_for(ex=ex)
    if handler is not None and ex.method == "POST" and not ex.path.startswith("/_fake/"):
        _entry_open(ex=ex, settings=settings)
    ended = "error"
    try:
        if handler is None:
            raise ApiError(404, f"Invalid URL ({ex.method} {ex.path})")
        await handler(ex=ex, settings=settings, dialect=dialect)
        ended = None
    except ApiError as error:
        await error_send(ex=ex, dialect=dialect, error=error)
    except FakeConnectionDrop:
        ended = "cut"
        raise
    finally:
        _entry_close(ex=ex, ended=ended)


async def _lifespan(receive: Callable, send: Callable) -> None:
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


def build_app(
    *, latency_ms: int = 0, chunk_delay_ms: int = 0, api_key: str | None = None,
    directive: str = "",
) -> Callable[[dict, Callable, Callable], Awaitable[None]]:
    """The fake as an ASGI callable, with its own request counters and server-wide directive.

    `latency_ms` delays every answer (a `delay_ms` directive replaces it for one request);
    `chunk_delay_ms` paces every stream (`chunk_delay_ms` directive likewise); `api_key`, when
    set, is the only key accepted, otherwise any non-empty key is. `directive` is the starting
    server-wide directive (as for `PUT /_fake/directive`); a bad one raises ValueError.
    """
    try:
        directive = directive_normalize(text=directive)
    except ApiError as error:
        raise ValueError(error.message) from None
    settings = Settings(latency_ms=latency_ms, chunk_delay_ms=chunk_delay_ms, api_key=api_key,
                        directive=directive)

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        if scope["type"] != "http":
            return
        ex = Exchange(scope, receive, send)
        try:
            if await ex.open():
                await _dispatch(ex=ex, settings=settings)
        finally:
            ex.close()

    return app
