"""The adapter contract: how the gateway speaks one provider wire format.

The gateway's own language is OpenAI's chat completions and embeddings format: requests arrive in
it and responses leave in it. An adapter translates that to and from one vendor's wire format,
and says how the vendor spells its errors. Everything else lives here, once:

- sending over the event loop's shared `UpstreamClient` (`providers/transport.py`; never one
  client per request),
- status handling: any non-2xx becomes a `ProviderError` with one of the shared error classes
  (`PROVIDER_ERROR_CLASSES`), its `retry-after`, and the vendor's message, scrubbed of the
  call's key and anything shaped like one (a subclass that builds a `ProviderError` from the
  vendor's words, such as a mid-stream error event, passes `secret=target.api_key` too),
- transport failures: timeouts become `timeout`, resets and refused connections `connection`,
- Server-Sent Events parsing for streams, and closing the upstream response when the consumer
  stops early (client gone, error), so the pooled connection is released.

Retries and failover are not an adapter's business: routing decides them from `retryable`.

A subclass implements:
- `chat_request(payload, target)` -> `UpstreamRequest`
- `chat_response(data, target)` -> `ChatResult` (an OpenAI `chat.completion` body plus usage)
- `chat_stream_chunks(events, target)` -> async iterator of OpenAI `chat.completion.chunk`
  dicts; the last one carries `usage` when the vendor reported it
- `embeddings_request` / `embeddings_response`, when the vendor has embeddings
- `error_details(status, data)` -> (error class or None, message): the vendor's error spelling
- `images`, `transcription`, `speech`, `moderations`, `rerank`, where the vendor serves them (the
  media endpoints; the default is a 400 saying the provider does not): each sends with the shared
  machinery (`_send_json`, `_send_read`, `_send_streamed` for binary answers) and gives a
  `MediaResult` with the `Units` the vendor bills (`providers/adapters/media.py`)
- `count_tokens(payload, target)` -> the prompt's tokens by the vendor's own free counter
  (Anthropic's `count_tokens`, Gemini's `countTokens`); None, the default, when it has none
- `text_completion_request` / `text_completion_response` / `text_completion_stream_chunks`, when
  the vendor serves OpenAI's legacy text completions (for completion models; the answer in the
  chat shape, `providers/adapters/text_completions.py`); a text completion for a chat model is
  translated to the chat call here

The stream contract, for callers of `chat_stream(payload, target, *, opened=None)`:

- Chunks are OpenAI `chat.completion.chunk` dicts. The last one carries OpenAI's `usage` (both
  sides) when the vendor reported usage, as OpenAI's `stream_options.include_usage` chunk does.
- A chunk may also carry the gateway-internal key `usage_so_far` (`USAGE_SO_FAR`): the counts the
  provider has reported so far, in OpenAI's usage shape (`prompt_tokens`, `completion_tokens`,
  `prompt_tokens_details.cached_tokens`), cumulative (a later one replaces an earlier one), with
  a side the provider has not reported yet left out (`usage_so_far()` builds it). It rides on the
  chunk the provider's event produced (Anthropic's `message_start` role chunk gives the prompt
  side, its `message_delta` finish chunk both; each Gemini chunk whose event had
  `usageMetadata`), or on a chunk of its own with `choices: []` when the event produced none.
  Vendors that report usage only at the end (OpenAI and its family, Azure, Cohere) send none.
  Routing strips it before anything reaches a client.
- `opened`, when given, is called (no arguments, synchronously) once the provider has answered
  the stream's request with a success status, before its first event is read: from then on the
  provider has accepted the request. It is never called for an error status or a connection
  that failed.
"""

from __future__ import annotations

import dataclasses
import email.utils
import time
from decimal import Decimal
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

from kernel import wire_json
from kernel.errors import InvalidRequest, ProviderError
from kernel.request_ids import correlation_id
from providers.adapters.text_completions import echoed, echoed_chunks, text_completion_split
from providers.sse import SSEDecoder, SSEEvent
from providers.transport import UpstreamClient, UpstreamError, UpstreamResponse, UpstreamTimeout


@dataclass(frozen=True)
class Target:
    """One concrete place to send a request: a provider, its key and the upstream model id."""

    provider_id: int
    provider_name: str
    wire_type: str
    api_base: str
    upstream_model: str
    mode: str = "chat"  # the upstream model's: `completion` serves only legacy text completions
    api_key: str = field(default="", repr=False)
    read_timeout: float | None = None
    max_output_tokens: int | None = None
    unsupported_params: frozenset[str] = frozenset()
    unsupported_policy: str = "drop"


