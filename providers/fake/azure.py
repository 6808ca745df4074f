"""Azure OpenAI's dialect: OpenAI's bodies, Azure's auth, errors and content-filter annotations.

The routes (`/openai/deployments/{deployment}/...?api-version=`) live in `app`; the deployment
name stands in for the model. Azure adds `prompt_filter_results` to answers, and a stream opens
with a chunk holding only those (empty `choices`, empty `id` and `model`).
References: https://learn.microsoft.com/azure/ai-foundry/openai/reference and
https://learn.microsoft.com/azure/ai-foundry/openai/concepts/content-filter
"""

from __future__ import annotations

from providers.fake.content import Completion
from providers.fake.dialect import Frames, dumps
from providers.fake.errors import ApiError
from providers.fake.openai import OpenAIDialect

SAFE = {"filtered": False, "severity": "safe"}
FILTER_RESULTS = {"hate": SAFE, "self_harm": SAFE, "sexual": SAFE, "violence": SAFE}
PROMPT_FILTER_RESULTS = [{"prompt_index": 0, "content_filter_results": FILTER_RESULTS}]


class AzureDialect(OpenAIDialect):
    """OpenAI's request checks and bodies, with Azure's `api-key` and error spelling."""

    # Azure spells service errors {"error": {"code": "<status>", "message"}}; request validation
    # errors keep OpenAI's shape.
    AZURE_ERRORS = {
        401: "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
             "provide a valid key for an active subscription and use a correct regional API "
             "endpoint for your resource.",
        404: "The API deployment for this resource does not exist.",
        429: "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version "
             "2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. "
             "Please retry after {seconds} seconds.",
        500: "The server had an error while processing your request. Sorry about that!",
        503: "The service is temporarily unable to process your request. Please try again later.",
    }

    def authenticate(self, *, headers: dict[str, str], api_key: str | None) -> None:
        key = headers.get("api-key", "").strip()
        if not key:
            raise ApiError(401, "Access denied due to missing subscription key. Make sure to "
                           "include subscription key when making requests to an API.")
        if api_key is not None and key != api_key:
            raise ApiError(401)

    def error(
        self, *, error: ApiError, request_id: str
    ) -> tuple[dict, list[tuple[str, str]]]:
        if error.status == 400 or error.code:
            return super().error(error=error, request_id=request_id)
        message = error.message or self.AZURE_ERRORS.get(error.status, f"Error {error.status}.")
        message = message.replace("{seconds}", str(error.retry_after or 1))
        headers = []
        if error.retry_after is not None:
            headers = [("retry-after", str(error.retry_after)),
                       ("retry-after-ms", str(error.retry_after * 1000))]
        return {"error": {"code": str(error.status), "message": message}}, headers

    def render(self, *, completion: Completion) -> dict:
        body = super().render(completion=completion)
        body["prompt_filter_results"] = PROMPT_FILTER_RESULTS
        for choice in body["choices"]:
            choice["content_filter_results"] = FILTER_RESULTS
        return body

    def frames(self, *, completion: Completion) -> Frames:
        frames = super().frames(completion=completion)
        first = {"choices": [], "created": 0, "id": "", "model": "", "object": "",
                 "prompt_filter_results": PROMPT_FILTER_RESULTS}
        frames.early = [b"data: " + dumps(first) + b"\n\n", *frames.early]
        return frames
