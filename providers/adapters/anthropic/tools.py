"""Tools and structured output between OpenAI's chat format and Anthropic's Messages API.

Tools: OpenAI function tools become Anthropic tools (`parameters` is the `input_schema`),
`tool_choice` and `parallel_tool_calls` become one `tool_choice` object, assistant `tool_calls`
become `tool_use` blocks, and `tool` messages `tool_result` blocks. Answers go back the other way:
`tool_use` blocks are `message.tool_calls`, with the input as a JSON string of arguments.
https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/overview

Structured output: this adapter's Messages API version has no JSON mode, so `response_format`
json_object / json_schema is enforced the way Anthropic's docs suggest, by forcing a tool whose
input schema is the wanted schema; the tool's input is then handed to the client as the
message content.
https://docs.anthropic.com/en/docs/test-and-evaluate/strengthen-guardrails/increase-consistency
"""

from __future__ import annotations

import json

from kernel.errors import InvalidRequest

JSON_TOOL_NAME = "json_response"
JSON_TOOL_DESCRIPTION = (
    "Give your whole answer by calling this tool: its input is the response, as JSON matching "
    "the schema."
)
# OpenAI's tool_choice strings; a {"type": "function"} object names one tool.
_TOOL_CHOICES = {"auto": "auto", "required": "any", "none": "none"}


