"""Google's Gemini API (generateContent), behind the gateway's OpenAI chat format.

Requests are translated from OpenAI chat completions to `generateContent` (streams to
`streamGenerateContent?alt=sse`, whose events are whole GenerateContentResponse bodies) and
back; embeddings go to `embedContent` (one input) or `batchEmbedContents`. `target.api_base` is
`https://generativelanguage.googleapis.com`, as in Google's docs; the key goes in
`x-goog-api-key`.

Tools are translated both ways. Gemini has no tool call ids, so answers get `call_...` ids and a
`tool` message finds its function name through the id of the earlier assistant tool call. A
function call's `thoughtSignature` (which Gemini 3 requires back with the call) travels as
`extra_content.google.thought_signature` on the OpenAI tool call, the spelling of Google's own
OpenAI-compatible endpoint. Schemas (tool parameters, `response_format` json_schema) are sent as
`parametersJsonSchema` / `responseJsonSchema`, which take JSON Schema as OpenAI clients write it
(`additionalProperties` included), unlike the OpenAPI subset of `parameters` / `responseSchema`.

References: https://ai.google.dev/api/generate-content, https://ai.google.dev/api/caching#Content,
https://ai.google.dev/gemini-api/docs/function-calling,
https://ai.google.dev/gemini-api/docs/thought-signatures, https://ai.google.dev/api/embeddings,
https://ai.google.dev/gemini-api/docs/troubleshooting (error statuses).
"""

from __future__ import annotations

import base64
import json
import math
import mimetypes
import re
import struct
import time
from decimal import Decimal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit


from kernel.errors import InvalidRequest, ProviderError
from providers.adapters.base import (
    USAGE_SO_FAR,
    Adapter,
    ChatResult,
    MediaResult,
    SSEEvent,
    Target,
    Units,
    UpstreamRequest,
    Usage,
    usage_so_far,
)
from providers.adapters.gemini_media import (
    GEMINI_SPEECH_FORMATS,
    IMAGEN_PREFIX,
    audio_chunks,
    imagen_answer,
    imagen_body,
    imagen_images,
    speech_audio,
    speech_body,
    speech_pcm,
)
from providers.adapters.media import DEFAULT_IMAGE_SIZE
from providers.transport import UpstreamResponse

API_VERSION = "v1beta"

_FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}

# google.rpc status names, as in the `status` of Gemini's error object.
_ERROR_CLASSES = {
    "RESOURCE_EXHAUSTED": "rate_limited",
    "INVALID_ARGUMENT": "bad_request",
    "NOT_FOUND": "bad_request",
    "PERMISSION_DENIED": "auth",
    "UNAUTHENTICATED": "auth",
    # "The free tier is not available in your country; enable billing": the account, not the
    # request, is at fault, like a key without permission.
    "FAILED_PRECONDITION": "auth",
    "UNAVAILABLE": "overloaded",
    "INTERNAL": "upstream_server",
    "DEADLINE_EXCEEDED": "timeout",
}

# An overlong prompt is a plain INVALID_ARGUMENT: "The input token count (1200293) exceeds the
# maximum number of tokens allowed (1048576)." (https://github.com/google-gemini/gemini-cli/issues/6678)
_CONTEXT_LENGTH = re.compile(r"input token count.*exceeds the maximum", re.IGNORECASE)
# A wrong key is a 400 INVALID_ARGUMENT too, told apart by its ErrorInfo reason.
_AUTH_REASONS = {"API_KEY_INVALID", "API_KEY_SERVICE_BLOCKED"}
_RETRY_DELAY = re.compile(r"^(\d+(?:\.\d+)?)s$")

