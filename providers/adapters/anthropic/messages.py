"""Request translation: an OpenAI chat completions body to the parts of a Messages request.

Tool definitions, tool choice and structured output are in `tools.py`; this module turns the
messages (system prompt, turns, content parts, tool calls and tool results) and the sampling
parameters.
"""

from __future__ import annotations

from kernel.errors import InvalidRequest
from providers.adapters.anthropic.tools import tool_result_block, tool_use_block

# Anthropic requires `max_tokens` on every request; OpenAI does not. When the client sets no
# limit we send the model's configured output cap, or else this one, large enough for ordinary
# answers and accepted by every current model.
DEFAULT_MAX_TOKENS = 4096

_LEGACY_FUNCTION_PARAMS = ("functions", "function_call")
_LOGPROB_PARAMS = ("logprobs", "top_logprobs")

# OpenAI parameters with no Messages counterpart that change nothing a client relies on, so they
# are dropped rather than refused: `seed`, `presence_penalty`, `frequency_penalty` and
# `logit_bias` only nudge sampling; `stream_options` is moot because Anthropic always reports
# usage; `service_tier` and `store` are OpenAI account features; OpenAI's `metadata` is free-form
# tags for its dashboard, while Anthropic's takes only `user_id` (filled from `user`). The request
# body is built from the parameters translated here and in `tools.py`, so anything else is
# dropped as well.


def unsupported_refuse(payload: dict) -> None:
    """Refuse what Anthropic cannot honour, rather than answer a different question."""
    if payload.get("n") not in (None, 1):
        raise InvalidRequest("Anthropic providers return one choice; 'n' must be 1.", param="n")
    for name in _LEGACY_FUNCTION_PARAMS:
        if payload.get(name):
            raise InvalidRequest(
                f"'{name}' (OpenAI's legacy function calling) is not supported for Anthropic "
                "providers; use 'tools' and 'tool_choice'.",
                param=name,
            )
    for name in _LOGPROB_PARAMS:
        if payload.get(name):
            raise InvalidRequest(
                f"Anthropic providers do not return log probabilities; remove '{name}'.",
                param=name,
            )


def max_tokens_for(payload: dict, *, default: int | None) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        if payload.get(name) is not None:
            return payload[name]
    return default or DEFAULT_MAX_TOKENS


def sampling(payload: dict) -> dict:
    # Anthropic's temperature range is 0-1 where OpenAI's is 0-2; a value above 1 is passed on
    # and refused by Anthropic, rather than silently rescaled.
    body = {
        name: payload[name] for name in ("temperature", "top_p") if payload.get(name) is not None
    }
    stop = payload.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    return body


def messages_split(messages: object) -> tuple[str, list[dict]]:
    """Return (system prompt, turns): Messages takes the system prompt outside the turns."""
    if not isinstance(messages, list):
        raise InvalidRequest("'messages' must be a list.", param="messages")
    system: list[str] = []
    turns: list[dict] = []
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("system", "developer"):
            if text := _system_text(message.get("content")):
                system.append(text)
        elif role == "user":
            _turn_append(turns, role="user", content=_content(message.get("content")))
        elif role == "assistant":
            _turn_append(turns, role="assistant", content=_assistant_content(message, index))
        elif role == "tool":
            result = tool_result_block(
                call_id=message.get("tool_call_id"),
                content=_content(message.get("content")),
                where=f"messages[{index}]",
            )
            _tool_result_append(turns, result)
        elif role == "function":
            raise InvalidRequest(
                "Messages with role 'function' (OpenAI's legacy function calling) are not "
                "supported for Anthropic providers; use 'tool' messages.",
                param=f"messages[{index}].role",
            )
        else:
            raise InvalidRequest(f"Unsupported message role {role!r}.", param="messages")
    return "\n\n".join(system), turns


def _turn_append(turns: list[dict], *, role: str, content: str | list[dict]) -> None:
    # Messages wants user and assistant to alternate, so consecutive turns of one role merge.
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"] = _blocks(turns[-1]["content"]) + _blocks(content)
    else:
        turns.append({"role": role, "content": content})


def _tool_result_append(turns: list[dict], block: dict) -> None:
    """Tool results travel in a user turn, one turn for consecutive results, before any text.

    Anthropic wants every result of an assistant turn's tool calls in the next user turn, with
    the tool_result blocks first:
    https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/implement-tool-use
    """
    if not turns or turns[-1]["role"] != "user":
        turns.append({"role": "user", "content": [block]})
        return
    blocks = _blocks(turns[-1]["content"])
    at = next((i for i, b in enumerate(blocks) if b.get("type") != "tool_result"), len(blocks))
    turns[-1]["content"] = [*blocks[:at], block, *blocks[at:]]


def _assistant_content(message: dict, index: int) -> str | list[dict]:
    if message.get("function_call"):
        raise InvalidRequest(
            "Assistant 'function_call' (OpenAI's legacy function calling) is not supported for "
            "Anthropic providers; use 'tool_calls'.",
            param=f"messages[{index}].function_call",
        )
    content = _content(message.get("content"))
    calls = message.get("tool_calls")
    if not calls:
        return content
    if not isinstance(calls, list):
        where = f"messages[{index}].tool_calls"
        raise InvalidRequest(f"'{where}' must be an array.", param=where)
    # Anthropic refuses empty text blocks, and clients often send content "" beside tool calls.
    text = [block for block in _blocks(content) if block != {"type": "text", "text": ""}]
    return text + [
        tool_use_block(call, where=f"messages[{index}].tool_calls[{n}]")
        for n, call in enumerate(calls)
    ]


def _blocks(content: str | list[dict]) -> list[dict]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _content(content: object) -> str | list[dict]:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return [_block(part) for part in content]
    raise InvalidRequest("Message content must be a string or a list of parts.", param="messages")


def _block(part: object) -> dict:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        return {"type": "text", "text": part.get("text", "")}
    if kind == "image_url":
        return _image_block(part.get("image_url"))
    raise InvalidRequest(
        f"Content parts of type {kind!r} are not supported for Anthropic providers.",
        param="messages",
    )


def _image_block(image_url: object) -> dict:
    """OpenAI image parts carry a URL or a data URL; Anthropic wants url or base64 sources."""
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if isinstance(url, str) and url.startswith("data:"):
        header, comma, data = url[len("data:"):].partition(",")
        media_type, *params = header.split(";")
        if comma and media_type and "base64" in params:
            source = {"type": "base64", "media_type": media_type, "data": data}
            return {"type": "image", "source": source}
        raise InvalidRequest(
            "Image data URLs must look like data:<media type>;base64,<data>.", param="messages"
        )
    if isinstance(url, str) and url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequest("Image URLs must be http(s) or base64 data URLs.", param="messages")


def _system_text(content: object) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" for part in content
    ):
        return "".join(str(part.get("text", "")) for part in content)
    raise InvalidRequest("System messages may only hold text.", param="messages")
