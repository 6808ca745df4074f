"""The fake provider's media endpoints in-process (`build_app()` under httpx.ASGITransport):
OpenAI's images, audio and moderation shapes, Cohere's rerank, deterministic from the request
(providers/fake/media.py; docs/fake-provider.md)."""

from __future__ import annotations

import base64
import io
import wave

import httpx
import pytest

from providers.fake import build_app

AUTH = {"authorization": "Bearer sk-test"}


@pytest.fixture
async def fake():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app()), base_url="http://fake",
                                 headers=AUTH) as client:
        yield client


def wav(seconds: float, rate: int = 8000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(rate)
        audio.writeframes(bytes(int(seconds * rate) * 2))
    return out.getvalue()


async def test_images_url_served_by_the_fake_and_b64(fake):
    answer = (await fake.post("/v1/images/generations", json={"model": "dall-e-2", "prompt": "a cat", "n": 2,
                                                             "size": "256x256"})).json()
    assert len(answer["data"]) == 2 and answer["data"][0]["url"] != answer["data"][1]["url"]
    png = await fake.get(answer["data"][0]["url"].removeprefix("http://fake"))
    assert png.headers["content-type"] == "image/png" and png.content.startswith(b"\x89PNG\r\n\x1a\n")
    again = (await fake.post("/v1/images/generations", json={"model": "dall-e-2", "prompt": "a cat", "n": 2,
                                                            "size": "256x256", "response_format": "b64_json"})).json()
    assert base64.b64decode(again["data"][0]["b64_json"]) == png.content  # the same image, deterministic
    tokens = (await fake.post("/v1/images/generations", json={"model": "gpt-image-1", "prompt": "x"})).json()
    assert "b64_json" in tokens["data"][0] and tokens["usage"]["output_tokens"] == 272


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "dall-e-3", "prompt": "x", "n": 2}, "n"),
    ({"model": "dall-e-3", "prompt": "x", "size": "256x256"}, "size"),
    ({"model": "dall-e-3"}, "prompt"),
])
async def test_images_bad_input(fake, body, param):
    response = await fake.post("/v1/images/generations", json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == param


@pytest.mark.parametrize(("answer_format", "expected"), [
    ("json", '{"text":"The fake transcription of 3.5 seconds of audio.","usage":{"type":"duration","seconds":4}}'),
    ("text", "The fake transcription of 3.5 seconds of audio.\n"),
    ("srt", "1\n00:00:00,000 --> 00:00:03,500\nThe fake transcription of 3.5 seconds of audio.\n\n"),
    ("vtt", "WEBVTT\n\n00:00:00.000 --> 00:00:03.500\nThe fake transcription of 3.5 seconds of audio.\n\n"),
])
async def test_transcription_formats(fake, answer_format, expected):
    response = await fake.post("/v1/audio/transcriptions", data={"model": "whisper-1", "response_format": answer_format},
                               files={"file": ("a.wav", wav(3.5), "audio/wav")})
    assert response.status_code == 200 and response.text == expected


async def test_transcription_verbose_and_translation(fake):
    verbose = (await fake.post("/v1/audio/translations", data={"model": "whisper-1", "response_format": "verbose_json"},
                               files={"file": ("a.wav", wav(2.0), "audio/wav")})).json()
    assert (verbose["task"], verbose["duration"]) == ("translate", 2.0) and verbose["segments"][0]["end"] == 2.0
    bad = await fake.post("/v1/audio/transcriptions", data={"model": "whisper-1"},
                          files={"file": ("a.mp3", b"ID3 not a wav", "audio/mpeg")})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "file"


@pytest.mark.parametrize(("answer_format", "content_type"), [("mp3", "audio/mpeg"), ("wav", "audio/wav"),
                                                             ("pcm", "audio/pcm"), ("opus", "audio/opus")])
async def test_speech(fake, answer_format, content_type):
    response = await fake.post("/v1/audio/speech", json={"model": "tts-1", "input": "x" * 50, "voice": "nova",
                                                         "response_format": answer_format})
    assert response.status_code == 200 and response.headers["content-type"] == content_type
    if answer_format == "wav":
        with wave.open(io.BytesIO(response.content)) as audio:
            assert audio.getnframes() / audio.getframerate() == pytest.approx(3.0)
    if answer_format == "pcm":
        assert len(response.content) == 3 * 24000 * 2
    voice = await fake.post("/v1/audio/speech", json={"model": "tts-1", "input": "x", "voice": "robot"})
    assert voice.status_code == 400 and voice.json()["error"]["param"] == "voice"


async def test_moderation(fake):
    answer = (await fake.post("/v1/moderations", json={"input": ["lovely day", "I hate Mondays"]})).json()
    assert answer["id"].startswith("modr-") and answer["model"] == "omni-moderation-latest"
    assert [r["flagged"] for r in answer["results"]] == [False, True]
    assert answer["results"][1]["categories"]["hate"] is True and len(answer["results"][1]["category_scores"]) == 13


async def test_rerank_v1_and_v2(fake):
    documents = ["The sky is blue.", "Paris is the capital of France.", "Capital gains tax."]
    v2 = (await fake.post("/v2/rerank", json={"model": "rerank-v3.5", "query": "capital of France",
                                              "documents": documents, "top_n": 2})).json()
    assert [r["index"] for r in v2["results"]] == [1, 2]
    assert v2["meta"]["billed_units"]["search_units"] == 1 and "usage" not in v2
    v1 = (await fake.post("/v1/rerank", json={"model": "jina-reranker-v2", "query": "capital of France",
                                              "documents": [{"text": d} for d in documents] * 40,
                                              "return_documents": True})).json()
    assert v1["results"][0]["document"]["text"] == documents[1]
    assert v1["meta"]["billed_units"]["search_units"] == 2 and v1["usage"]["total_tokens"] > 0
    empty = await fake.post("/v2/rerank", json={"model": "rerank-v3.5", "query": "q", "documents": []})
    assert empty.status_code == 400 and "documents" in empty.json()["message"]


async def test_tei_native_rerank(fake):
    """TEI's `POST /rerank`: a bare list of `{index, score}`, best first; logits with `raw_scores`;
    its own error object."""
    texts = ["The sky is blue.", "Paris is the capital of France.", "Capital gains tax."]
    answer = (await fake.post("/rerank", json={"query": "capital of France", "texts": texts})).json()
    assert [item["index"] for item in answer] == [1, 2, 0] and set(answer[0]) == {"index", "score"}
    assert 0 <= answer[-1]["score"] <= answer[0]["score"] <= 1
    raw = (await fake.post("/rerank", json={"query": "capital of France", "texts": texts, "raw_scores": True,
                                            "return_text": True})).json()
    assert raw[0]["text"] == texts[1] and raw[0]["score"] > 0 > raw[-1]["score"]
    empty = await fake.post("/rerank", json={"query": "q", "texts": []})
    assert (empty.status_code, empty.json()) == (400, {"error": "`query` and `texts` cannot be empty",
                                                       "error_type": "Empty"})
    assert (await fake.post("/rerank", json={"query": "q"})).status_code == 422


async def test_imagen_predict(fake):
    """Imagen through the Gemini API: `bytesBase64Encoded` PNGs, `sampleCount` of them; Google's
    errors for a bad count or aspect ratio, and for a model that is not Imagen."""
    headers = {"x-goog-api-key": "gm"}
    path = "/v1beta/models/imagen-4.0-generate-001:predict"
    answer = await fake.post(path, headers=headers, json={"instances": [{"prompt": "a cat"}],
                                                          "parameters": {"sampleCount": 2, "aspectRatio": "16:9"}})
    predictions = answer.json()["predictions"]
    assert len(predictions) == 2 and predictions[0]["mimeType"] == "image/png"
    assert base64.b64decode(predictions[0]["bytesBase64Encoded"]).startswith(b"\x89PNG")
    assert len((await fake.post(path, headers=headers, json={"instances": [{"prompt": "x"}]})).json()["predictions"]) == 4
    for parameters in ({"sampleCount": 5}, {"aspectRatio": "3:2"}, {"size": "1024x1024"}):
        refused = await fake.post(path, headers=headers, json={"instances": [{"prompt": "x"}], "parameters": parameters})
        assert refused.status_code == 400 and refused.json()["error"]["status"] == "INVALID_ARGUMENT"
    chat = await fake.post("/v1beta/models/gemini-2.5-flash:predict", headers=headers,
                           json={"instances": [{"prompt": "x"}]})
    assert chat.status_code == 404


async def test_gemini_tts(fake):
    """A Gemini TTS model's generateContent: 24 kHz PCM inline, audio tokens in usageMetadata;
    Google's 400s for a wrong voice or a text modality."""
    headers = {"x-goog-api-key": "gm"}
    path = "/v1beta/models/gemini-2.5-flash-preview-tts:generateContent"
    config = {"responseModalities": ["AUDIO"], "speechConfig": {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": "Puck"}}}}
    answer = (await fake.post(path, headers=headers, json={"contents": [{"parts": [{"text": "Hello there"}]}],
                                                          "generationConfig": config})).json()
    [part] = answer["candidates"][0]["content"]["parts"]
    assert part["inlineData"]["mimeType"] == "audio/L16;codec=pcm;rate=24000"
    pcm = base64.b64decode(part["inlineData"]["data"])
    assert len(pcm) == int(11 * 0.06 * 24000) * 2  # the fake's 0.06 s a character
    assert answer["usageMetadata"]["candidatesTokenCount"] == 22  # 0.66 s at 32 tokens a second
    for bad in ({**config, "speechConfig": {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": "alloy"}}}},
                {"responseModalities": ["TEXT"]}):
        refused = await fake.post(path, headers=headers, json={"contents": [{"parts": [{"text": "x"}]}],
                                                               "generationConfig": bad})
        assert refused.status_code == 400 and refused.json()["error"]["status"] == "INVALID_ARGUMENT"