# OpenAI parameters Gemini cannot honour, refused rather than answered differently. Dropped
# without a word: `user`, `logit_bias`, `parallel_tool_calls`, `stream_options` (Gemini always
# reports usage), `reasoning_effort` (thinking is set per model family), `service_tier`,
# `store`, `prompt_cache_key`, `safety_identifier`, `verbosity`, `modalities`.
_REFUSED = {
    "functions": "The legacy 'functions' is not supported for Gemini providers; use 'tools'.",
    "function_call": "The legacy 'function_call' is not supported for Gemini providers; use "
                     "'tool_choice'.",
    "logprobs": "Gemini providers do not return log probabilities; remove 'logprobs'.",
    "top_logprobs": "Gemini providers do not return log probabilities; remove 'top_logprobs'.",
    "audio": "Audio output is not supported for Gemini providers.",
    "prediction": "Predicted outputs are not supported for Gemini providers.",
    "web_search_options": "Web search is not supported for Gemini providers.",
}
_TOOL_CHOICE_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
_AUDIO_TYPES = {"wav": "audio/wav", "mp3": "audio/mp3"}


class GeminiAdapter(Adapter):
    wire_type = "gemini"
    supports_embeddings = True

    def _url(self, target: Target, method: str) -> str:
        model = target.upstream_model.removeprefix("models/")
        return f"{target.api_base.rstrip('/')}/{API_VERSION}/models/{model}:{method}"

    def _headers(self, target: Target) -> dict[str, str]:
        return {"x-goog-api-key": target.api_key} if target.api_key else {}

    def chat_request(self, payload: dict, target: Target) -> UpstreamRequest:
        _refuse_unsupported(payload)
        system, contents = _contents(payload.get("messages"))
        body: dict = {"contents": contents}
        if system:
            body["systemInstruction"] = {"parts": [{"text": system}]}
        if payload.get("tools"):
            body["tools"] = [{"functionDeclarations": _declarations(payload["tools"])}]
            if payload.get("tool_choice") is not None:
                body["toolConfig"] = {"functionCallingConfig": _tool_choice(payload["tool_choice"])}
        if config := _generation_config(payload):
            body["generationConfig"] = config
        method = "streamGenerateContent?alt=sse" if payload.get("stream") else "generateContent"
        return UpstreamRequest(
            url=self._url(target, method), json=body, headers=self._headers(target)
        )

    async def count_tokens(self, payload: dict, target: Target) -> int:
        """`models/{model}:countTokens` with the whole `generateContent` request."""
        request = self.chat_request({**payload, "stream": False}, target)
        model = target.upstream_model.removeprefix("models/")
        counting = UpstreamRequest(
            url=self._url(target, "countTokens"),
            json={"generateContentRequest": {"model": f"models/{model}", **request.json}},
            headers=request.headers,
        )
        return self.token_count((await self._send_json(counting, target)).get("totalTokens"), target)

    def chat_response(self, data: dict, target: Target) -> ChatResult:
        self._raise_if_blocked(data, target)
        candidates = data.get("candidates")
        if not isinstance(candidates, list) or not candidates:
            raise self.malformed(target, "a response (no candidates)")
        ids = _CallIds(str(data.get("responseId") or ""))
        choices = [_choice(candidate, index, ids) for index, candidate in enumerate(candidates)]
        usage = _usage(data.get("usageMetadata"))
        body = {
            "id": str(data.get("responseId") or ""),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": data.get("modelVersion") or target.upstream_model,
            "choices": choices,
        }
        if usage:
            body["usage"] = usage.as_openai()
        return ChatResult(body=body, usage=usage)

    async def chat_stream_chunks(
        self, events: AsyncIterator[SSEEvent], target: Target
    ) -> AsyncIterator[dict]:
        stream = _Stream(model=target.upstream_model)
        async for event in events:
            data = self.load_event(event, target)
            if "error" in data:
                raise self._stream_error(data["error"], target)
            self._raise_if_blocked(data, target)
            for chunk in stream.feed(data):
                yield chunk
        # Gemini ends a stream by closing it after the event that carries the finishReason.
        if not stream.finished:
            raise self.malformed(target, "stream (ended before a finishReason)")
        if stream.usage is not None:
            yield stream.usage_chunk()

    def embeddings_request(self, payload: dict, target: Target) -> UpstreamRequest:
        texts = _embedding_texts(payload.get("input"))
        model = "models/" + target.upstream_model.removeprefix("models/")
        requests = [{"model": model, "content": {"parts": [{"text": text}]}} for text in texts]
        if payload.get("dimensions") is not None:
            for request in requests:
                request["outputDimensionality"] = payload["dimensions"]
        if len(requests) == 1:
            url, body = self._url(target, "embedContent"), requests[0]
        else:
            url, body = self._url(target, "batchEmbedContents"), {"requests": requests}
        return UpstreamRequest(url=url, json=body, headers=self._headers(target))

    def embeddings_response(self, data: dict, target: Target) -> ChatResult:
        found = [data["embedding"]] if "embedding" in data else data.get("embeddings")
        if not isinstance(found, list) or not all(
            isinstance(item, dict) and isinstance(item.get("values"), list) for item in found
        ):
            raise self.malformed(target, "an embeddings response (no embeddings)")
        items = [
            {"object": "embedding", "index": index, "embedding": item["values"]}
            for index, item in enumerate(found)
        ]
        # Gemini reports no usage for embeddings: the gateway counts the input and marks it.
        body = {"object": "list", "data": items, "model": target.upstream_model}
        return ChatResult(body=body, usage=None)

    async def embeddings(self, payload: dict, target: Target) -> ChatResult:
        result = await super().embeddings(payload, target)
        if payload.get("encoding_format") == "base64":
            for item in result.body["data"]:
                item["embedding"] = _base64_floats(item["embedding"])
        return result

    async def images(self, payload: dict, target: Target) -> MediaResult:
        """Imagen's `:predict` (`gemini_media`), answered in OpenAI's images shape."""
        if not target.upstream_model.removeprefix("models/").startswith(IMAGEN_PREFIX):
            raise self.not_served(target, "image generation with this model (Imagen models do)")
        request = UpstreamRequest(url=self._url(target, "predict"), json=imagen_body(payload),
                                  headers=self._headers(target))
        images = imagen_images(await self._send_json(request, target))
        if images is None:
            raise self.malformed(target, "an Imagen answer (no predictions)")
        if not images:
            raise ProviderError(f"Provider '{target.provider_name}' filtered every image of the request.",
                                error_class="content_filtered", provider=target.provider_name)
        units = Units(kind="image", count=Decimal(len(images)), size=payload.get("size") or DEFAULT_IMAGE_SIZE,
                      quality=payload.get("quality") or "")
        return MediaResult(body=imagen_answer(images), units=units)

    async def speech(self, payload: dict, target: Target) -> MediaResult:
        """A TTS model's `generateContent` with the AUDIO modality (`gemini_media`): wav or pcm."""
        answer_format = payload.get("response_format") or "wav"
        request = UpstreamRequest(url=self._url(target, "generateContent"), json=speech_body(payload),
                                  headers=self._headers(target))
        data = await self._send_json(request, target)
        self._raise_if_blocked(data, target)
        found = speech_pcm(data)
        if found is None:
            raise self.malformed(target, "a speech answer (no audio)")
        audio = speech_audio(*found, answer_format)
        return MediaResult(chunks=audio_chunks(audio), content_type=GEMINI_SPEECH_FORMATS[answer_format],
                           usage=_usage(data.get("usageMetadata")),
                           units=Units(kind="character", count=Decimal(len(payload["input"]))))

    def error_details(self, status: int, data: object) -> tuple[str | None, str]:
        error = _error_object(data)
        if error is None:
            return None, str(data)[:300] if data else ""
        kind, message = str(error.get("status") or ""), str(error.get("message") or "")
        if _error_reasons(error) & _AUTH_REASONS:
            return "auth", message
        if kind == "INVALID_ARGUMENT" and _CONTEXT_LENGTH.search(message):
            return "context_length_exceeded", message
        return _ERROR_CLASSES.get(kind), message

    def _status_error(
        self, response: UpstreamResponse, target: Target, *, body_read: bool = True
    ) -> ProviderError:
        # Gemini tells how long to wait in a RetryInfo detail of the body, not in a header.
        error = super()._status_error(response, target, body_read=body_read)
        delay = _retry_delay(response) if body_read and error.retry_after is None else None
        if delay:
            error.retry_after = delay
            error.headers["retry-after"] = str(math.ceil(delay))
        return error

    def _stream_error(self, error: object, target: Target) -> ProviderError:
        error_class, message = self.error_details(200, {"error": error})
        return ProviderError(
            f"Provider '{target.provider_name}' failed mid-stream: {message or 'error event'}",
            error_class=error_class or "upstream_server",
            provider=target.provider_name,
            secret=target.api_key,
        )

    def _raise_if_blocked(self, data: dict, target: Target) -> None:
        """A blocked prompt is a 200 with `promptFeedback.blockReason` and no candidates."""
        feedback = data.get("promptFeedback")
        reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
        if reason and not data.get("candidates"):
            raise ProviderError(
                f"Provider '{target.provider_name}' blocked the prompt (blockReason {reason}).",
                error_class="content_filtered",
                provider=target.provider_name,
            )


