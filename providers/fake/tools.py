"""Tool calls for the fake: which declared tool to call, and arguments that fit its schema.

A request declaring tools gets a tool call when its tool choice forces one, or when its last user
message carries `[[fake tool=NAME]]`; a request whose last message is a tool result gets text.
"""

from __future__ import annotations

from providers.fake.errors import ApiError

SAMPLE_STRINGS = ("Paris", "blue", "example", "42 Main Street")


def tool_arguments(schema: object, *, name: str) -> dict:
    """Deterministic arguments satisfying simple JSON schemas (objects, scalars, arrays, enums)."""
    value = _sample(schema if isinstance(schema, dict) else {}, seed=len(name))
    return value if isinstance(value, dict) else {"value": value}


def _sample(schema: dict, *, seed: int) -> object:
    if "enum" in schema and schema["enum"]:
        return schema["enum"][seed % len(schema["enum"])]
    kind = schema.get("type", "object")
    kind = kind[0] if isinstance(kind, list) and kind else kind
    if kind == "object":
        properties = schema.get("properties") or {}
        return {key: _sample(sub if isinstance(sub, dict) else {}, seed=seed + i)
                for i, (key, sub) in enumerate(properties.items())}
    if kind == "array":
        return [_sample(schema.get("items") or {"type": "string"}, seed=seed)]
    if kind == "integer":
        return 7 + seed % 5
    if kind == "number":
        return 21.5 + seed % 5
    if kind == "boolean":
        return seed % 2 == 0
    return SAMPLE_STRINGS[seed % len(SAMPLE_STRINGS)]


def tool_choose(*, tools: dict[str, dict], forced: str | None, directed: str | None,
                last_role: str) -> str | None:
    """The tool to call now, or None to answer with text."""
    if not tools or last_role in ("tool", "function"):
        return None
    name = forced or directed
    if name is not None and name not in tools:
        raise ApiError(400, f"Tool '{name}' is not among the declared tools.", param="tools")
    return name
