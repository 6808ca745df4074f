"""End to end: images, audio, moderation (the official openai SDK) and rerank (Cohere's shape over
plain HTTP) through the gateway under uvicorn, against the fake provider as a real server.

Each is answered, recorded with its units and their cost, refused when the tenant's hard budget
cannot cover the request's worst case, and failed over to a second deployment when the first is
down (a provider on a closed port, tried first)."""

from __future__ import annotations

import base64
import io
import math
import wave
from decimal import Decimal

import httpx
import openai
import pytest

from tests.e2e.conftest import (
    Stack,
    database_create,
    database_drop,
    deployment_env,
    fake_start,
    gateway_start,
    manage,
)
from tests.conftest import stop_process

pytestmark = pytest.mark.e2e

MODELS = """
      - {{alias: dall-e-3{suffix}, upstream: dall-e-3, image_prices: {{"1024x1024": {{standard: 0.04, hd: 0.08}}}}}}
      - {{alias: dall-e-2{suffix}, upstream: dall-e-2, price_per_image: 0.02}}
      - {{alias: whisper-1{suffix}, upstream: whisper-1, price_per_audio_minute: 0.006}}
      - {{alias: tts-1{suffix}, upstream: tts-1, price_per_million_characters: 15}}
      - {{alias: omni-moderation-latest{suffix}, upstream: omni-moderation-latest}}
      - {{alias: jina-reranker{suffix}, upstream: jina-reranker-v2-base-multilingual, mode: rerank,
          price_per_thousand_searches: 2.0, input_price_per_million: 0.02}}
"""
CONFIG = """
providers:
  - name: down
    type: openai
    api_base: http://127.0.0.1:9/v1
    api_key: sk-e2e-down
    priority: 1
    models:{down}
  - name: fake
    type: openai
    api_base: http://127.0.0.1:{port}/v1
    api_key: sk-e2e-media
    models:{models}{ha}
  - name: fake-cohere
    type: cohere
    api_base: http://127.0.0.1:{port}
    api_key: co-e2e-media
    models:
      - {{alias: rerank-v3.5, price_per_thousand_searches: 2.0}}
  - name: fake-gemini
    type: gemini
    api_base: http://127.0.0.1:{port}
    api_key: gm-e2e-media
    models:
      - {{alias: imagen-4, upstream: imagen-4.0-generate-001, mode: image, price_per_image: 0.04}}
      - {{alias: gemini-tts, upstream: gemini-2.5-flash-preview-tts, mode: speech, input_price_per_million: 0.5,
          output_price_per_million: 10}}
  - name: fake-tei
    type: tei
    api_base: http://127.0.0.1:{port}
    models:
      - {{alias: bge-reranker, upstream: BAAI/bge-reranker-base, mode: rerank, price_per_thousand_searches: 2.0}}
tenants:
  - slug: acme
    name: Acme Corp
  - slug: frugal
    budget: {{amount_usd: 0.05, period: monthly, hard: true}}
"""
RECORD = ("SELECT endpoint, status, units, unit_kind, cost_usd, provider_name, http_status, attempts "
          "FROM accounting_usagerecord WHERE request_id = %s")


@pytest.fixture(scope="module")
def media_stack(tmp_path_factory):
    database_url, name = database_create()
    env = deployment_env(database_url, name)
    fake, port = fake_start(env)
    processes = [fake]
    try:
        manage(env, "migrate", "--noinput")
        config = tmp_path_factory.mktemp("media") / "gateway.yaml"
        config.write_text(CONFIG.format(
            port=port, models=MODELS.format(suffix=""), down=MODELS.format(suffix="-ha"),
            ha=MODELS.format(suffix="-ha"),
        ))
        manage(env, "import_config", str(config))
        keys = {slug: manage(env, "create_api_key", slug, "--name", "e2e").strip().splitlines()[-1]
                for slug in ("acme", "frugal")}
        log_path = tmp_path_factory.mktemp("logs") / "gateway.log"
        gateway, base_url = gateway_start(env, log_path)
        processes.append(gateway)
        stack = Stack(base_url=base_url, api_key=keys["acme"], database_url=database_url, log_path=log_path)
        stack.frugal_key = keys["frugal"]
        yield stack
    finally:
        for process in processes:
            stop_process(process)
        database_drop(name)


