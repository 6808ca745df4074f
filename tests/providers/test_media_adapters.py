"""The media endpoints' adapters (OpenAI-type, Azure, Cohere), through the client production
uses, against a scripted provider over real sockets (`upstream.py`): the exact request sent
(JSON, or the multipart upload) and the answer and units parsed back, in the vendors' documented
shapes: https://platform.openai.com/docs/api-reference/images, .../audio, .../moderations,
https://docs.cohere.com/reference/rerank, https://jina.ai/reranker/."""

from __future__ import annotations

import base64
import dataclasses
import io
import wave
import email.parser
import email.policy
import json
from decimal import Decimal

import pytest

from kernel.errors import InvalidRequest, ProviderError
from providers.adapters.anthropic import AnthropicAdapter
from providers.adapters.azure import AzureOpenAIAdapter
from providers.adapters.base import AudioUpload, Target, Units, Usage
from providers.adapters.cohere import CohereAdapter
from providers.adapters.gemini import GeminiAdapter
from providers.adapters.openai import OpenAIAdapter
from providers.adapters.tei import TEIAdapter
from tests.providers.upstream import UPSTREAM

OPENAI = Target(provider_id=1, provider_name="oa", wire_type="openai", api_base=f"{UPSTREAM.url}/v1",
                upstream_model="dall-e-3", api_key="sk-test")
COHERE = Target(provider_id=2, provider_name="co", wire_type="cohere", api_base=UPSTREAM.url,
                upstream_model="rerank-v3.5", api_key="co-test")
AZURE = Target(provider_id=3, provider_name="az", wire_type="azure", api_base=UPSTREAM.url,
               upstream_model="my-tts", api_key="az-test")
TEI = Target(provider_id=4, provider_name="tei", wire_type="tei", api_base=UPSTREAM.url,
             upstream_model="BAAI/bge-reranker-base", api_key="")
GEMINI = Target(provider_id=5, provider_name="gm", wire_type="gemini", api_base=UPSTREAM.url,
                upstream_model="imagen-4.0-generate-001", api_key="gm-test")
UPLOAD = AudioUpload(fields={"response_format": "verbose_json", "language": "en", "timestamp_granularities[]": ["word", "segment"]},
                     filename="talk.wav", content=b"RIFF....WAVEfmt audio bytes", content_type="audio/wav",
                     seconds=Decimal("12.5"))


def sent_json(route) -> dict:
    return json.loads(route.calls.last.request.content)


async def test_images_request_and_units(upstream, client):
    route = upstream.post(f"{UPSTREAM.url}/v1/images/generations").respond(200, json={
        "created": 1, "data": [{"url": "https://example.com/a.png", "revised_prompt": "a cat"}]})
    result = await OpenAIAdapter(client).images(
        {"model": "alias", "prompt": "a cat", "n": 1, "size": "1792x1024", "quality": "hd"}, OPENAI)
    assert sent_json(route) == {"model": "dall-e-3", "prompt": "a cat", "n": 1, "size": "1792x1024", "quality": "hd"}
    assert route.calls.last.request.headers["authorization"] == "Bearer sk-test"
    assert result.body["data"][0]["url"] == "https://example.com/a.png"
    assert result.units == Units(kind="image", count=Decimal(1), size="1792x1024", quality="hd")
    assert result.usage is None


async def test_gpt_image_tokens_are_usage(upstream, client):
    upstream.post(f"{UPSTREAM.url}/v1/images/generations").respond(200, json={
        "created": 1, "data": [{"b64_json": "AAAA"}, {"b64_json": "AAAA"}],
        "usage": {"input_tokens": 12, "output_tokens": 544, "total_tokens": 556}})
    result = await OpenAIAdapter(client).images({"model": "a", "prompt": "x", "n": 2}, OPENAI)
    assert result.usage == Usage(prompt_tokens=12, completion_tokens=544)
    assert result.units.count == 2


