"""The clients people build on, against a real gateway: LangChain's `ChatOpenAI` on the chat API
(its Responses API mode is in test_responses_sdk.py) and LlamaIndex's `OpenAILike` LLM, each
answering, streaming and recorded as the gateway records any request, on the chat API and (LlamaIndex's
completion model) on the legacy completions API."""

from __future__ import annotations

import pytest
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from llama_index.core.llms import ChatMessage
from llama_index.llms.openai_like import OpenAILike

pytestmark = pytest.mark.e2e

RECORD = "SELECT endpoint, stream, status, completion_tokens FROM accounting_usagerecord WHERE response_id = %s"


@tool
def get_weather(city: str) -> str:
    """Current weather for a city."""
    return "18 C"


def test_langchain_chat_openai_answers_streams_and_calls_a_tool(stack):
    def chat(**options) -> ChatOpenAI:
        return ChatOpenAI(model="gpt-4o-mini", base_url=f"{stack.base_url}/v1", api_key=stack.api_key,
                          max_retries=0, **options)

    answer = chat().invoke("[[fake chunks=6]] Say hello")
    assert answer.content and answer.usage_metadata["output_tokens"] == 6
    [row] = stack.wait_for_rows(RECORD, (answer.response_metadata["id"],), 1)
    assert row == ("chat.completions", False, "success", 6)

    chunks = list(chat(streaming=True, stream_usage=True).stream("[[fake chunks=8]] Stream hello"))
    assert len([c for c in chunks if c.content]) == 8
    streamed = sum(chunks[1:], chunks[0])
    assert streamed.usage_metadata["output_tokens"] == 8

    message = chat().bind_tools([get_weather], tool_choice="get_weather").invoke("Weather in Paris?")
    [call] = message.tool_calls
    assert call["name"] == "get_weather" and call["args"]["city"]


def test_llamaindex_openai_like_chats_and_streams(stack):
    llm = OpenAILike(model="gpt-4o-mini", api_base=f"{stack.base_url}/v1", api_key=stack.api_key,
                     is_chat_model=True, max_retries=0)

    reply = llm.chat([ChatMessage(role="user", content="[[fake chunks=5]] Say hello")])
    assert reply.message.content
    [row] = stack.wait_for_rows(RECORD, (reply.raw.id,), 1)
    assert row == ("chat.completions", False, "success", 5)

    pieces = [chunk.delta for chunk in llm.stream_chat([ChatMessage(role="user", content="[[fake chunks=7]] Stream")])]
    assert len([p for p in pieces if p]) == 7 and "".join(pieces).strip()


def test_llamaindex_openai_like_completes_on_the_legacy_completions_api(stack):
    llm = OpenAILike(model="gpt-4o-mini", api_base=f"{stack.base_url}/v1", api_key=stack.api_key,
                     is_chat_model=False, max_retries=0)

    answer = llm.complete("[[fake chunks=4]] Say hello")
    assert answer.text
    [row] = stack.wait_for_rows(RECORD, (answer.raw.id,), 1)
    assert row == ("completions", False, "success", 4)
    assert "".join(chunk.delta for chunk in llm.stream_complete("[[fake chunks=3]] Stream"))
