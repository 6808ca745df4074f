"""Google's Gemini dialect: generateContent (plain and `alt=sse` streams), embedContent,
batchEmbedContents, Imagen's `predict`, TTS models' audio, the model list, and google.rpc errors.

Gemini's paths carry the model and the method (`/v1beta/models/{model}:generateContent`), and a
stream is asked for by the method rather than by the body, so its endpoints are handlers of their
own, registered in `app.PATTERN_ROUTES`; auth, validation and bodies are the dialect's, timing
and faults are `respond`'s, shared with every dialect.

References: https://ai.google.dev/api/generate-content, https://ai.google.dev/api/embeddings,
https://ai.google.dev/gemini-api/docs/troubleshooting (errors),
https://ai.google.dev/gemini-api/docs/thought-signatures, https://ai.google.dev/gemini-api/docs/imagen,
https://ai.google.dev/gemini-api/docs/speech-generation
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re

from providers.fake import respond
from providers.fake.content import (
    MAX_DIMENSIONS,
    ChatRequest,
    Completion,
    completion_build,
    embedding_vector,
    tokens_count,
)
from providers.fake.dialect import (
    Dialect,
    Frames,
    dumps,
    is_int,
    last_user_directive,
    stops_parse,
)
from providers.fake.directives import directive_build, directive_extract
from providers.fake.errors import ApiError
from providers.fake.exchange import Exchange
from providers.fake.media import SPEECH_RATE, image_png, speech_audio
from providers.fake.tools import tool_arguments, tool_choose

CONTEXT_WINDOW = 1_048_576
CHAT_MODELS = ("gemini-2.5-flash", "gemini-2.5-pro", "gemini-3-flash-preview")
EMBEDDING_MODELS = ("gemini-embedding-001",)
REQUEST_FIELDS = {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig",
                  "safetySettings", "cachedContent", "labels"}
CONFIG_FIELDS = {"stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema",
                 "responseModalities", "candidateCount", "maxOutputTokens", "temperature", "topP",
                 "topK", "seed", "presencePenalty", "frequencyPenalty", "responseLogprobs",
                 "logprobs", "thinkingConfig", "mediaResolution", "speechConfig"}
PART_FIELDS = {"text", "inlineData", "fileData", "functionCall", "functionResponse", "thought",
               "thoughtSignature", "executableCode", "codeExecutionResult", "videoMetadata"}
TOOL_FIELDS = {"functionDeclarations", "googleSearch", "codeExecution", "urlContext"}
DECLARATION_FIELDS = {"name", "description", "parameters", "parametersJsonSchema", "response",
                      "responseJsonSchema", "behavior"}
EMBED_FIELDS = {"model", "content", "taskType", "title", "outputDimensionality"}


# HTTP status: (google.rpc status, default message), as the Gemini API answers them.
STATUSES = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "Request had invalid authentication credentials."),
    403: ("PERMISSION_DENIED", "The caller does not have permission."),
    404: ("NOT_FOUND", "Requested entity was not found."),
    429: ("RESOURCE_EXHAUSTED", ("You exceeded your current quota, please check your plan and "
                                 "billing details.")),
    500: ("INTERNAL", ("An internal error has occurred. Please retry or report in "
                       "https://developers.generativeai.google/guide/troubleshooting")),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
}


def _camel(name: str) -> str:
    # Gemini's JSON takes proto field names too: system_instruction is systemInstruction.
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


def _known(body: object, fields: set[str], *, where: str) -> dict:
    """Gemini refuses a field it does not know, so a typo in the adapter cannot pass."""
    if not isinstance(body, dict):
        raise ApiError(400, f"Invalid value at '{where or 'request'}': expected an object.")
    unknown = [key for key in body if _camel(key) not in fields]
    if unknown:
        at = f" at '{where}'" if where else ""
        raise ApiError(400, f'Invalid JSON payload received. Unknown name "{unknown[0]}"{at}: '
                       "Cannot find field.")
    return {_camel(key): value for key, value in body.items()}


def _signature(name: str) -> str:
    return base64.b64encode(f"fake-thought:{name}".encode()).decode()


class GeminiDialect(Dialect):
    """Gemini's generateContent and embeddings, and its google.rpc error object."""

    def authenticate(
        self, *, headers: dict[str, str], api_key: str | None, query: dict | None = None
    ) -> None:
        key = headers.get("x-goog-api-key", "").strip() or (query or {}).get("key", "").strip()
        if not key:
            raise ApiError(403, "Method doesn't allow unregistered callers (callers without "
                           "established identity). Please use API Key or other form of API "
                           "consumer identity to call this API.")
        if api_key is not None and key != api_key:
            # Google answers a wrong key with 400 INVALID_ARGUMENT and this ErrorInfo reason.
            raise ApiError(400, "API key not valid. Please pass a valid API key.",
                           code="API_KEY_INVALID")

    def error(self, *, error: ApiError, request_id: str) -> tuple[dict, list[tuple[str, str]]]:
        status, message = STATUSES.get(
            error.status, ("INTERNAL" if error.status >= 500 else "INVALID_ARGUMENT", ""))
        details = []
        if error.code:
            details.append({"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                            "reason": error.code, "domain": "googleapis.com",
                            "metadata": {"service": "generativelanguage.googleapis.com"}})
        if error.retry_after is not None:  # Google says it in the body, not in a header
            details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo",
                            "retryDelay": f"{error.retry_after}s"})
        body = {"code": error.status, "message": error.message or message or
                f"Error {error.status}.", "status": status}
        return {"error": body | ({"details": details} if details else {})}, []

    def context_error(self, *, tokens: int) -> ApiError:
        return ApiError(400, f"The input token count ({CONTEXT_WINDOW + tokens}) exceeds the "
                        f"maximum number of tokens allowed ({CONTEXT_WINDOW}).")

    # --- generateContent ------------------------------------------------------------------------

    def parse(
        self, *, body: dict, header_directive: str, server_directive: str = "",
        model: str = "", stream: bool = False,
    ) -> ChatRequest:
        body = _known(body, REQUEST_FIELDS, where="")
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise ApiError(400, "* GenerateContentRequest.contents: contents is not specified")
        roles = [self.content_role(content, index=i) for i, content in enumerate(contents)]
        texts = [self.parts_text(content["parts"]) for content in contents]
        config = self.generation_config(body.get("generationConfig"))
        system = self.parts_text(self._system_parts(body.get("systemInstruction")))
        prompt, directive = last_user_directive(
            messages=[{"role": role} for role in roles], texts=texts, header=header_directive,
            server=server_directive)
        calls = [json.dumps(p) for c in contents for p in c["parts"] if "text" not in p]
        return ChatRequest(
            model=model, prompt=prompt + "".join(calls[-1:]), max_tokens=config.get(
                "maxOutputTokens"), stop=stops_parse(config.get("stopSequences")), stream=stream,
            prompt_tokens=tokens_count(text=system) + sum(3 + tokens_count(text=t)
                                                          for t in texts + calls),
            include_usage=True, directive=directive,
            tool_call=self._tool_call(body, directive.tool, contents, model=model),
            structured=self._structured(config),
        )

    @staticmethod
    def _structured(config: dict) -> dict | None:
        """JSON mode: an answer satisfying the schema, or some JSON object without one."""
        if config.get("responseMimeType") != "application/json":
            return None
        schema = config.get("responseJsonSchema") or config.get("responseSchema")
        return _lowercase_types(schema) if schema else {
            "type": "object", "properties": {"answer": {"type": "string"}}}

    @staticmethod
    def content_role(content: object, *, index: int) -> str:
        where = f"GenerateContentRequest.contents[{index}]"
        role = content.get("role", "user") if isinstance(content, dict) else None
        if role not in ("user", "model"):
            raise ApiError(400, f"* {where}.role: Please use a valid role: user, model.")
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            raise ApiError(400, f"* {where}.parts: contents.parts must not be empty.")
        for number, part in enumerate(parts):
            if not isinstance(part, dict):
                raise ApiError(400, f"* {where}.parts[{number}]: must be an object.")
            _known(part, PART_FIELDS, where=f"contents[{index}].parts[{number}]")
        return role

    @staticmethod
    def _system_parts(system: object) -> list:
        if system is None:
            return []
        parts = system.get("parts") if isinstance(system, dict) else None
        if not isinstance(parts, list):
            raise ApiError(400, "* GenerateContentRequest.system_instruction.parts: must be a "
                           "list of parts.")
        return parts

    @staticmethod
    def parts_text(parts: list) -> str:
        return "\n".join(p["text"] for p in parts if isinstance(p, dict)
                         and isinstance(p.get("text"), str) and not p.get("thought"))

    @staticmethod
    def generation_config(config: object) -> dict:
        config = _known(config or {}, CONFIG_FIELDS, where="generation_config")
        limit = config.get("maxOutputTokens")
        if limit is not None and (not is_int(limit) or limit < 1):
            raise ApiError(400, "* GenerateContentRequest.generation_config.max_output_tokens: "
                           "must be a positive integer.")
        if "responseSchema" in config and "responseJsonSchema" in config:
            raise ApiError(400, "response_schema and response_json_schema are mutually exclusive.")
        if "responseJsonSchema" in config and config.get("responseMimeType") != "application/json":
            raise ApiError(400, "response_mime_type must be application/json when "
                           "response_json_schema is set.")
        return config

    @staticmethod
    def _tool_call(
        body: dict, directed: str | None, contents: list[dict], *, model: str
    ) -> tuple[str, dict] | None:
        declared = {}
        for tool in body.get("tools") or ():
            tool = _known(tool, TOOL_FIELDS, where="tools")
            for function in tool.get("functionDeclarations") or ():
                function = _known(function, DECLARATION_FIELDS, where="function_declarations")
                schema = function.get("parametersJsonSchema") or function.get("parameters") or {}
                declared[function.get("name")] = _lowercase_types(schema)
        config = (_known(body.get("toolConfig") or {}, {"functionCallingConfig"},
                         where="tool_config").get("functionCallingConfig") or {})
        mode, allowed = config.get("mode", "AUTO"), config.get("allowedFunctionNames") or []
        if allowed and mode not in ("ANY", "VALIDATED"):
            raise ApiError(400, "allowed_function_names may only be set when mode is ANY.")
        forced = (allowed[0] if allowed else next(iter(declared), None)) if mode == "ANY" else None
        _signatures_check(contents, model=model)
        last = contents[-1]["parts"]
        last_role = "tool" if any("functionResponse" in p for p in last) else "user"
        name = tool_choose(tools={} if mode == "NONE" else declared, forced=forced,
                           directed=directed, last_role=last_role)
        return (name, tool_arguments(declared[name], name=name)) if name else None

    # --- answers --------------------------------------------------------------------------------

    @staticmethod
    def _usage(completion: Completion, *, done: int) -> dict:
        prompt = completion.request.prompt_tokens
        return {"promptTokenCount": prompt, "candidatesTokenCount": done,
                "totalTokenCount": prompt + done,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]}

    def _response(
        self, completion: Completion, parts: list[dict], *, finish: bool, done: int
    ) -> dict:
        candidate = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if finish:
            length = completion.finish == "length" and not completion.request.tool_call
            candidate["finishReason"] = "MAX_TOKENS" if length else "STOP"
        body = {"candidates": [candidate]}
        if not completion.request.directive.no_usage:
            body["usageMetadata"] = self._usage(completion, done=done)
        return body | {"modelVersion": completion.request.model, "responseId": completion.id}

    @staticmethod
    def _call_part(completion: Completion) -> dict:
        name, arguments = completion.request.tool_call
        return {"functionCall": {"name": name, "args": arguments},
                "thoughtSignature": _signature(name)}

    def render(self, *, completion: Completion) -> dict:
        parts = ([self._call_part(completion)] if completion.request.tool_call
                 else [{"text": completion.text}])
        return self._response(completion, parts, finish=True, done=completion.completion_tokens)

    @staticmethod
    def _event(payload: dict) -> bytes:
        return b"data: " + dumps(payload) + b"\r\n\r\n"  # Google ends SSE lines with CRLF

    def frames(self, *, completion: Completion) -> Frames:
        if completion.request.tool_call:
            content = [self._event(self._response(
                completion, [self._call_part(completion)], finish=False,
                done=completion.completion_tokens))]
        else:
            content, text = [], ""
            for piece in completion.pieces:
                text += piece
                content.append(self._event(self._response(
                    completion, [{"text": piece}], finish=False, done=tokens_count(text=text))))
        last = self._response(completion, [{"text": ""}], finish=True,
                              done=completion.completion_tokens)
        return Frames(early=[], lead=[], content=content, tail=[self._event(last)],
                      bad=b'data: {"candidates": [{"content": {"parts": [\r\n\r\n')

    def models(self) -> dict:
        return {"models": [
            {"name": f"models/{m}", "displayName": m, "inputTokenLimit": CONTEXT_WINDOW,
             "outputTokenLimit": 65_536,
             "supportedGenerationMethods": ["embedContent"] if m in EMBEDDING_MODELS
             else ["generateContent", "countTokens"]}
            for m in CHAT_MODELS + EMBEDDING_MODELS]}

    # --- embeddings -----------------------------------------------------------------------------

    @staticmethod
    def embed_request(request: object, *, model: str, where: str) -> tuple[str, int]:
        """(text, dimensions) of one EmbedContentRequest."""
        request = _known(request if isinstance(request, dict) else {}, EMBED_FIELDS, where=where)
        if request.get("model", f"models/{model}") != f"models/{model}":
            raise ApiError(400, f"* {where}.model: the model of each request must be the "
                           f"model of the batch (models/{model}).")
        content = request.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list) or not parts:
            raise ApiError(400, f"* {where}.content: content is not specified")
        dimensions = request.get("outputDimensionality", MAX_DIMENSIONS)
        if not is_int(dimensions) or not 1 <= dimensions <= MAX_DIMENSIONS:
            raise ApiError(400, f"* {where}.output_dimensionality: must be from 1 to "
                           f"{MAX_DIMENSIONS}.")
        return GeminiDialect.parts_text(parts), dimensions


