"""The stream guard on its own: however a text is cut into chunks, the client gets what a finished
answer would have been redacted to, and a block stops before the match is sent."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardrails.checks import GuardrailBlocked, StreamGuard, text_redact, text_scan
from guardrails.selectors import CompiledRule, RuleSet
from routing.call import Call

REDACT = tuple(
    CompiledRule(id=i, kind=kind, direction="output", action="redact", label="")
    for i, kind in enumerate(["pii_email", "pii_phone", "pii_card", "pii_iban", "pii_national_id"])
)
PARTS = st.sampled_from([
    "Hello there, ", "jane.doe@example.com", " call +44 20 7946 0958", " or (415) 555-0132. ",
    "Card 4111 1111 1111 1111 ", "IBAN DE89 3704 0044 0532 0130 00 ", "in 2024 we sold 12,345 units. ",
    "SSN 123-45-6789. ", "word ", "\n", "version 3.11.4 ",
])


def streamed(text: str, cuts: list[int], rules=REDACT) -> tuple[str, Call]:
    call = Call(endpoint="chat.completions")
    call.guard = RuleSet(output=rules)
    guard = StreamGuard.for_rules(call.guard, events=call.guard_events, model=call.requested_model)
    bounds = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    out = []
    for start, end in zip(bounds, bounds[1:]):
        chunk = {"choices": [{"index": 0, "delta": {"content": text[start:end]}, "finish_reason": None}]}
        guard.chunk_check(chunk)
        out.append(chunk["choices"][0]["delta"]["content"])
    last = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    guard.chunk_check(last)
    out.append(last["choices"][0]["delta"].get("content") or "")
    return "".join(out), call


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(PARTS, min_size=1, max_size=25), cuts=st.lists(st.integers(0, 10_000), max_size=80))
def test_any_chunking_gives_the_same_redaction_as_the_whole_answer(parts, cuts):
    text = "".join(parts)
    expected = text_redact(text, text_scan(text, REDACT))
    result, call = streamed(text, cuts)
    assert result == expected
    assert len(call.guard_events) == len(text_scan(text, REDACT))


def test_text_is_held_back_only_a_little():
    text = "word " * 100
    call = Call(endpoint="chat.completions")
    call.guard = RuleSet(output=REDACT)
    guard = StreamGuard.for_rules(call.guard, events=call.guard_events, model=call.requested_model)
    released = 0
    for i in range(0, len(text), 4):
        chunk = {"choices": [{"index": 0, "delta": {"content": text[i:i + 4]}, "finish_reason": None}]}
        guard.chunk_check(chunk)
        released += len(chunk["choices"][0]["delta"]["content"])
        assert i + 4 - released <= 64 + 32 + 4


def test_a_block_raises_before_any_part_of_the_match_is_released():
    rules = (CompiledRule(id=1, kind="pii_card", direction="output", action="block", label=""),)
    text = ("A long enough opening sentence to be released first, surely, because it goes on and on "
            "for well over a hundred characters. Card 4111 1111 1111 1111 tail")
    with pytest.raises(GuardrailBlocked):
        streamed(text, list(range(0, len(text), 3)), rules=rules)
    call = Call(endpoint="chat.completions")
    call.guard = RuleSet(output=rules)
    guard = StreamGuard.for_rules(call.guard, events=call.guard_events, model=call.requested_model)
    sent = ""
    with pytest.raises(GuardrailBlocked):
        for i in range(0, len(text), 3):
            chunk = {"choices": [{"index": 0, "delta": {"content": text[i:i + 3]}, "finish_reason": None}]}
            guard.chunk_check(chunk)
            sent += chunk["choices"][0]["delta"]["content"]
        guard.chunk_check({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    assert sent and "4111" not in sent and text.startswith(sent)


def test_no_rules_means_no_guard():
    call = Call(endpoint="chat.completions")
    call.guard = RuleSet()
    assert StreamGuard.for_rules(call.guard, events=call.guard_events, model=call.requested_model) is None