@pytest.fixture(scope="module")
def client(media_stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{media_stack.base_url}/v1", api_key=media_stack.api_key, max_retries=0)


def wav_bytes(seconds: float, rate: int = 8000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(rate)
        audio.writeframes(bytes(int(seconds * rate) * 2))
    return out.getvalue()


def record_of(stack, request_id: str):
    [row] = stack.wait_for_rows(RECORD, (request_id,), 1)
    return row


def test_image_generation_url_and_b64_priced_by_size_and_quality(client, media_stack):
    raw = client.images.with_raw_response.generate(model="dall-e-3", prompt="a lighthouse at dusk",
                                                   size="1024x1024", quality="hd")
    images = raw.parse()
    [image] = images.data
    assert image.url and image.revised_prompt == "a lighthouse at dusk"
    png = httpx.get(image.url, timeout=10)  # the fake serves its own image
    assert png.headers["content-type"] == "image/png" and png.content.startswith(b"\x89PNG")
    endpoint, status, units, kind, cost, provider, *_ = record_of(media_stack, raw.headers["x-gateway-request-id"])
    assert (endpoint, status, units, kind, provider) == ("images.generations", "success", 1, "image", "fake")
    assert cost == Decimal("0.08")

    raw = client.images.with_raw_response.generate(model="dall-e-2", prompt="two cats", n=2,
                                                   size="256x256", response_format="b64_json")
    images = raw.parse()
    assert len(images.data) == 2
    assert base64.b64decode(images.data[0].b64_json).startswith(b"\x89PNG")
    _, _, units, kind, cost, *_ = record_of(media_stack, raw.headers["x-gateway-request-id"])
    assert (units, kind, cost) == (2, "image", Decimal("0.04"))


def test_imagen_through_gemini(client, media_stack):
    """Gemini's Imagen behind OpenAI's images endpoint: b64_json PNGs, billed per image."""
    raw = client.images.with_raw_response.generate(model="imagen-4", prompt="a lighthouse", n=2, size="1792x1024",
                                                   response_format="b64_json")
    images = raw.parse()
    assert len(images.data) == 2 and base64.b64decode(images.data[1].b64_json).startswith(b"\x89PNG")
    endpoint, status, units, kind, cost, provider, *_ = record_of(media_stack, raw.headers["x-gateway-request-id"])
    assert (endpoint, status, units, kind, cost, provider) == (
        "images.generations", "success", 2, "image", Decimal("0.08"), "fake-gemini")
    for bad, param in (({"response_format": "url"}, "response_format"), ({"n": 5}, "n"), ({"size": "1536x1024"}, "size")):
        with pytest.raises(openai.BadRequestError) as error:
            client.images.generate(model="imagen-4", prompt="x", **bad)
        assert error.value.body["param"] == param and "imagen" in error.value.body["message"]


def test_image_bad_input_is_a_clear_400(client):
    with pytest.raises(openai.BadRequestError) as error:
        client.images.generate(model="dall-e-3", prompt="x", n=2)
    assert error.value.body["param"] == "n" and "at most 1" in error.value.body["message"]
    with pytest.raises(openai.BadRequestError) as error:
        client.images.generate(model="dall-e-2", prompt="x", size="999x999")
    assert error.value.body["param"] == "size"
    with pytest.raises(openai.BadRequestError) as error:
        client.images.generate(model="whisper-1", prompt="x")
    assert "/v1/audio/transcriptions" in error.value.body["message"]


@pytest.mark.parametrize("answer_format", ["json", "verbose_json", "text", "srt", "vtt"])
def test_transcription_formats_billed_by_the_audio_minute(client, media_stack, answer_format):
    raw = client.audio.transcriptions.with_raw_response.create(
        model="whisper-1", file=("talk.wav", wav_bytes(30.0), "audio/wav"), response_format=answer_format)
    answer = raw.parse()
    text = answer if isinstance(answer, str) else answer.text
    assert "fake transcription of 30.0 seconds" in text
    if answer_format == "srt":
        assert "00:00:00,000 --> 00:00:30,000" in text
    if answer_format == "vtt":
        assert text.startswith("WEBVTT")
    if answer_format == "verbose_json":
        assert answer.duration == 30.0
    endpoint, status, units, kind, cost, *_ = record_of(media_stack, raw.headers["x-gateway-request-id"])
    assert (endpoint, status, units, kind) == ("audio.transcriptions", "success", 30, "audio_second")
    assert cost == Decimal("0.003")  # half a minute at 0.006


def test_translation(client, media_stack):
    raw = client.audio.translations.with_raw_response.create(
        model="whisper-1", file=("talk.wav", wav_bytes(12.0), "audio/wav"))
    assert "fake translation" in raw.parse().text
    endpoint, _, units, kind, cost, *_ = record_of(media_stack, raw.headers["x-gateway-request-id"])
    assert (endpoint, units, kind, cost) == ("audio.translations", 12, "audio_second", Decimal("0.0012"))


def test_audio_bad_input(client, media_stack):
    with pytest.raises(openai.BadRequestError) as error:
        client.audio.transcriptions.create(model="whisper-1", file=("noise.wav", b"not audio at all" * 10, "audio/wav"))
    assert error.value.body["code"] == "invalid_audio"
    response = httpx.post(f"{media_stack.base_url}/v1/audio/transcriptions", json={"model": "whisper-1"},
                          headers={"authorization": f"Bearer {media_stack.api_key}"}, timeout=10)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_content_type"


def test_upload_over_the_limit_is_refused_before_it_is_stored(media_stack):
    big = b"\0" * (25 * 1024 * 1024 + 1)
    response = httpx.post(
        f"{media_stack.base_url}/v1/audio/transcriptions", files={"file": ("big.wav", big, "audio/wav")},
        data={"model": "whisper-1"}, headers={"authorization": f"Bearer {media_stack.api_key}"}, timeout=60,
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_speech_streams_audio_and_bills_characters(client, media_stack):
    text = "Hello from the gateway. " * 10
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="alloy", input=text,
                                                            response_format="wav") as response:
        assert response.headers["content-type"] == "audio/wav"
        pieces = list(response.iter_bytes(4096))
        request_id = response.headers["x-gateway-request-id"]
    audio = b"".join(pieces)
    with wave.open(io.BytesIO(audio)) as parsed:
        assert parsed.getnframes() / parsed.getframerate() == pytest.approx(len(text) * 0.06, rel=0.01)
    endpoint, status, units, kind, cost, *_ = record_of(media_stack, request_id)
    assert (endpoint, status, units, kind) == ("audio.speech", "success", len(text), "character")
    assert cost == Decimal(len(text)) * 15 / 1_000_000

    with pytest.raises(openai.BadRequestError) as error:
        client.audio.speech.create(model="tts-1", voice="robot", input="hi")
    assert error.value.body["param"] == "voice"


def test_gemini_speech_as_wav_billed_in_tokens(client, media_stack):
    """Gemini TTS behind OpenAI's speech endpoint: its PCM as a WAV, billed by its tokens."""
    text = "Hello from Gemini."
    with client.audio.speech.with_streaming_response.create(model="gemini-tts", voice="Kore", input=text) as response:
        assert response.headers["content-type"] == "audio/wav"
        audio = response.read()
        request_id = response.headers["x-gateway-request-id"]
    with wave.open(io.BytesIO(audio)) as parsed:
        assert parsed.getframerate() == 24000
        assert parsed.getnframes() / parsed.getframerate() == pytest.approx(len(text) * 0.06, rel=0.01)
    endpoint, status, units, kind, cost, provider, *_ = record_of(media_stack, request_id)
    assert (endpoint, status, units, kind, provider) == ("audio.speech", "success", len(text), "character", "fake-gemini")
    [(prompt_tokens, completion_tokens)] = media_stack.wait_for_rows(
        "SELECT prompt_tokens, completion_tokens FROM accounting_usagerecord WHERE request_id = %s", (request_id,), 1)
    assert completion_tokens == math.ceil(len(text) * 0.06 * 32) and prompt_tokens > 0
    assert cost == (Decimal(prompt_tokens) * Decimal("0.5") + Decimal(completion_tokens) * 10) / 1_000_000

    for bad, param in (({"voice": "alloy"}, "voice"), ({"voice": "Kore", "response_format": "mp3"}, "response_format")):
        with pytest.raises(openai.BadRequestError) as error:
            client.audio.speech.create(model="gemini-tts", input="hi", **bad)
        assert error.value.body["param"] == param


def test_moderation(client, media_stack):
    raw = client.moderations.with_raw_response.create(model="omni-moderation-latest",
                                                      input=["have a nice day", "I will kill the process"])
    moderation = raw.parse()
    assert [result.flagged for result in moderation.results] == [False, True]
    assert moderation.results[1].categories.violence is True
    endpoint, status, units, kind, cost, *_ = record_of(media_stack, raw.headers["x-gateway-request-id"])
    assert (endpoint, status, kind, cost) == ("moderations", "success", "", Decimal("0"))


def _rerank(stack, path: str, body: dict, key: str | None = None) -> httpx.Response:
    return httpx.post(f"{stack.base_url}{path}", json=body, timeout=10,
                      headers={"authorization": f"Bearer {key or stack.api_key}"})


DOCUMENTS = ["Berlin is the capital of Germany.", "Paris is the capital of France.", "Bananas are yellow."]


@pytest.mark.parametrize(("path", "model", "provider"), [
    ("/v2/rerank", "rerank-v3.5", "fake-cohere"), ("/v1/rerank", "jina-reranker", "fake"),
    ("/v2/rerank", "bge-reranker", "fake-tei"),  # TEI's native /rerank, answered in Cohere's shape
])
def test_rerank_in_cohere_shape(media_stack, path, model, provider):
    response = _rerank(media_stack, path, {"model": model, "query": "capital of France", "documents": DOCUMENTS,
                                           "top_n": 2, "return_documents": path == "/v1/rerank"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [result["index"] for result in body["results"]] == [1, 0]
    assert 0 <= body["results"][1]["relevance_score"] <= body["results"][0]["relevance_score"] <= 1
    assert body["meta"]["billed_units"]["search_units"] == 1
    if path == "/v1/rerank":
        assert body["results"][0]["document"] == {"text": DOCUMENTS[1]}
    endpoint, status, units, kind, cost, served_by, *_ = record_of(
        media_stack, response.headers["x-gateway-request-id"])
    assert (endpoint, status, units, kind, served_by) == ("rerank", "success", 1, "search", provider)
    assert cost >= Decimal("0.002")  # one search at 2.00 a thousand (and Jina's tokens)


def test_rerank_errors_are_cohere_shaped(media_stack):
    for body, param in (({"model": "rerank-v3.5", "query": "", "documents": DOCUMENTS}, "query"),
                        ({"model": "rerank-v3.5", "query": "q", "documents": []}, "documents")):
        response = _rerank(media_stack, "/v2/rerank", body)
        assert response.status_code == 400
        assert set(response.json()) == {"id", "message"} and param in response.json()["message"]


def test_refused_when_the_budget_cannot_cover_the_worst_case(media_stack):
    sdk = openai.OpenAI(base_url=f"{media_stack.base_url}/v1", api_key=media_stack.frugal_key, max_retries=0)
    with pytest.raises(openai.RateLimitError) as error:  # 3 images at 0.02: 0.06 > 0.05
        sdk.images.generate(model="dall-e-2", prompt="x", n=3, size="256x256")
    assert error.value.body["code"] == "budget_exceeded"
    assert len(sdk.images.generate(model="dall-e-2", prompt="x", n=2, size="256x256").data) == 2
    with pytest.raises(openai.RateLimitError):  # 10 minutes at 0.006: 0.06 > what is left
        sdk.audio.transcriptions.create(model="whisper-1", file=("long.wav", wav_bytes(600.0, rate=1000), "audio/wav"))
    response = _rerank(media_stack, "/v2/rerank", {"model": "rerank-v3.5", "query": "q",
                                                   "documents": ["d"] * 1000}, key=media_stack.frugal_key)
    assert response.status_code == 429 and "message" in response.json()  # 10 searches: 0.02 > 0.01 left


@pytest.mark.parametrize("call", ["image", "transcription", "speech", "moderation", "rerank"])
def test_fails_over_to_a_second_deployment(client, media_stack, call):
    if call == "image":
        raw = client.images.with_raw_response.generate(model="dall-e-2-ha", prompt="x", size="256x256")
    elif call == "transcription":
        raw = client.audio.transcriptions.with_raw_response.create(
            model="whisper-1-ha", file=("a.wav", wav_bytes(1.0), "audio/wav"))
    elif call == "speech":
        raw = client.audio.speech.with_raw_response.create(model="tts-1-ha", voice="nova", input="hello")
    elif call == "moderation":
        raw = client.moderations.with_raw_response.create(model="omni-moderation-latest-ha", input="hello")
    else:
        raw = _rerank(media_stack, "/v1/rerank", {"model": "jina-reranker-ha", "query": "q", "documents": ["a"]})
    assert raw.status_code == 200
    assert raw.headers["x-gateway-provider"] == "fake"
    *_, provider, http_status, attempts = record_of(media_stack, raw.headers["x-gateway-request-id"])
    assert provider == "fake" and http_status == 200
    assert attempts[0]["provider"] == "down" and attempts[0]["status"] in ("error", "skipped")
    assert attempts[-1]["provider"] == "fake" and attempts[-1]["status"] == "success"