def arguments_dump(value: object) -> str:
    """Tool input as OpenAI's `arguments` string: compact JSON, as OpenAI's models write it."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# --- requests -------------------------------------------------------------------------------


def tools_body(payload: dict) -> dict:
    """The `tools` and `tool_choice` of a Messages request: the client's, or the one tool that
    carries structured output; {} when the request uses neither."""
    json_tool = _json_tool(payload)
    if json_tool is not None:
        return {"tools": [json_tool], "tool_choice": {"type": "tool", "name": json_tool["name"]}}
    tools = payload.get("tools")
    if not tools:
        if payload.get("tool_choice") not in (None, "none", "auto"):
            raise InvalidRequest(
                "'tool_choice' other than 'auto' or 'none' needs 'tools'.", param="tool_choice"
            )
        return {}
    translated = [_tool(tool, index) for index, tool in enumerate(tools)]
    body: dict = {"tools": translated}
    choice = _tool_choice(payload.get("tool_choice"), names={tool["name"] for tool in translated})
    if payload.get("parallel_tool_calls") is False and (choice or {}).get("type") != "none":
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if choice is not None:
        body["tool_choice"] = choice
    return body


def json_output_requested(payload: dict) -> bool:
    """Whether the answer must come back as JSON content (from the forced tool's input)."""
    response_format = payload.get("response_format")
    return isinstance(response_format, dict) and response_format.get("type") in (
        "json_object", "json_schema",
    )


def _tool(tool: object, index: int) -> dict:
    function = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(function, dict) or tool.get("type", "function") != "function":
        raise InvalidRequest(
            f"'tools[{index}]' must be a function tool; Anthropic providers take no other kind.",
            param=f"tools[{index}]",
        )
    if not isinstance(function.get("name"), str) or not function["name"]:
        where = f"tools[{index}].function.name"
        raise InvalidRequest(f"'{where}' is required.", param=where)
    # OpenAI allows a function without parameters; Anthropic needs an object schema.
    translated = {
        "name": function["name"],
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        translated["description"] = function["description"]
    return translated


def _tool_choice(choice: object, *, names: set[str]) -> dict | None:
    if choice is None:
        return None
    if isinstance(choice, str) and choice in _TOOL_CHOICES:
        return {"type": _TOOL_CHOICES[choice]}
    function = choice.get("function") if isinstance(choice, dict) else None
    if isinstance(function, dict) and choice.get("type") == "function":
        if function.get("name") not in names:
            raise InvalidRequest(
                f"'tool_choice' names the function {function.get('name')!r}, which is not in "
                "'tools'.",
                param="tool_choice",
            )
        return {"type": "tool", "name": function["name"]}
    raise InvalidRequest(
        "'tool_choice' must be 'auto', 'required', 'none' or "
        '{"type": "function", "function": {"name": ...}} for Anthropic providers.',
        param="tool_choice",
    )


def _json_tool(payload: dict) -> dict | None:
    """The tool whose forced call carries structured output, or None for a text answer."""
    response_format = payload.get("response_format")
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind not in ("json_object", "json_schema"):
        raise InvalidRequest(
            "'response_format' must be of type text, json_object or json_schema.",
            param="response_format",
        )
    if payload.get("tools"):
        raise InvalidRequest(
            f"'response_format' {kind} cannot be combined with 'tools' on Anthropic providers: "
            "JSON output is enforced by forcing a tool of its own, which would keep the model "
            "from calling yours. Ask for the JSON in a tool of yours instead.",
            param="response_format",
        )
    if kind == "json_object":
        return {
            "name": JSON_TOOL_NAME,
            "description": JSON_TOOL_DESCRIPTION,
            "input_schema": {"type": "object"},
        }
    return _json_schema_tool(response_format.get("json_schema"))


def _json_schema_tool(spec: object) -> dict:
    if not isinstance(spec, dict):
        raise InvalidRequest(
            "'response_format.json_schema' must be an object.", param="response_format"
        )
    schema = spec.get("schema") or {"type": "object"}
    # A tool's input is always an object (as for OpenAI's strict structured outputs).
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        raise InvalidRequest(
            "'response_format.json_schema.schema' must describe an object on Anthropic providers.",
            param="response_format",
        )
    return {
        "name": spec.get("name") or JSON_TOOL_NAME,
        "description": spec.get("description") or JSON_TOOL_DESCRIPTION,
        "input_schema": schema,
    }


def tool_use_block(call: object, *, where: str) -> dict:
    """An assistant's OpenAI tool call as an Anthropic tool_use block (arguments parsed)."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not call.get("id") or not function.get("name"):
        raise InvalidRequest(
            f"'{where}' needs an 'id' and a 'function' with a 'name'.", param=where
        )
    arguments = function.get("arguments") or "{}"
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else None
    except ValueError as exc:
        raise InvalidRequest(
            f"'{where}.function.arguments' is not valid JSON ({exc}); Anthropic needs the "
            "arguments of earlier tool calls as a JSON object.",
            param=f"{where}.function.arguments",
        ) from exc
    if not isinstance(parsed, dict):
        raise InvalidRequest(
            f"'{where}.function.arguments' must be a JSON object for Anthropic providers.",
            param=f"{where}.function.arguments",
        )
    return {"type": "tool_use", "id": call["id"], "name": function["name"], "input": parsed}


def tool_result_block(*, call_id: object, content: str | list[dict], where: str) -> dict:
    """A `tool` message as an Anthropic tool_result block."""
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest(f"'{where}.tool_call_id' is required.", param=f"{where}.tool_call_id")
    block = {"type": "tool_result", "tool_use_id": call_id}
    if content:
        block["content"] = content
    return block


# --- responses ------------------------------------------------------------------------------


def tool_call(block: dict) -> dict:
    """An Anthropic tool_use block as an OpenAI tool call."""
    function = {
        "name": str(block.get("name") or ""),
        "arguments": arguments_dump(block.get("input") or {}),
    }
    return {"id": str(block.get("id") or ""), "type": "function", "function": function}


def json_content_body(body: dict) -> dict:
    """Structured output, plain: the forced tool's arguments become the message content."""
    for choice in body.get("choices") or ():
        message = choice["message"]
        calls = message.pop("tool_calls", None)
        if calls:
            message["content"] = calls[0]["function"]["arguments"]
        if choice.get("finish_reason") == "tool_calls":
            choice["finish_reason"] = "stop"
    return body


def json_content_chunk(chunk: dict) -> dict | None:
    """Structured output, streamed: argument pieces become content; None drops an empty chunk."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        calls = delta.pop("tool_calls", None)
        if calls:
            pieces = "".join((call.get("function") or {}).get("arguments") or "" for call in calls)
            if not pieces and not delta and choice.get("finish_reason") is None:
                return None  # the tool call's start: its name and id mean nothing to the client
            delta["content"] = pieces
        if choice.get("finish_reason") == "tool_calls":
            choice["finish_reason"] = "stop"
    return chunk