# --- request translation --------------------------------------------------------------------


def _refuse_unsupported(payload: dict) -> None:
    for name, why in _REFUSED.items():
        if payload.get(name):
            raise InvalidRequest(why, param=name)


def _generation_config(payload: dict) -> dict:
    config = {}
    for openai_name, gemini_name in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("n", "candidateCount"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ):
        if payload.get(openai_name) is not None:
            config[gemini_name] = payload[openai_name]
    for name in ("max_completion_tokens", "max_tokens"):
        if payload.get(name) is not None:
            config["maxOutputTokens"] = payload[name]
            break
    stop = payload.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    config.update(_response_format(payload.get("response_format")))
    return config


def _response_format(value: object) -> dict:
    kind = value.get("type") if isinstance(value, dict) else None
    if value is None or kind == "text":
        return {}
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidRequest(
                "'response_format.json_schema.schema' must be an object.",
                param="response_format.json_schema.schema",
            )
        return {"responseMimeType": "application/json", "responseJsonSchema": schema}
    raise InvalidRequest(
        "'response_format.type' must be text, json_object or json_schema.", param="response_format"
    )


def _declarations(tools: list) -> list[dict]:
    declarations = []
    for index, tool in enumerate(tools):
        tool = tool if isinstance(tool, dict) else {}
        function = tool.get("function")
        if tool.get("type") != "function" or not isinstance(function, dict) or not isinstance(
            function.get("name"), str
        ):
            raise InvalidRequest(
                "Gemini providers take only tools of type 'function' with a 'function.name'.",
                param=f"tools[{index}]",
            )
        declaration = {"name": function["name"]}
        if function.get("description"):
            declaration["description"] = function["description"]
        if function.get("parameters"):
            declaration["parametersJsonSchema"] = function["parameters"]
        declarations.append(declaration)
    return declarations


