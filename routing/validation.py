"""Validation of request bodies against OpenAI's documented schema.

Each check raises `InvalidRequest` naming the offending parameter, in OpenAI's error shape, so a
bad body gets a clear 400 and never reaches a provider (or becomes a 500). Validators return the
payload to forward upstream: the body without the fields the gateway keeps for itself.
Reference: https://platform.openai.com/docs/api-reference/chat/create
"""

from __future__ import annotations

import json
import math
import re

from kernel.errors import InvalidRequest, PayloadTooLarge

MESSAGE_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
CONTENT_PART_TYPES = {"text", "image_url", "input_audio", "file", "refusal"}
MAX_STOP_SEQUENCES = 4
MAX_TOKENS_LIMIT = 1_000_000
MAX_EMBEDDING_INPUTS = 2048
# A function's (and a json_schema's) name, as OpenAI checks it: the characters, then the length.
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9_-]+$")
MAX_NAME_LENGTH = 64
TOOL_CHOICES = ("none", "auto", "required")
RESPONSE_FORMATS = ("text", "json_object", "json_schema")

# Fields the gateway reads and does not forward.
GATEWAY_FIELDS = {"metadata", "routing", "cache"}  # `cache`: see caching.keys
ROUTING_KEYS = {"strategy", "prefer", "exclude"}

CHAT_FIELDS = {
    "model", "messages", "audio", "frequency_penalty", "function_call", "functions", "logit_bias",
    "logprobs", "max_completion_tokens", "max_tokens", "modalities", "n", "parallel_tool_calls",
    "prediction", "presence_penalty", "prompt_cache_key", "reasoning_effort", "response_format",
    "safety_identifier", "seed", "service_tier", "stop", "store", "stream", "stream_options",
    "temperature", "tool_choice", "tools", "top_logprobs", "top_p", "user", "verbosity",
    "web_search_options",
} | GATEWAY_FIELDS

# Legacy text completions (https://platform.openai.com/docs/api-reference/completions/create).
COMPLETION_FIELDS = {
    "model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs", "max_tokens",
    "n", "presence_penalty", "seed", "stop", "stream", "stream_options", "suffix", "temperature",
    "top_p", "user",
} | GATEWAY_FIELDS
COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions

EMBEDDING_FIELDS = {"model", "input", "encoding_format", "dimensions", "user"} | GATEWAY_FIELDS


