"""Structured output: answers requested with `response_format` are checked before they leave.

`json_object` must parse as a JSON object; `json_schema` must also validate against its schema
(JSON Schema, as OpenAI's structured outputs use it). Providers enforce this natively where they
can (OpenAI, Gemini, Cohere) or through the adapter (Anthropic: a forced tool); the gateway checks
every answer anyway, asks once for a repair of a non-streamed answer that fails, and otherwise
answers with a clear error rather than hand a client output it cannot parse.
"""

from __future__ import annotations

import json

from accounting.tokens import TOKENS_PER_MESSAGE
from kernel.errors import GatewayError, InvalidRequest

REPAIR_PROMPT = (
    "Your previous answer did not match the required JSON format: {error}. "
    "Reply again with only the corrected JSON, nothing else."
)
# A repair quotes at most this much of the problem, in ASCII (a JSON Schema message repeats the
# value it rejects, which may be the whole answer): the repair call's prompt then has a bound
# before the first answer exists, which a budget reserves up front (`repair_prompt_tokens`).
REPAIR_PROBLEM_MAX_CHARS = 200


class StructuredOutputInvalid(GatewayError):
    status = 502
    type = "api_error"
    code = "structured_output_invalid"
    error_class = "structured_output_invalid"


def required_schema(payload: dict) -> dict | None:
    """The JSON schema an answer must satisfy, or None when the client asked for free text."""
    response_format = payload.get("response_format") or {}
    kind = response_format.get("type")
    if kind == "json_object":
        return {"type": "object"}
    if kind != "json_schema":
        return None
    schema = (response_format.get("json_schema") or {}).get("schema")
    if not isinstance(schema, dict):
        raise InvalidRequest("'response_format.json_schema.schema' must be an object.", param="response_format")
    # jsonschema is imported by the requests that use it: about 5 MB that a worker serving none
    # of them does not hold (docs/performance.md, memory).
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise InvalidRequest(f"'response_format' has an invalid JSON schema: {exc.message}", param="response_format") from exc
    return schema


def output_problem(text: str | None, schema: dict) -> str | None:
    """Why `text` does not satisfy `schema`, or None when it does."""
    try:
        value = json.loads(text or "")
    except ValueError as exc:
        return f"the answer is not valid JSON ({exc.msg} at character {exc.pos})"
    except RecursionError:
        return "the answer nests too deeply to check"
    from jsonschema import Draft202012Validator

    errors = sorted(Draft202012Validator(schema).iter_errors(value), key=lambda e: list(e.path))
    if not errors:
        return None
    error = errors[0]
    where = "/".join(str(part) for part in error.absolute_path) or "the top level"
    return f"at {where}: {error.message}"


def repair_payload(payload: dict, *, answer: str, problem: str) -> dict:
    messages = [*payload["messages"], {"role": "assistant", "content": answer},
                {"role": "user", "content": _repair_instruction(problem)}]
    return {**payload, "messages": messages}


def _repair_instruction(problem: str) -> str:
    quoted = problem.encode("ascii", "backslashreplace").decode()
    if len(quoted) > REPAIR_PROBLEM_MAX_CHARS:
        quoted = quoted[: REPAIR_PROBLEM_MAX_CHARS - 3] + "..."
    return REPAIR_PROMPT.format(error=quoted)


def repair_prompt_tokens(*, prompt_tokens: int, answer_tokens: int) -> int:
    """The most prompt tokens of the repair call (`repair_payload`) of a request whose prompt is
    `prompt_tokens` and whose first answer is at most `answer_tokens`, counted as
    `accounting.tokens.prompt_tokens` counts: two more messages, the answer and the instruction.
    The instruction is ASCII, so its tokens are at most its bytes (a byte-level BPE token is at
    least one byte, whichever tokenizer the provider uses)."""
    instruction = len(REPAIR_PROMPT.format(error="")) + REPAIR_PROBLEM_MAX_CHARS
    return prompt_tokens + 2 * TOKENS_PER_MESSAGE + answer_tokens + instruction