def _tool_choice(choice: object) -> dict:
    if isinstance(choice, str) and choice in _TOOL_CHOICE_MODES:
        return {"mode": _TOOL_CHOICE_MODES[choice]}
    function = choice.get("function") if isinstance(choice, dict) else None
    if isinstance(function, dict) and isinstance(function.get("name"), str):
        return {"mode": "ANY", "allowedFunctionNames": [function["name"]]}
    raise InvalidRequest(
        "'tool_choice' must be auto, none, required or {\"type\": \"function\", \"function\": "
        "{\"name\": ...}}.",
        param="tool_choice",
    )


def _contents(messages: object) -> tuple[str, list[dict]]:
    """Return (system instruction, contents); tool results become user turns."""
    if not isinstance(messages, list):
        raise InvalidRequest("'messages' must be a list.", param="messages")
    system: list[str] = []
    contents: list[dict] = []
    names: dict[str, str] = {}  # tool call id -> function name, from earlier assistant turns
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("system", "developer"):
            if text := _system_text(message.get("content")):
                system.append(text)
        elif role == "user":
            _append(contents, "user", _parts(message.get("content")))
        elif role == "assistant":
            _append(contents, "model", _assistant_parts(message, names))
        elif role == "tool":
            _append(contents, "user", [_function_response(message, names)])
        else:
            raise InvalidRequest(
                f"Messages with role {role!r} are not supported for Gemini providers.",
                param="messages",
            )
    return "\n\n".join(system), contents