@dataclass
class Usage:
    """Token counts; `cached_tokens` is the part of the prompt served from the provider's cache."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @classmethod
    def from_openai(cls, data: dict | None) -> Usage | None:
        if not isinstance(data, dict) or "prompt_tokens" not in data:
            return None
        details = data.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else 0
        return cls(
            prompt_tokens=int(data.get("prompt_tokens") or 0),
            completion_tokens=int(data.get("completion_tokens") or 0),
            cached_tokens=int(cached or 0),
        )

    def as_openai(self) -> dict:
        usage = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        if self.cached_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return usage


USAGE_SO_FAR = "usage_so_far"


def usage_so_far(
    *, prompt_tokens: int | None = None, completion_tokens: int | None = None, cached_tokens: int = 0
) -> dict:
    """The counts a provider has reported so far, in OpenAI's usage shape; None leaves a side out."""
    usage: dict = {}
    if prompt_tokens is not None:
        usage["prompt_tokens"] = prompt_tokens
        if cached_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    if completion_tokens is not None:
        usage["completion_tokens"] = completion_tokens
    return usage


@dataclass
class ChatResult:
    body: dict
    usage: Usage | None


@dataclass
class UpstreamRequest:
    """A POST to a provider: `json`, or `content` of `content_type` (a multipart upload)."""

    url: str
    json: dict | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    content_type: str = ""


@dataclass(frozen=True)
class Units:
    """What a provider bills besides tokens: `count` images (of `size` and `quality`), audio
    seconds (`audio_second`), characters (`character`) or searches (`search`)."""

    kind: str
    count: Decimal
    size: str = ""
    quality: str = ""


@dataclass(frozen=True)
class AudioUpload:
    """An audio file to transcribe or translate, with the form's other fields (strings)."""

    fields: dict[str, str | list[str]]
    filename: str
    content: bytes = field(repr=False)
    content_type: str
    seconds: Decimal  # measured from the file (`providers.audio.audio_seconds`)


@dataclass
class MediaResult:
    """A provider's answer of the media endpoints (images, audio, moderation, rerank): a JSON
    `body`, or a `text` answer of `content_type` (a transcription as text, srt or vtt), or the
    `chunks` of a binary answer (speech) as the provider sends them; with the tokens and the
    units it billed."""

    body: dict | None = None
    usage: Usage | None = None
    units: Units | None = None
    text: str | None = None
    content_type: str = "application/json"
    chunks: AsyncIterator[bytes] | None = None


