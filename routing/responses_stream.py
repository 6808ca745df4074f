"""The Responses API's stream: chat chunks as OpenAI's typed events, each with its `sequence_number`.

Reference: https://platform.openai.com/docs/api-reference/responses-streaming; the shapes are the
`openai` SDK's `openai.types.responses.Response*Event` (its `responses.stream()` assembles the
response from them, so every item is added, filled and done in order).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from routing.responses_format import INCOMPLETE, Echo, item_id, response_usage, text_part


async def response_events(chunks: AsyncIterator[dict], *, echo: Echo) -> AsyncIterator[dict]:
    """Chat chunks as the Responses event sequence, each with its `sequence_number`; the last one is
    `response.completed` (`response.incomplete` for an answer cut by its token cap) with the full
    Response, or `response.failed` when the stream ends in an error."""
    writer = _EventWriter(echo)
    yield writer.event("response.created", response=echo.response(status="in_progress", output=[], usage=None))
    yield writer.event("response.in_progress", response=echo.response(status="in_progress", output=[], usage=None))
    usage, incomplete = None, None
    async for chunk in chunks:
        if "error" in chunk:
            error = chunk["error"] if isinstance(chunk["error"], dict) else {}
            for event in writer.close():
                yield event
            # The gateway's code (`guardrail_blocked`, `upstream_server`...), where OpenAI's names its own.
            failure = {"code": str(error.get("code") or "server_error"),
                       "message": str(error.get("message") or "The stream failed.")}
            yield writer.event("response.failed", response=echo.response(
                status="failed", output=writer.output, usage=response_usage(usage), error=failure))
            return
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            for event in writer.feed(choice.get("delta") or {}):
                yield event
            incomplete = INCOMPLETE.get(choice.get("finish_reason")) or incomplete
    for event in writer.close():
        yield event
    status = "incomplete" if incomplete else "completed"
    yield writer.event(f"response.{status}", response=echo.response(
        status=status, output=writer.output, usage=response_usage(usage), incomplete=incomplete))


class _EventWriter:
    """Turns chat deltas into output items: a message with one output_text part, then function calls."""

    def __init__(self, echo: Echo) -> None:
        self.sequence = 0
        self.output: list[dict] = []  # the items done, in order
        self.open: dict | None = None  # the item being streamed
        self.slots: dict[int, dict] = {}  # chat's tool call index -> its item

    def event(self, kind: str, **fields) -> dict:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def _start(self, item: dict) -> list[dict]:
        events = self.close()
        self.open = item
        return events + [self.event("response.output_item.added", output_index=len(self.output), item=dict(item))]

    def close(self) -> list[dict]:
        item, self.open = self.open, None
        if item is None:
            return []
        index, events = len(self.output), []
        item["status"] = "completed"
        if item["type"] == "message":
            part = item["content"][0]
            ids = {"item_id": item["id"], "output_index": index, "content_index": 0}
            events.append(self.event("response.output_text.done", **ids, text=part["text"], logprobs=[]))
            events.append(self.event("response.content_part.done", **ids, part=dict(part)))
        else:
            events.append(self.event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                     arguments=item["arguments"]))
        self.output.append(item)
        return events + [self.event("response.output_item.done", output_index=index, item=item)]

    def feed(self, delta: dict) -> list[dict]:
        events: list[dict] = []
        text = delta.get("content")
        if text:
            if self.open is None or self.open["type"] != "message":
                item = {"id": item_id("msg"), "type": "message", "role": "assistant", "status": "in_progress",
                        "content": []}
                events += self._start(item)
                part = text_part("output_text", "")
                events.append(self.event("response.content_part.added", item_id=item["id"],
                                         output_index=len(self.output), content_index=0, part=dict(part)))
                item["content"].append(part)
            self.open["content"][0]["text"] += text
            events.append(self.event("response.output_text.delta", item_id=self.open["id"],
                                     output_index=len(self.output), content_index=0, delta=text, logprobs=[]))
        for call in delta.get("tool_calls") or ():
            events += self._tool_delta(call)
        return events

    def _tool_delta(self, call: dict) -> list[dict]:
        events: list[dict] = []
        slot = call.get("index", 0)
        function = call.get("function") or {}
        if slot not in self.slots:
            item = {"id": item_id("fc"), "type": "function_call", "call_id": call.get("id") or item_id("call"),
                    "name": function.get("name") or "", "arguments": "", "status": "in_progress"}
            events += self._start(item)
            self.slots[slot] = item
        item = self.slots[slot]
        arguments = function.get("arguments")
        if arguments and item is self.open:
            item["arguments"] += arguments
            events.append(self.event("response.function_call_arguments.delta", item_id=item["id"],
                                     output_index=len(self.output), delta=arguments))
        return events