def _append(contents: list[dict], role: str, parts: list[dict]) -> None:
    # Consecutive turns of one role merge: the responses to parallel calls belong in one turn.
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts or [{"text": ""}]})


def _parts(content: object) -> list[dict]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}]
    if isinstance(content, list):
        return [_part(part) for part in content]
    raise InvalidRequest("Message content must be a string or a list of parts.", param="messages")


def _part(part: object) -> dict:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("text", "refusal"):
        return {"text": str(part.get(kind) or "")}
    if kind == "image_url":
        image = part.get("image_url")
        return _url_part(image.get("url") if isinstance(image, dict) else image)
    if kind == "input_audio":
        audio = part.get("input_audio") or {}
        mime = _AUDIO_TYPES.get(audio.get("format"))
        if not mime or not isinstance(audio.get("data"), str):
            raise InvalidRequest("'input_audio' needs base64 'data' and a format of wav or mp3.",
                                 param="messages")
        return {"inlineData": {"mimeType": mime, "data": audio["data"]}}
    if kind == "file":
        file = part.get("file")
        data = file.get("file_data") if isinstance(file, dict) else None
        if isinstance(data, str) and data.startswith("data:"):
            return _url_part(data)
        raise InvalidRequest(
            "Files must be sent inline (file_data as a data URL) to Gemini providers.",
            param="messages",
        )
    raise InvalidRequest(
        f"Content parts of type {kind!r} are not supported for Gemini providers.", param="messages"
    )


def _url_part(url: object) -> dict:
    """A data URL goes inline; Gemini fetches public http(s) URLs itself as fileData."""
    if isinstance(url, str) and url.startswith("data:"):
        header, comma, data = url[len("data:"):].partition(",")
        mime, *params = header.split(";")
        if comma and mime and "base64" in params:
            return {"inlineData": {"mimeType": mime, "data": data}}
        raise InvalidRequest(
            "Data URLs must look like data:<media type>;base64,<data>.", param="messages"
        )
    if isinstance(url, str) and url.startswith(("https://", "http://")):
        file_data = {"fileUri": url}
        mime, _ = mimetypes.guess_type(urlsplit(url).path)
        if mime:  # optional for Gemini, which sniffs what it fetched
            file_data["mimeType"] = mime
        return {"fileData": file_data}
    raise InvalidRequest("Image URLs must be http(s) or base64 data URLs.", param="messages")


def _assistant_parts(message: dict, names: dict[str, str]) -> list[dict]:
    parts = [part for part in _parts(message.get("content")) if part != {"text": ""}]
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequest("Each tool call needs a 'function.name'.", param="messages")
        part = {"functionCall": {"name": function["name"], "args": _arguments(function)}}
        google = (call.get("extra_content") or {}).get("google") or {}
        if google.get("thought_signature"):
            part["thoughtSignature"] = google["thought_signature"]
        parts.append(part)
        names[str(call.get("id"))] = function["name"]
    return parts