async def test_transcription_multipart_and_reported_seconds(upstream, client):
    route = upstream.post(f"{UPSTREAM.url}/v1/audio/transcriptions").respond(200, json={
        "task": "transcribe", "language": "english", "duration": 12.02, "text": "hello", "segments": []})
    result = await OpenAIAdapter(client).transcription(UPLOAD, OPENAI, translate=False)
    request = route.calls.last.request
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + request.headers["content-type"].encode() + b"\r\n\r\n" + request.content)
    parts = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
    assert parts["model"].get_payload(decode=True) == b"dall-e-3"
    assert parts["language"].get_payload(decode=True) == b"en"
    assert [p.get_payload(decode=True) for p in message.iter_parts()
            if p.get_param("name", header="content-disposition") == "timestamp_granularities[]"] == [b"word", b"segment"]
    assert parts["file"].get_filename() == "talk.wav"
    assert parts["file"].get_payload(decode=True) == UPLOAD.content
    assert result.body["text"] == "hello"
    assert result.units == Units(kind="audio_second", count=Decimal("12.020"))  # the provider's count


@pytest.mark.parametrize(("answer_format", "content_type"), [("srt", "application/x-subrip"), ("vtt", "text/vtt"),
                                                             ("text", "text/plain")])
async def test_transcription_as_text_bills_the_measured_seconds(upstream, client, answer_format, content_type):
    upstream.post(f"{UPSTREAM.url}/v1/audio/translations").respond(200, text="1\n00:00:00,000 --> 00:00:12,500\nhi\n")
    upload = AudioUpload(fields={"response_format": answer_format}, filename="a.wav", content=b"x",
                         content_type="audio/wav", seconds=Decimal("12.5"))
    result = await OpenAIAdapter(client).transcription(upload, OPENAI, translate=True)
    assert result.text.startswith("1\n00:00:00,000") and result.content_type == content_type
    assert result.units == Units(kind="audio_second", count=Decimal("12.500"))


async def test_gpt_4o_transcribe_tokens(upstream, client):
    upstream.post(f"{UPSTREAM.url}/v1/audio/transcriptions").respond(200, json={
        "text": "hi", "usage": {"type": "tokens", "input_tokens": 40, "output_tokens": 3, "total_tokens": 43}})
    upload = AudioUpload(fields={}, filename="a.wav", content=b"x", content_type="audio/wav", seconds=Decimal(3))
    result = await OpenAIAdapter(client).transcription(upload, OPENAI, translate=False)
    assert result.usage == Usage(prompt_tokens=40, completion_tokens=3)
    assert result.units.count == 3


async def test_speech_streams_the_providers_bytes(upstream, client):
    route = upstream.post(f"{UPSTREAM.url}/openai/deployments/my-tts/audio/speech").respond(
        200, headers={"content-type": "audio/mpeg"}, stream=[b"ID3", b"\xff\xfb" * 100, b"end"])
    result = await AzureOpenAIAdapter(client).speech({"model": "x", "input": "Hello!", "voice": "alloy"}, AZURE)
    assert result.content_type == "audio/mpeg"
    assert b"".join([piece async for piece in result.chunks]) == b"ID3" + b"\xff\xfb" * 100 + b"end"
    assert route.calls.last.request.headers["api-key"] == "az-test"
    assert "api-version=" in str(route.calls.last.request.url)
    assert sent_json(route) == {"model": "my-tts", "input": "Hello!", "voice": "alloy"}
    assert result.units == Units(kind="character", count=Decimal(6))


async def test_speech_error_before_the_body_raises_for_failover(upstream, client):
    upstream.post(f"{UPSTREAM.url}/v1/audio/speech").respond(503, json={"error": {"message": "busy"}})
    with pytest.raises(ProviderError) as error:
        await OpenAIAdapter(client).speech({"model": "x", "input": "hi", "voice": "alloy"}, OPENAI)
    assert error.value.retryable


async def test_moderation(upstream, client):
    answer = {"id": "modr-1", "model": "omni-moderation-latest", "results": [{"flagged": False, "categories": {}}]}
    route = upstream.post(f"{UPSTREAM.url}/v1/moderations").respond(200, json=answer)
    result = await OpenAIAdapter(client).moderations({"model": "m", "input": "hi"}, OPENAI)
    assert sent_json(route) == {"model": "dall-e-3", "input": "hi"}
    assert result.body == answer and result.units is None