def _lowercase_types(schema: object) -> object:
    """`parameters` spells types STRING, OBJECT...; the shared argument maker reads JSON Schema."""
    if isinstance(schema, list):
        return [_lowercase_types(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    return {key: value.lower() if key == "type" and isinstance(value, str)
            else _lowercase_types(value) for key, value in schema.items()}


def _signatures_check(contents: list[dict], *, model: str) -> None:
    """Gemini 3 refuses a function call sent back without the thoughtSignature it came with."""
    if not model.startswith("gemini-3"):
        return
    for index, content in enumerate(contents):
        for part in content["parts"]:
            if "functionCall" in part and not part.get("thoughtSignature"):
                name = (part["functionCall"] or {}).get("name")
                raise ApiError(400, f"Function call `{name}` in the {index + 1}. content block is "
                               "missing a `thought_signature`.")


# --- endpoints ------------------------------------------------------------------------------


def _authenticate(*, ex: Exchange, settings: respond.Settings, dialect: GeminiDialect) -> None:
    dialect.authenticate(headers=ex.headers, api_key=settings.api_key, query=ex.query)


async def _generate(
    *, ex: Exchange, settings: respond.Settings, dialect: GeminiDialect, stream: bool = False
) -> None:
    _authenticate(ex=ex, settings=settings, dialect=dialect)
    if stream and ex.query.get("alt") != "sse":
        raise ApiError(400, "The fake streams Gemini answers only as server-sent events: add "
                       "?alt=sse to streamGenerateContent.")
    if "-tts" in ex.params["model"]:
        await _speak(ex=ex, settings=settings, dialect=dialect, body=respond.json_body(ex=ex))
        return
    request = dialect.parse(body=respond.json_body(ex=ex),
                            header_directive=ex.headers.get("x-fake-directive", ""),
                            server_directive=settings.directive, model=ex.params["model"],
                            stream=stream)
    if not await respond.before_response(ex=ex, settings=settings, dialect=dialect,
                                         directive=request.directive,
                                         tokens=request.prompt_tokens):
        return
    completion = completion_build(request=request, id_prefix="")
    respond.billing_due(ex=ex, prompt_tokens=request.prompt_tokens, completion=completion)
    if stream:
        await respond.stream_send(ex=ex, settings=settings, directive=request.directive,
                                  frames=dialect.frames(completion=completion))
    else:
        await respond.body_send(ex=ex, dialect=dialect, directive=request.directive,
                                payload=dialect.render(completion=completion))


async def _stream_generate(
    *, ex: Exchange, settings: respond.Settings, dialect: GeminiDialect
) -> None:
    await _generate(ex=ex, settings=settings, dialect=dialect, stream=True)


async def _embed(
    *, ex: Exchange, settings: respond.Settings, dialect: GeminiDialect, batch: bool = False
) -> None:
    _authenticate(ex=ex, settings=settings, dialect=dialect)
    body, model = respond.json_body(ex=ex), ex.params["model"]
    if batch:
        requests = _known(body, {"requests"}, where="").get("requests")
        if not isinstance(requests, list) or not requests:
            raise ApiError(400, "* BatchEmbedContentsRequest.requests: requests is not specified")
        items = [GeminiDialect.embed_request(r, model=model, where=f"requests[{i}]")
                 for i, r in enumerate(requests)]
    else:
        items = [GeminiDialect.embed_request(body, model=model, where="EmbedContentRequest")]
    directive = directive_build(header=ex.headers.get("x-fake-directive", ""),
                                message=directive_extract(text=items[-1][0])[1],
                                server=settings.directive)
    tokens = sum(tokens_count(text=text) for text, _ in items)
    if not await respond.before_response(ex=ex, settings=settings, dialect=dialect,
                                         directive=directive, tokens=tokens):
        return
    respond.billing_due(ex=ex, prompt_tokens=tokens)
    vectors = [{"values": embedding_vector(model=model, item=text, dimensions=dimensions)}
               for text, dimensions in items]
    payload = {"embeddings": vectors} if batch else {"embedding": vectors[0]}
    await respond.body_send(ex=ex, dialect=dialect, payload=payload, directive=directive)


async def _count_tokens(
    *, ex: Exchange, settings: respond.Settings, dialect: GeminiDialect
) -> None:
    """`models/{model}:countTokens` with a `generateContentRequest` (or bare `contents`): the prompt
    tokens `generateContent` would report for it, as `totalTokens`."""
    _authenticate(ex=ex, settings=settings, dialect=dialect)
    body = respond.json_body(ex=ex)
    inner = body.get("generateContentRequest")
    if isinstance(inner, dict):
        body = {key: value for key, value in inner.items() if key != "model"}
    request = dialect.parse(body=body, header_directive="", model=ex.params["model"])
    await ex.respond(200, dumps({"totalTokens": request.prompt_tokens}), [])


async def _batch_embed(
    *, ex: Exchange, settings: respond.Settings, dialect: GeminiDialect
) -> None:
    await _embed(ex=ex, settings=settings, dialect=dialect, batch=True)


async def _models(
    *, ex: Exchange, settings: respond.Settings, dialect: GeminiDialect
) -> None:
    _authenticate(ex=ex, settings=settings, dialect=dialect)
    await ex.respond(200, dumps(dialect.models()), [])


GEMINI = GeminiDialect()
# Imagen through the Gemini API (https://ai.google.dev/gemini-api/docs/imagen): `:predict` with
# `instances` (one prompt) and `parameters`; each image comes back as `bytesBase64Encoded`.
IMAGEN_PARAMETERS = {"sampleCount", "aspectRatio", "personGeneration", "imageSize", "outputOptions",
                     "includeRaiReason", "negativePrompt", "seed", "addWatermark", "enhancePrompt"}
IMAGEN_ASPECT_RATIOS = {"1:1", "3:4", "4:3", "9:16", "16:9"}


async def _predict(*, ex: Exchange, settings: respond.Settings, dialect: GeminiDialect) -> None:
    _authenticate(ex=ex, settings=settings, dialect=dialect)
    model = ex.params["model"]
    if not model.startswith("imagen"):
        raise ApiError(404, f"models/{model} is not found for API version {ex.params['version']}, "
                       "or is not supported for predict. Call ListModels to see the list of available "
                       "models and their supported methods.")
    body = _known(respond.json_body(ex=ex), {"instances", "parameters"}, where="")
    instances = body.get("instances")
    if not isinstance(instances, list) or len(instances) != 1:
        raise ApiError(400, "Invalid value at 'instances': exactly one instance is expected.")
    prompt = _known(instances[0], {"prompt"}, where="instances[0]").get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ApiError(400, "Invalid value at 'instances[0].prompt': the prompt is empty.")
    parameters = _known(body.get("parameters") or {}, IMAGEN_PARAMETERS, where="parameters")
    count = parameters.get("sampleCount", 4)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 4:
        raise ApiError(400, "Invalid value at 'parameters.sampleCount': must be between 1 and 4.")
    ratio = parameters.get("aspectRatio", "1:1")
    if ratio not in IMAGEN_ASPECT_RATIOS:
        raise ApiError(400, f"Invalid value at 'parameters.aspectRatio' ({ratio!r}): supported are "
                       f"{', '.join(sorted(IMAGEN_ASPECT_RATIOS))}.")
    directive = directive_build(header=ex.headers.get("x-fake-directive", ""),
                                message=directive_extract(text=prompt)[1], server=settings.directive)
    if not await respond.before_response(ex=ex, settings=settings, dialect=dialect, directive=directive,
                                         tokens=tokens_count(text=prompt)):
        return
    digest = hashlib.sha256(f"{model}|{ratio}|{prompt}".encode()).hexdigest()[:16]
    predictions = [{"mimeType": "image/png", "bytesBase64Encoded": base64.b64encode(image_png(f"{digest}-{i}")).decode()}
                   for i in range(count)]
    await respond.body_send(ex=ex, dialect=dialect, payload={"predictions": predictions}, directive=directive)


# Gemini's TTS models (https://ai.google.dev/gemini-api/docs/speech-generation): generateContent
# with `responseModalities: ["AUDIO"]`, answered with one `inlineData` part of 24 kHz 16-bit PCM.
TTS_VOICES = {
    "Zephyr", "Puck", "Charon", "Kore", "Fenrir", "Leda", "Orus", "Aoede", "Callirrhoe", "Autonoe",
    "Enceladus", "Iapetus", "Umbriel", "Algieba", "Despina", "Erinome", "Algenib", "Rasalgethi",
    "Laomedeia", "Achernar", "Alnilam", "Schedar", "Gacrux", "Pulcherrima", "Achird", "Zubenelgenubi",
    "Vindemiatrix", "Sadachbia", "Sadaltager", "Sulafat",
}
AUDIO_TOKENS_PER_SECOND = 32  # Gemini's count for audio (https://ai.google.dev/gemini-api/docs/audio)


async def _speak(*, ex: Exchange, settings: respond.Settings, dialect: GeminiDialect, body: dict) -> None:
    body = _known(body, REQUEST_FIELDS, where="")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise ApiError(400, "* GenerateContentRequest.contents: contents is not specified")
    for index, content in enumerate(contents):
        dialect.content_role(content, index=index)
    text = "\n".join(dialect.parts_text(content["parts"]) for content in contents)
    config = dialect.generation_config(body.get("generationConfig"))
    if config.get("responseModalities") != ["AUDIO"]:
        raise ApiError(400, "The requested combination of response modalities (TEXT) is not supported by the "
                       f"model. models/{ex.params['model']} accepts the following combination of response "
                       "modalities:\n* AUDIO\n")
    speech = _known(config.get("speechConfig") or {}, {"voiceConfig", "multiSpeakerVoiceConfig", "languageCode"},
                    where="generation_config.speech_config")
    voice = ((speech.get("voiceConfig") or {}).get("prebuiltVoiceConfig") or {}).get("voiceName", "Kore")
    if voice not in TTS_VOICES:
        raise ApiError(400, f"Voice name {voice} is not supported. Allowed voice names are: "
                       f"{', '.join(sorted(v.lower() for v in TTS_VOICES))}")
    if not text.strip():
        raise ApiError(400, "* GenerateContentRequest.contents[0].parts[0].data: required oneof field 'data' "
                       "must have one initialized field")
    directive = directive_build(header=ex.headers.get("x-fake-directive", ""),
                                message=directive_extract(text=text)[1], server=settings.directive)
    prompt_tokens = tokens_count(text=text)
    if not await respond.before_response(ex=ex, settings=settings, dialect=dialect, directive=directive,
                                         tokens=prompt_tokens):
        return
    pcm = speech_audio(text=text, answer_format="pcm")
    audio_tokens = math.ceil(len(pcm) / 2 / SPEECH_RATE * AUDIO_TOKENS_PER_SECOND)
    payload = {
        "candidates": [{"content": {"role": "model", "parts": [{"inlineData": {
            "mimeType": f"audio/L16;codec=pcm;rate={SPEECH_RATE}", "data": base64.b64encode(pcm).decode()}}]},
            "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": prompt_tokens, "candidatesTokenCount": audio_tokens,
                          "totalTokenCount": prompt_tokens + audio_tokens,
                          "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt_tokens}],
                          "candidatesTokensDetails": [{"modality": "AUDIO", "tokenCount": audio_tokens}]},
        "modelVersion": ex.params["model"],
    }
    await respond.body_send(ex=ex, dialect=dialect, payload=payload, directive=directive)


_MODEL_PATH = r"/(?P<version>v1beta|v1)/models/(?P<model>[^/:]+):"
# (method, path pattern, handler) for app.PATTERN_ROUTES, all spoken in GEMINI.
GEMINI_ROUTES = [
    ("POST", re.compile(_MODEL_PATH + "generateContent"), _generate),
    ("POST", re.compile(_MODEL_PATH + "streamGenerateContent"), _stream_generate),
    ("POST", re.compile(_MODEL_PATH + "embedContent"), _embed),
    ("POST", re.compile(_MODEL_PATH + "batchEmbedContents"), _batch_embed),
    ("POST", re.compile(_MODEL_PATH + "countTokens"), _count_tokens),
    ("POST", re.compile(_MODEL_PATH + "predict"), _predict),
    ("GET", re.compile(r"/v1beta/models"), _models),  # /v1/models is OpenAI's
]