def _arguments(function: dict) -> dict:
    raw = function.get("arguments") or "{}"
    try:
        args = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        args = None
    if not isinstance(args, dict):
        raise InvalidRequest(
            f"The arguments of tool call '{function['name']}' must be a JSON object.",
            param="messages",
        )
    return args


def _function_response(message: dict, names: dict[str, str]) -> dict:
    name = names.get(str(message.get("tool_call_id")))
    if name is None:
        raise InvalidRequest(
            f"Tool message for unknown tool_call_id {message.get('tool_call_id')!r}: Gemini needs "
            "the function name, taken from the earlier assistant tool call with that id.",
            param="messages",
        )
    text = _system_text(message.get("content"))
    # Gemini wants an object: a JSON object result goes as is, anything else under "output",
    # the key its docs name for a function's output.
    try:
        result = json.loads(text)
    except ValueError:
        result = None
    response = result if isinstance(result, dict) else {"output": text}
    return {"functionResponse": {"name": name, "response": response}}


def _system_text(content: object) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" for part in content
    ):
        return "".join(str(part.get("text", "")) for part in content)
    raise InvalidRequest("System and tool messages may only hold text.", param="messages")


def _embedding_texts(value: object) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise InvalidRequest(
            "Gemini providers embed text only: 'input' must be a string or a list of strings.",
            param="input",
        )
    return texts


# --- response translation -------------------------------------------------------------------


@dataclass
class _CallIds:
    """Tool call ids for one response: Gemini has none, OpenAI clients need unique ones."""

    response_id: str
    count: int = 0

    def next(self) -> str:
        self.count += 1
        return f"call_{self.response_id}_{self.count}" if self.response_id else f"call_{self.count}"


def _choice(candidate: object, position: int, ids: _CallIds) -> dict:
    candidate = candidate if isinstance(candidate, dict) else {}
    text, calls = _candidate_parts(candidate, ids)
    message = {"role": "assistant", "content": text if text or not calls else None,
               "refusal": None}
    if calls:
        message["tool_calls"] = calls
    return {
        "index": candidate.get("index", position),
        "message": message,
        "finish_reason": _finish_reason(candidate.get("finishReason"), tools=bool(calls)),
        "logprobs": None,
    }


def _candidate_parts(candidate: dict, ids: _CallIds) -> tuple[str, list[dict]]:
    """(text, OpenAI tool calls) of a candidate; thought summaries are not the answer."""
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    texts, calls = [], []
    for part in parts if isinstance(parts, list) else ():
        if not isinstance(part, dict) or part.get("thought"):
            continue
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
        if isinstance(part.get("functionCall"), dict):
            calls.append(_tool_call(part, ids.next()))
    return "".join(texts), calls


def _tool_call(part: dict, call_id: str) -> dict:
    function_call = part["functionCall"]
    call = {
        "id": call_id,
        "type": "function",
        "function": {
            "name": str(function_call.get("name") or ""),
            "arguments": json.dumps(function_call.get("args") or {}),
        },
    }
    if part.get("thoughtSignature"):
        call["extra_content"] = {"google": {"thought_signature": part["thoughtSignature"]}}
    return call


def _finish_reason(reason: object, *, tools: bool) -> str | None:
    if reason is None:
        return None
    if tools and reason == "STOP":  # Gemini says STOP after a function call
        return "tool_calls"
    return _FINISH_REASONS.get(str(reason), "stop")


def _usage(data: object) -> Usage | None:
    """promptTokenCount already includes the cached part; thinking is billed as output."""
    if not isinstance(data, dict) or "promptTokenCount" not in data:
        return None
    return Usage(
        prompt_tokens=_prompt_count(data),
        completion_tokens=_completion_count(data),
        cached_tokens=int(data.get("cachedContentTokenCount") or 0),
    )


def _prompt_count(data: dict) -> int:
    return int(data.get("promptTokenCount") or 0) + int(data.get("toolUsePromptTokenCount") or 0)