async def test_cohere_rerank(upstream, client):
    route = upstream.post(f"{UPSTREAM.url}/v2/rerank").respond(200, json={
        "id": "r1", "results": [{"index": 1, "relevance_score": 0.9}, {"index": 0, "relevance_score": 0.1}],
        "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}}})
    result = await CohereAdapter(client).rerank(
        {"model": "a", "query": "q", "documents": ["d0", "d1"], "top_n": 2}, COHERE)
    assert sent_json(route) == {"model": "rerank-v3.5", "query": "q", "documents": ["d0", "d1"], "top_n": 2}
    assert result.body["results"] == [{"index": 1, "relevance_score": 0.9}, {"index": 0, "relevance_score": 0.1}]
    assert result.units == Units(kind="search", count=Decimal(1))


async def test_openai_compatible_rerank_jina_shape(upstream, client):
    route = upstream.post(f"{UPSTREAM.url}/v1/rerank").respond(200, json={
        "model": "jina-reranker-v2", "usage": {"total_tokens": 31},
        "results": [{"index": 0, "document": {"text": "d0"}, "relevance_score": 0.2},
                    {"index": 1, "document": {"text": "d1"}, "relevance_score": 0.7}]})
    documents = [f"d{i}" for i in range(150)]
    result = await OpenAIAdapter(client).rerank({"model": "a", "query": "q", "documents": documents}, OPENAI)
    assert sent_json(route) == {"model": "dall-e-3", "query": "q", "documents": documents}
    assert [r["index"] for r in result.body["results"]] == [1, 0]
    assert result.units == Units(kind="search", count=Decimal(2))  # 150 documents: two searches
    assert result.usage == Usage(prompt_tokens=31, completion_tokens=0)


async def test_rerank_answer_with_an_index_out_of_range_is_malformed(upstream, client):
    upstream.post(f"{UPSTREAM.url}/v2/rerank").respond(200, json={"results": [{"index": 5, "relevance_score": 1}]})
    with pytest.raises(ProviderError) as error:
        await CohereAdapter(client).rerank({"model": "a", "query": "q", "documents": ["d"]}, COHERE)
    assert error.value.error_class == "upstream_server"


async def test_tei_native_rerank(upstream, client):
    """TEI's `POST /rerank` (https://huggingface.github.io/text-embeddings-inference/): `texts`,
    a bare list of `{index, score}` back, in Cohere's shape with `top_n` kept by the gateway."""
    route = upstream.post(f"{UPSTREAM.url}/rerank").respond(200, json=[
        {"index": 2, "score": 0.91}, {"index": 0, "score": 0.3}, {"index": 1, "score": 0.02}])
    result = await TEIAdapter(client).rerank({"model": "a", "query": "q", "documents": ["d0", "d1", "d2"], "top_n": 2},
                                             TEI)
    assert sent_json(route) == {"query": "q", "texts": ["d0", "d1", "d2"], "raw_scores": False, "return_text": False}
    assert "authorization" not in route.calls.last.request.headers  # a TEI server without an API key
    assert result.body["results"] == [{"index": 2, "relevance_score": 0.91}, {"index": 0, "relevance_score": 0.3}]
    assert result.body["meta"]["billed_units"] == {"search_units": 1}
    assert result.units == Units(kind="search", count=Decimal(1)) and result.usage is None


async def test_tei_errors_and_malformed_answers(upstream, client):
    upstream.post(f"{UPSTREAM.url}/rerank").respond(429, json={"error": "Model is overloaded", "error_type": "Overloaded"})
    with pytest.raises(ProviderError) as error:
        await TEIAdapter(client).rerank({"model": "a", "query": "q", "documents": ["d"]}, TEI)
    assert (error.value.error_class, "Model is overloaded" in str(error.value)) == ("rate_limited", True)
    upstream.reset()
    upstream.post(f"{UPSTREAM.url}/rerank").respond(200, json={"results": [{"index": 0, "relevance_score": 1}]})
    with pytest.raises(ProviderError) as error:
        await TEIAdapter(client).rerank({"model": "a", "query": "q", "documents": ["d"]}, TEI)
    assert error.value.error_class == "upstream_server"


async def test_tei_embeddings_on_its_openai_route_and_nothing_else(upstream, client):
    route = upstream.post(f"{UPSTREAM.url}/v1/embeddings").respond(200, json={
        "object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}],
        "model": "bge", "usage": {"prompt_tokens": 2, "total_tokens": 2}})
    result = await TEIAdapter(client).embeddings({"model": "a", "input": "hi"}, TEI)
    assert route.called and result.usage == Usage(prompt_tokens=2, completion_tokens=0)
    for call in (TEIAdapter(client).chat({"messages": [{"role": "user", "content": "x"}]}, TEI),
                 TEIAdapter(client).images({"prompt": "x"}, TEI)):
        with pytest.raises(InvalidRequest) as refused:
            await call
        assert "does not serve" in refused.value.message


async def test_imagen_through_gemini_predict(upstream, client):
    """https://ai.google.dev/gemini-api/docs/imagen: `instances`/`parameters` out, each image's
    `bytesBase64Encoded` back as OpenAI's b64_json; a filtered prediction is not an image."""
    route = upstream.post(f"{UPSTREAM.url}/v1beta/models/imagen-4.0-generate-001:predict").respond(200, json={
        "predictions": [{"mimeType": "image/png", "bytesBase64Encoded": "iVBORw0K"},
                        {"raiFilteredReason": "filtered"}, {"mimeType": "image/png", "bytesBase64Encoded": "AAAA"}]})
    result = await GeminiAdapter(client).images(
        {"model": "alias", "prompt": "a cat", "n": 3, "size": "1792x1024", "quality": "hd"}, GEMINI)
    assert sent_json(route) == {"instances": [{"prompt": "a cat"}], "parameters": {"sampleCount": 3, "aspectRatio": "16:9"}}
    assert route.calls.last.request.headers["x-goog-api-key"] == "gm-test"
    assert [item["b64_json"] for item in result.body["data"]] == ["iVBORw0K", "AAAA"]
    assert result.units == Units(kind="image", count=Decimal(2), size="1792x1024", quality="hd")


async def test_imagen_all_filtered_or_not_an_imagen_model(upstream, client):
    upstream.post(f"{UPSTREAM.url}/v1beta/models/imagen-4.0-generate-001:predict").respond(200, json={})
    with pytest.raises(ProviderError) as error:
        await GeminiAdapter(client).images({"model": "a", "prompt": "x"}, GEMINI)
    assert error.value.error_class == "content_filtered"
    chat_model = dataclasses.replace(GEMINI, upstream_model="gemini-2.5-flash")
    with pytest.raises(InvalidRequest):
        await GeminiAdapter(client).images({"model": "a", "prompt": "x"}, chat_model)


async def test_gemini_tts_generate_content_audio(upstream, client):
    """https://ai.google.dev/gemini-api/docs/speech-generation: the AUDIO modality and a prebuilt
    voice out; the inline 24 kHz PCM back, as a WAV or as OpenAI's pcm; tokens as usage."""
    pcm = bytes(range(256)) * 4
    route = upstream.post(f"{UPSTREAM.url}/v1beta/models/gemini-2.5-flash-preview-tts:generateContent").respond(
        200, json={"candidates": [{"content": {"role": "model", "parts": [{"inlineData": {
            "mimeType": "audio/L16;codec=pcm;rate=24000", "data": base64.b64encode(pcm).decode()}}]},
            "finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 16,
                                                         "totalTokenCount": 20}})
    tts = dataclasses.replace(GEMINI, upstream_model="gemini-2.5-flash-preview-tts")
    result = await GeminiAdapter(client).speech({"model": "a", "input": "Hello there", "voice": "Kore"}, tts)
    assert sent_json(route) == {"contents": [{"role": "user", "parts": [{"text": "Hello there"}]}], "generationConfig": {
        "responseModalities": ["AUDIO"], "speechConfig": {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": "Kore"}}}}}
    wav_file = b"".join([chunk async for chunk in result.chunks])
    with wave.open(io.BytesIO(wav_file)) as audio:
        assert (audio.getframerate(), audio.getsampwidth(), audio.readframes(10**6)) == (24000, 2, pcm)
    assert result.content_type == "audio/wav"
    assert result.usage == Usage(prompt_tokens=4, completion_tokens=16)
    assert result.units == Units(kind="character", count=Decimal(11))
    raw = await GeminiAdapter(client).speech({"model": "a", "input": "Hi", "voice": "Puck", "response_format": "pcm"}, tts)
    assert b"".join([chunk async for chunk in raw.chunks]) == pcm and raw.content_type == "audio/pcm"


async def test_a_wire_format_without_the_endpoint_is_a_400(client):
    with pytest.raises(InvalidRequest) as error:
        await AnthropicAdapter(client).images({"prompt": "x"}, OPENAI)
    assert "does not serve image generation" in error.value.message