def json_body(raw: bytes, *, max_bytes: int) -> dict:
    """Decode a request body into a JSON object, or raise a clear 4xx."""
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"Request body is larger than the limit of {max_bytes} bytes.")
    if not raw.strip():
        raise InvalidRequest("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest("The request body is not valid UTF-8.", code="invalid_json") from exc
    try:
        body = json.loads(text)
    except RecursionError as exc:
        raise InvalidRequest("The request body nests too deeply.", code="invalid_json") from exc
    except ValueError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return body


def chat_request_validate(body: dict) -> dict:
    _reject_unknown(body, CHAT_FIELDS)
    _model(body)
    _messages(body.get("messages"))
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _number(body, "presence_penalty", -2, 2)
    _number(body, "frequency_penalty", -2, 2)
    _integer(body, "n", 1, 128)
    _integer(body, "max_tokens", 1, MAX_TOKENS_LIMIT)
    _integer(body, "max_completion_tokens", 1, MAX_TOKENS_LIMIT)
    _seed(body)
    _integer(body, "top_logprobs", 0, 20)
    _boolean(body, "stream")
    _boolean(body, "logprobs")
    if body.get("parallel_tool_calls") is not None and not isinstance(body["parallel_tool_calls"], bool):
        raise _invalid_type("parallel_tool_calls", "a boolean", body["parallel_tool_calls"])
    _stop(body.get("stop"))
    _stream_options(body)
    _string(body, "user", max_length=512)
    names = _tools(body.get("tools"))
    _tool_choice(body.get("tool_choice"), names)
    _response_format(body.get("response_format"))
    _logit_bias(body.get("logit_bias"))
    _metadata(body)
    _routing(body)
    return {key: value for key, value in body.items() if key not in GATEWAY_FIELDS}


def completions_request_validate(body: dict) -> dict:
    """A legacy completions body: its own fields checked here, the rest by `chat_request_validate`
    once it is a chat request (`routing.completions_format.completion_chat_payload`). What only a
    completion model honours (`suffix`, `logprobs`, `best_of` past `n`, several prompts) is checked
    for its type here, and refused for a route that serves the model as chat (`routing.pipeline`)."""
    _reject_unknown(body, COMPLETION_FIELDS)
    _model(body)
    prompt = body.get("prompt")
    if prompt is None:
        raise _missing("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(item, str) for item in prompt):
        if len(prompt) > MAX_EMBEDDING_INPUTS:
            raise InvalidRequest(f"'prompt' has more than {MAX_EMBEDDING_INPUTS} items.", param="prompt",
                                 code="invalid_value")
    elif isinstance(prompt, list):
        raise InvalidRequest(
            "The gateway takes 'prompt' as a string or an array of strings; token ids are not accepted.",
            param="prompt", code="unsupported_value",
        )
    elif not isinstance(prompt, str):
        raise _invalid_type("prompt", "a string or an array of strings", prompt)
    if body.get("suffix") is not None and not isinstance(body["suffix"], str):
        raise _invalid_type("suffix", "a string", body["suffix"])
    _boolean(body, "echo")
    _integer(body, "logprobs", 0, 5)
    _integer(body, "best_of", 1, 20)
    _integer(body, "n", 1, 128)
    if body.get("best_of") is not None and body["best_of"] < (body.get("n") or 1):
        raise InvalidRequest("'best_of' must be at least 'n'.", param="best_of", code="invalid_value")
    if (body.get("best_of") or 1) > 1 and body.get("stream") is True:
        raise InvalidRequest("A completion with 'best_of' above 1 cannot be streamed.", param="best_of",
                             code="invalid_value")
    _integer(body, "max_tokens", 1, MAX_TOKENS_LIMIT)
    return body


def embeddings_request_validate(body: dict) -> dict:
    _reject_unknown(body, EMBEDDING_FIELDS)
    _model(body)
    _embedding_input(body.get("input"))
    if body.get("encoding_format") not in (None, "float", "base64"):
        raise InvalidRequest("'encoding_format' must be 'float' or 'base64'.", param="encoding_format")
    _integer(body, "dimensions", 1, 65536)
    _string(body, "user", max_length=512)
    _metadata(body)
    _routing(body)
    return {key: value for key, value in body.items() if key not in GATEWAY_FIELDS}


def _reject_unknown(body: dict, allowed: set[str]) -> None:
    for key in body:
        if key not in allowed:
            raise InvalidRequest(
                f"Unrecognized request argument supplied: {key}", param=key, code="unknown_parameter"
            )


def _model(body: dict) -> None:
    model = body.get("model")
    if "model" not in body:
        raise InvalidRequest("Missing required parameter: 'model'.", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not model.strip() or len(model) > 200:
        raise InvalidRequest("'model' must be a non-empty string of at most 200 characters.", param="model")


def _messages(messages: object) -> None:
    if messages is None:
        raise InvalidRequest(
            "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter"
        )
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
    for index, message in enumerate(messages):
        _message(message, f"messages[{index}]")


def _message(message: object, where: str) -> None:
    if not isinstance(message, dict):
        raise InvalidRequest(f"'{where}' must be an object.", param=where)
    role = message.get("role")
    if not isinstance(role, str) or role not in MESSAGE_ROLES:  # a list or object is unhashable
        raise InvalidRequest(
            f"'{where}.role' must be one of {', '.join(sorted(MESSAGE_ROLES))}.", param=f"{where}.role"
        )
    content = message.get("content")
    if content is None:
        if role == "assistant" and (message.get("tool_calls") or message.get("function_call")):
            return
        raise InvalidRequest(f"'{where}.content' is required.", param=f"{where}.content")
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise InvalidRequest(f"'{where}.content' must be a string or an array of parts.", param=f"{where}.content")
    for index, part in enumerate(content):
        _content_part(part, f"{where}.content[{index}]")


def _content_part(part: object, where: str) -> None:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str) or part["type"] not in CONTENT_PART_TYPES:
        raise InvalidRequest(
            f"'{where}' must be an object whose 'type' is one of {', '.join(sorted(CONTENT_PART_TYPES))}.",
            param=where,
        )
    if part["type"] == "text" and not isinstance(part.get("text"), str):
        raise InvalidRequest(f"'{where}.text' must be a string.", param=f"{where}.text")
    if part["type"] == "image_url":
        image = part.get("image_url")
        if not isinstance(image, dict) or not isinstance(image.get("url"), str):
            raise InvalidRequest(f"'{where}.image_url.url' must be a string.", param=f"{where}.image_url")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(body: dict, name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if not _is_number(value) or not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be a number between {low} and {high}.", param=name)


def _integer(body: dict, name: str, low: int, high: int) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, float) and value.is_integer():
        value = body[name] = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be an integer between {low} and {high}.", param=name)


def _boolean(body: dict, name: str) -> None:
    if body.get(name) is not None and not isinstance(body[name], bool):
        raise InvalidRequest(f"'{name}' must be a boolean.", param=name)


def _string(body: dict, name: str, *, max_length: int) -> None:
    value = body.get(name)
    if value is not None and (not isinstance(value, str) or len(value) > max_length):
        raise InvalidRequest(f"'{name}' must be a string of at most {max_length} characters.", param=name)


# --- OpenAI's own checks of tools, tool_choice, response_format, seed and logit_bias -------------
# Messages, params and codes as OpenAI's API answers them, so that a client sees the same 400
# whichever provider is behind: `invalid_type`, `missing_required_parameter`, `invalid_value`,
# `string_above_max_length`, `invalid_function_parameters`.
def _kind(value: object) -> str:
    """JSON's name of a value's type, with its article, as OpenAI's messages say it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _invalid_type(where: str, expected: str, value: object) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid type for '{where}': expected {expected}, but got {_kind(value)} instead.",
        param=where, code="invalid_type",
    )


def _missing(where: str) -> InvalidRequest:
    return InvalidRequest(f"Missing required parameter: '{where}'.", param=where, code="missing_required_parameter")


def _supported(where: str, value: object, supported: tuple[str, ...]) -> InvalidRequest:
    names = [f"'{name}'" for name in supported]
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])}, and {names[-1]}"
    return InvalidRequest(
        f"Invalid value: '{value}'. Supported values are: {listed}.", param=where, code="invalid_value"
    )


def _name(value: object, where: str) -> None:
    """A function's or a schema's name: `^[a-zA-Z0-9_-]{1,64}$`, checked as OpenAI checks it."""
    if value is None:
        raise _missing(where)
    if not isinstance(value, str):
        raise _invalid_type(where, "a string", value)
    if not NAME_PATTERN.match(value):
        raise InvalidRequest(
            f"Invalid '{where}': string does not match pattern. Expected a string that matches the "
            f"pattern '{NAME_PATTERN.pattern}'.", param=where, code="invalid_value",
        )
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidRequest(
            f"Invalid '{where}': string too long. Expected a string with maximum length "
            f"{MAX_NAME_LENGTH}, but got a string with length {len(value)} instead.",
            param=where, code="string_above_max_length",
        )


def _tools(tools: object) -> set[str]:
    """Function tools: `{"type": "function", "function": {"name", "description"?, "parameters"?}}`,
    `parameters` an object schema. Returns the declared names."""
    if tools is None:
        return set()
    if not isinstance(tools, list):
        raise _invalid_type("tools", "an array", tools)
    names = set()
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if not isinstance(tool, dict):
            raise _invalid_type(where, "an object", tool)
        if tool.get("type") is None:
            raise _missing(f"{where}.type")
        if tool["type"] != "function":
            raise _supported(f"{where}.type", tool["type"], ("function",))
        function = tool.get("function")
        if function is None:
            raise _missing(f"{where}.function")
        if not isinstance(function, dict):
            raise _invalid_type(f"{where}.function", "an object", function)
        _name(function.get("name"), f"{where}.function.name")
        if function.get("description") is not None and not isinstance(function["description"], str):
            raise _invalid_type(f"{where}.function.description", "a string", function["description"])
        _parameters(function, where=f"{where}.function.parameters")
        names.add(function["name"])
    return names


def _parameters(function: dict, *, where: str) -> None:
    parameters = function.get("parameters")
    if parameters is None:
        return
    if not isinstance(parameters, dict):
        raise _invalid_type(where, "an object", parameters)
    kind = parameters.get("type", "object")
    if kind != "object":
        raise InvalidRequest(
            f"Invalid schema for function '{function['name']}': schema must be a JSON Schema of "
            f"'type: \"object\"', got 'type: {json.dumps(kind)}'.",
            param=where, code="invalid_function_parameters",
        )


def _tool_choice(choice: object, names: set[str]) -> None:
    """"none", "auto", "required", or `{"type": "function", "function": {"name"}}` naming a
    declared tool."""
    if choice is None:
        return
    if isinstance(choice, str):
        if choice not in TOOL_CHOICES:
            raise _supported("tool_choice", choice, TOOL_CHOICES)
        return
    if not isinstance(choice, dict):
        raise _invalid_type("tool_choice", "one of a string or an object", choice)
    if choice.get("type") is None:
        raise _missing("tool_choice.type")
    if choice["type"] != "function":
        raise _supported("tool_choice.type", choice["type"], ("function",))
    function = choice.get("function")
    if function is None:
        raise _missing("tool_choice.function")
    if not isinstance(function, dict):
        raise _invalid_type("tool_choice.function", "an object", function)
    _name(function.get("name"), "tool_choice.function.name")
    if not names:
        raise InvalidRequest(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
            param="tool_choice", code="invalid_value",
        )
    if function["name"] not in names:
        raise InvalidRequest(
            f"Invalid value for 'tool_choice': no function named '{function['name']}' was specified in "
            f"the 'tools' parameter.", param="tool_choice.function.name", code="invalid_value",
        )


def _response_format(response_format: object) -> None:
    """`{"type": "text" | "json_object" | "json_schema"}`; json_schema with
    `{"json_schema": {"name", "schema", "strict"?, "description"?}}`."""
    if response_format is None:
        return
    if not isinstance(response_format, dict):
        raise _invalid_type("response_format", "an object", response_format)
    kind = response_format.get("type")
    if kind is None:
        raise _missing("response_format.type")
    if not isinstance(kind, str) or kind not in RESPONSE_FORMATS:
        raise _supported("response_format.type", kind, tuple(sorted(RESPONSE_FORMATS)))
    if kind != "json_schema":
        return
    schema = response_format.get("json_schema")
    if schema is None:
        raise _missing("response_format.json_schema")
    if not isinstance(schema, dict):
        raise _invalid_type("response_format.json_schema", "an object", schema)
    _name(schema.get("name"), "response_format.json_schema.name")
    if schema.get("schema") is None:
        raise _missing("response_format.json_schema.schema")
    if not isinstance(schema["schema"], dict):
        raise _invalid_type("response_format.json_schema.schema", "an object", schema["schema"])
    if schema.get("strict") is not None and not isinstance(schema["strict"], bool):
        raise _invalid_type("response_format.json_schema.strict", "a boolean", schema["strict"])


def _seed(body: dict) -> None:
    seed = body.get("seed")
    if seed is None:
        return
    if isinstance(seed, float) and seed.is_integer():
        seed = body["seed"] = int(seed)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise _invalid_type("seed", "an integer", seed)
    _integer(body, "seed", -(2**63), 2**63 - 1)


def _logit_bias(bias: object) -> None:
    """A map of token ids (strings of digits) to numbers from -100 to 100."""
    if bias is None:
        return
    if not isinstance(bias, dict):
        raise _invalid_type("logit_bias", "an object", bias)
    for token, value in bias.items():
        if not token.isdigit() or not token.isascii():
            raise InvalidRequest(
                f"Invalid key in 'logit_bias': {token}. You should only be submitting non-negative integers.",
                param="logit_bias", code="invalid_value",
            )
        if not _is_number(value):
            raise _invalid_type(f"logit_bias.{token}", "a number", value)
        if not -100 <= value <= 100:
            raise InvalidRequest(
                f"Invalid value for 'logit_bias.{token}': bias must be a number from -100 to 100, got {value}.",
                param=f"logit_bias.{token}", code="invalid_value",
            )


def _stop(stop: object) -> None:
    if stop is None or isinstance(stop, str):
        return
    if (
        not isinstance(stop, list)
        or len(stop) > MAX_STOP_SEQUENCES
        or not all(isinstance(item, str) for item in stop)
    ):
        raise InvalidRequest(
            f"'stop' must be a string or an array of at most {MAX_STOP_SEQUENCES} strings.", param="stop"
        )


def _stream_options(body: dict) -> None:
    options = body.get("stream_options")
    if options is None:
        return
    if not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object.", param="stream_options")
    if not body.get("stream"):
        raise InvalidRequest(
            "'stream_options' is only allowed when 'stream' is true.", param="stream_options"
        )
    if "include_usage" in options and not isinstance(options["include_usage"], bool):
        raise InvalidRequest(
            "'stream_options.include_usage' must be a boolean.", param="stream_options.include_usage"
        )


def _metadata(body: dict) -> None:
    metadata = body.get("metadata")
    if metadata is None:
        return
    if not isinstance(metadata, dict) or len(metadata) > 16 or not all(
        isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
        for k, v in metadata.items()
    ):
        raise InvalidRequest(
            "'metadata' must be an object of at most 16 string values (keys up to 64 characters, "
            "values up to 512).",
            param="metadata",
        )


def _routing(body: dict) -> None:
    """The gateway's routing hints: {"strategy": str, "prefer": [provider], "exclude": [provider]}."""
    routing = body.get("routing")
    if routing is None:
        return
    if not isinstance(routing, dict):
        raise InvalidRequest("'routing' must be an object.", param="routing")
    for key, value in routing.items():
        if key not in ROUTING_KEYS:
            raise InvalidRequest(
                f"Unknown routing hint '{key}'; use {', '.join(sorted(ROUTING_KEYS))}.", param=f"routing.{key}"
            )
        if key == "strategy" and not isinstance(value, str):
            raise InvalidRequest("'routing.strategy' must be a string.", param="routing.strategy")
        if key != "strategy" and (
            not isinstance(value, list) or not all(isinstance(item, str) for item in value)
        ):
            raise InvalidRequest(f"'routing.{key}' must be an array of provider names.", param=f"routing.{key}")


def _embedding_input(value: object) -> None:
    if value is None:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    if isinstance(value, str):
        if not value:
            raise InvalidRequest("'input' must not be empty.", param="input")
        return
    if not isinstance(value, list) or not value or len(value) > MAX_EMBEDDING_INPUTS:
        raise InvalidRequest(
            f"'input' must be a string or a non-empty array of at most {MAX_EMBEDDING_INPUTS} items.",
            param="input",
        )
    if all(isinstance(item, str) and item for item in value):
        return
    if all(isinstance(item, int) and not isinstance(item, bool) for item in value):
        return
    if all(
        isinstance(item, list) and item and all(isinstance(t, int) and not isinstance(t, bool) for t in item)
        for item in value
    ):
        return
    raise InvalidRequest(
        "'input' must be a string, an array of non-empty strings, an array of token ids, "
        "or an array of arrays of token ids.",
        param="input",
    )
