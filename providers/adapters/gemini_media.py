"""Gemini's media endpoints behind OpenAI's: Imagen image generation and text to speech.

Images: 
`POST {api_base}/v1beta/models/{model}:predict` with `{"instances": [{"prompt"}], "parameters":
{"sampleCount", "aspectRatio"}}`, answered with `{"predictions": [{"mimeType",
"bytesBase64Encoded"}]}` (https://ai.google.dev/gemini-api/docs/imagen). OpenAI's request maps
as: `n` -> `sampleCount` (1 to 4), `size` -> `aspectRatio` (the three OpenAI sizes whose shape
Imagen makes: 1024x1024 1:1, 1792x1024 16:9, 1024x1792 9:16). Imagen gives only the image's
bytes, so the answer is OpenAI's `b64_json` (as gpt-image-1's); `response_format: url` cannot be
served by it. `quality`, `style` and the other OpenAI-only parameters are not sent. A prediction
without bytes (filtered by Imagen's safety filter) is left out and not billed; none left is a
content filter error.

Speech: a Gemini TTS model's `generateContent` with `generationConfig.responseModalities:
["AUDIO"]` and `speechConfig.voiceConfig.prebuiltVoiceConfig.voiceName`; the answer's first part
is `inlineData` of `audio/L16;codec=pcm;rate=24000`, base64 (https://ai.google.dev/gemini-api/docs/speech-generation).
That is OpenAI's `pcm` exactly (24 kHz, 16-bit signed little-endian, mono), and a `wav` is it
with a WAV header; the compressed formats (mp3, opus, aac, flac) would need transcoding, so a
Gemini TTS model serves `wav` (the default when none is asked) and `pcm` only. The voice is one
of Gemini's prebuilt voices (`Kore`, `Puck`...), not OpenAI's; OpenAI's `speed` and
`instructions` have no counterpart (Gemini is steered by the text itself) and are refused. The
audio comes in one JSON body, so it is sent to the client once it has arrived, in chunks.
Gemini bills TTS in tokens (`usageMetadata`): the text's at the input price, the audio's at the
output price.
"""

from __future__ import annotations

import base64
import io
import re
import time
import wave

from providers.adapters.media import DEFAULT_IMAGE_SIZE

IMAGEN_PREFIX = "imagen"
IMAGEN_MAX_IMAGES = 4
IMAGEN_ASPECT_RATIOS = {"1024x1024": "1:1", "1792x1024": "16:9", "1024x1792": "9:16"}


def imagen_body(payload: dict) -> dict:
    size = payload.get("size") or DEFAULT_IMAGE_SIZE
    return {
        "instances": [{"prompt": payload["prompt"]}],
        "parameters": {"sampleCount": payload.get("n") or 1, "aspectRatio": IMAGEN_ASPECT_RATIOS[size]},
    }


def imagen_images(data: dict) -> list[dict] | None:
    """OpenAI's `data` items from Imagen's predictions; None when the answer holds none."""
    predictions = data.get("predictions", [])  # Imagen leaves it out when every image was filtered
    if not isinstance(predictions, list):
        return None
    return [{"b64_json": item["bytesBase64Encoded"]} for item in predictions
            if isinstance(item, dict) and isinstance(item.get("bytesBase64Encoded"), str)]


def imagen_answer(images: list[dict]) -> dict:
    return {"created": int(time.time()), "data": images}


# Gemini's prebuilt TTS voices (https://ai.google.dev/gemini-api/docs/speech-generation#voices).
GEMINI_VOICES = frozenset({
    "Zephyr", "Puck", "Charon", "Kore", "Fenrir", "Leda", "Orus", "Aoede", "Callirrhoe", "Autonoe",
    "Enceladus", "Iapetus", "Umbriel", "Algieba", "Despina", "Erinome", "Algenib", "Rasalgethi",
    "Laomedeia", "Achernar", "Alnilam", "Schedar", "Gacrux", "Pulcherrima", "Achird", "Zubenelgenubi",
    "Vindemiatrix", "Sadachbia", "Sadaltager", "Sulafat",
})
GEMINI_SPEECH_FORMATS = {"wav": "audio/wav", "pcm": "audio/pcm"}
GEMINI_SPEECH_PREFIX = "gemini"
_PCM_RATE = re.compile(r"rate=(\d+)")
_AUDIO_CHUNK = 64 * 1024


def speech_body(payload: dict) -> dict:
    config: dict = {"responseModalities": ["AUDIO"]}
    if payload.get("voice"):
        config["speechConfig"] = {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": payload["voice"]}}}
    return {"contents": [{"role": "user", "parts": [{"text": payload["input"]}]}], "generationConfig": config}


def speech_pcm(data: dict) -> tuple[bytes, int] | None:
    """The answer's audio as raw PCM and its sample rate; None when it holds none."""
    candidates = data.get("candidates")
    if not isinstance(candidates, list) or not candidates or not isinstance(candidates[0], dict):
        return None
    parts = (candidates[0].get("content") or {}).get("parts") if isinstance(candidates[0].get("content"), dict) else None
    for part in parts if isinstance(parts, list) else ():
        inline = part.get("inlineData") if isinstance(part, dict) else None
        if isinstance(inline, dict) and isinstance(inline.get("data"), str) \
                and str(inline.get("mimeType", "")).startswith("audio/L16"):
            rate = _PCM_RATE.search(inline["mimeType"])
            try:
                return base64.b64decode(inline["data"], validate=True), int(rate.group(1)) if rate else 24000
            except ValueError:
                return None
    return None


def speech_audio(pcm: bytes, rate: int, answer_format: str) -> bytes:
    if answer_format == "pcm":
        return pcm
    out = io.BytesIO()
    with wave.open(out, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(rate)
        audio.writeframes(pcm)
    return out.getvalue()


async def audio_chunks(audio: bytes):
    for start in range(0, len(audio), _AUDIO_CHUNK):
        yield audio[start:start + _AUDIO_CHUNK]
