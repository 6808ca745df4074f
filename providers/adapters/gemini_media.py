"""Gemini's media endpoint behind OpenAI's: Imagen image generation through the Gemini API.

`POST {api_base}/v1beta/models/{model}:predict` with `{"instances": [{"prompt"}], "parameters":
{"sampleCount", "aspectRatio"}}`, answered with `{"predictions": [{"mimeType",
"bytesBase64Encoded"}]}` (https://ai.google.dev/gemini-api/docs/imagen). OpenAI's request maps
as: `n` -> `sampleCount` (1 to 4), `size` -> `aspectRatio` (the three OpenAI sizes whose shape
Imagen makes: 1024x1024 1:1, 1792x1024 16:9, 1024x1792 9:16). Imagen gives only the image's
bytes, so the answer is OpenAI's `b64_json` (as gpt-image-1's); `response_format: url` cannot be
served by it. `quality`, `style` and the other OpenAI-only parameters are not sent. A prediction
without bytes (filtered by Imagen's safety filter) is left out and not billed; none left is a
content filter error.
"""

from __future__ import annotations

import time

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
