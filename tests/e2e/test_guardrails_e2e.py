"""End to end: guardrails in the gateway under uvicorn, with the official openai SDK over real HTTP.

The policy is written to the database by another process (as an operator's admin on another
replica would), so the gateway only sees it when its rule cache expires
(`GATEWAY_CONFIG_CACHE_SECONDS`, 1 s): the test polls for it with a deadline.
Everything here belongs to a tenant of its own, so the session's other e2e tests are unaffected.
"""

from __future__ import annotations

import time

import openai
import psycopg
import pytest

from tests.e2e.conftest import deployment_env, manage

pytestmark = pytest.mark.e2e

CARD = "4111 1111 1111 1111"


@pytest.fixture(scope="module")
def guarded(stack) -> openai.OpenAI:
    """A tenant 'guarded' whose policy redacts emails (both ways) and blocks cards in answers."""
    env = deployment_env(stack.database_url, "guardrails")
    manage(env, "create_tenant", "guarded", "--name", "Guarded")
    raw_key = manage(env, "create_api_key", "guarded", "--name", "e2e").strip().splitlines()[-1]
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        [(tenant_id,)] = conn.execute("SELECT id FROM accounting_tenant WHERE slug = 'guarded'").fetchall()
        [(policy_id,)] = conn.execute(
            "INSERT INTO guardrails_guardrailpolicy (tenant_id, name, enabled, inherit_default, created_at, updated_at)"
            " VALUES (%s, 'e2e', true, true, now(), now()) RETURNING id", (tenant_id,)).fetchall()
        for kind, direction, action in (("pii_email", "both", "redact"), ("pii_card", "output", "block")):
            conn.execute(
                "INSERT INTO guardrails_guardrailrule (policy_id, kind, direction, action, pattern, label, enabled)"
                " VALUES (%s, %s, %s, %s, '', '', true)", (policy_id, kind, direction, action))
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=raw_key, max_retries=0)


def _echo(client: openai.OpenAI, text: str) -> str:
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"[[fake echo]] {text}"}])
    return completion.choices[0].message.content


def test_a_policy_saved_elsewhere_applies_within_the_cache_interval_and_redacts(guarded):
    deadline = time.monotonic() + 10
    while (answer := _echo(guarded, "write to jane.doe@example.com")) != "write to [REDACTED:EMAIL]":
        assert time.monotonic() < deadline, answer
        time.sleep(0.2)


def test_a_streamed_answer_blocked_mid_way_raises_in_the_sdk_and_is_recorded(guarded, stack):
    test_a_policy_saved_elsewhere_applies_within_the_cache_interval_and_redacts(guarded)
    lead = "This first sentence is long enough to be streamed to the client before the card shows up. "
    stream = guarded.chat.completions.create(
        model="gpt-4o-mini", stream=True,
        messages=[{"role": "user", "content": f"[[fake echo]] {lead}Card: {CARD} thanks."}])
    received, response_id = "", None
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            response_id = chunk.id
            if chunk.choices:
                received += chunk.choices[0].delta.content or ""
    assert "guardrail" in str(caught.value.message) and "pii_card" in str(caught.value.message)
    assert received and lead.startswith(received) and "4111" not in received
    [(status, error_class, stream_flag, completion_tokens)] = stack.wait_for_rows(
        "SELECT status, error_class, stream, completion_tokens FROM accounting_usagerecord WHERE response_id = %s",
        (response_id,), 1)
    assert (status, error_class, stream_flag) == ("error", "guardrail_blocked", True) and completion_tokens > 0
    events = stack.wait_for_rows(
        "SELECT kind, action, direction, snippet FROM guardrails_guardrailevent WHERE response_id = %s",
        (response_id,), 1)
    assert events == [("pii_card", "block", "output", "9999 9999 9999 9999")]
