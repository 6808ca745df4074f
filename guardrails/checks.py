"""Guardrail checks on the request path: the prompt before routing, the answer before it leaves.

`guard_input` runs after validation and before routing: a block is a 400 (`guardrail_blocked`),
a redaction changes the payload sent upstream, a flag only records an event. `guard_output`
checks a finished answer; `StreamGuard` checks a stream as it goes, holding back a short tail so
that a match split across chunks is still caught. Each takes the values it needs and appends its
events to a list the pipeline owns and hands in (`events`), written with the request's UsageRecord
(`routing.record`, through `guardrails.services.guardrail_events_start`), so they carry its request
and response ids, and a request that is blocked still has them.

Where several rules match the same text the strongest action wins: block, then redact, then flag.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from kernel.errors import GatewayError
from guardrails.detection import DETECTORS, Match
from guardrails.models import Action, Kind, PII_KINDS
from guardrails.selectors import CompiledRule, RuleSet, guardrail_rules_get

REDACTION_LABELS = {
    Kind.PII_EMAIL: "EMAIL",
    Kind.PII_PHONE: "PHONE",
    Kind.PII_CARD: "CARD",
    Kind.PII_IBAN: "IBAN",
    Kind.PII_NATIONAL_ID: "NATIONAL_ID",
    Kind.BLOCKED_PATTERN: "PATTERN",
}
KIND_WORDS = {
    Kind.PII_EMAIL: "an email address",
    Kind.PII_PHONE: "a phone number",
    Kind.PII_CARD: "a payment card number",
    Kind.PII_IBAN: "an IBAN",
    Kind.PII_NATIONAL_ID: "a national id number",
    Kind.BLOCKED_PATTERN: "a blocked pattern",
}
# Streams: text is held back this many characters (and to a word start) before it is sent, so that
# an email, phone, card, IBAN or id split across chunks is seen whole. Longer pattern matches
# split across chunks can pass.
STREAM_HOLD_CHARS = 64
STREAM_HOLD_MAX = 1024  # a run without whitespace is cut here anyway
STREAM_STEP_CHARS = 32  # scan again only once this much more text has come (not on every token)
STREAM_CONTEXT_CHARS = 48  # released text scanned again as context ("call me at", a word boundary)
SNIPPET_CHARS = 60


class GuardrailBlocked(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "guardrail_blocked"
    error_class = "guardrail_blocked"


@dataclass(frozen=True)
class Finding:
    rule: CompiledRule
    match: Match


# --- scanning -------------------------------------------------------------------------------------
def text_scan(text: str, rules: tuple[CompiledRule, ...]) -> list[Finding]:
    """Every match of the content rules in `text`, each with the strongest rule for its kind."""
    strongest: dict[str, CompiledRule] = {}
    findings: list[Finding] = []
    for rule in rules:
        if rule.kind in PII_KINDS:
            if rule.kind not in strongest or rule.severity > strongest[rule.kind].severity:
                strongest[rule.kind] = rule
        elif rule.kind == Kind.BLOCKED_PATTERN and rule.regex is not None:
            findings += [
                Finding(rule, Match(rule.kind, m.start(), m.end()))
                for m in rule.regex.finditer(text)
                if m.end() > m.start()
            ]
    for kind, rule in strongest.items():
        findings += [Finding(rule, match) for match in DETECTORS[kind](text)]
    findings.sort(key=lambda f: (f.match.start, -f.match.end))
    return findings


def text_redact(text: str, findings: list[Finding]) -> str:
    """`text` with every redact finding replaced by `[REDACTED:KIND]` (overlaps merged)."""
    parts, position = [], 0
    for finding in findings:
        if finding.rule.action != Action.REDACT:
            continue
        start, end = max(finding.match.start, position), finding.match.end
        if end <= position:
            continue
        if start == finding.match.start:
            parts += [text[position:start], f"[REDACTED:{REDACTION_LABELS[finding.rule.kind]}]"]
        position = end
    return "".join(parts) + text[position:]


def _event(finding: Finding, *, direction: str, location: str, text: str, offset: int = 0) -> dict:
    match = finding.match
    return {
        "rule_id": finding.rule.id,
        "kind": finding.rule.kind,
        "direction": direction,
        "action": finding.rule.action,
        "location": location,
        "start": match.start + offset,
        "end": match.end + offset,
        "snippet": masked(text[match.start:match.end]),
    }


def masked(text: str) -> str:
    """The shape of a match without its content: letters become x, digits 9."""
    return re.sub(r"[^\W\d_]", "x", re.sub(r"\d", "9", text[:SNIPPET_CHARS]))


def _blocked(finding: Finding, *, where: str) -> GuardrailBlocked:
    rule = finding.rule
    what = KIND_WORDS.get(rule.kind, rule.kind)
    name = f"'{rule.label}' ({rule.kind})" if rule.label else rule.kind
    return GuardrailBlocked(
        f"Blocked by guardrail rule {name}: {where} contains {what}.",
        param="messages" if where == "the prompt" else None,
    )


def _apply(text: str, rules: tuple[CompiledRule, ...], *, direction: str, location: str,
           events: list[dict], where: str) -> str:
    """Scan one text: raise on a block, record redactions and flags, return the redacted text."""
    findings = text_scan(text, rules)
    if not findings:
        return text
    block = next((f for f in findings if f.rule.action == Action.BLOCK), None)
    if block is not None:
        events.append(_event(block, direction=direction, location=location, text=text))
        raise _blocked(block, where=where)
    events += [_event(f, direction=direction, location=location, text=text) for f in findings]
    return text_redact(text, findings)


# --- input ----------------------------------------------------------------------------------------
@dataclass(slots=True)
class InputGuard:
    """The input check's result: the tenant's rules (the output checks use them too), the payload
    to send upstream (redacted where a rule redacts), and the prompt's token count when a size rule
    needed one (of that payload)."""

    rules: RuleSet
    payload: dict
    prompt_tokens: int | None = None


async def guard_input(
    *, tenant_id: int, payload: dict, events: list[dict], count_tokens: Callable[[dict], int]
) -> InputGuard:
    """Check the prompt of a validated request (chat or embeddings) against the tenant's rules.

    Redactions give a new payload (what is sent upstream, cached and recorded); size limits are
    checked on the redacted prompt, counted by `count_tokens` (the pipeline's own count, which it
    keeps). A block raises `GuardrailBlocked` once its event is in `events`."""
    rule_set = await guardrail_rules_get(tenant_id=tenant_id)
    rules = rule_set.input
    if not rules:
        return InputGuard(rule_set, payload)
    content_rules = tuple(r for r in rules if r.kind not in (Kind.MAX_PROMPT_TOKENS, Kind.MAX_PROMPT_CHARS))
    if content_rules:
        payload = _payload_checked(payload, content_rules, events)
    prompt_tokens = None
    for rule in rules:
        if rule.kind == Kind.MAX_PROMPT_TOKENS:
            if prompt_tokens is None:
                prompt_tokens = count_tokens(payload)
            _size_check(rule, prompt_tokens, "tokens", events)
        elif rule.kind == Kind.MAX_PROMPT_CHARS:
            _size_check(rule, _prompt_chars(payload), "characters", events)
    return InputGuard(rule_set, payload, prompt_tokens)


def _payload_checked(payload: dict, rules: tuple[CompiledRule, ...], events: list[dict]) -> dict:
    if "messages" in payload:
        messages = [_message_checked(m, i, rules, events) for i, m in enumerate(payload["messages"])]
        changed = any(new is not old for new, old in zip(messages, payload["messages"]))
        return {**payload, "messages": messages} if changed else payload
    source = payload.get("input")
    if isinstance(source, str):
        text = _apply(source, rules, direction="input", location="input", events=events, where="the prompt")
        return payload if text == source else {**payload, "input": text}
    if isinstance(source, list) and source and isinstance(source[0], str):
        texts = [
            _apply(t, rules, direction="input", location=f"input[{i}]", events=events, where="the prompt")
            for i, t in enumerate(source)
        ]
        return payload if texts == source else {**payload, "input": texts}
    return payload  # token arrays carry no text to check


def _message_checked(message: dict, index: int, rules, events: list[dict]) -> dict:
    content = message.get("content")
    where = f"messages[{index}].content"
    if isinstance(content, str):
        text = _apply(content, rules, direction="input", location=where, events=events, where="the prompt")
        return message if text == content else {**message, "content": text}
    if not isinstance(content, list):
        return message
    parts = []
    for j, part in enumerate(content):
        if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
            text = _apply(part["text"], rules, direction="input", location=f"{where}[{j}].text",
                          events=events, where="the prompt")
            part = part if text == part["text"] else {**part, "text": text}
        parts.append(part)
    changed = any(new is not old for new, old in zip(parts, content))
    return {**message, "content": parts} if changed else message


def _size_check(rule: CompiledRule, size: int, unit: str, events: list[dict]) -> None:
    if size <= rule.limit:
        return
    events.append({
        "rule_id": rule.id, "kind": rule.kind, "direction": "input", "action": rule.action,
        "location": "prompt", "start": None, "end": None, "snippet": f"{size} {unit} > {rule.limit}",
    })
    if rule.action == Action.BLOCK:
        name = f"'{rule.label}' ({rule.kind})" if rule.label else rule.kind
        raise GuardrailBlocked(
            f"Blocked by guardrail rule {name}: the prompt is {size} {unit}, more than the {rule.limit} allowed.",
            param="messages",
        )


def _prompt_chars(payload: dict) -> int:
    if "messages" not in payload:
        source = payload.get("input")
        return len(source) if isinstance(source, str) else sum(len(t) for t in source or () if isinstance(t, str))
    total = 0
    for message in payload["messages"]:
        content = message.get("content")
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            total += sum(len(p.get("text") or "") for p in content if isinstance(p, dict))
    return total


# --- output ---------------------------------------------------------------------------------------
def guard_output(*, rules: RuleSet | None, body: dict, events: list[dict]) -> None:
    """Check a finished chat answer in place against the output rules of `rules` (the input
    check's): its text and its tool calls' arguments; events go to `events`."""
    rules = rules.output if rules is not None else ()
    if not rules:
        return
    for i, choice in enumerate(body.get("choices") or ()):
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            continue
        if isinstance(message.get("content"), str):
            message["content"] = _apply(message["content"], rules, direction="output",
                                        location=f"choices[{i}].message.content",
                                        events=events, where="the answer")
        for j, tool_call in enumerate(message.get("tool_calls") or ()):
            function = tool_call.get("function") if isinstance(tool_call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                function["arguments"] = _apply(function["arguments"], rules, direction="output",
                                               location=f"choices[{i}].message.tool_calls[{j}].arguments",
                                               events=events, where="the answer")


class StreamGuard:
    """Checks a stream's text as it goes, per choice.

    Each delta's text joins what is held for its choice; the part that can no longer change a
    match (all but the last `STREAM_HOLD_CHARS`, cut at a word start, never inside a match) is
    scanned, redacted and sent, the rest is held. A choice's `finish_reason` releases what is
    held. A block raises `GuardrailBlocked`, which the relay turns into the stream's error event.
    """

    def __init__(self, rules: tuple[CompiledRule, ...], *, events: list[dict], model: str) -> None:
        self.rules = rules
        self.events = events  # the pipeline's list, written with the request's record
        self.model = model  # of the last chunk (`finish`)
        self.held: dict[int, str] = {}
        self.sent: dict[int, int] = {}  # characters of each choice already released
        self.context: dict[int, str] = {}  # the end of what was released, as the scan sees it

    @classmethod
    def for_rules(cls, rules: RuleSet | None, *, events: list[dict], model: str) -> StreamGuard | None:
        """The guard of a stream under the output rules of `rules`; None when there are none."""
        output = rules.output if rules is not None else ()
        return cls(output, events=events, model=model) if output else None

    def chunk_check(self, chunk: dict) -> None:
        """Replace each delta's text with what may be sent now (maybe nothing)."""
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            delta = choice.get("delta")
            piece = delta.get("content") if isinstance(delta, dict) else None
            final = choice.get("finish_reason") is not None
            if not isinstance(piece, str) and not (final and self.held.get(index)):
                continue
            text = self.held.get(index, "") + (piece or "")
            if final or len(text) >= STREAM_HOLD_CHARS + STREAM_STEP_CHARS:
                released = self._release(index, text, final=final)
            else:
                self.held[index], released = text, ""
            if isinstance(delta, dict):
                delta["content"] = released
            else:
                choice["delta"] = {"content": released}

    def finish(self) -> dict | None:
        """A last chunk with whatever is still held (a stream that ended without finish_reason)."""
        choices = [
            {"index": index, "delta": {"content": self._release(index, text, final=True)}, "finish_reason": None}
            for index, text in list(self.held.items()) if text
        ]
        if not choices:
            return None
        return {"object": "chat.completion.chunk", "created": int(time.time()),
                "model": self.model, "choices": choices}

    def _release(self, index: int, text: str, *, final: bool) -> str:
        context = self.context.get(index, "")
        findings = [  # matches starting in the context were settled before
            Finding(f.rule, Match(f.match.kind, f.match.start - len(context), f.match.end - len(context)))
            for f in text_scan(context + text, self.rules)
            if f.match.start >= len(context)
        ]
        cut = len(text) if final else _cut(text)
        moved = True
        while moved:  # never cut inside a match (matches of different kinds may overlap)
            moved = False
            for finding in findings:
                if finding.match.start < cut < finding.match.end:
                    cut, moved = finding.match.start, True
        settled = [f for f in findings if f.match.end <= cut]
        offset = self.sent.get(index, 0)
        location = f"choices[{index}].delta.content"
        block = next((f for f in settled if f.rule.action == Action.BLOCK), None)
        if block is not None:
            self.events.append(_event(block, direction="output", location=location, text=text, offset=offset))
            self.held.pop(index, None)
            raise _blocked(block, where="the answer")
        self.events.extend(
            _event(f, direction="output", location=location, text=text, offset=offset) for f in settled
        )
        self.held[index] = text[cut:]
        self.sent[index] = offset + cut
        self.context[index] = (context + text[:cut])[-STREAM_CONTEXT_CHARS:]
        return text_redact(text[:cut], settled)


def _cut(text: str) -> int:
    """Where to split `text` into a part to send and a part to hold (see `StreamGuard`)."""
    limit = len(text) - STREAM_HOLD_CHARS
    if limit <= 0:
        return 0
    space = max(text.rfind(" ", 0, limit + 1), text.rfind("\n", 0, limit + 1))
    if space >= 0:
        return space + 1
    return limit if len(text) > STREAM_HOLD_MAX else 0
