"""OpenAI's legacy text completions: `POST /v1/completions`, plain and streamed.

Reference: https://platform.openai.com/docs/api-reference/completions (the `text_completion`
object: `choices[].text`, `index`, `logprobs` as `tokens` / `token_logprobs` / `top_logprobs` /
`text_offset`, `finish_reason`; a stream of the same object, one piece of text a chunk, then
`data: [DONE]`). Like OpenAI, it serves only completion models: a chat model is a 404.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

from providers.fake.content import (
    WORDS,
    ChatRequest,
    Completion,
    completion_build,
    token_pieces,
    tokens_count,
)
from providers.fake.dialect import Frames, dumps, is_int, stops_parse
from providers.fake.directives import directive_build, directive_extract
from providers.fake.errors import ApiError
from providers.fake.openai import OpenAIDialect

# OpenAI's completion models (https://platform.openai.com/docs/models): the others are chat models.
COMPLETION_MODELS = ("gpt-3.5-turbo-instruct", "davinci-002", "babbage-002")
MAX_LOGPROBS = 5
DEFAULT_MAX_TOKENS = 16


@dataclass(frozen=True)
class TextRequest:
    """A text completion request: one chat-like request per prompt, and what only it has."""

    prompts: tuple[ChatRequest, ...]
    texts: tuple[str, ...]  # each prompt as sent (echoed back as it is)
    n: int
    best_of: int
    echo: bool
    logprobs: int | None

    @property
    def prompt_tokens(self) -> int:
        return sum(request.prompt_tokens for request in self.prompts)


class OpenAITextDialect(OpenAIDialect):
    """OpenAI's `/v1/completions`: its body, its `text_completion` answer and stream."""

    id_prefix = "cmpl-"

    def parse_text(self, *, body: dict, header_directive: str, server_directive: str = "") -> TextRequest:
        model = self._required(body, name="model", kind=str, label="a string")
        if model not in COMPLETION_MODELS:
            raise ApiError(404, "This is a chat model and not supported in the v1/completions endpoint. "
                           "Did you mean to use v1/chat/completions?", param="model", code=None)
        texts = self._prompts(body.get("prompt", "<|endoftext|>"))
        n = self._choices(body)
        best_of = body.get("best_of", n)
        if not is_int(best_of) or not n <= best_of <= 20:
            raise ApiError(400, "best_of must be greater than or equal to n and at most 20.",
                           param="best_of", code="invalid_value")
        logprobs = body.get("logprobs")
        if logprobs is not None and (not is_int(logprobs) or not 0 <= logprobs <= MAX_LOGPROBS):
            raise ApiError(400, f"Invalid 'logprobs': expected an integer from 0 to {MAX_LOGPROBS}.",
                           param="logprobs", code="invalid_value")
        suffix = body.get("suffix")
        if suffix is not None and not isinstance(suffix, str):
            raise ApiError(400, "Invalid type for 'suffix': expected a string.", param="suffix",
                           code="invalid_type")
        stream = body.get("stream") is True
        if stream and best_of > 1:
            raise ApiError(400, "Cannot stream results with best_of greater than 1.", param="best_of",
                           code="invalid_value")
        options = body.get("stream_options") or {}
        base = dict(model=model, max_tokens=self._max_tokens(body) or DEFAULT_MAX_TOKENS,
                    stop=stops_parse(body.get("stop")), stream=stream,
                    include_usage=isinstance(options, dict) and options.get("include_usage") is True,
                    choices=best_of)
        prompts = []
        for text in texts:
            prompt, found = directive_extract(text=text)
            directive = directive_build(header=header_directive, message=found, server=server_directive)
            # The answer depends on the suffix too: the text to insert before it.
            prompt = prompt + "\x00" + suffix if suffix else prompt
            prompts.append(ChatRequest(prompt=prompt, prompt_tokens=tokens_count(text=text),
                                       directive=directive, **base))
        return TextRequest(prompts=tuple(prompts), texts=tuple(texts), n=n, best_of=best_of,
                           echo=body.get("echo") is True, logprobs=logprobs)

    @staticmethod
    def _prompts(value: object) -> list[str]:
        """A string, strings, a token array or token arrays (tokens are read as their count)."""
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return value
        raise ApiError(400, "Invalid 'prompt': expected a string or an array of strings.",
                       param="prompt", code="invalid_type")

    def text_build(self, *, request: TextRequest) -> Completion:
        """Every prompt's `best_of` choices as one completion (so the ledger bills them all), the
        first prompt's first choice carrying the others."""
        choices = []
        for prompt in request.prompts:
            choices.extend(completion_build(request=prompt, id_prefix=self.id_prefix).choices)
        first, *others = choices
        return replace(first, others=tuple(replace(c, id=first.id) for c in others))

    def _returned(self, completion: Completion, request: TextRequest) -> list[tuple[int, int, Completion]]:
        """(index, prompt, choice) of the choices sent back: the first `n` of each prompt's."""
        choices, returned = completion.choices, []
        for prompt in range(len(request.prompts)):
            for j in range(request.n):
                returned.append((prompt * request.n + j, prompt, choices[prompt * request.best_of + j]))
        return returned

    def text_usage(self, completion: Completion, request: TextRequest) -> dict:
        prompt, done = request.prompt_tokens, completion.billed_completion_tokens
        return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}

    def _text_envelope(self, completion: Completion) -> dict:
        envelope = self._envelope(completion, "text_completion")
        envelope.pop("service_tier")
        return envelope

    def text_render(self, *, completion: Completion, request: TextRequest) -> dict:
        choices = []
        for index, prompt, choice in self._returned(completion, request):
            echo = request.texts[prompt] if request.echo else ""
            choices.append({
                "text": echo + choice.text, "index": index,
                "logprobs": self._logprobs(choice, echo=echo, top=request.logprobs,
                                           start=0 if echo else len(request.texts[prompt])),
                "finish_reason": "length" if choice.finish == "length" else "stop",
            })
        body = self._text_envelope(completion) | {"choices": choices}
        if not completion.request.directive.no_usage:
            body["usage"] = self.text_usage(completion, request)
        return body

    def _text_chunk(self, completion: Completion, request: TextRequest, choice: dict) -> bytes:
        chunk = self._text_envelope(completion) | {"choices": [choice]}
        if completion.request.include_usage:
            chunk["usage"] = None
        return b"data: " + dumps(chunk) + b"\n\n"

    def text_frames(self, *, completion: Completion, request: TextRequest) -> Frames:
        """Each choice's echoed prompt (with `echo`) leads; then each choice's pieces in turn, then
        every choice's finish, the usage chunk when asked for, and `[DONE]`."""
        lead, content, tail = [], [], []
        for index, prompt, choice in self._returned(completion, request):
            def piece(text: str, logprobs: dict | None, finish: str | None = None) -> bytes:
                return self._text_chunk(completion, request, {
                    "text": text, "index": index, "logprobs": logprobs, "finish_reason": finish})

            offset = len(request.texts[prompt])
            if request.echo:
                echo = request.texts[prompt]
                lead.append(piece(echo, self._logprobs(replace(choice, pieces=()), echo=echo,
                                                       top=request.logprobs, start=0)))
            for position, text in enumerate(choice.pieces):
                one = replace(choice, pieces=(text,))
                logprobs = self._logprobs(one, echo="", top=request.logprobs, start=offset, salt=position)
                content.append(piece(text, logprobs))
                offset += len(text)
            tail.append(piece("", None, "length" if choice.finish == "length" else "stop"))
        if completion.request.include_usage and not completion.request.directive.no_usage:
            usage = self._text_envelope(completion) | {
                "choices": [], "usage": self.text_usage(completion, request)}
            tail.append(b"data: " + dumps(usage) + b"\n\n")
        return Frames(early=[], lead=lead, content=content, tail=tail + [b"data: [DONE]\n\n"],
                      bad=b'data: {"id":"' + completion.id.encode() + b'","choices":[{"text":\n\n')

    @staticmethod
    def _logprobs(choice: Completion, *, echo: str, top: int | None, start: int, salt: int = 0) -> dict | None:
        """OpenAI's legacy logprobs of a choice's tokens (the echoed prompt's first, whose first
        token has none): each token's, the `top` likeliest at each place (the sampled one always
        among them) and each token's character offset in the prompt and text (`start`: the first's)."""
        if top is None:
            return None
        echoed = token_pieces(text=echo) if echo else []
        tokens = echoed + list(choice.pieces)
        offsets, values, tops = [], [], []
        for position, token in enumerate(tokens):
            offsets.append(start)
            start += len(token)
            if position == 0 and echoed:
                values.append(None)
                tops.append(None)
                continue
            value = _logprob(choice.request.model, token, position + salt)
            values.append(value)
            alternatives = {token: value}
            for word in WORDS:
                if len(alternatives) > top:
                    break
                alternatives.setdefault(" " + word, round(value - 0.5 * (len(alternatives) + 1), 6))
            tops.append(alternatives)
        return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def _logprob(model: str, token: str, position: int) -> float:
    """A token's log probability: deterministic, between -3 and 0."""
    digest = hashlib.sha256(f"{model}\x00{token}\x00{position}".encode()).digest()
    return -round(int.from_bytes(digest[:4], "big") / 2**32 * 3, 6)
