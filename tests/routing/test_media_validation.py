"""The media endpoints' validators (routing/media_validation.py): every bad body is a 400 naming
its parameter, whatever JSON type it holds (the schema fuzzer's finds included), never a 500."""

from __future__ import annotations

import io
import wave

import pytest

from kernel.errors import InvalidRequest
from routing import media_validation as checks


@pytest.mark.parametrize(("validate", "body", "param"), [
    (checks.images_request_validate, {"model": "m", "prompt": "p", "response_format": {}}, "response_format"),
    (checks.images_request_validate, {"model": "m", "prompt": "p", "size": ["1024x1024"]}, "size"),
    (checks.images_request_validate, {"model": "m", "prompt": "p", "n": 11}, "n"),
    (checks.images_request_validate, {"model": "m", "prompt": " "}, "prompt"),
    (checks.speech_request_validate, {"model": "m", "input": "hi", "voice": {}}, "voice"),
    (checks.speech_request_validate, {"model": "m", "input": "hi"}, "voice"),
    (checks.speech_request_validate, {"model": "m", "input": "x" * 4097, "voice": "alloy"}, "input"),
    (checks.speech_request_validate, {"model": "m", "input": "hi", "voice": "alloy", "speed": 5}, "speed"),
    (checks.moderations_request_validate, {"input": [{"type": {}}]}, "input"),
    (checks.moderations_request_validate, {"input": ""}, "input"),
    (checks.rerank_request_validate, {"model": "m", "query": "q", "documents": [{}]}, "documents"),
    (checks.rerank_request_validate, {"model": "m", "query": "q", "documents": ["d"] * 1001}, "documents"),
    (checks.rerank_request_validate, {"model": "m", "query": "q", "documents": ["d"], "top_n": 0}, "top_n"),
])
def test_bad_bodies_are_400s_naming_the_parameter(validate, body, param):
    with pytest.raises(InvalidRequest) as error:
        validate(body)
    assert error.value.param == param


def test_image_models_limits():
    too_many = checks.image_model_check({"n": 2}, "dall-e-3")
    assert (too_many.param, too_many.message) == ("n", "'n' must be at most 1 for dall-e-3.")
    assert checks.image_model_check({"size": "1792x1024"}, "dall-e-2").param == "size"
    assert checks.image_model_check({"n": 4, "size": "1024x1792"}, "models/imagen-4.0-generate-001") is None
    assert checks.image_model_check({"response_format": "url"}, "imagen-4.0-fast-generate-001").param == "response_format"


def test_speech_voices_and_formats_by_model():
    gemini = "gemini-2.5-flash-preview-tts"
    assert checks.speech_model_check({"voice": "Kore"}, gemini) is None
    assert checks.speech_model_check({"voice": "Kore", "response_format": "pcm", "speed": 1}, "models/" + gemini) is None
    assert checks.speech_model_check({"voice": "alloy"}, gemini).param == "voice"
    assert checks.speech_model_check({"voice": "Kore", "response_format": "mp3"}, gemini).param == "response_format"
    assert checks.speech_model_check({"voice": "Kore", "speed": 1.5}, gemini).param == "speed"
    assert checks.speech_model_check({"voice": "Kore", "instructions": "calm"}, gemini).param == "instructions"
    assert checks.speech_model_check({"voice": "alloy", "response_format": "mp3"}, "tts-1") is None
    assert checks.speech_model_check({"voice": "Kore"}, "tts-1").param == "voice"
    assert checks.image_model_check({"n": 10, "size": "1536x1024"}, "gpt-image-1") is None
    assert checks.image_model_check({"n": 10, "size": "999x999"}, "my-own-image-model") is None


def test_moderation_model_defaults_and_rerank_documents_become_texts():
    assert checks.moderations_request_validate({"input": "hi"})["model"] == "omni-moderation-latest"
    payload = checks.rerank_request_validate({"model": "m", "query": "q", "documents": ["a", {"text": "b"}],
                                              "rank_fields": ["text"]})
    assert payload["documents"] == ["a", "b"] and "rank_fields" not in payload


def test_audio_seconds_from_the_file_headers():
    out = io.BytesIO()
    with wave.open(out, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(16000)
        audio.writeframes(bytes(16000 * 2 * 3))
    assert checks.audio_seconds(out.getvalue()) == 3
    with pytest.raises(InvalidRequest) as error:
        checks.audio_seconds(b"ID3 but not really an mp3" * 4)
    assert error.value.code == "invalid_audio"