class Adapter:
    """Base class of every wire-format adapter; see the module docstring for the contract."""

    wire_type = ""
    supports_embeddings = False

    def __init__(self, client: UpstreamClient) -> None:
        self.client = client

    # --- what a subclass implements -------------------------------------------------------------
    def chat_request(self, payload: dict, target: Target) -> UpstreamRequest:
        raise NotImplementedError

    def chat_response(self, data: dict, target: Target) -> ChatResult:
        raise NotImplementedError

    def chat_stream_chunks(
        self, events: AsyncIterator[SSEEvent], target: Target
    ) -> AsyncIterator[dict]:
        raise NotImplementedError

    def embeddings_request(self, payload: dict, target: Target) -> UpstreamRequest:
        raise InvalidRequest(
            f"Provider '{target.provider_name}' does not serve embeddings.", param="model"
        )

    def embeddings_response(self, data: dict, target: Target) -> ChatResult:
        raise NotImplementedError

    # The media endpoints, where the vendor serves them: each takes the gateway's request (OpenAI's
    # shape; Cohere's v2 for rerank, `documents` as strings) and gives a `MediaResult` in the
    # same shape, with the units billed.
    async def images(self, payload: dict, target: Target) -> MediaResult:
        raise self.not_served(target, "image generation")

    async def transcription(self, upload: AudioUpload, target: Target, *, translate: bool) -> MediaResult:
        raise self.not_served(target, "audio transcription")

    async def speech(self, payload: dict, target: Target) -> MediaResult:
        raise self.not_served(target, "text to speech")

    async def moderations(self, payload: dict, target: Target) -> MediaResult:
        raise self.not_served(target, "moderation")

    async def rerank(self, payload: dict, target: Target) -> MediaResult:
        raise self.not_served(target, "rerank")

    def not_served(self, target: Target, what: str) -> InvalidRequest:
        return InvalidRequest(f"Provider '{target.provider_name}' does not serve {what}.", param="model")

    def error_details(self, status: int, data: object) -> tuple[str | None, str]:
        """Return (error class, message) from a vendor error body; None keeps the status default."""
        return None, ""

    async def count_tokens(self, payload: dict, target: Target) -> int | None:
        """The prompt tokens of the chat request `payload`, counted by the vendor for free; None
        when the vendor has no such counter (the caller estimates)."""
        return None

    def token_count(self, value: object, target: Target) -> int:
        """A vendor's count, checked: a non-negative integer, else a malformed answer."""
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise self.malformed(target, "token count")
        return value

    def unsupported(self, target: Target) -> frozenset[str]:
        """Parameters this target does not accept: the provider's own list, plus the service's."""
        return target.unsupported_params

    def params_filter(self, payload: dict, target: Target) -> dict:
        """Drop the parameters the target does not accept, or refuse them, as its provider says."""
        refused = self.unsupported(target) & payload.keys()
        if not refused:
            return payload
        if target.unsupported_policy == "reject":
            name = sorted(refused)[0]
            raise InvalidRequest(
                f"Provider '{target.provider_name}' does not support the parameter '{name}'.", param=name
            )
        return {key: value for key, value in payload.items() if key not in refused}

    def text_completion_request(self, payload: dict, legacy: dict, target: Target) -> UpstreamRequest:
        """The vendor's own text completion request (`providers.adapters.text_completions`), for a
        completion model; a vendor without one cannot serve such a model."""
        raise InvalidRequest(
            f"Provider '{target.provider_name}' does not serve text completions; the model "
            f"'{target.upstream_model}' cannot be called through it.", param="model",
        )

    def text_completion_response(self, data: dict, target: Target) -> ChatResult:
        raise NotImplementedError

    def text_completion_stream_chunks(
        self, events: AsyncIterator[SSEEvent], target: Target
    ) -> AsyncIterator[dict]:
        raise NotImplementedError

    # --- shared machinery -----------------------------------------------------------------------
    async def chat(self, payload: dict, target: Target) -> ChatResult:
        """A chat completion; a text completion (`text_completions.TEXT_COMPLETION` in `payload`)
        passed through to a completion model, or translated to this chat call for a chat model."""
        payload, legacy = text_completion_split(payload)
        if legacy is not None and target.mode == "completion":
            request = self.text_completion_request(self.params_filter(payload, target), legacy, target)
            return self.text_completion_response(await self._send_json(request, target), target)
        request = self.chat_request(self.params_filter(payload, target), target)
        result = self.chat_response(await self._send_json(request, target), target)
        return dataclasses.replace(result, body=echoed(result.body, legacy, payload))

    async def embeddings(self, payload: dict, target: Target) -> ChatResult:
        request = self.embeddings_request(payload, target)
        return self.embeddings_response(await self._send_json(request, target), target)

    async def chat_stream(
        self, payload: dict, target: Target, *, opened: Callable[[], None] | None = None
    ) -> AsyncIterator[dict]:
        """Open the upstream stream and yield OpenAI chunks as they arrive.

        Errors before the first byte of the body (status, connect) raise from the first
        `__anext__`, which lets routing fail over before the client has seen anything.
        `opened` is called once the provider answered with a success status, before its first
        event is read (see the module docstring).
        """
        payload, legacy = text_completion_split(payload)
        native = legacy is not None and target.mode == "completion"
        if native:
            request = self.text_completion_request(self.params_filter(payload, target), legacy, target)
        else:
            request = self.chat_request(self.params_filter(payload, target), target)
        response = await self._open(request, target, stream=True)
        try:
            if opened is not None:
                opened()
            events = self._sse_events(response, target)
            if native:
                chunks = self.text_completion_stream_chunks(events, target)
            else:
                chunks = echoed_chunks(self.chat_stream_chunks(events, target), legacy, payload)
            async for chunk in chunks:
                yield chunk
        except UpstreamError as exc:  # timeouts included
            raise self._transport_error(exc, target) from exc
        finally:
            await response.aclose()

    async def _send_json(self, request: UpstreamRequest, target: Target) -> dict:
        response = await self._open(request, target, stream=False)
        try:
            data = _body_json(response)
        except ValueError as exc:
            raise ProviderError(
                f"Provider '{target.provider_name}' returned a body that is not JSON.",
                error_class="upstream_server",
                provider=target.provider_name,
                upstream_status=response.status_code,
            ) from exc
        if not isinstance(data, dict):
            raise ProviderError(
                f"Provider '{target.provider_name}' returned an unexpected body.",
                error_class="upstream_server",
                provider=target.provider_name,
                upstream_status=response.status_code,
            )
        return data

    async def _send_read(self, request: UpstreamRequest, target: Target) -> UpstreamResponse:
        """Send and read the whole answer, whatever its type (a transcription as text)."""
        return await self._open(request, target, stream=False)

    async def _send_streamed(self, request: UpstreamRequest, target: Target) -> tuple[UpstreamResponse, AsyncIterator[bytes]]:
        """Send; the answer's bytes as they arrive (speech), its connection closed when they end or
        the consumer stops. A failure before the body raises here, where routing can fail over."""
        response = await self._open(request, target, stream=True)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for piece in response.aiter_bytes():
                    yield piece
            except UpstreamError as exc:
                raise self._transport_error(exc, target) from exc
            finally:
                await response.aclose()

        return response, chunks()

    async def _open(
        self, request: UpstreamRequest, target: Target, *, stream: bool
    ) -> UpstreamResponse:
        timeouts = self.client.timeouts
        if target.read_timeout and target.read_timeout != timeouts.read:
            timeouts = dataclasses.replace(timeouts, read=target.read_timeout)
        headers = {"content-type": request.content_type or "application/json", **request.headers}
        if request_id := correlation_id():
            headers["x-request-id"] = request_id
        # The body encoded by orjson (kernel.wire_json), or the request's own (an upload).
        content = request.content if request.content is not None else wire_json.dumps(request.json)
        try:
            response = await self.client.post(request.url, content=content, headers=headers, timeouts=timeouts)
            if not stream and response.status_code < 400:
                await response.aread()
        except UpstreamError as exc:  # timeouts included
            raise self._transport_error(exc, target) from exc
        if response.status_code >= 400:
            try:
                await response.aread()
                body_read = True
            except UpstreamError:
                body_read = False  # a body cut short: classify by status alone
            raise self._status_error(response, target, body_read=body_read)
        return response

    def _status_error(
        self, response: UpstreamResponse, target: Target, *, body_read: bool = True
    ) -> ProviderError:
        data: object = ""
        if body_read:
            try:
                data = response.json()
            except ValueError:
                data = response.text[:500]
        error_class, message = self.error_details(response.status_code, data)
        error_class = error_class or _class_for_status(response.status_code)
        message = message or f"HTTP {response.status_code}"
        return ProviderError(
            f"Provider '{target.provider_name}' returned {response.status_code}: {message}",
            error_class=error_class,
            provider=target.provider_name,
            upstream_status=response.status_code,
            retry_after=_retry_after(response.headers),
            secret=target.api_key,
        )

    def _transport_error(self, exc: UpstreamError, target: Target) -> ProviderError:
        if isinstance(exc, UpstreamTimeout):
            return ProviderError(
                f"Provider '{target.provider_name}' timed out ({exc.kind}).",
                error_class="timeout",
                provider=target.provider_name,
            )
        return ProviderError(
            f"Connection to provider '{target.provider_name}' failed ({exc.kind}).",
            error_class="connection",
            provider=target.provider_name,
        )

    async def _sse_events(
        self, response: UpstreamResponse, target: Target
    ) -> AsyncIterator[SSEEvent]:
        """Parse a text/event-stream body (`providers.sse`)."""
        decoder = SSEDecoder()
        async for piece in response.aiter_bytes():
            for event in decoder.feed(piece):
                yield event
        for event in decoder.end():
            yield event

    def malformed(self, target: Target, what: str) -> ProviderError:
        return ProviderError(
            f"Provider '{target.provider_name}' sent malformed {what}.",
            error_class="upstream_server",
            provider=target.provider_name,
        )

    def load_event(self, event: SSEEvent, target: Target) -> dict:
        try:
            data = wire_json.loads(event.data)
        except ValueError as exc:
            raise self.malformed(target, "stream data") from exc
        if not isinstance(data, dict):
            raise self.malformed(target, "stream data")
        return data


def _body_json(response: UpstreamResponse) -> object:
    """The body as JSON: UTF-8 through orjson; anything else (a UTF-16 body, say) through `json`."""
    try:
        return wire_json.loads(response.content)
    except ValueError:
        return response.json()


def _class_for_status(status: int) -> str:
    if status == 429:
        return "rate_limited"
    if status in (408, 504):
        return "timeout"
    if status in (503, 529):
        return "overloaded"
    if status in (401, 403):
        return "auth"
    if status >= 500:
        return "upstream_server"
    return "bad_request"


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from `retry-after-ms`, `retry-after` (seconds or an HTTP date)."""
    if value := headers.get("retry-after-ms"):
        try:
            return max(float(value) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(parsed.timestamp() - time.time(), 0.0)