def _completion_count(data: dict) -> int:
    return int(data.get("candidatesTokenCount") or 0) + int(data.get("thoughtsTokenCount") or 0)


def _usage_so_far(data: object) -> dict:
    """An event's running counts as `usage_so_far`: a side its usageMetadata lacks is left out
    (Gemini may send only `promptTokenCount` before the first candidate tokens)."""
    if not isinstance(data, dict):
        return {}
    prompt = _prompt_count(data) if "promptTokenCount" in data else None
    completion = (
        _completion_count(data)
        if "candidatesTokenCount" in data or "thoughtsTokenCount" in data else None
    )
    cached = int(data.get("cachedContentTokenCount") or 0) if prompt is not None else 0
    return usage_so_far(prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached)


@dataclass
class _Stream:
    """What a stream has told so far; each event is a whole GenerateContentResponse."""

    model: str
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    usage: Usage | None = None
    finished: bool = False
    ids: _CallIds | None = None
    started: set = field(default_factory=set)
    tool_calls: dict = field(default_factory=dict)  # choice index -> calls streamed so far

    def feed(self, data: dict) -> list[dict]:
        self.id = str(data.get("responseId") or self.id)
        self.model = str(data.get("modelVersion") or self.model)
        self.ids = self.ids or _CallIds(self.id)
        # Every event repeats the usage so far; the last one is the total.
        self.usage = _usage(data.get("usageMetadata")) or self.usage
        chunks = []
        for position, candidate in enumerate(data.get("candidates") or ()):
            if isinstance(candidate, dict):
                chunks.extend(self._candidate(candidate, candidate.get("index", position)))
        if partial := _usage_so_far(data.get("usageMetadata")):
            if not chunks:
                chunks.append({**self._envelope(), "choices": []})
            chunks[-1][USAGE_SO_FAR] = partial
        return chunks

    def _candidate(self, candidate: dict, index: int) -> list[dict]:
        chunks = []
        if index not in self.started:
            self.started.add(index)
            chunks.append(self.chunk(index, {"role": "assistant", "content": ""}))
        text, calls = _candidate_parts(candidate, self.ids)
        if text:
            chunks.append(self.chunk(index, {"content": text}))
        streamed = self.tool_calls.setdefault(index, [])
        for call in calls:
            # Gemini sends each call whole, so one delta carries its id, name and arguments.
            chunks.append(self.chunk(index, {"tool_calls": [{"index": len(streamed), **call}]}))
            streamed.append(call)
        if candidate.get("finishReason"):
            self.finished = True
            reason = _finish_reason(candidate["finishReason"], tools=bool(streamed))
            chunks.append(self.chunk(index, {}, finish_reason=reason))
        return chunks

    def chunk(self, index: int, delta: dict, *, finish_reason: str | None = None) -> dict:
        choice = {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return {**self._envelope(), "choices": [choice]}

    def usage_chunk(self) -> dict:
        return {**self._envelope(), "choices": [], "usage": self.usage.as_openai()}

    def _envelope(self) -> dict:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
        }


# --- errors and embeddings ------------------------------------------------------------------


def _error_object(data: object) -> dict | None:
    # A stream opened without alt=sse answers errors as a one-element JSON array.
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else None


def _error_details(error: dict) -> list[dict]:
    details = error.get("details")
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def _error_reasons(error: dict) -> set[str]:
    return {str(d.get("reason")) for d in _error_details(error) if d.get("reason")}


def _retry_delay(response: UpstreamResponse) -> float | None:
    """Seconds from a google.rpc.RetryInfo detail: `{"retryDelay": "37s"}`."""
    try:
        error = _error_object(response.json())
    except ValueError:
        return None
    for detail in _error_details(error) if error else ():
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            match = _RETRY_DELAY.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


def _base64_floats(values: list[float]) -> str:
    """Little-endian float32, base64-encoded: what OpenAI sends for encoding_format=base64."""
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
